"""Transformer-XL (Dai et al., 2019): a decoder that reads a long stream segment by segment and
carries each layer's hidden states from one segment to the next as a memory.

    idx (B, T) -> tok_emb -> [block(x, mem_l)] x n_layer -> norm -> head -> logits (B, T, V)
    new_mems[l] = the last mem_len rows of [mems[l]; h_l],   h_l = the input of layer l

The memory is a constant of the next step (detached: no gradient flows into the past), so
training costs one segment's backward while the context a token sees grows with the depth: layer
l attends over mem_len earlier states that themselves saw mem_len before them, up to about
n_layer * mem_len tokens back (Dai et al., Sec. 3.2). Positions are relative
(nn/relative_attention.py), so the same weights evaluate at other segment and memory lengths.
mem_len = 0 is the same network without memory: the baseline with exactly the same parameters.

Reading order: TransformerXLConfig, TransformerXLBlock, TransformerXL: forward (the memory
update), stream_nll (evaluation over a long stream), generate (sampling that carries the memory).
"""
import dataclasses

import numpy as np

from .. import backend
from ..nn import functional as F
from ..nn.layers import Embedding, Linear
from ..nn.module import Module, ModuleList
from ..nn.relative_attention import RELATIVE_POSITIONS, RelativeMultiHeadAttention
from ..tensor import Tensor, array_of, no_grad
from .gpt import GPTConfig, init_gpt2_weights, make_ffn, make_norm

__all__ = ["TransformerXLConfig", "TransformerXL", "TransformerXLBlock"]

# GPTConfig fields that describe something this model does not have, with their only value here
_FIXED = dict(attention="softmax", window=None, kv_share=1, n_expert=0, prenorm=True,
              rope_scaling=None, qk_norm=False, logit_softcap=None, unet_skips=False,
              zero_init_proj=False, value_embeds=0)


@dataclasses.dataclass
class TransformerXLConfig(GPTConfig):
    """GPTConfig's fields plus the memory. block_size: the longest segment a forward takes
    (T); mem_len: hidden states kept per layer (M; 0: no memory; default block_size);
    pos: "xl" (Dai et al.'s relative attention) or "rope". The GPTConfig fields with no meaning
    here (attention kind, window, kv_share, experts, post-LN, RoPE scaling, and the speedrun
    switches QK-norm, logit soft-capping, U-net skips, zero-initialised projections, value
    embeddings) must keep their defaults."""
    pos: str = "xl"
    mem_len: int = None

    def __post_init__(self):
        if self.pos not in RELATIVE_POSITIONS:
            raise ValueError(f"TransformerXLConfig: pos={self.pos!r} is not one of "
                             f"{RELATIVE_POSITIONS}")
        for field, value in _FIXED.items():
            if getattr(self, field) != value:
                raise ValueError(f"TransformerXLConfig: {field}={getattr(self, field)!r} is not "
                                 f"supported (only {value!r})")
        if self.mem_len is None:
            self.mem_len = self.block_size
        if isinstance(self.mem_len, bool) or not isinstance(self.mem_len, (int, np.integer)) \
                or self.mem_len < 0:
            raise ValueError(f"TransformerXLConfig: mem_len must be an int >= 0, got "
                             f"{self.mem_len!r}")
        pos, self.pos = self.pos, "none"     # GPTConfig's own checks know only its schemes
        try:
            super().__post_init__()
        finally:
            self.pos = pos
        if self.pos == "rope" and self.head_dim % 2:
            raise ValueError(f"TransformerXLConfig: RoPE needs an even head_dim, got "
                             f"{self.head_dim}")


class TransformerXLBlock(Module):
    """Pre-norm block whose attention also reads the memory:
    x = x + attn(norm1(x), norm1(mem));  x = x + ffn(norm2(x))."""

    def __init__(self, config):
        super().__init__()
        c = config
        self.norm1 = make_norm(c)
        self.attn = RelativeMultiHeadAttention(
            c.n_embd, c.n_head, c.head_dim, c.bias, c.dropout, pos=c.pos, n_kv_head=c.n_kv_head,
            max_len=c.block_size + c.mem_len, rope_theta=c.rope_theta)
        self.norm2 = make_norm(c)
        self.ffn = make_ffn(c)

    def forward(self, x, mem=None):
        """x: (B, T, C), mem: (B, M, C) Tensor without grad, or None -> (B, T, C)."""
        x = x + self.attn(self.norm1(x), None if mem is None else self.norm1(mem))
        return x + self.ffn(self.norm2(x))


class TransformerXL(Module):
    """Language model over segments with a recurrence memory.

    model(idx, mems=None) -> (logits, new_mems); model(idx, targets, mems) -> (logits, loss,
    new_mems). idx: (B, T) ids, T <= block_size; mems: None or the previous call's new_mems, a
    list of n_layer Tensors (B, M', C) without grad. mem_len overrides config.mem_len for the
    call (evaluation with a longer memory)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.tok_emb = Embedding(config.vocab_size, config.n_embd)
        self.blocks = ModuleList(TransformerXLBlock(config) for _ in range(config.n_layer))
        self.norm = make_norm(config)
        self.head = Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.tok_emb.weight        # one Parameter, two names
        init_gpt2_weights(self, config.n_layer)

    # ---- checks -------------------------------------------------------------------------------
    def _check_ids(self, idx):
        idx = array_of(idx)
        idx = np.asarray(idx) if not hasattr(idx, "shape") else idx
        if idx.ndim != 2 or idx.shape[1] < 1:
            raise ValueError(f"TransformerXL: idx must be (B, T) integer ids with T >= 1, got "
                             f"shape {idx.shape}")
        if idx.shape[1] > self.config.block_size:
            raise ValueError(f"TransformerXL: idx is a segment of {idx.shape[1]} tokens, longer "
                             f"than block_size={self.config.block_size}; cut the stream into "
                             f"segments of at most block_size")
        return idx

    def _check_mems(self, mems, batch):
        if mems is None:
            return None
        c = self.config
        if not isinstance(mems, (list, tuple)) or len(mems) != c.n_layer:
            got = len(mems) if isinstance(mems, (list, tuple)) else type(mems).__name__
            raise ValueError(f"TransformerXL: mems must be a list of n_layer={c.n_layer} "
                             f"(B, M, C) states (the new_mems of the previous call), got {got}")
        # detached: a memory handed in with a graph still passes no gradient into the past
        mems = [m.detach() if isinstance(m, Tensor)
                else Tensor._wrap(backend.to_device(m, self.device)) for m in mems]
        shape = mems[0].shape
        for layer, m in enumerate(mems):
            if m.ndim != 3 or m.shape != shape or m.shape[0] != batch or m.shape[2] != c.n_embd:
                raise ValueError(f"TransformerXL: mems[{layer}] has shape {m.shape}; every layer's "
                                 f"memory must be (B, M, C) with B={batch} (idx's batch) and "
                                 f"C={c.n_embd}, the same M in every layer")
        return mems

    @staticmethod
    def _check_mem_len(mem_len, default):
        if mem_len is None:
            return default
        if isinstance(mem_len, bool) or not isinstance(mem_len, (int, np.integer)) \
                or mem_len < 0:
            raise ValueError(f"TransformerXL: mem_len must be an int >= 0, got {mem_len!r}")
        return int(mem_len)

    # ---- forward ----------------------------------------------------------------------------
    def forward(self, idx, targets=None, mems=None, mem_len=None):
        """idx: (B, T) ids -> (logits (B, T, V), new_mems), or (logits, loss, new_mems) with
        targets (B, T) (ignore_index -100). new_mems: n_layer Tensors (B, min(M' + T, mem_len),
        C), detached."""
        idx = self._check_ids(idx)
        mems = self._check_mems(mems, idx.shape[0])
        mem_len = self._check_mem_len(mem_len, self.config.mem_len)
        x = self.tok_emb(idx)                                          # (B, T, C)
        inputs = []
        for layer, block in enumerate(self.blocks):
            inputs.append(x)
            x = block(x, None if mems is None else mems[layer])
        logits = self.head(self.norm(x))                               # (B, T, V)
        new_mems = self._update_mems(inputs, mems, mem_len)
        if targets is None:
            return logits, new_mems
        return logits, F.cross_entropy(logits, targets), new_mems

    @staticmethod
    def _update_mems(inputs, mems, mem_len):
        """The last mem_len rows of [mems[l]; h_l] per layer, as Tensors without a graph: the
        arrays themselves (views where nothing is concatenated), so no gradient reaches them."""
        new = []
        for layer, h in enumerate(inputs):
            xp = backend.array_module(h.data)
            full = h.data if mems is None else xp.concatenate([mems[layer].data, h.data], axis=1)
            new.append(Tensor._wrap(full[:, full.shape[1] - min(mem_len, full.shape[1]):]))
        return new

    # ---- evaluation over a long stream ------------------------------------------------------
    def stream_nll(self, ids, segment_len=None, mem_len=None):
        """Per-token negative log-likelihood (nats, float64 NumPy (N - 1,)) of ids[1:] given
        everything before, reading a 1-D id array in consecutive segments of segment_len
        (default block_size) with a memory of mem_len (default config.mem_len) carried across
        them, as Dai et al. evaluate (they too use longer segments and memories than in
        training). Runs in eval mode without grad; one host read at the end."""
        ids = np.asarray(backend.to_numpy(array_of(ids)))
        if ids.ndim != 1 or ids.size < 2 or ids.dtype.kind not in "iu":
            raise ValueError(f"stream_nll: ids must be a 1-D integer array of at least 2 ids, "
                             f"got shape {ids.shape} dtype {ids.dtype}")
        segment_len = self.config.block_size if segment_len is None else segment_len
        if isinstance(segment_len, bool) or not isinstance(segment_len, (int, np.integer)) \
                or not 1 <= segment_len <= self.config.block_size:
            raise ValueError(f"stream_nll: segment_len must be an int in [1, block_size="
                             f"{self.config.block_size}], got {segment_len!r}")
        mem_len = self._check_mem_len(mem_len, self.config.mem_len)
        was_training, device = self.training, self.device
        self.eval()
        nll, mems = [], None
        try:
            with no_grad():
                for start in range(0, ids.size - 1, segment_len):
                    stop = min(start + segment_len, ids.size - 1)
                    x = backend.to_device(ids[None, start:stop].astype(np.int64), device)
                    y = backend.to_device(ids[None, start + 1:stop + 1].astype(np.int64), device)
                    logits, mems = self(x, mems=mems, mem_len=mem_len)
                    nll.append(F.cross_entropy(logits, y, reduction="none").data[0])    # (T,)
        finally:
            self.train(was_training)
        xp = backend.xp_for(device)
        return backend.to_numpy(xp.concatenate(nll)).astype(np.float64)

    # ---- generation ---------------------------------------------------------------------------
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, seed=0):
        """idx (B, T0) or (T0,) ids -> (B, T0 + max_new_tokens) int64 NumPy ids, sampled with the
        decoder's sampling (generate/sampling.py: temperature 0 is greedy; a seeded Philox
        generator on the model's device).

        The stream is cut into segments of block_size as in training: full segments of the prompt
        go into the memory first; each new token then re-runs the current partial segment (of
        t <= block_size tokens) over the memory, and a segment that fills up becomes memory.
        Without a KV cache a token costs O(t (M + t)) attention and t positions of the rest
        instead of O(M + t) and one, about block_size / 2 times the cached work on average: simple
        and plainly what training saw. One (B,) read per token (the sampled ids)."""
        from ..generate.sampling import SamplingConfig, next_ids   # generate/ builds on models/
        from ..random import Generator
        config = SamplingConfig(temperature, top_k)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) \
                or max_new_tokens < 0:
            raise ValueError(f"generate: max_new_tokens must be an int >= 0, got "
                             f"{max_new_tokens!r}")
        tokens = np.asarray(backend.to_numpy(array_of(idx)))
        tokens = tokens[None] if tokens.ndim == 1 else tokens
        if tokens.ndim != 2 or tokens.shape[1] < 1 or tokens.dtype.kind not in "iu":
            raise ValueError(f"generate: idx must be (B, T) or (T,) integer ids with T >= 1, got "
                             f"shape {tokens.shape} dtype {tokens.dtype}")
        tokens = tokens.astype(np.int64)
        segment, device = self.config.block_size, self.device
        generator = Generator(device, seed)
        was_training = self.training
        self.eval()
        try:
            with no_grad():
                mems, start = None, 0              # start: the current segment's first column
                while tokens.shape[1] - start > segment:
                    _, mems = self(backend.to_device(tokens[:, start:start + segment], device),
                                   mems=mems)
                    start += segment
                for _ in range(max_new_tokens):
                    logits, new_mems = self(backend.to_device(tokens[:, start:], device),
                                            mems=mems)
                    ids = backend.to_numpy(next_ids(logits.data[:, -1], config, generator))
                    if tokens.shape[1] - start == segment:        # full: it becomes the memory
                        mems, start = new_mems, tokens.shape[1]
                    tokens = np.concatenate([tokens, ids[:, None].astype(np.int64)], axis=1)
        finally:
            self.train(was_training)
        return tokens

    def num_parameters(self, non_embedding=False):
        """Parameter count (a tied head counted once); non_embedding=True leaves out the token
        table."""
        n = super().num_parameters()
        return n - self.tok_emb.weight.numel() if non_embedding else n
