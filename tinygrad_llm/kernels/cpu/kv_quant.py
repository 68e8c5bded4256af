"""Attention over a KIVI-quantized KV cache that reads the packed codes directly (reference:
generate/long_caches.py, kv_quant_attention, which dequantizes the store and then attends;
KIVI: Liu et al., 2024).

The store holds n_quantized tokens per (batch, K/V head): key codes per channel over blocks of R
tokens with a (scale, min) pair per channel and block, value codes per token over groups of
group_size channels with a pair per token and group; 8 / bits codes per byte, code j of a byte in
bits [j bits, (j + 1) bits). After it comes the float tail (the residual and the new tokens).
For a query row q (scaled by the attention's scale) and a key n of block b:

    s_n = sum_c q_c (ks_bc code_nc + km_bc) = sum_c (q_c ks_bc) code_nc + sum_c q_c km_bc

so q is folded into the block's scales once (qs = q * ks, qm = q . km) and each key costs one
multiply-add per code. A value enters the output as
    o += p_n v_n = sum_g (p_n vs_ng) code_n[g] + p_n vm_ng
where the min term is one number per group, summed apart (`sums`) and added at the end.

The codes are unpacked in place as `planes`: plane j holds code j of every byte, so channel c
sits at plane c % per, byte c // per (per = 8 / bits), and each plane is a contiguous row of
n_bytes entries. The folded query and the output accumulator live in that layout too (padding
entries past D stay 0), so every inner loop runs over contiguous bytes with a fixed shift and
vectorises: four keys' dot products share each load of the folded query, the value update adds
two tokens' codes per load and store of the accumulator. The store goes by in tiles of whole key
blocks (about _TILE tokens) with an online softmax (Milakov & Gimelshein, 2018): a running max m,
sum l and accumulator, rescaled when the max grows; then the float tail, causal and end-aligned
(query i of t sees the tail up to its own token). No (t, n) score matrix is formed.

The parallel axis is (batch, query head): query head h reads K/V head h // (H / Hkv), and each
task owns its output rows. Query rows go one at a time, so this pays for decoding (t of a few
tokens); a long prefill chunk (t > MAX_ROWS) takes the reference, which dequantizes the store
once and runs the tiled attention kernel over it: there the unpacking is amortized over t rows.

Reading order: _as_float, the keys (_key_scores4, _key_score, _fold_block), the values
(_add_values2, _add_value), the online softmax step (_online_step), the loop, the wrapper.
"""
import math

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from .. import implements
from ._common import FASTMATH, exp_shifted, floats, jit, jit_parallel, row_max

MAX_ROWS = 16     # query rows per call at most: decode steps and speculative decoding's k + 1
_TILE = 256       # tokens of the store per online-softmax tile (whole key blocks, at least one)


def jit_inline(fn):
    """A loop inlined into its one caller (Numba IR inlining): as calls, passing a dozen arrays
    per two or four tokens cost about as much as their arithmetic."""
    return njit(cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")(fn)


def _as_float(code, like):
    """The integer code as a float of like's dtype (an int times a float32 would be float64)."""
    raise NotImplementedError("_as_float is called from jitted code only")


@overload(_as_float)
def _as_float_typed(code, like):
    if like == types.float32:
        return lambda code, like: np.float32(code)
    return lambda code, like: np.float64(code)


# ---- keys: s_n = qs . code_n + qm --------------------------------------------------------------
@jit_inline
def _key_scores4(qs, rows, n, bits, zero):
    """The folded dot products qs . code of keys n .. n + 3 of rows (N, n_bytes), planes qs
    (per, n_bytes): four at a time, so each load of qs serves four keys."""
    per, mask = 8 // bits, (1 << bits) - 1
    r0, r1, r2, r3 = rows[n], rows[n + 1], rows[n + 2], rows[n + 3]
    a0 = a1 = a2 = a3 = zero
    for j in range(per):
        qj, shift = qs[j], j * bits
        for m in range(qj.shape[0]):
            w = qj[m]
            a0 += w * _as_float((r0[m] >> shift) & mask, zero)
            a1 += w * _as_float((r1[m] >> shift) & mask, zero)
            a2 += w * _as_float((r2[m] >> shift) & mask, zero)
            a3 += w * _as_float((r3[m] >> shift) & mask, zero)
    return a0, a1, a2, a3


@jit
def _key_score(qs, row, bits, zero):
    """qs . code of one key row (n_bytes,)."""
    per, mask = 8 // bits, (1 << bits) - 1
    a = zero
    for j in range(per):
        qj, shift = qs[j], j * bits
        for m in range(qj.shape[0]):
            a += qj[m] * _as_float((row[m] >> shift) & mask, zero)
    return a


@jit_inline
def _fold_block(q_planes, k_scale, k_min, d, per_shift, qs, zero):
    """qs = q * ks in planes (entries past d keep their 0) and returns qm = q . km, for one key
    block's scale and min rows (D,)."""
    low = (1 << per_shift) - 1
    qm = zero
    for c in range(d):
        qc = q_planes[c & low, c >> per_shift]
        qs[c & low, c >> per_shift] = qc * k_scale[c]
        qm += qc * k_min[c]
    return qm


# ---- values: acc += sum_g (p vs_g) code[g], sums_g += p vm_g -----------------------------------
@jit_inline
def _add_values2(acc, weights, sums, pa, pb, row_a, row_b, scale_a, scale_b, min_a, min_b, bits,
                 group_size, zero):
    """Two tokens' values into the planes acc (per, n_bytes) and the groups' min terms, when
    group_size is a multiple of per (each byte in one group; else _add_value). The weights
    p vs_g are first spread over their group's bytes (weights: (2, n_bytes)), so the update
    runs over whole planes: a loop per group is group_size / per bytes long, too short for
    LLVM to vectorise (about 3x slower, measured at D = 64, group_size = 32)."""
    per, mask = 8 // bits, (1 << bits) - 1
    span = group_size // per                           # bytes per group
    wa, wb = weights[0], weights[1]
    for g in range(scale_a.shape[0]):
        sums[g] += pa * min_a[g] + pb * min_b[g]
        xa, xb = pa * scale_a[g], pb * scale_b[g]
        for m in range(g * span, (g + 1) * span):
            wa[m] = xa
            wb[m] = xb
    for j in range(per):
        aj, shift = acc[j], j * bits
        for m in range(aj.shape[0]):
            aj[m] += (wa[m] * _as_float((row_a[m] >> shift) & mask, zero)
                      + wb[m] * _as_float((row_b[m] >> shift) & mask, zero))


@jit
def _add_value(acc, sums, p, row, scale, mins, bits, per_shift, group_size, zero):
    """One token's values, channel by channel (any group_size)."""
    low, mask = (1 << per_shift) - 1, (1 << bits) - 1
    for g in range(scale.shape[0]):
        sums[g] += p * mins[g]
        w = p * scale[g]
        for c in range(g * group_size, (g + 1) * group_size):
            j, m = c & low, c >> per_shift
            acc[j, m] += w * _as_float((row[m] >> (j * bits)) & mask, zero)


# ---- the online softmax ------------------------------------------------------------------------
@jit
def _online_step(s, width, m_l, total, acc, sums):
    """Fold a tile of scores s[:width] into the running max m_l[0] (s's dtype: a float64 max
    would make exp_shifted's arithmetic float64) and sum total[0] (float64): rescale acc and sums
    by e^(m - m') when the max grows, and turn s into p = e^(s - m'):
        m' = max(m, max s),  l' = l e^(m - m') + sum e^(s - m'),  acc' = acc e^(m - m')."""
    m = m_l[0]
    new_m = max(m, row_max(s, width))
    if new_m == -np.inf:                   # nothing visible yet: p = 0
        for j in range(width):
            s[j] = 0
        return
    if new_m != m:
        rescale = math.exp(m - new_m)     # 0 on the first tile (m = -inf)
        for j in range(acc.shape[0]):
            for c in range(acc.shape[1]):
                acc[j, c] *= rescale
        for g in range(sums.shape[0]):
            sums[g] *= rescale
        total[0] *= rescale
    total[0] += exp_shifted(s, new_m, s, width)
    m_l[0] = new_m


# ---- the loop ----------------------------------------------------------------------------------
@jit_parallel
def _kv_quant_attention_loop(q, keys, values, k_codes, k_scale, k_min, v_codes, v_scale, v_min,
                             n_quantized, bits, block, group_size, causal, zero, o, planes,
                             spread, scores, sums, maxes, totals):
    """o[b, h, i] = softmax over [store; visible tail] of q_i . k, times the values.
    q: (B, H, t, D) already scaled; keys, values: (B, Hkv, L, D) the float tail; k_codes,
    v_codes: (B, Hkv, >= n_quantized, n_bytes) uint8; k_scale, k_min: (B, Hkv, >= n_q / R, D);
    v_scale, v_min: (B, Hkv, >= n_quantized, D / group_size); o: (B, H, t, D).
    Per task: planes (3, per, n_bytes) for the query, the folded query and the accumulator;
    spread (2, n_bytes) for two tokens' value weights;
    scores (tile,), sums (D / group_size,), maxes (1,) and totals (1,) float64: m and l."""
    n_b, n_h, t, d = q.shape
    n_hkv, tail = keys.shape[1], keys.shape[2]
    group = n_h // n_hkv
    per = 8 // bits
    per_shift = 0 if bits == 8 else 1 if bits == 4 else 2   # per = 2^per_shift: channel c
    #                                                          at (c & low, c >> per_shift)
    low = per - 1
    n_blocks = n_quantized // block
    tile_blocks = max(1, scores.shape[1] // block)
    grouped = group_size % per == 0
    for task in prange(n_b * n_h):
        b, h = task // n_h, task % n_h
        hk = h // group
        qp, qs, acc = planes[task, 0], planes[task, 1], planes[task, 2]
        weights = spread[task]
        s, sm, m_l, total = scores[task], sums[task], maxes[task], totals[task]
        kc, vc = k_codes[b, hk], v_codes[b, hk]
        for i in range(t):
            qi = q[b, h, i]
            for j in range(per):                      # padding entries stay 0
                for m in range(qp.shape[1]):
                    qp[j, m] = zero
                    qs[j, m] = zero
                    acc[j, m] = zero
            for c in range(d):
                qp[c & low, c >> per_shift] = qi[c]
            for g in range(sm.shape[0]):
                sm[g] = zero
            m_l[0], total[0] = -np.inf, 0.0
            for blk0 in range(0, n_blocks, tile_blocks):      # the store, whole blocks a tile
                blk1 = min(blk0 + tile_blocks, n_blocks)
                first = blk0 * block
                for blk in range(blk0, blk1):
                    qm = _fold_block(qp, k_scale[b, hk, blk], k_min[b, hk, blk], d, per_shift,
                                     qs, zero)
                    n, end = blk * block, (blk + 1) * block
                    while n + 4 <= end:
                        a0, a1, a2, a3 = _key_scores4(qs, kc, n, bits, zero)
                        s[n - first], s[n + 1 - first] = a0 + qm, a1 + qm
                        s[n + 2 - first], s[n + 3 - first] = a2 + qm, a3 + qm
                        n += 4
                    for n in range(n, end):
                        s[n - first] = _key_score(qs, kc[n], bits, zero) + qm
                width = (blk1 - blk0) * block
                _online_step(s, width, m_l, total, acc, sm)
                if grouped:
                    for jj in range(0, width - 1, 2):
                        na, nb = first + jj, first + jj + 1
                        _add_values2(acc, weights, sm, s[jj], s[jj + 1], vc[na], vc[nb],
                                     v_scale[b, hk, na], v_scale[b, hk, nb], v_min[b, hk, na],
                                     v_min[b, hk, nb], bits, group_size, zero)
                    start = width - width % 2
                else:
                    start = 0
                for jj in range(start, width):
                    n = first + jj
                    _add_value(acc, sm, s[jj], vc[n], v_scale[b, hk, n], v_min[b, hk, n], bits,
                               per_shift, group_size, zero)
            visible = tail - t + i + 1 if causal else tail          # the float tail
            for j0 in range(0, visible, s.shape[0]):
                width = min(s.shape[0], visible - j0)
                for jj in range(width):
                    kj = keys[b, hk, j0 + jj]
                    a = zero
                    for c in range(d):
                        a += qi[c] * kj[c]
                    s[jj] = a
                _online_step(s, width, m_l, total, acc, sm)
                for jj in range(width):
                    p, vj = s[jj], values[b, hk, j0 + jj]
                    for c in range(d):
                        acc[c & low, c >> per_shift] += p * vj[c]
            oi = o[b, h, i]
            inv = 1.0 / total[0] if total[0] != 0.0 else 0.0   # no key visible: 0, as the reference
            for g in range(sm.shape[0]):
                for c in range(g * group_size, (g + 1) * group_size):
                    oi[c] = (acc[c & low, c >> per_shift] + sm[g]) * inv


# ---- the wrapper -------------------------------------------------------------------------------
def _supported(q, keys, values, k_codes, k_scale, k_min, v_codes, v_scale, v_min, n_quantized,
               bits, block, group_size, mask, causal, scale):
    store = [a for a in (k_scale, k_min, v_scale, v_min) if a is not None]
    return (mask is None and q.shape[2] <= MAX_ROWS and floats(q, keys, values, *store)
            and all(isinstance(a, np.ndarray) for a in [q, keys, values] + store))


def _store_array(a, shape, dtype):
    """A store buffer as the loop reads it: C-contiguous, or an empty one before the first
    block is quantized."""
    return np.zeros(shape, dtype) if a is None else np.ascontiguousarray(a)


@implements("kv_quant_attention", device="cpu", supports=_supported)
def kv_quant_attention_cpu(q, keys, values, k_codes, k_scale, k_min, v_codes, v_scale, v_min,
                           n_quantized, bits, block, group_size, mask, causal, scale):
    b, h, t, d = q.shape
    hkv = keys.shape[1]
    dtype = q.dtype
    per, n_bytes = 8 // bits, -(-d * bits // 8)
    q = np.ascontiguousarray(q * dtype.type(scale))
    keys, values = np.ascontiguousarray(keys), np.ascontiguousarray(values)
    empty = n_quantized == 0
    k_codes = _store_array(None if empty else k_codes, (b, hkv, 0, n_bytes), np.uint8)
    v_codes = _store_array(None if empty else v_codes, (b, hkv, 0, n_bytes), np.uint8)
    k_scale = _store_array(None if empty else k_scale, (b, hkv, 0, d), dtype)
    k_min = _store_array(None if empty else k_min, (b, hkv, 0, d), dtype)
    groups = d // group_size
    v_scale = _store_array(None if empty else v_scale, (b, hkv, 0, groups), dtype)
    v_min = _store_array(None if empty else v_min, (b, hkv, 0, groups), dtype)
    tasks = b * h
    tile = max(block, _TILE // block * block)
    o = np.empty((b, h, t, d), dtype)
    _kv_quant_attention_loop(q, keys, values, k_codes, k_scale, k_min, v_codes, v_scale, v_min,
                             int(n_quantized), int(bits), int(block), int(group_size),
                             bool(causal), dtype.type(0), o,
                             np.zeros((tasks, 3, per, n_bytes), dtype),
                             np.empty((tasks, 2, n_bytes), dtype),
                             np.empty((tasks, tile), dtype), np.empty((tasks, groups), dtype),
                             np.empty((tasks, 1), dtype), np.empty((tasks, 1)))
    return o
