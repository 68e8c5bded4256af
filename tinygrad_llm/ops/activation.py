"""GELU (Hendrycks & Gimpel, 2016), exact and tanh-approximated, with the erf it needs.

NumPy has no erf, so `erf` below computes it to float64 precision from array operations that run on
NumPy and CuPy alike: a positive-term series below |x| = 2.5 and a continued fraction for erfc above
(Abramowitz & Stegun 7.1.6 and 7.1.14). The Numba kernel uses math.erf instead; tests hold the two
to float64 rounding.

    exact:  y = x * Phi(x),  Phi(x) = (1 + erf(x / sqrt 2)) / 2
            dx = dy * (Phi(x) + x * phi(x)),   phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
    tanh:   u = sqrt(2/pi) * (x + 0.044715 x^3),  t = tanh(u),  y = x * (1 + t) / 2
            dx = dy * ((1 + t) / 2 + x * (1 - t^2) * sqrt(2/pi) * (1 + 3 * 0.044715 x^2) / 2)
"""
import math

from ..backend import array_module
from ..kernels import kernel
from ..tensor import Function

__all__ = ["GeluOp", "erf", "gelu_forward", "gelu_backward", "GELU_APPROXIMATIONS"]

GELU_APPROXIMATIONS = ("none", "tanh")
_SERIES_TERMS, _FRACTION_TERMS, _SPLIT = 40, 30, 2.5
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def erf(x):
    """erf elementwise, to float64 rounding (about 1e-15), on NumPy or CuPy arrays."""
    xp = array_module(x)
    ax = xp.abs(x)
    # |x| < 2.5: erf x = 2/sqrt(pi) e^{-x^2} sum_n 2^n x^{2n+1} / (1*3*...*(2n+1)), all terms > 0
    xs = xp.minimum(ax, _SPLIT)
    x2 = xs * xs
    term, total = xs, xs
    for n in range(_SERIES_TERMS):
        term = term * (2 * x2 / (2 * n + 3))
        total = total + term
    small = (2 / math.sqrt(math.pi)) * xp.exp(-x2) * total
    # |x| >= 2.5: erfc x = e^{-x^2}/sqrt(pi) / (x + (1/2)/(x + 1/(x + (3/2)/(x + ...)))), bottom up
    xl = xp.maximum(ax, _SPLIT)
    frac = xl
    for k in range(_FRACTION_TERMS, 0, -1):
        frac = xl + (k / 2) / frac
    large = 1 - xp.exp(-xl * xl) / (math.sqrt(math.pi) * frac)
    return xp.copysign(xp.where(ax < _SPLIT, small, large), x)


@kernel("gelu_forward")              # fast version: kernels/cpu/activation.py
def gelu_forward(x, approximate):
    """x: any shape -> y, same shape and dtype."""
    xp = array_module(x)
    if approximate == "tanh":
        return 0.5 * x * (1 + xp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))
    return 0.5 * x * (1 + erf(x * _INV_SQRT_2))


@kernel("gelu_backward")
def gelu_backward(dy, x, approximate):
    """dy, x: same shape -> dx."""
    xp = array_module(x)
    if approximate == "tanh":
        t = xp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x))
        du = _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)
        return dy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du)
    cdf = 0.5 * (1 + erf(x * _INV_SQRT_2))
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
