"""Pruning the main job's model: validation loss against sparsity, unstructured and 2:4, and a
short recovery fine-tuning that keeps the zeros.

    python examples/prune.py                    # trains the model first if it is missing
    python examples/prune.py --sparsities=0,0.5,0.9 --recover_steps=300 --plot=true

Magnitude pruning (Han et al., 2015) zeroes the weights of smallest |w| in the transformer
blocks' Linear layers, either the same fraction s of every layer (scope "layer") or the smallest
s of all of them pooled (scope "global", which prunes some layers harder than others). 2:4
semi-structured pruning (Mishra et al., 2021) keeps the 2 largest of every 4 consecutive input
weights: exactly 50%, in the pattern sparse tensor cores skip. Each setting starts from a fresh
copy of the checkpoint; the measured fraction of zeros (`sparsity(model)["total"]`) and the
validation loss (the Trainer's evaluation, the same batches for every model) are reported.
Then the 2:4 model and one high unstructured sparsity are fine-tuned for `recover_steps` AdamW
steps at a small learning rate, with `apply_masks` after every step so that
    w <- keep * AdamW(w),   keep fixed by the pruning,
and the validation loss after recovery is reported with the sparsity, checked to be unchanged.
The dense model gets the same fine-tuning as a control: the part of a recovery that is only
"more training" shows there.
Prints a table and ends with one JSON line that main(argv) also returns; --plot=true also writes
the curve as a PNG when matplotlib is installed.

On the main job's model, global pruning does worse than per-layer up to 80%: pooled, the
attention output projections, whose weights are smaller (GPT-2's initialisation scales them by
1/sqrt(2 n_layer)), lose 65-78% of their weights at 50% overall while ffn.up loses ~40%. Equal
magnitude is not equal importance across layers of different scale.
"""
import dataclasses
import json
import os
import sys
import time

import tinygrad_llm as tl  # noqa: F401  (first: it tunes the thread pools before NumPy loads)

from tinygrad_llm import backend  # noqa: E402
from tinygrad_llm.finetune import apply_masks, magnitude_prune, prune_2_4, sparsity  # noqa: E402
from tinygrad_llm.optim import AdamW  # noqa: E402
from tinygrad_llm.train import (TrainConfig, Trainer, load_model, parse_overrides,  # noqa: E402
                                split_overrides)
from tinygrad_llm.train import run_main  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from distill import char_data, ensure_char_model, evaluate  # noqa: E402


@dataclasses.dataclass
class PruneArgs:
    model: str = "out-shakespeare/ckpt.safetensors"
    model_iters: int = 2000        # when the model must be trained
    model_args: str = ""           # more train_shakespeare.py overrides for that, space-separated
    sparsities: str = "0,0.25,0.5,0.6,0.7,0.8,0.9"
    batch_size: int = 16
    block_size: int = 128          # at most the model's
    eval_iters: int = 10           # validation batches (the same ones for every model)
    recover_steps: int = 150       # 0: no recovery fine-tuning
    recover_sparsity: float = 0.7  # the unstructured setting that is also recovered ...
    recover_scope: str = "layer"   # ... and its scope
    learning_rate: float = 3e-4
    min_lr: float = 3e-5
    warmup: int = 10
    plot: bool = False
    plot_path: str = "out-prune/prune.png"
    seed: int = 1337


def parse_sparsities(text):
    try:
        values = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--sparsities: expected comma-separated numbers, got {text!r}") from None
    if not values or any(not 0.0 <= s < 1.0 for s in values):
        raise ValueError(f"--sparsities: expected numbers in [0, 1), got {text!r}")
    return values


def pruned_positions_are_zero(model, masks):
    modules = dict(model.named_modules())
    return all(not backend.to_numpy(modules[n].weight.data)[~keep].any()
               for n, keep in masks.items())


def recover(model, masks, train_ids, val_ids, args):
    """Fine-tune every weight for args.recover_steps steps of the Trainer (AdamW, warmup and
    cosine decay, clipping), re-zeroing the pruned ones after each step (apply_masks). Returns
    the wall seconds."""
    config = TrainConfig(batch_size=args.batch_size, block_size=args.block_size,
                         max_iters=args.recover_steps, learning_rate=args.learning_rate,
                         min_lr=args.min_lr, warmup_iters=args.warmup, grad_clip=1.0,
                         seed=args.seed + 1, checkpoint=False, progress=False)
    optimizer = AdamW(model.parameters(), lr=args.learning_rate, betas=(0.9, 0.99),
                      weight_decay=0.0)
    trainer = Trainer(model, optimizer, train_ids, val_ids, config, log=None)
    start = time.perf_counter()
    for _ in range(args.recover_steps):
        trainer.train_step()
        apply_masks(model, masks)
    model.eval()
    return time.perf_counter() - start


def plot_curve(curve, two_four, dense, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot: matplotlib is not installed (pip install matplotlib); no plot written")
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for scope, rows in curve.items():
        ax.plot([r["sparsity"] for r in rows], [r["val_loss"] for r in rows], "o-",
                label=f"magnitude, {scope}")
    ax.plot([two_four["sparsity"]], [two_four["val_loss"]], "s", label="2:4")
    ax.axhline(dense, color="gray", lw=0.8, ls="--", label="dense")
    ax.set_xlabel("sparsity of the blocks' Linear weights")
    ax.set_ylabel("validation loss")
    ax.legend()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")
    return path


def main(argv):
    (kw,) = split_overrides(parse_overrides(argv), PruneArgs)
    args = PruneArgs(**kw)
    targets = parse_sparsities(args.sparsities)
    if args.recover_scope not in ("layer", "global"):
        raise ValueError(f"--recover_scope: expected 'layer' or 'global', got "
                         f"{args.recover_scope!r}")
    if not 0.0 <= args.recover_sparsity < 1.0:
        raise ValueError(f"--recover_sparsity: expected a number in [0, 1), got "
                         f"{args.recover_sparsity!r}")
    ensure_char_model(args.model, args.model_iters, args.model_args)
    start = time.perf_counter()
    dense_model, record = load_model(args.model)
    if args.block_size > dense_model.config.block_size:
        raise ValueError(f"--block_size={args.block_size} exceeds the model's block_size="
                         f"{dense_model.config.block_size}")
    train_ids, val_ids = char_data(record)

    def val_loss(model):
        return evaluate(model, train_ids, val_ids, args.batch_size, args.block_size,
                        args.eval_iters, args.seed)["val"]

    def fresh():
        return load_model(args.model)[0]

    dense = val_loss(dense_model)
    print(f"dense model: {dense_model.num_parameters():,} parameters, val loss {dense:.4f}",
          flush=True)
    curve = {"layer": [], "global": []}
    for s in targets:
        for scope in curve:
            model = fresh()
            magnitude_prune(model, s, scope=scope)
            curve[scope].append({"target": s, "sparsity": round(sparsity(model)["total"], 4),
                                 "val_loss": round(val_loss(model), 4)})
        print(f"sparsity {s:.2f}: layer {curve['layer'][-1]['val_loss']:.4f}, "
              f"global {curve['global'][-1]['val_loss']:.4f}", flush=True)
    model = fresh()
    prune_2_4(model)
    two_four = {"sparsity": round(sparsity(model)["total"], 4),
                "val_loss": round(val_loss(model), 4)}

    recovery = {}
    if args.recover_steps > 0:
        # the dense model trained the same steps: how much of a "recovery" is just more training
        settings = {"dense (control)": lambda m: {}, "2:4": prune_2_4,
                    f"{args.recover_scope}@{args.recover_sparsity:g}": lambda m: magnitude_prune(
                        m, args.recover_sparsity, scope=args.recover_scope)}
        for name, prune in settings.items():
            model = fresh()
            masks = prune(model)
            before_sparsity, before = sparsity(model)["total"], val_loss(model)
            wall = recover(model, masks, train_ids, val_ids, args)
            after_sparsity = sparsity(model)["total"]
            if not pruned_positions_are_zero(model, masks) or after_sparsity != before_sparsity:
                raise AssertionError(f"recovery of {name} lost sparsity: {before_sparsity} -> "
                                     f"{after_sparsity}")
            recovery[name] = {"sparsity": round(after_sparsity, 4),
                              "val_loss_before": round(before, 4),
                              "val_loss_after": round(val_loss(model), 4),
                              "steps": args.recover_steps, "wall_s": round(wall, 1)}
            print(f"recovery {name}: val loss {before:.4f} -> "
                  f"{recovery[name]['val_loss_after']:.4f} in {args.recover_steps} steps, "
                  f"sparsity {after_sparsity:.4f} kept", flush=True)

    print(f"\n{'target':>8} | {'layer: sparsity':>15} {'val loss':>8} | "
          f"{'global: sparsity':>16} {'val loss':>8}")
    for lay, glo in zip(curve["layer"], curve["global"]):
        print(f"{lay['target']:>8.2f} | {lay['sparsity']:>15.4f} {lay['val_loss']:>8.4f} | "
              f"{glo['sparsity']:>16.4f} {glo['val_loss']:>8.4f}")
    print(f"{'2:4':>8} | {two_four['sparsity']:>15.4f} {two_four['val_loss']:>8.4f} |")
    for name, r in recovery.items():
        print(f"recovered {name}: {r['val_loss_before']:.4f} -> {r['val_loss_after']:.4f} "
              f"at sparsity {r['sparsity']:.4f}")
    plot = plot_curve(curve, two_four, dense, args.plot_path) if args.plot else None
    result = {"dense_val_loss": round(dense, 4), "curve": curve, "2:4": two_four,
              "recovery": recovery, "parameters": dense_model.num_parameters(),
              "plot": plot, "wall_s": round(time.perf_counter() - start, 1)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_main(main)
