"""Causal (or unmasked) attention, forward and backward, tiled with an online softmax
(reference: ops/attention.py; Milakov & Gimelshein, 2018; Dao et al., 2022 and 2023).

Never builds the (B, H, Tq, Tk) score matrix: each query row walks the keys it may see (the causal
prefix, or the last `window` of it) in tiles of _TILE; a tile's scores live in a small scratch row. Forward keeps a running max m, running sum l and
running output acc, rescaling them when the max grows, and saves lse = m + log l per row. Backward
recomputes each probability as e^(s - lse) (FlashAttention-2's trick) and accumulates dq, dk, dv
in the same sweep, four query rows at a time.

Speed: every inner loop runs over d on contiguous (D,) row views (q_i, k_j, v_j), as dot products
(reassociated, so they vectorise) or axpy updates; accumulators start from a zero of the input's
dtype so float32 stays float32 (a float64 accumulator halves the vector width). The exponentials
of a tile go through the vectorised exp_shifted. The parallel axis is (batch, query head) in
forward and (batch, K/V head) in backward, where the G query heads that share a K/V head are
handled by one task: each task owns everything it writes.
"""
import math

import numpy as np
from numba import prange

from .. import implements
from ._common import exp_scratch, exp_shifted, floats, jit_parallel

_TILE = 64


def _supported(q, k, v, mask, *rest, **kwargs):
    return mask is None and floats(q, k, v)


@jit_parallel
def _attention_forward_loop(q, k, v, causal, window, scale, zero, o, lse, scratch, bits, powers,
                            acc):
    # q, o: (B, H, Tq, D)  k, v: (B, Hkv, Tk, D)  lse: (B, H, Tq)
    # scratch: (B*H, 2, _TILE), bits, powers: (B*H, _TILE), acc: (B*H, D): one row per task
    n_b, n_h, tq, d = q.shape
    n_hkv, tk = v.shape[1], v.shape[2]
    group = n_h // n_hkv
    offset = tk - tq                                  # causal: query i sees keys j <= i + offset
    for task in prange(n_b * n_h):
        b, h = task // n_h, task % n_h
        hk = h // group
        s, p, a = scratch[task, 0], scratch[task, 1], acc[task]
        keys, values = k[b, hk], v[b, hk]             # (Tk, D) views
        for i in range(tq):
            qi = q[b, h, i]
            end = min(tk, i + offset + 1) if causal else tk
            start = max(0, i + offset - window + 1) if window > 0 else 0
            m = -np.inf
            total = 0.0
            a[:] = zero
            for j0 in range(start, max(end, start), _TILE):
                width = min(_TILE, end - j0)
                tile_max = -np.inf
                for jj in range(width):               # s = q_i . k_j * scale
                    kj = keys[j0 + jj]
                    dot = zero
                    for c in range(d):
                        dot += qi[c] * kj[c]
                    s[jj] = dot * scale
                    tile_max = max(tile_max, s[jj])
                new_m = max(m, tile_max)
                rescale = math.exp(m - new_m)         # 0 on the first tile (m = -inf)
                total *= rescale
                for c in range(d):
                    a[c] *= rescale
                exp_shifted(s, new_m, p, bits[task], powers[task], width)
                for jj in range(width):               # acc += e^(s - m) v_j
                    total += p[jj]
                    vj = values[j0 + jj]
                    for c in range(d):
                        a[c] += p[jj] * vj[c]
                m = new_m
            oi = o[b, h, i]
            if total > 0.0:
                inv = 1.0 / total
                for c in range(d):
                    oi[c] = a[c] * inv
                lse[b, h, i] = m + math.log(total)
            else:                                     # no key visible: output 0, as the reference
                oi[:] = zero
                lse[b, h, i] = 0.0


@jit_parallel
def _attention_backward_loop(do, q, k, v, lse, delta, causal, window, scale, zero, dq, dk, dv,
                             scratch, bits, powers):
    # do, q, dq: (B, H, Tq, D)  k, v, dk, dv: (B, Hkv, Tk, D)  lse, delta: (B, H, Tq)
    # scratch: (B*Hkv, 3, 4, _TILE), bits, powers: (B*Hkv, _TILE): one block per task
    # Query rows go in blocks of 4, so each dk_j, dv_j row is loaded and stored once per block
    # instead of once per query; rows past the end of a block get p = ds = 0.
    n_b, n_h, tq, d = q.shape
    n_hkv, tk = k.shape[1], k.shape[2]
    group = n_h // n_hkv
    offset = tk - tq
    for task in prange(n_b * n_hkv):
        b, hk = task // n_hkv, task % n_hkv
        s, p, ds = scratch[task, 0], scratch[task, 1], scratch[task, 2]      # (4, _TILE) each
        keys, values, dkeys, dvalues = k[b, hk], v[b, hk], dk[b, hk], dv[b, hk]
        for h in range(hk * group, (hk + 1) * group):
            for i0 in range(0, tq, 4):
                rows = min(4, tq - i0)
                last = i0 + rows - 1
                i1, i2, i3 = min(i0 + 1, last), min(i0 + 2, last), min(i0 + 3, last)
                q0, q1, q2, q3 = q[b, h, i0], q[b, h, i1], q[b, h, i2], q[b, h, i3]
                g0, g1, g2, g3 = do[b, h, i0], do[b, h, i1], do[b, h, i2], do[b, h, i3]
                dq0, dq1, dq2, dq3 = dq[b, h, i0], dq[b, h, i1], dq[b, h, i2], dq[b, h, i3]
                block_end = min(tk, last + offset + 1) if causal else tk
                block_start = max(0, i0 + offset - window + 1) if window > 0 else 0
                for j0 in range(block_start, max(block_end, block_start), _TILE):
                    width = min(_TILE, block_end - j0)
                    for jj in range(width):       # s = q_r . k_j * scale,  dp = do_r . v_j
                        j = j0 + jj
                        kj, vj = keys[j], values[j]
                        a0 = a1 = a2 = a3 = zero
                        b0 = b1 = b2 = b3 = zero
                        for c in range(d):        # 8 independent sums share each k, v load
                            kc, vc = kj[c], vj[c]
                            a0 += q0[c] * kc
                            a1 += q1[c] * kc
                            a2 += q2[c] * kc
                            a3 += q3[c] * kc
                            b0 += g0[c] * vc
                            b1 += g1[c] * vc
                            b2 += g2[c] * vc
                            b3 += g3[c] * vc
                        s[0, jj], s[1, jj], s[2, jj], s[3, jj] = a0, a1, a2, a3
                        ds[0, jj], ds[1, jj], ds[2, jj], ds[3, jj] = b0, b1, b2, b3
                    for r in range(4):
                        if r >= rows:             # padding rows: no contribution
                            p[r, :width] = zero
                            ds[r, :width] = zero
                            continue
                        i = i0 + r
                        end = min(tk, i + offset + 1) if causal else tk
                        start = max(0, i + offset - window + 1) if window > 0 else 0
                        for jj in range(width):
                            visible = start <= j0 + jj < end
                            s[r, jj] = s[r, jj] * scale if visible else -np.inf
                        # P, recomputed
                        exp_shifted(s[r], lse[b, h, i], p[r], bits[task], powers[task], width)
                        row_delta = delta[b, h, i]
                        for jj in range(width):   # dS = P * (dP - delta) * scale
                            ds[r, jj] = p[r, jj] * (ds[r, jj] - row_delta) * scale
                    for jj in range(width):
                        j = j0 + jj
                        kj, dkj, dvj = keys[j], dkeys[j], dvalues[j]
                        p0, p1, p2, p3 = p[0, jj], p[1, jj], p[2, jj], p[3, jj]
                        s0, s1, s2, s3 = ds[0, jj], ds[1, jj], ds[2, jj], ds[3, jj]
                        # one output row per loop: simple enough for LLVM's alias checks
                        for c in range(d):
                            dvj[c] += p0 * g0[c] + p1 * g1[c] + p2 * g2[c] + p3 * g3[c]
                        for c in range(d):
                            dkj[c] += s0 * q0[c] + s1 * q1[c] + s2 * q2[c] + s3 * q3[c]
                        for c in range(d):
                            dq0[c] += s0 * kj[c]
                        for c in range(d):
                            dq1[c] += s1 * kj[c]
                        for c in range(d):
                            dq2[c] += s2 * kj[c]
                        for c in range(d):
                            dq3[c] += s3 * kj[c]


@implements("attention_forward", device="cpu", supports=_supported)
def attention_forward_cpu(q, k, v, mask, causal, scale, window):
    q, k, v = np.ascontiguousarray(q), np.ascontiguousarray(k), np.ascontiguousarray(v)
    b, h, tq, d = q.shape
    o = np.empty_like(q)
    lse = np.empty((b, h, tq), dtype=q.dtype)
    scratch = np.empty((b * h, 2, _TILE), dtype=q.dtype)
    acc = np.empty((b * h, d), dtype=q.dtype)
    _attention_forward_loop(q, k, v, causal, int(window), q.dtype.type(scale), q.dtype.type(0),
                            o, lse, scratch, *exp_scratch(b * h, _TILE), acc)
    return o, lse


@implements("attention_backward", device="cpu",
            supports=lambda do, q, k, v, o, lse, mask, *a: _supported(q, k, v, mask))
def attention_backward_cpu(do, q, k, v, o, lse, mask, causal, scale, window):
    do, q = np.ascontiguousarray(do), np.ascontiguousarray(q)
    k, v = np.ascontiguousarray(k), np.ascontiguousarray(v)
    delta = (do * o).sum(axis=-1)                           # (B, H, Tq): rowsum(dO * O)
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    tasks = k.shape[0] * k.shape[1]
    scratch = np.empty((tasks, 3, 4, _TILE), dtype=q.dtype)
    _attention_backward_loop(do, q, k, v, np.ascontiguousarray(lse), delta, causal, int(window),
                             q.dtype.type(scale), q.dtype.type(0), dq, dk, dv, scratch,
                             *exp_scratch(tasks, _TILE))
    return dq, dk, dv
