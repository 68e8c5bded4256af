"""GELU (Hendrycks & Gimpel, 2016), exact and tanh-approximated, with the erfc it needs; then
Primer's squared ReLU (So et al., 2021) and SwiGLU's gated activation (Shazeer, 2020).

NumPy has no erf, so `erfc` below builds it from array operations that run on NumPy and CuPy alike.
On CuPy each operation is a kernel launch, so it is one short formula rather than a piecewise one:
for x >= 0,  erfc(x) = e^{-x^2} K / (K + x) P(t),  t = (x - K) / (x + K)  in [-1, 1),
where P is a degree-20 polynomial, the Chebyshev interpolant of erfcx(x) (K + x) / K, computed once
at import from a host erfcx. The map t(x) folds [0, inf) onto [-1, 1) (the substitution of
Weideman, 1994, for the complex error function), where that function is smooth: about 50
launches give a relative error of a few 1e-15 (the series and continued fraction used before
took ~240). The Numba kernels call math.erf / math.erfc; tests/cuda/test_cuda_activation.py holds
this erfc to those within 1e-14.

    exact:  y = x * Phi(x),  Phi(x) = erfc(-x / sqrt 2) / 2
            dx = dy * (Phi(x) + x * phi(x)),   phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
    tanh:   u = sqrt(2/pi) * (x + 0.044715 x^3),  t = tanh(u),  y = x * (1 + t) / 2
            dx = dy * ((1 + t) / 2 + x * (1 - t^2) * sqrt(2/pi) * (1 + 3 * 0.044715 x^2) / 2)
"""
import math

import numpy as np

from ..backend import array_module
from ..kernels import kernel
from ..tensor import Function
from .elementwise import sigmoid

__all__ = ["GeluOp", "Relu2Op", "SwigluOp", "erf", "erfc", "gelu_forward", "gelu_backward",
           "relu2_forward", "relu2_backward", "swiglu_forward", "swiglu_backward",
           "GELU_APPROXIMATIONS"]

GELU_APPROXIMATIONS = ("none", "tanh")
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _erfcx_host(x):
    """e^{x^2} erfc(x) for one float x >= 0, to float64 rounding (used once, at import)."""
    if x < 2.0:
        return math.exp(x * x) * math.erfc(x)
    # Laplace's continued fraction (Abramowitz & Stegun 7.1.14), 60 terms: converged for x >= 2
    frac = x
    for k in range(60, 0, -1):
        frac = x + (k / 2) / frac
    return 1.0 / (math.sqrt(math.pi) * frac)


def _erfc_polynomial(k, degree):
    """Power-basis coefficients (lowest first) of P(t) ~ erfcx(x) (k + x) / k, x = k (1+t)/(1-t).
    Chebyshev nodes keep the interpolant near-best; on [-1, 1] the power basis is well scaled
    (the coefficients' absolute sum is about 1), so Horner loses nothing."""
    def target(t):
        x = k * (1 + t) / (1 - t)
        return np.array([_erfcx_host(v) * (k + v) / k for v in x])
    cheb = np.polynomial.chebyshev
    return cheb.cheb2poly(cheb.chebinterpolate(target, degree)).tolist()


_ERFC_K = 3.0
_ERFC_P = _erfc_polynomial(_ERFC_K, 20)
_ERFC_CLAMP = 28.0      # erfc(28) is below float64's smallest denormal; keeps t finite at x = inf


def erfc(x):
    """erfc elementwise on NumPy or CuPy arrays, in x's dtype. float64 relative error: a few
    1e-15 for |x| < 6, up to 6e-14 near x = 26 (where e^{-x^2} inherits the rounding of x^2)."""
    xp = array_module(x)
    ax = xp.minimum(xp.abs(x), _ERFC_CLAMP)
    ak = ax + _ERFC_K
    t = (ax - _ERFC_K) / ak
    p = _ERFC_P[-1]
    for c in _ERFC_P[-2::-1]:
        p = p * t + c
    tail = xp.exp(-(ax * ax)) * (_ERFC_K / ak) * p          # erfc(|x|)
    return xp.where(x < 0, 2 - tail, tail)


def erf(x):
    """erf elementwise on NumPy or CuPy arrays: 1 - erfc(x) (absolute error below 1e-14)."""
    return 1 - erfc(x)


@kernel("gelu_forward")              # fast versions: kernels/{cpu,cuda}/activation.py
def gelu_forward(x, approximate):
    """x: any shape -> y, same shape and dtype."""
    xp = array_module(x)
    if approximate == "tanh":
        return 0.5 * x * (1 + xp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))
    return x * (0.5 * erfc(x * -_INV_SQRT_2))


@kernel("gelu_backward")
def gelu_backward(dy, x, approximate):
    """dy, x: same shape -> dx."""
    xp = array_module(x)
    if approximate == "tanh":
        t = xp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x))
        du = _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)
        return dy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du)
    cdf = 0.5 * erfc(x * -_INV_SQRT_2)
    pdf = _INV_SQRT_2PI * xp.exp(-0.5 * x * x)
    return dy * (cdf + x * pdf)


class GeluOp(Function):
    @staticmethod
    def forward(ctx, x, approximate="none"):
        if approximate not in GELU_APPROXIMATIONS:
            raise ValueError(f"gelu: approximate must be one of {GELU_APPROXIMATIONS}, "
                             f"got {approximate!r}")
        ctx.save(x)                  # the derivative is recomputed from x: no second buffer kept
        ctx.approximate = approximate
        return gelu_forward(x, approximate)

    @staticmethod
    def backward(ctx, dy):
        return gelu_backward(dy, ctx.saved[0], ctx.approximate)


# ---- squared ReLU (So et al., 2021, Primer) ------------------------------------------------------
#   x: (..., F), the up projection;  r = max(x, 0)
#   forward:  y  = r^2
#   backward: dx = 2 r dy          (0 for x <= 0: y is C^1, so the kink at 0 is in y'' only)
# One pass each way instead of relu, a product and their two backwards over a (B, T, 4C)
# activation. NaN in x or dy gives NaN in y and dx, as the composition did.
@kernel("relu2_forward")             # fast versions: kernels/{cpu,cuda}/activation.py
def relu2_forward(x):
    """x: any shape -> y, same shape and dtype."""
    r = array_module(x).maximum(x, 0)
    return r * r


@kernel("relu2_backward")
def relu2_backward(dy, x):
    """dy, x: same shape -> dx."""
    r = array_module(x).maximum(x, 0)
    return 2 * r * dy


class Relu2Op(Function):
    """Relu2Op.apply(x): max(x, 0)^2, the MLP activation of the speedrun recipe (mlp="relu2")."""

    @staticmethod
    def forward(ctx, x):
        ctx.save(x)                  # r is recomputed from x in backward: forward writes y only
        return relu2_forward(x)

    @staticmethod
    def backward(ctx, dy):
        return relu2_backward(dy, ctx.saved[0])


# ---- SwiGLU: silu(gate) * up ---------------------------------------------------------------------
#   gate, up: (..., F), the gate and up projections;  s = sigmoid(gate)
#   forward:  y = gate * s * up
#   backward: dgate = dy * up * s * (1 + gate * (1 - s)),   dup = dy * gate * s
@kernel("swiglu_forward")            # fast version: kernels/cuda/activation.py
def swiglu_forward(gate, up):
    """gate, up: same shape -> y."""
    return gate * sigmoid(gate) * up


@kernel("swiglu_backward")
def swiglu_backward(dy, gate, up):
    """dy, gate, up: same shape -> dgate, dup."""
    s = sigmoid(gate)
    return dy * up * s * (1 + gate * (1 - s)), dy * (gate * s)


class SwigluOp(Function):
    """SwigluOp.apply(gate, up): Llama's feed-forward activation, one op instead of silu and a
    product (one saved pair, s recomputed in backward)."""

    @staticmethod
    def forward(ctx, gate, up):
        ctx.save(gate, up)
        return swiglu_forward(gate, up)

    @staticmethod
    def backward(ctx, dy):
        return swiglu_backward(dy, *ctx.saved)
