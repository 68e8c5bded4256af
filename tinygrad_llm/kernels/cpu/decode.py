"""The batch-1 decode step in one Numba call (reference: generate/decode_step.py).

One call runs t tokens (one, or a few: a short prompt, speculative decoding's k + 1) through every
layer: embeddings, per layer norm -> packed q/k/v projection -> RoPE -> K/V written into the
cache -> attention over the cached keys (token i sees positions up to its own) -> output
projection -> norm -> feed-forward, then the final norm and the head. The arguments are the
model's own arrays, packed once per model (every matrix with its bias in one record, the norms'
weights in a list, the sizes and choices as ints), the two stacked K/V buffers and a few ints: a
step costs one dispatch instead of a few dozen per layer.

Where the time goes: a projection reads its whole weight once per step (all t tokens pass over
each group of four rows while they sit in L1), so a step reads every weight of the model once. A
small model's weights stay in the L3 cache and a step is ~50 us of arithmetic for the 4-layer
128-dim model; splitting it over threads would only add the other thread's wake-up (~10-30 us
with OpenMP's passive waiting, more than a 128-wide layer's work). A large model's weights stream
from memory, where two threads draw more bandwidth than one: matrices of at least
`parallel_bytes` are split into row chunks over the threads (and attention over heads, when the
cache it reads is that large). parallel_bytes is set from the model's total weight size
(PARALLEL_MODEL_BYTES), so small models never pay for threads.

Inner loops are dot products over contiguous rows (a weight row, a cached key), four at a time,
or axpy updates over head_dim, with float32 accumulators for float32 weights, so LLVM vectorises
them; tanh and the sigmoid go through the vectorised exp_shifted.

Reading order: the arguments' layout (codes and slot numbers, below), the pieces (_rows, _norm,
_activate, _rope, _attend), the matrix record and _project, the step (_decode_loop, which reads
line for line against decode_step's loop), and the packing of a model's arrays (_pack).
"""
import math
from typing import NamedTuple

import numba
import numpy as np
from numba import prange, typed

from .. import implements
from ._common import exp_shifted, jit, jit_parallel, row_max
from .quant import COLUMN_TILE, PARALLEL_BYTES, _tiles, _tiles_parallel

PARALLEL_MODEL_BYTES = 24 << 20   # above this the weights do not stay in cache between tokens,
#                                   and a matrix of PARALLEL_BYTES (quant.py) is split over threads

# ---- the arguments' layout ----------------------------------------------------------------------
# Module-level ints are compile-time constants in Numba: a name here compiles to its number.
# The model's choices, as codes in `dims`:
LAYERNORM, RMSNORM = 0, 1                       # the norms
GELU, GELU_TANH, RELU, SWIGLU = 0, 1, 2, 3      # the feed-forward's activation
NO_POSITIONS, ADDED_POSITIONS, ROPE = 0, 1, 2   # none, a (T, C) table added to x, rotated q/k
# dims, one int64 array: the model's sizes and the codes above
N_LAYER, N_HEAD, N_KV_HEAD, HEAD_DIM, WIDTH, NORM_KIND, ACT_KIND, POS_KIND = range(8)
# Matrix slots (_Matrices below, each with its bias): the token embedding, the head, then five
# per layer, layer l's at LAYER_SLOTS + SLOTS_PER_LAYER l + QKV .. DOWN.
TOK_EMB, HEAD, LAYER_SLOTS, SLOTS_PER_LAYER = 0, 1, 2, 5
QKV, PROJ, FFN_IN, FFN_UP, DOWN = range(5)      # FFN_IN: up, or SwiGLU's gate; FFN_UP: its up
# Norm slots, a list of (weight, bias) pairs (bias empty for RMSNorm): the final norm, then two
# per layer, layer l's at LAYER_NORMS + 2 l + NORM1 or NORM2.
FINAL_NORM, LAYER_NORMS, NORM1, NORM2 = 0, 1, 0, 1
POS_TABLE, COS, SIN = range(3)                  # tables: (T, C) added positions, RoPE's (T, D)
FLOAT, INT8, NIBBLES = 0, 1, 2                  # a matrix's storage: float, 8-bit or 4-bit values


# ---- pieces -------------------------------------------------------------------------------------
@jit
def _rows(w, x, b, y, lo, hi):
    """y[i, o] = w[o] . x[i] (+ b[o]) for rows lo..hi-1 of w and every token i (x: (t, n),
    y: (t, m)); b may be empty (no bias). Four rows at a time: each x[i, k] loaded once serves
    four products, and the four rows stay in L1 while every token passes over them, so the
    weight is read from memory once per step whatever t is."""
    n, t = w.shape[1], x.shape[0]
    o = lo
    while o + 4 <= hi:
        r0, r1, r2, r3 = w[o], w[o + 1], w[o + 2], w[o + 3]
        for i in range(t):
            xi = x[i]
            a0 = a1 = a2 = a3 = np.float32(0.0)
            for k in range(n):
                xk = xi[k]
                a0 += r0[k] * xk
                a1 += r1[k] * xk
                a2 += r2[k] * xk
                a3 += r3[k] * xk
            y[i, o], y[i, o + 1], y[i, o + 2], y[i, o + 3] = a0, a1, a2, a3
        o += 4
    for o in range(o, hi):
        row = w[o]
        for i in range(t):
            xi = x[i]
            acc = np.float32(0.0)
            for k in range(n):
                acc += row[k] * xi[k]
            y[i, o] = acc
    if b.shape[0]:
        for i in range(t):
            for o in range(lo, hi):
                y[i, o] += b[o]


@jit_parallel
def _rows_parallel(w, x, b, y, n_chunks):
    m = w.shape[0]
    for c in prange(n_chunks):
        _rows(w, x, b, y, c * m // n_chunks, (c + 1) * m // n_chunks)


@jit
def _matvec(w, x, b, y, parallel_bytes, n_chunks):
    """y = x w^T (+ b) for x (t, n), split over threads when w is at least parallel_bytes."""
    if n_chunks > 1 and w.size * w.itemsize >= parallel_bytes:
        _rows_parallel(w, x, b, y, n_chunks)
    else:
        _rows(w, x, b, y, 0, w.shape[0])


@jit
def _norm(x, w_b, kind, eps, out):
    """LayerNorm (b may be empty) or RMSNorm, by kind, of the vector x into out; w_b: (w, b)."""
    w, b = w_b
    n = x.shape[0]
    if kind == RMSNORM:
        ss = np.float32(0.0)
        for i in range(n):
            ss += x[i] * x[i]
        r = 1.0 / math.sqrt(ss / n + eps)
        for i in range(n):
            out[i] = x[i] * r * w[i]
        return
    mu = np.float32(0.0)
    for i in range(n):
        mu += x[i]
    mu /= n
    var = np.float32(0.0)
    for i in range(n):
        var += (x[i] - mu) * (x[i] - mu)
    r = 1.0 / math.sqrt(var / n + eps)
    for i in range(n):
        out[i] = (x[i] - mu) * r * w[i] + (b[i] if b.shape[0] else 0.0)


@jit
def _activate(u, g, kind, e):
    """u = act(u) in place: GELU (erf), GELU_TANH, RELU, or SWIGLU: silu(u) * g.
    tanh and the sigmoid come from e = exp(-|z|) <= 1 through the vectorised exp_shifted
    (e: a scratch row): tanh(y) = sign(y) (1 - e) / (1 + e) with e = exp(-2|y|),
    sigmoid(z) = 1 / (1 + e) for z >= 0 and e / (1 + e) below."""
    n = u.shape[0]
    if kind == GELU:
        for i in range(n):
            u[i] = 0.5 * u[i] * (1.0 + math.erf(u[i] * 0.7071067811865476))
    elif kind == RELU:
        for i in range(n):
            u[i] = max(u[i], 0.0)
    else:                                 # one exp_shifted site: it is inlined (_common.py)
        for i in range(n):
            z = u[i]
            e[i] = (-2.0 * abs(0.7978845608028654 * (z + 0.044715 * z * z * z))
                    if kind == GELU_TANH else -abs(z))
        exp_shifted(e, np.float32(0.0), e, n)
        for i in range(n):
            z = u[i]
            if kind == GELU_TANH:
                t = (1.0 - e[i]) / (1.0 + e[i])
                u[i] = 0.5 * z * (1.0 + (t if z >= 0 else -t))
            else:
                sig = 1.0 / (1.0 + e[i]) if z >= 0 else e[i] / (1.0 + e[i])
                u[i] = z * sig * g[i]


@jit
def _rope(heads, first, count, cos, sin):
    """Rotate rows first..first+count-1 of heads (S, D) by one position's cos, sin rows (D,)."""
    half = heads.shape[1] // 2
    for s in range(first, first + count):
        row = heads[s]
        for i in range(half):
            a, b = row[i], row[i + half]
            row[i] = a * cos[i] - b * sin[i]
            row[i + half] = b * cos[i + half] + a * sin[i + half]


@jit
def _attend(heads, keys, values, n, n_hkv, scale, scores, out, lo, hi):
    """Query heads lo..hi-1 (rows of heads) against the first n cached keys/values (Hkv, T, D) of
    their group: out[h] = softmax(q_h K_g^T * scale) V_g. Keys and values four at a time, so one
    pass over q (or out) serves four of them."""
    n_h, d = out.shape
    group = n_h // n_hkv
    n4 = n - n % 4
    for h in range(lo, hi):
        q, s, o = heads[h], scores[h], out[h]
        kk, vv = keys[h // group], values[h // group]
        for j in range(0, n4, 4):
            k0, k1, k2, k3 = kk[j], kk[j + 1], kk[j + 2], kk[j + 3]
            a0 = a1 = a2 = a3 = np.float32(0.0)
            for e in range(d):
                a0 += q[e] * k0[e]
                a1 += q[e] * k1[e]
                a2 += q[e] * k2[e]
                a3 += q[e] * k3[e]
            s[j], s[j + 1], s[j + 2], s[j + 3] = a0 * scale, a1 * scale, a2 * scale, a3 * scale
        for j in range(n4, n):
            k0 = kk[j]
            a0 = np.float32(0.0)
            for e in range(d):
                a0 += q[e] * k0[e]
            s[j] = a0 * scale
        m = row_max(s, n)
        exp_shifted(s, m, s, n)
        total = np.float32(0.0)
        for j in range(n):
            total += s[j]
        for j in range(n):
            s[j] /= total
        for e in range(d):
            o[e] = 0.0
        for j in range(0, n4, 4):
            p0, p1, p2, p3 = s[j], s[j + 1], s[j + 2], s[j + 3]
            v0, v1, v2, v3 = vv[j], vv[j + 1], vv[j + 2], vv[j + 3]
            for e in range(d):
                o[e] += p0 * v0[e] + p1 * v1[e] + p2 * v2[e] + p3 * v3[e]
        for j in range(n4, n):
            p0, v0 = s[j], vv[j]
            for e in range(d):
                o[e] += p0 * v0[e]


@jit_parallel
def _attend_parallel(heads, keys, values, n, n_hkv, scale, scores, out, n_chunks):
    n_h = out.shape[0]
    for c in prange(n_chunks):
        _attend(heads, keys, values, n, n_hkv, scale, scores, out,
                c * n_h // n_chunks, (c + 1) * n_h // n_chunks)


# ---- matrices: float or quantized -------------------------------------------------------------
class _Matrices(NamedTuple):
    """Every matrix of the model with its bias, one entry per slot in each field (the loop reads
    a field at a slot: mats.rows[HEAD]). A slot holds a float matrix or a quantized layer's
    column tiles (kernels/cpu/quant.py's layout, the layer's own bytes); a field the slot does
    not use holds a placeholder of the field's type (a typed list holds one type)."""
    kind: np.ndarray      # (n_slots,) int64: FLOAT, INT8 or NIBBLES
    rows: np.ndarray      # (n_slots,) int64: outputs (a table's entries)
    weight: typed.List    # FLOAT: (rows, in) in the model's dtype; else a (1, 1) placeholder
    bias: typed.List      # (rows,) in the model's dtype, or (0,): no bias
    q: typed.List         # uint8 (n_tiles, in, TILE): INT8's bytes q + 128; (n_tiles, in / 2,
    #                       TILE): NIBBLES' pairs; (1, 1, 1) for FLOAT
    scale: typed.List     # float32 (n_tiles, in / group, TILE); (1, 1, 1) for FLOAT
    mins: typed.List      # float32 (n_tiles, in / 32, TILE): q4_1's block mins; else a (., 0, .)
    table: typed.List     # float32 (16,): NF4's levels; else (0,): a value is nibble + offset
    offset: np.ndarray    # (n_slots,) int64: the first integer level (q4_0: -8, q4_1: 0)
    group: np.ndarray     # (n_slots,) int64: inputs per scale


@jit
def _project(slot, mats, x, y, parallel_bytes, n_chunks):
    """y = x W_slot^T + b_slot for x (t, n), whatever the slot's storage."""
    b = mats.bias[slot]
    if mats.kind[slot] == FLOAT:
        _matvec(mats.weight[slot], x, b, y, parallel_bytes, n_chunks)
        return
    q = mats.q[slot]
    half = mats.group.shape[0] * 0 + 16      # a runtime 16 (see kernels/cpu/quant.py)
    args = (q, mats.scale[slot], mats.mins[slot], mats.table[slot], mats.offset[slot],
            mats.group[slot], half, mats.kind[slot] == INT8, x, y)
    if n_chunks > 1 and q.size >= parallel_bytes:
        _tiles_parallel(*args)
    else:
        _tiles(*args, 0, q.shape[0])
    if b.shape[0]:
        for i in range(x.shape[0]):
            for o in range(y.shape[1]):
                y[i, o] += b[o]


@jit
def _row(slot, mats, r, out):
    """out = row r of the slot's matrix, decoded (an embedding lookup)."""
    kind = mats.kind[slot]
    if kind == FLOAT:
        out[:] = mats.weight[slot][r]
        return
    q, s, group = mats.q[slot], mats.scale[slot], mats.group[slot]
    c, col = r // COLUMN_TILE, r % COLUMN_TILE              # the row's tile and column in it
    if kind == INT8:
        for k in range(out.shape[0]):
            out[k] = (np.float32(q[c, k, col]) - np.float32(128.0)) * s[c, k // group, col]
        return
    lv, mn, offset = mats.table[slot], mats.mins[slot], mats.offset[slot]
    tabled = lv.shape[0] > 0
    for k in range(out.shape[0]):
        blk, j = k // 32, k % 32
        p = np.int64(q[c, 16 * blk + j % 16, col])
        nib = p & 15 if j < 16 else p >> 4
        v = lv[nib] if tabled else np.float32(nib + offset)
        out[k] = v * s[c, k // group, col] + (mn[c, blk, col] if mn.shape[1] else 0.0)


# ---- the step -----------------------------------------------------------------------------------
@jit
def _decode_loop(ids, start, tables, mats, norms, k_all, v_all, dims, eps, parallel_bytes,
                 n_chunks, logits):
    # ids: (t,) at positions start ..; tables, mats, norms, dims: laid out as at the top;
    # k_all, v_all: (L, Hkv, T, D), written at the step's positions; logits: (t, V)
    n_layer, n_h, n_hkv, d = dims[N_LAYER], dims[N_HEAD], dims[N_KV_HEAD], dims[HEAD_DIM]
    norm_kind, act_kind, pos_kind, c = dims[NORM_KIND], dims[ACT_KIND], dims[POS_KIND], dims[WIDTH]
    dt = k_all.dtype
    t = ids.shape[0]
    hidden = mats.rows[LAYER_SLOTS + FFN_IN]            # the feed-forward's width
    n_qkv = n_h + 2 * n_hkv
    x, h, y = np.empty((t, c), dt), np.empty((t, c), dt), np.empty((t, c), dt)
    heads = np.empty((t, n_qkv, d), dt)                 # per token: q heads, k heads, v heads
    qkv = heads.reshape((t, n_qkv * d))
    att_heads = np.empty((t, n_h, d), dt)
    att = att_heads.reshape((t, n_h * d))
    u, g = np.empty((t, hidden), dt), np.empty((t, hidden), dt)
    e = np.empty(hidden, dt)
    n_max = start + t
    scores = np.empty((n_h, n_max), dt)
    scale = 1.0 / math.sqrt(d)
    kv_bytes = 2 * n_hkv * d * k_all.itemsize
    for i in range(t):
        _row(TOK_EMB, mats, ids[i], x[i])
        if pos_kind == ADDED_POSITIONS:
            x[i] += tables[POS_TABLE][start + i]
    for layer in range(n_layer):
        m = LAYER_SLOTS + SLOTS_PER_LAYER * layer      # this layer's matrices: m + QKV .. m + DOWN
        nm = LAYER_NORMS + 2 * layer                    # and norms: nm + NORM1, nm + NORM2
        keys, values = k_all[layer], v_all[layer]      # (Hkv, T, D)
        for i in range(t):
            _norm(x[i], norms[nm + NORM1], norm_kind, eps, h[i])
        _project(m + QKV, mats, h, qkv, parallel_bytes, n_chunks)
        for i in range(t):                   # rotate and cache every token's k, v first ...
            pos = start + i
            if pos_kind == ROPE:
                _rope(heads[i], 0, n_h + n_hkv, tables[COS][pos], tables[SIN][pos])
            for kv in range(n_hkv):
                keys[kv, pos] = heads[i, n_h + kv]
                values[kv, pos] = heads[i, n_h + n_hkv + kv]
        for i in range(t):                   # ... then token i attends to positions <= its own
            n = start + i + 1
            if n_chunks > 1 and n * kv_bytes >= parallel_bytes:
                _attend_parallel(heads[i], keys, values, n, n_hkv, scale, scores, att_heads[i],
                                 n_chunks)
            else:
                _attend(heads[i], keys, values, n, n_hkv, scale, scores, att_heads[i], 0, n_h)
        _project(m + PROJ, mats, att, y, parallel_bytes, n_chunks)
        x += y
        for i in range(t):
            _norm(x[i], norms[nm + NORM2], norm_kind, eps, h[i])
        _project(m + FFN_IN, mats, h, u, parallel_bytes, n_chunks)
        if act_kind == SWIGLU:
            _project(m + FFN_UP, mats, h, g, parallel_bytes, n_chunks)
        for i in range(t):
            _activate(u[i], g[i], act_kind, e)
        _project(m + DOWN, mats, u, y, parallel_bytes, n_chunks)
        x += y
    for i in range(t):
        _norm(x[i], norms[FINAL_NORM], norm_kind, eps, h[i])
    _project(HEAD, mats, h, logits, parallel_bytes, n_chunks)


# ---- packing the arguments ----------------------------------------------------------------------
_NORM_CODES = {"layernorm": LAYERNORM, "rmsnorm": RMSNORM}
_ACTIVATION_CODES = {"gelu": GELU, "gelu_tanh": GELU_TANH, "relu": RELU, "swiglu": SWIGLU}


class _Arguments(NamedTuple):
    """What _decode_loop reads of one model, packed once (DecodeWeights.kernel_args)."""
    tables: typed.List    # POS_TABLE, COS, SIN ((1, 1) placeholders when unused)
    mats: _Matrices
    norms: typed.List     # (weight, bias) per norm slot
    dims: np.ndarray      # N_LAYER .. POS_KIND
    parallel_bytes: int   # matrices this large split over threads; 2^62 for a small model


def _slot(m, bias, dtype):
    """One matrix slot: a _Matrices of single entries for a float array m or a quantized layer
    (its `packed` tiles); None when the layer has no tiles to read."""
    bias = np.zeros(0, dtype) if bias is None else bias
    no_table = np.zeros(0, np.float32)
    if isinstance(m, np.ndarray):
        return _Matrices(FLOAT, m.shape[0], m, bias, np.zeros((1, 1, 1), np.uint8),
                         np.zeros((1, 1, 1), np.float32), np.zeros((1, 0, 1), np.float32),
                         no_table, 0, 1)
    tiles = m.packed.tiles                       # the layer's own bytes (quant_pack's tiles)
    if tiles is None:
        return None
    return _Matrices(INT8 if tiles.eight else NIBBLES, tiles.out, np.zeros((1, 1), dtype), bias,
                     tiles.q3, tiles.s3, tiles.m3, np.ascontiguousarray(tiles.table, np.float32),
                     tiles.offset, tiles.group)


def _bytes_read(slot):
    """Bytes of the slot's matrix read per step."""
    if slot.kind == FLOAT:
        return slot.weight.nbytes
    return slot.q.nbytes + slot.scale.nbytes + slot.mins.nbytes


def _pack(w):
    """The kernel's _Arguments for DecodeWeights w, or False when something does not fit (not a
    C-contiguous NumPy array of the model's float dtype, or a scale the kernel cannot read)."""
    dtype = w.dtype
    c = w.norm[0].shape[0]
    empty, dummy = np.zeros(0, dtype), np.zeros((1, 1), dtype)

    def vec(a):
        return empty if a is None else a

    matrices = [(w.tok_emb, None), (w.head, None)]                   # TOK_EMB, HEAD
    norms = [(vec(w.norm[0]), vec(w.norm[1]))]                        # FINAL_NORM
    for layer in w.layers:
        up = layer.ffn_up if layer.ffn_up[0] is not None else (dummy, None)
        matrices += [layer.qkv, layer.proj, layer.ffn_in, up, layer.down]   # QKV .. DOWN
        norms += [(vec(layer.norm1[0]), vec(layer.norm1[1])),        # NORM1, NORM2
                  (vec(layer.norm2[0]), vec(layer.norm2[1]))]
    slots = [_slot(m, b, dtype) for m, b in matrices]
    tables = [w.pos_table if w.pos_table is not None else np.zeros((1, c), dtype),
              w.cos if w.cos is not None else dummy, w.sin if w.sin is not None else dummy]
    if any(sl is None for sl in slots):
        return False
    floats = ([a for sl in slots for a in (sl.weight, sl.bias)]
              + [a for pair in norms for a in pair] + tables)
    if not all(isinstance(a, np.ndarray) and a.dtype == dtype and a.flags.c_contiguous
               for a in floats):
        return False
    total = sum(_bytes_read(sl) for sl in slots)
    parallel_bytes = PARALLEL_BYTES if total > PARALLEL_MODEL_BYTES else 1 << 62
    positions = (ADDED_POSITIONS if w.pos_table is not None else ROPE if w.cos is not None
                 else NO_POSITIONS)
    dims = np.array([w.n_layer, w.n_head, w.n_kv_head, w.head_dim, c,      # N_LAYER .. WIDTH,
                     _NORM_CODES[w.norm_kind], _ACTIVATION_CODES[w.mlp], positions],  # the codes
                    np.int64)
    column = _Matrices(*zip(*slots))
    mats = _Matrices(
        kind=np.array(column.kind, np.int64), rows=np.array(column.rows, np.int64),
        weight=typed.List(column.weight), bias=typed.List(column.bias), q=typed.List(column.q),
        scale=typed.List(column.scale), mins=typed.List(column.mins),
        table=typed.List(column.table), offset=np.array(column.offset, np.int64),
        group=np.array(column.group, np.int64))
    return _Arguments(typed.List(tables), mats, typed.List(norms), dims, parallel_bytes)


def _arguments(weights):
    if weights.kernel_args is None:
        weights.kernel_args = _pack(weights)
    return weights.kernel_args


def _supported(ids, start, plan):
    # float32 only: a float64 model (tests, gradchecks) decodes through the reference, which
    # saves compiling the whole step a second time (~20 s)
    return (plan.weights.dtype == np.float32 and _arguments(plan.weights) is not False
            and plan.k_all.dtype == plan.weights.dtype)


@implements("decode_step", device="cpu", supports=_supported)
def decode_step_cpu(ids, start, plan):
    a = _arguments(plan.weights)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    logits = np.empty((len(ids), a.mats.rows[HEAD]), plan.weights.dtype)
    _decode_loop(ids, start, a.tables, a.mats, a.norms, plan.k_all, plan.v_all, a.dims,
                 plan.weights.eps, a.parallel_bytes, numba.get_num_threads(), logits)
    return logits
