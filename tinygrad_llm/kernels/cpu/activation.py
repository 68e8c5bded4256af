"""GELU and the squared ReLU, forward and backward in one pass each (reference:
ops/activation.py).

Speed: libm's tanh/erf/exp are scalar calls that stop LLVM from vectorising the loop. For float32
the loop uses rational approximations instead (pure multiply-add-divide, so it vectorises):
tanh with degree 13/6 odd/even polynomials on |x| <= 7.905 (the form used by Eigen), max error
3.4e-7, and erf with degree 13/8 on |x| <= 4, max error 4.2e-7: within a few float32 ulps of the
exact values; the normal density's exp is _common's exp_f32. float64 (gradcheck) uses libm's exact
functions.
"""
import math

import numpy as np
from numba import prange

from .. import implements
from ._common import exp_f32, floats, jit, jit_parallel

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@jit
def _tanh_f32(x):
    # tanh(x) ~ x * P(x^2) / Q(x^2) for |x| < 7.905; exactly +-1 beyond (so 1 - t^2 is 0 there)
    big = np.float32(7.90531110763549805)
    if x >= big:
        return np.float32(1.0)
    if x <= -big:
        return np.float32(-1.0)
    x2 = x * x
    p = np.float32(-2.76076847742355e-16)
    p = p * x2 + np.float32(2.00018790482477e-13)
    p = p * x2 + np.float32(-8.60467152213735e-11)
    p = p * x2 + np.float32(5.12229709037114e-08)
    p = p * x2 + np.float32(1.48572235717979e-05)
    p = p * x2 + np.float32(6.37261928875436e-04)
    p = p * x2 + np.float32(4.89352455891786e-03)
    q = np.float32(1.19825839466702e-06)
    q = q * x2 + np.float32(1.18534705686654e-04)
    q = q * x2 + np.float32(2.26843463243900e-03)
    q = q * x2 + np.float32(4.89352518554385e-03)
    return x * p / q


@jit
def _erf_f32(x):
    # erf(x) ~ x * P(x^2) / Q(x^2) on |x| < 4; exactly +-1 beyond (as in float32 arithmetic)
    if x >= np.float32(4.0):
        return np.float32(1.0)
    if x <= np.float32(-4.0):
        return np.float32(-1.0)
    x2 = x * x
    p = np.float32(-2.72614225801306e-10)
    p = p * x2 + np.float32(2.77068142495902e-08)
    p = p * x2 + np.float32(-2.10102402082508e-06)
    p = p * x2 + np.float32(-5.69250639462346e-05)
    p = p * x2 + np.float32(-7.34990630326855e-04)
    p = p * x2 + np.float32(-2.95459980854025e-03)
    p = p * x2 + np.float32(-1.60960333262415e-02)
    q = np.float32(-1.45660718464996e-05)
    q = q * x2 + np.float32(-2.13374055278905e-04)
    q = q * x2 + np.float32(-1.68282697438203e-03)
    q = q * x2 + np.float32(-7.37332916720468e-03)
    q = q * x2 + np.float32(-1.42647390514189e-02)
    return x * p / q


# ---- float32 loops (vectorised approximations) --------------------------------------------------
@jit_parallel
def _gelu_tanh_forward_f32(x, y):
    # x, y: (N,) flat
    c0, c1, h = np.float32(_SQRT_2_OVER_PI), np.float32(0.044715), np.float32(0.5)
    for i in prange(x.size):
        v = x[i]
        y[i] = h * v * (np.float32(1.0) + _tanh_f32(c0 * (v + c1 * v * v * v)))


@jit_parallel
def _gelu_tanh_backward_f32(dy, x, dx):
    c0, c1, h = np.float32(_SQRT_2_OVER_PI), np.float32(0.044715), np.float32(0.5)
    one, three = np.float32(1.0), np.float32(3.0)
    for i in prange(x.size):
        v = x[i]
        t = _tanh_f32(c0 * (v + c1 * v * v * v))
        du = c0 * (one + three * c1 * v * v)
        dx[i] = dy[i] * (h * (one + t) + h * v * (one - t * t) * du)


@jit_parallel
def _gelu_erf_forward_f32(x, y):
    r2, h = np.float32(_INV_SQRT_2), np.float32(0.5)
    for i in prange(x.size):
        v = x[i]
        y[i] = h * v * (np.float32(1.0) + _erf_f32(v * r2))


@jit_parallel
def _gelu_erf_backward_f32(dy, x, dx):
    r2, h, rp = np.float32(_INV_SQRT_2), np.float32(0.5), np.float32(_INV_SQRT_2PI)
    for i in prange(x.size):
        v = x[i]
        cdf = h * (np.float32(1.0) + _erf_f32(v * r2))
        dx[i] = dy[i] * (cdf + v * rp * exp_f32(-h * v * v))


# ---- float64 loops (libm, exact) ----------------------------------------------------------------
@jit_parallel
def _gelu_forward_f64(x, y, tanh_form):
    for i in prange(x.size):
        v = x[i]
        if tanh_form:
            y[i] = 0.5 * v * (1.0 + math.tanh(_SQRT_2_OVER_PI * (v + 0.044715 * v * v * v)))
        else:
            y[i] = 0.5 * v * (1.0 + math.erf(v * _INV_SQRT_2))


@jit_parallel
def _gelu_backward_f64(dy, x, dx, tanh_form):
    for i in prange(x.size):
        v = x[i]
        if tanh_form:
            t = math.tanh(_SQRT_2_OVER_PI * (v + 0.044715 * v * v * v))
            du = _SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * v * v)
            dx[i] = dy[i] * (0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * du)
        else:
            cdf = 0.5 * (1.0 + math.erf(v * _INV_SQRT_2))
            dx[i] = dy[i] * (cdf + v * _INV_SQRT_2PI * math.exp(-0.5 * v * v))


@implements("gelu_forward", device="cpu", supports=lambda x, approximate: floats(x))
def gelu_forward_cpu(x, approximate):
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    flat_x, flat_y = x.reshape(-1), y.reshape(-1)
    if x.dtype == np.float64:
        _gelu_forward_f64(flat_x, flat_y, approximate == "tanh")
    elif approximate == "tanh":
        _gelu_tanh_forward_f32(flat_x, flat_y)
    else:
        _gelu_erf_forward_f32(flat_x, flat_y)
    return y


@implements("gelu_backward", device="cpu", supports=lambda dy, x, approximate: floats(dy, x))
def gelu_backward_cpu(dy, x, approximate):
    dy, x = np.ascontiguousarray(dy), np.ascontiguousarray(x)
    dx = np.empty_like(x)
    args = (dy.reshape(-1), x.reshape(-1), dx.reshape(-1))
    if x.dtype == np.float64:
        _gelu_backward_f64(*args, approximate == "tanh")
    elif approximate == "tanh":
        _gelu_tanh_backward_f32(*args)
    else:
        _gelu_erf_backward_f32(*args)
    return dx


# ---- squared ReLU: y = max(x, 0)^2,  dx = 2 max(x, 0) dy ----------------------------------------
# One loop per direction serves both dtypes (Numba specialises each on first use): a compare, a
# select and one rounded product, as in the reference, so the results equal it bit for bit (r + r
# is 2 r exactly). `zero` comes in the array's dtype, so a float32 loop stays float32 (a literal
# 0.0 would promote it to float64). `v < zero` is false for NaN, which passes through as in the
# reference's maximum.
@jit_parallel
def _relu2_forward_loop(x, y, zero):
    # x, y: (N,) flat
    for i in prange(x.size):
        v = x[i]
        r = zero if v < zero else v
        y[i] = r * r


@jit_parallel
def _relu2_backward_loop(dy, x, dx, zero):
    # dy, x, dx: (N,) flat
    for i in prange(x.size):
        v = x[i]
        r = zero if v < zero else v
        dx[i] = (r + r) * dy[i]


@implements("relu2_forward", device="cpu", supports=lambda x: floats(x))
def relu2_forward_cpu(x):
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    _relu2_forward_loop(x.reshape(-1), y.reshape(-1), x.dtype.type(0))
    return y


@implements("relu2_backward", device="cpu", supports=lambda dy, x: floats(dy, x))
def relu2_backward_cpu(dy, x):
    dy, x = np.ascontiguousarray(dy), np.ascontiguousarray(x)
    dx = np.empty_like(x)
    _relu2_backward_loop(dy.reshape(-1), x.reshape(-1), dx.reshape(-1), x.dtype.type(0))
    return dx
