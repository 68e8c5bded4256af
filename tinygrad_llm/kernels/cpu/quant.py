"""Quantized matrix products without the float weight (reference: quant/linear.py quant_matmul,
which dequantizes first; formats in quant/formats.py; the decoder's step uses the same tiles).

y[i, o] = sum over the blocks b of  scale[b, o] * sum_j value(q[b, j, o]) x[i, b, j]
(+ min[b, o] * sum_j x[i, b, j] for q4_1), value a signed byte (int8, q8_0), a nibble + offset
(q4_0: -8, q4_1: 0) or a code book entry (nf4).

The weights are read in a layout made for this loop, column tiles (below): made once per quantized
array and kept while that array lives (cached_layout; load_state_dict replaces buffers, it never
writes them in place, so a kept layout cannot go stale).
"""
import weakref

import numba
import numpy as np
from numba import prange

from .. import implements
from ._common import jit, jit_parallel

QK = 32                       # 4-bit values are packed in runs of 32 (ggml's order)

# Matrices at least this large split their rows or tiles over the threads (here and in the decode
# step, kernels/cpu/decode.py). 256 KiB since the workers spin briefly before sleeping
# (kernels/cpu/__init__.py): 1 MiB left GPT-2 small's Q4_0 qkv and output projections on one
# thread; 256 KiB took its decoding from 250-290 to 325-360 tokens/s, Q8_0 from 180 to 235,
# measured in alternating processes.
PARALLEL_BYTES = 1 << 18


# ---- column tiles ------------------------------------------------------------------------------
# A matrix-vector product over row-major blocks needs one horizontal sum per block and row (the
# block's scale multiplies its partial dot product), which caps it near 10 GMAC/s. Stored
# transposed, each input element scales a contiguous run of outputs: part[o] += value(q[k, o])
# x[k] over a block, then y[o] += scale[b, o] part[o]: no horizontal sums, every loop vectorises
# over the outputs (30-40 GMAC/s on one core, measured at 3072 x 768). The outputs are cut into
# tiles of COLUMN_TILE (256: enough tiles to keep two threads busy on a 768-wide layer; 1024 was
# 30% slower on GPT-2 small), each stored contiguously, (n_tiles, in, TILE) for 8-bit values and
# (n_tiles, in / 2, TILE) for nibbles (byte row 16 b + j holds element 32 b + j in its low nibble
# and 32 b + j + 16 in its high one), so a tile streams from memory as one run and its running
# sums (1 KB) stay in L1. Scales and q4_1's mins are float32 (n_tiles, in / group, TILE).
# Each quantized array is repacked this way once (cached_layout).
COLUMN_TILE = 256


@jit
def _tile_8bit(qt, st, group, x, y, lo, w):
    """y[i, lo:lo+w] = x[i] W^T over one tile; qt: (in, TILE) bytes holding q + 128 (the sign bit
    flipped by column_layout), st: (in / group, TILE) float32. The 128 comes out of the sum:
    sum_j (b_j - 128) x_j = sum_j b_j x_j - 128 sum_j x_j, so the inner loop is a byte-to-float
    conversion and one multiply-add. Each byte row is decoded once for all t tokens."""
    n, t = x.shape[1], x.shape[0]
    part = np.empty((t, w), np.float32)
    vals = np.empty(w, np.float32)
    for i in range(t):
        for o in range(w):
            y[i, lo + o] = 0.0
    for b in range(n // group):
        part[:] = 0.0
        for j in range(group):
            k = b * group + j
            row = qt[k, :w]
            if t == 1:
                xk, p0 = x[0, k], part[0]
                for o in range(w):
                    p0[o] += np.float32(row[o]) * xk
                continue
            for o in range(w):
                vals[o] = np.float32(row[o])
            for i in range(t):
                xk, pi = x[i, k], part[i]
                for o in range(w):
                    pi[o] += vals[o] * xk
        srow = st[b, :w]
        for i in range(t):
            shift = np.float32(0.0)
            for j in range(group):
                shift += x[i, b * group + j]
            shift *= np.float32(128.0)
            yi, pi = y[i, lo:lo + w], part[i]
            for o in range(w):
                yi[o] += srow[o] * (pi[o] - shift)


@jit
def _tile_4bit(qt, st, mt, levels, offset, group, half, x, y, lo, w):
    """The same for nibbles: qt (in / 2, TILE) uint8, st (in / group, TILE) float32, mt
    (in / 32, TILE) float32 block mins or (0, TILE) (q4_1 only), levels a 16-entry table (NF4)
    or empty (value = nibble + offset; the offset comes out of the sum as offset * sum_j x_j).
    half = 16 at run time (a constant 16 would be unrolled). Each byte row is decoded once for
    all t tokens."""
    n, t = x.shape[1], x.shape[0]
    part = np.empty((t, w), np.float32)
    low_v, high_v = np.empty(w, np.float32), np.empty(w, np.float32)
    off = np.float32(0.0) if levels.shape[0] > 0 else np.float32(offset)
    table = levels.shape[0] > 0
    per_group = group // (2 * half)
    for i in range(t):
        for o in range(w):
            y[i, lo + o] = 0.0
    for b in range(n // (2 * half)):
        part[:] = 0.0
        for j in range(half):
            kl, kh = 2 * b * half + j, 2 * b * half + half + j
            row = qt[b * half + j, :w]
            if table:
                for o in range(w):
                    p = np.int64(row[o])
                    low_v[o], high_v[o] = levels[p & 15], levels[p >> 4]
            elif t == 1:
                xl, xh, p0 = x[0, kl], x[0, kh], part[0]
                for o in range(w):
                    v = np.float32(row[o])
                    high = np.floor(v * np.float32(0.0625))
                    p0[o] += (v - high * np.float32(16.0)) * xl + high * xh
                continue
            else:
                for o in range(w):
                    v = np.float32(row[o])
                    high = np.floor(v * np.float32(0.0625))
                    low_v[o], high_v[o] = v - high * np.float32(16.0), high
            for i in range(t):
                xl, xh, pi = x[i, kl], x[i, kh], part[i]
                for o in range(w):
                    pi[o] += low_v[o] * xl + high_v[o] * xh
        srow = st[b // per_group, :w]
        for i in range(t):
            xs = np.float32(0.0)
            for j in range(2 * half):
                xs += x[i, 2 * b * half + j]
            shift = off * xs
            yi, pi = y[i, lo:lo + w], part[i]
            for o in range(w):
                yi[o] += srow[o] * (pi[o] + shift)
            if mt.shape[0]:
                mrow = mt[b, :w]
                for o in range(w):
                    yi[o] += mrow[o] * xs


@jit
def _tile_8bit_one(qt, st, group, x0, y0, w):
    """_tile_8bit for one token (the decoder's step), with nothing but the hot loop inside:
    the general version's branches and 2-D running sums halved its speed (measured)."""
    part = np.empty(w, np.float32)
    for o in range(w):
        y0[o] = 0.0
    for b in range(x0.shape[0] // group):
        for o in range(w):
            part[o] = 0.0
        shift = np.float32(0.0)
        for j in range(group):
            xk = x0[b * group + j]
            shift += xk
            row = qt[b * group + j, :w]
            for o in range(w):
                part[o] += np.float32(row[o]) * xk
        shift *= np.float32(128.0)
        srow = st[b, :w]
        for o in range(w):
            y0[o] += srow[o] * (part[o] - shift)


@jit
def _tile_4bit_one(qt, st, mt, offset, group, half, x0, y0, w):
    """_tile_4bit for one token and integer levels (q4_0, q4_1), the hot loop alone."""
    part = np.empty(w, np.float32)
    off = np.float32(offset)
    per_group = group // (2 * half)
    for o in range(w):
        y0[o] = 0.0
    for b in range(x0.shape[0] // (2 * half)):
        for o in range(w):
            part[o] = 0.0
        xs = np.float32(0.0)
        for j in range(half):
            xl, xh = x0[2 * b * half + j], x0[2 * b * half + half + j]
            xs += xl + xh
            row = qt[b * half + j, :w]
            for o in range(w):
                v = np.float32(row[o])
                high = np.floor(v * np.float32(0.0625))
                part[o] += (v - high * np.float32(16.0)) * xl + high * xh
        shift = off * xs
        srow = st[b // per_group, :w]
        for o in range(w):
            y0[o] += srow[o] * (part[o] + shift)
        if mt.shape[0]:
            mrow = mt[b, :w]
            for o in range(w):
                y0[o] += mrow[o] * xs


@jit
def _tiles(q3, s3, m3, levels, offset, group, half, eight, x, y, first, last):
    """Tiles first..last-1 of a column-tiled matrix (8-bit when `eight`, else nibbles)."""
    m = y.shape[1]
    for c in range(first, last):
        lo = c * COLUMN_TILE
        w = min(COLUMN_TILE, m - lo)
        if x.shape[0] == 1 and eight:
            _tile_8bit_one(q3[c], s3[c], group, x[0], y[0, lo:lo + w], w)
        elif x.shape[0] == 1 and levels.shape[0] == 0:
            _tile_4bit_one(q3[c], s3[c], m3[c], offset, group, half, x[0], y[0, lo:lo + w], w)
        elif eight:
            _tile_8bit(q3[c], s3[c], group, x, y, lo, w)
        else:
            _tile_4bit(q3[c], s3[c], m3[c], levels, offset, group, half, x, y, lo, w)


@jit_parallel
def _tiles_parallel(q3, s3, m3, levels, offset, group, half, eight, x, y):
    for c in prange(q3.shape[0]):
        _tiles(q3, s3, m3, levels, offset, group, half, eight, x, y, c, c + 1)


def _tiled(a, fill=0):
    """(rows, out) -> (n_tiles, rows, COLUMN_TILE), the last tile padded with `fill`."""
    rows, out = a.shape
    n_tiles = -(-out // COLUMN_TILE)
    padded = np.full((rows, n_tiles * COLUMN_TILE), fill, a.dtype)
    padded[:, :out] = a
    return np.ascontiguousarray(padded.reshape(rows, n_tiles, COLUMN_TILE).transpose(1, 0, 2))


def column_layout(qweight, scale, minimum, levels, group):
    """matmul_operands' row-major form -> (q3, s3, m3, levels or empty, offset, group) for the
    tile kernels: bytes transposed into column tiles, scales and mins as float32 tiles."""
    q = np.asarray(qweight)
    if levels is None:                        # signed bytes stored as q + 128 (see _tile_8bit)
        q = q.view(np.uint8) ^ np.uint8(0x80)
    q3 = _tiled(q.view(np.uint8).T)
    s3 = _tiled(np.asarray(scale, np.float32).T)
    m3 = (np.zeros((q3.shape[0], 0, COLUMN_TILE), np.float32) if minimum is None
          else _tiled(np.asarray(minimum, np.float32).T))        # no mins: (n_tiles, 0, TILE)
    offset, table = 0, np.zeros(0, np.float32)
    if levels is not None:
        levels = np.asarray(levels, np.float32)
        offset = int(levels[0])
        if not np.array_equal(levels, np.arange(16, dtype=np.float32) + offset):
            table = levels
    return q3, s3, m3, table, offset, group


_LAYOUTS = {}          # id(qweight) -> (weak reference to it, its scale array, the layout)


def _same(a, b):
    """The same array, or views of one with the same shape (int8's per-row scale is passed as a
    fresh (out, 1) view each time)."""
    return a is b or (a.base is not None and a.base is b.base and a.shape == b.shape)


def cached_layout(qweight, scale, minimum, levels, group):
    """column_layout of these operands, made once and kept while the qweight array lives (the
    decoder's plan and every QuantLinear forward share it; a tied embedding and head too)."""
    key = id(qweight)
    hit = _LAYOUTS.get(key)
    if hit is not None and hit[0]() is qweight and _same(hit[1], scale):
        return hit[2]
    layout = column_layout(qweight, scale, minimum, levels, group)
    _LAYOUTS[key] = (weakref.ref(qweight, lambda _, key=key: _LAYOUTS.pop(key, None)), scale,
                     layout)
    return layout


def tile_arguments(layout, eight, x, y):
    """The _tiles / _tiles_parallel arguments for a layout (half = 16 passed at run time)."""
    q3, s3, m3, table, offset, group = layout
    return (q3, s3, m3, table, offset, group, QK // 2, eight, x, y)


def _supported(x, qweight, scale, minimum, levels, group):
    return (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim == 2
            and isinstance(qweight, np.ndarray) and scale.dtype in (np.float16, np.float32))


@implements("quant_matmul", device="cpu", supports=_supported)
def quant_matmul_cpu(x, qweight, scale, minimum, levels, group):
    layout = cached_layout(qweight, scale, minimum, levels, group)
    y = np.empty((x.shape[0], qweight.shape[0]), np.float32)
    args = tile_arguments(layout, levels is None, np.ascontiguousarray(x), y)
    if numba.get_num_threads() > 1 and layout[0].nbytes >= PARALLEL_BYTES:
        _tiles_parallel(*args)
    else:
        _tiles(*args, 0, layout[0].shape[0])
    return y
