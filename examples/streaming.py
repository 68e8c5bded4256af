"""Attention sinks (StreamingLLM, Xiao et al., 2023) on a small character model: the loss of a
text streamed far past the training length, 20,000 tokens generated in flat memory and time, and
what each KV-cache compression (KIVI int8/int4/int2, H2O eviction, sinks) costs in loss at the
training length.

    python examples/streaming.py                    # about 12 minutes on 2 cores
    python examples/streaming.py --quick=true       # about 5 minutes: less of everything

1. A char-level RoPE GPT (Llama-style: RMSNorm, SwiGLU; 4 layers, 128 wide, ~0.8M parameters)
   trained on tiny Shakespeare at block_size T = 128 (the 90/10 split of train_shakespeare.py),
   or loaded from out_dir when a checkpoint of the same configuration and steps is there.
2. The streaming comparison on one validation stretch of 16 T tokens (quick: 8 T), each token's
   loss with (a) dense attention over all keys at their true positions (the same weights in a
   GPT whose block_size is the stream's length, so RoPE extrapolates), (b) a window cache of the
   W = T most recent keys, (c) sinks: the first 4 tokens + the W - 4 most recent, (d) a sliding
   window with recomputation over W tokens. (b) and (c) store keys before RoPE and give them
   positions inside the cache, so every position the model sees is < T. Loss against position
   (StreamingLLM's figure 3) and the means before and past T.
3. 20,000 tokens (quick: 5,000) sampled with the sinks cache (temperature 0.8, top-k 40), the
   cache's bytes and the time per token read every 1,000: the ratios of the last block to the
   first say whether memory and time stay flat.
4. The compression table: validation windows of T + 1 tokens streamed token by token (chunk=1:
   every key enters the cache as in decoding, none through a prefill) through each cache: dense
   float32, the per-token int8 cache, KIVI at 8/4/2 bits, H2O and sinks at budgets of 10, 25 and
   50 % of T. Bytes per token held (the cache's nbytes over the tokens it holds), bytes per
   token of context (nbytes over the T tokens seen: what eviction saves shows here) and the
   mean loss, with its difference from dense (paired over the same windows, +- one standard
   error over the windows).

Also printed: the attention share of the first 4 positions (the softmax weight on keys 0..3,
averaged over the queries at positions >= 16, over layers and heads, and for the largest head),
beside the 4 / (i + 1) that uniform attention would give: it says whether this model has learned
attention sinks at all.

What the figures show. Left: loss against position for the four readings; dense attention
degrades past T (RoPE at positions it never trained on); a window cache collapses once the first
tokens leave it only if the model parks attention on them, and then the 4 kept sinks rescue it
at the cost of 4 keys; recomputation is the in-distribution reference at W times the work.
Middle: the sinks cache's bytes and time per token over the generation (flat once the window
is full). Right: loss against cache memory for the compression schemes at the training length.
What they do not show at this scale: a 0.8M-parameter character model with T = 128 is far from
the billion-parameter models and 4k windows of the paper. Whether its window collapses is
StreamingLLM's effect only as far as the printed sink share is above uniform; a small char model
whose heads are local may attend to the first tokens less than uniformly and then streams fine
with a plain window, which is a finding about this model, not a refutation of the paper. The
curves are one stretch of text (binned over T / 4 positions), the compression losses a few
windows (see the standard errors; KIVI and H2O were designed against contexts of thousands of
tokens, where the residual and the budget are a small part), and the timings, on a shared 2-core
machine, are indicative only.
"""
import dataclasses
import json
import math
import os
import time

import numpy as np

import tinygrad_llm as tl
from tinygrad_llm.data import shakespeare, split
from tinygrad_llm.generate import DecodeSession, cache_nbytes, make_caches
from tinygrad_llm.generate.streaming import recompute_nll, stream_nll
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.optim import param_groups_for_weight_decay
from tinygrad_llm.tokenizers import CharTokenizer
from tinygrad_llm.train import (OptionError, TrainConfig, Trainer, load_model, parse_args,
                                run_main)
from tinygrad_llm.train.report import print_table, save_figure, write_json


@dataclasses.dataclass
class Args:
    quick: bool = False          # a short run: less training, a shorter stream, fewer tokens
    out_dir: str = "out-streaming"   # the checkpoint, streaming.json and streaming.png
    device: str = "cpu"          # "cpu" or "cuda"
    block_size: int = 128        # T: the training length
    n_layer: int = 4             # transformer blocks
    n_head: int = 4              # attention heads (all with their own K/V)
    n_embd: int = 128            # width of the residual stream
    max_iters: int = None        # training steps (none: 2000; quick: 600)
    batch_size: int = 16         # training sequences per step
    learning_rate: float = 2e-3  # the schedule's peak
    stream_blocks: int = None    # the streamed stretch in units of T (none: 16; quick: 8)
    window: int = None           # W: keys a query sees (itself included) through a window or
                                 # sinks cache, and recompute's window (none: T)
    n_sink: int = 4              # first tokens a sinks cache keeps
    bin: int = None              # positions per point of the loss curve (none: T / 4)
    gen_tokens: int = None       # tokens sampled with sinks (none: 20000; quick: 5000)
    gen_block: int = 1000        # tokens per memory / time reading
    temperature: float = 0.8     # sampling temperature of the generation
    top_k: int = 40              # sampling draws from the k likeliest tokens
    eval_windows: int = None     # validation windows per compression row (none: 24; quick: 6)
    seed: int = 1337             # training batches, initialisation and sampling


def resolve(args):
    """Fill the fields left None from --quick."""
    quick = args.quick
    defaults = dict(max_iters=600 if quick else 2000, stream_blocks=8 if quick else 16,
                    window=args.block_size, bin=max(1, args.block_size // 4),
                    gen_tokens=5000 if quick else 20000, eval_windows=6 if quick else 24)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not args.n_sink + 1 < args.window <= args.block_size:
        raise OptionError(f"--window={args.window} must be in ({args.n_sink + 1}, "
                          f"{args.block_size}] (more than --n_sink + 1, at most --block_size)")
    return args


# ---- 1. the model ------------------------------------------------------------------------------
def train_or_load(args, tokenizer, train_ids, val_ids):
    """(model in eval mode, its validation loss, seconds spent training)."""
    config = GPTConfig.preset("llama", vocab_size=tokenizer.vocab_size,
                              block_size=args.block_size, n_layer=args.n_layer,
                              n_head=args.n_head, n_kv_head=args.n_head, n_embd=args.n_embd)
    path = os.path.join(args.out_dir, "ckpt.safetensors")
    if os.path.exists(path):
        model, _, record = load_model(path)
        if record.get("model_config") == config.to_dict() and record.get("step") == \
                args.max_iters:
            print(f"loaded {path} (step {record['step']})")
            return model.to(args.device), record["history"][-1]["val_loss"], 0.0
        print(f"{path} holds another configuration or step count: training afresh")
    tl.manual_seed(args.seed)
    model = GPT(config).to(args.device)
    print(f"training a {model.num_parameters() / 1e6:.2f}M-parameter RoPE model for "
          f"{args.max_iters} steps at T={args.block_size}")
    train = TrainConfig(batch_size=args.batch_size, block_size=args.block_size,
                        max_iters=args.max_iters, eval_interval=max(1, args.max_iters // 2),
                        eval_iters=20, learning_rate=args.learning_rate,
                        min_lr=args.learning_rate / 10, warmup_iters=min(100, args.max_iters // 10),
                        weight_decay=0.1, beta2=0.99, seed=args.seed, out_dir=args.out_dir,
                        progress=False)
    optimizer = train.adamw(param_groups_for_weight_decay(model, train.weight_decay))
    trainer = Trainer(model, optimizer, train_ids, val_ids, train,
                      record={"model_config": config.to_dict(),
                              "tokenizer": tokenizer.to_dict()})
    start = time.perf_counter()
    last = trainer.fit()
    return model.eval(), last["val_loss"], time.perf_counter() - start


def with_block_size(model, n):
    """The same weights in a GPT of block_size n: dense attention at positions past training."""
    long = GPT(dataclasses.replace(model.config, block_size=n)).to(model.device)
    long.load_state_dict(model.state_dict())
    return long.eval()


def first_token_share(model, ids, n_first=4, skip=16):
    """The softmax weight on keys 0..n_first-1, averaged over the queries at positions >= skip
    of one forward over ids (T,): (mean over layers and heads, what uniform attention would
    give, per layer, the largest head's). Recomputes each layer's scores from its qkv projection
    and the model's rotary tables."""
    t = len(ids)
    share, uniform = [], np.mean(n_first / (np.arange(skip, t) + 1))
    with tl.no_grad():
        x = model.tok_emb(tl.backend.to_device(ids[None], model.device))       # (1, T, C)
        future = np.triu(np.ones((t, t), dtype=bool), 1)
        for block in model.blocks:
            attn = block.attn
            h, hkv, d = attn.n_head, attn.n_kv_head, attn.head_dim
            qkv = attn.qkv(block.norm1(x)).reshape(1, t, h + 2 * hkv, d)
            q = model.rotary(qkv[:, :, :h].transpose(0, 2, 1, 3))
            k = model.rotary(qkv[:, :, h:h + hkv].transpose(0, 2, 1, 3))
            q = tl.backend.to_numpy(q.data)[0].astype(np.float64)              # (H, T, D)
            k = np.repeat(tl.backend.to_numpy(k.data)[0], h // hkv, axis=0)   # (H, T, D)
            s = q @ k.transpose(0, 2, 1) / math.sqrt(d)                        # (H, T, T)
            s[:, future] = -np.inf
            p = np.exp(s - s.max(axis=-1, keepdims=True))
            p /= p.sum(axis=-1, keepdims=True)
            share.append(p[:, skip:, :n_first].sum(axis=-1).mean(axis=-1))          # (H,)
            x = block(x)[0]
    share = np.array(share)                                                          # (L, H)
    return (float(share.mean()), float(uniform), [float(v) for v in share.mean(axis=1)],
            float(share.max()))


# ---- 2. the streaming comparison -------------------------------------------------------------
def binned(nll, size):
    """Mean loss over consecutive bins of `size` positions (the last may be shorter)."""
    return [float(nll[i:i + size].mean()) for i in range(0, len(nll), size)]


def streaming_comparison(args, model, ids):
    """Rows of the table and the per-token losses of the four ways to read `ids`."""
    T, W, S = args.block_size, args.window, args.n_sink
    n = len(ids) - 1
    methods = {
        "dense": (f"all keys, positions 0..{n - 1}",
                  lambda: stream_nll(with_block_size(model, n), ids, chunk=1)),
        "window": (f"{W} most recent", lambda: stream_nll(model, ids, "window",
                                                          {"window": W - 1})),
        "sinks": (f"{S} first + {W - S} most recent",
                  lambda: stream_nll(model, ids, "sinks", {"n_sink": S, "window": W - 1 - S})),
        "recompute": (f"fresh forward over {W}", lambda: recompute_nll(model, ids, W)),
    }
    rows, losses = [], {}
    for name, (keys, run) in methods.items():
        start = time.perf_counter()
        nll = run()
        wall = time.perf_counter() - start
        losses[name] = nll
        rows.append({"method": name, "keys attended": keys, f"first {T}": nll[:T].mean(),
                     f"past {T}": nll[T:].mean(), f"last {T}": nll[-T:].mean(),
                     "ms/token": 1000 * wall / n})
    return rows, losses


# ---- 3. generation with sinks -------------------------------------------------------------
def generation(args, model, tokenizer):
    """Sample gen_tokens with a sinks cache; (rows every gen_block tokens, the last text)."""
    S, W = args.n_sink, args.window
    session = DecodeSession(model, seed=args.seed, temperature=args.temperature,
                            top_k=args.top_k, cache_implementation="sinks",
                            cache_config={"n_sink": S, "window": W - 1 - S})
    session.feed(tokenizer.encode("\n"))
    rows, out = [], []
    while len(out) < args.gen_tokens:
        n = min(args.gen_block, args.gen_tokens - len(out))
        start = time.perf_counter()
        out += list(session.generate(n))
        wall = time.perf_counter() - start
        rows.append({"tokens": len(out), "cache bytes": cache_nbytes(session.caches),
                     "ms/token": 1000 * wall / n})
    return rows, tokenizer.decode(out[-300:])


# ---- 4. the compression table ------------------------------------------------------------------
def compression_schemes(T):
    """(name, make_caches keyword arguments) per row; budgets are 10, 25 and 50 % of T."""
    schemes = [("dense float32", {}), ("int8 per token", {"dtype": "int8"})]
    schemes += [(f"KIVI int{b}", {"implementation": "quantized", "bits": b, "group_size": 32,
                                  "residual_length": 32}) for b in (8, 4, 2)]
    for fraction in (0.1, 0.25, 0.5):
        budget = max(2, round(fraction * T))
        schemes.append((f"H2O {fraction:.0%}", {"implementation": "h2o", "budget": budget,
                                                "recent": budget // 2}))
    for fraction in (0.1, 0.25, 0.5):
        budget = max(5, round(fraction * T))
        schemes.append((f"sinks {fraction:.0%}", {"implementation": "sinks", "n_sink": 4,
                                                  "window": budget - 4}))
    return schemes


def compression_table(args, model, val_ids):
    T = args.block_size
    offsets = np.linspace(0, len(val_ids) - T - 2, args.eval_windows).astype(int)
    windows = [val_ids[o:o + T + 1] for o in offsets]
    rows, dense = [], None
    for name, kwargs in compression_schemes(T):
        start = time.perf_counter()
        per_window, nbytes, held = [], 0, 0
        for ids in windows:
            caches = make_caches(model, 1, T, **kwargs)
            per_window.append(stream_nll(model, ids, chunk=1, caches=caches).mean())
            nbytes, held = cache_nbytes(caches), caches[0].held    # every layer holds as many
        per_window = np.array(per_window)
        if dense is None:
            dense = per_window
        diff = per_window - dense
        se = diff.std(ddof=1) / math.sqrt(len(diff)) if len(diff) > 1 else float("nan")
        rows.append({"cache": name, "tokens held": held, "bytes/token held": nbytes / held,
                     "bytes/token seen": nbytes / T, "cache bytes": nbytes,
                     "loss": per_window.mean(), "vs dense": diff.mean(),
                     "+-": se, "s": time.perf_counter() - start})
    return rows


# ---- the figure --------------------------------------------------------------------------------
def draw(args, losses, gen_rows, comp_rows):
    T, size = args.block_size, args.bin

    def figure(plt):
        fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
        ax = axes[0]
        curves = {name: binned(nll, size) for name, nll in losses.items()}
        x = np.arange(len(next(iter(curves.values())))) * size + size / 2
        styles = {"dense": "-", "window": "--", "sinks": "-", "recompute": ":"}
        for name, curve in curves.items():
            ax.plot(x, curve, styles[name], label=name, lw=2 if name == "recompute" else 1.3)
        others = max(max(c) for name, c in curves.items() if name != "dense")
        ax.set_ylim(0, max(others, min(max(curves["dense"]), 2 * others)) * 1.05)
        ax.axvline(T, color="gray", ls=":", label=f"T = {T}")
        ax.set_xlabel("position in the stream")
        ax.set_ylabel(f"loss (nats / char), mean over {size} positions")
        ax.set_title("streaming past the training length")
        ax.legend()
        ax = axes[1]
        tokens = [r["tokens"] for r in gen_rows]
        ax.plot(tokens, [r["ms/token"] for r in gen_rows], marker="o", label="ms / token")
        ax.set_xlabel("tokens generated with sinks")
        ax.set_ylabel("ms / token")
        ax.set_ylim(0, None)
        twin = ax.twinx()
        twin.plot(tokens, [r["cache bytes"] / 1024 for r in gen_rows], color="C1", marker="s",
                  label="cache KiB")
        twin.set_ylabel("cache KiB")
        twin.set_ylim(0, None)
        ax.legend(loc="lower left")
        twin.legend(loc="lower right")
        ax.set_title("generation: memory and time per token")
        ax = axes[2]
        for r in comp_rows:
            ax.scatter(r["bytes/token seen"], r["vs dense"])
            ax.annotate(r["cache"], (r["bytes/token seen"], r["vs dense"]), fontsize=7)
        ax.axhline(0, color="gray", ls=":")
        ax.set_xscale("log")
        ax.set_xlabel(f"cache bytes per token of context (after {T} tokens)")
        ax.set_ylabel(f"validation loss - dense loss, windows of {T}")
        ax.set_title("KV-cache compression")
        fig.tight_layout()
    return figure


def main(argv):
    (args,) = parse_args(argv, Args)
    args = resolve(args)
    t0 = time.perf_counter()
    text = shakespeare()
    tokenizer = CharTokenizer.from_text(text)
    train_ids, val_ids = split(tokenizer.encode(text), 0.1)
    T = args.block_size

    model, val_loss, train_s = train_or_load(args, tokenizer, train_ids, val_ids)
    share, uniform, per_layer, top_head = first_token_share(model, np.asarray(val_ids[:T]),
                                                            args.n_sink)
    print(f"validation loss {val_loss:.4f}; attention on the first {args.n_sink} positions: "
          f"{share:.3f} (uniform attention: {uniform:.3f}; per layer "
          f"{', '.join(f'{v:.3f}' for v in per_layer)}; the largest head {top_head:.3f})")

    stream = np.asarray(val_ids[:args.stream_blocks * T + 1])
    stream_rows, losses = streaming_comparison(args, model, stream)
    print_table(stream_rows, title=f"streaming {len(stream) - 1} tokens (T = {T}, W = "
                                   f"{args.window}), chunk=1 through the caches")

    gen_rows, sample = generation(args, model, tokenizer)
    first, last = gen_rows[0], gen_rows[-1]
    flat = {"bytes_last_over_first": last["cache bytes"] / first["cache bytes"],
            "time_last_over_first": last["ms/token"] / first["ms/token"]}
    print_table(gen_rows, title=f"{args.gen_tokens} tokens sampled with sinks (n_sink = "
                                f"{args.n_sink}, window = {args.window - 1 - args.n_sink})")
    print(f"last block / first block: cache bytes {flat['bytes_last_over_first']:.3f}, "
          f"time per token {flat['time_last_over_first']:.3f}")
    print("the last 300 characters:\n" + sample)

    comp_rows = compression_table(args, model, val_ids)
    print_table(comp_rows, title=f"KV caches at the training length: {args.eval_windows} "
                                 f"validation windows of {T} tokens, streamed with chunk=1")

    os.makedirs(args.out_dir, exist_ok=True)
    png = save_figure(os.path.join(args.out_dir, "streaming.png"),
                      draw(args, losses, gen_rows, comp_rows))
    by_method = {r["method"]: r for r in stream_rows}
    result = {f"{m}_loss_past_T": round(float(by_method[m][f"past {T}"]), 4)
              for m in losses}
    result.update({"val_loss": round(val_loss, 4), "sink_share": round(share, 4),
                   "uniform_share": round(uniform, 4),
                   "gen_tokens": args.gen_tokens,
                   "gen_bytes_ratio": round(flat["bytes_last_over_first"], 4),
                   "gen_time_ratio": round(flat["time_last_over_first"], 3),
                   "wall_s": round(time.perf_counter() - t0, 1)})
    write_json(os.path.join(args.out_dir, "streaming.json"), {
        "args": dataclasses.asdict(args), "train_s": train_s, "val_loss": val_loss,
        "sink_share": {"mean": share, "uniform": uniform, "per_layer": per_layer,
                       "largest_head": top_head},
        "streaming": stream_rows,
        "curves": {"bin": args.bin, **{m: binned(nll, args.bin) for m, nll in losses.items()}},
        "generation": {"rows": gen_rows, **flat, "sample": sample},
        "compression": comp_rows, "figure": png, "result": result})
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_main(main)
