"""Architecture search on tiny Shakespeare: successive halving over GPT configurations under a
parameter budget and, separately, under a measured decode-speed budget; the Pareto front of
validation loss against parameters and against tokens/s; each winner retrained against a GPT-2
default at equal training compute, two seeds each.

    python examples/nas.py                  # the full study (estimated, not run: about 40 minutes)
    python examples/nas.py --quick=true     # a small space, short runs (2.4 minutes, quiet cores)
    python examples/nas.py --param_budget=40000 --min_tokens_per_s=800   # your own budgets

Reading order: Args; data (characters, the 90/10 split, fixed validation batches); the default
(GPT-2 choices) and the space; one candidate (a model with its own Trainer, trained in pieces so
that a survivor continues); the two searches (pool -> budget -> successive_halving); the Pareto
fronts over the first rung; the retraining at equal compute; the tables, JSON, figure and the
last JSON line.

1. Data: tiny Shakespeare at the character level (65 symbols, no tokenizer to train), the first
   90% for training and the last 10% for validation; --eval_batches windows of the validation
   text drawn once: every candidate is scored on the same batches.
2. The space (tinygrad_llm.train.search.SEARCH_SPACE): depth, width, heads, attention kind (MHA,
   GQA, MQA), FFN multiple, LayerNorm / RMSNorm, pre / post norm, learned / RoPE / ALiBi
   positions, GELU / ReLU / SwiGLU; no biases. A pool of --oversample x --n_candidates distinct
   valid configurations is drawn with --seed.
3. Budgets. Parameters: non-embedding parameters <= --param_budget (none: the default's own
   count). Speed: greedy KV-cached decoding at batch 1, measured on untrained weights (speed
   does not depend on them), the fastest of --speed_repeats calls, for each candidate of the
   pool until the search has its candidates and for every candidate trained; one slower than
   --min_tokens_per_s (none: --latency_fraction x the default's measured speed) is excluded.
   Each search keeps the first --n_candidates of the pool inside its budget (fewer when the
   pool holds fewer: the budgets line says how many).
4. Successive halving (Jamieson & Talwalkar, 2016; Li et al., 2018): rung k trains each
   survivor to --min_steps x eta^k steps (a survivor continues its run, model and AdamW state
   kept; constant learning rate after a short warmup, so a rung's runs are not at different
   points of a schedule), scores it on the validation batches and keeps the best 1/eta. Losses
   are compared only within a rung.
5. Pareto fronts over the first rung of both searches together (every candidate trained the same
   steps on the same batches): validation loss against parameters, and against tokens/s.
6. Retraining at equal compute: the default for --retrain_steps steps, each winner for the steps
   that buy the same training FLOPs (train.scaling.train_flops_per_token: a cheaper-per-token
   model trains longer), warmup + cosine to each run's own last step, seeds --seed and
   --seed + 1 (+ ...). Gain = default - winner (mean validation loss); its standard error is
   sqrt(s_d^2 / n + s_w^2 / n) over the n seeds; the verdict says "inside the error bar" when
   |gain| < 2 standard errors.

Writes out_dir/nas.json and out_dir/nas.png (left: loss at the first rung against non-embedding
parameters, right: against decode tokens/s; the fronts drawn, the two winners starred, the
budgets as dashed lines), prints the tables and ends with one JSON line. Nothing is resumable:
the searches keep their models in memory, and the quick study is short enough to rerun.

What this can show: which choices win at this scale and budget (a few thousand steps on one
megabyte of characters), how a speed budget and a parameter budget pick different shapes (the
speed budget admits models larger than the parameter budget allows, and excludes the ones
without a fast decode path), and whether a searched winner beats a plain GPT-2 block when both
get the same compute. What it cannot show: the choices that win at scale
(successive halving ranks by early loss, which favours fast starters; Li et al. 2018 discuss
it); speeds on another machine (the tokens/s are wall-clock figures of this one, under whatever
else runs on it); the speed an architecture would have in a tuned engine (post-LN and ALiBi
models have no fused batch-1 step here, generate/decode_step.py, and decode through the model's
forward several times slower: the speed budget excludes them for that, not for their
arithmetic); or a gain smaller than the seed-to-seed spread: two seeds give a rough error bar,
and the verdict says when a gain is inside it.

What the quick study gave (2.4 minutes on 2 quiet cores; 9 candidates per search, rungs of 50,
150 and 450 steps, retraining at 3.97e11 FLOPs): under the parameter budget (<= 55,536, the
default's) the winner is a 2x48 MQA block with RMSNorm after the sublayers, RoPE and SwiGLU at
FFN 2x, 2.018 against the GPT-2 default's 2.166 (gain 0.148 +- 0.017, two seeds each); under
the speed budget (>= 0.9x the default's tokens/s) a 3x64 pre-LN RoPE GELU block, 2.057 (gain
0.109 +- 0.017, in fewer steps: it costs more FLOPs a token). Both winners use RoPE where the
default learns its positions. The parameter winner is off the first rung's front: it started
slowly (post-LN) and won at 450 steps, which is what later rungs are for. The decode speeds
split in two groups, 8k-10k tokens/s for what the fused batch-1 step runs and 1.2k-5k for
post-LN and ALiBi models: at this size batch-1 decoding is per-token overhead, so the speed
budget picks the configurations the fast path supports more than any depth or width, and the
absolute figures move up to 2x between runs on this machine (the default measured 4.4k and
9.2k tokens/s in two quiet runs).
"""
import dataclasses
import json
import math
import os
import time

import numpy as np

import tinygrad_llm as tl
from tinygrad_llm.data import get_batch, shakespeare, split
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.optim import param_groups_for_weight_decay
from tinygrad_llm.tokenizers import CharTokenizer
from tinygrad_llm.train import OptionError, TrainConfig, Trainer, parse_args, run_main
from tinygrad_llm.train.report import print_table, save_figure, write_json
from tinygrad_llm.train.scaling import non_embedding_params, train_flops_per_token
from tinygrad_llm.train.search import (SEARCH_SPACE, decode_tokens_per_second, pareto_front,
                                       sample_configs, successive_halving, within_budget)

QUICK_SPACE = {**SEARCH_SPACE, "n_layer": (1, 2, 3), "n_embd": (32, 48, 64),
               "n_head": (1, 2, 4)}


@dataclasses.dataclass
class Args:
    quick: bool = False          # a small space, 9 candidates, short runs (within 10 minutes)
    out_dir: str = "out-nas"     # nas.json and nas.png
    device: str = "cpu"          # "cpu" or "cuda"
    text_chars: int = None       # use only the first this many characters (none: all)
    block_size: int = 64         # characters per training sequence
    batch_size: int = 16         # sequences per step
    n_candidates: int = None     # configurations per search (none: 27; quick: 9)
    oversample: int = 8          # the pool: oversample x n_candidates configurations drawn
    min_steps: int = None        # steps of the first rung (none: 60; quick: 50)
    eta: int = 3                 # keep the best 1/eta of each rung, train them eta x longer
    learning_rate: float = 3e-3  # the peak (search: constant after warmup; retraining: cosine)
    warmup_steps: int = 10       # linear warmup of the search's runs
    weight_decay: float = 0.1    # AdamW's decoupled decay (matrices)
    eval_batches: int = 8        # validation batches (drawn once, the same for every run)
    default_size: str = None     # the GPT-2 default "LxC" (none: 2x64; quick: 2x48)
    param_budget: int = None     # max non-embedding parameters (none: the default's count)
    min_tokens_per_s: float = None   # the speed budget (none: latency_fraction x the default's)
    latency_fraction: float = 0.9    # the speed budget as a fraction of the default's tokens/s
    decode_tokens: int = None    # tokens decoded per speed measurement (none: block_size - 8)
    speed_repeats: int = 7       # timed decodes per candidate; the fastest counts
    retrain_steps: int = None    # the default's steps when retrained (none: 1500; quick: 1000)
    retrain_seeds: int = 2       # seeds per retrained model (>= 2: the error bar needs two)
    seed: int = 0                # the pool, initialisation, batches


# ---- data ---------------------------------------------------------------------------------
def load_data(args):
    """(vocab_size, train ids, val ids, the fixed validation batches)."""
    text = shakespeare()
    if args.text_chars is not None:
        text = text[:args.text_chars]
    tokenizer = CharTokenizer.from_text(text)
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
    train_ids, val_ids = split(ids, 0.1)
    if len(val_ids) <= args.block_size:
        raise OptionError(f"--text_chars: the validation split has {len(val_ids)} characters, "
                          f"not more than --block_size={args.block_size}")
    rng = np.random.default_rng([args.seed, 1])
    val_set = [get_batch(val_ids, args.batch_size, args.block_size, rng)
               for _ in range(args.eval_batches)]
    return tokenizer.vocab_size, train_ids, val_ids, val_set


# ---- the default and the space ------------------------------------------------------------
def fixed_fields(vocab_size, args):
    """What every configuration shares: the vocabulary, the context, no biases, no dropout."""
    return dict(vocab_size=vocab_size, block_size=args.block_size, bias=False, dropout=0.0)


def parse_size(size):
    """'LxC' -> (L, C), C a multiple of 16 (GPT-2's head width)."""
    layers, _, width = size.partition("x")
    if not (layers.isdigit() and width.isdigit() and int(layers) > 0 and int(width) >= 16
            and int(width) % 16 == 0):
        raise OptionError(f"--default_size: expected 'LxC' with C a multiple of 16, like "
                          f"'2x48', got {size!r}")
    return int(layers), int(width)


def default_config(size, vocab_size, args):
    """GPT-2's choices at size "LxC": pre-LayerNorm, learned positions, GELU, MHA with heads of
    width 16, FFN 4 C."""
    layers, width = parse_size(size)
    return GPTConfig.preset("gpt2", n_layer=layers, n_embd=width, n_head=width // 16,
                            **fixed_fields(vocab_size, args))


def describe(config):
    """A configuration in one short line: '3x48 h4/kv1 ffn96 rms post alibi swiglu'."""
    return (f"{config.n_layer}x{config.n_embd} h{config.n_head}/kv{config.n_kv_head} "
            f"ffn{config.ffn_hidden} {'ln' if config.norm == 'layernorm' else 'rms'} "
            f"{'pre' if config.prenorm else 'post'} {config.pos} {config.mlp}")


class Speeds:
    """Decode tokens/s per configuration, measured once each on an untrained model."""

    def __init__(self, args):
        self.args, self.measured = args, {}

    def __call__(self, config):
        key = json.dumps(config.to_dict(), sort_keys=True)
        if key not in self.measured:
            tl.manual_seed(self.args.seed)
            model = GPT(config).to(self.args.device)
            model.eval()
            self.measured[key] = decode_tokens_per_second(
                model, new_tokens=self.args.decode_tokens, repeats=self.args.speed_repeats)
        return self.measured[key]


# ---- one candidate ------------------------------------------------------------------------
class Candidate:
    """A configuration with its model and Trainer, trained in pieces: train(steps) continues
    from where the last call stopped (the weights, AdamW's moments and the batch stream kept)."""

    def __init__(self, config, args, train_ids, max_steps, seed, cosine=False):
        tl.manual_seed(seed)
        self.config, self.args = config, args
        self.model = GPT(config).to(args.device)
        lr = args.learning_rate
        warmup = max(1, round(0.05 * max_steps)) if cosine else args.warmup_steps
        self.train_config = TrainConfig(
            batch_size=args.batch_size, block_size=args.block_size, max_iters=max_steps,
            learning_rate=lr, min_lr=lr * (0.1 if cosine else 1.0), warmup_iters=warmup,
            weight_decay=args.weight_decay, beta2=0.99, grad_clip=1.0, seed=seed,
            out_dir=None, checkpoint=False, progress=False, on_nan="skip")
        optimizer = self.train_config.adamw(param_groups_for_weight_decay(self.model,
                                                                          args.weight_decay))
        self.trainer = Trainer(self.model, optimizer, train_ids, None, self.train_config,
                               log=None)
        self.seconds = 0.0

    def train(self, steps):
        start = time.perf_counter()
        for _ in range(steps):
            self.trainer.train_step()
        self.seconds += time.perf_counter() - start

    def val_loss(self, batches):
        self.model.eval()
        with tl.no_grad():
            losses = [self.model(tl.backend.to_device(x, self.args.device),
                                 tl.backend.to_device(y, self.args.device))[1].item()
                      for x, y in batches]
        self.model.train()
        return float(np.mean(losses))

    def release(self):
        """Drop the model and optimizer (a candidate out of the search keeps only its numbers)."""
        self.model = self.trainer = None


# ---- the searches -------------------------------------------------------------------------
def run_search(name, entries, args, train_ids, val_set):
    """successive_halving over `entries` (dicts with "config"); adds each one's losses per rung
    to it and returns the search's result."""
    max_steps = 10 ** 9            # min_lr = lr: flat after warmup, whatever the horizon
    live = {}

    def train(i, entry, steps):
        if i not in live:
            live[i] = Candidate(entry["config"], args, train_ids, max_steps, args.seed)
        live[i].train(steps)

    def evaluate(i, entry):
        return live[i].val_loss(val_set)

    print(f"\n{name} search: {len(entries)} candidates, {args.min_steps} steps in the first "
          f"rung, eta {args.eta}", flush=True)
    result = successive_halving(entries, train, evaluate, args.min_steps, args.eta,
                                log=lambda line: print(f"  {line}", flush=True))
    for r in result["records"]:
        entries[r["index"]].setdefault("losses", {})[r["steps"]] = r["loss"]
    for i, candidate in live.items():
        entries[i]["train_s"] = candidate.seconds
        candidate.release()
    return result


def pool(args, fixed):
    try:
        drawn = sample_configs(QUICK_SPACE if args.quick else SEARCH_SPACE,
                               args.oversample * args.n_candidates, args.seed, fixed=fixed)
    except ValueError as err:
        raise OptionError(f"--n_candidates: {err}") from None
    return [{"desc": describe(c), "config": c, "params": non_embedding_params(c)}
            for _, c in drawn]


def budgeted(entries, key, limit, option, at_most, n):
    """The first n entries inside the budget (the pool's order is random); an OptionError
    naming the budget and the closest entry when none is."""
    try:
        kept = within_budget(entries, lambda e: e[key], limit, option, at_most=at_most)
    except ValueError as err:
        raise OptionError(str(err)) from None
    return kept[:n]


def fast_enough(entries, speeds, floor, n):
    """budgeted for the speed floor, measuring each entry of the pool as it is reached and
    stopping at the n-th inside (a measurement costs a fraction of a second)."""
    kept = []
    for e in entries:
        e["tokens_per_s"] = speeds(e["config"])
        kept += [e] if e["tokens_per_s"] >= floor else []
        if len(kept) == n:
            return kept
    return budgeted(entries, "tokens_per_s", floor, "--min_tokens_per_s", False, n)


# ---- retraining at equal compute ----------------------------------------------------------
def retrain(config, steps, args, train_ids, val_set):
    """Final validation losses of `config` trained from scratch for `steps`, one per seed."""
    losses = []
    for k in range(args.retrain_seeds):
        run = Candidate(config, args, train_ids, steps, args.seed + k, cosine=True)
        run.train(steps)
        losses.append(run.val_loss(val_set))
        print(f"  {describe(config)}, seed {args.seed + k}, {steps} steps: {losses[-1]:.4f}",
              flush=True)
    return losses


def comparison(search, winner, default, args, train_ids, val_set, cache):
    """The winner against the default at equal training FLOPs, two seeds or more each."""
    tokens_per_step = args.batch_size * args.block_size
    flops = args.retrain_steps * tokens_per_step * default["flops_per_token"]
    steps = int(flops // (tokens_per_step * winner["flops_per_token"]))
    for entry, n in ((default, args.retrain_steps), (winner, steps)):
        key = (entry["desc"], n)
        if key not in cache:
            cache[key] = retrain(entry["config"], n, args, train_ids, val_set)
    d, w = np.array(cache[(default["desc"], args.retrain_steps)]), np.array(
        cache[(winner["desc"], steps)])
    gain = float(d.mean() - w.mean())
    stderr = float(math.sqrt(d.var(ddof=1) / len(d) + w.var(ddof=1) / len(w)))
    if abs(gain) < 2 * stderr:
        verdict = "inside the error bar"
    else:
        verdict = "winner better" if gain > 0 else "default better"
    return {"search": search, "winner": winner["desc"], "winner_steps": steps,
            "default": default["desc"], "default_steps": args.retrain_steps,
            "flops": flops, "winner_loss": float(w.mean()), "default_loss": float(d.mean()),
            "winner_losses": w.tolist(), "default_losses": d.tolist(), "gain": gain,
            "gain_stderr": stderr, "verdict": verdict}


# ---- the figure ---------------------------------------------------------------------------
def _draw(rows, fronts, winners, budgets):
    def draw(plt):
        fig, axes = plt.subplots(1, 2, figsize=(13, 5))
        loss = np.array([r["loss"] for r in rows])
        for ax, key, front, budget, label in (
                (axes[0], "params", fronts["params"], budgets["params"],
                 "non-embedding parameters"),
                (axes[1], "tokens_per_s", fronts["tokens_per_s"], budgets["tokens_per_s"],
                 "decode tokens/s (batch 1, KV cache)")):
            x = np.array([r[key] for r in rows], dtype=np.float64)
            ax.plot(x, loss, "o", color="0.7", ms=5, label="candidates (first rung)")
            order = sorted(front, key=lambda i: x[i])
            ax.plot(x[order], loss[order], "o-", color="C0", ms=7, label="Pareto front")
            for (search, i), colour in zip(winners.items(), ("C3", "C2")):
                ax.plot(x[i], loss[i], "*", color=colour, ms=16, label=f"{search} winner")
            ax.axvline(budget, color="k", ls="--", lw=1, label="budget")
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(plt.NullFormatter())
            ax.set_xlabel(label)
            ax.set_ylabel("validation loss (nats / char)")
            ax.legend(fontsize=8)
        axes[0].set_title("loss against size (lower left is better)")
        axes[1].set_title("loss against decode speed (lower right is better)")
        fig.tight_layout()
    return draw


# ---- main ---------------------------------------------------------------------------------
def _defaults(args):
    for name, full, quick in (("n_candidates", 27, 9), ("min_steps", 60, 50),
                              ("default_size", "2x64", "2x48"), ("retrain_steps", 1500, 1000)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.decode_tokens is None:       # after a one-token prompt, within the positions
        args.decode_tokens = max(1, args.block_size - 8)
    for name, low in (("block_size", 1), ("batch_size", 1), ("n_candidates", 1),
                      ("oversample", 1), ("min_steps", 1), ("eta", 2), ("warmup_steps", 0),
                      ("eval_batches", 1), ("decode_tokens", 1), ("speed_repeats", 1),
                      ("retrain_steps", 1), ("retrain_seeds", 2)):
        if getattr(args, name) < low:
            raise OptionError(f"--{name}: expected an int >= {low}, got {getattr(args, name)}")
    if args.decode_tokens >= args.block_size:
        raise OptionError(f"--decode_tokens: expected fewer than --block_size={args.block_size} "
                          f"(a one-token prompt comes first), got {args.decode_tokens}")
    if not 0 < args.latency_fraction:
        raise OptionError(f"--latency_fraction: expected a number > 0, got "
                          f"{args.latency_fraction}")
    for name in ("param_budget", "min_tokens_per_s"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise OptionError(f"--{name}: expected a positive number or none, got "
                              f"{getattr(args, name)}")
    parse_size(args.default_size)


def main(argv):
    (args,) = parse_args(argv, Args)
    _defaults(args)
    wall = time.perf_counter()
    vocab_size, train_ids, val_ids, val_set = load_data(args)
    fixed = fixed_fields(vocab_size, args)
    speeds = Speeds(args)

    # the default and the budgets
    base = default_config(args.default_size, vocab_size, args)
    default = {"desc": describe(base), "config": base, "params": non_embedding_params(base)}
    param_budget = args.param_budget or default["params"]
    if default["params"] > param_budget:
        raise OptionError(f"--param_budget: the default {args.default_size} has "
                          f"{default['params']:,} non-embedding parameters, above the budget "
                          f"{param_budget:,}; give a larger budget or a smaller --default_size")
    entries = pool(args, fixed)
    by_params = budgeted(entries, "params", param_budget, "--param_budget", True,
                         args.n_candidates)
    print(f"{len(val_ids):,} validation characters, {len(train_ids):,} training; pool of "
          f"{len(entries)} configurations; measuring decode speed", flush=True)
    default["tokens_per_s"] = speeds(base)
    speed_budget = args.min_tokens_per_s or args.latency_fraction * default["tokens_per_s"]
    by_speed = fast_enough(entries, speeds, speed_budget, args.n_candidates)
    for e in by_params + [default]:
        e["tokens_per_s"] = speeds(e["config"])
    for e in entries + [default]:
        e["flops_per_token"] = train_flops_per_token(e["config"], args.block_size)
    print(f"budgets: <= {param_budget:,} non-embedding parameters ({len(by_params)} "
          f"candidates); >= {speed_budget:,.0f} decode tokens/s ({len(by_speed)} candidates); "
          f"the default {default['desc']}: {default['params']:,} parameters, "
          f"{default['tokens_per_s']:,.0f} tokens/s", flush=True)

    # the two searches, each on its own copies of the candidates
    searches = {}
    for name, chosen in (("params", by_params), ("latency", by_speed)):
        mine = [dict(e) for e in chosen]
        result = run_search(name, mine, args, train_ids, val_set)
        searches[name] = {"entries": mine, "result": result,
                          "winner": mine[result["winner"]]}

    # Pareto fronts over the first rung: every candidate at min_steps on the same batches
    rows, seen = [], {}
    for name, s in searches.items():
        for e in s["entries"]:
            if e["desc"] in seen:
                seen[e["desc"]]["search"] += "+" + name
                continue
            row = {"search": name, "desc": e["desc"], "params": e["params"],
                   "tokens_per_s": e["tokens_per_s"], "flops_per_token": e["flops_per_token"],
                   "loss": e["losses"][args.min_steps], "longest": max(e["losses"]),
                   "loss_longest": e["losses"][max(e["losses"])]}
            seen[e["desc"]] = row
            rows.append(row)
    fronts = {"params": pareto_front([(r["loss"], r["params"]) for r in rows]),
              "tokens_per_s": pareto_front([(r["loss"], r["tokens_per_s"]) for r in rows],
                                           maximize=[False, True])}
    for i, r in enumerate(rows):
        r["front_params"], r["front_speed"] = i in fronts["params"], i in fronts["tokens_per_s"]
    winners = {name: next(i for i, r in enumerate(rows) if r["desc"] == s["winner"]["desc"])
               for name, s in searches.items()}
    print_table(sorted(rows, key=lambda r: r["loss"]),
                columns=["search", "desc", "params", "tokens_per_s", "loss", "longest",
                         "loss_longest", "front_params", "front_speed"],
                title=f"\nevery candidate: validation loss after {args.min_steps} steps (the "
                      f"first rung), and at the longest rung it reached; on the Pareto front "
                      f"of loss against parameters / tokens/s")

    # each winner against the default at equal training compute
    print(f"\nretraining at equal compute ({args.retrain_seeds} seeds each)", flush=True)
    cache = {}
    results = [comparison(name, s["winner"], default, args, train_ids, val_set, cache)
               for name, s in searches.items()]
    print_table(results, columns=["search", "winner", "winner_steps", "winner_loss",
                                  "default_steps", "default_loss", "gain", "gain_stderr",
                                  "verdict"],
                title=f"\nwinner against the default ({default['desc']}) at "
                      f"{results[0]['flops']:.3g} training FLOPs each; gain = default - winner "
                      f"(mean over seeds), inside the error bar when |gain| < 2 stderr")

    budgets = {"params": param_budget, "tokens_per_s": speed_budget}
    png = save_figure(os.path.join(args.out_dir, "nas.png"),
                      _draw(rows, fronts, winners, budgets))
    wall = time.perf_counter() - wall

    def plain(entry):
        return {k: (v.to_dict() if k == "config" else v) for k, v in entry.items()}

    path = write_json(os.path.join(args.out_dir, "nas.json"), {
        "args": dataclasses.asdict(args), "budgets": budgets, "default": plain(default),
        "searches": {name: {"candidates": [plain(e) for e in s["entries"]],
                            "rungs": s["result"]["rungs"], "records": s["result"]["records"],
                            "winner": s["winner"]["desc"],
                            "train_steps": s["result"]["train_steps"]}
                     for name, s in searches.items()},
        "first_rung": rows, "pareto_params": [rows[i]["desc"] for i in fronts["params"]],
        "pareto_tokens_per_s": [rows[i]["desc"] for i in fronts["tokens_per_s"]],
        "retrain": results, "png": png, "wall_s": wall})
    out = {"wall_s": round(wall, 1), "json": path}
    for r in results:
        out.update({f"{r['search']}_winner": r["winner"],
                    f"{r['search']}_gain": round(r["gain"], 4),
                    f"{r['search']}_gain_stderr": round(r["gain_stderr"], 4),
                    f"{r['search']}_verdict": r["verdict"]})
    out.update({"default_loss": round(results[0]["default_loss"], 4),
                "pareto_params": len(fronts["params"]),
                "pareto_tokens_per_s": len(fronts["tokens_per_s"])})
    result = {k: out[k] for k in sorted(out, key=lambda k: k in ("wall_s", "json"))}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_main(main)
