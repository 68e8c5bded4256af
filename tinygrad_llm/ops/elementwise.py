"""Elementwise ops: arithmetic, powers, exp/log, and the smooth activations.

Each op keeps its math inline with a one-line derivative comment. Gradients are returned in the
broadcast shape of the output; the backward walk sums them back to each input's shape
(`tensor.unbroadcast`), so no op here deals with broadcasting.
"""
from ..backend import array_module, device_of, to_device
from ..tensor import Function

__all__ = ["AddOp", "SubOp", "MulOp", "DivOp", "NegOp", "PowOp", "PowScalarOp", "ExpOp", "LogOp",
           "SqrtOp", "TanhOp", "SigmoidOp", "ReluOp", "SiluOp", "AbsOp", "ClampOp", "WhereOp",
           "MaskedFillOp", "CastOp", "ToDeviceOp", "sigmoid"]


def _raise_not_broadcastable(name, a, b):
    """The error of a binary op whose operands don't broadcast, naming both shapes (NumPy's
    message does not say which op failed). Called only on the error path."""
    raise ValueError(f"{name}: operands of shapes {tuple(a.shape)} and {tuple(b.shape)} do not "
                     "broadcast together") from None


class AddOp(Function):
    # y = a + b   da = dy   db = dy
    @staticmethod
    def forward(ctx, a, b):
        try:
            return a + b
        except ValueError:
            _raise_not_broadcastable("add", a, b)

    @staticmethod
    def backward(ctx, dy):
        return dy, dy


class SubOp(Function):
    # y = a - b   da = dy   db = -dy
    @staticmethod
    def forward(ctx, a, b):
        try:
            return a - b
        except ValueError:
            _raise_not_broadcastable("sub", a, b)

    @staticmethod
    def backward(ctx, dy):
        return dy, (-dy if ctx.needs_grad[1] else None)


class MulOp(Function):
    # y = a * b   da = dy * b   db = dy * a
    @staticmethod
    def forward(ctx, a, b):
        ctx.save(a, b)
        try:
            return a * b
        except ValueError:
            _raise_not_broadcastable("mul", a, b)

    @staticmethod
    def backward(ctx, dy):
        a, b = ctx.saved
        return (dy * b if ctx.needs_grad[0] else None), (dy * a if ctx.needs_grad[1] else None)


class DivOp(Function):
    # y = a / b   da = dy / b   db = -dy * a / b^2 = -da * y
    @staticmethod
    def forward(ctx, a, b):
        try:
            y = a / b
        except ValueError:
            _raise_not_broadcastable("div", a, b)
        ctx.save(b, y)
        return y

    @staticmethod
    def backward(ctx, dy):
        b, y = ctx.saved
        da = dy / b
        return (da if ctx.needs_grad[0] else None), (-da * y if ctx.needs_grad[1] else None)


class NegOp(Function):
    # y = -x   dx = -dy
    @staticmethod
    def forward(ctx, x):
        return -x

    @staticmethod
    def backward(ctx, dy):
        return -dy


class PowScalarOp(Function):
    # y = x^p (p a number)   dx = dy * p * x^(p-1)
    @staticmethod
    def forward(ctx, x, exponent):
        ctx.p = exponent
        ctx.save(x)
        return x ** exponent

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved
        p = ctx.p
        if p == 2:
            return dy * (2 * x)
        return dy * (p * x ** (p - 1))


class PowOp(Function):
    # y = a^b   da = dy * b * a^(b-1)   db = dy * y * log(a)   (a > 0 where db is wanted)
    @staticmethod
    def forward(ctx, a, b):
        try:
            y = a ** b
        except ValueError:
            _raise_not_broadcastable("pow", a, b)
        ctx.save(a, b, y)
        return y

    @staticmethod
    def backward(ctx, dy):
        a, b, y = ctx.saved
        xp = array_module(dy)
        da = dy * b * a ** (b - 1) if ctx.needs_grad[0] else None
        db = dy * y * xp.log(a) if ctx.needs_grad[1] else None
        return da, db


class ExpOp(Function):
    # y = e^x   dx = dy * y
    @staticmethod
    def forward(ctx, x):
        y = array_module(x).exp(x)
        ctx.save(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        return dy * ctx.saved[0]


class LogOp(Function):
    # y = ln x   dx = dy / x
    @staticmethod
    def forward(ctx, x):
        ctx.save(x)
        return array_module(x).log(x)

    @staticmethod
    def backward(ctx, dy):
        return dy / ctx.saved[0]


class SqrtOp(Function):
    # y = sqrt x   dx = dy / (2 y)
    @staticmethod
    def forward(ctx, x):
        y = array_module(x).sqrt(x)
        ctx.save(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        return dy / (2 * ctx.saved[0])


class TanhOp(Function):
    # y = tanh x   dx = dy * (1 - y^2)
    @staticmethod
    def forward(ctx, x):
        y = array_module(x).tanh(x)
        ctx.save(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        y = ctx.saved[0]
        return dy * (1 - y * y)


def sigmoid(x):
    """1 / (1 + e^-x) without overflow: for x < 0 it is computed as e^x / (1 + e^x)."""
    xp = array_module(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


class SigmoidOp(Function):
    # y = 1 / (1 + e^-x)   dx = dy * y * (1 - y)
    @staticmethod
    def forward(ctx, x):
        y = sigmoid(x)
        ctx.save(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        y = ctx.saved[0]
        return dy * y * (1 - y)


class ReluOp(Function):
    # y = max(x, 0)   dx = dy * [x > 0]
    @staticmethod
    def forward(ctx, x):
        y = array_module(x).maximum(x, 0)
        ctx.save(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        return dy * (ctx.saved[0] > 0)


class SiluOp(Function):
    # y = x * s, s = sigmoid(x)   dx = dy * s * (1 + x * (1 - s))   (Elfwing et al., 2018)
    @staticmethod
    def forward(ctx, x):
        s = sigmoid(x)
        ctx.save(x, s)
        return x * s

    @staticmethod
    def backward(ctx, dy):
        x, s = ctx.saved
        return dy * s * (1 + x * (1 - s))


class AbsOp(Function):
    # y = |x|   dx = dy * sign(x)
    @staticmethod
    def forward(ctx, x):
        ctx.save(x)
        return array_module(x).abs(x)

    @staticmethod
    def backward(ctx, dy):
        return dy * array_module(dy).sign(ctx.saved[0])


class ClampOp(Function):
    # y = min(max(x, lo), hi)   dx = dy where lo <= x <= hi, else 0
    @staticmethod
    def forward(ctx, x, lo=None, hi=None):
        ctx.save(x)
        ctx.lo, ctx.hi = lo, hi
        return array_module(x).clip(x, lo, hi)

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved
        keep = True
        if ctx.lo is not None:
            keep = x >= ctx.lo
        if ctx.hi is not None:
            keep = keep & (x <= ctx.hi)
        return dy * keep


class WhereOp(Function):
    # y = cond ? a : b   da = cond ? dy : 0   db = cond ? 0 : dy
    @staticmethod
    def forward(ctx, cond, a, b):
        ctx.save(cond)
        return array_module(a).where(cond, a, b)

    @staticmethod
    def backward(ctx, dy):
        (cond,) = ctx.saved
        xp = array_module(dy)
        zero = xp.zeros((), dtype=dy.dtype)
        da = xp.where(cond, dy, zero) if ctx.needs_grad[1] else None
        db = xp.where(cond, zero, dy) if ctx.needs_grad[2] else None
        return None, da, db


class MaskedFillOp(Function):
    # y = mask ? value : x   dx = mask ? 0 : dy     (mask broadcasts against x)
    @staticmethod
    def forward(ctx, x, mask, value):
        xp = array_module(x)
        ctx.save(mask)
        return xp.where(mask, xp.asarray(value, dtype=x.dtype), x)

    @staticmethod
    def backward(ctx, dy):
        (mask,) = ctx.saved
        xp = array_module(dy)
        return xp.where(mask, xp.zeros((), dtype=dy.dtype), dy), None


class CastOp(Function):
    # y = x as dtype   dx = dy as x's dtype
    @staticmethod
    def forward(ctx, x, dtype):
        ctx.dtype = x.dtype
        return x.astype(dtype)

    @staticmethod
    def backward(ctx, dy):
        return dy.astype(ctx.dtype)


class ToDeviceOp(Function):
    # y = x on another device   dx = dy moved back
    @staticmethod
    def forward(ctx, x, device):
        ctx.device = device_of(x)
        return to_device(x, device)

    @staticmethod
    def backward(ctx, dy):
        return to_device(dy, ctx.device)
