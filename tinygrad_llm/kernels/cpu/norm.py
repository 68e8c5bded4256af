"""LayerNorm and RMSNorm in one pass per row (llm.c's layernorm_forward/backward in Numba).

References: ops/norm.py (same arguments, same results; the math is written there).
Forward: per row, mean and variance accumulated in float64, then y written in the same loop nest.
Backward: rows are split into N_CHUNKS fixed chunks; each chunk writes dx for its rows and its own
row of partial dw/db sums (float64), summed after the loop. One pass over x and dy.
The loops are serial over a range of tasks (jit_tasks: forward's are the rows, backward's the
chunks), ranges of which run_tasks runs on several threads (what prange would do, without its
compile time; see _common.py).
"""
import math

import numpy as np

from .. import implements
from ._common import N_CHUNKS, chunk_bounds, floats, jit_tasks, run_tasks


def _supported(x, w, *rest, **kwargs):
    return x.ndim == 2 and floats(x, w)


# ---- LayerNorm ----------------------------------------------------------------------------------
@jit_tasks
def _layer_norm_forward_loop(lo, hi, x, w, b, eps, y, mu, r):
    # x, y: (N, C)  w, b: (C,)  mu, r: (N,)  task n: row n
    c = x.shape[1]
    for n in range(lo, hi):
        s = 0.0                                     # float64 accumulators
        for j in range(c):
            s += x[n, j]
        m = s / c
        v = 0.0
        for j in range(c):
            d = x[n, j] - m
            v += d * d
        rs = 1.0 / math.sqrt(v / c + eps)
        for j in range(c):
            y[n, j] = (x[n, j] - m) * rs * w[j] + b[j]
        mu[n] = m
        r[n] = rs


@jit_tasks
def _layer_norm_backward_loop(lo, hi, dy, x, w, mu, r, bounds, dx, dw_part, db_part):
    # dy, x, dx: (N, C)  w: (C,)  mu, r: (N,)  dw_part, db_part: (N_CHUNKS, C) float64
    # task k: the rows bounds[k]..bounds[k + 1]-1, summing into dw_part[k], db_part[k]
    c = x.shape[1]
    for k in range(lo, hi):
        for n in range(bounds[k], bounds[k + 1]):
            m, rs = mu[n], r[n]
            g_mean = 0.0
            gx_mean = 0.0
            for j in range(c):
                xh = (x[n, j] - m) * rs
                g = dy[n, j] * w[j]
                g_mean += g
                gx_mean += g * xh
                dw_part[k, j] += dy[n, j] * xh
                db_part[k, j] += dy[n, j]
            g_mean /= c
            gx_mean /= c
            for j in range(c):
                xh = (x[n, j] - m) * rs
                dx[n, j] = rs * (dy[n, j] * w[j] - g_mean - xh * gx_mean)


@implements("layer_norm_forward", device="cpu", supports=_supported)
def layer_norm_forward_cpu(x, w, b, eps):
    x = np.ascontiguousarray(x)
    n = x.shape[0]
    y = np.empty_like(x)
    mu, r = np.empty(n, x.dtype), np.empty(n, x.dtype)
    bias = np.zeros_like(w) if b is None else np.ascontiguousarray(b)
    run_tasks(_layer_norm_forward_loop, n, x, np.ascontiguousarray(w), bias, eps, y, mu, r,
              work=x.size)
    return y, mu, r


@implements("layer_norm_backward", device="cpu", supports=_supported)
def layer_norm_backward_cpu(dy, x, w, mu, r, has_bias):
    dy, x = np.ascontiguousarray(dy), np.ascontiguousarray(x)
    dx = np.empty_like(x)
    dw_part = np.zeros((N_CHUNKS, x.shape[1]))
    db_part = np.zeros((N_CHUNKS, x.shape[1]))
    bounds = chunk_bounds(x.shape[0])
    run_tasks(_layer_norm_backward_loop, N_CHUNKS, dy, x, np.ascontiguousarray(w), mu, r, bounds,
              dx, dw_part, db_part, work=x.size)
    db = db_part.sum(axis=0).astype(x.dtype) if has_bias else None
    return dx, dw_part.sum(axis=0).astype(x.dtype), db


# ---- RMSNorm ------------------------------------------------------------------------------------
@jit_tasks
def _rms_norm_forward_loop(lo, hi, x, w, eps, y, r):
    # x, y: (N, C)  w: (C,)  r: (N,)  task n: row n
    c = x.shape[1]
    for n in range(lo, hi):
        ss = 0.0
        for j in range(c):
            ss += x[n, j] * x[n, j]
        rs = 1.0 / math.sqrt(ss / c + eps)
        for j in range(c):
            y[n, j] = x[n, j] * rs * w[j]
        r[n] = rs


@jit_tasks
def _rms_norm_backward_loop(lo, hi, dy, x, w, r, bounds, dx, dw_part):
    # dy, x, dx: (N, C)  w: (C,)  r: (N,)  dw_part: (N_CHUNKS, C) float64
    # task k: the rows bounds[k]..bounds[k + 1]-1, summing into dw_part[k]
    c = x.shape[1]
    for k in range(lo, hi):
        for n in range(bounds[k], bounds[k + 1]):
            rs = r[n]
            gx_mean = 0.0
            for j in range(c):
                xh = x[n, j] * rs
                gx_mean += dy[n, j] * w[j] * xh
                dw_part[k, j] += dy[n, j] * xh
            gx_mean /= c
            for j in range(c):
                dx[n, j] = rs * (dy[n, j] * w[j] - x[n, j] * rs * gx_mean)


@implements("rms_norm_forward", device="cpu", supports=_supported)
def rms_norm_forward_cpu(x, w, eps):
    x = np.ascontiguousarray(x)
    y, r = np.empty_like(x), np.empty(x.shape[0], x.dtype)
    run_tasks(_rms_norm_forward_loop, x.shape[0], x, np.ascontiguousarray(w), eps, y, r,
              work=x.size)
    return y, r


@implements("rms_norm_backward", device="cpu", supports=_supported)
def rms_norm_backward_cpu(dy, x, w, r):
    dy, x = np.ascontiguousarray(dy), np.ascontiguousarray(x)
    dx = np.empty_like(x)
    dw_part = np.zeros((N_CHUNKS, x.shape[1]))
    bounds = chunk_bounds(x.shape[0])
    run_tasks(_rms_norm_backward_loop, N_CHUNKS, dy, x, np.ascontiguousarray(w), r, bounds, dx,
              dw_part, work=x.size)
    return dx, dw_part.sum(axis=0).astype(x.dtype)
