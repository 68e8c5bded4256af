"""KV caches: what an attention layer keeps between decoding steps.

Without a cache, producing token T+1 recomputes the keys and values of all T earlier tokens,
O(T) work per layer per token that was already done. A token's K and V never change once it has
been seen (a causal model's earlier positions do not look ahead), so the decoder stores them:
the prompt is run once ("prefill"), then each step feeds one new token, appends its K/V and
attends over everything stored.

    KVCache         (B, Hkv, T_max, D) arrays, preallocated, filled left to right. GQA/MQA layers
                    store only their Hkv heads. Keys are stored after RoPE, so their positions
                    are already in them. Optionally int8 (one scale per token and head).
    KVCache(window=W)  a sliding-window layer needs only its last W - 1 keys: a ring buffer of
                    W - 1 + slack entries (slack lets speculative decoding roll back a few tokens).
    LinearAttentionState  linear attention needs no keys at all: the running sums
                    S = sum phi(k) v^T and z = sum phi(k) are its whole memory (RNN form).

Every cache answers `update(k, v) -> (k_all, v_all)` (the attention layer's protocol), `length`,
`reorder(rows)` (beam search keeps some rows and repeats others) and `truncate(length)`
(speculative decoding drops rejected tokens). `make_caches(model, batch, max_len)` builds one per
layer; layers that reuse an earlier layer's K/V (cross-layer sharing) get None.

make_caches(..., implementation=...) also builds the long-context caches of long_caches.py
(attention sinks, a plain window, KIVI's int4/int2, H2O eviction): those take the attention step
over (`attend`) instead of answering `update`.
"""
import numpy as np

from .. import backend
from ..ops.linear_attention import (FEATURE_MAPS, linear_attention_forward,
                                    linear_attention_state, linear_attention_step)
from ..tensor import Tensor
from .long_caches import POSITIONS_IN_CACHE, make_long_caches

__all__ = ["KVCache", "LinearAttentionState", "CacheList", "make_caches", "cache_nbytes"]


def _data(x):
    return x.data if isinstance(x, Tensor) else x


class KVCache:
    """One layer's keys and values for a batch of B sequences.

    max_len: positions to hold (full attention). window: sliding-window size W (the ring holds
    W - 1 + slack entries, whatever max_len is). dtype "int8" stores K/V as int8 with a float
    scale per (row, head, token): absmax / 127, about 4x smaller than float32. storage: (k, v)
    arrays of shape (batch, n_kv_head, max_len, head_dim) to use instead of new ones (views of
    a DecodePlan's stacked buffers)."""
    attends = False      # the layer attends over what update() returns (long_caches.py: True)

    def __init__(self, batch, n_kv_head, head_dim, max_len, dtype=np.float32, device="cpu",
                 window=None, slack=16, storage=None):
        xp = backend.xp_for(device)
        self.int8 = np.dtype(dtype) == np.int8 if not isinstance(dtype, str) else dtype == "int8"
        self.float_dtype = np.float32 if self.int8 else np.dtype(dtype)
        self.window = window
        self.capacity = max_len if window is None else min(max_len, window - 1 + slack)
        shape = (batch, n_kv_head, max(self.capacity, 1), head_dim)
        store = np.int8 if self.int8 else self.float_dtype
        if storage is not None:
            if self.int8 or any(a.shape != shape or a.dtype != store for a in storage):
                raise ValueError(f"KVCache: storage must be two {store} arrays of shape {shape}, "
                                 f"got {[(a.shape, a.dtype) for a in storage]}")
            self.k, self.v = storage
        else:
            self.k, self.v = xp.zeros(shape, dtype=store), xp.zeros(shape, dtype=store)
        if self.int8:
            self.k_scale = xp.zeros(shape[:3] + (1,), dtype=np.float32)
            self.v_scale = xp.zeros(shape[:3] + (1,), dtype=np.float32)
        self.length = 0            # tokens seen (positions); the ring keeps the last `capacity`
        self.max_len = max_len

    # ---- storage -------------------------------------------------------------------------
    def _slots(self, start, n):
        """Buffer indices of positions start .. start + n - 1: a slice when they are contiguous
        (no window), so a write on a GPU is a plain copy, not an index array sent over first."""
        if self.window is None:
            return slice(start, start + n)
        return np.arange(start, start + n) % self.capacity

    def _write(self, k, v):
        n = k.shape[2]
        slots = self._slots(self.length, n)
        if self.window is not None and n > self.capacity:      # only the last ones survive
            slots, k, v = slots[-self.capacity:], k[:, :, -self.capacity:], v[:, :, -self.capacity:]
        if self.int8:
            xp = backend.array_module(k)
            for x, store, scale in ((k, self.k, self.k_scale), (v, self.v, self.v_scale)):
                s = (xp.abs(x).max(axis=-1, keepdims=True) / 127.0).astype(np.float32)
                store[:, :, slots] = xp.rint(x / xp.where(s == 0, 1, s)).astype(np.int8)
                scale[:, :, slots] = s
        else:
            self.k[:, :, slots] = k
            self.v[:, :, slots] = v

    def _read(self, slots):
        if self.int8:
            return ((self.k[:, :, slots] * self.k_scale[:, :, slots]).astype(self.float_dtype),
                    (self.v[:, :, slots] * self.v_scale[:, :, slots]).astype(self.float_dtype))
        if self.window is None:                                # a view, no copy
            return self.k[:, :, :slots.stop], self.v[:, :, :slots.stop]
        return self.k[:, :, slots], self.v[:, :, slots]

    def _stored(self):
        """Buffer indices of the stored positions, oldest first."""
        if self.window is None:
            return slice(0, self.length)
        n = min(self.length, self.capacity)
        return self._slots(self.length - n, n)

    # ---- the attention layer's protocol ---------------------------------------------------
    def update(self, k, v):
        """Append this step's k, v (B, Hkv, t, D); return the K/V to attend over: the stored
        ones (oldest first) then these. With a window, older keys than W - 1 back are dropped;
        the attention's window mask ignores any extra it is given."""
        k, v = _data(k), _data(v)
        t = k.shape[2]
        if self.window is None and self.length + t > self.max_len:
            raise ValueError(f"KVCache: {self.length} + {t} tokens exceed max_len={self.max_len}")
        past = self._stored()
        has_past = self.length > 0
        if has_past:
            pk, pv = self._read(past)
        self._write(k, v)
        self.length += t
        if not has_past:
            ka, va = k, v
        elif self.window is None and not self.int8:
            ka, va = self._read(self._stored())                # the buffer now holds all
        else:
            xp = backend.array_module(k)
            ka, va = xp.concatenate([pk, k], axis=2), xp.concatenate([pv, v], axis=2)
        return Tensor._wrap(ka), Tensor._wrap(va)

    def reorder(self, rows):
        """Keep batch rows `rows` (an int array; repeats allowed), e.g. surviving beams."""
        rows = np.asarray(rows)
        self.k, self.v = self.k[rows], self.v[rows]
        if self.int8:
            self.k_scale, self.v_scale = self.k_scale[rows], self.v_scale[rows]

    def truncate(self, length):
        """Forget positions >= length (rejected speculative tokens)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"KVCache.truncate: length must be in [0, {self.length}], got "
                             f"{length}")
        if self.window is not None and self.length - length > self.capacity - (self.window - 1):
            raise ValueError(f"KVCache.truncate: a window-{self.window} ring keeps only "
                             f"{self.capacity - self.window + 1} tokens of slack; cannot drop "
                             f"{self.length - length}")
        self.length = length

    @property
    def held(self):
        """Tokens whose K/V the cache holds now (a window's ring keeps the last `capacity`)."""
        return min(self.length, self.capacity)

    @property
    def nbytes(self):
        n = self.k.nbytes + self.v.nbytes
        return n + (self.k_scale.nbytes + self.v_scale.nbytes if self.int8 else 0)


class LinearAttentionState:
    """Linear attention's memory: S (B, H, D, Dv) and z (B, H, D) after the tokens seen so far
    (ops/linear_attention.py). Its size does not grow with the sequence. `attend` replaces the
    attention call; the last step's intermediate states are kept so `truncate` can roll back
    within it."""

    def __init__(self, feature_map="elu", eps=1e-6):
        self.feature_map, self.eps = FEATURE_MAPS[feature_map], eps
        self.s = self.z = None
        self.length = 0
        self._history = []           # (length, s, z) after each token of the last step

    def update(self, k, v):
        raise TypeError("LinearAttentionState keeps sums, not keys: the layer calls attend()")

    def attend(self, q, k, v):
        """q, k, v: (B, H, t, D) Tensors (K/V heads already expanded) -> output (B, H, t, Dv)
        Tensor, as causal linear attention over everything seen, and the state advanced."""
        phi_q, phi_k, v = _data(self.feature_map(q)), _data(self.feature_map(k)), _data(v)
        t = v.shape[2]
        self._history = [(self.length, self.s, self.z)]
        if self.s is None and t > 1:          # a prefill: the chunked op, then S, z at once
            out = linear_attention_forward(phi_q, phi_k, v, True, self.eps)[0]
            self.s, self.z = linear_attention_state(phi_k, v)
            self.length = t
            self._history.append((t, self.s, self.z))
            return Tensor._wrap(out)
        outs = []
        for i in range(t):                    # the RNN form, one token at a time
            o, self.s, self.z = linear_attention_step(phi_q[:, :, i], phi_k[:, :, i],
                                                      v[:, :, i], self.s, self.z, self.eps)
            self.length += 1
            self._history.append((self.length, self.s, self.z))
            outs.append(o)
        return Tensor._wrap(backend.array_module(v).stack(outs, axis=2))

    def reorder(self, rows):
        if self.s is not None:
            self.s, self.z = self.s[rows], self.z[rows]
        self._history = []

    def truncate(self, length):
        for n, s, z in self._history:
            if n == length:
                self.s, self.z, self.length = s, z, length
                return
        if length != self.length:
            raise ValueError(f"LinearAttentionState.truncate: can roll back only within the last "
                             f"step ({[n for n, _, _ in self._history]}), got {length}")

    @property
    def nbytes(self):
        return 0 if self.s is None else self.s.nbytes + self.z.nbytes


class CacheList(list):
    """make_caches' result: one cache per layer, and
    plan: the DecodePlan whose stacked buffers they are views of (None when the fused decode
        step does not apply);
    positions_in_cache: True when the caches assign positions themselves (attention sinks,
        window), so the model accepts offsets past its max_positions;
    prefill_chunk: the most tokens one forward may feed (None: any), which a decoder follows
        when it feeds a long prompt."""
    plan = None
    positions_in_cache = False
    prefill_chunk = None


def make_caches(model, batch, max_len, dtype=None, slack=16, implementation=None, **config):
    """One cache per attention layer of a GPT (None where a softmax layer reuses an earlier
    layer's K/V).

    dtype: the model's float dtype by default; "int8" for the quantised cache. A batch-1 float
    cache of a model that decode_step.py can run gets a DecodePlan: the per-layer caches are
    then views of its two stacked buffers, and single-token steps take the fused path.
    implementation: None or "dense" (these KVCaches), or one of long_caches.py's, configured by
    **config: "sinks" (n_sink=4, window), "window" (window), "quantized" (bits=4,
    group_size, residual_length=32), "h2o" (budget, recent); each also takes prefill_chunk.
    Those hold what they choose, so max_len, dtype and slack do not apply to them."""
    if implementation not in (None, "dense"):
        if dtype is not None:
            raise ValueError(f"make_caches: dtype={dtype!r} applies to the dense cache only; "
                             f"implementation={implementation!r} keeps the model's float dtype "
                             f"(for a quantized cache use implementation='quantized' and bits)")
        caches, chunk = make_long_caches(model, batch, implementation, config)
        caches = CacheList(caches)
        caches.positions_in_cache = implementation in POSITIONS_IN_CACHE
        caches.prefill_chunk = chunk
        return caches
    chunk = config.pop("prefill_chunk", None)
    if config:
        raise TypeError(f"make_caches: unknown arguments {sorted(config)} for the dense cache "
                        f"(implementation={implementation!r})")
    caches = _dense_caches(model, batch, max_len, dtype, slack)
    if chunk is not None:
        if isinstance(chunk, bool) or int(chunk) != chunk or chunk < 1:
            raise ValueError(f"make_caches: prefill_chunk must be an int >= 1, got {chunk!r}")
        caches.prefill_chunk = int(chunk)
    return caches


def _dense_caches(model, batch, max_len, dtype, slack):
    from .decode_step import DecodePlan       # decode_step builds on this module's caches
    def model_dtype():
        return next(iter(model.parameters())).dtype

    if batch == 1 and DecodePlan.reason(model) is None and dtype in (None, model_dtype()):
        plan = DecodePlan(model, max_len)
        caches = CacheList(KVCache(1, plan.weights.n_kv_head, plan.weights.head_dim, max_len,
                                   dtype=model_dtype(), device=model.device, storage=storage)
                           for storage in plan.storage)
        caches.plan = plan
        return caches
    caches = CacheList()
    for block in model.blocks:
        attn = block.attn
        if attn.kind == "linear":          # a sharing layer sums the shared K/V in its own state
            caches.append(LinearAttentionState())
        elif attn.shares_kv:
            caches.append(None)
        else:
            caches.append(KVCache(batch, attn.n_kv_head, attn.head_dim, max_len,
                                  dtype=dtype or model_dtype(),
                                  device=model.device,
                                  window=attn.window, slack=slack))
    return caches


def cache_nbytes(caches):
    return sum(c.nbytes for c in caches if c is not None)
