"""In-context learning and induction heads (Olsson et al., 2022; Elhage et al., 2021) on tiny
Shakespeare, and few-shot accuracy on synthetic tasks against the number of shots.

    python examples/in_context.py --quick=true     # 3000-step curves, 2 few-shot sizes (~6 min)
    python examples/in_context.py                  # 6000-step curves, 3 few-shot sizes
    python examples/in_context.py --models=attn2 --fewshot_steps=0  # one curve, no few-shot

On 2 shared cores run it with OMP_NUM_THREADS=1: NumPy's BLAS threads colliding with other
jobs made the same steps up to 15x slower in one session.

Reading order: Args; data (characters, the 90/10 split, the synthetic rows mixed in); one
curve run (train_curve: train in segments, and at every checkpoint the ICL score on held-out
windows, every head's prefix-matching score and the loss on each copy of repeated random
tokens); the phase-change finder; the few-shot part (train on a mixture of episodes, then
greedy accuracy against shots per task and size); the tables, JSON, figure, last JSON line.

1. Curve models, trained on the same batches: "attn1" and "attn2" are 1- and 2-layer
   attention-only transformers (GPTConfig mlp="none": no MLPs, Elhage et al.'s toy models),
   "gpt" the default GPT block (GELU MLP) at 2 layers, all at --n_embd / --n_head with RoPE.
   A fraction --synthetic_mix of each batch's rows are random segments of extra token ids
   (--synthetic_ids of them, beyond the characters) repeated to fill the block: the common trick
   to make induction pay off sooner; the ICL score is still measured on held-out text only.
2. At each checkpoint: the ICL score (tinygrad_llm.eval.interp.icl_score: loss at 0.9 T minus
   loss at 0.1 T, Olsson's token 500 minus token 50 scaled to the block) on held-out text and
   on held-out rows of the training mixture (the same share of fresh repeated segments: the
   data distribution the models learn, as Olsson's score is on theirs), the prefix-matching
   score of every head (mean attention from a token of the second copy of R = T / 2 random
   extra-id tokens to the token after its first occurrence) and the loss on each copy.
   The phase change: the first checkpoint where the best head's prefix score passes
   --prefix_threshold, against the checkpoint of the ICL score's steepest fall (smoothed over
   3 checkpoints), on text and on the mixture; "together" when they are at most two
   checkpoints apart; and the ICL score's change across the onset (mean of 3 checkpoints from
   it minus the 3 before).
3. Few-shot: models of --fewshot_sizes ("LxC", default GPT blocks) trained on episodes of
   --fewshot_max_shots demonstrations of a random task (key->value recall, a pattern rule:
   copy / reverse / increment, a + b mod p), loss on every demo output; then, with no weight
   updates, exact-match accuracy of the query's answer by greedy argmax for each number of
   shots in --shots (tinygrad_llm.eval.fewshot).

Writes out_dir/in_context.json and in_context.png (top: ICL score, best prefix-matching score and
second-copy loss against training step, per curve model; bottom: few-shot accuracy against
shots, one panel per task, one line per size), prints the tables and ends with one JSON line.

What the figures can show at this scale: whether a 2-layer attention-only model, unlike a
1-layer one, acquires heads that attend to the token after an earlier occurrence and at the
same time starts predicting the second copy of random tokens and late text better than early
text; and whether few-shot accuracy on toy tasks rises with shots and with size. What they
cannot show: Olsson's bump in the loss curve, the correlation across dozens of models, or the
claim that induction heads account for most ICL in large models; the ICL score on a 64-token
character context is about a tenth of a nat, not their 0.4 nats over 512 BPE tokens; the
synthetic rows make induction cheaper to learn than on text alone; one seed, no error bars,
tiny step counts (a head that forms late is missed by a short run, and a phase change's
timing here is a property of these settings, not of a model family). The toy tasks test
pattern completion on ids the models were trained on, not transfer to new tasks.

What the quick run gave (2 cores, idle, OMP_NUM_THREADS=1, --fewshot_steps=0: 2.8 minutes for
the curves). On the training mixture the ICL score and the heads jump together: attn2's
mixture ICL score sits near 0 (+0.03 to -0.09) for 1050 steps, then falls -0.16, -0.23,
-0.33, -0.68, -1.67, -2.53 to -3.05 by step 3000, its steepest fall at step 1800, the very
checkpoint its best head passes 0.3 (0.17 -> 0.50 -> 0.75); the change across the onset is
-1.92 nats. The GPT's falls at 1350, again its heads' onset (-2.00 nats). attn1 drifts to
-0.08 and never forms a head. That part is Olsson's co-occurrence, on the data these models
are trained on; on text alone it does not show (below), and the mixture's repeated rows are
what makes the late tokens predictable, so the mixture score and the second-copy loss measure
much the same thing. An earlier quick run (one session, 2 shared cores; 3.4 minutes) gave: the
2-layer attention-only model shows the induction phase change and the 1-layer one does not.
attn2's best prefix-matching score sits at 0.02-0.05 for 1500 steps, then climbs 0.04 -> 0.18
-> 0.50 -> 0.76 -> 0.89 between steps 1500 and 3000 (passing 0.3 at 1800), and in the same
checkpoints its loss on the second copy of random ids falls from 5.9 to 0.39 nats while the
first copy stays at 6.9 (log 448 = 6.1); attn1 ends at 0.047 and 6.03 against 6.17. The GPT
(with MLPs) makes the same transition earlier (0.3 passed at 1350; second copy 0.18). The ICL
score on held-out text does NOT jump with it: at a 64-character context it moves by
hundredths of a nat and shows no step. With 256 windows and a band of 0.05 T (the defaults;
the quick run above used 64 windows and 0.02 T, whose estimate sat at +0.2 nats from a fixed
sample's bias), a rerun of attn1 and attn2 gave attn2 an ICL score of about -0.10 from step
300 on, before and after its induction heads formed (change at the onset -0.0003), and attn1
-0.05 drifting to -0.01. So the curve of Olsson's Figure 1 (the score dropping at the phase
change) is not reproduced here, only the head-level change and the repeated-token loss.
Steps matter: at 500 steps (an earlier version of the quick mode) no model had formed an
induction head, and at a 128-character block attn2 had not formed one by step 3000.
Few-shot after 3000 steps (the quick run's default since this session; 3 minutes of it):
modular arithmetic is where shots and size meet: the 2x64 model goes 0.85 with no shots, 0.94
with one, 0.99 with 2 and 4, 1.00 with 8 and 16, while the 1x32 model stays at 0.83-0.93
whatever the shots. Key->value recall: 0.02-0.03 with no shots, one shot 0.34 (1x32) and 0.70
(2x64), then falling with more shots to 0.09 and 0.13 at 16 (the models copy the value of a
lone demo but have not learned to find the right key among many). Pattern (copy / reverse /
increment): 1x32 near 0, 2x64 0.07-0.19 with no trend. After 600 steps (the earlier quick
default) recall was 0.30-0.34 at one shot, pattern near 0 and modular 0.14-0.20 (1x32) and
0.40-0.49 (2x64) at every shot count.
"""
import dataclasses
import json
import os
import time

import numpy as np

import tinygrad_llm as tl
from tinygrad_llm.data import shakespeare
from tinygrad_llm.eval import (FEWSHOT_TASKS, FewShotTasks, copy_losses, episode_batch,
                               fewshot_accuracy, icl_score, prefix_matching_scores,
                               repeated_tokens, token_losses)
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.tokenizers import CharTokenizer
from tinygrad_llm.train import OptionError, TrainConfig, Trainer, parse_args, run_main
from tinygrad_llm.train.report import print_table, save_figure, write_json

CURVE_MODELS = {"attn1": (1, "none"), "attn2": (2, "none"), "gpt": (2, "gelu_tanh")}


@dataclasses.dataclass
class Args:
    quick: bool = False          # 3000-step curves, two few-shot sizes (~6 minutes)
    out_dir: str = "out-in-context"  # in_context.json, in_context.png
    device: str = "cpu"          # "cpu" or "cuda"
    seed: int = 0                # initialisation, batches, probes and episodes
    text_chars: int = None       # use only the first this many characters (none: all)
    models: str = "attn1,attn2,gpt"   # curve models: attn1, attn2 (attention only), gpt (MLP)
    block_size: int = 64         # context of the curve models
    n_embd: int = 64             # width of the curve models
    n_head: int = 4              # heads per layer of the curve models
    pos: str = "rope"            # positions of every model (GPTConfig.pos)
    batch_size: int = 16         # sequences per step (curve and few-shot models)
    steps: int = None            # training steps per curve model (none: 6000; quick: 3000)
    checkpoints: int = None      # evaluations along each curve run, plus step 0 (none: 30; 20)
    learning_rate: float = 3e-3  # AdamW's peak, after 5% warmup, cosine to 10%
    synthetic_mix: float = 0.5   # fraction of each batch's rows that are repeated random ids
    synthetic_ids: int = 448     # extra token ids for the synthetic rows and probes (0: chars)
    eval_seqs: int = 256         # held-out windows for the ICL score
    icl_band: float = 0.05       # each ICL position averages the positions within this * T
    probe_seqs: int = 16         # repeated random sequences for the prefix-matching scores
    prefix_threshold: float = 0.3    # a head past this prefix score counts as an induction head
    fewshot_sizes: str = None    # few-shot model sizes "LxC" (none: 1x32,2x64,4x64; quick: fewer)
    fewshot_steps: int = 3000    # training steps per few-shot model
    fewshot_max_shots: int = 16  # demos per training episode (the context the models get)
    shots: str = "0,1,2,4,8,16"  # numbers of shots to evaluate
    fewshot_episodes: int = 128  # evaluation episodes per task and number of shots


# ---- data -----------------------------------------------------------------------------------
def load_text(args):
    text = shakespeare()
    if args.text_chars is not None:
        text = text[:args.text_chars]
    tokenizer = CharTokenizer.from_text(text)
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
    n_train = int(len(ids) * 0.9)
    return tokenizer, ids[:n_train], ids[n_train:]


def mixed_rows(args, data, n_chars, block_size, n_rows, rng):
    """(n_rows, T + 1) windows of the text, with round(synthetic_mix * n_rows) rows replaced by
    a random segment of 8 .. T/2 ids (from the extra ids, or the characters when there are
    none) repeated to fill the row: the training mixture."""
    low, high = (n_chars, n_chars + args.synthetic_ids) if args.synthetic_ids else (0, n_chars)
    starts = rng.integers(0, len(data) - block_size - 1, n_rows)
    rows = np.stack([data[s:s + block_size + 1] for s in starts])          # (B, T + 1)
    for b in range(round(args.synthetic_mix * n_rows)):
        period = int(rng.integers(8, max(9, block_size // 2 + 1)))
        segment = rng.integers(low, high, period)
        rows[b] = np.tile(segment, block_size // period + 2)[:block_size + 1]
    return rows


def mixed_batches(args, n_chars, block_size):
    """A Trainer batch_fn over mixed_rows; targets of a synthetic row are its own next ids."""
    def batch_fn(data, rng):
        rows = mixed_rows(args, data, n_chars, block_size, args.batch_size, rng)
        return (tl.backend.to_device(rows[:, :-1], args.device),
                tl.backend.to_device(rows[:, 1:], args.device))
    return batch_fn


def train_config(args, steps, block_size):
    return TrainConfig(batch_size=args.batch_size, block_size=block_size, max_iters=steps,
                       learning_rate=args.learning_rate, min_lr=args.learning_rate / 10,
                       warmup_iters=max(1, steps // 20), weight_decay=0.1, grad_clip=1.0,
                       seed=args.seed, out_dir=None, checkpoint=False, progress=False)


# ---- one curve run --------------------------------------------------------------------------
def curve_config(args, name, vocab_size, block_size):
    layers, mlp = CURVE_MODELS[name]
    return GPTConfig.preset("gpt2", vocab_size=vocab_size, block_size=block_size,
                            n_layer=layers, n_head=args.n_head, n_embd=args.n_embd, mlp=mlp,
                            pos=args.pos, bias=False, dropout=0.0)


def measure(model, val_windows, mix_windows, probe, band):
    score = icl_score(model, val_windows, band=band)
    mix = icl_score(model, mix_windows, band=band)
    losses = token_losses(model, probe)
    heads = prefix_matching_scores(model, probe)
    copies = copy_losses(model, probe, losses=losses)
    return dict(icl_score=score["score"], loss_early=score["loss_early"],
                loss_late=score["loss_late"], icl_score_mix=mix["score"],
                prefix_max=float(heads.max()), prefix_scores=heads.round(4).tolist(),
                first_copy_loss=copies["first"], second_copy_loss=copies["second"])


def train_curve(args, name, config, train_ids, n_chars, val_windows, mix_windows, probe, steps):
    """One curve model trained for `steps`, measured at step 0 and at `checkpoints` evenly
    spaced steps; returns its record."""
    start = time.perf_counter()
    tl.manual_seed(args.seed)
    model = GPT(config).to(args.device)
    tc = train_config(args, steps, config.block_size)
    trainer = Trainer(model, tc.adamw(model.parameters()), train_ids, None, tc, log=None,
                      batch_fn=mixed_batches(args, n_chars, config.block_size))
    marks = sorted({round(steps * i / args.checkpoints) for i in range(args.checkpoints + 1)})
    curve, losses = [], []
    for mark in marks:
        while trainer.step < mark:
            losses.append(trainer.train_step())
        point = dict(step=mark, **measure(model, val_windows, mix_windows, probe,
                                          args.icl_band))
        point["train_loss"] = float(np.mean(losses[-10:])) if losses else None
        curve.append(point)
    final = curve[-1]
    return dict(model=name, params=model.num_parameters(non_embedding=True), steps=steps,
                curve=curve, phase=phase_change(curve, args.prefix_threshold),
                phase_mix=phase_change(curve, args.prefix_threshold, key="icl_score_mix"),
                final_icl_score=final["icl_score"], final_icl_score_mix=final["icl_score_mix"],
                final_prefix_max=final["prefix_max"],
                first_copy_loss=final["first_copy_loss"],
                second_copy_loss=final["second_copy_loss"],
                wall_s=time.perf_counter() - start)


def phase_change(curve, threshold, key="icl_score"):
    """The step the best head's prefix score first passes `threshold` (None: never); the step
    ending the steepest fall of the ICL score `key` (smoothed over 3 checkpoints: one
    checkpoint's noise is as large as the effect on text); whether the two are at most two
    checkpoints apart; and the ICL score's mean over the 3 checkpoints from the onset on minus
    the 3 before it."""
    steps = [p["step"] for p in curve]
    icl = np.array([p[key] for p in curve])
    smooth = np.convolve(np.pad(icl, 1, mode="edge"), np.ones(3) / 3, mode="valid")
    onset = next((i for i, p in enumerate(curve) if p["prefix_max"] >= threshold), None)
    falls = smooth[:-1] - smooth[1:]
    steepest = int(np.argmax(falls)) + 1 if len(falls) else None
    together = onset is not None and steepest is not None and abs(onset - steepest) <= 2
    change = (float(icl[onset:onset + 3].mean() - icl[max(0, onset - 3):onset].mean())
              if onset else None)
    return dict(induction_step=None if onset is None else steps[onset],
                icl_drop_step=None if steepest is None else steps[steepest],
                together=together, icl_change_at_onset=change)


# ---- few-shot -------------------------------------------------------------------------------
def fewshot_config(name, vocab_size, block_size, pos):
    layers, _, width = name.partition("x")
    if not (layers.isdigit() and width.isdigit() and int(layers) > 0 and int(width) >= 16
            and int(width) % 16 == 0):
        raise OptionError(f"--fewshot_sizes: expected sizes like '2x64' (blocks x width, a "
                          f"multiple of 16), got {name!r}")
    return GPTConfig.preset("gpt2", vocab_size=vocab_size, block_size=block_size,
                            n_layer=int(layers), n_head=int(width) // 16, n_embd=int(width),
                            pos=pos, bias=False, dropout=0.0)


def train_fewshot(args, name, layout, shots, steps):
    """A model of size `name` trained on mixed episodes of fewshot_max_shots demos (loss on
    every demo output), then its greedy accuracy per task and number of shots."""
    start = time.perf_counter()
    block = max(layout.episode_len(t, args.fewshot_max_shots) for t in FEWSHOT_TASKS) - 1
    config = fewshot_config(name, layout.vocab_size, block, args.pos)
    tl.manual_seed(args.seed)
    model = GPT(config).to(args.device)

    def batch_fn(_, rng):
        ids, mask, _ = episode_batch(FEWSHOT_TASKS, layout, args.batch_size,
                                     args.fewshot_max_shots, rng, block)
        targets = np.where(mask[:, 1:], ids[:, 1:], -100)
        return (tl.backend.to_device(ids[:, :-1], args.device),
                tl.backend.to_device(targets, args.device))
    tc = train_config(args, steps, block)
    trainer = Trainer(model, tc.adamw(model.parameters()), None, None, tc, log=None,
                      batch_fn=batch_fn)
    losses = [trainer.train_step() for _ in range(steps)]
    rng = np.random.default_rng([args.seed, 2])
    accuracy = {task: [fewshot_accuracy(model, task, layout, k, args.fewshot_episodes, rng)
                       for k in shots] for task in FEWSHOT_TASKS}
    return dict(size=name, params=model.num_parameters(non_embedding=True), steps=steps,
                train_loss=float(np.mean(losses[-10:])), accuracy=accuracy,
                wall_s=time.perf_counter() - start)


# ---- options --------------------------------------------------------------------------------
def _int_list(name, text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise OptionError(f"--{name}: expected comma-separated ints, got {text!r}") from None
    if not values or min(values) < 0 or len(set(values)) != len(values):
        raise OptionError(f"--{name}: expected distinct ints >= 0, got {text!r}")
    return sorted(values)


def resolve(args):
    """Fill the quick/full defaults and check every option, one OptionError line each."""
    if args.steps is None:
        args.steps = 3000 if args.quick else 6000
    if args.checkpoints is None:
        args.checkpoints = 20 if args.quick else 30
    if args.fewshot_sizes is None:
        args.fewshot_sizes = "1x32,2x64" if args.quick else "1x32,2x64,4x64"
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in CURVE_MODELS]
    if unknown or len(set(models)) != len(models):
        raise OptionError(f"--models: expected distinct names from {sorted(CURVE_MODELS)}, got "
                          f"{args.models!r}")
    for name, low in (("block_size", 16), ("n_head", 1), ("batch_size", 1), ("steps", 1),
                      ("checkpoints", 2), ("eval_seqs", 1), ("probe_seqs", 1),
                      ("fewshot_steps", 0), ("fewshot_max_shots", 1), ("fewshot_episodes", 1),
                      ("synthetic_ids", 0)):
        if getattr(args, name) < low:
            raise OptionError(f"--{name}: expected an int >= {low}, got {getattr(args, name)}")
    if args.n_embd % args.n_head:
        raise OptionError(f"--n_embd: {args.n_embd} is not a multiple of --n_head={args.n_head}")
    if not 0 <= args.icl_band < 0.1:
        raise OptionError(f"--icl_band: expected a fraction in [0, 0.1), got {args.icl_band}")
    if not 0 <= args.synthetic_mix <= 1:
        raise OptionError(f"--synthetic_mix: expected a fraction in [0, 1], got "
                          f"{args.synthetic_mix}")
    shots = _int_list("shots", args.shots)
    if shots[-1] > args.fewshot_max_shots:
        raise OptionError(f"--shots: {shots[-1]} shots exceed --fewshot_max_shots="
                          f"{args.fewshot_max_shots}, the longest context the models train on")
    sizes = [s.strip() for s in args.fewshot_sizes.split(",") if s.strip()]
    return models, shots, sizes if args.fewshot_steps else []


# ---- the figure -----------------------------------------------------------------------------
def _draw(curves, fewshot, shots):
    def draw(plt):
        fig, axes = plt.subplots(2, 3, figsize=(15, 8))
        for run in curves:
            steps = [p["step"] for p in run["curve"]]
            (line,) = axes[0, 0].plot(steps, [p["icl_score"] for p in run["curve"]], "o-",
                                      ms=3, label=f"{run['model']} text")
            axes[0, 0].plot(steps, [p["icl_score_mix"] for p in run["curve"]], "--",
                            color=line.get_color(), label=f"{run['model']} training mixture")
            axes[0, 1].plot(steps, [p["prefix_max"] for p in run["curve"]], "o-", ms=3,
                            label=run["model"])
            (line,) = axes[0, 2].plot(steps, [p["second_copy_loss"] for p in run["curve"]],
                                      "o-", ms=3, label=f"{run['model']} second copy")
            axes[0, 2].plot(steps, [p["first_copy_loss"] for p in run["curve"]], ":",
                            color=line.get_color(), label=f"{run['model']} first copy")
        for ax, title in zip(axes[0], ("ICL score (loss at 0.9T - loss at 0.1T)",
                                       "best head's prefix-matching score",
                                       "loss on repeated random tokens")):
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("training step")
            ax.legend(fontsize=7)
        for ax, task in zip(axes[1], FEWSHOT_TASKS):
            for run in fewshot:
                ax.plot(shots, run["accuracy"][task], "o-",
                        label=f"{run['size']} (N={run['params']:,})")
            ax.set_xscale("symlog", linthresh=1)
            ax.set_xticks(shots)
            ax.set_xticklabels([str(k) for k in shots])
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(f"few-shot {task}: greedy exact match", fontsize=10)
            ax.set_xlabel("shots in context")
            if fewshot:
                ax.legend(fontsize=7)
        fig.tight_layout()
    return draw


# ---- main -----------------------------------------------------------------------------------
def main(argv):
    (args,) = parse_args(argv, Args)
    models, shots, sizes = resolve(args)
    wall = time.perf_counter()
    tokenizer, train_ids, val_ids = load_text(args)
    vocab = tokenizer.vocab_size + args.synthetic_ids
    t = args.block_size
    if len(val_ids) <= t or len(train_ids) <= t + 1:
        raise OptionError(f"--block_size: {t} tokens do not fit in the {len(val_ids)} held-out "
                          f"characters; raise --text_chars or lower --block_size")
    rng = np.random.default_rng([args.seed, 1])
    val_windows = np.stack([val_ids[s:s + t] for s in
                            rng.integers(0, len(val_ids) - t, args.eval_seqs)])
    # the same measure on held-out rows of the training mixture (fresh repeated segments)
    mix_windows = mixed_rows(args, val_ids, tokenizer.vocab_size, t, args.eval_seqs,
                             rng)[:, :-1]
    low = tokenizer.vocab_size if args.synthetic_ids else 0
    probe = repeated_tokens(args.probe_seqs, t // 2, vocab, rng, low=low)
    configs = {m: curve_config(args, m, vocab, t) for m in models}
    layout = FewShotTasks()
    for name in sizes:                      # bad sizes fail before anything trains
        fewshot_config(name, layout.vocab_size, 16, args.pos)
    print(f"{len(train_ids):,} training characters, vocabulary {tokenizer.vocab_size} + "
          f"{args.synthetic_ids} synthetic ids; curve models {models}, block {t}", flush=True)

    curves = []
    for name in models:
        run = train_curve(args, name, configs[name], train_ids, tokenizer.vocab_size,
                          val_windows, mix_windows, probe, args.steps)
        curves.append(run)
        print(f"{name}: {run['steps']} steps in {run['wall_s']:.0f}s", flush=True)
    for run in curves:
        print_table(run["curve"], columns=["step", "train_loss", "icl_score", "loss_early",
                                           "loss_late", "icl_score_mix", "prefix_max",
                                           "first_copy_loss", "second_copy_loss"],
                    title=f"{run['model']} ({run['params']:,} non-embedding parameters)")
    rows = [dict(model=r["model"], params=r["params"], icl_score=r["final_icl_score"],
                 icl_score_mix=r["final_icl_score_mix"], prefix_max=r["final_prefix_max"],
                 first_copy=r["first_copy_loss"], second_copy=r["second_copy_loss"],
                 **r["phase"], mix_drop_step=r["phase_mix"]["icl_drop_step"],
                 mix_together=r["phase_mix"]["together"],
                 mix_change_at_onset=r["phase_mix"]["icl_change_at_onset"]) for r in curves]
    print_table(rows, title=f"after {args.steps} steps; induction_step: best head's prefix "
                            f"score >= {args.prefix_threshold}; icl_drop_step / "
                            "mix_drop_step: steepest fall of the ICL score on text / on the "
                            "training mixture")

    fewshot = []
    for name in sizes:
        run = train_fewshot(args, name, layout, shots, args.fewshot_steps)
        fewshot.append(run)
        print(f"few-shot {name}: {run['steps']} steps in {run['wall_s']:.0f}s", flush=True)
    if fewshot:
        table = [dict(size=r["size"], params=r["params"], task=task,
                      **{f"{k}-shot": a for k, a in zip(shots, r["accuracy"][task])})
                 for task in FEWSHOT_TASKS for r in fewshot]
        print_table(table, title=f"few-shot greedy exact match ({args.fewshot_episodes} "
                                 "episodes each; no weight updates)")

    png = save_figure(os.path.join(args.out_dir, "in_context.png"),
                      _draw(curves, fewshot, shots))
    wall = time.perf_counter() - wall
    path = write_json(os.path.join(args.out_dir, "in_context.json"), {
        "args": dataclasses.asdict(args), "curves": curves, "fewshot": fewshot,
        "shots": shots, "png": png, "wall_s": wall})
    by = {r["model"]: r for r in curves}
    result = {f"{m}_{key}": (None if v is None else round(v, 4) if isinstance(v, float)
                             else v)
              for m, r in by.items()
              for key, v in (("icl_score", r["final_icl_score"]),
                             ("icl_score_mix", r["final_icl_score_mix"]),
                             ("icl_change_at_onset_mix", r["phase_mix"]["icl_change_at_onset"]),
                             ("phase_together_mix", r["phase_mix"]["together"]),
                             ("prefix_max", r["final_prefix_max"]),
                             ("second_copy_loss", r["second_copy_loss"]),
                             ("induction_step", r["phase"]["induction_step"]),
                             ("icl_change_at_onset", r["phase"]["icl_change_at_onset"]),
                             ("phase_together", r["phase"]["together"]))}
    for r in fewshot:
        for task in FEWSHOT_TASKS:
            result[f"fewshot_{r['size']}_{task}"] = [round(a, 3) for a in r["accuracy"][task]]
    result.update(wall_s=round(wall, 1), json=path)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_main(main)
