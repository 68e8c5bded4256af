"""Dropout (Srivastava et al., 2014), inverted: kept values are scaled by 1 / (1 - p) in training
so that evaluation needs no rescaling.

    forward:  keep ~ Bernoulli(1 - p),  y = x * keep / (1 - p)
    backward: dx = dy * keep / (1 - p)
"""
import numpy as np

from ..tensor import Function

__all__ = ["DropoutOp"]


class DropoutOp(Function):
    @staticmethod
    def forward(ctx, x, p, generator):
        uniform = np.float64 if x.dtype.itemsize == 8 else np.float32   # Generator's two dtypes
        # p in the uniforms' dtype, said explicitly: a float32 uniform against a float64 p can
        # compare differently from against float32(p), and devices must agree on every mask
        keep = generator.random(x.shape, dtype=uniform) >= uniform(p)
        ctx.save(keep)
        ctx.scale = 1.0 / (1.0 - p)
        return x * keep * x.dtype.type(ctx.scale)

    @staticmethod
    def backward(ctx, dy):
        (keep,) = ctx.saved
        return dy * keep * dy.dtype.type(ctx.scale)
