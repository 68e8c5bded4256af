"""Knowledge distillation: a small character-level GPT learns from the main job's model, and is
compared with the same student trained from scratch for the same steps.

    python examples/distill.py                  # trains the teacher first if it is missing
    python examples/distill.py --temperature=2 --alpha=0.5 --max_iters=800 --n_embd=96
    python examples/distill.py --out_dir=out-distill      # keep the distilled student

The teacher is examples/train_shakespeare.py's model (4 layers, 192 dims, ~1.8M parameters; its
checkpoint is `teacher`, trained here with `teacher_iters` steps when missing). The student is a
GPT on the same character vocabulary, by default 2 layers of 128 dims (~0.42M parameters).
The student is trained twice by the Trainer from the same initialisation, on the same batches,
with the same optimizer and schedule: (a) on the hard next-character labels alone, (b) on Hinton
et al.'s (2015) mix of the teacher's softened distribution and the labels (finetune/heads.py):

  L = alpha T^2 KL(softmax(z_teacher / T) || softmax(z_student / T)) + (1 - alpha) CE(z_student, y)

where z_teacher comes from a no-grad forward of the teacher on the same batch. The soft targets
say, at every position, how likely each of the 65 characters is, not only which one came next:
far more signal per token than one label, so a student learns faster. Both students (and the
teacher) are then scored by plain cross-entropy on the same validation batches (the Trainer's
own evaluation: the *_val_loss figures), and by the evaluation harness on the same held-out text,
the first eval_iters * batch_size * block_size tokens of the validation split read in rolling
windows (eval.evaluate: perplexity, bits per byte and nats per token, each with its bootstrap
standard error over the windows; the `held_out` figures). Prints progress and ends with one JSON
line that main(argv) also returns.

The defaults (T = 1, alpha = 0.9) come from 400-step trials of this student: validation loss
2.283 from scratch; distilled 2.196 (T=1, alpha=0.9), 2.198 (T=1, alpha=1), 2.233 (T=1,
alpha=0.5), 2.258 (T=1.5, alpha=0.9), 2.273 (T=2, alpha=0.9). A language model's next-character
distribution is already broad, so softening it further mostly teaches the student to be unsure;
T > 1 pays off for peaked classifiers, where Hinton et al. used it.
"""
import dataclasses
import json
import os
import shlex
import time

import tinygrad_llm as tl  # noqa: F401  (first: it tunes the thread pools before NumPy loads)
import numpy as np  # noqa: E402

from tinygrad_llm import no_grad  # noqa: E402
from tinygrad_llm.data import shakespeare, split  # noqa: E402
from tinygrad_llm.eval import Task, evaluate  # noqa: E402
from tinygrad_llm.finetune import distillation_loss  # noqa: E402
from tinygrad_llm.models import GPT, GPTConfig  # noqa: E402
from tinygrad_llm.nn import functional as F  # noqa: E402
from tinygrad_llm.optim import param_groups_for_weight_decay  # noqa: E402
from tinygrad_llm.train import (TrainConfig, Trainer, build_config, ensure_checkpoint,  # noqa
                                load_model, parse_overrides, run_main, save_checkpoint,
                                split_overrides)

# trains a missing teacher: the main job's command line, without its sample
TRAIN = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_shakespeare.py"),
         "--sample_tokens=0", "--progress=false"]


@dataclasses.dataclass
class DistillArgs:
    teacher: str = "out-shakespeare/ckpt.safetensors"   # the teacher (trained if missing)
    teacher_iters: int = 2000      # when the teacher must be trained
    teacher_args: str = ""         # more train_shakespeare.py options for that, space-separated
    temperature: float = 1.0       # T, softening both distributions (see the docstring)
    alpha: float = 0.9             # weight of the soft (teacher) term; 1 - alpha on the labels


# the student: 2 layers of 128 dims over the teacher's characters, its block the training one's
STUDENT = dict(n_layer=2, n_head=4, n_embd=128, dropout=0.0, bias=False)
TRAIN_DEFAULTS = dict(max_iters=600, batch_size=16, block_size=128, learning_rate=2e-3,
                      min_lr=2e-4, warmup_iters=50, weight_decay=0.1, beta2=0.99, grad_clip=1.0,
                      eval_iters=20, out_dir=None)


def train_student(args, train, config, train_ids, teacher=None, label=""):
    """A fresh student (seeded: both runs start from the same weights) trained for max_iters
    steps by the Trainer, whose batches come from a generator seeded the same way.
    teacher=None: hard labels only. Returns (student in eval mode, wall seconds)."""
    tl.manual_seed(train.seed)
    student = GPT(config)
    optimizer = train.adamw(param_groups_for_weight_decay(student, train.weight_decay))

    def loss_fn(model, batch):
        x, y = batch                                                         # (B, T) each
        logits = model(x)                                                    # (B, T, V)
        if teacher is None:
            return F.cross_entropy(logits, y)
        with no_grad():
            teacher_logits = teacher(x)
        return distillation_loss(logits, teacher_logits, y, args.temperature, args.alpha)

    trainer = Trainer(student, optimizer, train_ids, None, train, loss_fn=loss_fn, log=None)
    losses, start = [], time.perf_counter()
    for step in range(train.max_iters):
        losses.append(trainer.train_step())
        if step % 100 == 0 or step == train.max_iters - 1:
            print(f"{label} step {step}: loss {np.mean(losses[-100:]):.4f}", flush=True)
    return student.eval(), time.perf_counter() - start


def held_out_figures(model, tokenizer, task):
    """The harness's perplexity-task metrics, flat: {metric: value, metric_stderr: stderr}."""
    metrics = evaluate(model, tokenizer, [task])["tasks"][task.name]["metrics"]
    return {k: round(v, 4) for name, m in metrics.items()
            for k, v in ((name, m["value"]), (name + "_stderr", m["stderr"]))}


def main(argv):
    args_kw, train_kw, model_kw = split_overrides(
        parse_overrides(argv), DistillArgs, TrainConfig, GPTConfig,
        defaults={TrainConfig: TRAIN_DEFAULTS, GPTConfig: STUDENT})
    args, train = build_config(DistillArgs, **args_kw), build_config(TrainConfig, **train_kw)
    if not args.temperature > 0 or not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--temperature must be > 0 and --alpha in [0, 1], got "
                         f"temperature={args.temperature!r}, alpha={args.alpha!r}")
    if train.max_iters < 1:
        raise ValueError(f"--max_iters must be >= 1, got {train.max_iters}")
    ensure_checkpoint(args.teacher, [*TRAIN, f"--max_iters={args.teacher_iters}",
                                     *shlex.split(args.teacher_args)])
    teacher, tokenizer, record = load_model(args.teacher)
    if train.block_size > teacher.config.block_size:
        raise ValueError(f"--block_size={train.block_size} exceeds the teacher's block_size="
                         f"{teacher.config.block_size} (it must read the student's batches)")
    # the corpus split 90/10 as train_shakespeare.py split it: the teacher never saw val_ids
    train_ids, val_ids = split(tokenizer.encode(shakespeare()), 0.1)
    config = build_config(GPTConfig.preset, "gpt2", vocab_size=teacher.config.vocab_size,
                          block_size=train.block_size, **model_kw)

    def score(model):
        """Cross-entropy on eval_iters batches of each split, from a Trainer at step 0: the
        same batches for every model."""
        return Trainer(model, None, train_ids, val_ids, train, log=None).evaluate()

    # the harness's held-out text: as many validation tokens as the Trainer's val batches read
    n_held_out = train.eval_iters * train.batch_size * train.block_size + 1
    held_out = Task("held_out", "perplexity",
                    [{"text": tokenizer.decode([int(i) for i in val_ids[:n_held_out]])}])
    teacher_loss = score(teacher)
    teacher_held_out = held_out_figures(teacher, tokenizer, held_out)
    print(f"teacher: {teacher.num_parameters():,} parameters, val loss "
          f"{teacher_loss['val']:.4f}", flush=True)
    scratch, scratch_wall = train_student(args, train, config, train_ids, None, "scratch")
    scratch_loss = score(scratch)
    scratch_held_out = held_out_figures(scratch, tokenizer, held_out)
    print(f"scratch student: {scratch.num_parameters():,} parameters, val loss "
          f"{scratch_loss['val']:.4f}", flush=True)
    distilled, distill_wall = train_student(args, train, config, train_ids, teacher, "distill")
    distill_loss = score(distilled)
    distilled_held_out = held_out_figures(distilled, tokenizer, held_out)
    print(f"distilled student: val loss {distill_loss['val']:.4f} "
          f"({scratch_loss['val'] - distill_loss['val']:+.4f} better than from scratch)")
    for name, figures in (("teacher", teacher_held_out), ("scratch", scratch_held_out),
                          ("distilled", distilled_held_out)):
        print(f"held-out {name}: {figures['bits_per_byte']:.4f} "
              f"± {figures['bits_per_byte_stderr']:.4f} bits per byte, perplexity "
              f"{figures['perplexity']:.3f} ± {figures['perplexity_stderr']:.3f}")

    path = os.path.join(train.out_dir, "ckpt.safetensors") if train.out_dir else None
    if path:
        save_checkpoint(path, distilled, record={
            "model_config": config.to_dict(), "tokenizer": record["tokenizer"],
            "preset": "gpt2", "distill": {"teacher": args.teacher, "steps": train.max_iters,
                                          "temperature": args.temperature,
                                          "alpha": args.alpha}})
    # how much of the scratch student's gap to the teacher distillation closed
    gap = scratch_loss["val"] - teacher_loss["val"]
    closed = (scratch_loss["val"] - distill_loss["val"]) / gap if gap > 0 else None
    result = {"teacher_val_loss": round(teacher_loss["val"], 4),
              "scratch_val_loss": round(scratch_loss["val"], 4),
              "distilled_val_loss": round(distill_loss["val"], 4),
              "improvement": round(scratch_loss["val"] - distill_loss["val"], 4),
              "gap_closed": round(closed, 3) if closed is not None else None,
              "scratch_train_loss": round(scratch_loss["train"], 4),
              "distilled_train_loss": round(distill_loss["train"], 4),
              "teacher_parameters": teacher.num_parameters(),
              "student_parameters": distilled.num_parameters(),
              "steps": train.max_iters, "temperature": args.temperature, "alpha": args.alpha,
              "scratch_wall_s": round(scratch_wall, 1),
              "distill_wall_s": round(distill_wall, 1), "checkpoint": path,
              "held_out": {"teacher": teacher_held_out, "scratch": scratch_held_out,
                           "distilled": distilled_held_out}}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_main(main)
