"""Multi-head attention: one class for MHA, GQA and MQA, with the attention variants of the models.

    x: (B, T, C) -> q: (B, H, T, D), k, v: (B, Hkv, T, D) -> o = attention(q, k, v) -> (B, T, C)

- n_kv_head = n_head is multi-head attention (Vaswani et al., 2017); 1 < n_kv_head < n_head is
  grouped-query attention (Ainslie et al., 2023): each K/V head serves n_head / n_kv_head query
  heads; n_kv_head = 1 is multi-query attention (Shazeer, 2019). The groups are never expanded:
  the attention op reads query head h against K/V head h // G (ops/attention.py), so K/V (and a
  KV cache) stay Hkv heads wide.
- One projection computes q, k and v together (one GEMM, (C) -> (H + 2 Hkv) D); `proj` maps the
  concatenated heads back to C.
- Positions: a RotaryEmbedding rotates q and k (RoPE, Su et al., 2021); ALiBi and T5-style biases
  arrive as an additive `bias` (1, H, Tq, Tk); learned/sinusoidal positions are added to the token
  embeddings by the model, not here.
- Variants: causal or bidirectional; a sliding window of W keys (local attention); linear attention
  (Katharopoulos et al., 2020) with a feature map instead of softmax; cross-layer KV sharing
  (Brandon et al., 2024: a layer built with `shares_kv=True` projects only q and reuses the K/V
  that an earlier layer returned).
- `padding_mask` (B, Tk) bool, True for real tokens, hides padded keys (left-padded prompts, or the
  padding of a classification batch).
"""
import numpy as np

from .. import backend
from ..ops.attention import PackedAttentionOp
from ..tensor import Tensor
from . import functional as F
from .layers import Dropout, Linear
from .module import Module

__all__ = ["MultiHeadAttention", "ATTENTION_KINDS"]

ATTENTION_KINDS = ("softmax", "linear")


def _padding_bias(padding_mask, device, dtype):
    """(B, Tk) bool, True = real token -> additive (B, 1, 1, Tk) mask: 0 or -inf."""
    xp = backend.xp_for(device)
    m = padding_mask.data if isinstance(padding_mask, Tensor) else padding_mask
    m = backend.to_device(np.asarray(m) if not hasattr(m, "dtype") else m, device)
    if m.ndim != 2 or m.dtype != bool:
        raise ValueError(f"padding_mask: expected a (B, T) bool array, got shape {m.shape} dtype "
                         f"{m.dtype}")
    return xp.where(m, 0.0, -xp.inf).astype(dtype)[:, None, None, :]


class MultiHeadAttention(Module):
    """Attention over (B, T, C) inputs.

    dim: C. n_head: H query heads. n_kv_head: Hkv K/V heads (default H; must divide H).
    head_dim: D (default C // H). bias: biases on the projections. causal: mask future keys.
    window: sliding-window size W (None: unlimited). rotary: a RotaryEmbedding applied to q and k.
    kind: "softmax" or "linear". shares_kv: project only q; K/V come from an earlier layer.
    """

    def __init__(self, dim, n_head, n_kv_head=None, head_dim=None, bias=True, dropout=0.0,
                 causal=True, window=None, rotary=None, kind="softmax", shares_kv=False,
                 device=None, dtype=np.float32):
        super().__init__()
        n_kv_head = n_head if n_kv_head is None else n_kv_head
        if head_dim is None:
            if dim % n_head:
                raise ValueError(f"MultiHeadAttention: dim={dim} is not divisible by "
                                 f"n_head={n_head} (or pass head_dim)")
            head_dim = dim // n_head
        if n_kv_head < 1 or n_head % n_kv_head:
            raise ValueError(f"MultiHeadAttention: n_head={n_head} is not a multiple of "
                             f"n_kv_head={n_kv_head}")
        if kind not in ATTENTION_KINDS:
            raise ValueError(f"MultiHeadAttention: kind must be one of {ATTENTION_KINDS}, "
                             f"got {kind!r}")
        if window is not None and window < 1:
            raise ValueError(f"MultiHeadAttention: window must be >= 1 or None, got {window}")
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, head_dim
        self.causal, self.window, self.kind, self.shares_kv = causal, window, kind, shares_kv
        self.rotary = rotary
        self.provides_kv = False          # set by a model whose later layers reuse this K/V
        width = (n_head if shares_kv else n_head + 2 * n_kv_head) * head_dim
        if shares_kv:
            self.q = Linear(dim, width, bias, device, dtype)
        else:
            self.qkv = Linear(dim, width, bias, device, dtype)
        self.proj = Linear(n_head * head_dim, dim, bias, device, dtype)
        self.dropout = Dropout(dropout)

    def _project(self, x, offset, shared_kv):
        """q (B, H, T, D), k, v (B, Hkv, T, D), rotated when RoPE is on."""
        b, t, _ = x.shape
        h, hkv, d = self.n_head, self.n_kv_head, self.head_dim
        if self.shares_kv:
            if shared_kv is None:
                raise ValueError("MultiHeadAttention(shares_kv=True) needs the K/V of an earlier "
                                 "layer: pass shared_kv=(k, v)")
            q = self.q(x).reshape(b, t, h, d).transpose(0, 2, 1, 3)
            if self.rotary is not None:
                q = self.rotary(q, offset)
            return (q,) + tuple(shared_kv)
        qkv = self.qkv(x).reshape(b, t, h + 2 * hkv, d)
        q = qkv[:, :, :h].transpose(0, 2, 1, 3)
        k = qkv[:, :, h:h + hkv].transpose(0, 2, 1, 3)
        v = qkv[:, :, h + hkv:].transpose(0, 2, 1, 3)
        if self.rotary is not None:
            q, k = self.rotary(q, offset), self.rotary(k, offset)
        return q, k, v

    def _packed(self, x, offset):
        """The fast path: rotate and attend on the packed (B, T, H + 2 Hkv, D) projection."""
        b, t, _ = x.shape
        h, hkv, d = self.n_head, self.n_kv_head, self.head_dim
        qkv = self.qkv(x).reshape(b, t, h + 2 * hkv, d)
        if self.rotary is not None:
            qkv = self.rotary.rotate_packed(qkv, h + hkv, offset)
        o = PackedAttentionOp.apply(qkv, n_head=h, n_kv_head=hkv, causal=self.causal,
                                    window=self.window or 0)          # (B, T, H, D)
        return self.dropout(self.proj(o.reshape(b, t, h * d))), None

    def forward(self, x, bias=None, padding_mask=None, offset=0, shared_kv=None, cache=None):
        """x: (B, T, C) -> (y (B, T, C), (k, v)), the K/V this layer attended over (for sharing;
        None on the packed fast path, taken when nothing needs them separately).

        bias: additive (1 or B, H, Tq, Tk) array or Tensor (ALiBi, T5). padding_mask: (B, Tk) bool.
        offset: position of x's first token (RoPE, after a cache). cache: an object with
        `update(k, v) -> (k_all, v_all)` that appends this step's K/V (the decoder's KV cache).
        """
        if (self.kind == "softmax" and not self.shares_kv and not self.provides_kv
                and bias is None and padding_mask is None and cache is None):
            return self._packed(x, offset)
        b, t, _ = x.shape
        q, k, v = self._project(x, offset, shared_kv)
        if cache is not None and not self.shares_kv and self.kind == "softmax":
            k, v = cache.update(k, v)
        tk = k.shape[2]        # a sliding-window cache returns only the most recent keys
        if self.kind == "linear":
            if bias is not None or padding_mask is not None or self.window is not None:
                raise ValueError("linear attention takes no bias, padding mask or window")
            g = self.n_head // self.n_kv_head
            if g > 1:     # linear attention keeps a state per query head: expand K/V heads
                b_, hkv, tk, d = k.shape
                k = k.reshape(b_, hkv, 1, tk, d).expand(b_, hkv, g, tk, d).reshape(b_, -1, tk, d)
                v = v.reshape(b_, hkv, 1, tk, d).expand(b_, hkv, g, tk, d).reshape(b_, -1, tk, d)
            o = (cache.attend(q, k, v) if cache is not None and not self.shares_kv
                 else F.linear_attention(q, k, v, causal=self.causal))
        else:
            mask = bias
            if padding_mask is not None:
                pad = _padding_bias(padding_mask, x.device, x.dtype)
                mask = pad if mask is None else mask + pad
            if mask is not None and mask.shape[-1] > tk:      # keys the cache no longer holds
                mask = mask[..., -tk:]
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal,
                                               window=self.window)
        y = o.transpose(0, 2, 1, 3).reshape(b, t, self.n_head * self.head_dim)
        return self.dropout(self.proj(y)), (k, v)

    def extra_repr(self):
        extra = f", window={self.window}" if self.window else ""
        extra += ", shares_kv=True" if self.shares_kv else ""
        return (f"n_head={self.n_head}, n_kv_head={self.n_kv_head}, head_dim={self.head_dim}, "
                f"kind={self.kind!r}, causal={self.causal}{extra}")
