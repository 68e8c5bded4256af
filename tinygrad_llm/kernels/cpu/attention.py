"""Causal (or unmasked) attention, forward and backward, tiled with an online softmax
(reference: ops/attention.py; Milakov & Gimelshein, 2018; Dao et al., 2022 and 2023).

Never builds the (B, H, Tq, Tk) score matrix: query rows go four at a time through the keys they
may see (the causal prefix, or the last `window` of it) in tiles of _TILE; a tile's scores live
in a small (4, _TILE) scratch block. Forward keeps each row's running max m, running sum l and
running output acc, rescaling them when the max grows, and saves lse = m + log l per row.
Backward recomputes each probability as e^(s - lse) (FlashAttention-2's trick) and accumulates
dq, dk, dv in the same sweep.

Layout: each of q, k, v, o (and do, dq, dk, dv) is a 4-D array of (D,) rows, either token-major
(B, T, S, D), with head h in slot q0 + h, so one packed qkv projection (B, T, H + 2 Hkv, D) is
read in place (PackedAttentionOp), or head-major (B, S, T, D), the (B, H, T, D) API's layout;
`_row` picks a row in either, so neither API copies its inputs.

Speed: every inner loop runs over contiguous (D,) rows and vectorises: either a dot product
(reassociated) with several sharing each loaded row (the scores q.k of four query rows; in
backward of two keys too, q.k and do.v making 16 sums per pass), or an axpy update that adds two
keys' terms per load and store of the rows it updates (forward's acc += P V; backward's dv, dk
and dq, sharing the loads of the query and key rows). Accumulators start from a zero of the
input's dtype so float32 stays float32 (a float64 accumulator halves the vector width). P V and
dS K once read a (D, Tk) transposed copy of V and K, as dot products over the tile; the paired
axpy updates measured faster (forward 15-20% at the main job's size, backward 4-5%: one
horizontal sum per output element went) and need no copy. The exponentials of a tile go
through the vectorised exp_shifted. The parallel axis is (batch, query head) in forward and
(batch, K/V head) in backward, where the G query heads that share a K/V head are handled by one
task: each task owns everything it writes.
"""
import math

import numpy as np
from numba import njit, prange

from .. import implements
from ._common import FASTMATH, exp_shifted, floats, jit, jit_parallel, row_max

_TILE = 256   # keys per tile: wider tiles make fewer per-tile passes (masks, running maxima, the
#              rescale of acc); 256 ran the bench's large size 5-10% faster than 64 or 128


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


@jit
def _row(x, b, t, slot, head_major):
    """The (D,) row of token t in slot `slot` of batch b: x is (B, S, T, D) when head_major,
    else (B, T, S, D)."""
    return x[b, slot, t] if head_major else x[b, t, slot]


@jit
def _fill(row, value):
    """row[:] = value, as a loop: inside a prange body Numba drops a slice assignment to a view
    that a function returned (`_row(...)[:] = 0` wrote nothing; seen with numba 0.68)."""
    for c in range(row.shape[0]):
        row[c] = value


@jit
def _length(x, head_major):
    """The number of tokens T of a head-major or token-major array."""
    return x.shape[2] if head_major else x.shape[1]


@njit(cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def _add_key_pair4(w, ja, jb, ya, yb, zero, a0, a1, a2, a3):
    """a_r[c] += w[r, ja] ya[c] + w[r, jb] yb[c] for the four rows r of w (4, tile): two keys'
    terms of P V (forward) or dS K (backward), so each a_r is loaded and stored once per two
    keys. jb == ja (an odd tile's last key) adds that key once. Inlined: a call per key pair
    costs as much as its 4 D multiply-adds."""
    wa0, wa1, wa2, wa3 = w[0, ja], w[1, ja], w[2, ja], w[3, ja]
    if jb == ja:
        wb0 = wb1 = wb2 = wb3 = zero
    else:
        wb0, wb1, wb2, wb3 = w[0, jb], w[1, jb], w[2, jb], w[3, jb]
    for c in range(ya.shape[0]):
        yac, ybc = ya[c], yb[c]
        a0[c] += wa0 * yac + wb0 * ybc
        a1[c] += wa1 * yac + wb1 * ybc
        a2[c] += wa2 * yac + wb2 * ybc
        a3[c] += wa3 * yac + wb3 * ybc


@jit
def _mask_outside(s_row, j0, width, start, end):
    """s_row[jj] = -inf where key j0 + jj is outside the row's visible range [start, end)."""
    for jj in range(min(width, max(start - j0, 0))):
        s_row[jj] = -np.inf
    for jj in range(max(end - j0, 0), width):
        s_row[jj] = -np.inf


@jit_parallel
def _attention_forward_loop(q, q0, k, k0, v, v0, n_h, n_hkv, head_major, causal, window, scale,
                            zero, o, lse, scratch, acc, maxes, sums):
    # q: query head h in slot q0 + h; k, v: K/V head g in slots k0 + g, v0 + g (one packed qkv
    # array may be all three); o: (B, H, Tq, D) when head_major, else (B, Tq, H, D); lse: (B, H,
    # Tq). Per task: scratch (2, 4, _TILE) for s and p, acc (4, D), maxes (4,) in the dtype and
    # sums (4,) float64: each row's running max and sum (a float64 max would make exp_shifted's
    # arithmetic float64)
    n_b, d = q.shape[0], q.shape[3]
    tq, tk = _length(q, head_major), _length(k, head_major)
    group = n_h // n_hkv
    offset = tk - tq                                  # causal: query i sees keys j <= i + offset
    for task in prange(n_b * n_h):
        b, h = task // n_h, task % n_h
        hk = h // group
        qh, kh, vh = q0 + h, k0 + hk, v0 + hk
        s, p, a = scratch[task, 0], scratch[task, 1], acc[task]
        m, total = maxes[task], sums[task]
        for i0 in range(0, tq, 4):                    # four query rows at a time
            rows = min(4, tq - i0)
            last = i0 + rows - 1                      # rows past the end repeat the last one
            i1, i2, i3 = min(i0 + 1, last), min(i0 + 2, last), min(i0 + 3, last)
            r0, r1 = _row(q, b, i0, qh, head_major), _row(q, b, i1, qh, head_major)
            r2, r3 = _row(q, b, i2, qh, head_major), _row(q, b, i3, qh, head_major)
            a[:] = zero
            m[:] = -np.inf
            total[:] = 0.0
            block_end = _visible_end(last + offset, tk, causal, window)
            block_start = _visible_start(i0 + offset, window)
            for j0 in range(block_start, max(block_end, block_start), _TILE):
                width = min(_TILE, block_end - j0)
                for jj in range(width):               # s = q_r . k_j * scale, four rows
                    kj = _row(k, b, j0 + jj, kh, head_major)
                    x0 = x1 = x2 = x3 = zero
                    for c in range(d):
                        kc = kj[c]
                        x0 += r0[c] * kc
                        x1 += r1[c] * kc
                        x2 += r2[c] * kc
                        x3 += r3[c] * kc
                    s[0, jj], s[1, jj], s[2, jj], s[3, jj] = (x0 * scale, x1 * scale, x2 * scale,
                                                              x3 * scale)
                for r in range(4):                    # online softmax, row by row
                    i = min(i0 + r, last)
                    _mask_outside(s[r], j0, width, _visible_start(i + offset, window),
                                  _visible_end(i + offset, tk, causal, window))
                    new_m = max(m[r], row_max(s[r], width))
                    if new_m == -np.inf:              # nothing visible yet: p = 0
                        p[r, :width] = zero
                        continue
                    rescale = math.exp(m[r] - new_m)  # 0 on the row's first tile (m = -inf)
                    total[r] *= rescale
                    for c in range(d):
                        a[r, c] *= rescale
                    total[r] += exp_shifted(s[r], new_m, p[r], width)
                    m[r] = new_m
                a0, a1, a2, a3 = a[0], a[1], a[2], a[3]
                for jj in range(0, width, 2):         # acc += P V, two keys a pass
                    jb = min(jj + 1, width - 1)
                    _add_key_pair4(p, jj, jb, _row(v, b, j0 + jj, vh, head_major),
                                   _row(v, b, j0 + jb, vh, head_major), zero, a0, a1, a2, a3)
            for r in range(rows):
                oi = _row(o, b, i0 + r, h, head_major)
                if total[r] == 0.0:                   # no key visible: output 0, as the reference
                    _fill(oi, zero)
                    lse[b, h, i0 + r] = 0.0
                else:                                 # (a NaN score gives a NaN row, as there)
                    inv = 1.0 / total[r]
                    for c in range(d):
                        oi[c] = a[r, c] * inv
                    lse[b, h, i0 + r] = m[r] + math.log(total[r])


@jit_parallel
def _attention_backward_loop(do, o, q, q0, k, k0, v, v0, n_h, n_hkv, head_major, lse, causal,
                             window, scale, zero, dq, dk, dv, scratch, delta):
    # layouts as in forward; do, o: (B, H, Tq, D) or (B, Tq, H, D); dq, dk, dv: laid out as
    # q, k, v, each row zeroed by the task that owns it; lse: (B, H, Tq).
    # Per task: scratch (3, 4, _TILE) for s, p and ds; delta (4,)
    # Each dk_j, dv_j row is loaded and stored once per block of four query rows, and the four
    # dq rows once per two keys; rows past the end of a block get p = ds = 0.
    n_b, d = q.shape[0], q.shape[3]
    tq, tk = _length(q, head_major), _length(k, head_major)
    group = n_h // n_hkv
    offset = tk - tq
    for task in prange(n_b * n_hkv):
        b, hk = task // n_hkv, task % n_hkv
        kh, vh = k0 + hk, v0 + hk
        s, p, ds = scratch[task, 0], scratch[task, 1], scratch[task, 2]      # (4, _TILE) each
        dl = delta[task]
        for j in range(tk):                   # the task zeroes the rows it accumulates into
            _fill(_row(dk, b, j, kh, head_major), zero)
            _fill(_row(dv, b, j, vh, head_major), zero)
        for h in range(hk * group, (hk + 1) * group):
            for i in range(tq):
                _fill(_row(dq, b, i, q0 + h, head_major), zero)
        for h in range(hk * group, (hk + 1) * group):
            qh = q0 + h
            for i0 in range(0, tq, 4):
                rows = min(4, tq - i0)
                last = i0 + rows - 1
                i1, i2, i3 = min(i0 + 1, last), min(i0 + 2, last), min(i0 + 3, last)
                r0, r1 = _row(q, b, i0, qh, head_major), _row(q, b, i1, qh, head_major)
                r2, r3 = _row(q, b, i2, qh, head_major), _row(q, b, i3, qh, head_major)
                g0, g1 = _row(do, b, i0, h, head_major), _row(do, b, i1, h, head_major)
                g2, g3 = _row(do, b, i2, h, head_major), _row(do, b, i3, h, head_major)
                for r in range(rows):             # delta = rowsum(do * o)
                    o_r, g_r = _row(o, b, i0 + r, h, head_major), _row(do, b, i0 + r, h, head_major)
                    x = zero
                    for c in range(d):
                        x += g_r[c] * o_r[c]
                    dl[r] = x
                dq0, dq1 = _row(dq, b, i0, qh, head_major), _row(dq, b, i1, qh, head_major)
                dq2, dq3 = _row(dq, b, i2, qh, head_major), _row(dq, b, i3, qh, head_major)
                block_end = _visible_end(last + offset, tk, causal, window)
                block_start = _visible_start(i0 + offset, window)
                for j0 in range(block_start, max(block_end, block_start), _TILE):
                    width = min(_TILE, block_end - j0)
                    for jj in range(0, width, 2):  # two keys at a time: 16 sums share the
                        jb = min(jj + 1, width - 1)    # row loads (an odd tile's last key pairs
                        ka = _row(k, b, j0 + jj, kh, head_major)                # with itself)
                        kb = _row(k, b, j0 + jb, kh, head_major)
                        va = _row(v, b, j0 + jj, vh, head_major)
                        vb = _row(v, b, j0 + jb, vh, head_major)
                        a0 = a1 = a2 = a3 = e0 = e1 = e2 = e3 = zero         # q_r . k_a, k_b
                        b0 = b1 = b2 = b3 = f0 = f1 = f2 = f3 = zero         # do_r . v_a, v_b
                        for c in range(d):
                            q0c, q1c, q2c, q3c = r0[c], r1[c], r2[c], r3[c]
                            g0c, g1c, g2c, g3c = g0[c], g1[c], g2[c], g3[c]
                            kac, kbc, vac, vbc = ka[c], kb[c], va[c], vb[c]
                            a0 += q0c * kac
                            a1 += q1c * kac
                            a2 += q2c * kac
                            a3 += q3c * kac
                            e0 += q0c * kbc
                            e1 += q1c * kbc
                            e2 += q2c * kbc
                            e3 += q3c * kbc
                            b0 += g0c * vac
                            b1 += g1c * vac
                            b2 += g2c * vac
                            b3 += g3c * vac
                            f0 += g0c * vbc
                            f1 += g1c * vbc
                            f2 += g2c * vbc
                            f3 += g3c * vbc
                        s[0, jj], s[1, jj], s[2, jj], s[3, jj] = (a0 * scale, a1 * scale,
                                                                  a2 * scale, a3 * scale)
                        s[0, jb], s[1, jb], s[2, jb], s[3, jb] = (e0 * scale, e1 * scale,
                                                                  e2 * scale, e3 * scale)
                        ds[0, jj], ds[1, jj], ds[2, jj], ds[3, jj] = b0, b1, b2, b3
                        ds[0, jb], ds[1, jb], ds[2, jb], ds[3, jb] = f0, f1, f2, f3
                    for r in range(4):
                        if r >= rows:             # padding rows: no contribution
                            p[r, :width] = zero
                            ds[r, :width] = zero
                            continue
                        i = i0 + r
                        _mask_outside(s[r], j0, width, _visible_start(i + offset, window),
                                      _visible_end(i + offset, tk, causal, window))
                        # P, recomputed
                        exp_shifted(s[r], lse[b, h, i], p[r], width)
                        row_delta = dl[r]
                        for jj in range(width):   # dS = P * (dP - delta) * scale
                            ds[r, jj] = p[r, jj] * (ds[r, jj] - row_delta) * scale
                    for jj in range(0, width, 2):  # dv_j += P^T do, dk_j += dS^T q for keys a
                        jb = min(jj + 1, width - 1)    # and b (each do_r, q_r load serves both),
                        dva, dvb = _row(dv, b, j0 + jj, vh, head_major), _row(dv, b, j0 + jb, vh,
                                                                              head_major)
                        dka, dkb = _row(dk, b, j0 + jj, kh, head_major), _row(dk, b, j0 + jb, kh,
                                                                              head_major)
                        pa0, pa1, pa2, pa3 = p[0, jj], p[1, jj], p[2, jj], p[3, jj]
                        sa0, sa1, sa2, sa3 = ds[0, jj], ds[1, jj], ds[2, jj], ds[3, jj]
                        if jb == jj:              # an odd tile's last key pairs with itself, at
                            pb0 = pb1 = pb2 = pb3 = sb0 = sb1 = sb2 = sb3 = zero    # weight 0
                        else:
                            pb0, pb1, pb2, pb3 = p[0, jb], p[1, jb], p[2, jb], p[3, jb]
                            sb0, sb1, sb2, sb3 = ds[0, jb], ds[1, jb], ds[2, jb], ds[3, jb]
                        for c in range(d):
                            x0, x1, x2, x3 = g0[c], g1[c], g2[c], g3[c]
                            dva[c] += pa0 * x0 + pa1 * x1 + pa2 * x2 + pa3 * x3
                            dvb[c] += pb0 * x0 + pb1 * x1 + pb2 * x2 + pb3 * x3
                        for c in range(d):
                            x0, x1, x2, x3 = r0[c], r1[c], r2[c], r3[c]
                            dka[c] += sa0 * x0 + sa1 * x1 + sa2 * x2 + sa3 * x3
                            dkb[c] += sb0 * x0 + sb1 * x1 + sb2 * x2 + sb3 * x3
                        # and dq_r += dS K
                        _add_key_pair4(ds, jj, jb, _row(k, b, j0 + jj, kh, head_major),
                                       _row(k, b, j0 + jb, kh, head_major), zero, dq0, dq1, dq2,
                                       dq3)


def _forward(q, q0, k, k0, v, v0, n_h, n_hkv, head_major, causal, scale, window, o=None):
    """o (laid out as q, with H slots; written whole, into `o` when given) and lse (B, H, Tq)."""
    b, d = q.shape[0], q.shape[3]
    tq = q.shape[2] if head_major else q.shape[1]
    tasks = b * n_h
    if o is None:
        o = np.empty((b, n_h, tq, d) if head_major else (b, tq, n_h, d), dtype=q.dtype)
    lse = np.empty((b, n_h, tq), dtype=q.dtype)
    _attention_forward_loop(q, q0, k, k0, v, v0, n_h, n_hkv, head_major, causal, int(window),
                            q.dtype.type(scale), q.dtype.type(0), o, lse,
                            np.empty((tasks, 2, 4, _TILE), q.dtype),
                            np.empty((tasks, 4, d), q.dtype), np.empty((tasks, 4), q.dtype),
                            np.empty((tasks, 4)))
    return o, lse


def _backward(do, o, q, q0, k, k0, v, v0, n_h, n_hkv, head_major, lse, causal, scale, window,
              dq, dk, dv):
    """do, o laid out as q with H slots; dq, dk, dv written whole (they may be one array)."""
    tasks = q.shape[0] * n_hkv
    _attention_backward_loop(do, o, q, q0, k, k0, v, v0, n_h, n_hkv, head_major,
                             np.ascontiguousarray(lse), causal, int(window), q.dtype.type(scale),
                             q.dtype.type(0), dq, dk, dv, np.empty((tasks, 3, 4, _TILE), q.dtype),
                             np.empty((tasks, 4), q.dtype))


@implements("attention_forward", device="cpu", supports=_supported)
def attention_forward_cpu(q, k, v, mask, causal, scale, window):
    q, k, v = (np.ascontiguousarray(x) for x in (q, k, v))
    return _forward(q, 0, k, 0, v, 0, q.shape[1], k.shape[1], True, causal, scale, window)


@implements("attention_backward", device="cpu",
            supports=lambda do, q, k, v, o, lse, mask, *a: _supported(q, k, v, mask))
def attention_backward_cpu(do, q, k, v, o, lse, mask, causal, scale, window):
    do, q, k, v, o = (np.ascontiguousarray(x) for x in (do, q, k, v, o))
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    _backward(do, o, q, 0, k, 0, v, 0, q.shape[1], k.shape[1], True, lse, causal, scale, window,
              dq, dk, dv)
    return dq, dk, dv


def _packed_supported(qkv, *rest, **kwargs):
    return floats(qkv)


@implements("packed_attention_forward", device="cpu", supports=_packed_supported)
def packed_attention_forward_cpu(qkv, n_head, n_kv_head, causal, scale, window):
    qkv = np.ascontiguousarray(qkv)
    return _forward(qkv, 0, qkv, n_head, qkv, n_head + n_kv_head, n_head, n_kv_head, False,
                    causal, scale, window)


@implements("packed_attention_backward", device="cpu", supports=_packed_supported)
def packed_attention_backward_cpu(do, qkv, o, lse, n_head, n_kv_head, causal, scale, window):
    qkv = np.ascontiguousarray(qkv)
    dqkv = np.empty_like(qkv)
    _backward(np.ascontiguousarray(do), np.ascontiguousarray(o), qkv, 0, qkv, n_head, qkv,
              n_head + n_kv_head, n_head, n_kv_head, False, lse, causal, scale, window, dqkv,
              dqkv, dqkv)
    return dqkv
