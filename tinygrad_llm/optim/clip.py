"""Gradient clipping by global norm (Pascanu et al., 2013), as torch.nn.utils.clip_grad_norm_.

All gradients are treated as one vector: with n = ||(g_1, ..., g_k)||_2, every gradient is scaled
by max_norm / (n + 1e-6) when that factor is below 1, which keeps the update's direction and
bounds its length. The norm is accumulated in float64: a float32 sum of squares over millions of
entries loses digits, and can overflow for gradients above ~1e19.
"""
import math
import numbers

from ..backend import array_module
from ..tensor import Tensor

__all__ = ["clip_grad_norm_"]


def clip_grad_norm_(parameters, max_norm, error_if_nonfinite=False):
    """Scale the .grad of `parameters` (a Tensor or an iterable of them) in place so that their
    global L2 norm is at most max_norm; returns the norm before clipping, as a float.

    Parameters without a grad are ignored (no grads: returns 0.0). A non-finite norm raises a
    ValueError when error_if_nonfinite; otherwise it is returned and the grads are left as they
    are (scaling by max_norm / inf would turn inf entries into NaN and zero the rest), so that a
    trainer can check math.isfinite(norm) and skip the step."""
    if isinstance(max_norm, bool) or not isinstance(max_norm, numbers.Real) or not max_norm > 0:
        raise ValueError(f"max_norm: expected a positive number, got {max_norm!r}")
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    for p in params:
        if not isinstance(p, Tensor):
            raise TypeError(f"parameters: expected Tensors, got {type(p).__name__}")
    grads = [p.grad.data for p in params if p.grad is not None]
    total = 0.0
    for g in grads:
        xp = array_module(g)
        flat = g.reshape(-1).astype(xp.float64)       # one parameter at a time, in float64
        total += float(flat @ flat)
    norm = math.sqrt(total)
    if not math.isfinite(norm) and error_if_nonfinite:
        raise ValueError(f"clip_grad_norm_: the total gradient norm is {norm}; pass "
                         "error_if_nonfinite=False to clip anyway")
    scale = float(max_norm) / (norm + 1e-6)
    if scale < 1.0 and math.isfinite(norm):
        for g in grads:
            g *= scale                                  # a Python float keeps g's dtype
    return norm
