"""Fused softmax + cross-entropy, forward and backward, one row at a time (reference:
ops/softmax.py). Forward reads each row twice (max, then sum of exponentials) and writes two
numbers per row; backward writes each dlogit once, recomputing the softmax from the saved
logsumexp. Accumulation in float64; the exponentials go through the vectorised exp_shifted.
The loops are serial over a range of tasks (jit_tasks), ranges of which run_tasks runs on
several threads (what prange would do, without its compile time; see _common.py): forward's
tasks are N_CHUNKS fixed chunks of rows, each with its own scratch row, and backward's are the
rows.
"""
import math

import numpy as np

from .. import implements
from ._common import (N_CHUNKS, chunk_bounds, exp_shifted, exp_shifted_affine, floats, jit_tasks,
                      row_max, run_tasks)


def _supported(logits, targets, *rest, **kwargs):
    return logits.ndim == 2 and floats(logits) and targets.dtype.kind in "iu"


@jit_tasks
def _cross_entropy_forward_loop(lo, hi, logits, targets, ignore_index, smoothing, bounds, scratch,
                                loss, lse):
    # logits: (N, V)  targets, loss, lse: (N,)  scratch: (N_CHUNKS, V)
    # task k: the rows bounds[k]..bounds[k + 1]-1, with scratch[k]
    n_rows, v = logits.shape
    for k in range(lo, hi):
        e = scratch[k]
        for n in range(bounds[k], bounds[k + 1]):
            row = logits[n]
            m = row_max(row, v)
            s = exp_shifted(row, m, e, v)    # sum of e = exp(x - max)
            total = 0.0
            if smoothing != 0.0:
                for j in range(v):
                    total += row[j]
            row_lse = m + math.log(s)
            lse[n] = row_lse
            t = targets[n]
            if t == ignore_index:
                loss[n] = 0.0
            else:
                loss[n] = ((1.0 - smoothing) * (row_lse - row[t])
                           + smoothing * (row_lse - total / v))


@jit_tasks
def _cross_entropy_backward_loop(lo, hi, dloss, logits, targets, lse, ignore_index, off, keep,
                                 dlogits):
    # dloss, targets, lse: (N,)  logits, dlogits: (N, V)  task n: row n
    # off = smoothing / V and keep = 1 - smoothing in the logits' dtype: a float64 scalar in the
    # row loop would turn it into float64 arithmetic (half the vector width; measured 2x slower)
    n_rows, v = logits.shape
    for n in range(lo, hi):
        out = dlogits[n]
        t = targets[n]
        if t == ignore_index:
            out[:] = 0.0
            continue
        g = dloss[n]                                  # g (softmax - off), softmax recomputed
        exp_shifted_affine(logits[n], lse[n], g, -g * off, out, v)
        out[t] -= g * keep


@implements("cross_entropy_forward", device="cpu", supports=_supported)
def cross_entropy_forward_cpu(logits, targets, ignore_index, label_smoothing):
    logits, targets = np.ascontiguousarray(logits), np.ascontiguousarray(targets)
    n, v = logits.shape
    loss, lse = np.empty(n, logits.dtype), np.empty(n, logits.dtype)
    scratch = np.empty((N_CHUNKS, v), logits.dtype)
    run_tasks(_cross_entropy_forward_loop, N_CHUNKS, logits, targets, ignore_index,
              float(label_smoothing), chunk_bounds(n), scratch, loss, lse, work=logits.size)
    return loss, lse


@implements("cross_entropy_backward", device="cpu", supports=lambda dloss, logits, targets, *a:
            _supported(logits, targets))
def cross_entropy_backward_cpu(dloss, logits, targets, lse, ignore_index, label_smoothing):
    logits = np.ascontiguousarray(logits)
    dlogits = np.empty_like(logits)
    dtype = logits.dtype.type
    run_tasks(_cross_entropy_backward_loop, logits.shape[0],
              np.ascontiguousarray(dloss, dtype=logits.dtype), logits,
              np.ascontiguousarray(targets), lse, ignore_index,
              dtype(label_smoothing / logits.shape[1]), dtype(1.0 - label_smoothing), dlogits,
              work=logits.size)
    return dlogits
