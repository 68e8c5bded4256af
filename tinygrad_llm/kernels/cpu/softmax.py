"""Fused softmax + cross-entropy, forward and backward, one row at a time (reference:
ops/softmax.py). Forward reads each row twice (max, then sum of exponentials) and writes two
numbers per row; backward writes each dlogit once, recomputing the softmax from the saved
logsumexp. Accumulation in float64.
"""
import math

import numpy as np
from numba import prange

from .. import implements
from ._common import floats, jit_parallel


def _supported(logits, targets, *rest, **kwargs):
    return logits.ndim == 2 and floats(logits) and targets.dtype.kind in "iu"


@jit_parallel
def _cross_entropy_forward_loop(logits, targets, ignore_index, smoothing, loss, lse):
    # logits: (N, V)  targets, loss, lse: (N,)
    n_rows, v = logits.shape
    for n in prange(n_rows):
        m = -np.inf
        for j in range(v):
            m = max(m, logits[n, j])
        s = 0.0
        total = 0.0
        for j in range(v):
            s += math.exp(logits[n, j] - m)
            total += logits[n, j]
        row_lse = m + math.log(s)
        lse[n] = row_lse
        t = targets[n]
        if t == ignore_index:
            loss[n] = 0.0
        else:
            loss[n] = (1.0 - smoothing) * (row_lse - logits[n, t]) + smoothing * (row_lse - total / v)


@jit_parallel
def _cross_entropy_backward_loop(dloss, logits, targets, lse, ignore_index, smoothing, dlogits):
    # dloss, targets, lse: (N,)  logits, dlogits: (N, V)
    n_rows, v = logits.shape
    for n in prange(n_rows):
        t = targets[n]
        if t == ignore_index:
            for j in range(v):
                dlogits[n, j] = 0.0
            continue
        g = dloss[n]
        row_lse = lse[n]
        off = smoothing / v
        for j in range(v):
            dlogits[n, j] = g * (math.exp(logits[n, j] - row_lse) - off)
        dlogits[n, t] -= g * (1.0 - smoothing)


@implements("cross_entropy_forward", device="cpu", supports=_supported)
def cross_entropy_forward_cpu(logits, targets, ignore_index, label_smoothing):
    logits, targets = np.ascontiguousarray(logits), np.ascontiguousarray(targets)
    n = logits.shape[0]
    loss, lse = np.empty(n, logits.dtype), np.empty(n, logits.dtype)
    _cross_entropy_forward_loop(logits, targets, ignore_index, float(label_smoothing), loss, lse)
    return loss, lse


@implements("cross_entropy_backward", device="cpu", supports=lambda dloss, logits, targets, *a:
            _supported(logits, targets))
def cross_entropy_backward_cpu(dloss, logits, targets, lse, ignore_index, label_smoothing):
    logits = np.ascontiguousarray(logits)
    dlogits = np.empty_like(logits)
    _cross_entropy_backward_loop(np.ascontiguousarray(dloss, dtype=logits.dtype), logits,
                                 np.ascontiguousarray(targets), lse, ignore_index,
                                 float(label_smoothing), dlogits)
    return dlogits
