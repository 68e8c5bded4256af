"""LayerNorm and RMSNorm on the GPU: one block per row for the forward pass and for dx, one thread
per column for dw / db.

References: ops/norm.py (same arguments, same results; the math is written there).
Forward: each thread sums a strided slice of its row; the block combines the partial sums in
shared memory (a tree, float64), then every thread writes its slice of y.
Backward: the dx kernel does the same two reductions (mean(g), mean(g * xh)) per row; dw and db
are column sums over all rows, one thread per column walking down the rows (reads coalesced
across the threads of a block).
"""
import math

from numba import cuda, float64

from .. import implements
from ._common import THREADS, block_sum, blocks_for, cupy, floats, launch


def _supported(x, w, *rest, **kwargs):
    return x.ndim == 2 and floats(x, w)


# ---- LayerNorm ----------------------------------------------------------------------------------
@cuda.jit(cache=True)
def _layer_norm_forward_kernel(x, w, b, has_bias, eps, y, mu, r):
    # x, y: (N, C)  w, b: (C,)  mu, r: (N,); block n owns row n
    n, t = cuda.blockIdx.x, cuda.threadIdx.x
    c = x.shape[1]
    partial = cuda.shared.array(THREADS, float64)
    s = 0.0
    for j in range(t, c, THREADS):
        s += x[n, j]
    m = block_sum(partial, s) / c
    v = 0.0
    for j in range(t, c, THREADS):
        d = x[n, j] - m
        v += d * d
    rs = 1.0 / math.sqrt(block_sum(partial, v) / c + eps)
    for j in range(t, c, THREADS):
        out = (x[n, j] - m) * rs * w[j]
        if has_bias:
            out += b[j]
        y[n, j] = out
    if t == 0:
        mu[n] = m
        r[n] = rs


@implements("layer_norm_forward", device="cuda", supports=_supported)
def layer_norm_forward(x, w, b, eps):
    cp = cupy()
    x = cp.ascontiguousarray(x)
    n_rows = x.shape[0]
    y = cp.empty_like(x)
    mu = cp.empty(n_rows, dtype=x.dtype)
    r = cp.empty(n_rows, dtype=x.dtype)
    if n_rows:
        launch(_layer_norm_forward_kernel, n_rows, THREADS, x, w, w if b is None else b,
               b is not None, eps, y, mu, r)
    return y, mu, r


@cuda.jit(cache=True)
def _norm_dx_kernel(dy, x, w, mu, r, centred, dx):
    # dy, x, dx: (N, C)  w: (C,)  mu, r: (N,); block n owns row n
    # LayerNorm (centred): dx = r (g - mean(g) - xh mean(g xh))
    # RMSNorm:              dx = r (g - xh mean(g xh))
    n, t = cuda.blockIdx.x, cuda.threadIdx.x
    c = x.shape[1]
    partial = cuda.shared.array(THREADS, float64)
    m = mu[n] if centred else 0.0
    rs = r[n]
    sg = 0.0
    sgx = 0.0
    for j in range(t, c, THREADS):
        g = dy[n, j] * w[j]
        sg += g
        sgx += g * (x[n, j] - m) * rs
    g_mean = block_sum(partial, sg) / c if centred else 0.0
    gx_mean = block_sum(partial, sgx) / c
    for j in range(t, c, THREADS):
        xh = (x[n, j] - m) * rs
        dx[n, j] = rs * (dy[n, j] * w[j] - g_mean - xh * gx_mean)


@cuda.jit(cache=True)
def _norm_dw_kernel(dy, x, mu, r, centred, has_bias, dw, db):
    # dw[j] = sum over n of dy[n, j] xh[n, j],  db[j] = sum over n of dy[n, j]
    # thread j owns column j
    j = cuda.grid(1)
    if j >= x.shape[1]:
        return
    sw = 0.0
    sb = 0.0
    for n in range(x.shape[0]):
        m = mu[n] if centred else 0.0
        sw += dy[n, j] * (x[n, j] - m) * r[n]
        sb += dy[n, j]
    dw[j] = sw
    if has_bias:
        db[j] = sb


def _norm_backward(dy, x, w, mu, r, centred, has_bias):
    cp = cupy()
    dy, x = cp.ascontiguousarray(dy), cp.ascontiguousarray(x)
    n_rows, c = x.shape
    dx = cp.empty_like(x)
    dw = cp.empty(c, dtype=x.dtype)
    db = cp.empty(c if has_bias else 1, dtype=x.dtype)     # never an alias of dw (see _common)
    if n_rows:
        launch(_norm_dx_kernel, n_rows, THREADS, dy, x, w, mu, r, centred, dx)
        launch(_norm_dw_kernel, blocks_for(c), THREADS, dy, x, mu, r, centred, has_bias, dw, db)
    return dx, dw, (db if has_bias else None)


@implements("layer_norm_backward", device="cuda", supports=_supported)
def layer_norm_backward(dy, x, w, mu, r, has_bias):
    return _norm_backward(dy, x, w, mu, r, True, has_bias)


# ---- RMSNorm ------------------------------------------------------------------------------------
@cuda.jit(cache=True)
def _rms_norm_forward_kernel(x, w, eps, y, r):
    # x, y: (N, C)  w: (C,)  r: (N,); block n owns row n
    n, t = cuda.blockIdx.x, cuda.threadIdx.x
    c = x.shape[1]
    partial = cuda.shared.array(THREADS, float64)
    s = 0.0
    for j in range(t, c, THREADS):
        s += x[n, j] * x[n, j]
    rs = 1.0 / math.sqrt(block_sum(partial, s) / c + eps)
    for j in range(t, c, THREADS):
        y[n, j] = x[n, j] * rs * w[j]
    if t == 0:
        r[n] = rs


@implements("rms_norm_forward", device="cuda", supports=_supported)
def rms_norm_forward(x, w, eps):
    cp = cupy()
    x = cp.ascontiguousarray(x)
    y = cp.empty_like(x)
    r = cp.empty(x.shape[0], dtype=x.dtype)
    if x.shape[0]:
        launch(_rms_norm_forward_kernel, x.shape[0], THREADS, x, w, eps, y, r)
    return y, r


@implements("rms_norm_backward", device="cuda", supports=_supported)
def rms_norm_backward(dy, x, w, r):
    dx, dw, _ = _norm_backward(dy, x, w, r, r, False, False)
    return dx, dw
