"""Rotary position embedding on the GPU, forward and backward, plain and packed, one pass each.

References: ops/rope.py (same arguments, same results; the math is written there).
One thread per rotated pair (i, i + D/2) in a grid-stride loop over the rows of x viewed as
(rows, D). The row's position t and its slot s come from its index: rows run over
(..., T, slots) with slots = 1 for plain x (..., T, D) and slots = S for a packed projection
(B, T, S, D), whose first n_rotated slots are rotated and the rest copied. The array references
build rotate_half by concatenation and make three to five passes (more for the packed copy); here
each element is read and written once.

The tables are read at both dims of a pair (cos[t, i] and cos[t, i + D/2]), as the reference's
products do, rather than assuming the halves repeat.
"""
import math

from numba import cuda

from .. import implements
from ._common import THREADS, cupy, floats, grid_for, launch


@cuda.jit(cache=True)
def _rope_forward_kernel(x, cos, sin, slots, n_rotated, y):
    # x, y: (R, D) with rows ordered (..., T, slots)  cos, sin: (T, D);  h = D / 2
    # y1 = x1 c1 - x2 s1,  y2 = x2 c2 + x1 s2   (pair i: c1 = cos[t, i], c2 = cos[t, i + h])
    half = x.shape[1] // 2
    n_t = cos.shape[0]
    for k in range(cuda.grid(1), x.shape[0] * half, cuda.gridsize(1)):
        r, i = k // half, k % half
        t = (r // slots) % n_t
        x1, x2 = x[r, i], x[r, i + half]
        if r % slots < n_rotated:
            y[r, i] = x1 * cos[t, i] - x2 * sin[t, i]
            y[r, i + half] = x2 * cos[t, i + half] + x1 * sin[t, i + half]
        else:
            y[r, i] = x1
            y[r, i + half] = x2


@cuda.jit(cache=True)
def _rope_backward_kernel(dy, cos, sin, slots, n_rotated, dx):
    # dx = dy cos + rotate_half^T(dy sin):  dx1 = g1 c1 + g2 s2,  dx2 = g2 c2 - g1 s1
    half = dy.shape[1] // 2
    n_t = cos.shape[0]
    for k in range(cuda.grid(1), dy.shape[0] * half, cuda.gridsize(1)):
        r, i = k // half, k % half
        t = (r // slots) % n_t
        g1, g2 = dy[r, i], dy[r, i + half]
        if r % slots < n_rotated:
            dx[r, i] = g1 * cos[t, i] + g2 * sin[t, i + half]
            dx[r, i + half] = g2 * cos[t, i + half] - g1 * sin[t, i]
        else:
            dx[r, i] = g1
            dx[r, i + half] = g2


def _run(kernel, x, cos, sin, slots, n_rotated):
    cp = cupy()
    x = cp.ascontiguousarray(x)
    out = cp.empty_like(x)
    d = x.shape[-1]
    if x.size:
        launch(kernel, grid_for(x.size // 2), THREADS, x.reshape(-1, d), cp.ascontiguousarray(cos),
               cp.ascontiguousarray(sin), slots, n_rotated, out.reshape(-1, d))
    return out


def _tables_fit(x, cos, sin):
    return (x.ndim >= 2 and x.shape[-1] % 2 == 0 and floats(x, cos, sin)
            and cos.shape == sin.shape == x.shape[-2:])


@implements("rope_forward", device="cuda", supports=_tables_fit)
def rope_forward(x, cos, sin):
    return _run(_rope_forward_kernel, x, cos, sin, 1, 1)


@implements("rope_backward", device="cuda", supports=_tables_fit)
def rope_backward(dy, cos, sin):
    return _run(_rope_backward_kernel, dy, cos, sin, 1, 1)


def _packed_fit(qkv, cos, sin, n_rotated):
    return qkv.ndim == 4 and _tables_fit(qkv[:, :, 0], cos, sin)


@implements("packed_rope_forward", device="cuda", supports=_packed_fit)
def packed_rope_forward(qkv, cos, sin, n_rotated):
    return _run(_rope_forward_kernel, qkv, cos, sin, qkv.shape[2], n_rotated)


@implements("packed_rope_backward", device="cuda", supports=_packed_fit)
def packed_rope_backward(dy, cos, sin, n_rotated):
    return _run(_rope_backward_kernel, dy, cos, sin, dy.shape[2], n_rotated)


# ---- QK-norm and RoPE on a packed projection ----------------------------------------------------
# x viewed as (N = B T, S, D). Forward and dx: one thread per (row, slot), looping over D (a head
# is 32-128 wide): the row's 1/rms and mean(g w xh) stay in registers. dw: one thread per (gain,
# column) walking every row and slot of its kind, so the sums are deterministic (no atomics).
# No rotation is the identity table (cos = 1, sin = 0), as on the CPU.
@cuda.jit(device=True)
def _rope_transpose_at(dy, cos, sin, n, s, t, j, half):
    # g = rope^T(dy) at dim j:  g1 = dy1 c1 + dy2 s2,  g2 = dy2 c2 - dy1 s1
    if j < half:
        return dy[n, s, j] * cos[t, j] + dy[n, s, j + half] * sin[t, j + half]
    return dy[n, s, j] * cos[t, j] - dy[n, s, j - half] * sin[t, j - half]


@cuda.jit(cache=True)
def _qk_norm_rope_forward_kernel(x, w, cos, sin, n_head, n_qk, eps, y, r):
    # x, y: (N, S, D)  w: (2, D)  cos, sin: (T, D)  r: (N, H + Hkv)
    n_slots, d = x.shape[1], x.shape[2]
    half = d // 2
    for k in range(cuda.grid(1), x.shape[0] * n_slots, cuda.gridsize(1)):
        n, s = k // n_slots, k % n_slots
        if s >= n_qk:
            for j in range(d):
                y[n, s, j] = x[n, s, j]
            continue
        t = n % cos.shape[0]
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


@cuda.jit(cache=True)
def _qk_norm_rope_dx_kernel(dy, x, w, cos, sin, r, n_head, n_qk, dx):
    # dx = r (g w - xh mean(g w xh)) on the q/k slots, dy on the others
    n_slots, d = x.shape[1], x.shape[2]
    half = d // 2
    for k in range(cuda.grid(1), x.shape[0] * n_slots, cuda.gridsize(1)):
        n, s = k // n_slots, k % n_slots
        if s >= n_qk:
            for j in range(d):
                dx[n, s, j] = dy[n, s, j]
            continue
        t = n % cos.shape[0]
        h = 0 if s < n_head else 1
        rs = r[n, s]
        m = 0.0
        for j in range(d):
            m += _rope_transpose_at(dy, cos, sin, n, s, t, j, half) * w[h, j] * x[n, s, j] * rs
        m /= d
        for j in range(d):
            g = _rope_transpose_at(dy, cos, sin, n, s, t, j, half)
            dx[n, s, j] = rs * (g * w[h, j] - x[n, s, j] * rs * m)


@cuda.jit(cache=True)
def _qk_norm_rope_dw_kernel(dy, x, cos, sin, r, n_head, n_qk, dw):
    # dw: (2, D); thread (h, j) sums g xh over every row and every slot of kind h (query: h = 0)
    d = x.shape[2]
    half = d // 2
    for k in range(cuda.grid(1), 2 * d, cuda.gridsize(1)):
        h, j = k // d, k % d
        lo, hi = (0, n_head) if h == 0 else (n_head, n_qk)
        acc = 0.0
        for n in range(x.shape[0]):
            t = n % cos.shape[0]
            for s in range(lo, hi):
                acc += _rope_transpose_at(dy, cos, sin, n, s, t, j, half) * x[n, s, j] * r[n, s]
        dw[h, j] = acc


def _qk_rows(cp, a, w_q, w_k, cos, sin):
    """a (B, T, S, D) as contiguous rows (B T, S, D), the gains as (2, D), identity tables when
    there is no rotation."""
    b, t, s, d = a.shape
    if cos is None:
        cos, sin = cp.ones((t, d), a.dtype), cp.zeros((t, d), a.dtype)
    w = cp.ascontiguousarray(cp.stack((w_q, w_k)))
    return (cp.ascontiguousarray(a).reshape(b * t, s, d), w, cp.ascontiguousarray(cos),
            cp.ascontiguousarray(sin))


def _qk_fit(qkv, w_q, w_k, cos, sin, *rest):
    return (qkv.ndim == 4 and qkv.shape[-1] % 2 == 0 and floats(qkv, w_q, w_k)
            and (cos is None or floats(qkv, cos, sin)))


@implements("packed_qk_norm_rope_forward", device="cuda", supports=_qk_fit)
def packed_qk_norm_rope_forward(qkv, w_q, w_k, cos, sin, n_head, n_kv_head, eps):
    cp = cupy()
    b, t, s, d = qkv.shape
    x, w, cos, sin = _qk_rows(cp, qkv, w_q, w_k, cos, sin)
    y = cp.empty_like(x)
    r = cp.empty((b * t, n_head + n_kv_head), qkv.dtype)
    if x.size:
        launch(_qk_norm_rope_forward_kernel, grid_for(b * t * s), THREADS, x, w, cos, sin,
               n_head, n_head + n_kv_head, eps, y, r)
    return y.reshape(qkv.shape), r.reshape(b, t, n_head + n_kv_head)


@implements("packed_qk_norm_rope_backward", device="cuda",
            supports=lambda dy, qkv, *rest: floats(dy, qkv) and _qk_fit(qkv, *rest[:4]))
def packed_qk_norm_rope_backward(dy, qkv, w_q, w_k, cos, sin, n_head, n_kv_head, r):
    cp = cupy()
    b, t, s, d = qkv.shape
    x, w, cos, sin = _qk_rows(cp, qkv, w_q, w_k, cos, sin)
    g = cp.ascontiguousarray(dy).reshape(b * t, s, d)
    r = cp.ascontiguousarray(r).reshape(b * t, -1)
    dx = cp.empty_like(x)
    dw = cp.zeros((2, d), qkv.dtype)
    if x.size:
        n_qk = n_head + n_kv_head
        launch(_qk_norm_rope_dx_kernel, grid_for(b * t * s), THREADS, g, x, w, cos, sin, r,
               n_head, n_qk, dx)
        launch(_qk_norm_rope_dw_kernel, grid_for(2 * d), THREADS, g, x, cos, sin, r, n_head,
               n_qk, dw)
    return dx.reshape(qkv.shape), dw[0], dw[1]
