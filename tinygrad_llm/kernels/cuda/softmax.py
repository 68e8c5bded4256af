"""Fused softmax + cross-entropy on the GPU, forward and backward, one block per row.

References: ops/softmax.py (same arguments, same results; the math is written there).
Forward reads each row once: every thread keeps an online (max m, sum s of e^(x - m)) over its
strided slice of the row (Milakov & Gimelshein, 2018), rescaling s when a larger value arrives;
the block then merges the threads' pairs in a shared-memory tree, with the row sum of x for label
smoothing alongside. Backward writes each dlogit once, recomputing the softmax from the saved
logsumexp. The exponentials are taken in the logits' dtype (float32's exp is several times
cheaper on a GPU, and the reference rounds them to it too); the sums accumulate in float64.

Special values follow the reference, which subtracts the row max: a -inf logit adds 0; a NaN
anywhere in the row makes its lse and loss NaN; a row whose max is +-inf (all -inf, or a +inf)
has e^(x - max) = NaN there, so its lse is NaN too. A target outside [0, V) (other than
ignore_index) gives a NaN loss: device targets are not read back to be checked.
"""
import math

from numba import cuda, float64

from .. import implements
from ._common import THREADS, cupy, floats, launch


def _supported(logits, targets, *rest, **kwargs):
    return logits.ndim == 2 and floats(logits) and targets.dtype.kind in "iu"


@cuda.jit(device=True)
def _rescaled(s, m, new_m):
    """s = sum of e^(x - m) re-expressed against new_m >= m; an empty sum (s = 0) stays 0 (with
    m = -inf it would otherwise be 0 * e^NaN)."""
    return s * math.exp(m - new_m) if s != 0.0 else 0.0


@cuda.jit(cache=True)
def _cross_entropy_forward_kernel(logits, targets, ignore_index, smoothing, lowest, loss, lse):
    # logits: (N, V)  targets, loss, lse: (N,); block n owns row n. lowest = -inf in the logits'
    # dtype, so that the running max m, and e^(x - m), stay in it
    n, t = cuda.blockIdx.x, cuda.threadIdx.x
    v = logits.shape[1]
    part_m = cuda.shared.array(THREADS, float64)
    part_s = cuda.shared.array(THREADS, float64)
    part_total = cuda.shared.array(THREADS, float64)
    m = lowest
    s = 0.0
    total = 0.0
    for j in range(t, v, THREADS):
        a = logits[n, j]
        total += a
        if a > m:
            s = s * math.exp(m - a) + 1.0      # a new max: rescale what was summed so far
            m = a
        elif a > lowest or a != a:            # -inf adds 0; NaN makes s NaN
            s += math.exp(a - m)
    part_m[t] = m
    part_s[t] = s
    part_total[t] = total
    cuda.syncthreads()
    step = THREADS // 2
    while step > 0:
        if t < step:
            m1, m2 = part_m[t], part_m[t + step]
            mm = m1 if m1 >= m2 else m2
            part_s[t] = _rescaled(part_s[t], m1, mm) + _rescaled(part_s[t + step], m2, mm)
            part_m[t] = mm
            part_total[t] += part_total[t + step]
        cuda.syncthreads()
        step //= 2
    if t == 0:
        row_max = part_m[0]
        finite = -math.inf < row_max < math.inf
        row_lse = row_max + math.log(part_s[0]) if finite else math.nan
        lse[n] = row_lse
        target = targets[n]
        if target == ignore_index:
            loss[n] = 0.0
        elif target < 0 or target >= v:        # no read out of bounds: the loss shows it as NaN
            loss[n] = math.nan
        else:
            out = (1.0 - smoothing) * (row_lse - logits[n, target])
            if smoothing != 0.0:               # the reference adds this term only then
                out += smoothing * (row_lse - part_total[0] / v)
            loss[n] = out


@implements("cross_entropy_forward", device="cuda", supports=_supported)
def cross_entropy_forward(logits, targets, ignore_index, label_smoothing):
    cp = cupy()
    logits, targets = cp.ascontiguousarray(logits), cp.ascontiguousarray(targets)
    n_rows = logits.shape[0]
    loss = cp.empty(n_rows, dtype=logits.dtype)
    lse = cp.empty(n_rows, dtype=logits.dtype)
    if n_rows:
        launch(_cross_entropy_forward_kernel, n_rows, THREADS, logits, targets, int(ignore_index),
               float(label_smoothing), logits.dtype.type(-math.inf), loss, lse)
    return loss, lse


@cuda.jit(cache=True)
def _cross_entropy_backward_kernel(dloss, logits, targets, lse, ignore_index, off, keep, zero,
                                   dlogits):
    # dloss, targets, lse: (N,)  logits, dlogits: (N, V); block n owns row n
    # dx = g (softmax(x) - off - keep [j = target]),  off = eps / V, keep = 1 - eps; g = 0 for an
    # ignored row (the reference's product, so a NaN row stays NaN as there). off, keep and zero
    # come in the logits' dtype: the row is computed in it, as the reference does
    n, t = cuda.blockIdx.x, cuda.threadIdx.x
    target = targets[n]
    g = dloss[n] if target != ignore_index else zero
    row_lse = lse[n]
    for j in range(t, logits.shape[1], THREADS):
        p = math.exp(logits[n, j] - row_lse) - off
        if j == target:
            p -= keep
        dlogits[n, j] = p * g


def _backward_supported(dloss, logits, targets, lse, *rest, **kwargs):
    return _supported(logits, targets) and floats(logits, lse) and dloss.dtype.kind == "f"


@implements("cross_entropy_backward", device="cuda", supports=_backward_supported)
def cross_entropy_backward(dloss, logits, targets, lse, ignore_index, label_smoothing):
    cp = cupy()
    logits = cp.ascontiguousarray(logits)
    # dloss is often a broadcast scalar (stride 0): one small copy makes it a plain row
    dloss = cp.ascontiguousarray(dloss, dtype=logits.dtype)
    dlogits = cp.empty_like(logits)
    n_rows, v = logits.shape
    f = logits.dtype.type
    if n_rows:
        launch(_cross_entropy_backward_kernel, n_rows, THREADS, dloss, logits,
               cp.ascontiguousarray(targets), cp.ascontiguousarray(lse), int(ignore_index),
               f(label_smoothing / v), f(1.0 - label_smoothing), f(0.0), dlogits)
    return dlogits
