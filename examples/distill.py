"""Knowledge distillation: a small character-level GPT learns from the main job's model, and is
compared with the same student trained from scratch for the same steps.

    python examples/distill.py                  # trains the teacher first if it is missing
    python examples/distill.py --temperature=2 --alpha=0.5 --steps=800 --n_embd=96
    python examples/distill.py --out=out-distill/ckpt.safetensors   # keep the distilled student

The teacher is examples/train_shakespeare.py's model (4 layers, 192 dims, ~1.8M parameters; its
checkpoint is `teacher`, trained here with `teacher_iters` steps when missing). The student is a
GPT on the same character vocabulary, by default 2 layers of 128 dims (~0.42M parameters).
The student is trained twice from the same initialisation, on the same batches, with the same
optimizer and schedule: (a) on the hard next-character labels alone, (b) on Hinton et al.'s
(2015) mix of the teacher's softened distribution and the labels (finetune/heads.py):

  L = alpha T^2 KL(softmax(z_teacher / T) || softmax(z_student / T)) + (1 - alpha) CE(z_student, y)

where z_teacher comes from a no-grad forward of the teacher on the same batch. The soft targets
say, at every position, how likely each of the 65 characters is, not only which one came next:
far more signal per token than one label, so a student learns faster. Both students (and the
teacher) are then scored by plain cross-entropy on the same validation batches (the Trainer's
own evaluation). Prints progress and ends with one JSON line that main(argv) also returns.

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
import sys
import time

import tinygrad_llm as tl  # noqa: F401  (first: it tunes the thread pools before NumPy loads)
import numpy as np  # noqa: E402

from tinygrad_llm import no_grad  # noqa: E402
from tinygrad_llm.data import get_batch, shakespeare, split  # noqa: E402
from tinygrad_llm.finetune import distillation_loss  # noqa: E402
from tinygrad_llm.models import GPT, GPTConfig  # noqa: E402
from tinygrad_llm.nn import functional as F  # noqa: E402
from tinygrad_llm.optim import (AdamW, clip_grad_norm_, param_groups_for_weight_decay,  # noqa
                                set_lr, warmup_cosine)
from tinygrad_llm.tokenizers import tokenizer_from_dict  # noqa: E402
from tinygrad_llm.train import (TrainConfig, Trainer, load_model, parse_overrides,  # noqa: E402
                                save_checkpoint, split_overrides)
from tinygrad_llm.train import run_main  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_shakespeare  # noqa: E402


@dataclasses.dataclass
class DistillArgs:
    teacher: str = "out-shakespeare/ckpt.safetensors"
    teacher_iters: int = 2000      # when the teacher must be trained
    teacher_args: str = ""         # more train_shakespeare.py overrides for that, space-separated
    out: str = None                # where to save the distilled student (None: don't)
    steps: int = 600
    batch_size: int = 16
    block_size: int = 128          # at most the teacher's
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    learning_rate: float = 2e-3
    min_lr: float = 2e-4
    warmup: int = 50
    weight_decay: float = 0.1
    temperature: float = 1.0       # see the docstring: higher T helped less here
    alpha: float = 0.9             # weight of the soft (teacher) term; 1 - alpha on the labels
    eval_iters: int = 20           # validation batches (the same ones for every model)
    seed: int = 1337


def ensure_char_model(path, iters, extra_args=""):
    """The character model at `path`, trained by train_shakespeare.py when missing (`iters`
    steps; `extra_args`: more of its --key=value overrides, space-separated)."""
    train_shakespeare.ensure_checkpoint(path, [f"--max_iters={iters}", *shlex.split(extra_args)])


def char_data(record):
    """(train ids, val ids): the corpus through the checkpoint's own tokenizer, split 90/10 as
    train_shakespeare.py split it, so the validation text is the one the teacher never saw."""
    tokenizer = tokenizer_from_dict(record["tokenizer"])
    return split(tokenizer.encode(shakespeare()), 0.1)


def evaluate(model, train_ids, val_ids, batch_size, block_size, eval_iters, seed):
    """{"train", "val"}: mean cross-entropy over eval_iters batches of each split, from the
    Trainer's evaluation (its batches depend only on the seed, so every model sees the same)."""
    config = TrainConfig(batch_size=batch_size, block_size=block_size, eval_iters=eval_iters,
                         seed=seed, checkpoint=False, progress=False)
    return Trainer(model, None, train_ids, val_ids, config, log=None).evaluate()


def student_config(args, vocab_size):
    return GPTConfig.preset("gpt2", vocab_size=vocab_size, n_layer=args.n_layer,
                            n_head=args.n_head, n_embd=args.n_embd, block_size=args.block_size,
                            dropout=0.0, bias=False)


def train_student(args, config, train_ids, teacher=None, label=""):
    """A fresh student (seeded: both runs start from the same weights) trained for args.steps
    on batches drawn from a generator seeded the same way. teacher=None: hard labels only.
    Returns (student in eval mode, wall seconds)."""
    tl.manual_seed(args.seed)
    student = GPT(config)
    optimizer = AdamW(param_groups_for_weight_decay(student, args.weight_decay),
                      lr=args.learning_rate, betas=(0.9, 0.99))
    rng = np.random.default_rng(args.seed)
    student.train()
    losses, start = [], time.perf_counter()
    for step in range(args.steps):
        set_lr(optimizer, warmup_cosine(step, args.learning_rate, args.min_lr,
                                        min(args.warmup, args.steps), args.steps))
        x, y = get_batch(train_ids, args.batch_size, args.block_size, rng)   # (B, T) each
        logits = student(x)                                                  # (B, T, V)
        if teacher is None:
            loss = F.cross_entropy(logits, y)
        else:
            with no_grad():
                teacher_logits = teacher(x)
            loss = distillation_loss(logits, teacher_logits, y, args.temperature, args.alpha)
        optimizer.zero_grad()
        loss.backward()
        clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == args.steps - 1:
            print(f"{label} step {step}: loss {np.mean(losses[-100:]):.4f}", flush=True)
    wall = time.perf_counter() - start
    return student.eval(), wall


def main(argv):
    (kw,) = split_overrides(parse_overrides(argv), DistillArgs)
    args = DistillArgs(**kw)
    if not args.temperature > 0 or not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--temperature must be > 0 and --alpha in [0, 1], got "
                         f"temperature={args.temperature!r}, alpha={args.alpha!r}")
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    ensure_char_model(args.teacher, args.teacher_iters, args.teacher_args)
    teacher, record = load_model(args.teacher)
    if args.block_size > teacher.config.block_size:
        raise ValueError(f"--block_size={args.block_size} exceeds the teacher's block_size="
                         f"{teacher.config.block_size} (it must read the student's batches)")
    train_ids, val_ids = char_data(record)
    config = student_config(args, teacher.config.vocab_size)
    score = lambda model: evaluate(model, train_ids, val_ids, args.batch_size,  # noqa: E731
                                   args.block_size, args.eval_iters, args.seed)

    teacher_loss = score(teacher)
    print(f"teacher: {teacher.num_parameters():,} parameters, val loss "
          f"{teacher_loss['val']:.4f}", flush=True)
    scratch, scratch_wall = train_student(args, config, train_ids, None, "scratch")
    scratch_loss = score(scratch)
    print(f"scratch student: {scratch.num_parameters():,} parameters, val loss "
          f"{scratch_loss['val']:.4f}", flush=True)
    distilled, distill_wall = train_student(args, config, train_ids, teacher, "distill")
    distill_loss = score(distilled)
    print(f"distilled student: val loss {distill_loss['val']:.4f} "
          f"({scratch_loss['val'] - distill_loss['val']:+.4f} better than from scratch)")

    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        save_checkpoint(args.out, distilled, record={
            "model_config": config.to_dict(), "tokenizer": record["tokenizer"],
            "preset": "gpt2", "distill": {"teacher": args.teacher, "steps": args.steps,
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
              "steps": args.steps, "temperature": args.temperature, "alpha": args.alpha,
              "scratch_wall_s": round(scratch_wall, 1),
              "distill_wall_s": round(distill_wall, 1), "checkpoint": args.out}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_main(main)
