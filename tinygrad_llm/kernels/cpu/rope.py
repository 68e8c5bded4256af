"""QK-norm and RoPE on a packed projection, forward and backward, one pass each.

References: ops/rope.py (same arguments, same results; the math is written there).
The projection is viewed as rows (N = B T, S, D): row n holds position t = n mod T, and its first
H + Hkv slots (query then key heads) are normalised with their gain and rotated; the value slots
are copied. The reference makes about ten passes over the q/k part (the norm, the gains, the
concatenations of rotate_half, the products, the copy); here each element is read and written once
and the row's 1/rms stays in a register. No rotation (tables None) is the identity table, cos = 1
and sin = 0, which keeps one loop. Backward: rows are split into N_CHUNKS fixed chunks; each chunk
writes dx for its rows and its own partial gains' gradients (float64), summed after the loop.
"""
import math

import numpy as np

from .. import implements
from ._common import N_CHUNKS, chunk_bounds, floats, jit_tasks, run_tasks


@jit_tasks
def _qk_norm_rope_forward_loop(lo, hi, x, w, cos, sin, n_head, n_qk, eps, y, r):
    # x, y: (N, S, D)  w: (2, D) the query and key gains  cos, sin: (T, D)  r: (N, H + Hkv)
    # task n: row n.  n = x r w;  y1 = n1 c1 - n2 s1,  y2 = n2 c2 + n1 s2  (pair i, i + D/2)
    d = x.shape[2]
    half = d // 2
    n_t = cos.shape[0]
    for n in range(lo, hi):
        t = n % n_t
        for s in range(n_qk):
            g = 0 if s < n_head else 1
            ss = 0.0
            for j in range(d):
                ss += x[n, s, j] * x[n, s, j]
            rs = 1.0 / math.sqrt(ss / d + eps)
            r[n, s] = rs
            for i in range(half):
                n1 = x[n, s, i] * rs * w[g, i]
                n2 = x[n, s, i + half] * rs * w[g, i + half]
                y[n, s, i] = n1 * cos[t, i] - n2 * sin[t, i]
                y[n, s, i + half] = n2 * cos[t, i + half] + n1 * sin[t, i + half]
        for s in range(n_qk, x.shape[1]):
            for j in range(d):
                y[n, s, j] = x[n, s, j]


@jit_tasks
def _qk_norm_rope_backward_loop(lo, hi, dy, x, w, cos, sin, r, n_head, n_qk, bounds, dx,
                                dw_part):
    # dy, x, dx: (N, S, D)  dw_part: (N_CHUNKS, 2, D) float64
    # task k: the rows bounds[k]..bounds[k + 1]-1, summing into dw_part[k]
    # g = rope^T(dy): g1 = dy1 c1 + dy2 s2,  g2 = dy2 c2 - dy1 s1;  dx = r (g w - xh mean(g w xh))
    d = x.shape[2]
    half = d // 2
    n_t = cos.shape[0]
    gr = np.empty(d)                                  # the row's g, float64
    for k in range(lo, hi):
        for n in range(bounds[k], bounds[k + 1]):
            t = n % n_t
            for s in range(n_qk):
                h = 0 if s < n_head else 1
                rs = r[n, s]
                for i in range(half):
                    g1, g2 = dy[n, s, i], dy[n, s, i + half]
                    gr[i] = g1 * cos[t, i] + g2 * sin[t, i + half]
                    gr[i + half] = g2 * cos[t, i + half] - g1 * sin[t, i]
                gwx_mean = 0.0
                for j in range(d):
                    xh = x[n, s, j] * rs
                    gwx_mean += gr[j] * w[h, j] * xh
                    dw_part[k, h, j] += gr[j] * xh
                gwx_mean /= d
                for j in range(d):
                    dx[n, s, j] = rs * (gr[j] * w[h, j] - x[n, s, j] * rs * gwx_mean)
            for s in range(n_qk, x.shape[1]):
                for j in range(d):
                    dx[n, s, j] = dy[n, s, j]


def _supported(qkv, w_q, w_k, cos, sin, n_head, n_kv_head, *rest):
    return (qkv.ndim == 4 and qkv.shape[-1] % 2 == 0 and floats(qkv, w_q, w_k)
            and (cos is None or floats(qkv, cos, sin)))


def _rows_and_tables(a, w_q, w_k, cos, sin):
    """a (B, T, S, D) as contiguous rows (B T, S, D); the gains as (2, D); identity tables when
    there is no rotation."""
    b, t, s, d = a.shape
    if cos is None:
        cos, sin = np.ones((t, d), a.dtype), np.zeros((t, d), a.dtype)
    w = np.ascontiguousarray(np.stack((w_q, w_k)).astype(a.dtype, copy=False))
    return (np.ascontiguousarray(a).reshape(b * t, s, d), w, np.ascontiguousarray(cos),
            np.ascontiguousarray(sin))


@implements("packed_qk_norm_rope_forward", device="cpu", supports=_supported)
def packed_qk_norm_rope_forward_cpu(qkv, w_q, w_k, cos, sin, n_head, n_kv_head, eps):
    b, t, s, d = qkv.shape
    x, w, cos, sin = _rows_and_tables(qkv, w_q, w_k, cos, sin)
    y = np.empty_like(x)
    r = np.empty((b * t, n_head + n_kv_head), qkv.dtype)
    run_tasks(_qk_norm_rope_forward_loop, b * t, x, w, cos, sin, n_head, n_head + n_kv_head,
              eps, y, r, work=x.size)
    return y.reshape(qkv.shape), r.reshape(b, t, n_head + n_kv_head)


@implements("packed_qk_norm_rope_backward", device="cpu",
            supports=lambda dy, qkv, *rest: floats(dy, qkv) and _supported(qkv, *rest[:6]))
def packed_qk_norm_rope_backward_cpu(dy, qkv, w_q, w_k, cos, sin, n_head, n_kv_head, r):
    b, t, s, d = qkv.shape
    x, w, cos, sin = _rows_and_tables(qkv, w_q, w_k, cos, sin)
    g = np.ascontiguousarray(dy, dtype=qkv.dtype).reshape(b * t, s, d)
    dx = np.empty_like(x)
    dw_part = np.zeros((N_CHUNKS, 2, d))
    run_tasks(_qk_norm_rope_backward_loop, N_CHUNKS, g, x, w, cos, sin,
              np.ascontiguousarray(r).reshape(b * t, -1), n_head, n_head + n_kv_head,
              chunk_bounds(b * t), dx, dw_part, work=x.size)
    dw = dw_part.sum(axis=0).astype(qkv.dtype)
    return dx.reshape(qkv.shape), dw[0], dw[1]
