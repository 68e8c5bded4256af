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
