"""Attention over [memory; segment] with relative positions: the layer of Transformer-XL
(Dai et al., 2019).

    x: (B, T, C) the segment, mem: (B, M, C) the cached states of the M positions before it
    q from x: (B, H, T, D);  k, v from [mem; x]: (B, Hkv, M + T, D);  query i sits at M + i

Segment-level recurrence reuses the previous segment's hidden states as extra keys and values, so
absolute positions would be ambiguous (position 0 of this segment and of the last one would get
the same vector). Only the distance i + M - j between query and key enters the score:

  pos="xl"  (Dai et al., eq. in Sec. 3.3): with R_d the sinusoidal encoding of distance d,
            score(i, j) = (q_i + u)^T k_j  +  (q_i + v)^T W_r R_{i+M-j}
            (content, a global content bias u, the position term, a global position bias v;
            u, v: (H, D) learned, W_r: a Linear C -> H D without bias.)
            The content term goes through scaled_dot_product_attention on q + u; the position
            term is an additive, differentiable mask (1/sqrt(D) applied here, as SDPA scales only
            q k^T), computed by one matmul against all M + T distances and the rel-shift below.
  pos="rope": RoPE (Su et al., 2021) with q rotated at positions M .. M + T - 1 and k at
            0 .. M + T - 1: a rotation's dot product depends only on the offset, so the scores see
            the true relative distances across the memory boundary.

Causality is end-aligned (ops/attention.py): query i sees keys j <= i + M.

Reading order: rel_shift (the index trick, with its derivation), then RelativeMultiHeadAttention:
__init__, the position tables, the two position terms, forward.
"""
import numpy as np

from .. import backend
from ..ops import CatOp
from ..tensor import Tensor
from . import functional as F
from .attention import head_shape
from .layers import Dropout, Linear, init_parameter
from .module import Module
from .positions import RotaryEmbedding, sinusoidal_table

__all__ = ["RelativeMultiHeadAttention", "rel_shift", "RELATIVE_POSITIONS"]

RELATIVE_POSITIONS = ("xl", "rope")


def rel_shift(scores):
    """scores: (..., T, L) with column m scoring distance L - 1 - m (distances descending)
    -> (..., T, L) with column j scoring key j for query i at i + L - T, i.e. distance
    i + (L - T) - j. Entries with j > i + L - T (future keys) hold other rows' values: the causal
    mask must hide them.

    Wanted: out[i, j] = scores[i, j + T - 1 - i], row i moved left by T - 1 - i. Dai et al.'s
    trick does it with a pad and two reshapes, no gather: pad one zero column in front,
    (T, L + 1); flatten; drop the first T entries; read the remaining T L as (T, L). Entry
    (i, j) is then flat[T + i L + j] = flat[i (L + 1) + (T - i + j)], i.e. padded row i,
    column T - i + j, which is scores[i, j + T - 1 - i] while T - i + j <= L (j <= i + L - T)
    and spills into row i + 1 beyond. Backward is the same slices and reshapes, so the gradient
    is exact and costs no scatter-add."""
    *lead, t, length = scores.shape
    xp = backend.array_module(scores.data)
    pad = Tensor._wrap(xp.zeros((*lead, t, 1), dtype=scores.dtype))
    padded = CatOp.apply(pad, scores, axis=-1)                        # (..., T, L + 1)
    flat = padded.reshape(*lead, t * (length + 1))[..., t:]            # (..., T L)
    return flat.reshape(*lead, t, length)


class RelativeMultiHeadAttention(Module):
    """Causal attention of a segment over [memory; segment] with relative positions.

    dim: C. n_head: H query heads. head_dim: D (default C // H). bias: biases on q, kv and the
    output projection. dropout: on the output. pos: "xl" (Dai et al.'s u, v, W_r and sinusoidal
    R) or "rope". n_kv_head: K/V heads (default H; grouped-query attention when fewer).
    max_len: the longest M + T the position tables hold at first; a longer [memory; segment]
    rebuilds them (evaluation may use longer segments and memories than training did).
    rope_theta: RoPE's base.

    forward(x, mem=None): x (B, T, C), mem (B, M, C) or None -> (B, T, C). The caller hands in
    a memory without a graph (TransformerXL detaches it): its rows still pass gradient to the
    kv projection (and, through the block's norm, to the norm's weights), never to the past.
    """

    def __init__(self, dim, n_head, head_dim=None, bias=True, dropout=0.0, pos="xl",
                 n_kv_head=None, max_len=1024, rope_theta=10000.0, device=None,
                 dtype=np.float32):
        super().__init__()
        name = type(self).__name__
        if pos not in RELATIVE_POSITIONS:
            raise ValueError(f"{name}: pos={pos!r} is not one of {RELATIVE_POSITIONS}")
        n_kv_head, head_dim = head_shape(name, dim, n_head, n_kv_head, head_dim)
        if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) \
                or max_len < 1:
            raise ValueError(f"{name}: max_len must be a positive int, got {max_len!r}")
        if pos == "rope" and head_dim % 2:
            raise ValueError(f"{name}: RoPE needs an even head_dim, got {head_dim}")
        self.dim, self.n_head, self.n_kv_head, self.head_dim = dim, n_head, n_kv_head, head_dim
        self.pos, self.rope_theta = pos, float(rope_theta)
        self.q = Linear(dim, n_head * head_dim, bias, device, dtype)
        self.kv = Linear(dim, 2 * n_kv_head * head_dim, bias, device, dtype)
        self.proj = Linear(n_head * head_dim, dim, bias, device, dtype)
        self.dropout = Dropout(dropout)
        device = backend.check_device(device)
        if pos == "xl":
            # u and v of Dai et al.: one content and one position bias per head
            self.content_bias = init_parameter((n_head, head_dim), device, dtype, std=0.02)
            self.position_bias = init_parameter((n_head, head_dim), device, dtype, std=0.02)
            self.pos_proj = Linear(dim, n_head * head_dim, False, device, dtype)      # W_r
            self._build_distance_table(int(max_len), device, dtype)
        else:
            self.rotary = RotaryEmbedding(head_dim, int(max_len), self.rope_theta,
                                          device=device, dtype=dtype)

    # ---- position tables ------------------------------------------------------------------
    def _build_distance_table(self, n, device, dtype):
        """`distances`: R for distances n - 1, ..., 1, 0 (descending, as rel_shift reads them),
        (n, C), a non-persistent buffer; the last L rows are the distances L - 1 .. 0."""
        table = sinusoidal_table(n, self.dim)[::-1].astype(dtype)
        self.register_buffer("distances", backend.to_device(np.ascontiguousarray(table), device),
                             persistent=False)

    def _cover(self, n):
        """Make the tables hold n positions (M + T), rebuilding them where they are shorter."""
        if self.pos == "xl" and n > self.distances.shape[0]:
            self._build_distance_table(n, backend.device_of(self.distances),
                                       self.distances.dtype)
        elif self.pos == "rope" and n > self.rotary.max_positions:
            self.rotary = RotaryEmbedding(self.head_dim, n, self.rope_theta,
                                          device=backend.device_of(self.rotary.cos),
                                          dtype=self.rotary.cos.dtype)

    # ---- the two position schemes ---------------------------------------------------------
    def _attend_xl(self, q, k, v):
        """Dai et al.'s attention: q (B, H, T, D), k, v (B, Hkv, L, D) -> o (B, H, T, D)."""
        b, h, t, d = q.shape
        length = k.shape[2]
        r = self.pos_proj(Tensor._wrap(self.distances[-length:]))          # (L, H D), desc.
        r = r.reshape(length, h, d).permute(1, 2, 0).reshape(1, h, d, length)   # (1, H, D, L)
        # position term (q_i + v)^T W_r R_d for every distance d at once, then to key order
        by_distance = (q + self.position_bias.reshape(1, h, 1, d)) @ r        # (B, H, T, L)
        position = rel_shift(by_distance) * (d ** -0.5)                     # (B, H, T, L)
        content_q = q + self.content_bias.reshape(1, h, 1, d)
        return F.scaled_dot_product_attention(content_q, k, v, attn_mask=position,
                                              is_causal=True)

    def _attend_rope(self, q, k, v):
        """q at positions M .. M + T - 1, k at 0 .. M + T - 1 -> o (B, H, T, D)."""
        n_mem = k.shape[2] - q.shape[2]
        q, k = self.rotary(q, offset=n_mem), self.rotary(k, offset=0)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    # ---- forward ----------------------------------------------------------------------------
    def _check(self, x, mem):
        name = type(self).__name__
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"{name}: x must be (B, T, C) with C = dim = {self.dim}, got shape "
                             f"{x.shape}")
        if mem is not None and (mem.ndim != 3 or mem.shape[0] != x.shape[0]
                                or mem.shape[2] != self.dim):
            raise ValueError(f"{name}: mem must be (B, M, C) = ({x.shape[0]}, M, {self.dim}) "
                             f"to match x {x.shape}, got shape {mem.shape}")

    def forward(self, x, mem=None):
        """x: (B, T, C), mem: (B, M, C) Tensor or None -> (B, T, C)."""
        self._check(x, mem)
        b, t, _ = x.shape
        h, hkv, d = self.n_head, self.n_kv_head, self.head_dim
        if mem is not None and mem.shape[1]:
            mem = mem if isinstance(mem, Tensor) else Tensor._wrap(mem)
            context = CatOp.apply(mem, x, axis=1)                            # (B, L, C)
        else:
            context = x
        length = context.shape[1]
        self._cover(length)
        q = self.q(x).reshape(b, t, h, d).transpose(0, 2, 1, 3)              # (B, H, T, D)
        kv = self.kv(context).reshape(b, length, 2, hkv, d)
        k = kv[:, :, 0].transpose(0, 2, 1, 3)                               # (B, Hkv, L, D)
        v = kv[:, :, 1].transpose(0, 2, 1, 3)
        o = self._attend_xl(q, k, v) if self.pos == "xl" else self._attend_rope(q, k, v)
        return self.dropout(self.proj(o.transpose(0, 2, 1, 3).reshape(b, t, h * d)))

    def extra_repr(self):
        return (f"n_head={self.n_head}, n_kv_head={self.n_kv_head}, head_dim={self.head_dim}, "
                f"pos={self.pos!r}")
