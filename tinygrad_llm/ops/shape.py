"""Shape ops: reshape, permute, expand, indexing, cat / stack / split.

Their gradients only move numbers around: reshape and permute undo themselves, indexing scatters
the gradient back (adding where an integer index repeats), cat splits it, stack unstacks it.
"""
from ..backend import array_module
from ..tensor import Function, IndexedGrad, Tensor

__all__ = ["ReshapeOp", "PermuteOp", "ExpandOp", "GetItemOp", "CatOp", "StackOp", "index_data",
           "split"]


class ReshapeOp(Function):
    makes_view = True

    # y = x viewed as `shape`   dx = dy viewed as x's shape
    @staticmethod
    def forward(ctx, x, shape):
        ctx.shape = x.shape
        try:
            return x.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot view a tensor of shape {x.shape} "
                             f"({x.size} elements) as {shape}") from None

    @staticmethod
    def backward(ctx, dy):
        return dy.reshape(ctx.shape)


class PermuteOp(Function):
    makes_view = True

    # y = x with axes permuted   dx = dy with the inverse permutation
    @staticmethod
    def forward(ctx, x, axes=None):
        axes = tuple(reversed(range(x.ndim))) if axes is None else tuple(a % x.ndim for a in axes)
        if sorted(axes) != list(range(x.ndim)):
            raise ValueError(f"permute: axes {axes} are not a permutation of {x.ndim} dims")
        ctx.inverse = tuple(sorted(range(x.ndim), key=axes.__getitem__))
        return x.transpose(axes)

    @staticmethod
    def backward(ctx, dy):
        return dy.transpose(ctx.inverse)


class ExpandOp(Function):
    makes_view = True

    # y = x broadcast to `shape` (a view)   dx = dy, summed back to x's shape by the backward walk
    @staticmethod
    def forward(ctx, x, shape):
        shape = tuple(x.shape[i - len(shape) + x.ndim] if n == -1 else n
                      for i, n in enumerate(shape))
        try:
            return array_module(x).broadcast_to(x, shape)
        except ValueError:
            raise ValueError(f"expand: cannot broadcast shape {x.shape} to {shape}") from None

    @staticmethod
    def backward(ctx, dy):
        return dy


def index_data(index):
    """An index with Tensors and lists replaced by arrays, ready for array indexing."""
    if isinstance(index, tuple):
        return tuple(index_data(i) for i in index)
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, list):
        import numpy as np
        return np.asarray(index)
    return index


def _has_int_array(index):
    parts = index if isinstance(index, tuple) else (index,)
    return any(hasattr(i, "dtype") and i.dtype.kind in "iu" for i in parts)


class GetItemOp(Function):
    makes_view = True

    # y = x[index]   dx = zeros like x, then dx[index] += dy (scatter-add: repeated indices add up)
    @staticmethod
    def forward(ctx, x, index):
        ctx.shape, ctx.dtype, ctx.index = x.shape, x.dtype, index
        if _has_int_array(index):
            xp = array_module(x)
            ctx.index = tuple(xp.asarray(i) if hasattr(i, "dtype") else i
                              for i in (index if isinstance(index, tuple) else (index,)))
        return x[ctx.index]

    @staticmethod
    def backward(ctx, dy):
        # slices, ints and boolean masks select each element once; integer arrays may repeat
        return IndexedGrad(ctx.index, dy, scatter=_has_int_array(ctx.index))


def _check_same_shapes(name, arrays, axis, skip_axis):
    ref = arrays[0].shape
    for a in arrays[1:]:
        if a.ndim != len(ref) or any(n != m for i, (n, m) in enumerate(zip(a.shape, ref))
                                     if not (skip_axis and i == axis)):
            what = "all but the cat axis" if skip_axis else "all dims"
            raise ValueError(f"{name}: shapes {ref} and {a.shape} differ in {what} "
                             f"(axis={axis}); {[x.shape for x in arrays]}")


class CatOp(Function):
    # y = [x1, x2, ...] joined along axis   dxi = the slice of dy that xi filled
    @staticmethod
    def forward(ctx, *xs, axis=0):
        if not xs:
            raise ValueError("cat: expected at least one tensor")
        axis = axis % xs[0].ndim
        _check_same_shapes("cat", xs, axis, skip_axis=True)
        ctx.axis = axis
        ctx.bounds = [0]
        for x in xs:
            ctx.bounds.append(ctx.bounds[-1] + x.shape[axis])
        return array_module(xs[0]).concatenate(xs, axis=axis)

    @staticmethod
    def backward(ctx, dy):
        pre = (slice(None),) * ctx.axis
        return tuple(dy[pre + (slice(a, b),)] for a, b in zip(ctx.bounds, ctx.bounds[1:]))


class StackOp(Function):
    # y = [x1, x2, ...] stacked on a new axis   dxi = dy taken at index i of that axis
    @staticmethod
    def forward(ctx, *xs, axis=0):
        if not xs:
            raise ValueError("stack: expected at least one tensor")
        _check_same_shapes("stack", xs, axis, skip_axis=False)
        ctx.axis = axis % (xs[0].ndim + 1)
        return array_module(xs[0]).stack(xs, axis=ctx.axis)

    @staticmethod
    def backward(ctx, dy):
        xp = array_module(dy)
        return tuple(xp.take(dy, i, axis=ctx.axis) for i in range(dy.shape[ctx.axis]))


def split(x, split_size_or_sections, axis=0):
    """Pieces of `x` along `axis`: of size `split_size` (the last may be smaller), or of the
    listed sizes, as torch.split. Each piece is a slice, so gradients flow back to `x`."""
    n = x.shape[axis]
    if isinstance(split_size_or_sections, int):
        if split_size_or_sections <= 0:
            raise ValueError(f"split: split_size must be positive, got {split_size_or_sections}")
        sizes = [min(split_size_or_sections, n - i) for i in range(0, n, split_size_or_sections)]
    else:
        sizes = list(split_size_or_sections)
        if sum(sizes) != n:
            raise ValueError(f"split: sections {sizes} sum to {sum(sizes)}, but axis {axis} "
                             f"has size {n}")
    pre = (slice(None),) * (axis % x.ndim)
    pieces, start = [], 0
    for s in sizes:
        pieces.append(x[pre + (slice(start, start + s),)])
        start += s
    return pieces
