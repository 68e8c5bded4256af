"""Softmax, log-softmax and the fused cross-entropy loss.

All three subtract the row max before exponentiating, so logits of magnitude 1e4 (or -inf from a
mask) stay finite. Cross-entropy never builds the probability matrix in forward: it keeps one
logsumexp per row and backward recomputes softmax from it, in one pass over the logits.

    softmax:      s = e^(x - m) / sum e^(x - m)          dx = s * (dy - sum(dy * s))
    log_softmax:  y = x - m - log sum e^(x - m)          dx = dy - e^y * sum(dy)
    cross_entropy (label smoothing eps, V classes, target t, lse = logsumexp of the row):
                  loss = (1 - eps) * (lse - x_t) + eps * (lse - mean(x))
                  dx   = g * (softmax(x) - (1 - eps) * onehot(t) - eps / V)
"""
from ..backend import array_module
from ..kernels import kernel
from ..tensor import Function

__all__ = ["SoftmaxOp", "LogSoftmaxOp", "CrossEntropyOp", "cross_entropy_forward",
           "cross_entropy_backward", "REDUCTIONS"]

REDUCTIONS = ("mean", "sum", "none")


class SoftmaxOp(Function):
    @staticmethod
    def forward(ctx, x, axis=-1):
        xp = array_module(x)
        e = xp.exp(x - x.max(axis=axis, keepdims=True))
        s = e / e.sum(axis=axis, keepdims=True)
        ctx.save(s)
        ctx.axis = axis
        return s

    @staticmethod
    def backward(ctx, dy):
        (s,) = ctx.saved
        return s * (dy - (dy * s).sum(axis=ctx.axis, keepdims=True))


class LogSoftmaxOp(Function):
    @staticmethod
    def forward(ctx, x, axis=-1):
        xp = array_module(x)
        shifted = x - x.max(axis=axis, keepdims=True)
        y = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))
        ctx.save(y)
        ctx.axis = axis
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved
        xp = array_module(dy)
        return dy - xp.exp(y) * dy.sum(axis=ctx.axis, keepdims=True)


@kernel("cross_entropy_forward")     # fast versions: kernels/{cpu,cuda}/softmax.py
def cross_entropy_forward(logits, targets, ignore_index, label_smoothing):
    """logits: (N, V), targets: (N,) int -> loss per row (N,) (0 where ignored), lse (N,)."""
    xp = array_module(logits)
    m = logits.max(axis=1, keepdims=True)
    lse = (m + xp.log(xp.exp(logits - m).sum(axis=1, keepdims=True)))[:, 0]
    valid = targets != ignore_index
    picked = xp.take_along_axis(logits, xp.where(valid, targets, 0)[:, None], axis=1)[:, 0]
    loss = (1 - label_smoothing) * (lse - picked)
    if label_smoothing:
        loss = loss + label_smoothing * (lse - logits.mean(axis=1))
    return xp.where(valid, loss, 0).astype(logits.dtype), lse


@kernel("cross_entropy_backward")
def cross_entropy_backward(dloss, logits, targets, lse, ignore_index, label_smoothing):
    """dloss: (N,) gradient of each row's loss -> dlogits (N, V)."""
    xp = array_module(logits)
    n, v = logits.shape
    valid = targets != ignore_index
    target = xp.exp(logits - lse[:, None])                  # softmax, recomputed
    if label_smoothing:
        target -= label_smoothing / v
    rows = xp.arange(n)
    target[rows, xp.where(valid, targets, 0)] -= 1 - label_smoothing
    return target * xp.where(valid, dloss, 0)[:, None].astype(logits.dtype)


class CrossEntropyOp(Function):
    """Mean (over non-ignored rows), sum or per-row negative log-likelihood of the targets."""

    @staticmethod
    def forward(ctx, logits, targets, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        # logits: (N, V), targets: (N,) ints
        xp = array_module(logits)
        loss, lse = cross_entropy_forward(logits, targets, ignore_index, label_smoothing)
        ctx.save(logits, targets, lse)
        ctx.ignore_index, ctx.reduction = ignore_index, reduction
        ctx.label_smoothing = label_smoothing
        if reduction == "none":
            return loss
        if reduction == "sum":
            return loss.sum()
        # the count stays an array: on a GPU, int() of it would wait for the device
        count = (targets != ignore_index).sum().astype(logits.dtype)
        ctx.count = xp.maximum(count, 1)
        return xp.where(count > 0, loss.sum() / ctx.count, xp.nan).astype(logits.dtype)

    @staticmethod
    def backward(ctx, dy):
        logits, targets, lse = ctx.saved
        xp = array_module(dy)
        if ctx.reduction == "none":
            dloss = dy
        elif ctx.reduction == "sum":
            dloss = xp.broadcast_to(dy, targets.shape)
        else:
            dloss = xp.broadcast_to(dy / ctx.count, targets.shape)
        dlogits = cross_entropy_backward(dloss, logits, targets, lse, ctx.ignore_index,
                                         ctx.label_smoothing)
        return dlogits, None
