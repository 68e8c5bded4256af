"""The speedrun ablation (issue 27): each piece of the modded-nanogpt recipe switched on alone
against the main job's baseline, at equal wall time on this machine, over seeds.

    python examples/speedrun.py                  # every piece, 300 s a run, 2 seeds: ~2 hours
    python examples/speedrun.py --quick=true             # 15 s a run (about 10 minutes)
    python examples/speedrun.py --pieces=muon,wsd --budget_s=120 --seeds=3

Reading order: Args and the main job's baseline; the pieces (PIECES: named overrides of
TrainConfig and GPTConfig, some relative to the run's length or learning rate); data and the
fixed validation batches; calibration and the plan (how many steps fill the budget); one run;
the summary (mean, spread, the paired delta against the default); the table, JSON, figure and
the last JSON line.

1. Base: train_shakespeare.py --recipe=baseline (4 layers, 192 dims, characters, batch
   16 x 128, AdamW, warmup + cosine, learned positions, a tied head, GELU), with any --key=value
   of TrainConfig or GPTConfig on top; "default" is that base, and every piece changes only its
   own fields ("recipe" is the main job's default, train.recipes.SPEEDRUN). The warmup is
   warmup_frac of each run's steps (the baseline's 100 of 2000), so a run of any length keeps
   the baseline's shape.
2. Equal wall time, by calibration: before its runs, each piece times a few steps of its own
   config on a throwaway model (after one untimed step that compiles its kernels), at full size
   and, with a warmup, at the warmup's first sizes; the step time is then a line in the step's
   tokens, and max_iters is the largest step count whose predicted time fits budget_s (less a
   2% margin). The schedule is a function of the step, not of the clock: a run is then the same
   computation for the same seed whatever the machine's noise, resume and the warmups stay
   step-exact, and every learning-rate schedule reaches its floor on its last step. The clock
   still rules: a run stops when its training time (evaluation excluded) passes budget_s, and
   the table marks a run cut short ("finished" false: the machine slowed after calibration).
3. Each run: a fresh model from the seed, trained with that seed's batches, its validation loss
   measured on eval_batches windows drawn once from the base seed (the same for every run) at
   curve_points points along the way and at the end.
4. Summary: per piece, the mean final loss over seeds and its spread (sample standard
   deviation), and the delta against the default paired by seed (same initialisation, same
   batch stream where the shapes agree) with the standard error of the paired differences.
   Runs are kept in out_dir/runs.jsonl; a run already there with the same settings is read back
   instead of trained (the budget is wall time on one machine: resume on the same one).

Writes out_dir/runs.jsonl, speedrun.json and speedrun.png (validation loss against training wall
time, one colour per piece), prints the table and ends with one JSON line.

What the table can show: which pieces lower the loss this model reaches in a few minutes on two
CPU cores, with their cost in step time included (Muon's Newton-Schulz products, a softcap's
tanh, warmups' cheaper early steps: the step counts in the table are what each piece's speed
bought). What it cannot show: effects smaller than the seed noise (with two seeds the error bar
is itself a rough estimate; run --seeds=4 for the close ones), how the pieces interact (only
"recipe" combines them; a piece that loses alone may win with Muon and the reverse), tuned
hyperparameters (each piece runs at one setting, mostly modded-nanogpt's, not searched here),
or anything about larger models, longer runs or other data: modded-nanogpt's gains were
measured on GPT-2 small over FineWeb on eight H100s, and a 2-core run of a ~2M-parameter
character model is step- and overhead-bound in ways that model is not. Timings depend on the
machine and its load: compare rows of one run only, and prefer a quiet machine (check the load
average the JSON records).
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
from tinygrad_llm.tokenizers import CharTokenizer
from tinygrad_llm.train import (OptionError, TrainConfig, Trainer, build_config, parse_overrides,
                                run_main, split_overrides)
from tinygrad_llm.train.recipes import SPEEDRUN_MODEL, SPEEDRUN_TRAIN
from tinygrad_llm.train.report import append_run, print_table, read_runs, save_figure, write_json


@dataclasses.dataclass
class Args:
    quick: bool = False          # short runs (budget_s 15, 4 validation batches, 3 curve points)
    out_dir: str = "out-ablation"   # runs.jsonl, speedrun.json, speedrun.png
    pieces: str = None           # comma-separated pieces to run (none: all); "default" always runs
    budget_s: float = None       # training wall seconds per run (none: 300; quick: 15)
    seeds: int = 2               # runs per piece, seeds seed, seed + 1, ...
    warmup_frac: float = 0.05    # learning-rate warmup as a fraction of each run's steps
    calib_steps: int = 5         # timed steps per calibrated size (after one untimed step)
    eval_batches: int = None     # fixed validation batches (none: 16; quick: 4)
    curve_points: int = None     # validation points per run for the figure (none: 6; quick: 3)
    data: str = None             # path to the text (none: tiny Shakespeare)
    device: str = "cpu"          # "cpu" or "cuda"


# The main job's baseline (train_shakespeare.py --recipe=baseline; examples do not import each
# other).
# max_iters, lr_decay_iters and warmup_iters are not here: the time budget sets them.
MODEL_DEFAULTS = dict(n_layer=4, n_head=4, n_embd=192, dropout=0.0, bias=False)
TRAIN_DEFAULTS = dict(batch_size=16, block_size=128, learning_rate=2e-3, min_lr=2e-4,
                      weight_decay=0.1, beta2=0.99, grad_clip=1.0)
SET_BY_BUDGET = ("max_iters", "lr_decay_iters", "warmup_iters")
PLAN_MARGIN = 0.02           # plan for 98% of the budget: a run's own noise should not cut it


# ---- the pieces ---------------------------------------------------------------------------
@dataclasses.dataclass
class Piece:
    """Overrides of the base TrainConfig (train) and GPTConfig (model); per_step: TrainConfig
    iteration fields as fractions of the run's steps; per_lr: learning-rate fields as multiples
    of the base learning_rate."""
    about: str
    train: dict = dataclasses.field(default_factory=dict)
    model: dict = dataclasses.field(default_factory=dict)
    per_step: dict = dataclasses.field(default_factory=dict)
    per_lr: dict = dataclasses.field(default_factory=dict)


PIECES = {
    "default": Piece("the baseline (train_shakespeare.py --recipe=baseline)"),
    # modded-nanogpt's record history (Jordan et al., 2024) for the settings, unless noted
    "muon": Piece("Muon on the blocks' matrices, AdamW for the rest", train={"optimizer": "muon"}),
    "wsd": Piece("warmup-stable-decay: peak until the last 30%, linear decay (Hagele et al., 2024)",
                 train={"lr_schedule": "wsd", "decay_frac": 0.3}),
    "seq_warmup": Piece("sequence length 16 -> block over the first 25% of steps "
                        "(Li et al., 2022)", train={"seq_warmup_start": 16},
                        per_step={"seq_warmup_iters": 0.25}),
    "batch_warmup": Piece("batch 4 -> batch_size over the first 25% of steps "
                          "(Brown et al., 2020)", train={"batch_warmup_start": 4},
                          per_step={"batch_warmup_iters": 0.25}),
    "rope": Piece("rotary positions instead of a learned table (Su et al., 2021)",
                  model={"pos": "rope"}),
    "qk_norm": Piece("RMS-normalised q and k per head", model={"qk_norm": True}),
    "relu2": Piece("squared-ReLU MLP (So et al., 2021)", model={"mlp": "relu2"}),
    "softcap": Piece("logits soft-capped at 15 (c tanh(z / c))", model={"logit_softcap": 15.0}),
    # the ratios are ours: modded-nanogpt's embeddings take its largest steps, its head small ones
    "untied": Piece("untied head; embeddings at 5x, the head at 0.5x the lr",
                    model={"tie_embeddings": False}, per_lr={"embed_lr": 5.0, "head_lr": 0.5}),
    "zero_init": Piece("residual output projections start at zero",
                       model={"zero_init_proj": True}),
    "unet": Piece("U-net skips: layer i's output feeds layer L-1-i", model={"unet_skips": True}),
    "value_embed": Piece("a value-embedding table added to the values of layers 0 and L-1",
                         model={"value_embeds": 1}),
    # the pieces together: the library's speedrun recipe (train_shakespeare.py --recipe=speedrun)
    "recipe": Piece("muon + wsd + untied + rope + qk_norm + relu2 + softcap (recipes.SPEEDRUN)",
                    train=dict(SPEEDRUN_TRAIN), model=dict(SPEEDRUN_MODEL)),
}


def missing_fields(piece):
    """The fields a piece sets that this version's configs do not have (a switch not landed)."""
    train = {f.name for f in dataclasses.fields(TrainConfig)}
    return sorted(set(piece.model) - set(GPTConfig.__dataclass_fields__)) + \
        sorted((set(piece.train) | set(piece.per_step) | set(piece.per_lr)) - train)


def chosen_pieces(text):
    """--pieces -> the piece names to run, "default" first; an unknown or unavailable name is
    one OptionError line listing the available pieces."""
    available = [name for name, piece in PIECES.items() if not missing_fields(piece)]
    if text is None:
        for name in PIECES:
            if name not in available:
                print(f"piece {name} left out: this version has no "
                      f"{', '.join(missing_fields(PIECES[name]))}")
        return available
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in available]
    if bad or not names:
        raise OptionError(f"--pieces: unknown or unavailable piece(s) {bad or [text]}; "
                          f"available: {', '.join(available)}")
    return ["default"] + [n for n in dict.fromkeys(names) if n != "default"]


def configs_for(piece, base_train, base_model, steps, warmup_frac, seed=None):
    """(TrainConfig, GPTConfig keyword arguments) of `piece` for a run of `steps` steps (seed:
    the batches' seed, default the base's)."""
    train = {**base_train, **piece.train, "max_iters": steps,
             "warmup_iters": max(1, round(warmup_frac * steps)),
             "out_dir": None, "checkpoint": False, "progress": False}
    train.update({k: max(1, round(frac * steps)) for k, frac in piece.per_step.items()})
    for start, end in (("seq_warmup_start", "block_size"), ("batch_warmup_start", "batch_size")):
        if start in train:                          # a small base: start no larger than it
            train[start] = min(train[start], train.get(end, getattr(TrainConfig, end)))
    train.update({k: ratio * train["learning_rate"] for k, ratio in piece.per_lr.items()})
    if seed is not None:
        train["seed"] = seed
    return build_config(TrainConfig, **train), {**base_model, **piece.model}


# ---- data ---------------------------------------------------------------------------------
def validation_batches(val_ids, train_config, n, seed):
    """The fixed validation set: n windows of the base batch and block, drawn once from seed."""
    rng = np.random.default_rng([seed, 1])
    return [get_batch(val_ids, train_config.batch_size, train_config.block_size, rng)
            for _ in range(n)]


def val_loss(model, batches, device):
    model.eval()
    with tl.no_grad():
        losses = [model(tl.backend.to_device(x, device),
                        tl.backend.to_device(y, device))[1].item() for x, y in batches]
    model.train()
    return float(np.mean(losses))


def build(train_config, model_kw, vocab_size, train_ids, device, seed):
    """A fresh model from `seed`, its optimizer, and a Trainer over train_ids (no validation
    split: the fixed batches are measured apart)."""
    tl.manual_seed(seed)
    model = GPT(GPTConfig.preset("gpt2", vocab_size=vocab_size, **model_kw)).to(device)
    optimizer, lr_scales = train_config.optimizer_for(model)
    return Trainer(model, optimizer, train_ids, None, train_config, log=None,
                   lr_scales=lr_scales)


# ---- calibration and the plan -------------------------------------------------------------
def calibrate(piece, args, base, vocab_size, train_ids):
    """(seconds per step at full size, seconds per token fewer, the throwaway model) of `piece`
    on this machine: median step times at full size and, with a warmup, at its first sizes."""
    probe, model_kw = configs_for(piece, *base, steps=10 ** 6, warmup_frac=args.warmup_frac)
    trainer = build(probe, model_kw, vocab_size, train_ids, args.device, 0)
    ramp = max(probe.seq_warmup_iters, probe.batch_warmup_iters)

    def timed(step):
        times = []
        for i in range(args.calib_steps + 1):    # the first compiles what this shape needs
            trainer.step = step
            t0 = time.perf_counter()
            trainer.train_step()
            times.append(time.perf_counter() - t0)
        return float(np.median(times[1:]))
    full = timed(ramp)
    tokens_full, tokens_start = trainer.tokens_at(ramp), trainer.tokens_at(0)
    if tokens_full == tokens_start:
        return full, 0.0, trainer.model
    start = timed(0)
    return full, max(0.0, (full - start) / (tokens_full - tokens_start)), trainer.model


def plan_steps(piece, args, base, calibration, train_ids):
    """(steps, predicted seconds): the largest step count whose predicted training time fits the
    budget (less the margin); each step costs the full step's time, less per_token for each
    token it lacks. The Trainer only counts the tokens of each step here."""
    full, per_token, model = calibration
    budget = args.budget_s * (1 - PLAN_MARGIN)

    def predicted(steps):
        config, _ = configs_for(piece, *base, steps=steps, warmup_frac=args.warmup_frac)
        trainer = Trainer(model, None, train_ids, None, config, log=None)
        missing = steps * trainer.tokens_at(steps) - trainer.tokens_seen(steps)
        return steps * full - per_token * missing
    low, high = 1, max(2, int(budget / full) + 1)
    while predicted(high) <= budget:                # warmup steps are cheaper: more fit
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if predicted(mid) <= budget else (low, mid)
    return low, predicted(low)


# ---- one run ------------------------------------------------------------------------------
def train_run(piece, args, base, steps, seed, vocab_size, train_ids, val_set,
              clock=time.perf_counter):
    """One piece, one seed: `steps` steps or budget_s seconds of training (by `clock`),
    whichever ends first. Returns the run's record (final loss, steps, tokens, training
    seconds, the curve)."""
    config, model_kw = configs_for(piece, *base, steps=steps, warmup_frac=args.warmup_frac,
                                   seed=seed)
    trainer = build(config, model_kw, vocab_size, train_ids, args.device, seed)
    marks = {max(1, round(steps * k / args.curve_points)) for k in range(1, args.curve_points)}
    curve, train_s, diverged = [], 0.0, False
    while trainer.step < steps and train_s < args.budget_s:
        t0 = clock()
        try:
            trainer.train_step()
        except FloatingPointError:                  # on_nan="stop": a diverged run ends here
            diverged = True
            break
        train_s += clock() - t0         # evaluation below is not training time
        if trainer.step in marks:
            curve.append(dict(step=trainer.step, train_s=train_s, tokens=trainer.tokens_seen(),
                              val_loss=val_loss(trainer.model, val_set, args.device)))
    final = None if diverged else val_loss(trainer.model, val_set, args.device)
    if final is not None:
        curve.append(dict(step=trainer.step, train_s=train_s, tokens=trainer.tokens_seen(),
                          val_loss=final))
    return dict(seed=seed, val_loss=final, diverged=diverged, steps=trainer.step,
                planned_steps=steps, finished=trainer.step == steps, tokens=trainer.tokens_seen(),
                train_s=train_s, parameters=trainer.model.num_parameters(), curve=curve)


# ---- the summary --------------------------------------------------------------------------
def summarise(name, runs, default_runs):
    """One table row: the mean final loss over seeds, its spread (sample standard deviation),
    and the mean paired difference from the default (same seed) with its standard error."""
    losses = [r["val_loss"] for r in runs if r["val_loss"] is not None]
    base = {r["seed"]: r["val_loss"] for r in default_runs if r["val_loss"] is not None}
    diffs = [r["val_loss"] - base[r["seed"]] for r in runs
             if r["val_loss"] is not None and r["seed"] in base]
    row = dict(piece=name, seeds=len(runs), val_loss=float(np.mean(losses)) if losses else None,
               spread=float(np.std(losses, ddof=1)) if len(losses) > 1 else None,
               delta=float(np.mean(diffs)) if diffs and name != "default" else None,
               delta_err=float(np.std(diffs, ddof=1) / math.sqrt(len(diffs)))
               if len(diffs) > 1 and name != "default" else None,
               steps=float(np.mean([r["steps"] for r in runs])),
               tokens=float(np.mean([r["tokens"] for r in runs])),
               train_s=float(np.mean([r["train_s"] for r in runs])),
               finished=all(r["finished"] for r in runs),
               diverged=sum(r["diverged"] for r in runs))
    return row


def _draw(runs, names):
    def draw(plt):
        fig, ax = plt.subplots(figsize=(8, 5))
        colours = plt.cm.tab20(np.linspace(0, 1, max(len(names), 2)))
        for name, colour in zip(names, colours):
            for k, run in enumerate(r for r in runs if r["piece"] == name):
                ax.plot([p["train_s"] for p in run["curve"]],
                        [p["val_loss"] for p in run["curve"]], "o-" if k == 0 else "o--",
                        ms=3, color=colour, label=name if k == 0 else None,
                        lw=2.5 if name == "default" else 1.2)
        ax.set_xlabel("training wall time (s, evaluation excluded)")
        ax.set_ylabel("validation loss (nats / character, fixed batches)")
        ax.set_title("speedrun ablation: each piece against the default (dashed: other seeds)")
        ax.legend(fontsize=7)
        fig.tight_layout()
    return draw


# ---- main ---------------------------------------------------------------------------------
def main(argv):
    overrides = parse_overrides(argv)
    fixed = sorted(set(overrides) & set(SET_BY_BUDGET))
    if fixed:
        raise OptionError(f"--{fixed[0]}: set by the time budget here (use --budget_s and "
                          f"--warmup_frac)")
    run_kw, base_train, base_model = split_overrides(
        overrides, Args, TrainConfig, GPTConfig,
        defaults={TrainConfig: TRAIN_DEFAULTS, GPTConfig: MODEL_DEFAULTS})
    args = Args(**run_kw)
    args.budget_s = args.budget_s or (15.0 if args.quick else 300.0)
    args.eval_batches = args.eval_batches or (4 if args.quick else 16)
    args.curve_points = args.curve_points or (3 if args.quick else 6)
    for name, low in (("seeds", 1), ("calib_steps", 1), ("eval_batches", 1),
                      ("curve_points", 1)):
        if getattr(args, name) < low:
            raise OptionError(f"--{name}: expected an int >= {low}, got {getattr(args, name)}")
    if not args.budget_s > 0 or not 0 < args.warmup_frac < 1:
        raise OptionError(f"--budget_s and --warmup_frac: expected > 0 and in (0, 1), got "
                          f"{args.budget_s} and {args.warmup_frac}")
    names = chosen_pieces(args.pieces)
    base_model["block_size"] = base_train.get("block_size", TrainConfig.block_size)
    base = (base_train, base_model)
    base_config, _ = configs_for(PIECES["default"], *base, steps=100, warmup_frac=0.05)
    wall, load = time.perf_counter(), os.getloadavg()[0]

    # data: characters, 90% train / 10% validation (train_shakespeare.py's split)
    text = shakespeare(args.data)
    tokenizer = CharTokenizer.from_text(text)
    train_ids, val_ids = split(tokenizer.encode(text), 0.1)
    val_set = validation_batches(val_ids, base_config, args.eval_batches, base_config.seed)
    seeds = [base_config.seed + k for k in range(args.seeds)]
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, "runs.jsonl")
    setting = dict(base_train=base_train, base_model=base_model, budget_s=args.budget_s,
                   warmup_frac=args.warmup_frac, eval_batches=args.eval_batches,
                   curve_points=args.curve_points, chars=len(text), device=args.device)
    done = {(r["piece"], r["seed"]): r for r in read_runs(path) if r["setting"] == setting}

    runs, plans, trained = [], {}, 0
    for name in names:
        piece = PIECES[name]
        todo = [s for s in seeds if (name, s) not in done]
        if todo:
            calibration = calibrate(piece, args, base, tokenizer.vocab_size, train_ids)
            steps, predicted = plan_steps(piece, args, base, calibration, train_ids)
            plans[name] = dict(step_s=calibration[0], per_token_s=calibration[1], steps=steps,
                               predicted_s=predicted)
            print(f"{name}: {1e3 * calibration[0]:.1f} ms a step -> {steps} steps in "
                  f"{args.budget_s:g} s ({piece.about})", flush=True)
        for seed in seeds:
            if (name, seed) in done:
                runs.append(done[(name, seed)])
                continue
            run = dict(piece=name, **train_run(piece, args, base, plans[name]["steps"], seed,
                                               tokenizer.vocab_size, train_ids, val_set),
                       setting=setting)
            append_run(path, run)
            runs.append(run)
            trained += 1
            loss = "diverged" if run["diverged"] else f"{run['val_loss']:.4f}"
            print(f"  seed {seed}: val loss {loss} after {run['steps']} steps, "
                  f"{run['train_s']:.1f} s", flush=True)

    default_runs = [r for r in runs if r["piece"] == "default"]
    rows = [dict(summarise(n, [r for r in runs if r["piece"] == n], default_runs),
                 about=PIECES[n].about) for n in names]
    print_table(rows, columns=["piece", "seeds", "val_loss", "spread", "delta", "delta_err",
                               "steps", "tokens", "train_s", "finished", "diverged", "about"],
                title=f"final validation loss at {args.budget_s:g} s of training per run "
                      f"({args.eval_batches} fixed batches; spread: std over {args.seeds} "
                      "seeds; delta: mean paired difference from default, +- its standard "
                      "error; negative is better)")
    png = save_figure(os.path.join(args.out_dir, "speedrun.png"), _draw(runs, names))
    wall = time.perf_counter() - wall
    json_path = write_json(os.path.join(args.out_dir, "speedrun.json"), {
        "args": dataclasses.asdict(args), "base_train": base_train, "base_model": base_model,
        "pieces": {n: dataclasses.asdict(PIECES[n]) for n in names}, "plans": plans,
        "rows": rows, "runs": runs, "trained_now": trained, "png": png, "wall_s": wall,
        "machine": {"cpu_count": os.cpu_count(), "load_avg_start": load,
                    "load_avg_end": os.getloadavg()[0]}})
    wins = [r for r in rows if r["delta"] is not None and r["delta"] < 0]
    best = min(wins, key=lambda r: r["delta"]) if wins else None
    default = rows[0]["val_loss"]
    result = {"default_val_loss": None if default is None else round(default, 4),
              "deltas": {r["piece"]: None if r["delta"] is None else round(r["delta"], 4)
                         for r in rows[1:]},
              "best": None if best is None else best["piece"], "budget_s": args.budget_s,
              "seeds": args.seeds,
              "runs": len(runs), "trained_now": trained, "wall_s": round(wall, 1),
              "json": json_path}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_main(main)
