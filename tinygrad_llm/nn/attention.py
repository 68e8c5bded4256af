"""Multi-head attention: one class for MHA, GQA and MQA, with the softmax variants of the models.

    x: (B, T, C) -> q: (B, H, T, D), k, v: (B, Hkv, T, D) -> o = attention(q, k, v) -> (B, T, C)

- n_kv_head = n_head is multi-head attention (Vaswani et al., 2017); 1 < n_kv_head < n_head is
  grouped-query attention (Ainslie et al., 2023): each K/V head serves n_head / n_kv_head query
  heads; n_kv_head = 1 is multi-query attention (Shazeer, 2019). The groups are never expanded:
  the attention op reads query head h against K/V head h // G (ops/attention.py), so K/V (and a
  KV cache) stay Hkv heads wide.
- One projection computes q, k and v together (one GEMM, (C) -> (H + 2 Hkv) D); `proj` maps the
  concatenated heads back to C.
- QK-norm (qk_norm=True; Dehghani et al., 2023; Wortsman et al., 2023): each head's q and k are
  RMS-normalised over D, with a learned (D,) gain each (`q_norm`, `k_norm`, shared by the heads,
  as OLMo 2 and Qwen 3 do), before RoPE. |q.k| / sqrt(D) is then at most
  sqrt(D) max|g_q| max|g_k| (RoPE is a rotation), so the logits cannot drift upward with the
  weights (the instability those papers trace to growing attention logits), while the learned
  gains keep the attention able to sharpen where D is small.
- Value embeddings (value_embed; modded-nanogpt): a (B, T, Hkv D) term the model adds to v
  (v <- v + e, so dv = de = dy's v slots); q and k, RoPE and QK-norm do not see it.
- Positions: a RotaryEmbedding rotates q and k (RoPE, Su et al., 2021); ALiBi and T5-style biases
  arrive as an additive `bias` (1, H, Tq, Tk); learned/sinusoidal positions are added to the token
  embeddings by the model, not here.
- Variants: causal or bidirectional; a sliding window of W keys (local attention); cross-layer KV
  sharing (Brandon et al., 2024: a layer built with `shares_kv=True` projects only q and reuses
  the K/V that an earlier layer returned). Linear attention (Katharopoulos et al., 2020) is the
  subclass in linear_attention.py: the same projections, another attention step.
- `padding_mask` (B, Tk) bool, True for real tokens, hides padded keys (left-padded prompts, or the
  padding of a classification batch).

Two paths compute the same attention, and tests/nn/test_layers.py compares them (outputs and every
gradient): the packed one attends inside the (B, T, H + 2 Hkv, D) projection (PackedAttentionOp:
no split, no transposes; QK-norm and RoPE in one pass over it, PackedQKNormRopeOp, or RoPE alone),
and the general one splits q, k, v into heads, normalises and rotates them apart and calls
scaled_dot_product_attention. `_packed_path_applies` names when the first one may run.

A decoder's cache either appends K/V and returns everything to attend over (`update`, the dense
KVCache) or takes the attention step over (`attend`: attention sinks, KIVI, H2O in
generate/long_caches.py, which choose what to keep and, for sinks, the positions).

Reading order: _padding_bias, head_shape -> MultiHeadAttention: __init__, the predicate, the
packed path (QK-norm and value embeddings on the packed projection), the general path
(_project, _attend), the cache that attends (_attend_in_cache), forward.
"""
import numpy as np

from .. import backend
from ..ops import CatOp
from ..ops.attention import PackedAttentionOp
from ..ops.rope import PackedQKNormRopeOp
from ..tensor import Tensor
from . import functional as F
from .layers import Dropout, Linear, RMSNorm
from .module import Module

__all__ = ["MultiHeadAttention", "ATTENTION_KINDS", "head_shape"]

# the `kind` of each attention class: MultiHeadAttention here, LinearAttention in
# linear_attention.py (GPTConfig.attention picks one)
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


def head_shape(owner, dim, n_head, n_kv_head, head_dim):
    """(n_kv_head, head_dim) with their defaults (n_head; dim // n_head), checked: n_kv_head must
    divide n_head, and dim must divide into n_head heads unless head_dim is given."""
    n_kv_head = n_head if n_kv_head is None else n_kv_head
    if head_dim is None:
        if dim % n_head:
            raise ValueError(f"{owner}: dim={dim} is not divisible by n_head={n_head} (or "
                             f"pass head_dim)")
        head_dim = dim // n_head
    if n_kv_head < 1 or n_head % n_kv_head:
        raise ValueError(f"{owner}: n_head={n_head} is not a multiple of n_kv_head={n_kv_head}")
    return n_kv_head, head_dim


class MultiHeadAttention(Module):
    """Softmax attention over (B, T, C) inputs.

    dim: C. n_head: H query heads. n_kv_head: Hkv K/V heads (default H; must divide H).
    head_dim: D (default C // H). bias: biases on the projections. causal: mask future keys.
    window: sliding-window size W (None: unlimited). rotary: a RotaryEmbedding applied to q and k.
    shares_kv: project only q; K/V come from an earlier layer.
    qk_norm: RMS-normalise each head's q and k (learned (D,) gains `q_norm`, `k_norm`) before
    RoPE, with epsilon qk_norm_eps. A layer that shares K/V norms only its q (the K/V it
    receives were normed by the layer that made them).
    """
    kind = "softmax"

    def __init__(self, dim, n_head, n_kv_head=None, head_dim=None, bias=True, dropout=0.0,
                 causal=True, window=None, rotary=None, shares_kv=False, qk_norm=False,
                 qk_norm_eps=1e-6, device=None, dtype=np.float32):
        super().__init__()
        name = type(self).__name__
        n_kv_head, head_dim = head_shape(name, dim, n_head, n_kv_head, head_dim)
        if window is not None and window < 1:
            raise ValueError(f"{name}: window must be >= 1 or None, got {window}")
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, head_dim
        self.causal, self.window, self.shares_kv = causal, window, shares_kv
        self.rotary = rotary
        self.provides_kv = False          # set by a model whose later layers reuse this K/V
        width = (n_head if shares_kv else n_head + 2 * n_kv_head) * head_dim
        if shares_kv:
            self.q = Linear(dim, width, bias, device, dtype)
        else:
            self.qkv = Linear(dim, width, bias, device, dtype)
        self.proj = Linear(n_head * head_dim, dim, bias, device, dtype)
        self.dropout = Dropout(dropout)
        # no modules at all when off: the parameter names (and checkpoints) stay as they were
        self.q_norm = RMSNorm(head_dim, qk_norm_eps, device, dtype) if qk_norm else None
        self.k_norm = (RMSNorm(head_dim, qk_norm_eps, device, dtype)
                       if qk_norm and not shares_kv else None)

    def _packed_path_applies(self, bias, padding_mask, cache):
        """The packed path never splits q, k and v, so it runs only when nothing needs them apart:
        no bias or padding mask to add to the scores, no cache to append K/V to, and no K/V to
        take from an earlier layer or hand to a later one."""
        return (bias is None and padding_mask is None and cache is None
                and not self.shares_kv and not self.provides_kv)

    def _attend_packed(self, x, offset, value_embed=None):
        """x: (B, T, C) -> (o (B, T, H D), None): rotate and attend on the packed
        (B, T, H + 2 Hkv, D) projection; K/V never exist apart, so none are returned."""
        b, t, _ = x.shape
        h, hkv, d = self.n_head, self.n_kv_head, self.head_dim
        qkv = self.qkv(x).reshape(b, t, h + 2 * hkv, d)
        if value_embed is not None:               # rebuild the value slots
            qk, v = qkv[:, :, :h + hkv], qkv[:, :, h + hkv:]
            qkv = CatOp.apply(qk, v + value_embed.reshape(b, t, hkv, d), axis=2)
        if self.q_norm is not None:               # normalise (and rotate) q and k in one pass
            cos, sin = self.rotary.tables(t, offset) if self.rotary is not None else (None, None)
            qkv = PackedQKNormRopeOp.apply(qkv, self.q_norm.weight, self.k_norm.weight, cos=cos,
                                           sin=sin, n_head=h, n_kv_head=hkv,
                                           eps=self.q_norm.eps)
        elif self.rotary is not None:
            qkv = self.rotary.rotate_packed(qkv, h + hkv, offset)
        o = PackedAttentionOp.apply(qkv, n_head=h, n_kv_head=hkv, causal=self.causal,
                                    window=self.window or 0)          # (B, T, H, D)
        return o.reshape(b, t, h * d), None

    def _project(self, x, offset, shared_kv, rotate=True, value_embed=None):
        """q (B, H, T, D), k, v (B, Hkv, T, D), rotated when RoPE is on (and rotate is True);
        value_embed (B, T, Hkv D) is added to v."""
        b, t, _ = x.shape
        h, hkv, d = self.n_head, self.n_kv_head, self.head_dim
        if self.shares_kv:
            if value_embed is not None:
                raise ValueError(f"{type(self).__name__}(shares_kv=True) makes no values to add "
                                 "a value_embed to")
            if shared_kv is None:
                raise ValueError(f"{type(self).__name__}(shares_kv=True) needs the K/V of an "
                                 f"earlier layer: pass shared_kv=(k, v)")
            q = self.q(x).reshape(b, t, h, d)
            if self.q_norm is not None:
                q = self.q_norm(q)
            q = q.transpose(0, 2, 1, 3)
            if self.rotary is not None and rotate:
                q = self.rotary(q, offset)
            return (q,) + tuple(shared_kv)
        qkv = self.qkv(x).reshape(b, t, h + 2 * hkv, d)
        q, k = qkv[:, :, :h], qkv[:, :, h:h + hkv]                       # (B, T, H | Hkv, D)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3)
        v = qkv[:, :, h + hkv:]
        if value_embed is not None:
            v = v + value_embed.reshape(b, t, hkv, d)
        v = v.transpose(0, 2, 1, 3)
        if self.rotary is not None and rotate:
            q, k = self.rotary(q, offset), self.rotary(k, offset)
        return q, k, v

    @staticmethod
    def _mask(bias, padding_mask, q):
        """The additive mask over the keys: the position bias plus the padding's -inf, or None."""
        if padding_mask is None:
            return bias
        pad = _padding_bias(padding_mask, q.device, q.dtype)
        return pad if bias is None else bias + pad

    def _attend(self, q, k, v, bias, padding_mask, cache):
        """q: (B, H, T, D), k, v: (B, Hkv, Tk, D) -> (o (B, H, T, D), (k, v)), the K/V attended
        over: the cache's whole contents when there is one."""
        if cache is not None and not self.shares_kv:
            k, v = cache.update(k, v)
        tk = k.shape[2]        # a sliding-window cache returns only the most recent keys
        mask = self._mask(bias, padding_mask, q)
        if mask is not None and mask.shape[-1] > tk:          # keys the cache no longer holds
            mask = mask[..., -tk:]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal,
                                           window=self.window)
        return o, (k, v)

    def _attend_in_cache(self, x, bias, padding_mask, offset, cache, value_embed):
        """x: (B, T, C) -> (o (B, H, T, D), (k, v) of these tokens) from a cache that takes the
        attention step over (generate/long_caches.py: it evicts or compresses what it holds).
        One that assigns positions itself (attention sinks) gets q and k before RoPE and the
        rotary to turn them at their slots; the others get them at their true positions. The
        mask covers every position seen; the cache keeps the columns of the keys it holds."""
        q, k, v = self._project(x, offset, None, not cache.positions_in_cache, value_embed)
        o = cache.attend(q, k, v, mask=self._mask(bias, padding_mask, q), rotary=self.rotary,
                         causal=self.causal)
        return o, (k, v)

    def _attend_split(self, x, bias, padding_mask, offset, shared_kv, cache, value_embed):
        """x: (B, T, C) -> (o (B, T, H D), (k, v)): q, k, v apart, then the attention step."""
        b, t, _ = x.shape
        if getattr(cache, "attends", False):
            o, kv = self._attend_in_cache(x, bias, padding_mask, offset, cache, value_embed)
        else:
            q, k, v = self._project(x, offset, shared_kv, value_embed=value_embed)
            o, kv = self._attend(q, k, v, bias, padding_mask, cache)     # o: (B, H, T, D)
        return o.transpose(0, 2, 1, 3).reshape(b, t, self.n_head * self.head_dim), kv

    def forward(self, x, bias=None, padding_mask=None, offset=0, shared_kv=None, cache=None,
                value_embed=None):
        """x: (B, T, C) -> (y (B, T, C), kv): kv is (k, v) (B, Hkv, Tk, D), the K/V this layer
        attended over (what a later layer shares), or None from the packed path, which runs only
        when nothing asks for them.

        bias: additive (1 or B, H, Tq, Tk) array or Tensor (ALiBi, T5). padding_mask: (B, Tk) bool.
        offset: position of x's first token (RoPE, after a cache). shared_kv: (k, v) of an earlier
        layer, for a layer built with shares_kv=True. cache: an object with
        `update(k, v) -> (k_all, v_all)` that appends this step's K/V (the decoder's KV cache),
        or one with `attends = True` whose `attend(q, k, v, mask, rotary, causal)` computes the
        attention over what it holds (the long-context caches). value_embed: (B, T, Hkv D),
        added to this layer's v (GPT's value embeddings), or None.
        """
        if self._packed_path_applies(bias, padding_mask, cache):
            o, kv = self._attend_packed(x, offset, value_embed)
        else:
            o, kv = self._attend_split(x, bias, padding_mask, offset, shared_kv, cache,
                                       value_embed)
        return self.dropout(self.proj(o)), kv

    def extra_repr(self):
        extra = f", window={self.window}" if self.window else ""
        extra += ", shares_kv=True" if self.shares_kv else ""
        extra += ", qk_norm=True" if self.q_norm is not None else ""
        return (f"n_head={self.n_head}, n_kv_head={self.n_kv_head}, head_dim={self.head_dim}, "
                f"kind={self.kind!r}, causal={self.causal}{extra}")
