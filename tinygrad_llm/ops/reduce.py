"""Reductions: sum, mean, max, var over an axis (int, tuple or None) with NumPy's keepdims.

Backward spreads the incoming gradient back over the reduced axes: `_expand` puts the reduced
axes back (as size 1) and broadcasts to the input shape.
"""
from ..backend import array_module
from ..tensor import Function

__all__ = ["SumOp", "MeanOp", "MaxOp", "VarOp"]


def _axes(axis, ndim):
    """Normalise `axis` to a sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    for a in axes:
        if not -ndim <= a < max(ndim, 1):
            raise ValueError(f"axis: {axis} is out of range for a tensor with {ndim} dims")
    return tuple(sorted(a % max(ndim, 1) for a in axes))


def _expand(dy, shape, axes, keepdims):
    """dy of the reduced shape -> a fresh array of `shape` (the input's)."""
    xp = array_module(dy)
    if not keepdims:
        dy = dy.reshape([1 if i in axes else n for i, n in enumerate(shape)])
    return xp.broadcast_to(dy, shape).copy()


def _count(shape, axes):
    n = 1
    for a in axes:
        n *= shape[a]
    return n


class SumOp(Function):
    # y = sum_axes x   dx = dy broadcast over the reduced axes
    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        ctx.shape, ctx.keepdims = x.shape, keepdims
        ctx.axes = _axes(axis, x.ndim)
        return x.sum(axis=ctx.axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, dy):
        return _expand(dy, ctx.shape, ctx.axes, ctx.keepdims)


class MeanOp(Function):
    # y = sum_axes x / n   dx = dy / n broadcast over the reduced axes
    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        ctx.shape, ctx.keepdims = x.shape, keepdims
        ctx.axes = _axes(axis, x.ndim)
        return x.mean(axis=ctx.axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, dy):
        return _expand(dy / _count(ctx.shape, ctx.axes), ctx.shape, ctx.axes, ctx.keepdims)


class MaxOp(Function):
    # y = max_axes x   dx = dy / k at the k positions that reach the max (ties share), else 0
    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        ctx.axes, ctx.keepdims = _axes(axis, x.ndim), keepdims
        if x.size == 0:
            raise ValueError("max: the tensor is empty")
        y = x.max(axis=ctx.axes, keepdims=True)
        ctx.save(x, y)
        return y if keepdims else y.reshape([n for i, n in enumerate(y.shape) if i not in ctx.axes])

    @staticmethod
    def backward(ctx, dy):
        x, y = ctx.saved
        hit = x == y
        count = hit.sum(axis=ctx.axes, keepdims=True)
        dy = dy.reshape(y.shape)
        return hit * (dy / count.astype(dy.dtype))


class VarOp(Function):
    # y = sum_axes (x - m)^2 / (n - correction)   dx = dy * 2 (x - m) / (n - correction)
    # correction=0 is NumPy's default (population variance); torch.var defaults to 1.
    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False, correction=0):
        ctx.axes, ctx.keepdims, ctx.shape = _axes(axis, x.ndim), keepdims, x.shape
        n = _count(x.shape, ctx.axes) - correction
        if n <= 0:
            raise ValueError(f"var: {_count(x.shape, ctx.axes)} elements with correction "
                             f"{correction} leave no degrees of freedom")
        centered = x - x.mean(axis=ctx.axes, keepdims=True)
        ctx.save(centered)
        ctx.n = n
        return (centered * centered).sum(axis=ctx.axes, keepdims=keepdims) / n

    @staticmethod
    def backward(ctx, dy):
        (centered,) = ctx.saved
        if not ctx.keepdims:
            dy = dy.reshape([1 if i in ctx.axes else n for i, n in enumerate(ctx.shape)])
        return dy * (2 / ctx.n) * centered
