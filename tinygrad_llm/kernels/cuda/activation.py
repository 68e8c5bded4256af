"""GELU (exact and tanh), the squared ReLU and SwiGLU on the GPU, forward and backward, one pass
each.

References: ops/activation.py (same arguments, same results; the math is written there).
Elementwise over the flattened arrays: one thread per element in a grid-stride loop (thread i
takes elements i, i + grid, ...). The grid is capped (_common.grid_for): on a GPU enough blocks
to fill the device (more would only queue), under the simulator two, so that the tests' small
sizes already walk the stride loop.

The arithmetic stays in the array's dtype: the constants are handed over in it (a Python float
would make Numba compile the float32 kernel in float64), and math.erfc / tanh / exp then compile to
CUDA's float32 or float64 functions. Exact GELU uses erfc(-x / sqrt 2) / 2 for Phi, as the
reference does: it keeps the negative tail's tiny values accurate where 1 + erf would cancel.
"""
import math

import numpy as np
from numba import cuda

from .. import implements
from ._common import THREADS, cupy, floats, grid_for, launch


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _constants(dtype):
    """(1/2, 1, sqrt(2/pi), 0.044715, 3 * 0.044715, 1/sqrt 2, 1/sqrt(2 pi)) in `dtype`."""
    f = np.dtype(dtype).type
    return tuple(f(c) for c in (0.5, 1.0, _SQRT_2_OVER_PI, 0.044715, 3 * 0.044715, _INV_SQRT_2,
                                _INV_SQRT_2PI))


def _flat(cp, *arrays):
    return [cp.ascontiguousarray(a).reshape(-1) for a in arrays]


# ---- GELU ---------------------------------------------------------------------------------------
@cuda.jit(cache=True)
def _gelu_forward_kernel(x, y, tanh_form, k):
    # x, y: (N,) flat; k: _constants in x's dtype
    half, one, c0, c1, _, r2, _ = k
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        v = x[i]
        if tanh_form:
            y[i] = half * v * (one + math.tanh(c0 * (v + c1 * v * v * v)))
        else:
            y[i] = v * (half * math.erfc(-v * r2))


@cuda.jit(cache=True)
def _gelu_backward_kernel(dy, x, dx, tanh_form, k):
    # dy, x, dx: (N,) flat
    half, one, c0, c1, c3, r2, rp = k
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        v = x[i]
        if tanh_form:
            t = math.tanh(c0 * (v + c1 * v * v * v))
            du = c0 * (one + c3 * v * v)
            dx[i] = dy[i] * (half * (one + t) + half * v * (one - t * t) * du)
        else:
            cdf = half * math.erfc(-v * r2)
            dx[i] = dy[i] * (cdf + v * rp * math.exp(-half * v * v))


@implements("gelu_forward", device="cuda", supports=lambda x, approximate: floats(x))
def gelu_forward(x, approximate):
    cp = cupy()
    x = cp.ascontiguousarray(x)
    y = cp.empty_like(x)
    if x.size:
        launch(_gelu_forward_kernel, grid_for(x.size), THREADS, x.reshape(-1), y.reshape(-1),
               approximate == "tanh", _constants(x.dtype))
    return y


@implements("gelu_backward", device="cuda",
            supports=lambda dy, x, approximate: floats(dy, x) and dy.shape == x.shape)
def gelu_backward(dy, x, approximate):
    cp = cupy()
    dy, x = cp.ascontiguousarray(dy), cp.ascontiguousarray(x)
    dx = cp.empty_like(x)
    if x.size:
        launch(_gelu_backward_kernel, grid_for(x.size), THREADS, dy.reshape(-1), x.reshape(-1),
               dx.reshape(-1), approximate == "tanh", _constants(x.dtype))
    return dx


# ---- squared ReLU: y = max(x, 0)^2,  dx = 2 max(x, 0) dy ----------------------------------------
# `zero` in x's dtype keeps the float32 kernel in float32; `v < zero` is false for NaN, which
# passes through as in the reference's maximum.
@cuda.jit(cache=True)
def _relu2_forward_kernel(x, y, zero):
    # x, y: (N,) flat
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        v = x[i]
        r = zero if v < zero else v
        y[i] = r * r


@cuda.jit(cache=True)
def _relu2_backward_kernel(dy, x, dx, zero):
    # dy, x, dx: (N,) flat
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        v = x[i]
        r = zero if v < zero else v
        dx[i] = (r + r) * dy[i]


@implements("relu2_forward", device="cuda", supports=lambda x: floats(x))
def relu2_forward(x):
    cp = cupy()
    x = cp.ascontiguousarray(x)
    y = cp.empty_like(x)
    if x.size:
        launch(_relu2_forward_kernel, grid_for(x.size), THREADS, x.reshape(-1), y.reshape(-1),
               x.dtype.type(0))
    return y


@implements("relu2_backward", device="cuda",
            supports=lambda dy, x: floats(dy, x) and dy.shape == x.shape)
def relu2_backward(dy, x):
    cp = cupy()
    dy, x = cp.ascontiguousarray(dy), cp.ascontiguousarray(x)
    dx = cp.empty_like(x)
    if x.size:
        launch(_relu2_backward_kernel, grid_for(x.size), THREADS, dy.reshape(-1), x.reshape(-1),
               dx.reshape(-1), x.dtype.type(0))
    return dx


# ---- SwiGLU -------------------------------------------------------------------------------------
@cuda.jit(device=True)
def _sigmoid(g, one):
    """1 / (1 + e^-g) as the reference computes it: from e = e^-|g|, which never overflows."""
    e = math.exp(-abs(g))
    return one / (one + e) if g >= 0 else e / (one + e)


@cuda.jit(cache=True)
def _swiglu_forward_kernel(gate, up, y, one):
    # gate, up, y: (N,) flat
    for i in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
        g = gate[i]
        y[i] = g * _sigmoid(g, one) * up[i]


@cuda.jit(cache=True)
def _swiglu_backward_kernel(dy, gate, up, dgate, dup, one):
    # dgate = dy u s (1 + g (1 - s)),  dup = dy g s
    for i in range(cuda.grid(1), dy.shape[0], cuda.gridsize(1)):
        g, u, d = gate[i], up[i], dy[i]
        s = _sigmoid(g, one)
        dgate[i] = d * u * s * (one + g * (one - s))
        dup[i] = d * (g * s)


def _same(*arrays):
    return floats(*arrays) and all(a.shape == arrays[0].shape for a in arrays)


@implements("swiglu_forward", device="cuda", supports=lambda gate, up: _same(gate, up))
def swiglu_forward(gate, up):
    cp = cupy()
    y = cp.empty(gate.shape, dtype=gate.dtype)
    if y.size:
        launch(_swiglu_forward_kernel, grid_for(y.size), THREADS, *_flat(cp, gate, up),
               y.reshape(-1), gate.dtype.type(1.0))
    return y


@implements("swiglu_backward", device="cuda", supports=lambda dy, gate, up: _same(dy, gate, up))
def swiglu_backward(dy, gate, up):
    cp = cupy()
    dgate = cp.empty(gate.shape, dtype=gate.dtype)
    dup = cp.empty(gate.shape, dtype=gate.dtype)
    if dgate.size:
        launch(_swiglu_backward_kernel, grid_for(dgate.size), THREADS, *_flat(cp, dy, gate, up),
               dgate.reshape(-1), dup.reshape(-1), gate.dtype.type(1.0))
    return dgate, dup
