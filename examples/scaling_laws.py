"""Scaling laws on tiny Shakespeare: an IsoFLOP sweep (Hoffmann et al., 2022) and the two
Chinchilla fits of its final losses, with bootstrap intervals and a held-out budget.

    python examples/scaling_laws.py                  # the full sweep (~25 min on quiet cores)
    python examples/scaling_laws.py --quick=true     # tiny sizes, small budgets (about 5 minutes)
    python examples/scaling_laws.py --sizes=1x16,2x32,4x64 --budgets=1e10,1e11   # your own grid

Reading order: Args; data (BPE on the training split); the plan (isoflop_plan: the steps each
budget buys each size); one run (train_run: a fresh model, its own warmup + cosine schedule to its
last step, the final validation loss on fixed batches); the resumable loop over runs.jsonl; the
fits (Approach 2 with a bootstrap over runs within each budget, Approach 3 with
bootstrap_loss_surface, the held-out budget); the table, JSON, figure and the last JSON line.

1. Data: tiny Shakespeare, the first 90% of the characters for training and the last 10% for
   validation (the split of train_shakespeare.py), a byte-level BPE of --vocab_size learned on the
   training characters only (cached in out_dir/tokenizers).
2. Sizes: GPT-2 blocks without biases, head width 16, FFN 4 C; a size "LxC" is L blocks of width
   C. Non-embedding parameters N and training FLOPs per token are counted exactly from the config
   (tinygrad_llm.train.scaling: every matmul of forward and backward, attention and the tied head
   included), so D = C / flops_per_token is not C / 6N: at these widths the head (6 C V FLOPs a
   token) costs as much as the blocks.
3. Each budget C trains every size it buys at least --min_steps steps of, for
   floor(D / (batch_size x block_size)) steps; a run appends one line to out_dir/runs.jsonl as it
   finishes, and a run already there (same size, budget and settings) is not trained again.
4. Fits. Approach 2: a parabola in log N (and log D) per budget, N_opt ~ C^a and D_opt ~ C^b;
   a budget without a valley (no minimum within one span of its sizes) is left out, named.
   Approach 3: L(N, D) = E + A / N^alpha + B / D^beta by a summed Huber loss on log-loss
   (Besiroglu et al., 2024). Intervals: 95% percentile bootstrap over runs. Held out: the fits
   are redone without --holdout's budget and predict its losses and its N_opt.

Writes out_dir/runs.jsonl, scaling_laws.json and scaling_laws.png (left: loss against training
FLOPs per size with the fitted compute-optimal frontier; right: the IsoFLOP curves, loss against
N per budget, with their parabolas), prints the tables and ends with one JSON line.

What the figures can show at this scale: that at a fixed budget the loss has a minimum over model
size, that the minimum moves to larger models as the budget grows, and roughly at what rate
(a = beta / (alpha + beta), to set against Chinchilla's 0.50 and Epoch AI's 0.513). What they
cannot show: the constants themselves. E, A, B, alpha and beta describe a 512-token BPE over
one megabyte of one author, models of thousands to hundreds of thousands of parameters trained
for seconds to minutes, and they are not Chinchilla's (E = 1.69 nats on MassiveText). The bigger
budgets repeat the training data for many epochs (the table prints them): a repeated token is
worth less than a fresh one (Muennighoff et al., 2023), so the small models' long runs are
data-limited and the fitted B / D^beta term mixes data with repetition. The tokens per parameter
at the optimum depend on the FLOP convention (compute_optimal assumes C = 6 N D; Approach 2 uses
the exact counts, which charge the head) and on the learning rate, held at one value for every
size. One seed, no learning-rate sweep per size; the intervals are over runs, not seeds.

What the full grid gave (35 runs: 8 sizes of 3.1k to 984k non-embedding parameters, 315x; 5
budgets of 1e11 to 3.5e12 FLOPs, 35x; up to 39 epochs): every budget has its valley inside its
sizes, the optimum moving from 5.0k parameters at 1e11 to 76k at 3.5e12. Approach 3: alpha =
0.28 [0.16, 0.47], beta = 0.40 [0.28, 0.51], E = 2.40 nats, a = 0.59 [0.41, 0.71] against
Chinchilla's 0.50 and Epoch AI's 0.513 (both inside the interval); Approach 2: a = 0.75 [0.49,
0.93], b = 0.38 [0.16, 0.56]. Tokens per parameter at the largest budget: 231 [99, 619] by
Approach 3 under C = 6ND (123 with the exact FLOP count) and 61 [40, 106] by Approach 2, against
Chinchilla's ~20 and nanochat's ~8: at this scale the optimum sits at many more tokens per
parameter (the paragraphs above say why the constants do not carry over). The fit without 3.5e12 predicts its seven
losses within 2.7% on average (worst 4.4%). The runs summed to 106 minutes of wall time on 2
cores shared with two to four other jobs (load average 4 to 6.6); at the per-size rates of the
least loaded budget the sweep is about 23 minutes of quiet 2-core time.

What the quick grid gave (one session on 2 shared cores; the four budgets 2.5e10 to 3.5e11 of
the quick grid, before 8e11 was added to it; 23 runs trained in about 2.5 minutes with the BPE):
the smallest budget has no minimum inside its sizes (the 792-parameter model wins: at width 8
the tied head is 3/4 of its FLOPs, so every wider model pays for a head as well as its blocks),
and the minimum moves from about 2.4k to 21k parameters between 6e10 and 3.5e11. Approach 3:
alpha = 0.11 [0.07, 0.15], beta = 0.47 [0.24, 0.71], a = 0.82 [0.64, 0.89] against 0.50 / 0.513,
E = 1.75 nats, D/N at 3.5e11 = 286 (6ND) against ~20 / ~8, and the fit without 3.5e11 predicts
its five losses within 1.7% (worst 3.7%). Approach 2's a = 1.6 leans on the smallest budget's
extrapolated minimum. Read these as what tiny, few-thousand-step models do (the models are
step-limited: loss keeps falling with steps far past Chinchilla's 20 tokens per parameter), not
as a measurement of Chinchilla's law.
"""
import dataclasses
import json
import math
import os
import time

import numpy as np

import tinygrad_llm as tl
from tinygrad_llm.data import get_batch, shakespeare
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.optim import param_groups_for_weight_decay
from tinygrad_llm.tokenizers import BPETokenizer
from tinygrad_llm.train import OptionError, TrainConfig, Trainer, parse_args, run_main
from tinygrad_llm.train.report import (append_run, power_law_fit, print_table, read_runs,
                                       save_figure, write_json)
from tinygrad_llm.train.scaling import (bootstrap_loss_surface, compute_optimal,
                                        fit_isoflop_parabolas, fit_loss_surface,
                                        isoflop_plan, predict_loss,
                                        train_flops_per_token)

CHINCHILLA_A, EPOCH_AI_A = 0.50, 0.513    # Hoffmann et al. (2022); Besiroglu et al. (2024)
CHINCHILLA_TOKENS_PER_PARAM, NANOCHAT_TOKENS_PER_PARAM = 20.0, 8.0

# the default grids: (sizes "LxC", budgets in FLOPs), each spanning >= 30x
FULL = ("1x16,1x32,2x32,2x48,3x64,4x80,4x96,5x128", "1e11,2.5e11,6e11,1.5e12,3.5e12")
QUICK = ("1x8,1x16,2x16,1x32,2x32,2x48,3x64", "2.5e10,6e10,1.5e11,3.5e11,8e11")


@dataclasses.dataclass
class Args:
    quick: bool = False          # a short sweep: tiny sizes, small budgets, fewer bootstrap samples
    out_dir: str = "out-scaling-laws"   # runs.jsonl, scaling_laws.json, scaling_laws.png
    device: str = "cpu"          # "cpu" or "cuda"
    sizes: str = None            # comma-separated "LxC" (L blocks of width C); none: the default
    budgets: str = None          # comma-separated training FLOPs per run; none: the default
    vocab_size: int = 512        # the BPE vocabulary, learned on the training characters
    text_chars: int = None       # use only the first this many characters (none: all)
    block_size: int = 64         # tokens per training sequence (the FLOPs count this context)
    batch_size: int = 16         # sequences per step
    min_steps: int = 50          # a size its budget buys fewer steps of is left out of that budget
    max_epochs: float = None     # drop runs reading the data more often (none: 40; quick: 8)
    learning_rate: float = 3e-3  # the peak, one value for every size
    min_lr_ratio: float = 0.1    # the cosine's floor, as a fraction of the peak
    warmup_frac: float = 0.05    # warmup steps as a fraction of each run's steps
    weight_decay: float = 0.1    # AdamW's decoupled decay (matrices)
    eval_batches: int = 16       # validation batches (drawn once, the same for every run)
    holdout: str = "largest"     # the budget left out of the fits: "largest", "none" or FLOPs
    n_boot: int = None           # bootstrap samples (none: 200; quick: 100)
    seed: int = 0                # initialisation, batches and the bootstrap


# ---- the grid -----------------------------------------------------------------------------
def model_config(name, vocab_size, block_size):
    """A size "LxC" -> its GPTConfig: GPT-2 blocks without biases, head width 16 (one head
    below width 32), FFN 4 C, the head tied to the token table."""
    layers, _, width = name.partition("x")
    if not (layers.isdigit() and width.isdigit() and int(layers) > 0 and int(width) >= 8):
        raise OptionError(f"--sizes: expected sizes like '2x32' (blocks x width >= 8), got "
                          f"{name!r}")
    n_embd = int(width)
    n_head = max(1, n_embd // 16)
    if n_embd % n_head:
        raise OptionError(f"--sizes: width {n_embd} of {name!r} is not a multiple of 16")
    return GPTConfig.preset("gpt2", vocab_size=vocab_size, block_size=block_size,
                            n_layer=int(layers), n_head=n_head, n_embd=n_embd, bias=False,
                            dropout=0.0)


def _budgets(text):
    try:
        budgets = sorted(float(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise OptionError(f"--budgets: expected comma-separated FLOPs like '1e11,3e11', got "
                          f"{text!r}") from None
    if not budgets or min(budgets) <= 0 or len(set(budgets)) != len(budgets):
        raise OptionError(f"--budgets: expected distinct positive FLOPs, got {text!r}")
    return budgets


def _holdout(args, budgets):
    if args.holdout in (None, "none"):
        return None
    if args.holdout == "largest":
        return budgets[-1]
    try:
        value = float(args.holdout)
    except ValueError:
        value = None
    if value not in budgets:
        raise OptionError(f"--holdout: expected 'largest', 'none' or one of the budgets "
                          f"{[f'{b:g}' for b in budgets]}, got {args.holdout!r}")
    return value


def make_plan(args, configs, budgets, n_train_tokens):
    """isoflop_plan, with the sweep's bad inputs as one line each: a budget that keeps no run,
    and a plan with too few points for the fits (with the held-out budget left out)."""
    max_tokens = None if args.max_epochs is None else int(args.max_epochs * n_train_tokens)
    try:
        plan = isoflop_plan(budgets, configs, args.block_size, args.batch_size,
                            min_steps=args.min_steps, max_tokens=max_tokens)
    except ValueError as err:
        raise OptionError(f"--budgets: {err}") from None
    kept = {r["budget"] for r in plan["runs"]}
    for budget in budgets:
        if budget not in kept:
            reasons = [d for d in plan["dropped"] if d["budget"] == budget]
            smallest = min(reasons, key=lambda d: train_flops_per_token(
                configs[d["size"]], args.block_size))
            raise OptionError(f"--budgets: budget {budget:g} keeps no run; the smallest size "
                              f"{smallest['size']!r}: {smallest['reason']}")
    holdout = _holdout(args, budgets)
    fitted = [r for r in plan["runs"] if r["budget"] != holdout]
    n_budgets = len({r["budget"] for r in fitted})
    if n_budgets < 2 or len(fitted) < 6:
        raise OptionError(f"--budgets: too few points to fit: {n_budgets} budgets and "
                          f"{len(fitted)} runs outside the held-out budget "
                          f"({args.holdout}); Approach 2 needs 2 budgets of 3 sizes, "
                          "Approach 3 needs 6 runs")
    return plan, holdout


# ---- one run ------------------------------------------------------------------------------
def validation_batches(val_ids, args):
    """The fixed validation set: eval_batches windows drawn once from the seed."""
    rng = np.random.default_rng([args.seed, 1])
    return [get_batch(val_ids, args.batch_size, args.block_size, rng)
            for _ in range(args.eval_batches)]


def val_loss(model, batches, device):
    model.eval()
    with tl.no_grad():
        losses = [model(tl.backend.to_device(x, device),
                        tl.backend.to_device(y, device))[1].item() for x, y in batches]
    model.train()
    return float(np.mean(losses))


def train_run(args, config, steps, train_ids, val_set):
    """A fresh model trained for `steps` steps under warmup + cosine to its own last step;
    returns (final validation loss, mean training loss of the last 10% of steps, seconds)."""
    start = time.perf_counter()
    tl.manual_seed(args.seed)
    model = GPT(config).to(args.device)
    train_config = TrainConfig(
        batch_size=args.batch_size, block_size=args.block_size, max_iters=steps,
        learning_rate=args.learning_rate, min_lr=args.learning_rate * args.min_lr_ratio,
        warmup_iters=max(1, round(args.warmup_frac * steps)), weight_decay=args.weight_decay,
        beta2=0.99, grad_clip=1.0, seed=args.seed, out_dir=None, checkpoint=False,
        progress=False)
    optimizer = train_config.adamw(param_groups_for_weight_decay(model, args.weight_decay))
    trainer = Trainer(model, optimizer, train_ids, None, train_config, log=None)
    losses = [trainer.train_step() for _ in range(steps)]
    tail = float(np.mean(losses[-max(1, steps // 10):]))
    return val_loss(model, val_set, args.device), tail, time.perf_counter() - start


def _setting(args, vocab_size, n_chars):
    """What a run's result depends on besides its size and budget: a line of runs.jsonl is
    reused only when all of it matches."""
    return dict(vocab_size=vocab_size, chars=n_chars, block_size=args.block_size,
                batch_size=args.batch_size, learning_rate=args.learning_rate,
                min_lr_ratio=args.min_lr_ratio, warmup_frac=args.warmup_frac,
                weight_decay=args.weight_decay, eval_batches=args.eval_batches, seed=args.seed,
                device=args.device)


def sweep(args, plan, configs, setting, train_ids, val_set):
    """Every planned run, trained or read back from out_dir/runs.jsonl; returns the runs (with
    "loss") and how many were trained now."""
    path = os.path.join(args.out_dir, "runs.jsonl")
    done = {(r["size"], r["budget"]): r for r in read_runs(path) if r["setting"] == setting}
    runs, trained = [], 0
    for i, planned in enumerate(plan["runs"]):
        key = (planned["size"], planned["budget"])
        if key in done:
            runs.append(done[key])
            continue
        print(f"[{i + 1}/{len(plan['runs'])}] {planned['size']} at {planned['budget']:.3g} "
              f"FLOPs: {planned['steps']} steps", flush=True)
        loss, train_loss, seconds = train_run(args, configs[planned["size"]], planned["steps"],
                                              train_ids, val_set)
        run = {**planned, "epochs": planned["tokens"] / len(train_ids), "loss": loss,
               "train_loss": train_loss, "wall_s": seconds, "setting": setting}
        append_run(path, run)
        runs.append(run)
        trained += 1
    return runs, trained


# ---- the fits -----------------------------------------------------------------------------
def _has_valley(runs):
    """Whether the losses of one budget have a parabola's minimum in both log N and log D, no
    further than one span of the measured sizes outside them (a nearly flat parabola puts its
    vertex anywhere, and N_opt ~ C^a would fit noise)."""
    loss = [r["loss"] for r in runs]
    for key in ("params", "tokens"):
        x = np.log([r[key] for r in runs])
        curve, slope, _ = np.polyfit(x, loss, 2)
        span = x.max() - x.min()
        if not (curve > 0 and x.min() - span <= -slope / (2 * curve) <= x.max() + span):
            return False
    return True


def approach2(runs, largest, n_boot, seed):
    """fit_isoflop_parabolas on the budgets with a valley, and a percentile bootstrap: the runs
    of each budget resampled with replacement (samples without 3 sizes or a valley in every
    budget are skipped, and counted)."""
    by_budget = {}
    for r in runs:
        by_budget.setdefault(r["budget"], []).append(r)
    valleys = {b: rs for b, rs in by_budget.items() if _has_valley(rs)}
    left_out = sorted(set(by_budget) - set(valleys))
    if len(valleys) < 2:
        return {"error": f"only {len(valleys)} budgets have a valley (need 2); without: "
                         f"{[f'{b:g}' for b in left_out]}", "left_out": left_out}
    fit = fit_isoflop_parabolas([r for rs in valleys.values() for r in rs])
    fit["left_out"] = left_out
    fit["tokens_per_param"] = _a2_tokens_per_param(fit, largest)
    rng = np.random.default_rng(seed)
    samples, skipped = [], 0
    for _ in range(n_boot):
        resampled = [[rs[j] for j in rng.integers(0, len(rs), len(rs))]
                     for rs in valleys.values()]
        if any(len({r["params"] for r in rs}) < 3 or not _has_valley(rs) for rs in resampled):
            skipped += 1
            continue
        refit = fit_isoflop_parabolas([r for rs in resampled for r in rs])
        samples.append((refit["a"], refit["b"], _a2_tokens_per_param(refit, largest)))
    if len(samples) >= 2:
        fit["intervals"] = {k: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5)))
                            for k, v in zip(("a", "b", "tokens_per_param"), zip(*samples))}
    fit["boot_used"], fit["boot_skipped"] = len(samples), skipped
    return fit


def _a2_tokens_per_param(fit, budget):
    return fit["k_tokens"] * budget ** fit["b"] / (fit["k"] * budget ** fit["a"])


def tokens_per_param(fit, budget):
    """compute_optimal's D_opt / N_opt (C = 6 N D), or None for a surface without an optimum:
    with alpha or beta <= 0 a term does not fall with N or D, and G = (alpha A / beta B)^(...)
    is not real."""
    if not (fit["alpha"] > 0 and fit["beta"] > 0):
        return None
    return compute_optimal(fit, budget)["tokens_per_param"]


def approach3(runs, largest, n_boot, seed):
    """fit_loss_surface on every run, bootstrap_loss_surface for the constants' intervals, and
    the interval of D/N at the largest budget over the samples that have an optimum."""
    n, d, loss = _columns(runs)
    fit = fit_loss_surface(n, d, loss)
    boot = bootstrap_loss_surface(n, d, loss, fit=fit, n_boot=n_boot, seed=seed)
    intervals = dict(boot["intervals"])
    samples = [{k: v[i] for k, v in boot["samples"].items()}
               for i in range(n_boot)]
    ratios = [r for r in (tokens_per_param(f, largest) for f in samples) if r is not None]
    if len(ratios) >= 2:
        intervals["tokens_per_param"] = (float(np.percentile(ratios, 2.5)),
                                         float(np.percentile(ratios, 97.5)))
    return fit, intervals, n_boot - len(ratios)


def frontier(fit, budgets, sizes):
    """The fitted surface's best loss at each budget under the exact FLOP counts: L(N, C /
    flops_per_token(N)) minimised over N, with flops_per_token(N) the power law of the sweep's
    sizes (N, flops_per_token). Returns (losses, N_opt, D_opt / N_opt), a list each."""
    p, k = power_law_fit([s[0] for s in sizes], [s[1] for s in sizes])
    n = np.geomspace(min(s[0] for s in sizes) / 4, max(s[0] for s in sizes) * 4, 400)
    losses, n_opt, ratio = [], [], []
    for c in budgets:
        d = c / (k * n ** p)
        i = int(np.argmin(predict_loss(fit, n, d)))
        losses.append(float(predict_loss(fit, n[i], d[i])))
        n_opt.append(float(n[i]))
        ratio.append(float(d[i] / n[i]))
    return losses, n_opt, ratio


def held_out(runs, holdout, largest):
    """The fits without the held-out budget, and how well they predict it."""
    if holdout is None:
        return None
    inside = [r for r in runs if r["budget"] != holdout]
    outside = [r for r in runs if r["budget"] == holdout]
    fit3 = fit_loss_surface(*_columns(inside))
    predicted = predict_loss(fit3, [r["params"] for r in outside], [r["tokens"] for r in outside])
    errors = [(p - r["loss"]) / r["loss"] for p, r in zip(predicted, outside)]
    out = {"budget": holdout, "approach3_rel_errors": [float(e) for e in errors],
           "approach3_mean_abs_rel_error": float(np.mean(np.abs(errors))),
           "approach3_max_abs_rel_error": float(np.max(np.abs(errors)))}
    fit2 = approach2(inside, largest, 0, 0)
    if "error" not in fit2 and _has_valley(outside):
        curve, slope, _ = np.polyfit(np.log([r["params"] for r in outside]),
                                     [r["loss"] for r in outside], 2)
        out["approach2_N_opt_predicted"] = fit2["k"] * holdout ** fit2["a"]
        out["approach2_N_opt_measured"] = math.exp(-slope / (2 * curve))
    return out


def _columns(runs):
    return ([r["params"] for r in runs], [r["tokens"] for r in runs], [r["loss"] for r in runs])


# ---- the figure ---------------------------------------------------------------------------
def _draw(runs, a2, fit3, sizes):
    budgets = sorted({r["budget"] for r in runs})
    names = sorted({r["size"] for r in runs}, key=lambda s: next(
        r["params"] for r in runs if r["size"] == s))

    def draw(plt):
        fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
        colours = plt.cm.viridis(np.linspace(0, 0.9, len(names)))
        for name, colour in zip(names, colours):
            mine = sorted((r for r in runs if r["size"] == name), key=lambda r: r["flops"])
            left.plot([r["flops"] for r in mine], [r["loss"] for r in mine], "o-", ms=4,
                      color=colour, label=f"{name} (N={mine[0]['params']:,})")
        c = np.geomspace(budgets[0] / 1.5, budgets[-1] * 1.5, 60)
        left.plot(c, frontier(fit3, c, sizes)[0], "k--", label="Approach 3 frontier")
        if "error" not in a2:
            left.plot([b["budget"] for b in a2["budgets"]],
                      [b["loss_opt"] for b in a2["budgets"]], "r*", ms=10,
                      label="Approach 2 minima")
        left.set_xscale("log")
        left.xaxis.set_minor_formatter(plt.NullFormatter())     # minor labels overlap
        left.set_xlabel("training FLOPs (exact count)")
        left.set_ylabel("final validation loss (nats / token)")
        left.set_title("loss against compute, per model size")
        left.legend(fontsize=7)
        colours = plt.cm.plasma(np.linspace(0, 0.85, len(budgets)))
        for budget, colour in zip(budgets, colours):
            mine = sorted((r for r in runs if r["budget"] == budget), key=lambda r: r["params"])
            n, loss = np.array([r["params"] for r in mine]), [r["loss"] for r in mine]
            right.plot(n, loss, "o", color=colour, label=f"C = {budget:.2g}")
            if len(mine) >= 3:
                coef = np.polyfit(np.log(n), loss, 2)
                grid = np.geomspace(n.min(), n.max(), 50)
                right.plot(grid, np.polyval(coef, np.log(grid)), "-", color=colour)
        if "error" not in a2:
            right.plot([b["N_opt"] for b in a2["budgets"]],
                       [b["loss_opt"] for b in a2["budgets"]], "k*", ms=9, label="N_opt")
        right.set_xscale("log")
        right.set_xlabel("non-embedding parameters N")
        right.set_ylabel("final validation loss (nats / token)")
        right.set_title("IsoFLOP curves and their parabolas")
        right.legend(fontsize=7)
        fig.tight_layout()
    return draw


# ---- main ---------------------------------------------------------------------------------
def main(argv):
    (args,) = parse_args(argv, Args)
    default_sizes, default_budgets = QUICK if args.quick else FULL
    args.sizes, args.budgets = args.sizes or default_sizes, args.budgets or default_budgets
    if args.n_boot is None:
        args.n_boot = 100 if args.quick else 200
    if args.max_epochs is None:
        args.max_epochs = 8.0 if args.quick else 40.0
    for name, low in (("block_size", 1), ("batch_size", 1), ("min_steps", 1),
                      ("eval_batches", 1), ("n_boot", 2)):
        if getattr(args, name) < low:
            raise OptionError(f"--{name}: expected an int >= {low}, got {getattr(args, name)}")
    budgets = _budgets(args.budgets)
    wall = time.perf_counter()

    # data: the 90/10 split of the characters, a BPE learned on the training part
    text = shakespeare()
    if args.text_chars is not None:
        text = text[:args.text_chars]
    n_train = int(len(text) * 0.9)
    os.makedirs(args.out_dir, exist_ok=True)
    tokenizer = BPETokenizer.cached(text[:n_train], args.vocab_size, cache_dir=args.out_dir)
    train_ids = np.asarray(tokenizer.encode(text[:n_train]), dtype=np.int64)
    val_ids = np.asarray(tokenizer.encode(text[n_train:]), dtype=np.int64)
    configs = {name.strip(): model_config(name.strip(), tokenizer.vocab_size, args.block_size)
               for name in args.sizes.split(",") if name.strip()}
    print(f"BPE vocab {tokenizer.vocab_size}: {len(train_ids):,} training tokens, "
          f"{len(val_ids):,} validation tokens", flush=True)

    # the plan, then every run (read back from runs.jsonl when it is there)
    plan, holdout = make_plan(args, configs, budgets, len(train_ids))
    for d in plan["dropped"]:
        print(f"left out: {d['size']} at {d['budget']:.3g} FLOPs: {d['reason']}")
    setting = _setting(args, tokenizer.vocab_size, len(text))
    val_set = validation_batches(val_ids, args)
    runs, trained = sweep(args, plan, configs, setting, train_ids, val_set)
    print_table(runs, columns=["size", "params", "budget", "flops_per_token", "steps", "tokens",
                               "tokens_per_param", "epochs", "loss", "train_loss", "wall_s"],
                title=f"final validation loss (mean of {args.eval_batches} fixed batches); "
                      f"epochs: passes over the {len(train_ids):,} training tokens")

    # the fits: all budgets for the constants, then without the held-out one
    largest = budgets[-1]
    a2 = approach2(runs, largest, args.n_boot, args.seed)
    fit3, intervals, no_optimum = approach3(runs, largest, args.n_boot, args.seed)
    ratio = tokens_per_param(fit3, largest)
    sizes = sorted({(r["params"], r["flops_per_token"]) for r in runs})
    exact_loss, exact_n, exact_ratio = frontier(fit3, [largest], sizes)
    test = held_out(runs, holdout, largest)

    if "error" in a2:
        print(f"Approach 2: {a2['error']}")
    else:
        print_table(a2["budgets"], columns=["budget", "N_opt", "D_opt", "loss_opt", "n_runs",
                                            "inside"],
                    title="Approach 2: the minimum of each IsoFLOP parabola"
                          + (f" (no valley, left out: {a2['left_out']})" if a2["left_out"]
                             else "") + f"; bootstrap: {a2['boot_used']} samples used, "
                          f"{a2['boot_skipped']} without 3 sizes and a valley skipped")
    rows = [dict(constant=k, value=fit3[k], low=intervals[k][0], high=intervals[k][1])
            for k in ("E", "A", "B", "alpha", "beta", "a")]
    low, high = intervals.get("tokens_per_param", (None, None))
    rows.append(dict(constant=f"D/N at C={largest:.3g} (6ND)", value=ratio, low=low, high=high))
    rows.append(dict(constant=f"D/N at C={largest:.3g} (exact)", value=exact_ratio[0]))
    if "error" not in a2:
        for k in ("a", "b", "tokens_per_param"):
            low, high = a2.get("intervals", {}).get(k, (None, None))
            label = f"D/N at C={largest:.3g} (exact)" if k == "tokens_per_param" else k
            rows.append(dict(constant=f"Approach 2 {label}", value=a2[k], low=low, high=high))
    print_table(rows, columns=["constant", "value", "low", "high"],
                title=f"Approach 3 (and 2): 95% bootstrap intervals over runs ({args.n_boot} "
                      f"samples, {no_optimum} without an optimum); a against Chinchilla "
                      f"{CHINCHILLA_A} and Epoch AI {EPOCH_AI_A}; "
                      f"D/N against Chinchilla ~{CHINCHILLA_TOKENS_PER_PARAM:g} and nanochat "
                      f"~{NANOCHAT_TOKENS_PER_PARAM:g}")
    if test:
        print(f"held out {holdout:.3g} FLOPs: Approach 3 fitted without it predicts its losses "
              f"within {100 * test['approach3_mean_abs_rel_error']:.2f}% on average "
              f"(worst {100 * test['approach3_max_abs_rel_error']:.2f}%)")
    print(f"epochs over the training tokens: up to {max(r['epochs'] for r in runs):.1f}")

    png = save_figure(os.path.join(args.out_dir, "scaling_laws.png"),
                      _draw(runs, a2, fit3, sizes))
    wall = time.perf_counter() - wall
    a3 = {k: fit3[k] for k in ("E", "A", "B", "alpha", "beta", "a", "b", "objective")}
    path = write_json(os.path.join(args.out_dir, "scaling_laws.json"), {
        "args": dataclasses.asdict(args), "train_tokens": len(train_ids),
        "val_tokens": len(val_ids), "runs": runs, "dropped": plan["dropped"],
        "approach2": a2, "approach3": a3, "approach3_intervals": intervals,
        "compute_optimal_6ND": None if ratio is None else compute_optimal(fit3, largest),
        "frontier_exact": {"budget": largest, "loss": exact_loss[0], "N_opt": exact_n[0],
                           "tokens_per_param": exact_ratio[0]},
        "held_out": test, "trained_now": trained, "png": png, "wall_s": wall})
    result = {"a_approach3": round(fit3["a"], 4),
              "a_approach2": None if "error" in a2 else round(a2["a"], 4),
              "alpha": round(fit3["alpha"], 4), "beta": round(fit3["beta"], 4),
              "E": round(fit3["E"], 4),
              "tokens_per_param": None if ratio is None else round(ratio, 2),
              "held_out_error": None if test is None else
              round(test["approach3_mean_abs_rel_error"], 4),
              "runs": len(runs), "trained_now": trained,
              "most_epochs": round(max(r["epochs"] for r in runs), 2),
              "wall_s": round(wall, 1), "json": path}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_main(main)
