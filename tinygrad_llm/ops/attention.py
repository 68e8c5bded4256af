"""Scaled dot-product attention (Vaswani et al., 2017) with grouped K/V heads (GQA, Ainslie et
al., 2023; MQA, Shazeer, 2019 when there is one K/V head).

  q: (B, H, Tq, D)   k, v: (B, Hkv, Tk, D)   H = Hkv * G: query heads hG .. hG+G-1 share K/V head h
  forward:  S = q k^T * scale (+ mask),  P = softmax(S) row-wise,  o = P v
            lse = logsumexp of each row of S, kept so backward can recompute P = e^(S - lse)
  backward: dv = P^T do                 dP = do v^T
            dS = P * (dP - delta),      delta = rowsum(do * o)     (= rowsum(P * dP))
            dq = dS k * scale           dk = dS^T q * scale        (dk, dv summed over the G heads)

Causal masking is aligned to the end: query i (of Tq) sees keys j <= i + Tk - Tq, which is the
usual lower triangle when Tq == Tk and the right thing for a query block appended to a KV cache.
A sliding window W (local attention, as in Longformer, Beltagy et al., 2020, and Mistral) hides
keys farther than W - 1 positions from the query: causal, each query sees its last W positions;
bidirectional, the W - 1 on each side as well. `mask` is a boolean
(True = attend) or additive float array broadcastable to (B, H, Tq, Tk); an additive mask passed
as a Tensor that requires grad (a learned position bias, e.g. T5's) gets the gradient of the
scores, dS / scale, summed to its shape. A row with every key masked attends to nothing: its
output and gradients are 0, not NaN.

The reference below materialises the (B, H, Tq, Tk) scores; the Numba kernel (kernels/cpu/
attention.py) is tiled with an online softmax (Milakov & Gimelshein, 2018; Dao et al., 2022) and
never does.
"""
import numpy as np

from ..backend import array_module
from ..kernels import kernel, reference
from ..tensor import Function

__all__ = ["AttentionOp", "PackedAttentionOp", "attention_probabilities", "attention_forward",
           "attention_backward",
           "attention_score_grad", "packed_attention_forward", "packed_attention_backward"]


def _scores(q, k, mask, causal, scale, window):
    """Masked scores S as (B, Hkv, G, Tq, Tk), with q grouped by its K/V head."""
    xp = array_module(q)
    b, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    qg = q.reshape(b, hkv, h // hkv, tq, d)
    s = (qg @ k[:, :, None].swapaxes(-1, -2)) * q.dtype.type(scale)
    position = xp.arange(tq)[:, None] + (tk - tq)          # each query's place among the keys
    if causal:
        s = xp.where(xp.arange(tk)[None, :] <= position, s, -xp.inf)
    if window:                      # |j - position| < window (only the past side when causal)
        near = xp.abs(xp.arange(tk)[None, :] - position) < window
        s = xp.where(near, s, -xp.inf)
    if mask is not None:
        m = xp.broadcast_to(mask, (b, h, tq, tk)).reshape(b, hkv, h // hkv, tq, tk)
        s = xp.where(m, s, -xp.inf) if m.dtype == bool else s + m.astype(s.dtype)
    return s


def _probabilities(s, lse):
    xp = array_module(s)
    return xp.exp(s - lse[..., None])


def _logsumexp(s):
    """log sum_j e^(s_ij) over the last axis; 0 for a fully masked row (no NaN)."""
    xp = array_module(s)
    m = s.max(axis=-1)
    m = xp.where(xp.isfinite(m), m, 0)
    total = xp.exp(s - m[..., None]).sum(axis=-1)
    return m + xp.log(xp.where(total > 0, total, 1))


def attention_probabilities(q, k, mask=None, causal=False, scale=None, window=0):
    """The weights attention_forward applies to v: q: (B, H, Tq, D), k: (B, Hkv, Tk, D) ->
    softmax(scale q k^T + mask) (B, H, Tq, Tk) under the same causal and window masks (scale
    None: D^-1/2); a fully masked row is all zeros. In q's dtype."""
    b, h, tq, d = q.shape
    s = _scores(q, k, mask, causal, d ** -0.5 if scale is None else scale, window)
    return _probabilities(s, _logsumexp(s)).reshape(b, h, tq, k.shape[2])


@kernel("attention_forward")         # fast version: kernels/cpu/attention.py
def attention_forward(q, k, v, mask, causal, scale, window):
    """q: (B, H, Tq, D), k, v: (B, Hkv, Tk, D) -> o (B, H, Tq, D), lse (B, H, Tq).
    window: 0, or the number of most recent positions each query sees."""
    b, h, tq, d = q.shape
    s = _scores(q, k, mask, causal, scale, window)                      # (B, Hkv, G, Tq, Tk)
    lse = _logsumexp(s)
    o = _probabilities(s, lse) @ v[:, :, None]                  # (B, Hkv, G, Tq, D)
    return o.reshape(b, h, tq, d), lse.reshape(b, h, tq)


@kernel("attention_backward")
def attention_backward(do, q, k, v, o, lse, mask, causal, scale, window):
    """do, o: (B, H, Tq, D), lse: (B, H, Tq) -> dq (B, H, Tq, D), dk, dv (B, Hkv, Tk, D)."""
    b, h, tq, d = q.shape
    hkv = k.shape[1]
    g = h // hkv
    s = _scores(q, k, mask, causal, scale, window)
    p = _probabilities(s, lse.reshape(b, hkv, g, tq))           # (B, Hkv, G, Tq, Tk)
    dog = do.reshape(b, hkv, g, tq, d)
    dv = (p.swapaxes(-1, -2) @ dog).sum(axis=2)
    dp = dog @ v[:, :, None].swapaxes(-1, -2)
    delta = (dog * o.reshape(b, hkv, g, tq, d)).sum(axis=-1, keepdims=True)
    ds = p * (dp - delta) * q.dtype.type(scale)
    dq = (ds @ k[:, :, None]).reshape(b, h, tq, d)
    dk = (ds.swapaxes(-1, -2) @ q.reshape(b, hkv, g, tq, d)).sum(axis=2)
    return dq, dk, dv


def attention_score_grad(do, q, k, v, o, lse, mask, causal, scale, window):
    """dS / scale = P * (dP - delta) as (B, H, Tq, Tk): the gradient of an additive mask."""
    b, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    s = _scores(q, k, mask, causal, scale, window)
    p = _probabilities(s, lse.reshape(b, hkv, h // hkv, tq))
    dog = do.reshape(b, hkv, h // hkv, tq, d)
    dp = dog @ v[:, :, None].swapaxes(-1, -2)
    delta = (dog * o.reshape(b, hkv, h // hkv, tq, d)).sum(axis=-1, keepdims=True)
    return (p * (dp - delta)).reshape(b, h, tq, tk)


def _check(q, k, v, mask):
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"scaled_dot_product_attention: expected q (B, H, Tq, D) and k, v "
                         f"(B, Hkv, Tk, D), got {q.shape}, {k.shape}, {v.shape}")
    if k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3]:
        raise ValueError(f"scaled_dot_product_attention: k {k.shape} and v {v.shape} must match "
                         f"each other and q {q.shape} in B and D")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"scaled_dot_product_attention: {q.shape[1]} query heads are not a "
                         f"multiple of {k.shape[1]} key/value heads")
    if mask is not None:
        try:
            np.broadcast_shapes(  # shape arithmetic only
                mask.shape, q.shape[:3] + (k.shape[2],))
        except ValueError:
            raise ValueError(f"scaled_dot_product_attention: attn_mask of shape {mask.shape} "
                             f"does not broadcast to (B, H, Tq, Tk) = "
                             f"{q.shape[:3] + (k.shape[2],)}") from None


class AttentionOp(Function):
    @staticmethod
    def forward(ctx, q, k, v, mask=None, causal=False, scale=None, window=0):
        _check(q, k, v, mask)
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        o, lse = attention_forward(q, k, v, mask, causal, scale, window)
        ctx.save(q, k, v, o, lse)
        ctx.args = (mask, causal, scale, window)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved
        dq, dk, dv = attention_backward(do, q, k, v, o, lse, *ctx.args)
        dmask = None
        if ctx.needs_grad[3]:                 # a learned additive bias
            dmask = attention_score_grad(do, q, k, v, o, lse, *ctx.args)
        return dq, dk, dv, dmask


# ---- attention straight from a fused projection ----------------------------------------------
#   qkv: (B, T, H + 2 Hkv, D), the output of one (C -> (H + 2 Hkv) D) projection reshaped:
#   slots [0, H) are the query heads, [H, H + Hkv) the keys, [H + Hkv, H + 2 Hkv) the values.
#   o: (B, T, H, D), which reshapes to (B, T, H D) for the output projection without a copy.
# The same math as AttentionOp; the layout is the point: the kernel reads q, k, v rows in place and
# writes dq, dk, dv into one gradient of qkv's shape, so no slicing, transposing or copying of
# heads happens on either side of it.
def _unpack(qkv, n_head, n_kv_head):
    """(B, T, H + 2 Hkv, D) -> q (B, H, T, D), k, v (B, Hkv, T, D) views."""
    h, g = n_head, n_kv_head
    return (qkv[:, :, :h].transpose(0, 2, 1, 3), qkv[:, :, h:h + g].transpose(0, 2, 1, 3),
            qkv[:, :, h + g:].transpose(0, 2, 1, 3))


@kernel("packed_attention_forward")   # fast version: kernels/cpu/attention.py
def packed_attention_forward(qkv, n_head, n_kv_head, causal, scale, window):
    """qkv: (B, T, H + 2 Hkv, D) -> o (B, T, H, D), lse (B, H, T)."""
    q, k, v = _unpack(qkv, n_head, n_kv_head)
    o, lse = reference("attention_forward")(q, k, v, None, causal, scale, window)
    return o.transpose(0, 2, 1, 3), lse


@kernel("packed_attention_backward")
def packed_attention_backward(do, qkv, o, lse, n_head, n_kv_head, causal, scale, window):
    """do, o: (B, T, H, D) -> dqkv (B, T, H + 2 Hkv, D)."""
    xp = array_module(qkv)
    q, k, v = _unpack(qkv, n_head, n_kv_head)
    dq, dk, dv = reference("attention_backward")(
        do.transpose(0, 2, 1, 3), q, k, v, o.transpose(0, 2, 1, 3), lse, None, causal, scale,
        window)
    return xp.concatenate([dq.transpose(0, 2, 1, 3), dk.transpose(0, 2, 1, 3),
                           dv.transpose(0, 2, 1, 3)], axis=2)


class PackedAttentionOp(Function):
    """PackedAttentionOp.apply(qkv, n_head=H, n_kv_head=Hkv, causal=..., scale=None, window=0)."""

    @staticmethod
    def forward(ctx, qkv, n_head, n_kv_head, causal=True, scale=None, window=0):
        if qkv.ndim != 4 or qkv.shape[2] != n_head + 2 * n_kv_head or n_head % n_kv_head:
            raise ValueError(f"packed attention: expected qkv (B, T, H + 2 Hkv, D) with "
                             f"H={n_head}, Hkv={n_kv_head} (H a multiple of Hkv), got shape "
                             f"{qkv.shape}")
        scale = qkv.shape[-1] ** -0.5 if scale is None else scale
        o, lse = packed_attention_forward(qkv, n_head, n_kv_head, causal, scale, window)
        ctx.save(qkv, o, lse)
        ctx.args = (n_head, n_kv_head, causal, scale, window)
        return o

    @staticmethod
    def backward(ctx, do):
        qkv, o, lse = ctx.saved
        return packed_attention_backward(do, qkv, o, lse, *ctx.args)
