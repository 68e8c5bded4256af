"""Long-context KV caches: memory that stays bounded, or shrinks, as the context grows.

A dense cache (kv_cache.py) keeps every key and value: memory and per-token work grow with the
context, and a model cannot go past the positions it was trained on. These three trade exactness
for memory, each as one class:

    SinkCache         StreamingLLM (Xiao et al., 2023): the first n_sink tokens, which soak up
                      the attention mass that softmax must put somewhere ("attention sinks"), plus
                      the `window` most recent. Keys are stored before RoPE and rotated at their
                      slot in the cache (positions 0 .. n - 1, the new queries at the last slots,
                      the paper's section 3.2), so a RoPE (or position-free) model streams any
                      number of tokens without seeing a position it never trained on. n_sink=0 is
                      the plain window, the baseline that collapses once the first tokens leave.
    QuantizedKVCache  KIVI (Liu et al., 2024): keys quantized per channel (outlier channels keep
                      their own range) over blocks of residual_length tokens, values per token
                      over groups of group_size channels; asymmetric (scale, min), 8, 4 or 2 bits
                      packed into uint8. Tokens not yet filling a key block stay in float.
    H2OCache          Heavy-Hitter Oracle (Zhang et al., 2023): `recent` most recent keys plus
                      the budget - recent with the largest accumulated attention probability,
                      per layer and K/V head (summed over the head's query group).

They take over the attention step: the layer hands them q, k, v and the additive mask over every
position seen, and `attend(q, k, v, mask, rotary, causal) -> o` attends over what they hold plus
the new tokens (causal, end-aligned: the held keys all precede the new queries), then stores the
new K/V and evicts. `positions_in_cache` says which hands over q and k before RoPE (SinkCache);
the others get them rotated at their true positions. Like the dense cache they answer `length`
(tokens seen), `held` (tokens held now), `nbytes` (bytes of K/V state held now) and
`reorder(rows)`; an evicting cache cannot roll back (`truncate` only to its length).

Reading order: packing, KIVI's two quantization layouts, the shared pieces (_AttendingCache: what
the three caches share), SinkCache, kv_quant_attention (the reference of kernels/cpu/kv_quant.py,
which reads the codes without dequantizing) and QuantizedKVCache, H2OCache, make_long_caches
(what make_caches calls for these implementations).
"""
import math
import numbers

import numpy as np

from .. import backend
from ..kernels import kernel
from ..ops.attention import attention_forward
from ..ops.rope import rope_forward
from ..tensor import Tensor

__all__ = ["SinkCache", "QuantizedKVCache", "H2OCache", "pack_codes", "unpack_codes",
           "quantize_keys", "dequantize_keys", "quantize_values", "dequantize_values",
           "kv_quant_attention",
           "LONG_IMPLEMENTATIONS", "POSITIONS_IN_CACHE", "make_long_caches"]

LONG_IMPLEMENTATIONS = ("sinks", "window", "quantized", "h2o")
POSITIONS_IN_CACHE = ("sinks", "window")          # these assign positions inside the cache
BITS = (8, 4, 2)


def _data(x):
    return x.data if isinstance(x, Tensor) else x


def _int(owner, name, value, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{owner}: {name} must be an int >= {low}, got {value!r}")
    return int(value)


# ---- packing: 8 / bits codes per byte -------------------------------------------------------
def pack_codes(codes, bits):
    """codes: (..., N) uint8 in [0, 2^bits) -> (..., ceil(N bits / 8)) uint8, code j of a byte
    in bits [j bits, (j + 1) bits). N need not be a multiple of 8 / bits (the tail is 0)."""
    if bits == 8:
        return codes
    xp = backend.array_module(codes)
    per = 8 // bits
    pad = -codes.shape[-1] % per
    if pad:
        codes = xp.concatenate([codes, xp.zeros(codes.shape[:-1] + (pad,), dtype=np.uint8)],
                               axis=-1)
    codes = codes.reshape(codes.shape[:-1] + (-1, per))                # (..., N / per, per)
    shifts = xp.arange(0, 8, bits, dtype=np.uint8)                      # (per,)
    return (codes << shifts).sum(axis=-1, dtype=np.uint8)             # disjoint bits: sum = or


def unpack_codes(packed, bits, n):
    """The inverse of pack_codes: packed (..., M) uint8 -> codes (..., n) uint8."""
    if bits == 8:
        return packed[..., :n]
    xp = backend.array_module(packed)
    shifts = xp.arange(0, 8, bits, dtype=np.uint8)
    codes = (packed[..., None] >> shifts) & np.uint8((1 << bits) - 1)   # (..., M, per)
    return codes.reshape(packed.shape[:-1] + (-1,))[..., :n]


# ---- KIVI's layouts -------------------------------------------------------------------------
#   asymmetric min/max quantization of a group g:  s = (max g - min g) / (2^bits - 1)
#       code = round((x - min g) / s) in [0, 2^bits - 1],   x' = code s + min g,   |x - x'| <= s/2
#   keys:   per channel, the group is one channel over a block of R tokens (Liu et al., 2024:
#           key outliers live in fixed channels, so a channel's own range keeps them)
#   values: per token, the group is group_size consecutive channels of one token
def _quantize(x, bits, axis):
    """Codes (uint8, x's shape), scale and min (x's dtype, size 1 along axis) of the groups that
    run along `axis`."""
    xp = backend.array_module(x)
    lo = x.min(axis=axis, keepdims=True)
    scale = (x.max(axis=axis, keepdims=True) - lo) / ((1 << bits) - 1)
    codes = xp.rint((x - lo) / xp.where(scale > 0, scale, 1))          # a constant group: 0s
    return xp.clip(codes, 0, (1 << bits) - 1).astype(np.uint8), scale, lo


def quantize_keys(k, bits, block):
    """k: (B, Hkv, n, D), n a multiple of block -> packed codes (B, Hkv, n, ceil(D bits / 8)),
    scale and min (B, Hkv, n / block, D): one group per channel per block of tokens."""
    b, hkv, n, d = k.shape
    codes, scale, lo = _quantize(k.reshape(b, hkv, n // block, block, d), bits, axis=3)
    return (pack_codes(codes.reshape(b, hkv, n, d), bits), scale.reshape(b, hkv, -1, d),
            lo.reshape(b, hkv, -1, d))


def dequantize_keys(packed, scale, lo, bits, block, head_dim):
    """quantize_keys' inverse: -> (B, Hkv, n, D) in scale's dtype."""
    b, hkv, n, _ = packed.shape
    codes = unpack_codes(packed, bits, head_dim).reshape(b, hkv, n // block, block, head_dim)
    x = codes.astype(scale.dtype) * scale[:, :, :, None] + lo[:, :, :, None]
    return x.reshape(b, hkv, n, head_dim)


def quantize_values(v, bits, group_size):
    """v: (B, Hkv, n, D), group_size dividing D -> packed codes (B, Hkv, n, ceil(D bits / 8)),
    scale and min (B, Hkv, n, D / group_size): one group per group_size channels per token."""
    b, hkv, n, d = v.shape
    codes, scale, lo = _quantize(v.reshape(b, hkv, n, d // group_size, group_size), bits, axis=4)
    return pack_codes(codes.reshape(b, hkv, n, d), bits), scale[..., 0], lo[..., 0]


def dequantize_values(packed, scale, lo, bits, group_size, head_dim):
    """quantize_values' inverse: -> (B, Hkv, n, D) in scale's dtype."""
    b, hkv, n, _ = packed.shape
    codes = unpack_codes(packed, bits, head_dim).reshape(b, hkv, n, -1, group_size)
    x = codes.astype(scale.dtype) * scale[..., None] + lo[..., None]
    return x.reshape(b, hkv, n, head_dim)


# ---- shared pieces --------------------------------------------------------------------------
def _check_step(cache, q, k, v):
    """q (B, H, t, D), k and v (B, Hkv, t, D) with the cache's B, Hkv and D, Hkv dividing H."""
    b, hkv, d = cache.batch, cache.n_kv_head, cache.head_dim
    if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape or q.shape[2] != k.shape[2] \
            or q.shape[1] % hkv or (k.shape[0], k.shape[1], k.shape[3]) != (b, hkv, d) \
            or (q.shape[0], q.shape[3]) != (b, d):
        raise ValueError(f"{type(cache).__name__}.attend: expected q (B, H, t, D) and k, v "
                         f"(B, Hkv, t, D) with B={b}, Hkv={hkv} (dividing H), D={d}; got "
                         f"{q.shape}, {k.shape}, {v.shape}")


def _mask_array(mask, length, t, owner):
    """The additive mask as an array over every position seen (length + t columns), or None."""
    mask = _data(mask)
    if mask is not None and mask.shape[-1] != length + t:
        raise ValueError(f"{owner}.attend: mask must cover the {length} positions seen and the "
                         f"{t} new ones ({length + t} columns), got shape {mask.shape}")
    return mask


def _concat(held, new):
    """held (or None) then new along the token axis."""
    if held is None:
        return new
    return backend.array_module(new).concatenate([held, new], axis=2)


def _nbytes(*arrays):
    return sum(a.nbytes for a in arrays if a is not None)


class _AttendingCache:
    """What the three caches share: they take the attention step over (`attend`), so `update`
    does not apply; what they evicted or quantized cannot come back, so `truncate` only keeps
    the length; and their state is the arrays named in `_state`, which `reorder` indexes by row
    and `nbytes` counts. `_why`: why attend() is theirs; `_lost`: what truncate cannot undo."""
    attends = True                 # the layer hands the attention step over (attend)
    positions_in_cache = False     # True: q and k arrive before RoPE (SinkCache)
    _state = ()
    _why = _lost = ""

    def update(self, k, v):
        raise TypeError(f"{type(self).__name__} attends itself ({self._why}): the layer calls "
                        f"attend()")

    def reorder(self, rows):
        """Keep batch rows `rows` (an int array; repeats allowed)."""
        self.batch = len(rows)
        for name in self._state:
            a = getattr(self, name)
            if a is not None:
                setattr(self, name, a[rows])

    def truncate(self, length):
        if length != self.length:
            raise ValueError(f"{type(self).__name__}.truncate: {self._lost}; length must be "
                             f"{self.length}, got {length}")

    @property
    def held(self):
        """Tokens whose K/V the cache holds now (every token seen, unless it evicts)."""
        return self.length

    @property
    def nbytes(self):
        """Bytes of the K/V state held now."""
        return _nbytes(*(getattr(self, name) for name in self._state))


# ---- attention sinks ------------------------------------------------------------------------
class SinkCache(_AttendingCache):
    """StreamingLLM's cache for one layer: the first n_sink tokens and the `window` most recent,
    at most n_sink + window un-rotated keys and values (B, Hkv, n, D), whatever the stream length.

    Each step rotates the held keys at slots 0 .. n - 1 and the t new keys and queries at slots
    n .. n + t - 1 (the rotary's tables), attends over [held; new] with the causal mask, then
    keeps the first n_sink tokens of the stream and the last `window` of the rest. A chunk of
    t > 1 tokens thus sees up to window + t - 1 recent tokens; t = 1 is what generation sees."""
    positions_in_cache = True      # q and k arrive before RoPE
    _state = ("sink_k", "sink_v", "recent_k", "recent_v")      # at most n_sink + window tokens
    _why, _lost = "positions inside the cache", "evicted tokens cannot come back"

    def __init__(self, batch, n_kv_head, head_dim, n_sink=4, window=None):
        name = type(self).__name__
        self.batch = _int(name, "batch", batch, 1)
        self.n_kv_head, self.head_dim = n_kv_head, head_dim
        self.n_sink = _int(name, "n_sink", n_sink, 0)
        self.window = _int(name, "window", window, 1)
        self.sink_k = self.sink_v = None        # (B, Hkv, <= n_sink, D): the stream's first
        self.recent_k = self.recent_v = None    # (B, Hkv, <= window, D): its latest, in order
        self.length = 0                          # tokens seen

    @property
    def held(self):
        """Tokens held now (at most n_sink + window)."""
        return sum(a.shape[2] for a in (self.sink_k, self.recent_k) if a is not None)

    def attend(self, q, k, v, mask=None, rotary=None, causal=True, scale=None):
        """q: (B, H, t, D), k, v: (B, Hkv, t, D) before RoPE -> o (B, H, t, D) Tensor.
        mask: additive (B or 1, H or 1, t, length + t) over the stream's positions, or None."""
        q, k, v = _data(q), _data(k), _data(v)
        _check_step(self, q, k, v)
        xp = backend.array_module(k)
        t, n = k.shape[2], self.held
        pieces = [a for a in (self.sink_k, self.recent_k) if a is not None]
        keys = xp.concatenate(pieces + [k], axis=2) if pieces else k      # (B, Hkv, n + t, D)
        pieces = [a for a in (self.sink_v, self.recent_v) if a is not None]
        values = xp.concatenate(pieces + [v], axis=2) if pieces else v
        mask = _mask_array(mask, self.length, t, "SinkCache")
        if mask is not None:                      # the columns of the held positions
            s = 0 if self.sink_k is None else self.sink_k.shape[2]
            r = n - s
            mask = xp.concatenate([mask[..., :s], mask[..., self.length - r:]], axis=-1)
        if rotary is not None:
            if n + t > rotary.max_positions:
                raise ValueError(
                    f"SinkCache: {n} held + {t} new tokens need slots 0..{n + t - 1}, past the "
                    f"model's max_positions={rotary.max_positions}; feed at most "
                    f"{rotary.max_positions - n} tokens at a time (cache_config 'prefill_chunk')")
            cos = rotary.cos[:n + t].astype(k.dtype, copy=False)
            sin = rotary.sin[:n + t].astype(k.dtype, copy=False)
            q = rope_forward(q, cos[n:], sin[n:])
            rotated = rope_forward(keys, cos, sin)
        else:
            rotated = keys
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        o = attention_forward(q, rotated, values, mask, causal, scale, 0)[0]
        # evict: the first n_sink tokens of the stream, then the last `window` of the rest
        total = n + t
        sinks = min(self.n_sink, self.length + t)
        start = max(sinks, total - self.window)
        self.sink_k, self.sink_v = keys[:, :, :sinks], values[:, :, :sinks]
        self.recent_k, self.recent_v = keys[:, :, start:], values[:, :, start:]
        self.length += t
        return Tensor._wrap(o)


# ---- KIVI -----------------------------------------------------------------------------------
_STORE = ("k_codes", "k_scale", "k_min", "v_codes", "v_scale", "v_min")
_PER_BLOCK = ("k_scale", "k_min")     # one row per block of residual_length tokens


@kernel("kv_quant_attention")     # fast version: kernels/cpu/kv_quant.py, reads the codes
def kv_quant_attention(q, keys, values, k_codes, k_scale, k_min, v_codes, v_scale, v_min,
                       n_quantized, bits, block, group_size, mask, causal, scale):
    """Attention over [the quantized store; the float tail], the store dequantized first.
    q: (B, H, t, D); keys, values: (B, Hkv, L, D), the tail (residual, then the t new tokens);
    the store's buffers, of which the first n_quantized tokens are held: codes
    (B, Hkv, >= n_quantized, ceil(D bits / 8)), key scale and min (B, Hkv, >= n_quantized /
    block, D), value scale and min (B, Hkv, >= n_quantized, D / group_size); None while empty.
    mask: additive (B or 1, H or 1, t, n_quantized + L), or None. -> o (B, H, t, D)."""
    n = n_quantized
    if n:
        d, blocks = q.shape[-1], n // block
        keys = _concat(dequantize_keys(k_codes[:, :, :n], k_scale[:, :, :blocks],
                                       k_min[:, :, :blocks], bits, block, d), keys)
        values = _concat(dequantize_values(v_codes[:, :, :n], v_scale[:, :, :n],
                                           v_min[:, :, :n], bits, group_size, d), values)
    return attention_forward(q, keys, values, mask, causal, scale, 0)[0]


class QuantizedKVCache(_AttendingCache):
    """KIVI's cache for one layer (Liu et al., 2024). Keys arrive rotated at their true
    positions. Each full block of residual_length tokens is quantized: keys per channel over the
    block, values per token over groups of group_size channels, codes packed 8 / bits to a byte
    (bits 8, 4 or 2) with a (scale, min) pair per group in the keys' float dtype. The latest
    length % residual_length tokens stay in float (the residual) until their block is full.

    Each step attends over [store; residual; new] (kv_quant_attention: on the CPU a kernel that
    reads the codes; the reference dequantizes the store), then moves any full block of the
    residual into the store. The store's buffers grow by doubling, as a list does, so a flush
    writes only its new blocks; `nbytes` counts what is held, `capacity_nbytes` what is
    allocated."""
    _state = ("res_k", "res_v")          # the float residual; the store is reordered apart
    _why, _lost = "over its quantized store", "quantized blocks cannot be rolled back"

    def __init__(self, batch, n_kv_head, head_dim, bits=4, group_size=32, residual_length=32):
        name = type(self).__name__
        self.batch = _int(name, "batch", batch, 1)
        self.n_kv_head, self.head_dim = n_kv_head, head_dim
        if isinstance(bits, bool) or bits not in BITS:
            raise ValueError(f"{name}: bits must be one of {BITS}, got {bits!r}")
        self.bits = int(bits)
        self.group_size = _int(name, "group_size", group_size, 1)
        if head_dim % self.group_size:
            raise ValueError(f"{name}: group_size={group_size} must divide head_dim={head_dim} "
                             f"(values are quantized in groups of group_size channels)")
        self.residual_length = _int(name, "residual_length", residual_length, 1)
        # the store: buffers by name (_STORE), each (B, Hkv, capacity, ...) with the key
        # scale/min at capacity / R rows; the first n_quantized tokens are held
        self._buffers = None
        self.capacity = self.n_quantized = 0
        self.res_k = self.res_v = None          # (B, Hkv, < R, D) float: the unfilled block
        self.length = 0

    def _held(self, name):
        """The held part of buffer `name`, or None while the store is empty."""
        if not self.n_quantized:
            return None
        rows = self.n_quantized
        if name in _PER_BLOCK:
            rows //= self.residual_length
        return self._buffers[name][:, :, :rows]

    # views of the store: codes (B, Hkv, n_quantized, ceil(D bits / 8)); key scale/min
    # (B, Hkv, n_quantized / R, D); value scale/min (B, Hkv, n_quantized, D / group_size)
    k_codes = property(lambda self: self._held("k_codes"))
    k_scale = property(lambda self: self._held("k_scale"))
    k_min = property(lambda self: self._held("k_min"))
    v_codes = property(lambda self: self._held("v_codes"))
    v_scale = property(lambda self: self._held("v_scale"))
    v_min = property(lambda self: self._held("v_min"))

    def dequantized(self):
        """The quantized store in float: (keys, values), each (B, Hkv, n_quantized, D)."""
        if not self.n_quantized:
            return None, None
        d, bits = self.head_dim, self.bits
        return (dequantize_keys(self.k_codes, self.k_scale, self.k_min, bits,
                                self.residual_length, d),
                dequantize_values(self.v_codes, self.v_scale, self.v_min, bits,
                                  self.group_size, d))

    def attend(self, q, k, v, mask=None, rotary=None, causal=True, scale=None):
        """q: (B, H, t, D), k, v: (B, Hkv, t, D) rotated at their true positions -> o Tensor
        (B, H, t, D). mask: additive (B or 1, H or 1, t, length + t), or None."""
        q, k, v = _data(q), _data(k), _data(v)
        _check_step(self, q, k, v)
        t = k.shape[2]
        mask = _mask_array(mask, self.length, t, "QuantizedKVCache")
        keys, values = _concat(self.res_k, k), _concat(self.res_v, v)     # the float tail
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        buffers = self._buffers or {}
        o = kv_quant_attention(q, keys, values, *(buffers.get(name) for name in _STORE),
                               self.n_quantized, self.bits, self.residual_length,
                               self.group_size, mask, causal, scale)
        self._store(keys, values)
        self.length += t
        return Tensor._wrap(o)

    def _store(self, keys, values):
        """Quantize the full blocks of the float tail keys, values (B, Hkv, r + t, D); keep the
        rest as the residual."""
        r = self.residual_length
        full = keys.shape[2] // r * r
        if full == 0:
            self.res_k, self.res_v = keys, values
            return
        blocks = dict(zip(_STORE, quantize_keys(keys[:, :, :full], self.bits, r)
                          + quantize_values(values[:, :, :full], self.bits, self.group_size)))
        self._append(blocks, full)
        rest = keys.shape[2] - full        # copies: a view would keep the whole chunk alive
        self.res_k = keys[:, :, full:].copy() if rest else None
        self.res_v = values[:, :, full:].copy() if rest else None

    def _append(self, blocks, full):
        """Write `full` newly quantized tokens (blocks: arrays by name) after the held ones,
        first doubling the buffers when they are full: each token is then copied O(1) times on
        average instead of at every flush (the store is rewritten whole by a concatenate). The
        first allocation holds 8 blocks, so short streams never grow (a growth costs a device
        launch per buffer for the allocation and one for the copy)."""
        xp = backend.array_module(blocks["k_codes"])
        r, n = self.residual_length, self.n_quantized
        if n + full > self.capacity:
            capacity = max(n + full, 2 * self.capacity, 8 * r)   # a multiple of r
            grown = {}
            for name, a in blocks.items():
                rows = capacity // r if name in _PER_BLOCK else capacity
                grown[name] = xp.empty(a.shape[:2] + (rows,) + a.shape[3:], dtype=a.dtype)
                if n:
                    held = self._held(name)
                    grown[name][:, :, :held.shape[2]] = held
            self._buffers, self.capacity = grown, capacity
        for name, a in blocks.items():
            start = n // r if name in _PER_BLOCK else n
            self._buffers[name][:, :, start:start + a.shape[2]] = a
        self.n_quantized = n + full

    def reorder(self, rows):
        """Keep batch rows `rows` (an int array; repeats allowed). The store is copied at its
        held size."""
        if self.n_quantized:
            self._buffers = {name: self._held(name)[rows] for name in _STORE}
            self.capacity = self.n_quantized
        super().reorder(rows)

    @property
    def nbytes(self):
        """Bytes held: packed codes, scales and mins of the quantized store, and the residual."""
        return _nbytes(*(self._held(name) for name in _STORE)) + super().nbytes

    @property
    def capacity_nbytes(self):
        """Bytes allocated: the store's buffers at their capacity, and the residual."""
        buffers = self._buffers or {}
        return _nbytes(*buffers.values(), self.res_k, self.res_v)


# ---- heavy hitters --------------------------------------------------------------------------
class H2OCache(_AttendingCache):
    """H2O's cache for one layer (Zhang et al., 2023): at most `budget` keys per K/V head, the
    `recent` latest plus the budget - recent "heavy hitters", the keys whose attention
    probability summed over every query so far (and over the head's G query heads) is largest.

    Keys arrive rotated at their true positions. Each step computes attention itself (it needs
    the probabilities: the plain masked softmax, grouped heads, in xp), adds each key's column
    sum to its score, then evicts down to the budget. `positions` (B, Hkv, n) holds the stream
    position of each held key (each row and head keeps its own)."""
    _state = ("k", "v", "score", "positions")         # at most budget tokens
    _why, _lost = "it needs the attention probabilities", "evicted tokens cannot come back"

    def __init__(self, batch, n_kv_head, head_dim, budget, recent=None):
        name = type(self).__name__
        self.batch = _int(name, "batch", batch, 1)
        self.n_kv_head, self.head_dim = n_kv_head, head_dim
        self.budget = _int(name, "budget", budget, 1)
        recent = self.budget // 2 if recent is None else recent
        self.recent = _int(name, "recent", recent, 0)
        if self.recent >= self.budget:
            raise ValueError(f"{name}: budget={budget} must exceed recent={recent} (the rest of "
                             f"the budget holds the heavy hitters)")
        self.k = self.v = None           # (B, Hkv, n, D), n <= budget, in stream order
        self.score = None                # (B, Hkv, n) accumulated attention probability
        self.positions = None            # (B, Hkv, n) int64
        self.length = 0

    @property
    def held(self):
        """Tokens held now (at most budget)."""
        return 0 if self.k is None else self.k.shape[2]

    def attend(self, q, k, v, mask=None, rotary=None, causal=True, scale=None):
        """q: (B, H, t, D), k, v: (B, Hkv, t, D) rotated at their true positions -> o Tensor
        (B, H, t, D). mask: additive (B or 1, H or 1, t, length + t), or None."""
        q, k, v = _data(q), _data(k), _data(v)
        _check_step(self, q, k, v)
        xp = backend.array_module(k)
        b, h, t, d = q.shape
        hkv = k.shape[1]
        g = h // hkv
        mask = _mask_array(mask, self.length, t, "H2OCache")
        new_pos = xp.broadcast_to(xp.arange(self.length, self.length + t), (b, hkv, t))
        keys, values = _concat(self.k, k), _concat(self.v, v)          # (B, Hkv, n + t, D)
        positions = _concat(self.positions, new_pos)
        n = keys.shape[2] - t
        # scores (B, Hkv, G, t, n + t); the held keys all precede the new queries
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        s = (q.reshape(b, hkv, g, t, d) * q.dtype.type(scale)) @ keys[:, :, None].swapaxes(-1, -2)
        if causal:
            visible = xp.arange(n + t)[None, :] <= xp.arange(n, n + t)[:, None]      # (t, n + t)
            s = xp.where(visible, s, -xp.inf)
        if mask is not None:                     # the columns of the held positions
            full = xp.broadcast_to(mask, (b, h, t, self.length + t)).reshape(b, hkv, g, t, -1)
            cols = xp.broadcast_to(positions[:, :, None, None, :], (b, hkv, g, t, n + t))
            s = s + xp.take_along_axis(full, cols, axis=-1).astype(s.dtype)
        m = s.max(axis=-1, keepdims=True)
        p = xp.exp(s - xp.where(xp.isfinite(m), m, 0))          # a fully masked row: all 0
        total = p.sum(axis=-1, keepdims=True)
        p = p / xp.where(total > 0, total, 1)
        o = (p @ values[:, :, None]).reshape(b, h, t, d)
        score = _concat(self.score, xp.zeros((b, hkv, t), dtype=p.dtype)) + p.sum(axis=(2, 3))
        self.k, self.v, self.score, self.positions = self._evict(keys, values, score, positions)
        self.length += t
        return Tensor._wrap(o)

    def _evict(self, keys, values, score, positions):
        """Keep the `recent` latest keys and the budget - recent highest-scoring older ones."""
        xp = backend.array_module(keys)
        b, hkv, n, d = keys.shape
        if n <= self.budget:
            return keys, values, score, positions
        older = n - self.recent
        heavy = xp.argsort(-score[:, :, :older], axis=-1)[:, :, :self.budget - self.recent]
        keep = xp.concatenate([xp.sort(heavy, axis=-1),             # stream order
                               xp.broadcast_to(xp.arange(older, n), (b, hkv, self.recent))],
                              axis=-1)                               # (B, Hkv, budget)
        rows = xp.broadcast_to(keep[..., None], (b, hkv, self.budget, d))
        return (xp.take_along_axis(keys, rows, axis=2), xp.take_along_axis(values, rows, axis=2),
                xp.take_along_axis(score, keep, axis=2),
                xp.take_along_axis(positions, keep, axis=2))


# ---- make_caches' long implementations ------------------------------------------------------
_CONFIG_KEYS = {"sinks": ("n_sink", "window"), "window": ("window",),
                "quantized": ("bits", "group_size", "residual_length"),
                "h2o": ("budget", "recent")}


def _check_model(model, implementation):
    """The layers these caches can serve: softmax attention, no sliding window, no K/V sharing;
    sinks and window also need positions that are relative (RoPE) or absent."""
    c = model.config
    where = f"make_caches: implementation={implementation!r}"
    for bad, what in ((c.attention != "softmax", f"attention={c.attention!r}"),
                      (c.window is not None, f"window={c.window} (sliding-window layers)"),
                      (c.kv_share != 1, f"kv_share={c.kv_share}")):
        if bad:
            raise ValueError(f"{where} needs softmax attention over every key, without sliding "
                             f"windows or cross-layer K/V sharing; the model has {what}")
    if implementation in POSITIONS_IN_CACHE and c.pos not in ("rope", "none"):
        raise ValueError(f"{where} assigns positions inside the cache, which needs pos='rope' or "
                         f"'none'; the model has pos={c.pos!r} (its positions are added to the "
                         f"embeddings or the scores). Use cache_implementation 'quantized', 'h2o' "
                         f"or the dense cache, or context_shift=True")


def _sink_caches(model, batch, config, implementation):
    """SinkCaches, and the longest feed that keeps the last query within max_positions."""
    c, limit = model.config, model.config.max_positions
    n_sink = config.get("n_sink", 4) if implementation == "sinks" else 0
    n_sink = _int("make_caches", "n_sink", n_sink, 0)
    window = _int("make_caches", "window", config.get("window", max(1, limit // 2 - n_sink)), 1)
    if n_sink + window >= limit:
        raise ValueError(f"make_caches: n_sink + window = {n_sink} + {window} must be below the "
                         f"model's max_positions={limit} (the new token takes the next slot); "
                         f"got window={window}")
    return ([SinkCache(batch, c.n_kv_head, c.head_dim, n_sink, window) for _ in model.blocks],
            limit - n_sink - window)


def _quantized_caches(model, batch, config):
    """QuantizedKVCaches; group_size defaults to gcd(32, head_dim) (32 when it divides)."""
    c = model.config
    group_size = config.get("group_size", math.gcd(32, c.head_dim))
    return ([QuantizedKVCache(batch, c.n_kv_head, c.head_dim, config.get("bits", 4), group_size,
                              config.get("residual_length", 32))
             for _ in model.blocks], None)


def _h2o_caches(model, batch, config):
    c = model.config
    if "budget" not in config:
        raise ValueError("make_caches: implementation='h2o' needs cache_config={'budget': B} "
                         "(keys kept per layer and head; 'recent' defaults to B // 2)")
    return ([H2OCache(batch, c.n_kv_head, c.head_dim, config["budget"], config.get("recent"))
             for _ in model.blocks], None)


_BUILDERS = {"sinks": lambda m, b, cfg: _sink_caches(m, b, cfg, "sinks"),
             "window": lambda m, b, cfg: _sink_caches(m, b, cfg, "window"),
             "quantized": _quantized_caches, "h2o": _h2o_caches}


def make_long_caches(model, batch, implementation, config):
    """(one cache per layer, prefill chunk) for a GPT and a long implementation with its
    config (a dict). The prefill chunk is the most tokens one forward may feed: for sinks and
    window, what keeps the last query's slot within the model's max_positions; for h2o, the
    budget (so a long prompt never holds more than twice the budget); None: any."""
    if implementation not in LONG_IMPLEMENTATIONS:
        raise ValueError(f"make_caches: implementation must be None, 'dense' or one of "
                         f"{LONG_IMPLEMENTATIONS}, got {implementation!r}")
    _check_model(model, implementation)
    config = dict(config)
    chunk = config.pop("prefill_chunk", None)
    unknown = sorted(set(config) - set(_CONFIG_KEYS[implementation]))
    if unknown:
        raise TypeError(f"make_caches: unknown cache_config keys {unknown} for implementation="
                        f"{implementation!r}; expected some of "
                        f"{list(_CONFIG_KEYS[implementation]) + ['prefill_chunk']}")
    caches, longest = _BUILDERS[implementation](model, batch, config)
    if chunk is None:
        chunk = caches[0].budget if implementation == "h2o" else longest
    else:
        chunk = _int("make_caches", "prefill_chunk", chunk, 1)
        if longest is not None and chunk > longest:
            raise ValueError(f"make_caches: prefill_chunk={chunk} would put queries past the "
                             f"model's max_positions={model.config.max_positions} (n_sink + "
                             f"window = {model.config.max_positions - longest}); use at most "
                             f"{longest}")
    return caches, chunk
