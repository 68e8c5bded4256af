"""Causal (or unmasked) attention, forward and backward, tiled with an online softmax
(reference: ops/attention.py; Milakov & Gimelshein, 2018; Dao et al., 2022 and 2023).

Never builds the (B, H, Tq, Tk) score matrix: each query row walks the keys it may see in tiles of
_TILE; a tile's scores live in a small scratch row. Forward keeps a running max m, running sum l and
running output acc, rescaling them when the max grows, and saves lse = m + log l per row. Backward
recomputes each probability as e^(s - lse) (FlashAttention-2's trick) and accumulates dq, dk, dv
in the same sweep.

Speed: every inner loop runs over d on contiguous (D,) row views (q_i, k_j, v_j), as dot products
(reassociated, so they vectorise) or axpy updates; accumulators start from a zero of the input's
dtype so float32 stays float32 (a float64 accumulator halves the vector width). The parallel axis is (batch, query head) in forward and (batch, K/V head) in backward, where the G query
heads that share a K/V head are handled by one task: each task owns everything it writes.
"""
import math

import numpy as np
from numba import prange

from .. import implements
from ._common import exp_shifted, floats, jit_parallel

_TILE = 64


def _supported(q, k, v, mask, *rest, **kwargs):
    return mask is None and floats(q, k, v)


@jit_parallel
def _attention_forward_loop(q, k, v, causal, scale, zero, o, lse, scratch, bits, acc):
    # q, o: (B, H, Tq, D)  k, v: (B, Hkv, Tk, D)  lse: (B, H, Tq)
    # scratch: (B*H, 2, _TILE), bits: (B*H, _TILE) int32, acc: (B*H, D): one row per task
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
            m = -np.inf
            total = 0.0
            a[:] = zero
            for j0 in range(0, max(end, 0), _TILE):
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
                exp_shifted(s, new_m, p, bits[task], width)
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
def _attention_backward_loop(do, q, k, v, lse, delta, causal, scale, zero, dq, dk, dv, scratch,
                             bits):
    # do, q, dq: (B, H, Tq, D)  k, v, dk, dv: (B, Hkv, Tk, D)  lse, delta: (B, H, Tq)
    # scratch: (B*Hkv, 3, _TILE), bits: (B*Hkv, _TILE) int32: one row per task
    n_b, n_h, tq, d = q.shape
    n_hkv, tk = k.shape[1], k.shape[2]
    group = n_h // n_hkv
    offset = tk - tq
    for task in prange(n_b * n_hkv):
        b, hk = task // n_hkv, task % n_hkv
        s, dp, p = scratch[task, 0], scratch[task, 1], scratch[task, 2]
        keys, values, dkeys, dvalues = k[b, hk], v[b, hk], dk[b, hk], dv[b, hk]
        for h in range(hk * group, (hk + 1) * group):
            for i in range(tq):
                qi, doi, dqi = q[b, h, i], do[b, h, i], dq[b, h, i]
                end = min(tk, i + offset + 1) if causal else tk
                row_delta = delta[b, h, i]
                for j0 in range(0, max(end, 0), _TILE):
                    width = min(_TILE, end - j0)
                    for jj in range(width):           # s = q_i . k_j * scale,  dp = do_i . v_j
                        kj, vj = keys[j0 + jj], values[j0 + jj]
                        dot_qk = zero
                        dot_dv = zero
                        for c in range(d):
                            dot_qk += qi[c] * kj[c]
                            dot_dv += doi[c] * vj[c]
                        s[jj] = dot_qk * scale
                        dp[jj] = dot_dv
                    exp_shifted(s, lse[b, h, i], p, bits[task], width)    # P, recomputed
                    for jj in range(width):
                        j = j0 + jj
                        ds = p[jj] * (dp[jj] - row_delta) * scale
                        kj, dkj, dvj = keys[j], dkeys[j], dvalues[j]
                        for c in range(d):
                            dvj[c] += p[jj] * doi[c]
                            dqi[c] += ds * kj[c]
                            dkj[c] += ds * qi[c]


@implements("attention_forward", device="cpu", supports=_supported)
def attention_forward_cpu(q, k, v, mask, causal, scale):
    q, k, v = np.ascontiguousarray(q), np.ascontiguousarray(k), np.ascontiguousarray(v)
    b, h, tq, d = q.shape
    o = np.empty_like(q)
    lse = np.empty((b, h, tq), dtype=q.dtype)
    scratch = np.empty((b * h, 2, _TILE), dtype=q.dtype)
    bits = np.empty((b * h, _TILE), dtype=np.int32)
    acc = np.empty((b * h, d), dtype=q.dtype)
    _attention_forward_loop(q, k, v, causal, q.dtype.type(scale), q.dtype.type(0), o, lse,
                            scratch, bits, acc)
    return o, lse


@implements("attention_backward", device="cpu",
            supports=lambda do, q, k, v, o, lse, mask, *a: _supported(q, k, v, mask))
def attention_backward_cpu(do, q, k, v, o, lse, mask, causal, scale):
    do, q = np.ascontiguousarray(do), np.ascontiguousarray(q)
    k, v = np.ascontiguousarray(k), np.ascontiguousarray(v)
    delta = (do * o).sum(axis=-1)                           # (B, H, Tq): rowsum(dO * O)
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    tasks = k.shape[0] * k.shape[1]
    scratch = np.empty((tasks, 3, _TILE), dtype=q.dtype)
    bits = np.empty((tasks, _TILE), dtype=np.int32)
    _attention_backward_loop(do, q, k, v, np.ascontiguousarray(lse), delta, causal,
                             q.dtype.type(scale), q.dtype.type(0), dq, dk, dv, scratch, bits)
    return dq, dk, dv
