"""Gradient clipping by global norm (Pascanu et al., 2013), as torch.nn.utils.clip_grad_norm_.

All gradients are treated as one vector: with n = ||(g_1, ..., g_k)||_2, every gradient is scaled
by max_norm / (n + 1e-6) when that factor is below 1, which keeps the update's direction and
bounds its length.

Reading order: the reference kernel `grad_squared_norms` (fast versions:
kernels/{cpu,cuda}/optim.py), then clip_grad_norm_. Each gradient's sum of squares stays on its
device, in one (K, 2) array; the only transfer is that array, read once (a GPU training step's
non-finite check is this read), and the sums are added on the host in float64.

Precision. The norm is accumulated in float64: a float32 sum over millions of entries loses digits,
and overflows for gradients above ~1e19. On the host the reference dots a float64 copy of each
gradient; the CPU kernel adds each square in float64 without the copy. On a GPU a float64 array
doubles the traffic of what it touches (the budgets allow none), so the (K, 2) array keeps the
gradients' dtype (at least float32) and holds each sum as an unevaluated pair hi + lo, the float32
form of a float64 (Dekker, 1971): the CUDA kernel squares and adds in float64 registers and writes
the pair, good to ~48 bits. The reference, when kernels are off, writes hi only, summed in float32
by CuPy's tree reductions (error ~log2(n) * 2^-24, 1e-6 at 1e8 entries, which moves a clipping
factor by as little). On a GPU a float32 sum still overflows above ~3.4e38 (a norm of ~1.8e19):
such a step reads as non-finite (skipped, or an error) instead of clipped; the run has diverged
either way.
"""
import math
import numbers

import numpy as np

from .. import backend
from ..kernels import kernel
from ..tensor import Tensor

__all__ = ["clip_grad_norm_", "grad_squared_norms"]


@kernel("grad_squared_norms")   # fast: kernels/{cpu,cuda}/optim.py
def grad_squared_norms(out, grads):
    """out[k, 0] + out[k, 1] = sum of grads[k]^2; returns out. out: (K, 2) zeros on the
    gradients' device, written in place: a pair (hi, lo) per gradient, whose lo this readable
    version leaves 0, accumulating in out's dtype. grads: K float arrays of any shapes. No sync."""
    for k, g in enumerate(grads):
        flat = g.reshape(-1).astype(out.dtype, copy=False)     # a float64 copy on the host
        out[k, 0] = flat @ flat
    return out


def _sums_dtype(device, grads):
    """The dtype the sums of squares accumulate in (see Precision above)."""
    if device == "cpu":
        return np.float64
    return np.result_type(np.float32, *[g.dtype for g in grads])


def clip_grad_norm_(parameters, max_norm, error_if_nonfinite=False, reduce_sum_squares=None):
    """Scale the .grad of `parameters` (a Tensor or an iterable of them) in place so that their
    global L2 norm is at most max_norm; returns the norm before clipping, as a float.

    Parameters without a grad are ignored (no grads: returns 0.0). A non-finite norm raises a
    ValueError when error_if_nonfinite; otherwise it is returned and the grads are left as they
    are (scaling by max_norm / inf would turn inf entries into NaN and zero the rest), so that a
    trainer can check math.isfinite(norm) and skip the step. One host sync per device holding
    gradients (one, in practice). reduce_sum_squares: a function of this process's sum of squares
    returning the global one, for gradients sharded over processes (ZeRO-1: each rank holds its
    own parameters' share)."""
    if isinstance(max_norm, bool) or not isinstance(max_norm, numbers.Real) or not max_norm > 0:
        raise ValueError(f"max_norm: expected a positive number, got {max_norm!r}")
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    for p in params:
        if not isinstance(p, Tensor):
            raise TypeError(f"parameters: expected Tensors, got {type(p).__name__}")
    grads = [p.grad.data for p in params if p.grad is not None]
    total = 0.0
    for device in sorted({backend.device_of(g) for g in grads}):
        on_device = [g for g in grads if backend.device_of(g) == device]
        xp = backend.array_module(on_device[0])
        sums = xp.zeros((len(on_device), 2), dtype=_sums_dtype(device, on_device))  # (K, 2)
        sums = backend.to_numpy(grad_squared_norms(sums, on_device))      # the host sync
        total += float(np.sum(sums, dtype=np.float64))
    if reduce_sum_squares is not None:
        total = float(reduce_sum_squares(total))
    norm = math.sqrt(total)
    if not math.isfinite(norm) and error_if_nonfinite:
        raise ValueError(f"clip_grad_norm_: the total gradient norm is {norm}; pass "
                         "error_if_nonfinite=False to clip anyway")
    scale = float(max_norm) / (norm + 1e-6)
    if scale < 1.0 and math.isfinite(norm):
        for g in grads:
            g *= scale                                  # a Python float keeps g's dtype
    return norm
