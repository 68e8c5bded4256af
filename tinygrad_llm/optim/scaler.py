"""Dynamic loss scaling for float16 training (Micikevicius et al., 2018, "Mixed Precision
Training"), shaped like torch.amp.GradScaler.

    scaler = GradScaler()
    with tl.autocast("float16"):
        _, loss = model(x, y)
    scaler.scale(loss).backward()
    norm = scaler.unscale_(optimizer, max_norm=1.0)   # the one read; not finite: step skipped
    scaler.step(optimizer)
    scaler.update()

Why. float16 has 5 exponent bits: below 6e-8 a value is 0, and many gradient entries of a
language model are that small. Backward is linear in its cotangent, so multiplying the loss by S
multiplies every gradient by S and lifts them into float16's range; the float32 master gradients
are divided by S again before clipping and the update. Too large an S overflows to inf: that step
is skipped and S shrinks (x backoff_factor); after growth_interval good steps in a row S grows
(x growth_factor), so S stays near the largest value that does not overflow. Powers of two make
the scaling and unscaling exact.

Host syncs. PyTorch finds infs with a device-side flag that step() reads. Here the finding rides
on a read the step makes anyway: unscale_ computes the global norm of the gradients with clip.py
(one transfer), and a non-finite norm means some gradient holds an inf or a NaN. The same number
clips, and the scale is a host float, updated from that norm. So a training step reads the device
twice with or without the scaler: the loss and this norm.

One pass. unscale_ multiplies each gradient once, by min(1, max_norm / norm) / S: unscaling and
clipping together (torch's unscale_ then clip_grad_norm_ may touch each gradient twice).
"""
import math
import numbers

from .clip import clip_grad_norm_

__all__ = ["GradScaler"]


def _positive(name, value, above_one=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0 \
            or not math.isfinite(value):
        raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
    if above_one is True and not value > 1:
        raise ValueError(f"{name}: expected a number > 1, got {value!r}")
    if above_one is False and not value < 1:
        raise ValueError(f"{name}: expected a number < 1, got {value!r}")
    return float(value)


class GradScaler:
    """Dynamic loss scale S: scale(loss) -> loss * S; unscale_ divides the gradients by S (and
    clips) and finds infs; step skips the optimizer's update after an inf; update moves S.

    init_scale: the first S (2^16). growth_factor, backoff_factor: S's change after
    growth_interval good steps in a row / after an overflow. enabled=False makes every method
    the plain float32 step (scale returns the loss, unscale_ only clips)."""

    def __init__(self, init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5,
                 growth_interval=2000, enabled=True):
        self.enabled = bool(enabled)
        self.scale_value = _positive("init_scale", init_scale)
        self.growth_factor = _positive("growth_factor", growth_factor, above_one=True)
        self.backoff_factor = _positive("backoff_factor", backoff_factor, above_one=False)
        if isinstance(growth_interval, bool) or not isinstance(growth_interval, numbers.Integral) \
                or growth_interval < 1:
            raise ValueError(f"growth_interval: expected an int >= 1, got {growth_interval!r}")
        self.growth_interval = int(growth_interval)
        self.growth_tracker = 0        # good steps in a row since S last changed
        self.found_inf = None          # this step: None before unscale_, then True / False

    def get_scale(self):
        return self.scale_value if self.enabled else 1.0

    def scale(self, loss):
        """loss * S (a Tensor on the loss's device; the number is filled there, not sent)."""
        return loss * self.scale_value if self.enabled else loss

    def unscale_(self, optimizer, max_norm=None):
        """Divide the gradients of optimizer's parameters by S and, with max_norm, clip their
        global norm to it, in one pass; returns that norm (of the unscaled gradients), read once
        from the device. A non-finite norm leaves the gradients as they are and marks the step
        to be skipped. Once per step, before step()."""
        if self.found_inf is not None:
            raise RuntimeError("GradScaler.unscale_: already called for this step; call "
                               "update() after step() to start the next one")
        if max_norm is not None:
            _positive("max_norm", max_norm)
        params = [p for group in optimizer.param_groups for p in group["params"]
                  if p.grad is not None]
        s = self.get_scale()
        # an infinite max_norm clips nothing: clip_grad_norm_ only measures (the one read)
        norm = clip_grad_norm_(params, math.inf) / s
        self.found_inf = not math.isfinite(norm)
        if self.found_inf:
            return norm
        factor = 1.0 / s
        if max_norm is not None and max_norm / (norm + 1e-6) < 1.0:    # as clip_grad_norm_
            factor *= max_norm / (norm + 1e-6)
        if factor != 1.0:
            for p in params:
                p.grad.data *= factor              # a Python float keeps the gradient's dtype
        return norm

    def step(self, optimizer):
        """optimizer.step() unless this step's gradients overflowed; True when it stepped.
        Calls unscale_ (without clipping) first if it has not been called."""
        if self.found_inf is None:
            self.unscale_(optimizer)
        if self.found_inf:
            return False
        optimizer.step()
        return True

    def update(self):
        """After step(): S x backoff_factor after an overflow, S x growth_factor after
        growth_interval good steps in a row."""
        if self.found_inf is None:
            raise RuntimeError("GradScaler.update: no unscale_() or step() since the last update")
        if self.enabled:
            if self.found_inf:
                self.scale_value *= self.backoff_factor
                self.growth_tracker = 0
            else:
                self.growth_tracker += 1
                if self.growth_tracker == self.growth_interval:
                    self.scale_value *= self.growth_factor
                    self.growth_tracker = 0
        self.found_inf = None

    def state_dict(self):
        """A JSON-able dict (the trainer keeps it in the checkpoint's record)."""
        return {"scale": self.scale_value, "growth_factor": self.growth_factor,
                "backoff_factor": self.backoff_factor, "growth_interval": self.growth_interval,
                "growth_tracker": self.growth_tracker}

    def load_state_dict(self, state):
        expected = {"scale", "growth_factor", "backoff_factor", "growth_interval",
                    "growth_tracker"}
        if set(state) != expected:
            raise ValueError(f"GradScaler.load_state_dict: keys {sorted(state)}, expected "
                             f"{sorted(expected)}")
        self.scale_value = _positive("scale", state["scale"])
        self.growth_factor = _positive("growth_factor", state["growth_factor"], above_one=True)
        self.backoff_factor = _positive("backoff_factor", state["backoff_factor"],
                                        above_one=False)
        self.growth_interval = int(state["growth_interval"])
        self.growth_tracker = int(state["growth_tracker"])
        self.found_inf = None
