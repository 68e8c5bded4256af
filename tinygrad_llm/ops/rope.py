"""Rotary position embedding (RoPE; Su et al., 2021) in the half-split layout of Hugging Face
Llama, so that its q_proj / k_proj weights load without permuting rows.

---- RoPE, half-split layout ------------------------------------------------------------------
  x: (..., T, D)   cos, sin: (T, D)   D even, halves x = [x1, x2] each (..., T, D/2)
  Dims i and i + D/2 form a pair, rotated by the angle a_i(p) = p * theta^(-2i/D) at position p;
  the tables hold cos(a), sin(a) repeated over both halves.
  forward:  rotate_half(x) = [-x2, x1]
            y = x * cos + rotate_half(x) * sin
            (pair i: y1 = x1 cos - x2 sin,  y2 = x2 cos + x1 sin: the complex product
             (x1 + i x2) e^{i a})
  backward: rotate_half is linear with transpose rotate_half^T(g) = [g2, -g1], so
            dx = dy * cos + rotate_half^T(dy * sin)

Interleaved RoPE (Meta's original checkpoints, GPT-J) pairs dims 2i and 2i + 1 instead; both are
the same rotation up to a fixed permutation of the q/k projection rows. The tables are constants:
they get no gradient. Only cos and sin are saved for backward; x is not needed.

rope_forward / rope_backward and their packed versions are the references of the CUDA kernels in
kernels/cuda/rope.py (one pass, no concatenation); there is no Numba kernel for them, so the CPU
runs them. QK-norm with RoPE on a packed projection (the training recipe's attention, last below)
has both: kernels/cpu/rope.py and kernels/cuda/rope.py.
"""
from ..backend import array_module
from ..kernels import kernel
from ..tensor import Function

__all__ = ["RopeOp", "PackedRopeOp", "PackedQKNormRopeOp", "rotate_half", "rotate_half_transpose",
           "rope_forward", "rope_backward", "packed_rope_forward", "packed_rope_backward",
           "packed_qk_norm_rope_forward", "packed_qk_norm_rope_backward"]


def rotate_half(x):
    """[x1, x2] -> [-x2, x1] over the last axis (x: (..., D), D even)."""
    xp = array_module(x)
    half = x.shape[-1] // 2
    return xp.concatenate((-x[..., half:], x[..., :half]), axis=-1)


def rotate_half_transpose(g):
    """The transpose of rotate_half: [g1, g2] -> [g2, -g1]."""
    xp = array_module(g)
    half = g.shape[-1] // 2
    return xp.concatenate((g[..., half:], -g[..., :half]), axis=-1)


def _check_tables(x, cos, sin):
    if x.ndim < 2:
        raise ValueError(f"rope: x must be (..., T, D), got shape {x.shape}")
    if x.shape[-1] % 2:
        raise ValueError(f"rope: head dim D must be even (dims i and i + D/2 form a pair), "
                         f"got x of shape {x.shape}")
    want = tuple(x.shape[-2:])
    for name, table in (("cos", cos), ("sin", sin)):
        if not hasattr(table, "shape"):
            raise TypeError(f"rope: {name} must be an array of shape {want}, "
                            f"got {type(table).__name__}")
        if tuple(table.shape) != want:
            raise ValueError(f"rope: {name} has shape {tuple(table.shape)}, expected (T, D) = "
                             f"{want} to match x of shape {x.shape}")


@kernel("rope_forward")              # fast version: kernels/cuda/rope.py
def rope_forward(x, cos, sin):
    """x: (..., T, D), cos, sin: (T, D) in x's dtype -> y, same shape as x."""
    return x * cos + rotate_half(x) * sin


@kernel("rope_backward")
def rope_backward(dy, cos, sin):
    """dy: (..., T, D) -> dx."""
    return dy * cos + rotate_half_transpose(dy * sin)


class RopeOp(Function):
    """RopeOp.apply(x, cos=..., sin=...): x (..., T, D) rotated by the (T, D) tables, which are
    already sliced to the positions of x. The tables are cast to x's dtype."""

    @staticmethod
    def forward(ctx, x, cos=None, sin=None):
        _check_tables(x, cos, sin)
        cos, sin = cos.astype(x.dtype, copy=False), sin.astype(x.dtype, copy=False)
        ctx.save(cos, sin)
        return rope_forward(x, cos, sin)

    # dx = dy * cos + rotate_half^T(dy * sin)
    @staticmethod
    def backward(ctx, dy):
        cos, sin = ctx.saved
        return rope_backward(dy, cos, sin)


# ---- RoPE on a packed projection -------------------------------------------------------------
#   qkv: (B, T, S, D) with the first n_rotated slots (query and key heads) rotated and the rest
#   (value heads) passed through; cos, sin: (T, D), broadcast over the slots. Same math as above.
@kernel("packed_rope_forward")       # fast version: kernels/cuda/rope.py
def packed_rope_forward(qkv, cos, sin, n_rotated):
    """qkv: (B, T, S, D), cos, sin: (T, D) in qkv's dtype -> y, same shape as qkv."""
    cos, sin = cos[:, None], sin[:, None]                          # (T, 1, D)
    y = qkv.copy()
    x = qkv[:, :, :n_rotated]
    y[:, :, :n_rotated] = x * cos + rotate_half(x) * sin
    return y


@kernel("packed_rope_backward")
def packed_rope_backward(dy, cos, sin, n_rotated):
    """dy: (B, T, S, D) -> dqkv."""
    cos, sin = cos[:, None], sin[:, None]
    dx = dy.copy()
    g = dy[:, :, :n_rotated]
    dx[:, :, :n_rotated] = g * cos + rotate_half_transpose(g * sin)
    return dx


class PackedRopeOp(Function):
    @staticmethod
    def forward(ctx, qkv, cos=None, sin=None, n_rotated=0):
        if qkv.ndim != 4 or not 0 < n_rotated <= qkv.shape[2]:
            raise ValueError(f"rope: expected qkv (B, T, S, D) and 0 < n_rotated <= S, got shape "
                             f"{qkv.shape} and n_rotated={n_rotated}")
        _check_tables(qkv[:, :, 0], cos, sin)
        cos, sin = cos.astype(qkv.dtype, copy=False), sin.astype(qkv.dtype, copy=False)
        ctx.save(cos, sin)
        ctx.n_rotated = n_rotated
        return packed_rope_forward(qkv, cos, sin, n_rotated)

    @staticmethod
    def backward(ctx, dy):
        cos, sin = ctx.saved
        return packed_rope_backward(dy, cos, sin, ctx.n_rotated)


# ---- QK-norm and RoPE on a packed projection ----------------------------------------------------
#   qkv: (B, T, S, D): slots [0, H) are query heads, [H, H + Hkv) key heads, the rest value heads
#   (passed through). w_q, w_k: (D,) gains, shared by the query heads and by the key heads.
#   cos, sin: (T, D), or None for no rotation. r: (B, T, H + Hkv), each q/k row's 1 / rms.
#   forward:  r = 1 / sqrt(mean(x^2) + eps),  n = x r w  (w = w_q or w_k by slot)
#             y = rope(n) = n cos + rotate_half(n) sin
#   backward: g = rope^T(dy) = dy cos + rotate_half^T(dy sin)     (dy on the q/k slots)
#             xh = x r,  dw = sum over (B, T) and the slot's heads of g xh
#             dx = r (g w - xh mean(g w xh))                         (RMSNorm's backward on g)
# QK-norm and RoPE composed (ops/norm.py's RMSNorm, then the packed rotation above), in one pass
# over the projection with no split of q, k and v and no concatenation after.
def _slot_gains(w_q, w_k, n_head, n_kv_head):
    """(H + Hkv, D): w_q repeated for the query slots, w_k for the key slots."""
    xp = array_module(w_q)
    return xp.concatenate((xp.broadcast_to(w_q, (n_head, w_q.shape[0])),
                           xp.broadcast_to(w_k, (n_kv_head, w_k.shape[0]))))


@kernel("packed_qk_norm_rope_forward")      # fast versions: kernels/{cpu,cuda}/rope.py
def packed_qk_norm_rope_forward(qkv, w_q, w_k, cos, sin, n_head, n_kv_head, eps):
    """qkv: (B, T, S, D), w_q, w_k: (D,), cos, sin: (T, D) or None, in qkv's dtype -> (y, r):
    y like qkv, r (B, T, H + Hkv)."""
    xp = array_module(qkv)
    n_qk = n_head + n_kv_head
    x = qkv[:, :, :n_qk]
    r = (1.0 / xp.sqrt((x * x).mean(axis=-1) + eps)).astype(qkv.dtype, copy=False)
    n = x * r[..., None] * _slot_gains(w_q, w_k, n_head, n_kv_head)
    y = qkv.copy()
    y[:, :, :n_qk] = n if cos is None else n * cos[:, None] + rotate_half(n) * sin[:, None]
    return y, r


@kernel("packed_qk_norm_rope_backward")
def packed_qk_norm_rope_backward(dy, qkv, w_q, w_k, cos, sin, n_head, n_kv_head, r):
    """dy: (B, T, S, D) -> (dqkv like dy, dw_q (D,), dw_k (D,))."""
    n_qk = n_head + n_kv_head
    g = dy[:, :, :n_qk]
    if cos is not None:
        g = g * cos[:, None] + rotate_half_transpose(g * sin[:, None])
    r = r[..., None]
    xh = qkv[:, :, :n_qk] * r
    gw = g * _slot_gains(w_q, w_k, n_head, n_kv_head)
    dx = dy.copy()
    dx[:, :, :n_qk] = r * (gw - xh * (gw * xh).mean(axis=-1, keepdims=True))
    dw = (g * xh).sum(axis=(0, 1))                                  # (H + Hkv, D)
    return dx, dw[:n_head].sum(axis=0), dw[n_head:].sum(axis=0)


class PackedQKNormRopeOp(Function):
    """PackedQKNormRopeOp.apply(qkv, w_q, w_k, cos=None, sin=None, n_head=..., n_kv_head=...,
    eps=1e-6): RMS-normalise each query and key head of the packed (B, T, S, D) projection with
    its gain, then rotate it by the (T, D) tables (sliced to qkv's positions; None: no rotation).
    The tables are cast to qkv's dtype."""

    @staticmethod
    def forward(ctx, qkv, w_q, w_k, cos=None, sin=None, n_head=0, n_kv_head=0, eps=1e-6):
        if qkv.ndim != 4 or n_head < 1 or n_kv_head < 1 or n_head + n_kv_head > qkv.shape[2]:
            raise ValueError(f"qk_norm: expected qkv (B, T, S, D) with n_head, n_kv_head >= 1 "
                             f"and n_head + n_kv_head <= S, got shape {qkv.shape}, "
                             f"n_head={n_head}, n_kv_head={n_kv_head}")
        for name, w in (("w_q", w_q), ("w_k", w_k)):
            if w.shape != qkv.shape[-1:]:
                raise ValueError(f"qk_norm: {name} must be (D,) = {qkv.shape[-1:]}, got shape "
                                 f"{w.shape}")
        if (cos is None) != (sin is None):
            raise ValueError("qk_norm: pass both RoPE tables cos and sin, or neither")
        if cos is not None:
            _check_tables(qkv[:, :, 0], cos, sin)
            cos, sin = cos.astype(qkv.dtype, copy=False), sin.astype(qkv.dtype, copy=False)
        y, r = packed_qk_norm_rope_forward(qkv, w_q, w_k, cos, sin, n_head, n_kv_head, eps)
        ctx.save(qkv, w_q, w_k, cos, sin, r)
        ctx.n_head, ctx.n_kv_head = n_head, n_kv_head
        return y

    @staticmethod
    def backward(ctx, dy):
        qkv, w_q, w_k, cos, sin, r = ctx.saved
        return packed_qk_norm_rope_backward(dy, qkv, w_q, w_k, cos, sin, ctx.n_head,
                                            ctx.n_kv_head, r)
