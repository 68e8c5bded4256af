"""Weight quantization schemes: how a float matrix W (out, in) becomes a few bits per weight.

Each scheme has a readable NumPy quantizer, `quantize(w) -> fields`, where `fields` is a dict of
arrays (what a QuantLinear stores and a checkpoint saves). One decoder serves them all:
`matmul_operands` states any scheme's fields as scaled levels (int8 values, or nibbles mapped
through 16 levels, times a per-block scale, plus q4_1's min) and `dequantize_operands` expands
that form (`dequantize_weight` is the two together). Rows are output channels; blocks run along
the input dimension, so a row's blocks are contiguous and a matrix-vector product streams them
once. Quantizing is host work, done once; decoding is written against `xp`, the fields' array
module, so fields held on a GPU are decoded there (nothing crosses to the host).

    int8   per output channel, symmetric: s = max|w_row| / 127, q = round(w / s) in [-127, 127].
           8 bits + one float per row.
    q8_0   llama.cpp's Q8_0: blocks of 32, d = max|x| / 127 (stored float16), q = round(x / d)
           (half away from zero, as C's roundf). 34 bytes per 32 weights: 8.5 bits.
    q4_0   llama.cpp's Q4_0: blocks of 32, m = the value of largest magnitude (sign kept),
           d = m / -8, q = min(15, trunc(x / d + 8.5)), w_hat = d (q - 8). The extreme value lands
           exactly on -8 d; the other side reaches 7 d. 18 bytes per 32 weights: 4.5 bits.
    q4_1   llama.cpp's Q4_1: blocks of 32 with an offset: d = (max - min) / 15,
           q = min(15, trunc((x - min) / d + 0.5)), w_hat = d q + min. 20 bytes: 5 bits.
    nf4    NormalFloat4 (Dettmers et al., 2023): groups of 32/64/128 scaled by their absmax, each
           value replaced by the nearest of 16 levels placed at quantiles of a standard normal
           (nf4_codebook), which is where the weights of a trained layer lie. Optional double
           quantization stores the per-group absmax values in 8 bits too (log-spaced codes, two
           floats per 256 of them): 4 + 8/g + 64/(256 g) bits instead of 4 + 32/g.

The three llama.cpp layouts follow ggml's reference quantizers to the bit: arithmetic in float32
(the scale d before it is rounded to float16 is what divides the block), ties as in C, and the
same 4-bit packing: byte j of a block holds element j in its low nibble and element j + 16 in its
high nibble. `to_ggml` / `from_ggml` convert the fields to and from the raw block bytes that a
GGUF file holds; tests compare them with the `gguf` package's NumPy port of ggml's quantizers.
"""
import math

import numpy as np

from ..backend import array_module, to_numpy

__all__ = ["SCHEMES", "GGML_TYPES", "quantize_weight", "dequantize_weight", "to_ggml",
           "from_ggml", "nf4_codebook", "pack_nibbles", "unpack_nibbles", "bits_per_weight",
           "matmul_operands", "dequantize_operands", "block_size", "fitting_group"]

QK = 32                                   # llama.cpp's block size for Q8_0 / Q4_0 / Q4_1
SCHEMES = ("int8", "q8_0", "q4_0", "q4_1", "nf4")
GGML_TYPES = ("q8_0", "q4_0", "q4_1")
NF4_GROUPS = (32, 64, 128)
DQ_BLOCK = 256                            # absmax values per double-quantization scale


def _check_matrix(w, block, scheme):
    w = np.asarray(to_numpy(w))                      # quantizing is host work, done once
    if w.ndim != 2 or w.dtype.kind != "f":
        raise ValueError(f"quantize({scheme!r}): expected a float (out, in) matrix, got shape "
                         f"{w.shape} dtype {w.dtype}")
    if block and w.shape[1] % block:
        raise ValueError(f"quantize({scheme!r}): the input dimension {w.shape[1]} is not a "
                         f"multiple of the block size {block}")
    return w.astype(np.float32)


# ---- 4-bit packing ----------------------------------------------------------------------------
def pack_nibbles(q):
    """q: (..., n) ints in [0, 15], n a multiple of 32 -> (..., n / 2) uint8: in each run of 32,
    byte j = q[j] | q[j + 16] << 4 (ggml's order)."""
    xp = array_module(q)
    q = xp.asarray(q, dtype=xp.uint8)
    blocks = q.reshape(q.shape[:-1] + (-1, 2, QK // 2))
    return (blocks[..., 0, :] | (blocks[..., 1, :] << 4)).reshape(q.shape[:-1] + (-1,))


def unpack_nibbles(packed):
    """The inverse of pack_nibbles: (..., n / 2) uint8 -> (..., n) uint8 in [0, 15]."""
    xp = array_module(packed)
    packed = xp.asarray(packed, dtype=xp.uint8)
    blocks = packed.reshape(packed.shape[:-1] + (-1, QK // 2))
    q = xp.stack([blocks & 0x0F, blocks >> 4], axis=-2)
    return q.reshape(packed.shape[:-1] + (-1,))


# ---- int8 per output channel ------------------------------------------------------------------
def _int8_quantize(w, group_size):
    scale = np.abs(w).max(axis=1) / np.float32(127)
    inv = np.divide(1, scale, out=np.zeros_like(scale), where=scale > 0)
    q = np.clip(np.rint(w * inv[:, None]), -127, 127).astype(np.int8)
    return {"qweight": q, "scale": scale.astype(np.float32)}


# ---- llama.cpp blocks -------------------------------------------------------------------------
def _blocks(w):
    return w.reshape(w.shape[0], -1, QK)                       # (out, n_blocks, 32)


def _reciprocal(d):
    return np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)


def _q8_0_quantize(w, group_size):
    x = _blocks(w)
    d = np.abs(x).max(axis=2) / np.float32(127)                # float32, as ggml
    scaled = x * _reciprocal(d)[..., None]
    q = np.sign(scaled) * np.floor(np.abs(scaled) + np.float32(0.5))   # roundf: half away from 0
    return {"qweight": q.astype(np.int8).reshape(w.shape), "scale": d.astype(np.float16)}


def _q4_0_quantize(w, group_size):
    x = _blocks(w)
    at = np.abs(x).argmax(axis=2)[..., None]                   # first of equal magnitudes
    d = np.take_along_axis(x, at, axis=2)[..., 0] / np.float32(-8)
    q = np.trunc(x * _reciprocal(d)[..., None] + np.float32(8.5))
    q = np.clip(q, 0, 15).astype(np.uint8).reshape(w.shape)
    return {"qweight": pack_nibbles(q), "scale": d.astype(np.float16)}


def _q4_1_quantize(w, group_size):
    x = _blocks(w)
    lo, hi = x.min(axis=2), x.max(axis=2)
    d = (hi - lo) / np.float32(15)
    q = np.trunc((x - lo[..., None]) * _reciprocal(d)[..., None] + np.float32(0.5))
    q = np.clip(q, 0, 15).astype(np.uint8).reshape(w.shape)
    return {"qweight": pack_nibbles(q), "scale": d.astype(np.float16),
            "min": lo.astype(np.float16)}


# ---- NF4 --------------------------------------------------------------------------------------
def _normal_quantile(p):
    """The standard normal's inverse CDF at p in (0, 1), by bisection on erf (60 halvings: float64
    exact)."""
    lo, hi = -10.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def nf4_codebook():
    """The 16 NF4 levels (Dettmers et al., 2023, appendix E): 8 positive levels at the normal
    quantiles of 8 evenly spaced probabilities from 0.5 to delta = 0.9677 (the upper end chosen
    so the last level is a finite quantile), 7 negative ones likewise, and an exact 0; scaled so
    the extremes are -1 and 1. Asymmetric on purpose: it keeps a zero and uses all 16 codes."""
    delta = 0.9677083
    positive = [_normal_quantile(p) for p in np.linspace(delta, 0.5, 9)[:-1]]
    negative = [-_normal_quantile(p) for p in np.linspace(delta, 0.5, 8)[:-1]]
    levels = np.array(sorted(positive + negative + [0.0]))
    return (levels / np.abs(levels).max()).astype(np.float32)


NF4_CODEBOOK = nf4_codebook()


def _nf4_quantize(w, group_size, double_quant=False):
    if group_size not in NF4_GROUPS:
        raise ValueError(f"quantize('nf4'): group_size must be one of {NF4_GROUPS}, got "
                         f"{group_size}")
    x = w.reshape(w.shape[0], -1, group_size)
    absmax = np.abs(x).max(axis=2)                             # (out, n_groups) float32
    fields = {}
    if double_quant:
        absmax, fields = _double_quantize(absmax)
    scaled = x / np.where(absmax == 0, 1, absmax)[..., None]
    # nearest level: the midpoints between sorted levels are the decision boundaries
    mid = (NF4_CODEBOOK[1:] + NF4_CODEBOOK[:-1]) / 2
    q = np.searchsorted(mid, scaled.reshape(w.shape)).astype(np.uint8)
    fields["qweight"] = pack_nibbles(q)
    if not double_quant:
        fields["absmax"] = absmax.astype(np.float32)
    return fields


def _double_quantize(absmax):
    """absmax (out, n_groups) float32 -> (the scales the weights are then divided by, fields):
    each run of DQ_BLOCK absmax values (row-major) as uint8 codes of their logarithm, evenly
    spaced between the run's smallest and largest log (a float32 start and step per run).
    Relative precision, as the absmax values span orders of magnitude: a run whose values differ
    10x is stored to within 0.5%; a linear int8 code would lose small scales (bitsandbytes uses
    an 8-bit float for the same reason)."""
    flat = absmax.reshape(-1).astype(np.float64)
    pad = (-len(flat)) % DQ_BLOCK
    runs = np.concatenate([flat, np.zeros(pad)]).reshape(-1, DQ_BLOCK)
    # all-zero groups (and the padding) take the run's smallest code: their weights are 0 anyway
    positive = runs > 0
    logs = np.log(np.where(positive, runs, 1.0))
    start = np.where(positive, logs, np.inf).min(axis=1)
    start = np.where(np.isfinite(start), start, 0.0)
    logs = np.where(positive, logs, start[:, None])
    step = (logs.max(axis=1) - start) / 255
    codes = np.rint((logs - start[:, None]) / np.where(step > 0, step, 1)[:, None])
    fields = {"absmax_q": codes.reshape(-1)[:len(flat)].reshape(absmax.shape).astype(np.uint8),
              "absmax_start": start.astype(np.float32), "absmax_step": step.astype(np.float32)}
    return _nf4_absmax(fields), fields


def _nf4_absmax(f):
    """The per-group scales of NF4 fields (stored directly, or rebuilt from double quant)."""
    if "absmax" in f:
        return f["absmax"]
    xp = array_module(f["absmax_q"])
    codes = f["absmax_q"].reshape(-1).astype(xp.float32)
    start = xp.repeat(f["absmax_start"], DQ_BLOCK)[:len(codes)]
    step = xp.repeat(f["absmax_step"], DQ_BLOCK)[:len(codes)]
    return xp.exp(start + codes * step).reshape(f["absmax_q"].shape).astype(xp.float32)


# ---- the table --------------------------------------------------------------------------------
_QUANTIZE = {"int8": _int8_quantize, "q8_0": _q8_0_quantize, "q4_0": _q4_0_quantize,
             "q4_1": _q4_1_quantize, "nf4": _nf4_quantize}


def _check_scheme(scheme):
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}; valid schemes: {SCHEMES}")


def block_size(scheme, group_size=64):
    """Input-dimension granularity of a scheme: 32 for llama.cpp's, group_size for NF4, 1 for
    int8 (per channel)."""
    _check_scheme(scheme)
    return QK if scheme in GGML_TYPES else group_size if scheme == "nf4" else 1


def fitting_group(scheme, group_size, in_features):
    """The group size a layer of `in_features` inputs is quantized with under `scheme`, falling
    back as llama.cpp's quantizer does when the scheme's block does not divide the row:
    group_size itself when it fits, else NF4's largest smaller group that does (llama.cpp: a type
    with a smaller block), else None: no block of the scheme fits, and the layer stays in float
    (llama.cpp writes it F16)."""
    if in_features % block_size(scheme, group_size) == 0:
        return group_size
    smaller = [g for g in NF4_GROUPS if g < group_size and in_features % g == 0]
    return max(smaller) if scheme == "nf4" and smaller else None


def quantize_weight(w, scheme, group_size=64, double_quant=False):
    """w: (out, in) float -> dict of arrays. group_size and double_quant apply to NF4."""
    _check_scheme(scheme)
    if scheme == "nf4" and group_size not in NF4_GROUPS:
        raise ValueError(f"quantize('nf4'): group_size must be one of {NF4_GROUPS}, got "
                         f"{group_size}")
    w = _check_matrix(w, block_size(scheme, group_size), scheme)
    with np.errstate(over="ignore", invalid="ignore"):    # beyond float16: inf scales, as ggml
        if scheme == "nf4":
            return _nf4_quantize(w, group_size, double_quant)
        return _QUANTIZE[scheme](w, group_size)


def dequantize_weight(fields, scheme):
    """The float32 (out, in) matrix that quantized `fields` stand for: every scheme is decoded
    by dequantize_operands from its matmul_operands form (below)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return dequantize_operands(*matmul_operands(fields, scheme))


def matmul_operands(fields, scheme):
    """The fields as one generic form that a matrix product can decode block by block:
    (qweight, scale, minimum, levels, group) where W_hat[o, k] = scale[o, k // group] * value
    (+ minimum[o, k // 32]), value = the int8 qweight[o, k] when levels is None, else
    levels[nibble k of row o] (4-bit packed, ggml order). minimum is None except for q4_1.
    Every array is on the fields' device (levels too: 16 float32)."""
    _check_scheme(scheme)
    q = fields["qweight"]
    xp = array_module(q)
    if scheme == "int8":
        return q, fields["scale"][:, None], None, None, q.shape[1]
    if scheme == "q8_0":
        return q, fields["scale"], None, None, QK
    if scheme == "nf4":
        absmax = _nf4_absmax(fields)
        return q, absmax, None, xp.asarray(NF4_CODEBOOK), 2 * q.shape[1] // absmax.shape[1]
    levels = xp.arange(16, dtype=xp.float32) - (8 if scheme == "q4_0" else 0)
    return q, fields["scale"], fields.get("min"), levels, QK


def dequantize_operands(qweight, scale, minimum, levels, group):
    """W_hat (out, in) float32 from matmul_operands' form (the readable decode), on qweight's
    device."""
    xp = array_module(qweight)
    values = (qweight.astype(xp.float32) if levels is None
              else xp.asarray(levels, dtype=xp.float32)[unpack_nibbles(qweight)])
    out, n = values.shape
    w = values.reshape(out, n // group, group) * scale.astype(xp.float32)[..., None]
    if minimum is not None:
        w = w.reshape(out, n // QK, QK) + minimum.astype(xp.float32)[..., None]
    return w.reshape(out, n)


def bits_per_weight(fields, shape):
    return 8 * sum(a.nbytes for a in fields.values()) / (shape[0] * shape[1])


# ---- ggml's raw blocks ------------------------------------------------------------------------
def to_ggml(fields, scheme):
    """Fields of a llama.cpp scheme -> (out, n_blocks * bytes_per_block) uint8: each block is its
    float16 scale (and min, for q4_1) followed by its quants, as in a GGUF file."""
    if scheme not in GGML_TYPES:
        raise ValueError(f"to_ggml: {scheme!r} is not a llama.cpp block type {GGML_TYPES}")
    out = fields["qweight"].shape[0]
    parts = [fields["scale"][..., None].view(np.uint8)]
    if scheme == "q4_1":
        parts.append(fields["min"][..., None].view(np.uint8))
    quants = fields["qweight"].view(np.uint8).reshape(out, fields["scale"].shape[1], -1)
    parts.append(quants)
    return np.concatenate(parts, axis=2).reshape(out, -1)


def from_ggml(raw, scheme, shape):
    """The inverse of to_ggml: raw block bytes of a (out, in) matrix -> fields."""
    if scheme not in GGML_TYPES:
        raise ValueError(f"from_ggml: {scheme!r} is not a llama.cpp block type {GGML_TYPES}")
    out, n_in = shape
    n_blocks = n_in // QK
    header = 4 if scheme == "q4_1" else 2
    blocks = np.ascontiguousarray(raw, dtype=np.uint8).reshape(out, n_blocks, -1)
    fields = {"scale": np.ascontiguousarray(blocks[..., :2]).view(np.float16)[..., 0]}
    if scheme == "q4_1":
        fields["min"] = np.ascontiguousarray(blocks[..., 2:4]).view(np.float16)[..., 0]
    quants = np.ascontiguousarray(blocks[..., header:]).reshape(out, -1)
    fields["qweight"] = quants.view(np.int8) if scheme == "q8_0" else quants
    return fields
