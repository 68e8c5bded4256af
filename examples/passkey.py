"""Passkey retrieval (Mohtashami & Jaggi, 2023) past the training length: a small RoPE model that
retrieves a 5-digit key at its training length T, then its accuracy at 1, 2, 4 and 8 T and at
every depth, with dense attention, bounded and compressed KV caches, RoPE extension (PI, NTK,
YaRN; zero-shot and fine-tuned) and a recurrence memory (Transformer-XL).

    python examples/passkey.py                      # about 6 minutes on 2 cores
    python examples/passkey.py --quick=true         # about 4 minutes: less of everything
    python examples/passkey.py --methods=dense,yarn,yarn_ft --lengths=1,4

1. The texts (data/passkey.py): the landmark-attention prompt, a key sentence at a random depth
   in repeated filler, "What is the pass key? The pass key is" at the end. A byte-level BPE is
   trained on such texts with PASSKEY_PATTERN, which keeps digits single and cuts the rest into
   sentences: every filler sentence is one token, so T = 128 tokens hold up to 20 repetitions
   of the filler (100 sentences) and 8 T = 1024 tokens 200 of them.
2. The model: a Llama-style GPT (RoPE, RMSNorm, SwiGLU; 2 layers, 64 wide, 4 heads, 0.13M
   parameters: two layers suffice for an induction-style copy) trained on passkey texts of up to
   T tokens, the loss on the answer alone (" " and the 5 digits). Saved to out_dir and reloaded
   when the configuration and recipe match.
   The recipe comes from trials of this model at T = 128, batch 16, AdamW at lr 3e-3 (cosine to
   3e-4), accuracy at T on 32-64 prompts: with the loss on the answer, 0 % at 500 steps, 5 % at
   1000, 48 % at 2000, 88 % at 3000, 92 % at 3500 (about 36 ms a step when the shared machine
   was least loaded); with the loss on every token (the filler is predictable and dilutes the
   signal) still 22 % at 2000; lr 6e-3 never left the plateau where the digits are uniform
   (2500 steps); 128 wide or 8 heads learned no faster; batch 32 reached 94 % at 2500 steps at
   twice the cost per step. The digits are learned as a bag first (the first digit right, the
   others the key's digits in the wrong order) and in order last: the second layer must find
   the key digit that follows the one just written.
3. The evaluation: for each context length L (text and answer within L tokens) and depth, the
   same `samples` prompts for every method, the key decoded greedily (6 tokens); a prompt
   counts when the first 5 digits written are its key. Methods:
     dense        the trained weights in a GPT whose block_size covers 8 T: RoPE at positions
                  it never trained on (beyond T).
     window       a cache of the W = T/2 latest tokens, positions assigned inside the cache
                  (generate/long_caches.py's SinkCache with n_sink = 0).
     sinks        StreamingLLM: the first 4 tokens + the W - 4 latest.
     int4, int2   KIVI KV caches (keys per channel, values per token, the latest 32 in float).
     h2o_10..50   H2O eviction at budgets of 10, 25, 50 % of L (half recent, half heavy hitters).
     pi, ntk, yarn         model.set_rope_scaling({"type": ..., "factor": L / T}), zero-shot.
     pi_ft, ntk_ft, yarn_ft   each fine-tuned for finetune_iters steps on texts of up to F T
                  tokens (F = finetune_factor) with factor F, evaluated with factor max(F, L / T).
     xl           a TransformerXL (pos "rope", segments of T, a memory of T states per layer)
                  holding the trained weights (the same function as the GPT on one segment),
                  fine-tuned for xl_iters steps on texts of up to F T tokens read in consecutive
                  segments, the loss on the last T positions over a memory of what precedes them.
   The fine-tune settings come from 100-step trials from the trained model (lr 3e-3, batch 8):
   at F = 2, accuracy at 2 T became 33 % (PI), 53 % (NTK), 67 % (YaRN); at F = 4 with lr 1e-3,
   PI stayed at 0 % after 100 steps (a quarter of the positional resolution: the copy head no
   longer tells neighbouring digits apart), so F defaults to 2.
   Printed: accuracy per method and length (the mean over depths), per depth and length for
   dense attention, and each method's memory after one prompt of the longest length: bytes held,
   per token held and per token of context (XL holds hidden states: C floats a layer, not K and
   V).

What the figures show. Left heat map: method x length, which schemes keep the key reachable and
readable as the context grows. Right: depth x length for dense attention. In a quick run (the
model trained 3000 steps; 10 prompts per depth, so 50 per cell): dense reads the key at T (0.92)
and nowhere past it, at any depth, even when the key is the last sentence: every query meets
relative positions it never saw. Zero-shot PI / NTK / YaRN keep T (0.92) and do not reach 2 T
(<= 0.06). After 100 steps at 2 T, NTK and YaRN reach about half the prompts at 2 T and a fifth
at 4 T, YaRN still 0.22 at 8 T; PI is the slowest to recover. int4 matches dense at T (0.94), int2
loses a quarter (0.68); past T they inherit dense attention's failure. Window and sinks answer
only when the key is within their last W tokens (0.4 at T, 0.1-0.2 beyond): StreamingLLM keeps a
model fluent, not informed, and 4 sinks change nothing for this model. H2O fails even at T (0.2
at a 50 % budget): its heavy hitters are chosen by attention accumulated before the question is
asked, when nothing attends to the key. XL (100 steps) reads 0.76 at T and 0.44 at 2 T, where
the key is in its memory, and little beyond: a 2-layer memory of T states reaches back about
T + 2 T tokens (Dai et al., Sec. 3.2) only if it learns to carry the key in its states.

What they do not show at this scale. The model has 0.13M parameters and T = 128 tokens, on one
synthetic task whose filler is a 5-token cycle; results on real models (4k to 128k windows,
billions of parameters, thousands of fine-tuning steps) need not carry over, in particular the
ranking of PI, NTK and YaRN after a fine-tune of 100-300 steps. A cell of 50 prompts has a
standard error of up to 0.07. H2O's budgets count tokens of a 128-token model (10 % of T is 13
keys), far from the contexts it was designed for. Timings on a shared 2-core machine are
indicative only.
"""
import copy
import dataclasses
import json
import os
import time

import numpy as np

import tinygrad_llm as tl
from tinygrad_llm.data import (PASSKEY_PATTERN, filler_for_length, key_matches, passkey_batch,
                               passkey_text, passkey_training_text)
from tinygrad_llm.generate import cache_nbytes, generate, make_caches
from tinygrad_llm.models import GPT, GPTConfig, TransformerXL, TransformerXLConfig
from tinygrad_llm.tokenizers import BPETokenizer
from tinygrad_llm.train import (OptionError, TrainConfig, Trainer, load_model, parse_args,
                                run_main, save_checkpoint)
from tinygrad_llm.train.report import print_table, save_figure, write_json

ROPE_TYPES = {"pi": "linear", "ntk": "ntk", "yarn": "yarn"}
ALL_METHODS = ("dense", "window", "sinks", "int4", "int2", "h2o_10", "h2o_25", "h2o_50",
               "pi", "ntk", "yarn", "pi_ft", "ntk_ft", "yarn_ft", "xl")


@dataclasses.dataclass
class Args:
    quick: bool = False            # a short run: fewer steps and prompts
    out_dir: str = "out-passkey"   # the model, passkey.json and passkey.png
    device: str = "cpu"            # "cpu" or "cuda"
    block_size: int = 128          # T: the training length, in tokens
    n_layer: int = 2               # transformer blocks
    n_head: int = 4                # attention heads
    n_embd: int = 64               # width of the residual stream
    max_iters: int = None          # training steps (none: 4000; quick: 3000)
    batch_size: int = 16           # training texts per step
    learning_rate: float = 3e-3    # peak of the cosine schedule (floor: a tenth)
    lengths: str = "1,2,4,8"       # context lengths, in multiples of T
    depths: str = "0,0.25,0.5,0.75,1"   # relative depths of the key
    samples: int = None            # prompts per (length, depth) (none: 20; quick: 10)
    methods: str = "all"           # comma-separated subset of the methods, or "all"
    window: int = None             # W, tokens held by the window and sinks caches (none: T/2)
    finetune_factor: int = 2       # F: the RoPE fine-tunes and XL train at F T tokens
    finetune_iters: int = None     # steps of each RoPE fine-tune (none: 300; quick: 100)
    xl_iters: int = None           # steps of the XL fine-tune (none: 300; quick: 100)
    finetune_batch: int = 8        # texts per fine-tuning step
    finetune_lr: float = 3e-3      # peak learning rate of the fine-tunes
    eval_batch: int = 10           # prompts decoded together
    seed: int = 1337               # tokenizer texts, initialisation, batches, prompts


def _list(text, kind, name):
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise OptionError(f"--{name} must be comma-separated {kind.__name__}s, got "
                          f"{text!r}") from None
    if not values:
        raise OptionError(f"--{name} is empty")
    return values


def resolve(args):
    """Fill the fields left None from --quick; parse the lists."""
    quick = args.quick
    for key, value in dict(max_iters=3000 if quick else 4000, samples=10 if quick else 20,
                           finetune_iters=100 if quick else 300, xl_iters=100 if quick else 300,
                           window=args.block_size // 2).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.length_list = _list(args.lengths, int, "lengths")
    args.depth_list = _list(args.depths, float, "depths")
    if any(m < 1 for m in args.length_list) or any(not 0 <= d <= 1 for d in args.depth_list):
        raise OptionError(f"--lengths must be multiples >= 1 and --depths in [0, 1], got "
                          f"{args.lengths!r} and {args.depths!r}")
    methods = ALL_METHODS if args.methods == "all" else tuple(_list(args.methods, str,
                                                                    "methods"))
    unknown = sorted(set(methods) - set(ALL_METHODS))
    if unknown:
        raise OptionError(f"--methods: unknown {unknown}; expected some of {ALL_METHODS}")
    args.method_list = methods
    if not 5 < args.window < args.block_size:
        raise OptionError(f"--window={args.window} must be in (5, --block_size="
                          f"{args.block_size}) (4 sinks + at least 2 recent tokens)")
    if args.finetune_factor < 2:
        raise OptionError(f"--finetune_factor must be >= 2, got {args.finetune_factor}")
    return args


# ---- 1. texts and tokenizer ----------------------------------------------------------------
def train_tokenizer(seed):
    """BPE over 200 passkey texts with PASSKEY_PATTERN: one token per sentence, single digits.
    Training stops when no pair occurs twice (about 440 ids), short of the 1024 asked for."""
    rng = np.random.default_rng(seed)
    text = "\n".join(passkey_training_text(rng, 4) for _ in range(200))
    return BPETokenizer.train(text, vocab_size=1024, pattern=PASSKEY_PATTERN, special_tokens=())


def answer_loss(model, batch):
    """Cross-entropy on the answer tokens (the others are -100 in y)."""
    x, y = batch
    return model(x, y)[1]


def passkey_trainer(args, model, tokenizer, length, steps, batch_size, lr):
    """A Trainer whose batches are passkey texts of up to `length` tokens, the answer the
    only target."""
    max_filler = filler_for_length(tokenizer, length + 1)
    train = TrainConfig(batch_size=batch_size, block_size=length, max_iters=steps,
                        learning_rate=lr, min_lr=lr / 10, warmup_iters=min(50, steps // 10),
                        weight_decay=0.0, beta2=0.999, grad_clip=1.0, seed=args.seed,
                        out_dir=None, checkpoint=False, progress=False)
    device = model.device

    def batch_fn(_, rng):
        x, y = passkey_batch(rng, tokenizer, batch_size, length, max_filler,
                             targets="answer")
        return tl.backend.to_device(x, device), tl.backend.to_device(y, device)

    return Trainer(model, train.adamw(model.parameters()), None, None, train, log=None,
                   loss_fn=answer_loss, batch_fn=batch_fn)


def run_steps(trainer, steps, label, every=500):
    start, losses = time.perf_counter(), []
    for step in range(steps):
        losses.append(trainer.train_step())
        if (step + 1) % every == 0 or step + 1 == steps:
            print(f"{label} step {step + 1}: answer loss {np.mean(losses[-every:]):.4f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    return time.perf_counter() - start


def train_or_load(args):
    """(model in eval mode, tokenizer, training record): loaded from out_dir when it holds a
    model of the same configuration and steps, else trained and saved."""
    tokenizer = train_tokenizer(args.seed)
    config = GPTConfig.preset("llama", vocab_size=tokenizer.vocab_size,
                              block_size=args.block_size, n_layer=args.n_layer,
                              n_head=args.n_head, n_kv_head=args.n_head, n_embd=args.n_embd,
                              tie_embeddings=True)
    recipe = {"steps": args.max_iters, "batch_size": args.batch_size,
              "learning_rate": args.learning_rate, "seed": args.seed}
    path = os.path.join(args.out_dir, "passkey_model.safetensors")
    if os.path.exists(path):
        model, stored, record = load_model(path)
        if record.get("model_config") == config.to_dict() and record.get("recipe") == recipe \
                and stored == tokenizer:
            print(f"loaded {path} (trained {record['train_s']:.0f} s)")
            return model.to(args.device), tokenizer, record
        print(f"{path} holds another configuration or recipe: training afresh")
    tl.manual_seed(args.seed)
    model = GPT(config).to(args.device)
    print(f"training a {model.num_parameters() / 1e6:.2f}M-parameter model for {args.max_iters} "
          f"steps on passkey texts of up to T={args.block_size} tokens")
    trainer = passkey_trainer(args, model, tokenizer, args.block_size, args.max_iters,
                              args.batch_size, args.learning_rate)
    wall = run_steps(trainer, args.max_iters, "train")
    record = {"model_config": config.to_dict(), "tokenizer": tokenizer.to_dict(),
              "recipe": recipe, "train_s": wall}
    save_checkpoint(path, model, record=record)
    return model.eval(), tokenizer, record


# ---- 2. the evaluation set and the methods ---------------------------------------------------
def prompt_set(args, tokenizer):
    """{L: (ids (N, P) int64, keys, depths)}: the same prompts for every method, samples per
    depth, the whole text (prompt and answer) within L tokens."""
    rng = np.random.default_rng(args.seed + 1)
    prompts = {}
    for m in args.length_list:
        length = m * args.block_size
        n_filler = filler_for_length(tokenizer, length)
        ids, keys, depths = [], [], []
        for depth in args.depth_list:
            for _ in range(args.samples):
                prompt, key = passkey_text(rng, n_filler, depth)
                ids.append(tokenizer.encode(prompt))
                keys.append(key)
                depths.append(depth)
        if len({len(i) for i in ids}) != 1:
            raise ValueError(f"prompts of length {length} encode to different lengths; the "
                             "tokenizer must keep the filler sentences and digits apart")
        prompts[length] = (np.stack(ids).astype(np.int64), keys, np.array(depths))
    return prompts


def with_block_size(model, n):
    """The same weights in a GPT of block_size n (RoPE tables are not parameters)."""
    long = GPT(dataclasses.replace(model.config, block_size=n, rope_scaling=None))
    long.load_state_dict(model.state_dict())
    return long.to(model.device).eval()


def rescaled(model, kind, factor):
    """A copy of `model` with RoPE scaling `kind` at `factor` (plain RoPE at factor 1)."""
    out = copy.deepcopy(model)
    return out.set_rope_scaling(None if factor <= 1 else {"type": kind, "factor": float(factor)})


def decode_gpt(model, ids, args, implementation=None, config=None):
    """Greedy continuations (N, 6) of the prompts ids (N, P), eval_batch at a time."""
    out = []
    for start in range(0, len(ids), args.eval_batch):
        batch = ids[start:start + args.eval_batch]
        full = generate(model, batch, 6, temperature=0, cache_implementation=implementation,
                        cache_config=config)
        out.append(full[:, batch.shape[1]:])
    return np.concatenate(out)


def decode_xl(model, ids, args):
    out = []
    for start in range(0, len(ids), args.eval_batch):
        batch = ids[start:start + args.eval_batch]
        out.append(model.generate(batch, 6, temperature=0)[:, batch.shape[1]:])
    return np.concatenate(out)


def kv_bytes(model, ids, implementation=None, config=None):
    """(bytes held, tokens held) by the caches after feeding one prompt (P,) as generate does:
    a prefill chunk at a time. The dense cache is sized to the prompt, so all of it is held."""
    caches = make_caches(model, 1, len(ids), slack=0, implementation=implementation,
                         **(config or {}))
    chunk = caches.prefill_chunk or len(ids)
    with tl.no_grad():
        for start in range(0, len(ids), chunk):
            model(tl.backend.to_device(ids[None, start:start + chunk], model.device),
                  caches=caches, offset=start)
    return cache_nbytes(caches), caches[0].held        # every layer holds as many


# ---- 3. fine-tunes ------------------------------------------------------------------------
def finetune_rope(args, model, tokenizer, kind):
    """A copy of `model` with RoPE scaling `kind` at factor F, trained on texts of up to F T."""
    factor = args.finetune_factor
    tuned = rescaled(model, ROPE_TYPES[kind], factor)
    tl.manual_seed(args.seed)
    trainer = passkey_trainer(args, tuned, tokenizer, factor * args.block_size,
                              args.finetune_iters, args.finetune_batch, args.finetune_lr)
    wall = run_steps(trainer, args.finetune_iters, f"{kind}_ft (x{factor})", every=50)
    return tuned.eval(), wall


def xl_from_gpt(model, mem_len):
    """A TransformerXL (pos "rope") holding the GPT's weights: the GPT's packed q|k|v projection
    split into XL's q and k|v (heads in the same order), the rest by name."""
    c = model.config
    config = TransformerXLConfig(**{**c.to_dict(), "pos": "rope", "mem_len": mem_len,
                                    "rope_scaling": None})
    xl = TransformerXL(config)
    width = c.n_head * c.head_dim
    state = {}
    for name, value in model.state_dict().items():
        if name.endswith("attn.qkv.weight"):
            state[name.replace("qkv", "q")] = value[:width]
            state[name.replace("qkv", "kv")] = value[width:]
        else:
            state[name] = value
    xl.load_state_dict(state)
    return xl.to(model.device)


def finetune_xl(args, model, tokenizer):
    """XL from the trained weights, trained on texts of up to F T tokens (one filler count per
    batch, so the rows have one length): the last T positions, which hold the answer and carry
    the loss, read over a memory of the text before them, itself read in segments of T."""
    T, length = args.block_size, args.finetune_factor * args.block_size
    xl = xl_from_gpt(model, mem_len=T)
    tl.manual_seed(args.seed)
    train = TrainConfig(batch_size=args.finetune_batch, block_size=T, max_iters=args.xl_iters,
                        learning_rate=args.finetune_lr, min_lr=args.finetune_lr / 10,
                        warmup_iters=min(50, args.xl_iters // 10), weight_decay=0.0,
                        beta2=0.999, grad_clip=1.0, seed=args.seed, out_dir=None,
                        checkpoint=False, progress=False)
    max_filler = filler_for_length(tokenizer, length)
    device = xl.device

    def batch_fn(_, rng):
        n_filler = int(rng.integers(0, max_filler + 1))
        rows = [passkey_text(rng, n_filler, float(rng.random())) for _ in range(train.batch_size)]
        ids = np.stack([tokenizer.encode(p + " " + k) for p, k in rows]).astype(np.int64)
        return ids

    def loss_fn(m, ids):
        x, y = ids[:, :-1], ids[:, 1:].copy()                            # (B, n) each
        n = x.shape[1]
        y[:, :n - 6] = -100                            # the targets: " " and the 5 digits
        start = max(0, n - T)                          # the last T positions carry the loss
        mems = None
        with tl.no_grad():                             # what precedes them: the memory
            for s in range(0, start, T):
                _, mems = m(tl.backend.to_device(x[:, s:min(s + T, start)], device), mems=mems)
        _, loss, _ = m(tl.backend.to_device(x[:, start:], device),
                       tl.backend.to_device(y[:, start:], device), mems=mems)
        return loss

    trainer = Trainer(xl, train.adamw(xl.parameters()), None, None, train, log=None,
                      loss_fn=loss_fn, batch_fn=batch_fn)
    wall = run_steps(trainer, args.xl_iters, f"xl (segments of {T}, memory {T})", every=50)
    return xl.eval(), wall


# ---- 4. the study ------------------------------------------------------------------------
def methods(args, model, tokenizer):
    """{name: (decode(ids, L) -> (N, 6) ids, kv(ids, L) -> (bytes, held) or None)}, built lazily:
    the fine-tunes run when their row is reached."""
    T, W, top = args.block_size, args.window, max(args.length_list) * args.block_size
    dense = with_block_size(model, top + 8)
    table = {}

    def cache_method(net, implementation, config_of):
        return (lambda ids, L: decode_gpt(net(L), ids, args, implementation, config_of(L)),
                lambda ids, L: kv_bytes(net(L), ids[0], implementation, config_of(L)))

    table["dense"] = cache_method(lambda L: dense, None, lambda L: None)
    table["window"] = cache_method(lambda L: model, "window", lambda L: {"window": W})
    table["sinks"] = cache_method(lambda L: model, "sinks",
                                  lambda L: {"n_sink": 4, "window": W - 4})
    for bits in (4, 2):
        table[f"int{bits}"] = cache_method(lambda L: dense, "quantized",
                                           lambda L, b=bits: {"bits": b})
    for pct in (10, 25, 50):
        def h2o(L, pct=pct):
            budget = max(2, round(pct / 100 * L))
            return {"budget": budget, "recent": budget // 2}
        table[f"h2o_{pct}"] = cache_method(lambda L: dense, "h2o", h2o)
    for name, kind in ROPE_TYPES.items():
        table[name] = cache_method(lambda L, k=kind: rescaled(model, k, L / T), None,
                                   lambda L: None)
    tuned = {}

    def fine_tuned(name):
        if name not in tuned:
            tuned[name] = finetune_rope(args, model, tokenizer, name)
        return tuned[name][0]

    for name, kind in ROPE_TYPES.items():
        def net(L, name=name, kind=kind):
            factor = max(args.finetune_factor, L / T)
            return rescaled(fine_tuned(name), kind, factor) if factor > args.finetune_factor \
                else fine_tuned(name)
        table[f"{name}_ft"] = cache_method(net, None, lambda L: None)
    xl = {}

    def xl_model():
        if "model" not in xl:
            xl["model"], xl["wall"] = finetune_xl(args, model, tokenizer)
        return xl["model"]

    def xl_kv(ids, L):
        m = xl_model()
        with tl.no_grad():
            mems = None
            for s in range(0, ids.shape[1], T):
                _, mems = m(tl.backend.to_device(ids[:1, s:s + T], m.device), mems=mems)
        return sum(int(v.data.nbytes) for v in mems), mems[0].shape[1]

    table["xl"] = (lambda ids, L: decode_xl(xl_model(), ids, args), xl_kv)
    walls = {"finetune_s": lambda: {f"{k}_ft": round(v[1], 1) for k, v in tuned.items()},
             "xl_s": lambda: round(xl.get("wall", 0.0), 1)}
    return table, walls


def evaluate(args, model, tokenizer):
    """(rows: one per method, length and depth; memory rows: one per method; wall seconds)."""
    prompts = prompt_set(args, tokenizer)
    table, walls = methods(args, model, tokenizer)
    rows, memory, wall = [], [], {}
    for name in args.method_list:
        decode, kv = table[name]
        start = time.perf_counter()
        for L, (ids, keys, depths) in prompts.items():
            out = decode(ids, L)
            hits = np.array([key_matches(tokenizer.decode(o), k) for o, k in zip(out, keys)])
            for depth in args.depth_list:
                at = depths == depth
                rows.append({"method": name, "length": L, "x T": L // args.block_size,
                             "depth": depth, "accuracy": float(hits[at].mean()),
                             "n": int(at.sum())})
        L = max(prompts)
        nbytes, held = kv(prompts[L][0], L)
        memory.append({"method": name, "at length": L, "bytes held": nbytes,
                       "tokens held": held, "bytes/token held": nbytes / held,
                       "bytes/token of context": nbytes / prompts[L][0].shape[1]})
        wall[name] = round(time.perf_counter() - start, 1)
        mean = {r["x T"]: r["accuracy"] for r in summarize(rows, args) if r["method"] == name}
        print(f"{name}: " + ", ".join(f"{m}T {a:.2f}" for m, a in mean.items())
              + f" ({wall[name]:.0f} s)", flush=True)
    return rows, memory, wall, {k: f() for k, f in walls.items()}


def summarize(rows, args):
    """Accuracy per method and length, the mean over depths (every depth has `samples`)."""
    out = {}
    for r in rows:
        out.setdefault((r["method"], r["x T"]), []).append(r["accuracy"])
    return [{"method": m, "x T": x, "accuracy": float(np.mean(v))} for (m, x), v in out.items()]


# ---- the figure ----------------------------------------------------------------------------
def draw(args, rows, summary):
    names = list(dict.fromkeys(r["method"] for r in summary))
    mults = args.length_list
    grid = np.full((len(names), len(mults)), np.nan)
    for r in summary:
        grid[names.index(r["method"]), mults.index(r["x T"])] = r["accuracy"]
    dense = np.full((len(args.depth_list), len(mults)), np.nan)
    for r in rows:
        if r["method"] == "dense":
            dense[args.depth_list.index(r["depth"]), mults.index(r["x T"])] = r["accuracy"]

    def figure(plt):
        fig, axes = plt.subplots(1, 2, figsize=(12, max(4.5, 0.35 * len(names) + 1.5)))
        for ax, values, ylabels, title in (
                (axes[0], grid, names, "accuracy (mean over depths)"),
                (axes[1], dense, [f"{d:g}" for d in args.depth_list],
                 "dense attention: accuracy by depth")):
            im = ax.imshow(values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
            ax.set_xticks(range(len(mults)), [f"{m}T" for m in mults])
            ax.set_yticks(range(len(ylabels)), ylabels)
            for i in range(values.shape[0]):
                for j in range(values.shape[1]):
                    if np.isfinite(values[i, j]):
                        ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center",
                                color="white" if values[i, j] < 0.6 else "black", fontsize=8)
            ax.set_xlabel(f"context length (T = {args.block_size} tokens)")
            ax.set_title(title)
            fig.colorbar(im, ax=ax, fraction=0.046)
        axes[1].set_ylabel("depth of the key (0: start, 1: end)")
        fig.tight_layout()
    return figure


def main(argv):
    (args,) = parse_args(argv, Args)
    args = resolve(args)
    t0 = time.perf_counter()
    os.makedirs(args.out_dir, exist_ok=True)
    model, tokenizer, record = train_or_load(args)
    rows, memory, wall, finetune_walls = evaluate(args, model, tokenizer)
    summary = summarize(rows, args)
    by_length = {}
    for r in summary:
        by_length.setdefault(r["method"], {"method": r["method"]})[f"{r['x T']}T"] = \
            r["accuracy"]
    print_table(list(by_length.values()), title=f"passkey accuracy by context length (T = "
                f"{args.block_size}; {args.samples} prompts x {len(args.depth_list)} depths "
                f"per cell)")
    if "dense" in args.method_list:
        depth_rows = {}
        for r in rows:
            if r["method"] == "dense":
                depth_rows.setdefault(r["depth"], {"depth": r["depth"]})[f"{r['x T']}T"] = \
                    r["accuracy"]
        print_table(list(depth_rows.values()), title="dense attention: accuracy by depth")
    print_table(memory, title="KV memory after one prompt of the longest length (batch 1)")
    png = save_figure(os.path.join(args.out_dir, "passkey.png"), draw(args, rows, summary))
    at_t = by_length.get("dense", {}).get("1T")
    at_t = None if at_t is None else round(at_t, 3)
    result = {"accuracy": {m: {k: round(v, 3) for k, v in r.items() if k != "method"}
                           for m, r in by_length.items()},
              "dense_accuracy_at_T": at_t, "train_steps": record["recipe"]["steps"],
              "train_s": round(record["train_s"], 1), **finetune_walls,
              "wall_s": round(time.perf_counter() - t0, 1)}
    write_json(os.path.join(args.out_dir, "passkey.json"), {
        "args": {k: v for k, v in dataclasses.asdict(args).items()}, "train": record["recipe"],
        "train_s": record["train_s"], "rows": rows, "summary": summary, "memory": memory,
        "method_wall_s": wall, "figure": png, "result": result})
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_main(main)
