"""Encoder: a bidirectional transformer (BERT, Devlin et al., 2019) with a masked-language-model
head and a sequence-classification head.

    idx (B, T) -> embeddings -> [block without causal mask] x n_layer -> hidden (B, T, C)
    MLM head:            hidden -> dense -> GELU -> LayerNorm -> tied decoder -> logits (B, T, V)
    classification head: pooled hidden (first token, or mean of real tokens) -> dense -> tanh
                         -> Linear -> (B, n_classes)

Pre-training corrupts 15% of the tokens (`mask_tokens`): of those, 80% become [MASK], 10% a random
token and 10% stay as they are, so the model cannot learn that only [MASK] positions matter; the
loss is read only at the chosen positions. The layers and their factories are GPT's (models/gpt.py)
with the causal mask off.
"""
import numpy as np

from .. import backend
from ..nn import functional as F
from ..nn.block import TransformerBlock
from ..nn.layers import Embedding, LayerNorm, Linear
from ..nn.module import Module, ModuleList
from ..tensor import array_of
from .gpt import (init_gpt2_weights, make_attention, make_ffn, make_norm, make_positions,
                  position_bias)

__all__ = ["Encoder", "mask_tokens"]

IGNORE = -100


def mask_tokens(idx, mask_token_id, vocab_size, p=0.15, rng=None, special_ids=()):
    """BERT's corruption of a (B, T) id array -> (inputs, labels).

    Each position (except `special_ids`, e.g. padding and [CLS]) is chosen with probability p; a
    chosen token becomes mask_token_id (80%), a uniformly random id (10%) or stays (10%). labels
    hold the original id at chosen positions and -100 (ignored by cross_entropy) elsewhere."""
    rng = backend.rng("cpu") if rng is None else rng
    idx = np.asarray(idx)
    chosen = rng.random(idx.shape) < p
    if len(special_ids):
        chosen &= ~np.isin(idx, np.asarray(special_ids))
    labels = np.where(chosen, idx, IGNORE)
    fate = rng.random(idx.shape)
    inputs = idx.copy()
    inputs[chosen & (fate < 0.8)] = mask_token_id
    random_slot = chosen & (fate >= 0.8) & (fate < 0.9)
    inputs[random_slot] = rng.integers(0, vocab_size, int(random_slot.sum()))
    return inputs, labels


class Encoder(Module):
    """Bidirectional transformer over a GPTConfig (its causal choice ignored; prenorm honoured).

    n_classes: size of the classification head (None: no head). pooling: "cls" (first token, as
    BERT) or "mean" (mean over real tokens)."""

    def __init__(self, config, n_classes=None, pooling="cls"):
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"Encoder: pooling must be 'cls' or 'mean', got {pooling!r}")
        for field, default in (("logit_softcap", None), ("unet_skips", False),
                               ("zero_init_proj", False), ("value_embeds", 0)):
            if getattr(config, field) != default:      # GPT-only switches: refuse, not ignore
                raise ValueError(f"Encoder: {field}={getattr(config, field)!r} is not supported "
                                 f"(only {default!r})")
        self.config, self.pooling = config, pooling
        c = config.n_embd
        self.tok_emb = Embedding(config.vocab_size, c)
        self.pos_emb, self.rotary, self.pos_bias = make_positions(config, bidirectional=True)
        blocks = []
        for layer in range(config.n_layer):
            attn = make_attention(config, layer, self.rotary)
            attn.causal = False
            blocks.append(TransformerBlock(attn, make_ffn(config), make_norm(config),
                                           make_norm(config), config.prenorm))
        self.blocks = ModuleList(blocks)
        self.norm = make_norm(config) if config.prenorm else None
        # MLM head (BERT's "transform" then a decoder tied to the token embeddings)
        self.mlm_dense = Linear(c, c)
        self.mlm_norm = LayerNorm(c, config.norm_eps)
        self.mlm_bias = Linear(1, config.vocab_size).bias      # a (V,) Parameter
        self.cls_dense = self.cls_head = None
        if n_classes is not None:
            self.cls_dense = Linear(c, c)
            self.cls_head = Linear(c, n_classes)
        init_gpt2_weights(self, config.n_layer)

    def forward(self, idx, padding_mask=None):
        """idx: (B, T) ids, padding_mask: (B, T) bool (True = real token) -> hidden (B, T, C)."""
        idx = array_of(idx)
        idx = np.asarray(idx) if not hasattr(idx, "shape") else idx
        b, t = idx.shape
        if t > self.config.max_positions:
            raise ValueError(f"Encoder: sequence of {t} tokens exceeds block_size="
                             f"{self.config.block_size}")
        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            x = x + self.pos_emb(t, 0)
        bias = position_bias(self.pos_bias, t, t, x)
        shared = None
        for layer, block in enumerate(self.blocks):
            x, kv = block(x, bias=bias, padding_mask=padding_mask, shared_kv=shared)
            if layer % self.config.kv_share == 0:
                shared = kv
        return self.norm(x) if self.norm is not None else x

    def mlm_logits(self, idx, padding_mask=None):
        """(B, T, V) logits of the masked-language-model head."""
        h = self.mlm_norm(F.gelu(self.mlm_dense(self(idx, padding_mask))))
        return h @ self.tok_emb.weight.T + self.mlm_bias

    def mlm_loss(self, inputs, labels, padding_mask=None):
        """Cross-entropy at the corrupted positions (labels != -100), from mask_tokens."""
        return F.cross_entropy(self.mlm_logits(inputs, padding_mask), labels,
                               ignore_index=IGNORE)

    def classify(self, idx, padding_mask=None):
        """(B, n_classes) logits of the sequence-classification head."""
        if self.cls_head is None:
            raise ValueError("Encoder.classify: built without a classification head "
                             "(pass n_classes)")
        h = self(idx, padding_mask)                                 # (B, T, C)
        if self.pooling == "cls":
            pooled = h[:, 0]
        elif padding_mask is None:
            pooled = h.mean(axis=1)
        else:
            m = np.asarray(backend.to_numpy(array_of(padding_mask)), bool)
            w = (m / m.sum(axis=1, keepdims=True)).astype(h.dtype)[:, :, None]
            pooled = (h * backend.to_device(w, h.device)).sum(axis=1)
        return self.cls_head(self.cls_dense(pooled).tanh())
