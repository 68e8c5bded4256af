"""Learning-rate schedules and size warmups: plain functions of the step, and the two ways to
apply a learning rate.

Reading order: warmup_cosine (nanoGPT's and GPT-3's schedule), linear_decay,
warmup_stable_decay (the trapezoid modded-nanogpt uses), constant, then size_warmup (the integer
ramp behind sequence-length and batch-size warmup), then set_lr (one lr for every group, as
nanoGPT's loop does) and LambdaLR (each group's own lr times a factor, as
torch.optim.lr_scheduler.LambdaLR).

Warmup (Goyal et al., 2017) rises linearly to max_lr over `warmup_steps` steps and starts at
max_lr / warmup_steps rather than 0, so the first step is not wasted: step s < warmup_steps gets
max_lr * (s + 1) / warmup_steps, and step warmup_steps - 1 already reaches max_lr. The decay then
runs from max_lr at step warmup_steps to min_lr at step total_steps, and stays at min_lr after.

    lr = warmup_cosine(step, 6e-4, 6e-5, warmup_steps=100, total_steps=5000)   # a trainer's loop
    set_lr(optimizer, lr)
"""
import math
import numbers

__all__ = ["warmup_cosine", "linear_decay", "warmup_stable_decay", "constant", "size_warmup",
           "set_lr", "LambdaLR"]

WSD_DECAYS = ("linear", "1-sqrt")


def _check_schedule(step, warmup_steps, total_steps):
    for name, value in (("step", step), ("warmup_steps", warmup_steps),
                        ("total_steps", total_steps)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"{name}: expected a non-negative int, got {value!r}")
    if total_steps < warmup_steps:
        raise ValueError(f"total_steps: expected >= warmup_steps={warmup_steps}, "
                         f"got {total_steps}")


def _warmup_then(decay, step, max_lr, min_lr, warmup_steps, total_steps):
    """Linear warmup, then decay(fraction of the decay phase done) mapped onto [min_lr, max_lr]."""
    _check_schedule(step, warmup_steps, total_steps)
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    done = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + decay(done) * (max_lr - min_lr)


def warmup_cosine(step, max_lr, min_lr, warmup_steps, total_steps):
    """Linear warmup, then cosine decay (Loshchilov & Hutter, 2017, one cycle without restarts):
    lr = min_lr + (max_lr - min_lr) * (1 + cos(pi * done)) / 2, done in [0, 1]; min_lr after
    total_steps. Halfway through the decay the lr is (max_lr + min_lr) / 2."""
    return _warmup_then(lambda done: 0.5 * (1.0 + math.cos(math.pi * done)), step, max_lr,
                        min_lr, warmup_steps, total_steps)


def linear_decay(step, max_lr, min_lr, warmup_steps, total_steps):
    """Linear warmup, then a straight line from max_lr down to min_lr at total_steps."""
    return _warmup_then(lambda done: 1.0 - done, step, max_lr, min_lr, warmup_steps,
                        total_steps)


def warmup_stable_decay(step, max_lr, min_lr, warmup_steps, total_steps, decay_frac=0.2,
                        decay="linear"):
    """Warmup-stable-decay, the trapezoid (Hägele et al., 2024, "Scaling Laws and Compute-Optimal
    Training Beyond Fixed Training Durations"; modded-nanogpt's schedule): linear warmup, max_lr
    held, then a decay over the last decay_frac of total_steps to min_lr at total_steps.

    decay "linear": a straight line; "1-sqrt": lr = min_lr + (max_lr - min_lr) * (1 - sqrt(done)),
    which Hägele et al. find matches cosine's final loss with a shorter cooldown. The decay spans
    round(decay_frac * total_steps) steps (at least one) and never starts inside the warmup: a run
    too short for both loses its stable phase, then the start of its decay."""
    _check_schedule(step, warmup_steps, total_steps)
    if isinstance(decay_frac, bool) or not isinstance(decay_frac, numbers.Real) \
            or not 0 < decay_frac <= 1:
        raise ValueError(f"decay_frac: expected a number in (0, 1], got {decay_frac!r}")
    if decay not in WSD_DECAYS:
        raise ValueError(f"decay: expected one of {WSD_DECAYS}, got {decay!r}")
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    decay_start = max(warmup_steps, total_steps - max(1, round(decay_frac * total_steps)))
    if step < decay_start:
        return max_lr
    done = (step - decay_start) / (total_steps - decay_start)    # in [0, 1)
    left = 1.0 - done if decay == "linear" else 1.0 - math.sqrt(done)
    return min_lr + left * (max_lr - min_lr)


def constant(step, lr, warmup_steps=0):
    """lr, after an optional linear warmup."""
    _check_schedule(step, warmup_steps, warmup_steps)
    return lr * (step + 1) / warmup_steps if step < warmup_steps else lr


def size_warmup(step, start, end, warmup_steps, multiple=1):
    """An int that grows linearly from `start` at step 0 to `end` at step warmup_steps and stays
    there: the training length under sequence-length warmup (Li et al., 2022, "The
    Stability-Efficiency Dilemma") or the batch size under batch-size warmup (GPT-3, Brown et al.,
    2020). Values between are rounded down to a multiple of `multiple`, never below `start`, so
    the ramp moves in a few coarse steps rather than one unit per step."""
    for name, value, low in (("step", step, 0), ("start", start, 1), ("end", end, 1),
                             ("warmup_steps", warmup_steps, 0), ("multiple", multiple, 1)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    if start > end:
        raise ValueError(f"start: expected <= end={end}, got {start}")
    if step >= warmup_steps:
        return end
    size = start + (end - start) * step // warmup_steps
    return max(start, size - size % multiple)


def set_lr(optimizer, lr):
    """Write `lr` into every param group of `optimizer` (call before optimizer.step())."""
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not lr >= 0:
        raise ValueError(f"lr: expected a non-negative number, got {lr!r}")
    for group in optimizer.param_groups:
        group["lr"] = float(lr)


class LambdaLR:
    """group["lr"] = base_lr * lr_lambda(step) for each group, base_lr being the group's lr when
    the scheduler was made; as torch's LambdaLR, construction applies step 0 and each .step()
    moves on one step. For a schedule in absolute units give it max_lr = 1:
    LambdaLR(opt, lambda s: warmup_cosine(s, 1.0, 0.1, warmup_steps=100, total_steps=5000))."""

    def __init__(self, optimizer, lr_lambda):
        if not callable(lr_lambda):
            raise TypeError(f"lr_lambda: expected a callable, got {type(lr_lambda).__name__}")
        self.optimizer, self.lr_lambda = optimizer, lr_lambda
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.last_step = -1
        self.step()

    def step(self):
        """Advance one step and write the new lr into every group."""
        self.last_step += 1
        factor = float(self.lr_lambda(self.last_step))
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def get_last_lr(self):
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self):
        """JSON-able: {"last_step": int, "base_lrs": [float]} (the lambda is code, not state)."""
        return {"last_step": self.last_step, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state):
        if len(state["base_lrs"]) != len(self.base_lrs):
            raise ValueError(f"LambdaLR.load_state_dict: {len(state['base_lrs'])} base lrs for "
                             f"an optimizer with {len(self.base_lrs)} param groups")
        self.base_lrs = [float(lr) for lr in state["base_lrs"]]
        self.last_step = int(state["last_step"])
        factor = float(self.lr_lambda(self.last_step))
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
