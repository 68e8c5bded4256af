"""The training loop: batches -> forward -> backward -> clip -> AdamW step, with periodic
evaluation, a progress bar, a JSONL log, checkpoints and bit-identical resume.

Reading order: TrainConfig (every knob, nanoGPT's names), then Trainer: the schedules (learning
rate, and the block length and batch size under their warmups), one step, evaluation, the loop
(`fit`), and the checkpoint record that makes resume exact.

What a step trains on is two functions: batch_fn(data, rng) draws a batch and loss_fn(model,
batch) returns its loss. The defaults are a language model's (random windows of a token array,
`model(x, y)`); a fine-tuning run passes its own (packed chats, preference pairs, sampled
answers, labelled passages) and keeps the rest: the schedule, accumulation, autocast, the
non-finite check, clipping and the update. A run that calls train_step in its own loop, logging
what it likes, uses the Trainer as much as one that calls fit.

The optimizer (`optimizer_for`): AdamW by default, over param_groups_for_weight_decay's two
groups; "muon" puts the blocks' 2-D weights under Muon (optim/muon.py; Jordan et al., 2024) and
the rest under AdamW, in one optimizer. embed_lr and head_lr give the embeddings and an untied
head their own peak learning rates (modded-nanogpt's embedding and head groups): one schedule
moves every group, each keeping its ratio to learning_rate.

Warmups (off by default). Sequence-length warmup (Li et al., 2022) trains on short windows
first, growing to block_size; batch-size warmup (Brown et al., 2020) grows the micro-batch to
batch_size. Both are functions of the step alone (optim/schedule.py: size_warmup), so the
checkpoint needs nothing new, and both shape only the default batches: evaluation always uses
the full block and batch. A step's tokens are its actual ones (tokens_at), and fit's tok_s and
the log's "tokens" count those.

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
import contextlib
import dataclasses
import json
import math
import os
import signal
import time

import numpy as np

from .. import amp, backend
from ..data import get_batch, get_rng_state, set_rng_state
from ..distributed import DistributedDataParallel, DistributedError, init_process_group
from ..distributed.comm import check_same_everywhere
from ..nn import functional as F
from ..optim import (AdamW, GradScaler, Muon, clip_grad_norm_, muon_param_groups,
                     param_groups_for_weight_decay, unflatten_state_dict)
from ..optim.schedule import (WSD_DECAYS, linear_decay, size_warmup, warmup_cosine,
                              warmup_stable_decay)
from ..tensor import no_grad
from .checkpoint import load_checkpoint, save_checkpoint
from .warmup import backward_compiled_ahead

__all__ = ["TrainConfig", "Trainer", "lm_loss"]

LR_SCHEDULES = ("cosine", "wsd", "linear")
OPTIMIZERS = ("adamw", "muon")
# Sequence-length warmup grows the block in steps of this many tokens: a GPU's tensor cores take
# float16 matmul dimensions in multiples of 8 (MosaicML Composer's SeqLengthWarmup uses 8 for
# this), and a handful of lengths instead of one per step keeps the set of array shapes, and so
# the allocator's pools and the kernels' tilings, small.
SEQ_WARMUP_MULTIPLE = 8


@dataclasses.dataclass
class TrainConfig:
    batch_size: int = 12              # sequences (or examples) per micro-batch
    block_size: int = 64              # tokens per training sequence
    max_iters: int = 2000             # optimizer steps
    eval_interval: int = 250          # fit(): evaluate and checkpoint every this many steps
    eval_iters: int = 20              # batches per split in an evaluation
    log_interval: int = 10            # fit(): progress-bar refresh, in steps
    learning_rate: float = 1e-3       # the schedule's peak, after warmup
    min_lr: float = 1e-4              # the decay's floor
    warmup_iters: int = 100           # steps of linear warmup
    lr_decay_iters: int = None        # the step the decay reaches min_lr (none: max_iters)
    lr_schedule: str = "cosine"       # after warmup: "cosine", "wsd" (stable, then decay), "linear"
    decay_frac: float = 0.2           # wsd: the last fraction of lr_decay_iters spent decaying
    wsd_decay: str = "linear"         # wsd: the decay's shape, "linear" or "1-sqrt"
    seq_warmup_iters: int = 0         # grow the block from seq_warmup_start over this many steps
    seq_warmup_start: int = 8         # the block length at step 0 of sequence-length warmup
    batch_warmup_iters: int = 0       # grow the batch from batch_warmup_start over these steps
    batch_warmup_start: int = 1       # the micro-batch size at step 0 of batch-size warmup
    weight_decay: float = 0.1         # AdamW's decoupled weight decay
    beta1: float = 0.9                # AdamW's first-moment decay
    beta2: float = 0.99               # AdamW's second-moment decay
    optimizer: str = "adamw"          # "adamw", or "muon" (Muon for the blocks' matrices)
    muon_lr: float = None             # muon: the blocks' 2-D weights' peak lr (none: learning_rate)
    muon_momentum: float = 0.95       # muon: the matrices' (Nesterov) momentum
    embed_lr: float = None            # the embeddings' peak lr (none: learning_rate)
    head_lr: float = None             # an untied head's peak lr (none: learning_rate)
    grad_clip: float = 1.0            # clip the gradients' global norm to this (0: off)
    grad_accum: int = 1               # micro-batches per optimizer step
    seed: int = 1337                  # seeds the batches (and the run's other draws)
    out_dir: str = "out"              # where checkpoints, log.jsonl and loss.png go
    checkpoint: bool = True           # fit(): write out_dir/ckpt.safetensors
    on_nan: str = "stop"              # a non-finite loss: "stop" (raise) or "skip" the step
    progress: bool = True             # fit(): show a progress bar
    dtype: str = "float32"            # "float16" / "bfloat16": autocast (float16: loss scaling)
    ddp: bool = False                 # data parallel over an mpiexec launch's ranks (MPI / NCCL)
    zero: bool = False                # ddp: ZeRO-1, each rank keeps its parameters' optimizer state
    bucket_mb: float = 25.0           # ddp: gradient megabytes per allreduce message
    ddp_timeout_s: float = 300.0      # ddp: stop every rank when a collective waits this long

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
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"TrainConfig: lr_schedule must be one of {LR_SCHEDULES}, got "
                             f"{self.lr_schedule!r}")
        if isinstance(self.decay_frac, bool) or not isinstance(self.decay_frac, (int, float)) \
                or not 0 < self.decay_frac <= 1:
            raise ValueError(f"TrainConfig: decay_frac must be in (0, 1], got "
                             f"{self.decay_frac!r}")
        if self.wsd_decay not in WSD_DECAYS:
            raise ValueError(f"TrainConfig: wsd_decay must be one of {WSD_DECAYS}, got "
                             f"{self.wsd_decay!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"TrainConfig: optimizer must be one of {OPTIMIZERS}, got "
                             f"{self.optimizer!r}")
        for name in ("muon_lr", "embed_lr", "head_lr"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, (int, float)) or value <= 0):
                raise ValueError(f"TrainConfig: {name} must be a positive number or None, got "
                                 f"{value!r}")
        if self.muon_lr is not None and self.optimizer != "muon":
            raise ValueError(f"TrainConfig: muon_lr={self.muon_lr} needs optimizer='muon', got "
                             f"optimizer={self.optimizer!r}")
        if self.zero and not self.ddp:
            raise ValueError("TrainConfig: zero=True shards the optimizer over the ranks of a "
                             "ddp run; it needs ddp=True")
        if self.ddp and self.batch_warmup_iters:
            raise ValueError(f"TrainConfig: ddp splits every batch's rows over the ranks, so "
                             f"batch_warmup_iters must be 0, got {self.batch_warmup_iters}")
        if self.zero and self.dtype == "float16":
            raise ValueError("TrainConfig: zero=True with dtype='float16' is not supported (the "
                             "loss scaler's overflow check would need every rank's shard); use "
                             "'bfloat16' or plain ddp")
        for name in ("bucket_mb", "ddp_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"TrainConfig: {name} must be a positive number, got {value!r}")
        for iters, start, end in (("seq_warmup_iters", "seq_warmup_start", "block_size"),
                                  ("batch_warmup_iters", "batch_warmup_start", "batch_size")):
            if getattr(self, iters) < 0:
                raise ValueError(f"TrainConfig: {iters} must be >= 0, got {getattr(self, iters)}")
            if getattr(self, iters) and not 1 <= getattr(self, start) <= getattr(self, end):
                raise ValueError(f"TrainConfig: {start} must be in [1, {end}="
                                 f"{getattr(self, end)}], got {getattr(self, start)}")

    def adamw(self, params):
        """AdamW over `params` (Parameters, or param groups whose own keys win) with this
        config's learning rate, betas and weight decay."""
        return AdamW(params, lr=self.learning_rate, betas=(self.beta1, self.beta2),
                     weight_decay=self.weight_decay)

    def optimizer_for(self, model):
        """(optimizer, lr_scales) for `model`, to pass to Trainer(..., lr_scales=lr_scales).

        "adamw" without embed_lr / head_lr: AdamW over param_groups_for_weight_decay (matrices
        and embeddings decayed, gains and biases not), every scale 1. With embed_lr or head_lr:
        muon_param_groups' split (block matrices, embeddings, untied head, other weights, gains
        and biases), each AdamW group scaled by its lr / learning_rate through lr_scales.
        "muon": Muon over muon_param_groups at muon_lr, embed_lr and head_lr (default
        learning_rate); Muon applies each group's lr_scale itself, so lr_scales are all 1."""
        if self.head_lr is not None and not any(
                name.startswith("head.") and p.ndim >= 2 for name, p in model.named_parameters()):
            raise ValueError(f"TrainConfig: head_lr={self.head_lr} needs an untied head (a "
                             "'head.*' matrix, GPTConfig tie_embeddings=False); this model's "
                             "head is its token table")
        if self.optimizer == "adamw" and self.embed_lr is None and self.head_lr is None:
            groups = param_groups_for_weight_decay(model, self.weight_decay)
            return self.adamw(groups), [1.0] * len(groups)
        groups = muon_param_groups(model, muon_lr=self.muon_lr or self.learning_rate,
                                   adam_lr=self.learning_rate, weight_decay=self.weight_decay,
                                   embed_lr=self.embed_lr, head_lr=self.head_lr,
                                   base_lr=self.learning_rate)
        if self.optimizer == "muon":
            optimizer = Muon(groups, lr=self.learning_rate, momentum=self.muon_momentum,
                             betas=(self.beta1, self.beta2), weight_decay=self.weight_decay)
            return optimizer, [1.0] * len(groups)
        scales = [group.pop("lr_scale") for group in groups]
        for group in groups:
            del group["muon"]                 # AdamW for the block matrices too
        return self.adamw(groups), scales


class Trainer:
    """Trains `model` with `optimizer` (from tinygrad_llm.optim; None for a Trainer that only
    evaluates) under `config`.

    train_data, val_data: what batch_fn draws from (val_data None: no validation split); by
    default 1-D int arrays (or memmaps) of token ids. loss_fn(model, batch) -> scalar loss
    Tensor; default `model(x, y)[1]`. batch_fn(data, rng) -> batch; default (x, y) windows of
    block_size tokens on the model's device. lr_scales: one factor per param group, group k
    getting lr_scales[k] times the schedule's lr (a new head faster than its backbone); default
    all 1. record: extra JSON-able items stored in every checkpoint (the model config, the
    tokenizer). log: a function taking one string (print by default; None: silent).
    """

    def __init__(self, model, optimizer, train_data, val_data, config, record=None, log=print,
                 loss_fn=None, batch_fn=None, lr_scales=None):
        self.model, self.optimizer, self.config = model, optimizer, config
        self.train_data, self.val_data = train_data, val_data
        self.loss_fn = loss_fn or lm_loss
        # evaluation reports the cross-entropy alone (an MoE's loss adds its balancing terms)
        self.eval_loss_fn = loss_fn or _cross_entropy
        self.batch_fn = batch_fn or self.windows
        if batch_fn is not None and (config.seq_warmup_iters or config.batch_warmup_iters):
            raise ValueError("Trainer: seq_warmup_iters and batch_warmup_iters shape the default "
                             "batches only; with a batch_fn they must be 0, got "
                             f"{config.seq_warmup_iters} and {config.batch_warmup_iters}")
        if batch_fn is None:
            for name, data in (("train_data", train_data), ("val_data", val_data)):
                if data is not None and len(data) <= config.block_size:
                    raise ValueError(f"Trainer: {name} has {len(data)} tokens, not more than "
                                     f"block_size={config.block_size}")
        groups = optimizer.param_groups if optimizer is not None else []
        self.lr_scales = [1.0] * len(groups) if lr_scales is None else list(lr_scales)
        if len(self.lr_scales) != len(groups):
            raise ValueError(f"Trainer: lr_scales has {len(self.lr_scales)} factors, the "
                             f"optimizer {len(groups)} param groups")
        self.record = dict(record or {})
        self.log = log or (lambda line: None)
        self.step = 0
        self.data_rng = np.random.default_rng(config.seed)
        self.history = []                 # one dict per evaluation
        self.skipped = 0
        amp.resolve_dtype(config.dtype, model.device)     # fails now, not mid-step, if it can't
        self.scaler = GradScaler() if config.dtype == "float16" else None
        self._stop = False
        self._compiled_ahead = False
        self.ckpt_path = os.path.join(config.out_dir, "ckpt.safetensors") if config.out_dir \
            else None
        self.ddp = self._data_parallel(model, config) if config.ddp else None
        self.rank = self.ddp.rank if self.ddp else 0
        self.world_size = self.ddp.world_size if self.ddp else 1
        if self.rank != 0:                    # rank 0 speaks for the run
            self.log = lambda line: None

    def _data_parallel(self, model, config):
        """DistributedDataParallel over this launch's ranks, after checking that they agree."""
        group = init_process_group(device=model.device, timeout_s=config.ddp_timeout_s)
        if config.batch_size % group.size:
            raise DistributedError(f"Trainer: ddp splits each batch's rows over the ranks, but "
                                   f"batch_size={config.batch_size} is not divisible by the "
                                   f"world size {group.size}")
        shapes = [[name, list(p.shape), str(p.dtype)] for name, p in model.named_parameters()]
        check_same_everywhere(group, "configuration", {
            "train_config": dataclasses.asdict(config), "record": self.record,
            "parameters": shapes})
        return DistributedDataParallel(model, group, config.bucket_mb, config.zero)

    def _rows(self, batch):
        """This rank's rows of a batch: a tuple/list of arrays (or Tensors) sharing a leading
        batch axis that the world size divides, or one such array."""
        size, rank = self.world_size, self.rank

        def part(a):
            shape = getattr(a, "shape", ())
            if not len(shape) or shape[0] % size:
                raise DistributedError(f"Trainer: ddp needs batches whose elements have a "
                                       f"leading batch axis divisible by the world size {size}, "
                                       f"got shape {tuple(shape)}")
            n = shape[0] // size
            return a[rank * n:(rank + 1) * n]

        return type(batch)(part(a) for a in batch) if isinstance(batch, (tuple, list)) \
            else part(batch)

    # ---- schedules ---------------------------------------------------------------------------
    def lr_at(self, step):
        c = self.config
        args = (step, c.learning_rate, c.min_lr, c.warmup_iters, c.lr_decay_iters)
        if c.lr_schedule == "wsd":
            return warmup_stable_decay(*args, decay_frac=c.decay_frac, decay=c.wsd_decay)
        return (linear_decay if c.lr_schedule == "linear" else warmup_cosine)(*args)

    def block_size_at(self, step):
        """Tokens per training sequence at `step`: block_size, or less during seq warmup."""
        c = self.config
        return size_warmup(step, min(c.seq_warmup_start, c.block_size), c.block_size,
                           c.seq_warmup_iters, SEQ_WARMUP_MULTIPLE)

    def batch_size_at(self, step):
        """Sequences per micro-batch at `step`: batch_size, or less during batch warmup."""
        c = self.config
        return size_warmup(step, min(c.batch_warmup_start, c.batch_size), c.batch_size,
                           c.batch_warmup_iters)

    def tokens_at(self, step):
        """Tokens one optimizer step trains on (with a batch_fn: batch_size x block_size per
        micro-batch, the config's estimate)."""
        return self.batch_size_at(step) * self.block_size_at(step) * self.config.grad_accum

    def tokens_seen(self, step=None):
        """Tokens trained on before `step` (default: the current step)."""
        step = self.step if step is None else step
        ramp = min(step, max(self.config.seq_warmup_iters, self.config.batch_warmup_iters))
        return sum(self.tokens_at(s) for s in range(ramp)) + (step - ramp) * self.tokens_at(ramp)

    # ---- one step ---------------------------------------------------------------------------
    def windows(self, data, rng, batch_size=None, block_size=None):
        """The default batch_fn: (x, y) windows of a token array, on the model's device;
        batch_size and block_size default to the config's (evaluation's sizes)."""
        c = self.config
        x, y = get_batch(data, batch_size or c.batch_size, block_size or c.block_size, rng)
        device = self.model.device
        return backend.to_device(x, device), backend.to_device(y, device)

    def train_step(self):
        """One optimizer step over grad_accum micro-batches; returns the mean loss (float)."""
        if self._compiled_ahead or self.ddp is not None:
            return self._train_step()
        self._compiled_ahead = True           # the first step: its backward kernels compile in
        with backward_compiled_ahead(self.model):     # a helper process (train/warmup.py)
            return self._train_step()

    def _train_step(self):
        c = self.config
        lr = self.lr_at(self.step)
        for group, scale in zip(self.optimizer.param_groups, self.lr_scales):
            group["lr"] = lr * scale
        self.model.train()
        sizes = (self.batch_size_at(self.step), self.block_size_at(self.step))
        total = None
        for micro in range(c.grad_accum):
            if self.batch_fn == self.windows:     # the warmups shape the default batches only
                batch = self.windows(self.train_data, self.data_rng, *sizes)
            else:
                batch = self.batch_fn(self.train_data, self.data_rng)
            if self.ddp is not None:              # every rank draws the batch, keeps its rows
                batch = self._rows(batch)
            with amp.autocast(c.dtype):
                loss = self.loss_fn(self.model, batch)
            if c.grad_accum > 1:
                loss = loss / c.grad_accum
            # a non-finite step's gradients are dropped below; with ddp, the gradients of all
            # micro-steps but the last stay local (no_sync) and the last backward reduces them
            accumulating = self.ddp is not None and micro < c.grad_accum - 1
            with self.ddp.no_sync() if accumulating else contextlib.nullcontext():
                (loss if self.scaler is None else self.scaler.scale(loss)).backward()
            total = loss.data if total is None else total + loss.data
        total = total.item()                  # the step's one read of the loss: on a GPU, a sync
        if self.ddp is not None:              # the mean over ranks, and a Ctrl-C on any of them
            self.ddp.finish_gradients()
            total, stop = self.ddp.group.allreduce_scalars([total, float(self._stop)],
                                                          "the loss allreduce")
            total, self._stop = float(total) / self.world_size, self._stop or stop > 0
        if not math.isfinite(total):
            return self._skip_step("loss", total)
        if self.scaler is not None:           # the norm's read is also the overflow check
            self.scaler.unscale_(self.optimizer, c.grad_clip or None)
            self.scaler.step(self.optimizer)  # skipped (the scale shrinks) on an overflow
            self.scaler.update()
        else:
            if c.grad_clip:
                norm = (self.ddp.clip_grad_norm_(c.grad_clip) if self.ddp is not None else
                        clip_grad_norm_(self.model.parameters(), c.grad_clip))
                if not math.isfinite(norm):   # a finite loss can still overflow a gradient
                    return self._skip_step("gradient norm", norm)
            self.optimizer.step()
            if self.ddp is not None:
                self.ddp.gather_parameters()  # ZeRO-1: the owners' updates to every rank
        self.optimizer.zero_grad()
        self.step += 1
        return total

    def _skip_step(self, what, value):
        """A non-finite loss or gradient norm: raise (on_nan="stop") or drop the step's
        gradients and count it skipped. Every rank of a ddp run sees the same value."""
        self.optimizer.zero_grad()
        if self.config.on_nan == "stop":
            raise FloatingPointError(f"training {what} is {value} at step {self.step}; the last "
                                     f"good checkpoint is {self.ckpt_path} (pass on_nan='skip' "
                                     "to drop such steps instead)")
        self.skipped += 1
        self.log(f"step {self.step}: {what} is {value}, step skipped")
        self.step += 1
        return value

    # ---- evaluation -------------------------------------------------------------------------
    def evaluate(self):
        """Mean loss over eval_iters batches of each split, from a generator seeded by
        (seed, step): the training stream is not touched. {"train": ..., "val": ...}, without
        "val" when there is no val_data."""
        self.model.eval()
        out = {}
        with no_grad(), amp.autocast(self.config.dtype):    # weights cast once for all batches
            for i, (split, data) in enumerate((("train", self.train_data),
                                               ("val", self.val_data))):
                if data is None:
                    continue
                rng = np.random.default_rng([self.config.seed, self.step, i])
                # with ddp, rank r evaluates batches r, r + world, ...; the others' slots stay
                # 0 and the sum over ranks fills them, so every rank has the same losses
                losses = np.zeros(self.config.eval_iters)
                for k in range(self.config.eval_iters):
                    batch = self.batch_fn(data, rng)
                    if k % self.world_size == self.rank:
                        losses[k] = self.eval_loss_fn(self.model, batch).item()
                if self.ddp is not None:
                    losses = self.ddp.group.allreduce_scalars(losses, "the evaluation")
                out[split] = float(np.mean(losses))
        self.model.train()
        return out

    # ---- the loop -----------------------------------------------------------------------------
    def fit(self):
        """Train until max_iters (or Ctrl-C); returns the last evaluation."""
        c = self.config
        if not c.out_dir:
            raise ValueError("Trainer.fit: config.out_dir is needed (the log and checkpoints go "
                             f"there), got {c.out_dir!r}")
        os.makedirs(c.out_dir, exist_ok=True)
        bar = _progress(c, self.step) if self.rank == 0 else None
        previous = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self._on_interrupt)
        last = None
        try:
            t0, tokens = time.perf_counter(), 0
            while self.step < c.max_iters and not self._stop:
                if self.step % c.eval_interval == 0 and self.step > 0:
                    last = self._evaluate_and_save()
                tokens += self.tokens_at(self.step)
                loss = self.train_step()
                if bar is not None:
                    bar.update(1)
                    if self.step % c.log_interval == 0 or self.step == c.max_iters:
                        rate = tokens / (time.perf_counter() - t0)
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
        entry = {"step": self.step, **{f"{k}_loss": v for k, v in losses.items()},
                 "lr": self.lr_at(self.step), "tokens": self.tokens_seen(),
                 "time": time.time()}
        self.history.append(entry)
        if self.rank == 0:
            with open(os.path.join(self.config.out_dir, "log.jsonl"), "a") as f:
                f.write(json.dumps(entry) + "\n")
        self.log(f"step {self.step}: " + ", ".join(f"{k} loss {v:.4f}"
                                                   for k, v in losses.items()))
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
        optimizer = self.optimizer
        if self.ddp is not None:              # rank 0 writes (ZeRO-1: the owners' state first)
            optimizer = _Saved(self.ddp.consolidated_state_dict(self.optimizer))
            if self.rank != 0:
                return
        save_checkpoint(path, self.model, optimizer, record)

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
        if self.ddp is not None:              # every rank read the same file: check, then shard
            check_same_everywhere(self.ddp.group, "checkpoint", {"path": os.path.abspath(path),
                                                                 "step": self.step})
            self.ddp.drop_foreign_state(self.optimizer)
        return record

    def plot(self):
        """loss.png in out_dir when matplotlib is installed (the `plot` extra); rank 0's job."""
        if not self.history or self.rank != 0:
            return None
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        steps = [e["step"] for e in self.history]
        fig, ax = plt.subplots(figsize=(6, 4))
        for split in ("train", "val"):
            if f"{split}_loss" in self.history[-1]:
                ax.plot(steps, [e[f"{split}_loss"] for e in self.history], label=split)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend()
        path = os.path.join(self.config.out_dir, "loss.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


class _Saved:
    """An optimizer state_dict already taken (ZeRO-1's consolidated one), for save_checkpoint."""

    def __init__(self, state):
        self.state = state

    def state_dict(self):
        return self.state


def lm_loss(model, batch):
    """The default loss_fn: a language model's mean next-token cross-entropy, model(x, y)."""
    x, y = batch
    return model(x, y)[1]


def _cross_entropy(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def _progress(config, initial):
    if not config.progress:
        return None
    from tqdm import tqdm
    return tqdm(total=config.max_iters, initial=initial, unit="it", dynamic_ncols=True)
