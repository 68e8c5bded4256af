"""Transformer-XL's recurrence memory (Dai et al., 2019) against the same model without memory,
on character-level tiny Shakespeare: bits per character on the validation text at the training
segment length T and at 4 T.

    python examples/transformer_xl.py                  # about 10 minutes on 2 cores
    python examples/transformer_xl.py --quick=true     # about 4 minutes: fewer steps
    python examples/transformer_xl.py --positions=xl,rope   # also the RoPE pair (twice the time)

1. Data: tiny Shakespeare as characters, the 90/10 split of train_shakespeare.py. Training
   batches come from data.StreamBatcher: batch_size contiguous streams cut into consecutive
   segments of T, so the memory carried from one step to the next is the true past.
2. Models: for each position scheme in --positions (pos "xl": Dai et al.'s relative attention
   with u, v and W_r R; pos "rope": RoPE at true offsets over [memory; segment]) a memory model with
   mem_len = M and the same network with mem_len = 0: the same parameters (same names, shapes and
   initial values), the same batches in the same order, the same AdamW, warmup + cosine schedule
   and steps. The memory model does more work per step (K/V over M + T rows, attention over
   M + T keys), so a third model without memory trains for the steps that spend the same FLOPs
   (counted from the config by train_flops): equal parameters and equal training compute.
3. Evaluation: model.stream_nll over the whole validation text (about 111k characters), read in
   consecutive segments of T and of 4 T; the memory model carries its memory of M states per layer
   (eval_mem_len), the baseline starts every segment blind. bpc = NLL / ln 2 per character.
   Also the bpc at segment T by the position of the character in its segment (the first
   characters of a segment have no context without memory), and during training the bpc of the
   first curve_tokens validation characters at segment T every eval_interval steps.

Writes out_dir/transformer_xl.json and transformer_xl.png (the validation curve of every model,
the bpc by position in the segment, the bpc at T and 4 T as bars), prints the table and a short
sample generated with the memory, and ends with one JSON line.

What the figures show: how much a character's loss drops when the context reaches back past the
start of its segment, at equal parameters and equal training steps or FLOPs. At segment T a
baseline character sees on average T/2 earlier characters and the memory model T/2 + M (more
through the layers); at 4 T the baseline sees up to 4 T characters, distances it never met in
training, and segment starts are 4 times rarer. In the quick run (500 steps, about 2.8 bpc) the
memory model was 0.03 bpc better at T and 0.002 at 4 T, and the by-position curve says where:
without memory the first 2 to 4 characters of every segment cost up to 1 bit more; past them the
two curves coincide. In the default run (1,500 steps, about 2.55 bpc) the gain was 0.05 bpc at T
and 0.01 at 4 T, while the model without memory given the memory model's FLOPs (1,961 steps) beat
both by 0.1: at this scale the compute is worth more as steps than as memory. What they do not show
at this scale: a 4-layer, 128-wide character model trained for minutes is far from converged and
from the paper's word-level models; it uses only the last few characters, so the memory's value
here is restoring the segment starts, not long-range recall (Dai et al.'s relative effective
context length is out of reach). One seed, no error bars, and timings on a shared 2-core machine
are indicative only.
"""
import dataclasses
import json
import math
import os
import time

import numpy as np

import tinygrad_llm as tl
from tinygrad_llm.data import StreamBatcher, shakespeare, split
from tinygrad_llm.models import TransformerXL, TransformerXLConfig
from tinygrad_llm.optim import AdamW, clip_grad_norm_, set_lr, warmup_cosine
from tinygrad_llm.tokenizers import CharTokenizer
from tinygrad_llm.train import OptionError, parse_args, run_main
from tinygrad_llm.train.report import print_table, save_figure, write_json


@dataclasses.dataclass
class Args:
    quick: bool = False          # a short run: fewer steps
    out_dir: str = "out-transformer-xl"   # transformer_xl.json and transformer_xl.png
    device: str = "cpu"          # "cpu" or "cuda"
    positions: str = "xl"        # comma-separated pos kinds: "xl", "rope" or "xl,rope"
    segment_len: int = 64        # T: the training segment
    mem_len: int = 64            # M: states per layer the memory model keeps
    eval_mem_len: int = None     # M at evaluation (none: mem_len)
    n_layer: int = 4             # blocks
    n_head: int = 4              # attention heads
    n_embd: int = 128            # width of the residual stream
    max_iters: int = None        # training steps per model (none: 1500; quick: 500)
    batch_size: int = 16         # streams per step
    learning_rate: float = 2e-3  # the schedule's peak
    min_lr: float = 2e-4         # the cosine's floor
    warmup_iters: int = 50       # linear warmup steps
    weight_decay: float = 0.1    # AdamW's decoupled decay (matrices only)
    grad_clip: float = 1.0       # global gradient-norm clip
    eval_interval: int = None    # steps between points of the validation curve (none: 1/10)
    curve_tokens: int = 4096     # validation characters each curve point reads
    val_chars: int = None        # validation characters in the final bpc (none: all of them)
    sample_tokens: int = 200     # characters generated with the memory at the end (0: none)
    seed: int = 0                # initialisation, batches and sampling


def _positions(args):
    kinds = [k.strip() for k in (args.positions or "").split(",") if k.strip()]
    bad = [k for k in kinds if k not in ("xl", "rope")]
    if not kinds or bad:
        raise OptionError(f"--positions: expected a comma-separated list of 'xl' and 'rope', got "
                          f"{args.positions!r}")
    return kinds


def _groups(model, weight_decay):
    """Decay the matrices; not the norms, nor the u, v position biases (one vector per head)."""
    decay, rest = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and not name.endswith("_bias") else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest,
                                                             "weight_decay": 0.0}]


def train_flops(config, batch_size, T, mem_len):
    """Training FLOPs of one step, counted from the config: every matmul's 2 m n k forward, times
    3 for forward + backward (the memory rows are constants, but their K/V and W_r products are
    recomputed and differentiated in W each step). Rows: T queries, L = M + T keys."""
    c, h, d, L = config.n_embd, config.n_head, config.head_dim, mem_len + T
    hkv = config.n_kv_head
    ffn = (3 if config.mlp == "swiglu" else 2) * c * config.ffn_hidden
    per_layer = 2 * (T * c * h * d + L * c * 2 * hkv * d + T * h * d * c + T * ffn)
    per_layer += 2 * 2 * T * L * h * d                      # scores and probabilities @ values
    if config.pos == "xl":                                  # W_r R over L distances, then (q+v) r
        per_layer += 2 * L * c * h * d + 2 * T * L * h * d
    head = 2 * T * c * config.vocab_size
    return 3 * batch_size * (config.n_layer * per_layer + head)


def _bpc(model, ids, segment_len, mem_len):
    return float(model.stream_nll(ids, segment_len=segment_len, mem_len=mem_len).mean()
                 / math.log(2))


def make_config(args, pos, mem_len, vocab_size):
    return TransformerXLConfig(
        vocab_size=vocab_size, block_size=4 * args.segment_len, n_layer=args.n_layer,
        n_head=args.n_head, n_embd=args.n_embd, bias=False, dropout=0.0, pos=pos, mem_len=mem_len)


def train(args, name, pos, mem_len, vocab_size, train_ids, val_ids, steps):
    """One model trained on the streams for `steps` steps; returns (model, curve [(step, bpc)],
    wall seconds)."""
    T = args.segment_len
    tl.manual_seed(args.seed)                      # the same initial weights for every mem_len
    model = TransformerXL(make_config(args, pos, mem_len, vocab_size)).to(args.device)
    optimizer = AdamW(_groups(model, args.weight_decay), lr=args.learning_rate,
                      betas=(0.9, 0.99))
    batches = StreamBatcher(train_ids, args.batch_size, T, seed=args.seed)
    curve_ids = val_ids[:args.curve_tokens + 1]
    mems, curve, start = None, [], time.perf_counter()
    for step in range(steps + 1):
        if step % args.eval_interval == 0 or step == steps:
            curve.append((step, _bpc(model, curve_ids, T, mem_len)))
            print(f"  {name}: step {step}, val bpc {curve[-1][1]:.4f} "
                  f"(first {len(curve_ids) - 1} chars)", flush=True)
        if step == steps:
            break
        set_lr(optimizer, warmup_cosine(step, args.learning_rate, args.min_lr,
                                        min(args.warmup_iters, steps), steps))
        x, y = next(batches)
        if batches.new_epoch:
            mems = None                            # fresh streams: the old memory is not their past
        x, y = tl.backend.to_device(x, args.device), tl.backend.to_device(y, args.device)
        _, loss, mems = model(x, y, mems=mems)
        loss.backward()
        if args.grad_clip:
            clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        optimizer.zero_grad()
    return model, curve, time.perf_counter() - start


def _draw(runs, T):
    def draw(plt):
        fig, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4))
        for run in runs:
            steps, bpc = zip(*run["curve"])
            left.plot(steps, bpc, marker=".", label=run["model"])
        left.set_xlabel("training step")
        left.set_ylabel("val bpc (segment T, first chars)")
        left.set_title("validation during training")
        left.legend()
        for run in runs:
            middle.plot(np.arange(T), run["bpc_by_position"], label=run["model"])
        middle.set_xlabel(f"position of the character in its segment of T = {T}")
        middle.set_ylabel("bpc (whole val text)")
        middle.set_title("where the memory helps")
        middle.legend()
        width = 0.8 / len(runs)
        for i, run in enumerate(runs):
            right.bar(np.arange(2) + i * width, [run["bpc_T"], run["bpc_4T"]], width,
                      label=run["model"])
        right.set_xticks(np.arange(2) + 0.4 - width / 2)
        right.set_xticklabels([f"segment T = {T}", f"segment 4T = {4 * T}"])
        right.set_ylabel("bits per character (whole val text)")
        lows = [min(r["bpc_T"], r["bpc_4T"]) for r in runs]
        right.set_ylim(min(lows) - 0.1, max(max(r["bpc_T"], r["bpc_4T"]) for r in runs) + 0.05)
        right.set_title("memory against none, equal parameters")
        right.legend(fontsize=8)
        fig.tight_layout()
    return draw


def main(argv):
    (args,) = parse_args(argv, Args)
    if args.max_iters is None:
        args.max_iters = 500 if args.quick else 1500
    if args.eval_interval is None:
        args.eval_interval = max(1, args.max_iters // 10)
    if args.eval_mem_len is None:
        args.eval_mem_len = args.mem_len
    kinds = _positions(args)
    for name in ("segment_len", "max_iters", "batch_size", "eval_interval", "curve_tokens"):
        if getattr(args, name) < 1:
            raise OptionError(f"--{name}: expected a positive int, got {getattr(args, name)}")
    T = args.segment_len
    wall = time.perf_counter()

    # data: characters, 90% train / 10% val
    text = shakespeare()
    tokenizer = CharTokenizer.from_text(text)
    train_ids, val_ids = split(tokenizer.encode(text), 0.1)
    if args.val_chars is not None:
        if args.val_chars < 4 * T + 1:
            raise OptionError(f"--val_chars: expected at least 4 T + 1 = {4 * T + 1}, got "
                              f"{args.val_chars}")
        val_ids = val_ids[:args.val_chars]

    # train each pair (memory, none) on the same streams, then read the whole val text
    runs, models = [], {}
    for pos in kinds:
        # the memory model's steps cost more FLOPs: a third model without memory gets the steps
        # that spend the same training FLOPs (equal compute, not only equal tokens)
        flops = {m: train_flops(make_config(args, pos, m, tokenizer.vocab_size),
                                args.batch_size, T, m) for m in (args.mem_len, 0)}
        equal_steps = round(args.max_iters * flops[args.mem_len] / flops[0])
        plan = [(args.mem_len, args.max_iters, f"{pos} mem {args.mem_len}"),
                (0, args.max_iters, f"{pos} no memory"),
                (0, equal_steps, f"{pos} no memory, equal FLOPs")]
        for mem_len, steps, name in plan:
            if mem_len == 0 and steps == args.max_iters and name.endswith("FLOPs"):
                continue                         # no memory: the two baselines are one
            print(f"training {name} ({steps} steps)", flush=True)
            model, curve, train_s = train(args, name, pos, mem_len, tokenizer.vocab_size,
                                          train_ids, val_ids, steps)
            eval_mem = args.eval_mem_len if mem_len else 0
            start = time.perf_counter()
            bits_T = model.stream_nll(val_ids, segment_len=T, mem_len=eval_mem) / math.log(2)
            # bpc by the position of the token in its segment: where the memory helps
            by_position = [float(bits_T[p::T].mean()) for p in range(T)]
            runs.append({"model": name, "pos": pos, "mem_len": mem_len, "eval_mem_len": eval_mem,
                         "parameters": model.num_parameters(), "steps": steps,
                         "train_flops": flops[mem_len] * steps,
                         "bpc_T": float(bits_T.mean()),
                         "bpc_4T": _bpc(model, val_ids, 4 * T, eval_mem),
                         "bpc_first8": float(np.mean(by_position[:8])),
                         "train_s": train_s, "eval_s": time.perf_counter() - start,
                         "curve": curve, "bpc_by_position": by_position})
            models[name] = model
    for run in runs:
        base = next(r for r in runs if r["pos"] == run["pos"] and r["mem_len"] == 0
                    and r["steps"] == args.max_iters)
        run["gain_T"], run["gain_4T"] = base["bpc_T"] - run["bpc_T"], base["bpc_4T"] - \
            run["bpc_4T"]

    print_table(runs, columns=["model", "parameters", "steps", "train_flops", "bpc_T", "bpc_4T",
                               "gain_T", "gain_4T", "bpc_first8", "train_s", "eval_s"],
                title=f"bits per character on the {len(val_ids)} validation characters, segment "
                      f"T = {T} and 4T = {4 * T} (memory M = {args.eval_mem_len} at eval); gain: "
                      f"the no-memory model's bpc minus this one's; bpc_first8: the first 8 "
                      f"characters of each segment of T")
    sample = None
    if args.sample_tokens:
        model = models[f"{kinds[0]} mem {args.mem_len}"]
        out = model.generate(tokenizer.encode("\n")[None], args.sample_tokens, temperature=0.8,
                             top_k=40, seed=args.seed)
        sample = tokenizer.decode(out[0].tolist())
        print("-" * 40 + f"\n{sample}\n" + "-" * 40)

    os.makedirs(args.out_dir, exist_ok=True)
    png = save_figure(os.path.join(args.out_dir, "transformer_xl.png"), _draw(runs, T))
    wall = time.perf_counter() - wall
    path = write_json(os.path.join(args.out_dir, "transformer_xl.json"), {
        "args": dataclasses.asdict(args), "val_chars": len(val_ids), "runs": runs,
        "sample": sample, "png": png, "wall_s": wall})
    def label(r):
        return "mem" if r["mem_len"] else ("nomem" if r["steps"] == args.max_iters
                                           else "nomem_equal_flops")
    result = {f"{r['pos']}_{label(r)}_{key}": round(r[key], 4)
              for r in runs for key in ("bpc_T", "bpc_4T")}
    result.update(segment_len=T, mem_len=args.mem_len, steps=args.max_iters,
                  wall_s=round(wall, 1), json=path)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_main(main)
