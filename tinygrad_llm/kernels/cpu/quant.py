"""Quantized matrix products without the float weight (reference: quant/linear.py quant_matmul,
which dequantizes first; formats in quant/formats.py; the decoder's step uses the same tiles).

y[i, o] = sum over the blocks b of  scale[b, o] * sum_j value(q[b, j, o]) x[i, b, j]
(+ min[b, o] * sum_j x[i, b, j] for q4_1), value a signed byte (int8, q8_0), a nibble + offset
(q4_0: -8, q4_1: 0) or a code book entry (nf4).

The weights are read in a layout made for this loop, column tiles (below). `quant_pack` makes it
when a quantized layer is built or loaded on the CPU, and the layer keeps only that
(quant/linear.py's PackedWeight): one resident copy of the bytes, which the decode step reads too.

Reading order: the layout (COLUMN_TILE), the tile loops for several tokens (_tile_8bit,
_tile_4bit) and for one (_tile_8bit_one, _tile_4bit_one), _tiles which picks among them,
ColumnTiles (packing, and the row-major fields given back), then the two registrations.
"""
import numba
import numpy as np
from numba import prange

from .. import implements
from ._common import jit, jit_parallel

QK = 32                       # 4-bit values are packed in runs of 32 (ggml's order)

# Matrices at least this large split their rows or tiles over the threads (here and in the decode
# step, kernels/cpu/decode.py). Low, since the workers spin briefly before sleeping
# (kernels/cpu/__init__.py): 1 MiB left GPT-2 small's Q4_0 qkv and output projections on one
# thread, and its decoding ran about a fifth slower.
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
# Each quantized matrix is stored this way on the CPU (ColumnTiles, made by quant_pack; its
# reference, quant/linear.py's RowMajor, keeps the row-major arrays instead).
COLUMN_TILE = 256


@jit
def _tile_8bit(qt, st, group, x, y, lo, w):
    """y[i, lo:lo+w] = x[i] W^T over one tile for t >= 2 tokens (one token: _tile_8bit_one);
    qt: (in, TILE) bytes holding q + 128 (the sign bit flipped by ColumnTiles), st:
    (in / group, TILE) float32. The 128 comes out of the sum:
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
    all t tokens. Runs for t >= 2 tokens, and for NF4's table at any t (one token with integer
    levels: _tile_4bit_one)."""
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
    """_tile_4bit for one token and integer levels (q4_0, q4_1), the hot loop alone. A byte v
    holds low = v - 16 high and high = floor(v / 16), so
        low xl + high xh = v xl + high (xh - 16 xl):
    one operation fewer per byte than decoding the low nibble (10% on GPT-2 small's matrices,
    where the conversions and the two multiply-adds per byte, not memory, bound the loop). Its
    rounding error is a few ulps larger, still far inside the tests' bound."""
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
            xd = xh - np.float32(16.0) * xl
            row = qt[b * half + j, :w]
            for o in range(w):
                v = np.float32(row[o])
                high = np.floor(v * np.float32(0.0625))
                part[o] += v * xl + high * xd
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
    """Tiles first..last-1 of a column-tiled matrix (8-bit when `eight`, else nibbles); one
    token takes the one-token loops where they exist."""
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


class ColumnTiles:
    """A quantized matrix's bytes in the tile layout above, with what the tile kernels read:
    q3 (n_tiles, in or in / 2, TILE) uint8, s3 and m3 (scales, q4_1's mins) as float32 tiles,
    table (NF4's 16 levels, else empty) and offset (the integer levels' first value), group.

    On the CPU this is the only resident copy of a quantized layer's bytes and scales
    (quant/linear.py's PackedWeight); `row_major`, `scales` and `mins` give back matmul_operands'
    arrays, or some of their rows, for a checkpoint, the reference path or an embedding lookup,
    as quant_pack's reference layout (quant/linear.py's RowMajor) gives the arrays it holds."""

    def __init__(self, qweight, scale, minimum, levels, group):
        q = np.asarray(qweight)
        self.out, self.row_bytes = q.shape
        self.eight = levels is None
        self.dtype = q.dtype
        if self.eight:                       # signed bytes stored as q + 128 (see _tile_8bit)
            q = q.view(np.uint8) ^ np.uint8(0x80)
        self.q3 = _tiled(q.view(np.uint8).T)
        self.s3 = _tiled(np.asarray(scale, np.float32).T)
        self.m3 = (np.zeros((self.q3.shape[0], 0, COLUMN_TILE), np.float32) if minimum is None
                   else _tiled(np.asarray(minimum, np.float32).T))   # no mins: (n_tiles, 0, TILE)
        self.offset, self.table, self.group = 0, np.zeros(0, np.float32), group
        if levels is not None:
            levels = np.asarray(levels, np.float32)
            self.offset = int(levels[0])
            if not np.array_equal(levels, np.arange(16, dtype=np.float32) + self.offset):
                self.table = levels

    @property
    def nbytes(self):
        return self.q3.nbytes + self.s3.nbytes + self.m3.nbytes

    def _untiled(self, a3):
        """The inverse of _tiled: (n_tiles, rows, TILE) -> (out, rows), a new array."""
        return np.ascontiguousarray(a3.transpose(1, 0, 2).reshape(a3.shape[1], -1)[:, :self.out].T)

    def _rows(self, a3, ids):
        """Rows ids of _untiled(a3) without rebuilding the rest."""
        tile, col = np.divmod(np.asarray(ids, np.int64), COLUMN_TILE)
        return np.ascontiguousarray(a3[tile, :, col])

    def _bytes(self, u8):
        """Stored bytes (..., row_bytes) back to qweight's values and dtype."""
        return (u8 ^ np.uint8(0x80) if self.eight else u8).view(self.dtype)

    def row_major(self, ids=None):
        """qweight (out, row_bytes) as matmul_operands gave it, or its rows ids (new arrays)."""
        return self._bytes(self._untiled(self.q3) if ids is None else self._rows(self.q3, ids))

    def scales(self, ids=None):
        """The scales (out, in / group) float32, or their rows ids."""
        return self._untiled(self.s3) if ids is None else self._rows(self.s3, ids)

    def mins(self, ids=None):
        """q4_1's block mins (out, in / 32) float32 (or rows ids), None for other schemes."""
        if self.m3.shape[1] == 0:
            return None
        return self._untiled(self.m3) if ids is None else self._rows(self.m3, ids)

    def arguments(self, x, y):
        """The _tiles / _tiles_parallel arguments (half = 16 passed at run time)."""
        return (self.q3, self.s3, self.m3, self.table, self.offset, self.group, QK // 2,
                self.eight, x, y)


@implements("quant_pack", device="cpu", supports=lambda q, *rest: isinstance(q, np.ndarray))
def quant_pack_cpu(qweight, scale, minimum, levels, group):
    return ColumnTiles(qweight, scale, minimum, levels, group)


def _supported(x, weight):
    return (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim == 2
            and isinstance(weight.tiles, ColumnTiles))


@implements("quant_matmul", device="cpu", supports=_supported)
def quant_matmul_cpu(x, weight):
    tiles = weight.tiles
    y = np.empty((x.shape[0], tiles.out), np.float32)
    args = tiles.arguments(np.ascontiguousarray(x), y)
    if numba.get_num_threads() > 1 and tiles.q3.nbytes >= PARALLEL_BYTES:
        _tiles_parallel(*args)
    else:
        _tiles(*args, 0, tiles.q3.shape[0])
    return y
