"""Causal (or unmasked) attention, forward and backward, tiled with an online softmax
(reference: ops/attention.py; Milakov & Gimelshein, 2018; Dao et al., 2022 and 2023).

Never builds the (B, H, Tq, Tk) score matrix: each query row walks the keys it may see (the causal
prefix, or the last `window` of it) in tiles of _TILE; a tile's scores live in a small scratch
row. Forward keeps a running max m, running sum l and running output acc, rescaling them when the
max grows, and saves lse = m + log l per row. Backward recomputes each probability as e^(s - lse)
(FlashAttention-2's trick) and accumulates dq, dk, dv in the same sweep, four query rows at a time.

Layout: token-major, q (B, T, Sq, D) with head h in slot q0 + h, and k, v likewise, so one packed
qkv projection (B, T, H + 2 Hkv, D) is read in place (PackedAttentionOp); the (B, H, T, D) API
copies its inputs into this layout.

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
from ._common import exp_scratch, exp_shifted, floats, jit, jit_parallel

_TILE = 64


def _supported(q, k, v, mask, *rest, **kwargs):
    return mask is None and floats(q, k, v)


@jit
def _visible_end(position, tk, causal, window):
    """One past the last key a query at `position` sees: itself when causal, else window - 1
    later (a symmetric window) or the end."""
    if causal:
        return min(tk, position + 1)
    return min(tk, position + window) if window > 0 else tk


@jit
def _visible_start(position, window):
    """The first key a query at `position` sees: window - 1 earlier, or 0."""
    return max(0, position - window + 1) if window > 0 else 0


@jit_parallel
def _attention_forward_loop(q, q0, k, k0, v, v0, n_h, n_hkv, causal, window, scale, zero, o, lse,
                            scratch, bits, powers, acc):
    # token-major: q: (B, Tq, Sq, D) with query head h at slot q0 + h; k, v: (B, Tk, S, D) with
    # K/V head g at k0 + g, v0 + g (one packed qkv array may be all three); o: (B, Tq, H, D)
    # lse: (B, H, Tq)  scratch: (B*H, 2, _TILE), bits, powers: (B*H, _TILE), acc: (B*H, D)
    n_b, tq, _, d = q.shape
    tk = k.shape[1]
    group = n_h // n_hkv
    offset = tk - tq                                  # causal: query i sees keys j <= i + offset
    for task in prange(n_b * n_h):
        b, h = task // n_h, task % n_h
        hk = h // group
        s, p, a = scratch[task, 0], scratch[task, 1], acc[task]
        for i in range(tq):
            qi = q[b, i, q0 + h]                      # (D,) rows, contiguous
            end = _visible_end(i + offset, tk, causal, window)
            start = _visible_start(i + offset, window)
            m = -np.inf
            total = 0.0
            a[:] = zero
            for j0 in range(start, max(end, start), _TILE):
                width = min(_TILE, end - j0)
                tile_max = -np.inf
                for jj in range(width):               # s = q_i . k_j * scale
                    kj = k[b, j0 + jj, k0 + hk]
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
                    vj = v[b, j0 + jj, v0 + hk]
                    for c in range(d):
                        a[c] += p[jj] * vj[c]
                m = new_m
            oi = o[b, i, h]
            if total > 0.0:
                inv = 1.0 / total
                for c in range(d):
                    oi[c] = a[c] * inv
                lse[b, h, i] = m + math.log(total)
            else:                                     # no key visible: output 0, as the reference
                oi[:] = zero
                lse[b, h, i] = 0.0


@jit_parallel
def _attention_backward_loop(do, q, q0, k, k0, v, v0, n_h, n_hkv, lse, delta, causal, window,
                             scale, zero, dq, dk, dv, scratch, bits, powers):
    # token-major as in forward: do: (B, Tq, H, D); q, dq: (B, Tq, Sq, D) at slots q0 + h;
    # k, dk at k0 + g and v, dv at v0 + g of (B, Tk, S, D); lse, delta: (B, H, Tq)
    # scratch: (B*Hkv, 3, 4, _TILE), bits, powers: (B*Hkv, _TILE): one block per task
    # Query rows go in blocks of 4, so each dk_j, dv_j row is loaded and stored once per block
    # instead of once per query; rows past the end of a block get p = ds = 0.
    n_b, tq, _, d = q.shape
    tk = k.shape[1]
    group = n_h // n_hkv
    offset = tk - tq
    for task in prange(n_b * n_hkv):
        b, hk = task // n_hkv, task % n_hkv
        s, p, ds = scratch[task, 0], scratch[task, 1], scratch[task, 2]      # (4, _TILE) each
        for h in range(hk * group, (hk + 1) * group):
            for i0 in range(0, tq, 4):
                rows = min(4, tq - i0)
                last = i0 + rows - 1
                i1, i2, i3 = min(i0 + 1, last), min(i0 + 2, last), min(i0 + 3, last)
                qh = q0 + h
                r0, r1, r2, r3 = q[b, i0, qh], q[b, i1, qh], q[b, i2, qh], q[b, i3, qh]
                g0, g1, g2, g3 = do[b, i0, h], do[b, i1, h], do[b, i2, h], do[b, i3, h]
                dq0, dq1, dq2, dq3 = dq[b, i0, qh], dq[b, i1, qh], dq[b, i2, qh], dq[b, i3, qh]
                block_end = _visible_end(last + offset, tk, causal, window)
                block_start = _visible_start(i0 + offset, window)
                for j0 in range(block_start, max(block_end, block_start), _TILE):
                    width = min(_TILE, block_end - j0)
                    for jj in range(width):       # s = q_r . k_j * scale,  dp = do_r . v_j
                        j = j0 + jj
                        kj, vj = k[b, j, k0 + hk], v[b, j, v0 + hk]
                        a0 = a1 = a2 = a3 = zero
                        b0 = b1 = b2 = b3 = zero
                        for c in range(d):        # 8 independent sums share each k, v load
                            kc, vc = kj[c], vj[c]
                            a0 += r0[c] * kc
                            a1 += r1[c] * kc
                            a2 += r2[c] * kc
                            a3 += r3[c] * kc
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
                        end = _visible_end(i + offset, tk, causal, window)
                        start = _visible_start(i + offset, window)
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
                        kj, dkj, dvj = k[b, j, k0 + hk], dk[b, j, k0 + hk], dv[b, j, v0 + hk]
                        p0, p1, p2, p3 = p[0, jj], p[1, jj], p[2, jj], p[3, jj]
                        s0, s1, s2, s3 = ds[0, jj], ds[1, jj], ds[2, jj], ds[3, jj]
                        # one output row per loop: simple enough for LLVM's alias checks
                        for c in range(d):
                            dvj[c] += p0 * g0[c] + p1 * g1[c] + p2 * g2[c] + p3 * g3[c]
                        for c in range(d):
                            dkj[c] += s0 * r0[c] + s1 * r1[c] + s2 * r2[c] + s3 * r3[c]
                        for c in range(d):
                            dq0[c] += s0 * kj[c]
                        for c in range(d):
                            dq1[c] += s1 * kj[c]
                        for c in range(d):
                            dq2[c] += s2 * kj[c]
                        for c in range(d):
                            dq3[c] += s3 * kj[c]


def _token_major(x):
    """(B, H, T, D) -> a contiguous (B, T, H, D) copy: the kernels' layout."""
    return np.ascontiguousarray(x.transpose(0, 2, 1, 3))


def _forward(q, q0, k, k0, v, v0, n_h, n_hkv, causal, scale, window):
    b, tq, _, d = q.shape
    o = np.empty((b, tq, n_h, d), dtype=q.dtype)
    lse = np.empty((b, n_h, tq), dtype=q.dtype)
    scratch = np.empty((b * n_h, 2, _TILE), dtype=q.dtype)
    acc = np.empty((b * n_h, d), dtype=q.dtype)
    _attention_forward_loop(q, q0, k, k0, v, v0, n_h, n_hkv, causal, int(window),
                            q.dtype.type(scale), q.dtype.type(0), o, lse, scratch,
                            *exp_scratch(b * n_h, _TILE), acc)
    return o, lse


def _backward(do, o, q, q0, k, k0, v, v0, n_h, n_hkv, lse, causal, scale, window, dq, dk, dv):
    """do, o: (B, Tq, H, D) contiguous; dq, dk, dv zero-filled (they may be one array)."""
    delta = np.einsum("bthd,bthd->bht", do, o)                # rowsum(dO * O)
    tasks = q.shape[0] * n_hkv
    scratch = np.empty((tasks, 3, 4, _TILE), dtype=q.dtype)
    _attention_backward_loop(do, q, q0, k, k0, v, v0, n_h, n_hkv, np.ascontiguousarray(lse),
                             np.ascontiguousarray(delta), causal, int(window),
                             q.dtype.type(scale), q.dtype.type(0), dq, dk, dv, scratch,
                             *exp_scratch(tasks, _TILE))


@implements("attention_forward", device="cpu", supports=_supported)
def attention_forward_cpu(q, k, v, mask, causal, scale, window):
    o, lse = _forward(_token_major(q), 0, _token_major(k), 0, _token_major(v), 0, q.shape[1],
                      k.shape[1], causal, scale, window)
    return o.transpose(0, 2, 1, 3), lse


@implements("attention_backward", device="cpu",
            supports=lambda do, q, k, v, o, lse, mask, *a: _supported(q, k, v, mask))
def attention_backward_cpu(do, q, k, v, o, lse, mask, causal, scale, window):
    qt, kt, vt = _token_major(q), _token_major(k), _token_major(v)
    dq, dk, dv = np.zeros_like(qt), np.zeros_like(kt), np.zeros_like(vt)
    _backward(_token_major(do), _token_major(o), qt, 0, kt, 0, vt, 0, q.shape[1], k.shape[1],
              lse, causal, scale, window, dq, dk, dv)
    return dq.transpose(0, 2, 1, 3), dk.transpose(0, 2, 1, 3), dv.transpose(0, 2, 1, 3)


def _packed_supported(qkv, *rest, **kwargs):
    return floats(qkv)


@implements("packed_attention_forward", device="cpu", supports=_packed_supported)
def packed_attention_forward_cpu(qkv, n_head, n_kv_head, causal, scale, window):
    qkv = np.ascontiguousarray(qkv)
    return _forward(qkv, 0, qkv, n_head, qkv, n_head + n_kv_head, n_head, n_kv_head, causal,
                    scale, window)


@implements("packed_attention_backward", device="cpu", supports=_packed_supported)
def packed_attention_backward_cpu(do, qkv, o, lse, n_head, n_kv_head, causal, scale, window):
    qkv = np.ascontiguousarray(qkv)
    dqkv = np.zeros_like(qkv)
    _backward(np.ascontiguousarray(do), np.ascontiguousarray(o), qkv, 0, qkv, n_head, qkv,
              n_head + n_kv_head, n_head, n_kv_head, lse, causal, scale, window, dqkv, dqkv, dqkv)
    return dqkv
