"""The training loop: batches -> forward -> backward -> clip -> AdamW step, with periodic
evaluation, a progress bar, a JSONL log, checkpoints and bit-identical resume.

Reading order: TrainConfig (every knob, nanoGPT's names), then Trainer: the learning-rate schedule,
one step, evaluation, the loop (`fit`), and the checkpoint record that makes resume exact.

What "bit-identical" needs: the parameters, the optimizer's moments, the step, the generator that
draws batch offsets, and the library's Philox generator (dropout masks; its state is two ints,
and the same state draws the same masks on the CPU and the GPU) — all in the checkpoint.
Evaluation draws from its own generator seeded by (seed, step), so evaluating never moves the
training stream, and a resumed run sees exactly the batches and dropout masks the uninterrupted
one saw, on whichever device it resumes.

Mixed precision (`dtype`): "float16" or "bfloat16" runs each forward and loss under tl.autocast
(amp.py: the matmuls in that dtype, the float32 parameters as masters); float16 adds a GradScaler
(optim/scaler.py), whose scale is part of the checkpoint. Its inf check is the clipping norm's
read, so a step still reads the device twice.

Ctrl-C sets a flag that the loop reads between steps: the step in flight finishes, a checkpoint is
written, and fit() returns. A second Ctrl-C interrupts at once.
"""
import dataclasses
import json
import math
import os
import signal
import time

import numpy as np

from .. import amp, backend
from ..data import get_batch, get_rng_state, set_rng_state
from ..nn import functional as F
from ..optim import GradScaler, clip_grad_norm_, unflatten_state_dict, warmup_cosine
from ..tensor import no_grad
from .checkpoint import load_checkpoint, save_checkpoint

__all__ = ["TrainConfig", "Trainer"]


@dataclasses.dataclass
class TrainConfig:
    batch_size: int = 12
    block_size: int = 64
    max_iters: int = 2000
    eval_interval: int = 250          # evaluate (and checkpoint) every this many steps
    eval_iters: int = 20              # batches per split in an evaluation
    log_interval: int = 10            # progress-bar refresh, in steps
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int = None        # default: max_iters
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0            # 0 disables
    grad_accum: int = 1               # micro-batches per optimizer step
    seed: int = 1337
    out_dir: str = "out"
    checkpoint: bool = True
    on_nan: str = "stop"              # "stop": raise naming the step; "skip": drop the step
    progress: bool = True
    dtype: str = "float32"            # "float16" / "bfloat16": autocast (float16: loss scaling)

    def __post_init__(self):
        if self.lr_decay_iters is None:
            self.lr_decay_iters = self.max_iters
        self.warmup_iters = min(self.warmup_iters, self.lr_decay_iters)   # short runs
        if self.on_nan not in ("stop", "skip"):
            raise ValueError(f"TrainConfig: on_nan must be 'stop' or 'skip', got {self.on_nan!r}")
        if self.dtype not in amp.DTYPES:
            raise ValueError(f"TrainConfig: dtype must be one of {amp.DTYPES}, got {self.dtype!r}")
        for name in ("batch_size", "block_size", "grad_accum", "eval_iters", "eval_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig: {name} must be >= 1, got {getattr(self, name)}")


class Trainer:
    """Trains a language model `model(x, y) -> (logits, loss)` on token arrays.

    train_data, val_data: 1-D int arrays (or memmaps) of token ids. optimizer: from
    tinygrad_llm.optim. record: extra JSON-able items stored in every checkpoint (the model
    config, the tokenizer). log: a function taking one string (print by default).
    """

    def __init__(self, model, optimizer, train_data, val_data, config, record=None, log=print):
        self.model, self.optimizer, self.config = model, optimizer, config
        self.train_data, self.val_data = train_data, val_data
        for name, data in (("train_data", train_data), ("val_data", val_data)):
            if len(data) <= config.block_size:
                raise ValueError(f"Trainer: {name} has {len(data)} tokens, not more than "
                                 f"block_size={config.block_size}")
        self.record = dict(record or {})
        self.log = log
        self.step = 0
        self.data_rng = np.random.default_rng(config.seed)
        self.history = []                 # one dict per evaluation
        self.skipped = 0
        amp.resolve_dtype(config.dtype, model.device)     # fails now, not mid-step, if it can't
        self.scaler = GradScaler() if config.dtype == "float16" else None
        self._stop = False
        self.ckpt_path = os.path.join(config.out_dir, "ckpt.safetensors")

    # ---- one step ---------------------------------------------------------------------------
    def lr_at(self, step):
        c = self.config
        return warmup_cosine(step, c.learning_rate, c.min_lr, c.warmup_iters, c.lr_decay_iters)

    def _batch(self, data, rng):
        c = self.config
        x, y = get_batch(data, c.batch_size, c.block_size, rng)
        device = self.model.device
        return backend.to_device(x, device), backend.to_device(y, device)

    def train_step(self):
        """One optimizer step over grad_accum micro-batches; returns the mean loss (float)."""
        c = self.config
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        total = None
        for _ in range(c.grad_accum):
            x, y = self._batch(self.train_data, self.data_rng)
            with amp.autocast(c.dtype):
                _, loss = self.model(x, y)
            if c.grad_accum > 1:
                loss = loss / c.grad_accum
            # a non-finite step's gradients are dropped below
            (loss if self.scaler is None else self.scaler.scale(loss)).backward()
            total = loss.data if total is None else total + loss.data
        total = total.item()                  # the step's one read of the loss: on a GPU, a sync
        if not math.isfinite(total):
            self.optimizer.zero_grad()
            if c.on_nan == "stop":
                raise FloatingPointError(f"training loss is {total} at step {self.step}; the "
                                         f"last good checkpoint is {self.ckpt_path} (pass "
                                         "on_nan='skip' to drop such steps instead)")
            self.skipped += 1
            self.log(f"step {self.step}: loss is {total}, step skipped")
            self.step += 1
            return total
        if self.scaler is not None:           # the norm's read is also the overflow check
            self.scaler.unscale_(self.optimizer, c.grad_clip or None)
            self.scaler.step(self.optimizer)  # skipped (the scale shrinks) on an overflow
            self.scaler.update()
        else:
            if c.grad_clip:
                clip_grad_norm_(self.model.parameters(), c.grad_clip)
            self.optimizer.step()
        self.optimizer.zero_grad()
        self.step += 1
        return total

    # ---- evaluation -------------------------------------------------------------------------
    def evaluate(self):
        """Mean loss over eval_iters batches of each split, from a generator seeded by
        (seed, step): the training stream is not touched."""
        self.model.eval()
        out = {}
        with no_grad(), amp.autocast(self.config.dtype):    # weights cast once for all batches
            for split, data in (("train", self.train_data), ("val", self.val_data)):
                rng = np.random.default_rng([self.config.seed, self.step, len(out)])
                losses = []
                for _ in range(self.config.eval_iters):
                    x, y = self._batch(data, rng)
                    logits = self.model(x)
                    losses.append(F.cross_entropy(logits, y).item())
                out[split] = float(np.mean(losses))
        self.model.train()
        return out

    # ---- the loop -----------------------------------------------------------------------------
    def fit(self):
        """Train until max_iters (or Ctrl-C); returns the last evaluation."""
        c = self.config
        os.makedirs(c.out_dir, exist_ok=True)
        bar = _progress(c, self.step)
        previous = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self._on_interrupt)
        tokens = c.batch_size * c.block_size * c.grad_accum
        last = None
        try:
            t0, done = time.perf_counter(), 0
            while self.step < c.max_iters and not self._stop:
                if self.step % c.eval_interval == 0 and self.step > 0:
                    last = self._evaluate_and_save()
                loss = self.train_step()
                done += 1
                if bar is not None:
                    bar.update(1)
                    if self.step % c.log_interval == 0 or self.step == c.max_iters:
                        rate = done * tokens / (time.perf_counter() - t0)
                        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.lr_at(self.step):.2e}",
                                        tok_s=f"{rate:,.0f}")
            if self._stop:
                self.log(f"interrupted at step {self.step}: saving {self.ckpt_path}")
                if c.checkpoint:
                    self.save(self.ckpt_path)
            else:
                last = self._evaluate_and_save()
        finally:
            signal.signal(signal.SIGINT, previous)
            if bar is not None:
                bar.close()
        self.plot()
        return last

    def _on_interrupt(self, signum, frame):
        if self._stop:                    # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._stop = True

    def _evaluate_and_save(self):
        losses = self.evaluate()
        entry = {"step": self.step, "train_loss": losses["train"], "val_loss": losses["val"],
                 "lr": self.lr_at(self.step), "time": time.time()}
        self.history.append(entry)
        with open(os.path.join(self.config.out_dir, "log.jsonl"), "a") as f:
            f.write(json.dumps(entry) + "\n")
        self.log(f"step {self.step}: train loss {losses['train']:.4f}, "
                 f"val loss {losses['val']:.4f}")
        if self.config.checkpoint:
            self.save(self.ckpt_path)
        return entry

    # ---- checkpoints ------------------------------------------------------------------------
    def save(self, path):
        record = dict(self.record)
        record.update(step=self.step, train_config=dataclasses.asdict(self.config),
                      data_rng=get_rng_state(self.data_rng),
                      generator=backend.get_rng_state(self.model.device),   # [seed, offset]
                      history=self.history, skipped=self.skipped)
        if self.scaler is not None:
            record["scaler"] = self.scaler.state_dict()
        save_checkpoint(path, self.model, self.optimizer, record)

    def load(self, path):
        """Restore model, optimizer, step and RNG states from `path` (to resume training)."""
        model_state, opt_arrays, record = load_checkpoint(path)
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(unflatten_state_dict(opt_arrays, record["optimizer"]))
        self.step = record["step"]
        set_rng_state(self.data_rng, record["data_rng"])
        if "generator" in record:         # (checkpoints before the Philox generator lack it)
            backend.set_rng_state(record["generator"], self.model.device)
        self.history = record.get("history", [])
        self.skipped = record.get("skipped", 0)
        if self.scaler is not None and "scaler" in record:
            self.scaler.load_state_dict(record["scaler"])
        return record

    def plot(self):
        """loss.png in out_dir when matplotlib is installed (the `plot` extra)."""
        if not self.history:
            return None
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        steps = [e["step"] for e in self.history]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(steps, [e["train_loss"] for e in self.history], label="train")
        ax.plot(steps, [e["val_loss"] for e in self.history], label="val")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend()
        path = os.path.join(self.config.out_dir, "loss.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def _progress(config, initial):
    if not config.progress:
        return None
    from tqdm import tqdm
    return tqdm(total=config.max_iters, initial=initial, unit="it", dynamic_ncols=True)
