"""Quantized matrix products without the float weight (reference: quant/linear.py quant_matmul,
which dequantizes first; formats in quant/formats.py).

y[i, o] = sum over the blocks b of row o of  scale[o, b] * sum_j value(q[o, b, j]) x[i, b, j]
(+ min[o, b] * sum_j x[i, b, j] for q4_1). Each row's packed bytes are read once for all N tokens
(the row stays in L1 while the tokens pass over it), blocks are decoded inside the dot product,
and rows are split over the threads when the matrix is large. Two loops cover the five schemes:

  _rows_8bit    int8 (one group per row) and q8_0 (groups of 32): signed bytes times a scale.
  _rows_4bit    q4_0 (nibble - 8), q4_1 (nibble, plus the block's min) and nf4 (codebook[nibble],
                groups of 32/64/128): two nibbles per byte, byte j of each 32-block holding
                elements j and j + 16 (ggml's order).

float16 scales (llama.cpp's) are passed as their uint16 bits and decoded per block by
`_half` (one table lookup and a multiply), so the stored fields are used as they are.
"""
import numba
import numpy as np
from numba import prange, types
from numba.extending import overload

from .. import implements
from ._common import jit, jit_parallel

QK = 32                       # 4-bit values are packed in runs of 32 (ggml's order)

PARALLEL_BYTES = 1 << 20      # matrices at least this large split their rows over the threads

_POW2 = np.array([2.0 ** (e - 25) for e in range(32)], dtype=np.float32)   # half exponents


@jit
def _half_bits(h):
    """A float16's value from its 16 bits (as ggml_fp16_to_fp32: subnormals, inf and NaN)."""
    h = np.int32(h)
    e = (h >> 10) & 31
    m = h & 1023
    if e == 0:
        v = np.float32(m) * np.float32(5.960464477539063e-08)           # 2^-24
    elif e == 31:
        v = np.float32(np.inf) if m == 0 else np.float32(np.nan)
    else:
        v = np.float32(1024 + m) * _POW2[e]
    return -v if h & 0x8000 else v


def scale_value(s):
    """A scale as float32: float32 scales as they are, uint16 ones decoded as float16 bits."""
    raise NotImplementedError("scale_value is called from jitted code only")


@overload(scale_value, jit_options={"fastmath": {"contract", "reassoc"}})
def _scale_value_typed(s):
    if isinstance(s, types.Integer):
        return lambda s: _half_bits(s)
    return lambda s: np.float32(s)


# Written for LLVM's loop vectoriser: the block loops run from 0 to a runtime length (`group`,
# `half`; not the constant 32, which would be unrolled and left to the weaker SLP vectoriser, and
# not range(base, base + n), whose indices numba cannot prove non-negative: gathers), bytes are
# turned into floats first and everything after is float arithmetic (numba widens integer
# operations to int64, which turned each byte into a scalar insert and a 64-bit conversion):
# a signed byte is b - 256 when b >= 128, a nibble pair is hi = floor(b / 16), lo = b - 16 hi.
@jit
def _rows_8bit(q, scales, group, x, y, lo, hi):
    # q: (out, in) uint8 holding int8 bits; scales: (out, in / group)
    n, t = x.shape[1], x.shape[0]
    n_groups = n // group
    for o in range(lo, hi):
        row, srow = q[o], scales[o]
        for i in range(t):
            xi = x[i]
            acc = np.float32(0.0)
            for b in range(n_groups):
                s = np.float32(0.0)
                base = b * group
                for j in range(group):
                    v = np.float32(row[base + j])
                    v = v - np.float32(256.0) if v >= np.float32(128.0) else v
                    s += v * xi[base + j]
                acc += scale_value(srow[b]) * s
            y[i, o] = acc


@jit
def _rows_4bit(q, scales, mins, levels, offset, group, half, x, xsum, y, lo, hi):
    # q: (out, in / 2) uint8; scales: (out, in / group); mins: (out, in / 32) or empty;
    # levels: 16 floats (nf4) or empty (value = nibble + offset); xsum: (t, in / 32) block sums;
    # half: 16, the bytes of a 32-block (a runtime value, see above)
    n, t = x.shape[1], x.shape[0]
    n_blocks = n // (2 * half)
    per_group = group // (2 * half)
    table = levels.shape[0] > 0
    off = np.float32(offset)
    for o in range(lo, hi):
        row, srow = q[o], scales[o]
        for i in range(t):
            xi = x[i]
            acc = np.float32(0.0)
            for c in range(n_blocks):
                s = np.float32(0.0)
                base, byte = 2 * c * half, c * half
                if table:
                    for j in range(half):
                        p = np.int64(row[byte + j])
                        s += levels[p & 15] * xi[base + j] + levels[p >> 4] * xi[base + half + j]
                else:
                    for j in range(half):
                        v = np.float32(row[byte + j])
                        high = np.floor(v * np.float32(0.0625))
                        low = v - high * np.float32(16.0)
                        s += (low + off) * xi[base + j] + (high + off) * xi[base + half + j]
                acc += scale_value(srow[c // per_group]) * s
                if mins.shape[0]:
                    acc += scale_value(mins[o, c]) * xsum[i, c]
            y[i, o] = acc


@jit_parallel
def _rows_8bit_parallel(q, scales, group, x, y, n_chunks):
    m = q.shape[0]
    for c in prange(n_chunks):
        _rows_8bit(q, scales, group, x, y, c * m // n_chunks, (c + 1) * m // n_chunks)


@jit_parallel
def _rows_4bit_parallel(q, scales, mins, levels, offset, group, half, x, xsum, y, n_chunks):
    m = q.shape[0]
    for c in prange(n_chunks):
        _rows_4bit(q, scales, mins, levels, offset, group, half, x, xsum, y,
                   c * m // n_chunks, (c + 1) * m // n_chunks)


# ---- the decoder's layout: column tiles -------------------------------------------------------
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
# The decode plan repacks its quantized matrices this way once (column_layout).
COLUMN_TILE = 256


@jit
def _tile_8bit(qt, st, group, x, y, lo, w):
    """y[i, lo:lo+w] = x[i] W^T over one tile; qt: (in, TILE) int8 bits as uint8,
    st: (in / group, TILE) float32. Each byte row is decoded once for all t tokens."""
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
                    v = np.float32(row[o])
                    v = v - np.float32(256.0) if v >= np.float32(128.0) else v
                    p0[o] += v * xk
                continue
            for o in range(w):
                v = np.float32(row[o])
                vals[o] = v - np.float32(256.0) if v >= np.float32(128.0) else v
            for i in range(t):
                xk, pi = x[i, k], part[i]
                for o in range(w):
                    pi[o] += vals[o] * xk
        srow = st[b, :w]
        for i in range(t):
            yi, pi = y[i, lo:lo + w], part[i]
            for o in range(w):
                yi[o] += srow[o] * pi[o]


@jit
def _tile_4bit(qt, st, mt, levels, offset, group, half, x, y, lo, w):
    """The same for nibbles: qt (in / 2, TILE) uint8, st (in / group, TILE) float32, mt
    (in / 32, TILE) float32 block mins or (0, TILE) (q4_1 only), levels a 16-entry table (NF4)
    or empty (value = nibble + offset). half = 16 at run time (a constant 16 would be
    unrolled). Each byte row is decoded once for all t tokens."""
    n, t = x.shape[1], x.shape[0]
    part = np.empty((t, w), np.float32)
    low_v, high_v = np.empty(w, np.float32), np.empty(w, np.float32)
    off = np.float32(offset)
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
                    low = v - high * np.float32(16.0)
                    p0[o] += (low + off) * xl + (high + off) * xh
                continue
            else:
                for o in range(w):
                    v = np.float32(row[o])
                    high = np.floor(v * np.float32(0.0625))
                    low_v[o], high_v[o] = v - high * np.float32(16.0) + off, high + off
            for i in range(t):
                xl, xh, pi = x[i, kl], x[i, kh], part[i]
                for o in range(w):
                    pi[o] += low_v[o] * xl + high_v[o] * xh
        srow = st[b // per_group, :w]
        for i in range(t):
            yi, pi = y[i, lo:lo + w], part[i]
            for o in range(w):
                yi[o] += srow[o] * pi[o]
            if mt.shape[0]:
                xs = np.float32(0.0)
                for j in range(2 * half):
                    xs += x[i, 2 * b * half + j]
                mrow = mt[b, :w]
                for o in range(w):
                    yi[o] += mrow[o] * xs


@jit
def _tiles(q3, s3, m3, levels, offset, group, half, eight, x, y, first, last):
    """Tiles first..last-1 of a column-tiled matrix (8-bit when `eight`, else nibbles)."""
    m = y.shape[1]
    for c in range(first, last):
        lo = c * COLUMN_TILE
        w = min(COLUMN_TILE, m - lo)
        if eight:
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
    q3 = _tiled(np.asarray(qweight).view(np.uint8).T)
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


def _bits(a):
    """float16 arrays travel as their uint16 bits; float32 ones as they are."""
    return np.ascontiguousarray(a.view(np.uint16) if a.dtype == np.float16 else a)


_NO_MIN = np.zeros((0, 0), np.uint16)
_NO_LEVELS = np.zeros(0, np.float32)


def _supported(x, qweight, scale, minimum, levels, group):
    return (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim == 2
            and isinstance(qweight, np.ndarray) and scale.dtype in (np.float16, np.float32))


@implements("quant_matmul", device="cpu", supports=_supported)
def quant_matmul_cpu(x, qweight, scale, minimum, levels, group):
    x = np.ascontiguousarray(x)
    out = qweight.shape[0]
    y = np.empty((x.shape[0], out), np.float32)
    threads = numba.get_num_threads()
    parallel = threads > 1 and qweight.nbytes >= PARALLEL_BYTES
    if levels is None:                                          # int8 values
        args = (qweight.view(np.uint8), _bits(scale), group, x, y)
        if parallel:
            _rows_8bit_parallel(*args, threads)
        else:
            _rows_8bit(*args, 0, out)
        return y
    levels = np.asarray(levels, np.float32)
    offset = int(levels[0])
    if np.array_equal(levels, np.arange(16, dtype=np.float32) + offset):
        levels = _NO_LEVELS                          # integer levels: nibble + offset, no table
    mins, xsum = _NO_MIN, np.zeros((0, 0), np.float32)
    if minimum is not None:
        mins, xsum = _bits(minimum), x.reshape(x.shape[0], -1, QK).sum(axis=2)
    args = (qweight, _bits(scale), mins, levels, offset, group, QK // 2, x, xsum, y)
    if parallel:
        _rows_4bit_parallel(*args, threads)
    else:
        _rows_4bit(*args, 0, out)
    return y
