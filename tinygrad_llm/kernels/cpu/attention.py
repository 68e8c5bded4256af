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
dS K are such axpy updates rather than dot products over a transposed copy of V and K: no
horizontal sum per output element, and no copy. The exponentials of a tile go through the
vectorised exp_shifted. The tasks are (batch, query head) pairs in forward and (batch, K/V
head) pairs in backward, where the G query heads that share a K/V head are handled by one task:
each task owns everything it writes. The loops are serial over a range of tasks (jit_tasks) and
run_tasks runs ranges of them on several threads: prange's parallel lowering tripled their
compile time, the first training step's largest cost on a fresh install (see _common.py).

Reading order: the visibility and row helpers, _add_key_pair4 (the 4-row x 2-key update both
loops share), the forward loop and the backward loop (each with its math in its docstring),
then the wrappers that allocate and dispatch.
"""
import math

import numpy as np
from numba import njit

from .. import implements
from ._common import FASTMATH, exp_shifted, floats, jit, jit_tasks, row_max, run_tasks

_TILE = 256   # keys per tile: wider tiles make fewer per-tile passes (masks, running maxima, the
#              rescale of acc); 256 was faster than 64 or 128 at the bench's large size


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
    """row[:] = value, as a loop: when these loops were prange loops, Numba dropped a slice
    assignment to a view that a function returned (`_row(...)[:] = 0` wrote nothing; numba
    0.68)."""
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


@jit_tasks
def _attention_forward_loop(lo, hi, q, q0, k, k0, v, v0, n_h, n_hkv, head_major, causal, window,
                            scale, zero, o, lse, scratch, accs, maxes, sums):
    """o_i = sum_j softmax(s_i)_j v_j, s_ij = scale q_i . k_j, over the keys j that query i
    sees, and lse_i = log sum_j e^(s_ij), for the tasks lo..hi-1 of the B H tasks, task
    b H + h taking batch b and query head h (reading K/V head h // (H / Hkv)). q: query head h
    in slot q0 + h; k, v: K/V head g in slots k0 + g, v0 + g (one packed qkv array may be all
    three); o: (B, H, Tq, D) when head_major, else (B, Tq, H, D); lse: (B, H, Tq).

    The keys go by in tiles J of _TILE, and each row keeps a running max m, sum l (`total`) and
    output acc (D,), rescaled when the max grows (online softmax):
        m' = max(m, max_J s_iJ)
        l' = l e^(m - m') + sum_J e^(s_iJ - m')
        acc' = acc e^(m - m') + sum_J e^(s_iJ - m') v_J
    and at the end o_i = acc / l, lse_i = m + log l (0 for a row that sees no key).

    Blocking: a task owns one (b, h) and takes its query rows in blocks of four (rows past Tq
    repeat the last one and are not written). The scores go 4 rows x 1 key (each k row loaded
    serves four dot products), acc += p v 4 rows x 2 keys (_add_key_pair4: each acc row is
    loaded and stored once per two keys). Per task: scratch (2, 4, _TILE) for the block's s and
    p, accs (4, D), maxes (4,) in the dtype and sums (4,) float64 (a float64 max would make
    exp_shifted's arithmetic float64)."""
    d = q.shape[3]
    tq, tk = _length(q, head_major), _length(k, head_major)
    group = n_h // n_hkv
    offset = tk - tq                                  # causal: query i sees keys j <= i + offset
    for task in range(lo, hi):
        b, h = task // n_h, task % n_h
        hk = h // group
        qh, kh, vh = q0 + h, k0 + hk, v0 + hk
        s, p, acc = scratch[task, 0], scratch[task, 1], accs[task]
        m, total = maxes[task], sums[task]
        for i0 in range(0, tq, 4):                    # a block of four query rows
            rows = min(4, tq - i0)
            last = i0 + rows - 1                      # rows past the end repeat the last one
            i1, i2, i3 = min(i0 + 1, last), min(i0 + 2, last), min(i0 + 3, last)
            q_0, q_1 = _row(q, b, i0, qh, head_major), _row(q, b, i1, qh, head_major)
            q_2, q_3 = _row(q, b, i2, qh, head_major), _row(q, b, i3, qh, head_major)
            acc[:] = zero
            m[:] = -np.inf
            total[:] = 0.0
            block_end = _visible_end(last + offset, tk, causal, window)
            block_start = _visible_start(i0 + offset, window)
            for j0 in range(block_start, max(block_end, block_start), _TILE):
                width = min(_TILE, block_end - j0)
                for jj in range(width):               # s[r, jj] = scale q_r . k_j, 4 rows x 1 key
                    kj = _row(k, b, j0 + jj, kh, head_major)
                    qk_0 = qk_1 = qk_2 = qk_3 = zero
                    for c in range(d):
                        kc = kj[c]
                        qk_0 += q_0[c] * kc
                        qk_1 += q_1[c] * kc
                        qk_2 += q_2[c] * kc
                        qk_3 += q_3[c] * kc
                    s[0, jj], s[1, jj], s[2, jj], s[3, jj] = (qk_0 * scale, qk_1 * scale,
                                                              qk_2 * scale, qk_3 * scale)
                for r in range(4):                    # m', l', acc e^(m - m'), p = e^(s - m')
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
                        acc[r, c] *= rescale
                    total[r] += exp_shifted(s[r], new_m, p[r], width)
                    m[r] = new_m
                acc_0, acc_1, acc_2, acc_3 = acc[0], acc[1], acc[2], acc[3]
                for jj in range(0, width, 2):         # acc += p v, 4 rows x 2 keys a pass
                    jb = min(jj + 1, width - 1)
                    _add_key_pair4(p, jj, jb, _row(v, b, j0 + jj, vh, head_major),
                                   _row(v, b, j0 + jb, vh, head_major), zero, acc_0, acc_1,
                                   acc_2, acc_3)
            for r in range(rows):
                oi = _row(o, b, i0 + r, h, head_major)
                if total[r] == 0.0:                   # no key visible: output 0, as the reference
                    _fill(oi, zero)
                    lse[b, h, i0 + r] = 0.0
                else:                                 # (a NaN score gives a NaN row, as there)
                    inv = 1.0 / total[r]
                    for c in range(d):
                        oi[c] = acc[r, c] * inv
                    lse[b, h, i0 + r] = m[r] + math.log(total[r])


@jit_tasks
def _attention_backward_loop(lo, hi, do, o, q, q0, k, k0, v, v0, n_h, n_hkv, head_major, lse,
                             causal, window, scale, zero, dq, dk, dv, scratch, delta):
    """Gradients of forward's o = softmax(s) v, s = scale q k^T, for the tasks lo..hi-1 of the
    B Hkv tasks, task b Hkv + g taking batch b and K/V head g with the G = H / Hkv query heads
    that read g, so that it owns dk_g and dv_g.
    Layouts as in forward; do, o: laid out as o; dq, dk, dv: as q, k, v, each row zeroed by the
    task that owns it; lse: (B, H, Tq), forward's.

    For a query row i and the keys j it sees, with P recomputed from lse (FlashAttention-2):
        P_ij = e^(s_ij - lse_i)
        dP_ij = do_i . v_j                          dP = dO V^T     (Tq, Tk)
        delta_i = do_i . o_i = sum_j P_ij dP_ij                     (Tq,)
        dS_ij = scale P_ij (dP_ij - delta_i)        softmax's backward, with s's scale
        dv_j += sum_i P_ij do_i                     dV = P^T dO     (Tk, D)
        dk_j += sum_i dS_ij q_i                     dK = dS^T Q     (Tk, D)
        dq_i += sum_j dS_ij k_j                     dQ = dS K       (Tq, D)
    dk and dv sum over the group's G heads.

    Blocking: query rows in blocks of four (rows past Tq get p = ds = 0), keys in tiles of
    _TILE taken two at a time, a and b (an odd tile's last key pairs with itself at weight 0).
    One pass over D computes a 4-row x 2-key block of s and dP: 16 dot products sharing the loads
    of q_r, do_r, k_a, k_b, v_a and v_b. The updates go 4 rows x 2 keys too: dv and dk rows a, b
    are loaded and stored once per block of four query rows, the four dq rows once per two keys
    (_add_key_pair4). Per task: scratch (3, 4, _TILE) for the block's s, p, and dP (then dS, in
    place); delta (4,)."""
    d = q.shape[3]
    tq, tk = _length(q, head_major), _length(k, head_major)
    group = n_h // n_hkv
    offset = tk - tq
    for task in range(lo, hi):
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
            for i0 in range(0, tq, 4):            # a block of four query rows
                rows = min(4, tq - i0)
                last = i0 + rows - 1
                i1, i2, i3 = min(i0 + 1, last), min(i0 + 2, last), min(i0 + 3, last)
                q_0, q_1 = _row(q, b, i0, qh, head_major), _row(q, b, i1, qh, head_major)
                q_2, q_3 = _row(q, b, i2, qh, head_major), _row(q, b, i3, qh, head_major)
                do_0, do_1 = _row(do, b, i0, h, head_major), _row(do, b, i1, h, head_major)
                do_2, do_3 = _row(do, b, i2, h, head_major), _row(do, b, i3, h, head_major)
                for r in range(rows):             # delta_i = do_i . o_i
                    o_r, g_r = _row(o, b, i0 + r, h, head_major), _row(do, b, i0 + r, h, head_major)
                    x = zero
                    for c in range(d):
                        x += g_r[c] * o_r[c]
                    dl[r] = x
                dq_0, dq_1 = _row(dq, b, i0, qh, head_major), _row(dq, b, i1, qh, head_major)
                dq_2, dq_3 = _row(dq, b, i2, qh, head_major), _row(dq, b, i3, qh, head_major)
                block_end = _visible_end(last + offset, tk, causal, window)
                block_start = _visible_start(i0 + offset, window)
                for j0 in range(block_start, max(block_end, block_start), _TILE):
                    width = min(_TILE, block_end - j0)
                    for jj in range(0, width, 2):  # s and dP, 4 rows x keys a, b
                        jb = min(jj + 1, width - 1)
                        ka = _row(k, b, j0 + jj, kh, head_major)
                        kb = _row(k, b, j0 + jb, kh, head_major)
                        va = _row(v, b, j0 + jj, vh, head_major)
                        vb = _row(v, b, j0 + jb, vh, head_major)
                        qka0 = qka1 = qka2 = qka3 = qkb0 = qkb1 = qkb2 = qkb3 = zero  # q_r . k
                        dpa0 = dpa1 = dpa2 = dpa3 = dpb0 = dpb1 = dpb2 = dpb3 = zero  # do_r . v
                        for c in range(d):
                            q0c, q1c, q2c, q3c = q_0[c], q_1[c], q_2[c], q_3[c]
                            do0c, do1c, do2c, do3c = do_0[c], do_1[c], do_2[c], do_3[c]
                            kac, kbc, vac, vbc = ka[c], kb[c], va[c], vb[c]
                            qka0 += q0c * kac
                            qka1 += q1c * kac
                            qka2 += q2c * kac
                            qka3 += q3c * kac
                            qkb0 += q0c * kbc
                            qkb1 += q1c * kbc
                            qkb2 += q2c * kbc
                            qkb3 += q3c * kbc
                            dpa0 += do0c * vac
                            dpa1 += do1c * vac
                            dpa2 += do2c * vac
                            dpa3 += do3c * vac
                            dpb0 += do0c * vbc
                            dpb1 += do1c * vbc
                            dpb2 += do2c * vbc
                            dpb3 += do3c * vbc
                        s[0, jj], s[1, jj], s[2, jj], s[3, jj] = (qka0 * scale, qka1 * scale,
                                                                  qka2 * scale, qka3 * scale)
                        s[0, jb], s[1, jb], s[2, jb], s[3, jb] = (qkb0 * scale, qkb1 * scale,
                                                                  qkb2 * scale, qkb3 * scale)
                        ds[0, jj], ds[1, jj], ds[2, jj], ds[3, jj] = dpa0, dpa1, dpa2, dpa3
                        ds[0, jb], ds[1, jb], ds[2, jb], ds[3, jb] = dpb0, dpb1, dpb2, dpb3
                    for r in range(4):
                        if r >= rows:             # padding rows: no contribution
                            p[r, :width] = zero
                            ds[r, :width] = zero
                            continue
                        i = i0 + r
                        _mask_outside(s[r], j0, width, _visible_start(i + offset, window),
                                      _visible_end(i + offset, tk, causal, window))
                        exp_shifted(s[r], lse[b, h, i], p[r], width)        # P, recomputed
                        row_delta = dl[r]
                        for jj in range(width):   # dS = scale P (dP - delta)
                            ds[r, jj] = p[r, jj] * (ds[r, jj] - row_delta) * scale
                    for jj in range(0, width, 2):  # dv, dk rows a, b: 4 rows x 2 keys
                        jb = min(jj + 1, width - 1)
                        dva, dvb = _row(dv, b, j0 + jj, vh, head_major), _row(dv, b, j0 + jb, vh,
                                                                              head_major)
                        dka, dkb = _row(dk, b, j0 + jj, kh, head_major), _row(dk, b, j0 + jb, kh,
                                                                              head_major)
                        pa0, pa1, pa2, pa3 = p[0, jj], p[1, jj], p[2, jj], p[3, jj]
                        dsa0, dsa1, dsa2, dsa3 = ds[0, jj], ds[1, jj], ds[2, jj], ds[3, jj]
                        if jb == jj:              # an odd tile's last key pairs with itself, at
                            pb0 = pb1 = pb2 = pb3 = dsb0 = dsb1 = dsb2 = dsb3 = zero  # weight 0
                        else:
                            pb0, pb1, pb2, pb3 = p[0, jb], p[1, jb], p[2, jb], p[3, jb]
                            dsb0, dsb1, dsb2, dsb3 = ds[0, jb], ds[1, jb], ds[2, jb], ds[3, jb]
                        for c in range(d):        # dv_j += sum_r P_rj do_r
                            do0c, do1c, do2c, do3c = do_0[c], do_1[c], do_2[c], do_3[c]
                            dva[c] += pa0 * do0c + pa1 * do1c + pa2 * do2c + pa3 * do3c
                            dvb[c] += pb0 * do0c + pb1 * do1c + pb2 * do2c + pb3 * do3c
                        for c in range(d):        # dk_j += sum_r dS_rj q_r
                            q0c, q1c, q2c, q3c = q_0[c], q_1[c], q_2[c], q_3[c]
                            dka[c] += dsa0 * q0c + dsa1 * q1c + dsa2 * q2c + dsa3 * q3c
                            dkb[c] += dsb0 * q0c + dsb1 * q1c + dsb2 * q2c + dsb3 * q3c
                        # dq_r += dS_ra k_a + dS_rb k_b
                        _add_key_pair4(ds, jj, jb, _row(k, b, j0 + jj, kh, head_major),
                                       _row(k, b, j0 + jb, kh, head_major), zero, dq_0, dq_1,
                                       dq_2, dq_3)


def _forward(q, q0, k, k0, v, v0, n_h, n_hkv, head_major, causal, scale, window, o=None):
    """o (laid out as q, with H slots; written whole, into `o` when given) and lse (B, H, Tq)."""
    b, d = q.shape[0], q.shape[3]
    tq = q.shape[2] if head_major else q.shape[1]
    tasks = b * n_h
    if o is None:
        o = np.empty((b, n_h, tq, d) if head_major else (b, tq, n_h, d), dtype=q.dtype)
    lse = np.empty((b, n_h, tq), dtype=q.dtype)
    run_tasks(_attention_forward_loop, tasks, q, q0, k, k0, v, v0, n_h, n_hkv, head_major, causal,
              int(window), q.dtype.type(scale), q.dtype.type(0), o, lse,
              np.empty((tasks, 2, 4, _TILE), q.dtype), np.empty((tasks, 4, d), q.dtype),
              np.empty((tasks, 4), q.dtype), np.empty((tasks, 4)),
              work=tasks * tq * _length(k, head_major) * d)
    return o, lse


def _backward(do, o, q, q0, k, k0, v, v0, n_h, n_hkv, head_major, lse, causal, scale, window,
              dq, dk, dv):
    """do, o laid out as q with H slots; dq, dk, dv written whole (they may be one array)."""
    tasks = q.shape[0] * n_hkv
    run_tasks(_attention_backward_loop, tasks, do, o, q, q0, k, k0, v, v0, n_h, n_hkv, head_major,
              np.ascontiguousarray(lse), causal, int(window), q.dtype.type(scale),
              q.dtype.type(0), dq, dk, dv, np.empty((tasks, 3, 4, _TILE), q.dtype),
              np.empty((tasks, 4), q.dtype), work=do.size * _length(k, head_major))


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
