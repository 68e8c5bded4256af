"""GPT: the decoder-only transformer language model, as GPT-2 (Radford et al., 2019) or Llama
(Touvron et al., 2023) from one configuration.

Reading order: GPTConfig (the fields and the two presets), the small factories that turn a field
into a layer, then GPT: embeddings -> blocks -> final norm -> head.

    idx (B, T) -> tok_emb (+ pos_emb) -> [block] x n_layer -> norm -> head (-> soft cap)
        -> logits (B, T, V)

Variants are chosen once, in __init__, by the factories (norm, feed-forward, positions, attention
kind); forward has no `if` ladder over them.
"""
import dataclasses
import math

import numpy as np

from .. import backend
from ..nn import functional as F
from ..nn.attention import ATTENTION_KINDS, MultiHeadAttention
from ..nn.block import TransformerBlock
from ..nn.layers import MLP, Embedding, LayerNorm, Linear, RMSNorm, SwiGLU
from ..nn.linear_attention import LinearAttention
from ..nn.module import Module, ModuleList, Parameter
from ..nn.moe import MoE
from ..nn.positions import (ALiBi, LearnedPositions, RotaryEmbedding, SinusoidalPositions,
                            T5RelativeBias)
from ..tensor import array_of, no_grad

__all__ = ["GPTConfig", "GPT", "PRESETS", "init_gpt2_weights", "position_bias", "soft_cap"]

NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "gelu_tanh", "relu", "relu2", "swiglu", "none")
POSITIONS = ("learned", "sinusoidal", "rope", "alibi", "t5", "none")


@dataclasses.dataclass
class GPTConfig:
    """Every architectural choice of the model. Use GPTConfig.preset("gpt2" | "llama", **overrides).

    head_dim defaults to n_embd // n_head; ffn_hidden to 4 n_embd (MLP) or Llama's 8/3 n_embd
    rounded up to a multiple of 32 (SwiGLU has three matrices: 8/3 keeps the parameter count).
    window: sliding-window attention in every layer (None: full). kv_share: layers in groups of
    kv_share, each layer reusing the K/V of its group's first layer (1: no sharing).
    n_expert > 0 replaces the feed-forward with a mixture of experts. mlp="none": attention-only
    blocks (Elhage et al., 2021), without the feed-forward or its norm (ffn_hidden is then 0).
    Pieces of the modded-nanogpt recipe (Jordan et al., 2024), all off by default: qk_norm
    (nn/attention.py), mlp="relu2" (Primer's squared ReLU, So et al., 2021), logit_softcap,
    zero_init_proj (init_gpt2_weights), unet_skips and value_embeds (GPT.hidden_states).
    """
    vocab_size: int = 50257           # token ids the embedding and head cover (V)
    block_size: int = 1024            # longest sequence (positions) the model takes (T)
    n_layer: int = 12                 # transformer blocks
    n_head: int = 12                  # query heads per attention layer (H)
    n_kv_head: int = None             # key/value heads (Hkv): n_head = MHA, 1 = MQA, between = GQA
    n_embd: int = 768                 # width of the residual stream (C)
    head_dim: int = None              # per-head width (D); default n_embd // n_head
    ffn_hidden: int = None            # FFN hidden width; default 4 C (MLP), 8/3 C (SwiGLU)
    dropout: float = 0.0              # dropout on attention, residual and embedding outputs
    bias: bool = True                 # biases in the linear layers and norms
    norm: str = "layernorm"           # layernorm | rmsnorm
    norm_eps: float = 1e-5            # epsilon inside the norms
    mlp: str = "gelu_tanh"            # gelu | gelu_tanh | relu | relu2 | swiglu | none
    pos: str = "learned"              # learned | sinusoidal | rope | alibi | t5 | none
    rope_theta: float = 10000.0       # RoPE base frequency
    rope_scaling: dict = None         # RoPE scaling as JSON, e.g. {"type": "linear", "factor": 2}
    tie_embeddings: bool = True       # the head reuses the token embedding matrix
    prenorm: bool = True              # norm before each sublayer (GPT-2) or after (post-LN)
    attention: str = "softmax"        # softmax | linear
    window: int = None                # sliding-window attention span (None: full causal)
    kv_share: int = 1                 # layers per group sharing the first layer's K/V
    n_expert: int = 0                 # experts in a mixture-of-experts FFN (0: dense FFN)
    n_expert_per_token: int = 2       # experts each token is routed to (K)
    moe_aux_loss_coef: float = 0.01   # weight of the MoE load-balancing loss
    moe_z_loss_coef: float = 0.0      # weight of the MoE router z-loss
    t5_num_buckets: int = 32          # relative-position buckets of the T5 bias
    t5_max_distance: int = 128        # distance beyond which T5 buckets are shared
    qk_norm: bool = False             # RMS-normalise each head's q and k (learned gains)
    logit_softcap: float = None       # c: logits = c tanh(logits / c) (None: uncapped)
    zero_init_proj: bool = False      # residual-branch output projections start at zero
    unet_skips: bool = False          # layer i's output is added, weighted, to layer L-1-i's input
    value_embeds: int = 0             # k tables; table i adds to the values of layers i, L-1-i

    def __post_init__(self):
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.head_dim is None:
            if self.n_embd % self.n_head:
                raise ValueError(f"GPTConfig: n_embd={self.n_embd} is not divisible by "
                                 f"n_head={self.n_head}")
            self.head_dim = self.n_embd // self.n_head
        if self.n_kv_head < 1 or self.n_head % self.n_kv_head:
            raise ValueError(f"GPTConfig: n_head={self.n_head} is not divisible by "
                             f"n_kv_head={self.n_kv_head}")
        if self.mlp == "none":
            if self.ffn_hidden not in (None, 0):
                raise ValueError(f"GPTConfig: mlp='none' has no feed-forward, so ffn_hidden must "
                                 f"be None or 0, got {self.ffn_hidden}")
            if self.n_expert:
                raise ValueError(f"GPTConfig: mlp='none' has no feed-forward to make experts of, "
                                 f"got n_expert={self.n_expert}")
            self.ffn_hidden = 0
        if self.ffn_hidden is None:
            self.ffn_hidden = (32 * math.ceil(8 * self.n_embd / 3 / 32) if self.mlp == "swiglu"
                               else 4 * self.n_embd)
        for field, allowed in (("norm", NORMS), ("mlp", MLPS), ("pos", POSITIONS),
                               ("attention", ATTENTION_KINDS)):
            if getattr(self, field) not in allowed:
                raise ValueError(f"GPTConfig: {field}={getattr(self, field)!r} is not one of "
                                 f"{allowed}")
        if self.kv_share < 1:
            raise ValueError(f"GPTConfig: kv_share must be >= 1, got {self.kv_share}")
        if self.pos == "rope" and self.head_dim % 2:
            raise ValueError(f"GPTConfig: RoPE needs an even head_dim, got {self.head_dim}")
        for field in ("qk_norm", "zero_init_proj", "unet_skips"):
            if not isinstance(getattr(self, field), (bool, np.bool_)):
                raise TypeError(f"GPTConfig: {field} must be a bool, got "
                                f"{getattr(self, field)!r}")
            setattr(self, field, bool(getattr(self, field)))
        if self.logit_softcap is not None:
            cap = self.logit_softcap
            if isinstance(cap, (bool, np.bool_)) or not isinstance(cap, (int, float, np.number)):
                raise TypeError(f"GPTConfig: logit_softcap must be a number or None, got {cap!r}")
            if not 0 < cap < math.inf:
                raise ValueError(f"GPTConfig: logit_softcap must be a positive finite number "
                                 f"(or None), got {cap}")
            self.logit_softcap = float(cap)
        k = self.value_embeds
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"GPTConfig: value_embeds must be an int, got {k!r}")
        if not 0 <= k <= self.n_layer // 2:
            raise ValueError(f"GPTConfig: value_embeds={k} must be between 0 and n_layer // 2 = "
                             f"{self.n_layer // 2} (table i feeds layers i and n_layer - 1 - i)")
        if k and self.kv_share != 1:
            raise ValueError(f"GPTConfig: value_embeds={k} needs kv_share=1, got kv_share="
                             f"{self.kv_share} (a layer that shares K/V has no values of its own)")
        self.value_embeds = int(k)

    @classmethod
    def preset(cls, name, **overrides):
        """A named configuration with any field overridden: preset("llama", n_layer=4)."""
        if name not in PRESETS:
            raise ValueError(f"GPTConfig.preset: unknown preset {name!r}; valid presets: "
                             f"{sorted(PRESETS)}")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"GPTConfig.preset: unknown fields {sorted(unknown)}")
        fields = {**PRESETS[name], **overrides}
        base = PRESETS[name]
        if "n_head" in overrides and "n_kv_head" not in overrides and "n_kv_head" in base:
            # keep the preset's grouping ratio: the largest divisor of n_head within it
            want = max(1, overrides["n_head"] * base["n_kv_head"] // base["n_head"])
            fields["n_kv_head"] = max(g for g in range(1, want + 1) if overrides["n_head"] % g == 0)
        return cls(**fields)

    @property
    def max_positions(self):
        """The longest sequence the positions allow (RoPE scaling extends block_size)."""
        if self.pos == "rope" and self.rope_scaling:
            return int(self.block_size * self.rope_scaling["factor"])
        return self.block_size

    def to_dict(self):
        return dataclasses.asdict(self)


PRESETS = {
    # GPT-2 small: learned positions, LayerNorm, GELU (tanh form), MHA, biases, tied embeddings
    "gpt2": dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768,
                 bias=True, norm="layernorm", norm_eps=1e-5, mlp="gelu_tanh", pos="learned",
                 tie_embeddings=True),
    # Llama: RoPE, RMSNorm, SwiGLU, grouped-query attention, no biases, separate head
    "llama": dict(vocab_size=32000, block_size=2048, n_layer=16, n_head=16, n_kv_head=4,
                  n_embd=1024, bias=False, norm="rmsnorm", norm_eps=1e-5, mlp="swiglu",
                  pos="rope", rope_theta=10000.0, tie_embeddings=False),
}


# ---- factories: one config field -> one layer ---------------------------------------------
def make_norm(config):
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, config.norm_eps)
    return LayerNorm(config.n_embd, config.norm_eps, bias=config.bias)


def make_ffn(config):
    c, hidden = config.n_embd, config.ffn_hidden
    if config.mlp == "none":
        raise ValueError("make_ffn: mlp='none' has no feed-forward network (attention-only "
                         "blocks); this model needs one")
    if config.n_expert:
        kind = "swiglu" if config.mlp == "swiglu" else "mlp"
        return MoE(c, hidden, config.n_expert, config.n_expert_per_token, expert=kind,
                   activation=config.mlp if kind == "mlp" else "gelu", bias=config.bias,
                   aux_loss_coef=config.moe_aux_loss_coef, z_loss_coef=config.moe_z_loss_coef)
    if config.mlp == "swiglu":
        return SwiGLU(c, hidden, config.bias, config.dropout)
    return MLP(c, hidden, config.mlp, config.bias, config.dropout)


def make_attention(config, layer, rotary):
    attention = LinearAttention if config.attention == "linear" else MultiHeadAttention
    attn = attention(
        config.n_embd, config.n_head, config.n_kv_head, config.head_dim, config.bias,
        config.dropout, causal=True, window=config.window, rotary=rotary,
        shares_kv=layer % config.kv_share != 0, qk_norm=config.qk_norm,
        qk_norm_eps=config.norm_eps)
    attn.provides_kv = config.kv_share > 1 and layer % config.kv_share == 0
    return attn


def make_positions(config, bidirectional=False):
    """(added to embeddings or None, rotary or None, attention-bias maker or None)."""
    c = config
    if c.pos == "learned":
        return LearnedPositions(c.block_size, c.n_embd), None, None
    if c.pos == "sinusoidal":
        return SinusoidalPositions(c.block_size, c.n_embd), None, None
    if c.pos == "rope":
        return None, RotaryEmbedding(c.head_dim, c.block_size, c.rope_theta, c.rope_scaling), None
    if c.pos == "alibi":
        return None, None, ALiBi(c.n_head, bidirectional)
    if c.pos == "t5":
        return None, None, T5RelativeBias(c.n_head, c.t5_num_buckets, c.t5_max_distance,
                                          bidirectional)
    return None, None, None


def soft_cap(logits, cap):
    """cap * tanh(logits / cap) (Gemma 2, Gemma Team 2024; modded-nanogpt): smooth, identity-like
    for |logits| << cap and bounded by +-cap, so no logit can run away and sharpen the softmax
    without limit. logits: Tensor (..., V); cap None returns them unchanged."""
    return logits if cap is None else (logits / cap).tanh() * cap


def init_gpt2_weights(model, n_layer, zero_residual=False):
    """GPT-2's initialisation: N(0, 0.02) for matrices and embeddings, zero biases, and the
    projections that write into the residual stream scaled by 1/sqrt(2 n_layer), so the stream's
    variance does not grow with depth. Norm weights keep their ones; T5 bias tables their init.
    zero_residual: those projections start at zero instead, as modded-nanogpt does (muP zeroes
    its readout the same way, Yang et al., 2022): every block starts as the identity and the
    projections still get a gradient. Their random numbers are still drawn, so every other
    weight is the one the default draws."""
    std = 0.02
    residual_std = 0.0 if zero_residual else std / math.sqrt(2 * n_layer)
    rng = backend.rng("cpu")
    with no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                if name.endswith("bias"):
                    p.data[...] = 0
                continue
            if name.startswith(("pos_bias", "skip_weights")):
                continue
            residual = name.endswith(("attn.proj.weight", "down.weight"))
            values = rng.standard_normal(p.shape) * (residual_std if residual else std)
            p.data[...] = backend.to_device(values.astype(p.dtype), p.device)


def position_bias(pos_bias, tq, tk, like):
    """The additive attention bias (1, H, Tq, Tk) of an ALiBi or T5 module (None for neither),
    on `like`'s device and dtype."""
    if pos_bias is None:
        return None
    if isinstance(pos_bias, ALiBi):
        return pos_bias(tq, tk, like.device, like.dtype)
    return pos_bias(tq, tk)


# ---- the model ----------------------------------------------------------------------------
class GPT(Module):
    """Decoder-only language model. model(idx) -> logits (B, T, V);
    model(idx, targets) -> (logits, loss), the loss including any MoE auxiliary losses."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.tok_emb = Embedding(config.vocab_size, config.n_embd)
        self.pos_emb, self.rotary, self.pos_bias = make_positions(config)
        # attention-only blocks (mlp="none") have neither the feed-forward nor its norm
        has_ffn = config.mlp != "none"
        self.blocks = ModuleList(
            TransformerBlock(make_attention(config, layer, self.rotary),
                             make_ffn(config) if has_ffn else None, make_norm(config),
                             make_norm(config) if has_ffn else None, config.prenorm)
            for layer in range(config.n_layer))
        self.norm = make_norm(config) if config.prenorm else None
        self.head = Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.tok_emb.weight        # one Parameter, two names
        # U-net skips (modded-nanogpt, after Ronneberger et al., 2015): the output of layer i
        # < n_skip = L // 2 is added, times a learned weight (init 1), to the input of layer
        # L - 1 - i, so the late layers see early features directly (an odd middle layer
        # takes none). skip_weights[j] belongs to the j-th receiving layer, L - n_skip + j.
        self.n_skip = config.n_layer // 2 if config.unet_skips else 0
        self.skip_weights = (Parameter(np.ones(self.n_skip, np.float32))
                             if config.unet_skips else None)
        init_gpt2_weights(self, config.n_layer, config.zero_init_proj)
        # Value embeddings (modded-nanogpt): k = value_embeds more token tables (V, Hkv D);
        # table i < k is added to the attention values of layer i and of its mirror L - 1 - i,
        # times a learned gain (init 1) per receiving layer: v <- v + value_gains[j] E_i[idx],
        # value_gains[j] belonging to the j-th receiving layer (layers 0..k-1, L-k..L-1). Built
        # and drawn (N(0, 0.02), as tok_emb) after every other weight, so those stay the default's.
        k, width = config.value_embeds, config.n_kv_head * config.head_dim
        self.value_embeds = (ModuleList(Embedding(config.vocab_size, width) for _ in range(k))
                             if k else None)
        self.value_gains = Parameter(np.ones(2 * k, np.float32)) if k else None
        if k:
            init_gpt2_weights(self.value_embeds, config.n_layer)

    def _check_ids(self, idx, offset, caches=None):
        idx = np.asarray(idx) if not hasattr(idx, "shape") else idx
        if idx.ndim != 2:
            raise ValueError(f"GPT: idx must be (B, T) integer ids, got shape {idx.shape}")
        t = idx.shape[1]
        # caches that assign positions themselves (attention sinks) take any offset
        in_cache = getattr(caches, "positions_in_cache", False)
        if offset + t > self.config.max_positions and not in_cache:
            raise ValueError(f"GPT: sequence of {offset + t} positions exceeds block_size="
                             f"{self.config.block_size}" + (
                                 f" (max_positions={self.config.max_positions} with RoPE "
                                 "scaling)" if self.config.max_positions != self.config.block_size
                                 else ""))
        return idx

    def forward(self, idx, targets=None, padding_mask=None, caches=None, offset=0,
                positions=None, attn_mask=None):
        """idx: (B, T) int ids -> logits (B, T, V), or (logits, loss) when targets (B, T) are
        given (ignore_index -100). caches: one KV cache per layer (the decoder's), offset: the
        position of idx's first token. positions: (B, T) ints for a learned or sinusoidal
        table when rows differ (left padding); relative schemes (RoPE, ALiBi, T5) need none.
        attn_mask: an additive (B or 1, 1, T, T) array (0 or -inf) on top of the causal mask,
        e.g. to keep packed examples from seeing each other (finetune/sft.py)."""
        x = self.hidden_states(idx, padding_mask, caches, offset, positions, attn_mask)
        logits = soft_cap(self.head(x), self.config.logit_softcap)  # (B, T, V)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits, targets)
        return logits, loss + self.auxiliary_loss() if self.config.n_expert else loss

    def hidden_states(self, idx, padding_mask=None, caches=None, offset=0, positions=None,
                      attn_mask=None):
        """The final (normed) hidden states (B, T, C) that the head reads: what a reward or
        classification head sits on (finetune/heads.py). Arguments as forward's."""
        idx = self._check_ids(array_of(idx), offset, caches)
        b, t = idx.shape
        x = self.tok_emb(idx)                                       # (B, T, C)
        if self.pos_emb is not None:
            x = x + (self.pos_emb(t, offset) if positions is None
                     else self.pos_emb.rows(positions))
        bias = position_bias(self.pos_bias, t, t + offset, x)
        if attn_mask is not None:
            attn_mask = backend.to_device(array_of(attn_mask), x.device,
                                          x.dtype)
            bias = attn_mask if bias is None else bias + attn_mask
        values = self._value_terms(idx)
        shared, skips, first_receiver = None, [], len(self.blocks) - self.n_skip
        for layer, block in enumerate(self.blocks):
            if layer >= first_receiver:                  # U-net: the mirrored layer's output
                x = x + self.skip_weights[layer - first_receiver] * skips.pop()
            cache = caches[layer] if caches is not None else None
            x, kv = block(x, bias=bias, padding_mask=padding_mask, offset=offset,
                          shared_kv=shared, cache=cache, value_embed=values[layer])
            if layer % self.config.kv_share == 0:
                shared = kv
            if layer < self.n_skip:
                skips.append(x)
        return self.norm(x) if self.norm is not None else x

    def _value_terms(self, idx):
        """What each layer adds to its attention values: value_gains[j] * E_i[idx] (B, T, Hkv D)
        for the layers a table feeds, None for the others. One lookup serves both of a table's
        layers; the gains' gradient is then sum(dv * E_i[idx]), the table's a scatter-add of
        value_gains[j] * dv (autograd's MulOp and EmbeddingOp)."""
        n, k = len(self.blocks), self.config.value_embeds
        terms = [None] * n
        for i in range(k):
            e = self.value_embeds[i](idx)                               # (B, T, Hkv D)
            terms[i] = self.value_gains[i] * e
            terms[n - 1 - i] = self.value_gains[2 * k - 1 - i] * e
        return terms

    def auxiliary_loss(self):
        """Sum of the MoE load-balancing and router z-losses of the last forward."""
        total = 0.0
        for block in self.blocks:
            total = total + block.ffn.aux_loss + block.ffn.z_loss
        return total

    @classmethod
    def from_pretrained(cls, path, dtype=np.float32, device=None):
        """A GPT loaded from a Hugging Face GPT-2 / Llama / Mistral directory (or one written by
        save_pretrained); see models/hf.py."""
        from .hf import from_pretrained          # hf.py builds on this module
        return from_pretrained(path, dtype=dtype, device=device)

    def generate(self, idx, max_new_tokens, **kwargs):
        """model.generate(idx, max_new_tokens, ...) is generate(model, idx, max_new_tokens, ...)
        (generate/generate.py; the arguments are documented there), as transformers spells it."""
        from ..generate import generate          # generate/ builds on this module
        return generate(self, idx, max_new_tokens, **kwargs)

    def save_pretrained(self, path):
        """Write config.json + model.safetensors in Hugging Face's layout where it applies."""
        from .hf import save_pretrained
        save_pretrained(self, path)

    def set_rope_scaling(self, scaling):
        """Rebuild the rotary tables of this (trained) model for a RoPE scaling, in place:
        {"type": "linear" | "ntk" | "yarn", "factor": f, ...} (nn/positions.py's
        RotaryEmbedding documents the keys), or None for plain RoPE. model.config becomes a copy
        with rope_scaling set, so config.max_positions is int(block_size * f). The tables keep
        the model's device and dtype; every attention layer gets the new RotaryEmbedding.
        Returns the model."""
        c = self.config
        if c.pos != "rope":
            raise ValueError(f"set_rope_scaling: the model's pos={c.pos!r} has no rotary tables "
                             "to rescale; expected pos='rope'")
        old = self.rotary
        rotary = RotaryEmbedding(c.head_dim, c.block_size, c.rope_theta, scaling,
                                 device=backend.device_of(old.cos), dtype=old.cos.dtype)
        holders = [m for m in self.modules() if getattr(m, "rotary", None) is old]
        for m in holders:
            m.rotary = rotary
        # a new config, not an edit: another model built from the same one keeps its own
        self.config = dataclasses.replace(c, rope_scaling=rotary.scaling)
        return self

    def num_parameters(self, non_embedding=False):
        """Parameter count; non_embedding=True leaves out the token, value and position tables
        (as GPT-2's paper counts). A tied head is counted once."""
        n = super().num_parameters()
        if non_embedding:
            n -= self.tok_emb.weight.numel()
            n -= sum(table.weight.numel() for table in self.value_embeds or ())
            if isinstance(self.pos_emb, LearnedPositions):
                n -= self.pos_emb.weight.numel()
        return n
