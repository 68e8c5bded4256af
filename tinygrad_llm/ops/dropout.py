"""Dropout (Srivastava et al., 2014), inverted: kept values are scaled by 1 / (1 - p) in training
so that evaluation needs no rescaling.

    forward:  keep ~ Bernoulli(1 - p),  y = x * keep / (1 - p)
    backward: dx = dy * keep / (1 - p)
"""
from ..tensor import Function

__all__ = ["DropoutOp"]


class DropoutOp(Function):
    @staticmethod
    def forward(ctx, x, p, generator):
        uniform = "float64" if x.dtype.itemsize == 8 else "float32"    # Generator's two dtypes
        keep = generator.random(x.shape, dtype=uniform) >= p
        ctx.save(keep)
        ctx.scale = 1.0 / (1.0 - p)
        return x * keep * x.dtype.type(ctx.scale)

    @staticmethod
    def backward(ctx, dy):
        (keep,) = ctx.saved
        return dy * keep * dy.dtype.type(ctx.scale)
