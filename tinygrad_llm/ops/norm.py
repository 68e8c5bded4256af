"""Layer normalisation and RMS normalisation over the last axis.

---- LayerNorm (Ba, Kiros & Hinton, 2016) --------------------------------------------------
  forward:  mu = mean(x),  r = 1 / sqrt(mean((x - mu)^2) + eps)     x: (N, C)  w, b: (C,)
            xh = (x - mu) * r,   y = xh * w + b                       mu, r: (N,)
  backward: g = dy * w
            dx = r * (g - mean(g) - xh * mean(g * xh))
            dw = sum over N of dy * xh,   db = sum over N of dy

---- RMSNorm (Zhang & Sennrich, 2019) --------------------------------------------------------
  forward:  r = 1 / sqrt(mean(x^2) + eps),   y = x * r * w           r: (N,)
  backward: xh = x * r,  g = dy * w
            dx = r * (g - xh * mean(g * xh)),   dw = sum over N of dy * xh

Both save only the per-row statistics; xh is recomputed in backward. Inputs of any leading shape
are viewed as (N, C) rows.
"""
from ..backend import array_module
from ..kernels import kernel
from ..tensor import Function

__all__ = ["LayerNormOp", "RMSNormOp", "layer_norm_forward", "layer_norm_backward",
           "rms_norm_forward", "rms_norm_backward"]


@kernel("layer_norm_forward")        # fast versions: kernels/cpu/norm.py
def layer_norm_forward(x, w, b, eps):
    """x: (N, C), w: (C,), b: (C,) or None -> y (N, C), mu (N,), r (N,)."""
    xp = array_module(x)
    mu = x.mean(axis=1)
    xc = x - mu[:, None]
    r = 1 / xp.sqrt((xc * xc).mean(axis=1) + eps)
    y = xc * r[:, None] * w
    return (y if b is None else y + b), mu, r


@kernel("layer_norm_backward")
def layer_norm_backward(dy, x, w, mu, r, has_bias):
    """dy, x: (N, C) -> dx (N, C), dw (C,), db (C,) or None."""
    xh = (x - mu[:, None]) * r[:, None]
    g = dy * w
    dx = r[:, None] * (g - g.mean(axis=1, keepdims=True)
                       - xh * (g * xh).mean(axis=1, keepdims=True))
    return dx, (dy * xh).sum(axis=0), (dy.sum(axis=0) if has_bias else None)


@kernel("rms_norm_forward")
def rms_norm_forward(x, w, eps):
    """x: (N, C), w: (C,) -> y (N, C), r (N,)."""
    xp = array_module(x)
    r = 1 / xp.sqrt((x * x).mean(axis=1) + eps)
    return x * r[:, None] * w, r


@kernel("rms_norm_backward")
def rms_norm_backward(dy, x, w, r):
    """dy, x: (N, C) -> dx (N, C), dw (C,)."""
    xh = x * r[:, None]
    g = dy * w
    return r[:, None] * (g - xh * (g * xh).mean(axis=1, keepdims=True)), (dy * xh).sum(axis=0)


def _rows(x):
    return x.reshape(-1, x.shape[-1])


def _check_weight(name, x, w):
    if w.shape != (x.shape[-1],):
        raise ValueError(f"{name}: weight has shape {w.shape}, expected ({x.shape[-1]},) to match "
                         f"the last dim of the input {x.shape}")


class LayerNormOp(Function):
    @staticmethod
    def forward(ctx, x, w, b, eps=1e-5):
        _check_weight("layer_norm", x, w)
        if b is not None:
            _check_weight("layer_norm bias", x, b)
        y, mu, r = layer_norm_forward(_rows(x), w, b, eps)
        ctx.save(x, w, mu, r)
        ctx.has_bias = b is not None
        return y.reshape(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x, w, mu, r = ctx.saved
        dx, dw, db = layer_norm_backward(_rows(dy), _rows(x), w, mu, r, ctx.has_bias)
        return dx.reshape(x.shape), dw, db


class RMSNormOp(Function):
    @staticmethod
    def forward(ctx, x, w, eps=1e-6):
        _check_weight("rms_norm", x, w)
        y, r = rms_norm_forward(_rows(x), w, eps)
        ctx.save(x, w, r)
        return y.reshape(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x, w, r = ctx.saved
        dx, dw = rms_norm_backward(_rows(dy), _rows(x), w, r)
        return dx.reshape(x.shape), dw
