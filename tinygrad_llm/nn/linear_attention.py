"""Linear attention as a layer (Katharopoulos, Vyas, Pappas & Fleuret, 2020, "Transformers are
RNNs"): MultiHeadAttention's projections with softmax replaced by a kernel phi(q).phi(k).

    o_i = phi(q_i)^T S_i / (phi(q_i) . z_i + eps),  S_i = sum_{j<=i} phi(k_j) v_j^T,
                                                     z_i = sum_{j<=i} phi(k_j)

(the sums run over every j when bidirectional). phi is elu + 1. The op, its chunked forward and
backward and the one-token recurrence live in ops/linear_attention.py; this file only wires them
to the layer.

- The state (S, z) is kept per query head, so grouped K/V heads (GQA/MQA) are expanded to H
  before the op; the K/V handed to a layer that shares them stay Hkv heads wide.
- While decoding, the cache is a LinearAttentionState (generate/kv_cache.py): `attend` runs the
  recurrence over the new tokens and keeps (S, z), a fixed size whatever the sequence length.
- No bias, padding mask or window: a sum over keys has no per-score term to add them to.

Reading order: LinearAttention: _packed_path_applies (never), _attend.
"""
from . import functional as F
from .attention import MultiHeadAttention

__all__ = ["LinearAttention"]


class LinearAttention(MultiHeadAttention):
    """Linear attention over (B, T, C) inputs; arguments as MultiHeadAttention's (window must
    stay None)."""
    kind = "linear"

    def _packed_path_applies(self, bias, padding_mask, cache):
        return False                 # the packed op is softmax attention

    def _attend(self, q, k, v, bias, padding_mask, cache):
        """q: (B, H, T, D), k, v: (B, Hkv, Tk, D) -> (o (B, H, T, D), (k, v) as given)."""
        if bias is not None or padding_mask is not None or self.window is not None:
            raise ValueError("linear attention takes no bias, padding mask or window")
        kv = (k, v)
        g = self.n_head // self.n_kv_head
        if g > 1:                    # one state per query head: K/V head j serves heads j G ..
            b, hkv, tk, d = k.shape
            k = k.reshape(b, hkv, 1, tk, d).expand(b, hkv, g, tk, d).reshape(b, -1, tk, d)
            v = v.reshape(b, hkv, 1, tk, d).expand(b, hkv, g, tk, d).reshape(b, -1, tk, d)
        if cache is not None:        # a sharing layer too: its state sums the shared K/V
            return cache.attend(q, k, v), kv
        return F.linear_attention(q, k, v, causal=self.causal), kv
