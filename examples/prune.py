"""Pruning the main job's model: validation loss against sparsity, unstructured and 2:4, and a
short recovery fine-tuning that keeps the zeros.

    python examples/prune.py                    # trains the model first if it is missing
    python examples/prune.py --sparsities=0,0.5,0.9 --max_iters=300 --plot

Magnitude pruning (Han et al., 2015) zeroes the weights of smallest |w| in the transformer
blocks' Linear layers, either the same fraction s of every layer (scope "layer") or the smallest
s of all of them pooled (scope "global", which prunes some layers harder than others). 2:4
semi-structured pruning (Mishra et al., 2021) keeps the 2 largest of every 4 consecutive input
weights: exactly 50%, in the pattern sparse tensor cores skip. Each setting starts from a fresh
copy of the checkpoint; the measured fraction of zeros (`sparsity(model)["total"]`) and the
held-out figures are reported. Then the 2:4 model and one high unstructured sparsity are
fine-tuned for `max_iters` steps of the Trainer (AdamW at a small learning rate), with
`apply_masks` after every step so that
    w <- keep * AdamW(w),   keep fixed by the pruning,
and the held-out figures after recovery are reported with the sparsity, checked to be
unchanged. The dense model gets the same fine-tuning as a control: the part of a recovery that
is only "more training" shows there.

Every model is scored by the evaluation harness on the same held-out text: the first
eval_iters * batch_size * block_size tokens of the validation split (capped so that the cost is
the Trainer's evaluation of eval_iters batches), read in disjoint rolling windows of the model's
max_positions (eval.evaluate, a "perplexity" task). `val_loss` is its nats per token, beside
perplexity and bits per byte, each with its bootstrap standard error over the windows (the
`*_stderr` figures): a difference between two settings smaller than about twice the stderr is
not one this much text can tell apart.
Prints a table and ends with one JSON line that main(argv) also returns; --plot also writes the
curve, with error bars of one stderr, to out_dir/prune.png when matplotlib is installed.

On the main job's model, global pruning does worse than per-layer up to 80%: pooled, the
attention output projections, whose weights are smaller (GPT-2's initialisation scales them by
1/sqrt(2 n_layer)), lose 65-78% of their weights at 50% overall while ffn.up loses ~40%. Equal
magnitude is not equal importance across layers of different scale.
"""
import dataclasses
import json
import os
import shlex
import time

import tinygrad_llm as tl  # noqa: F401  (first: it tunes the thread pools before NumPy loads)

from tinygrad_llm import backend  # noqa: E402
from tinygrad_llm.data import shakespeare, split  # noqa: E402
from tinygrad_llm.eval import Task, evaluate  # noqa: E402
from tinygrad_llm.finetune import apply_masks, magnitude_prune, prune_2_4, sparsity  # noqa: E402
from tinygrad_llm.train import (OptionError, TrainConfig, Trainer,  # noqa: E402
                                ensure_checkpoint, load_model, parse_args, run_main)

# trains a missing model: the main job's command line, without its sample
TRAIN = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_shakespeare.py"),
         "--sample_tokens=0", "--progress=false"]


@dataclasses.dataclass
class PruneArgs:
    model: str = "out-shakespeare/ckpt.safetensors"   # the dense model (trained if missing)
    model_iters: int = 2000        # when the model must be trained
    model_args: str = ""           # more train_shakespeare.py options for that, space-separated
    sparsities: str = "0,0.25,0.5,0.6,0.7,0.8,0.9"    # fractions pruned, comma-separated
    recover_sparsity: float = 0.7  # the unstructured setting that is also recovered ...
    recover_scope: str = "layer"   # ... and its scope ("layer" or "global")
    plot: bool = False             # also draw the curve (out_dir/prune.png)


# recovery: max_iters steps (0: none); held-out text: eval_iters * batch_size * block_size tokens
TRAIN_DEFAULTS = dict(max_iters=150, batch_size=16, block_size=128, eval_iters=10,
                      learning_rate=3e-4, min_lr=3e-5, warmup_iters=10, weight_decay=0.0,
                      beta2=0.99, grad_clip=1.0, out_dir="out-prune")


def parse_sparsities(text):
    try:
        values = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise OptionError(f"--sparsities: expected comma-separated numbers, got {text!r}") from None
    if not values or any(not 0.0 <= s < 1.0 for s in values):
        raise OptionError(f"--sparsities: expected numbers in [0, 1), got {text!r}")
    return values


# the harness's perplexity metrics -> this example's names (nats per token: the validation loss)
FIGURES = {"nll_per_token": "val_loss", "perplexity": "perplexity",
           "bits_per_byte": "bits_per_byte"}


def held_out_figures(model, tokenizer, task):
    """The harness's perplexity-task metrics of `model`, flat and rounded: {val_loss,
    val_loss_stderr, perplexity, perplexity_stderr, bits_per_byte, bits_per_byte_stderr}."""
    metrics = evaluate(model, tokenizer, [task])["tasks"][task.name]["metrics"]
    return {k: round(v, 4) for name, key in FIGURES.items()
            for k, v in ((key, metrics[name]["value"]), (key + "_stderr", metrics[name]["stderr"]))}


def recovery_row(sparsity_kept, before, after, steps, wall):
    """One recovery's JSON: the validation loss before and after, then every held-out figure
    before and after with its stderr (val_loss_before_stderr, bits_per_byte_after, ...)."""
    row = {"sparsity": round(sparsity_kept, 4), "val_loss_before": before["val_loss"],
           "val_loss_after": after["val_loss"], "steps": steps, "wall_s": round(wall, 1)}
    for key in FIGURES.values():
        for when, figures in (("before", before), ("after", after)):
            row[f"{key}_{when}"] = figures[key]
            row[f"{key}_{when}_stderr"] = figures[key + "_stderr"]
    return row


def pruned_positions_are_zero(model, masks):
    modules = dict(model.named_modules())
    return all(not backend.to_numpy(modules[n].weight.data)[~keep].any()
               for n, keep in masks.items())


def recover(model, masks, train_ids, train):
    """Fine-tune every weight for max_iters steps of the Trainer (AdamW, warmup and cosine decay,
    clipping), re-zeroing the pruned ones after each step (apply_masks). Its batches are drawn
    with seed + 1 (the evaluation's are seeded by seed). Returns the wall seconds."""
    config = dataclasses.replace(train, seed=train.seed + 1, checkpoint=False, progress=False)
    trainer = Trainer(model, train.adamw(model.parameters()), train_ids, None, config, log=None)
    start = time.perf_counter()
    for _ in range(train.max_iters):
        trainer.train_step()
        apply_masks(model, masks)
    model.eval()
    return time.perf_counter() - start


def plot_curve(curve, two_four, dense, path):
    """Validation loss against sparsity, one line per scope, with error bars of one bootstrap
    stderr; dense: the dense model's figures (a line and a band of one stderr)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot: matplotlib is not installed (pip install matplotlib); no plot written")
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for scope, rows in curve.items():
        ax.errorbar([r["sparsity"] for r in rows], [r["val_loss"] for r in rows],
                    yerr=[r["val_loss_stderr"] for r in rows], fmt="o-", capsize=3,
                    label=f"magnitude, {scope}")
    ax.errorbar([two_four["sparsity"]], [two_four["val_loss"]],
                yerr=[two_four["val_loss_stderr"]], fmt="s", capsize=3, label="2:4")
    ax.axhline(dense["val_loss"], color="gray", lw=0.8, ls="--", label="dense")
    ax.axhspan(dense["val_loss"] - dense["val_loss_stderr"],
               dense["val_loss"] + dense["val_loss_stderr"], color="gray", alpha=0.15)
    ax.set_xlabel("sparsity of the blocks' Linear weights")
    ax.set_ylabel("held-out loss (nats per token) ± stderr")
    ax.legend()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")
    return path


def main(argv):
    args, train = parse_args(argv, PruneArgs, TrainConfig, defaults={TrainConfig: TRAIN_DEFAULTS})
    targets = parse_sparsities(args.sparsities)
    if args.recover_scope not in ("layer", "global"):
        raise OptionError(f"--recover_scope: expected 'layer' or 'global', got "
                          f"{args.recover_scope!r}")
    if not 0.0 <= args.recover_sparsity < 1.0:
        raise OptionError(f"--recover_sparsity: expected a number in [0, 1), got "
                          f"{args.recover_sparsity!r}")
    ensure_checkpoint(args.model, [*TRAIN, f"--max_iters={args.model_iters}",
                                   *shlex.split(args.model_args)])
    start = time.perf_counter()
    dense_model, tokenizer, _ = load_model(args.model)
    if train.block_size > dense_model.config.block_size:
        raise OptionError(f"--block_size={train.block_size} exceeds the model's block_size="
                          f"{dense_model.config.block_size}")
    # the corpus split 90/10 as train_shakespeare.py split it: the model never saw val_ids
    train_ids, val_ids = split(tokenizer.encode(shakespeare()), 0.1)

    # the same held-out text for every model, as many tokens as eval_iters batches hold
    n_held_out = train.eval_iters * train.batch_size * train.block_size + 1
    held_out = Task("held_out", "perplexity",
                    [{"text": tokenizer.decode([int(i) for i in val_ids[:n_held_out]])}])

    def figures(model):
        return held_out_figures(model, tokenizer, held_out)

    def fresh():
        return load_model(args.model)[0]

    dense = figures(dense_model)
    print(f"dense model: {dense_model.num_parameters():,} parameters, val loss "
          f"{dense['val_loss']:.4f} ± {dense['val_loss_stderr']:.4f}, "
          f"{dense['bits_per_byte']:.4f} bits per byte", flush=True)
    curve = {"layer": [], "global": []}
    for s in targets:
        for scope in curve:
            model = fresh()
            magnitude_prune(model, s, scope=scope)
            curve[scope].append({"target": s, "sparsity": round(sparsity(model)["total"], 4),
                                 **figures(model)})
        print(f"sparsity {s:.2f}: layer {curve['layer'][-1]['val_loss']:.4f}, "
              f"global {curve['global'][-1]['val_loss']:.4f}", flush=True)
    model = fresh()
    prune_2_4(model)
    two_four = {"sparsity": round(sparsity(model)["total"], 4), **figures(model)}

    recovery = {}
    if train.max_iters > 0:
        # the dense model trained the same steps: how much of a "recovery" is just more training
        settings = {"dense (control)": lambda m: {}, "2:4": prune_2_4,
                    f"{args.recover_scope}@{args.recover_sparsity:g}": lambda m: magnitude_prune(
                        m, args.recover_sparsity, scope=args.recover_scope)}
        for name, prune in settings.items():
            model = fresh()
            masks = prune(model)
            before_sparsity, before = sparsity(model)["total"], figures(model)
            wall = recover(model, masks, train_ids, train)
            after_sparsity = sparsity(model)["total"]
            if not pruned_positions_are_zero(model, masks) or after_sparsity != before_sparsity:
                raise AssertionError(f"recovery of {name} lost sparsity: {before_sparsity} -> "
                                     f"{after_sparsity}")
            recovery[name] = recovery_row(after_sparsity, before, figures(model),
                                          train.max_iters, wall)
            print(f"recovery {name}: val loss {before['val_loss']:.4f} -> "
                  f"{recovery[name]['val_loss_after']:.4f} "
                  f"± {recovery[name]['val_loss_after_stderr']:.4f} in {train.max_iters} steps, "
                  f"sparsity {after_sparsity:.4f} kept", flush=True)

    print(f"\n{'target':>8} | {'layer: sparsity':>15} {'val loss':>8} {'± stderr':>8} | "
          f"{'global: sparsity':>16} {'val loss':>8} {'± stderr':>8}")
    for lay, glo in zip(curve["layer"], curve["global"]):
        print(f"{lay['target']:>8.2f} | {lay['sparsity']:>15.4f} {lay['val_loss']:>8.4f} "
              f"{lay['val_loss_stderr']:>8.4f} | {glo['sparsity']:>16.4f} "
              f"{glo['val_loss']:>8.4f} {glo['val_loss_stderr']:>8.4f}")
    print(f"{'2:4':>8} | {two_four['sparsity']:>15.4f} {two_four['val_loss']:>8.4f} "
          f"{two_four['val_loss_stderr']:>8.4f} |")
    for name, r in recovery.items():
        print(f"recovered {name}: {r['val_loss_before']:.4f} -> {r['val_loss_after']:.4f} "
              f"at sparsity {r['sparsity']:.4f}")
    plot = plot_curve(curve, two_four, dense, os.path.join(train.out_dir, "prune.png")) \
        if args.plot else None
    result = {"dense_val_loss": dense["val_loss"], "dense": dense, "curve": curve,
              "2:4": two_four, "held_out_tokens": min(n_held_out, len(val_ids)),
              "recovery": recovery, "parameters": dense_model.num_parameters(),
              "plot": plot, "wall_s": round(time.perf_counter() - start, 1)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_main(main)
