"""Attention on the GPU, forward and backward, tiled with an online softmax: the (Tq, Tk) score
matrix never exists in global memory (reference: ops/attention.py, where the math is written;
Milakov & Gimelshein, 2018; Dao et al., 2022 and 2023).

Reading order: the block/tile sizes, the visibility rules (which keys a query sees, and its
inverse), the forward kernel, the two backward kernels, the wrappers for both layouts.

Layout: every array reaches a kernel as a (B, S, T, D) view, S being a slot axis: head-major
arrays are (B, H, T, D) already; the packed, token-major qkv (B, T, H + 2 Hkv, D) is handed over
as its transpose, with the queries in slots [0, H), the keys at k0 = H, the values at v0 = H + Hkv.
Views are read through their strides, so neither API copies its inputs, and the packed backward
writes dq, dk and dv straight into one dqkv array. Read-only inputs may share memory (q = k = v
is a legal call, and the packed q, k, v are one array); an output never shares memory with another
argument of the same launch (see _common.py).

Forward: one block per (batch b, query head h, tile of ROWS queries), one thread per query row i.
Keys and values stream through shared memory TILE rows at a time; each thread keeps, for its row,
the running max m, the running sum l and the running output acc (D,), in registers/local memory:

    for each key tile J:   s_j = q_i . k_j * scale                (j in J, visible from i)
                           m' = max(m, max_j s_j)
                           l  = l e^(m - m') + sum_j e^(s_j - m')
                           acc = acc e^(m - m') + sum_j e^(s_j - m') v_j
                           m  = m'
    o_i = acc / l,   lse_i = m + log l

so o_i = sum_j e^(s_j - lse_i) v_j = (P v)_i with P = softmax(S), and lse (B, H, Tq) is saved.
A row that sees no key keeps l = 0 and gets o = 0, lse = 0, as the reference does; a NaN score
makes l NaN, hence a NaN output row, and lse 0 (the reference's max is then not finite, so it
takes 0 and log 1).

Backward: P is recomputed from lse, P_ij = e^(s_ij - lse_i) (FlashAttention-2's trick), in two
passes, each owning what it writes, so there are no atomics and the sums run in a fixed order
(deterministic gradients):

    do, o, dq: (B, H, Tq, D)   dk, dv: (B, Hkv, Tk, D)   delta: (B, H, Tq)   G = H / Hkv
    delta_i = sum_c do_ic o_ic                      (= sum_j P_ij dP_ij)
    dP_ij = do_i . v_j        dS_ij = P_ij (dP_ij - delta_i) * scale
    dq_i = sum_j dS_ij k_j                          pass 1: block per (b, h, query tile), keys
                                                    streamed as in forward; it also writes delta
    dv_j = sum_(h in group) sum_i P_ij do_i         pass 2: block per (b, K/V head, key tile),
    dk_j = sum_(h in group) sum_i dS_ij q_i         one thread per key row; the G query heads of
                                                    the group and their queries (only those that
                                                    can see the tile) stream through shared memory

    (S, P, dP, dS: (Tq, Tk) per (b, h), only ever a TILE-wide slice per thread, never stored)

Pass 2 recomputes the scores pass 1 computed (twice the score FLOPs of a fused backward) in
exchange for no atomic adds on dk, dv: fused, every (query tile, query head) block would add into
each dk, dv row it sees, G x Tq / ROWS contended updates per element, in an order that changes from
run to run. Launches: forward 1, backward 2 (the dk/dv pass reads the delta pass 1 wrote; both run
on the same stream, so no sync is needed between them).

Only pairs (i, j) inside the causal / window band are visited. Where the reference multiplies a
masked probability (exactly 0) by a NaN (a NaN row's delta), it gets NaN in the gradients of keys
that row never saw; the kernels, like the CPU ones, leave those finite.

Supported: no explicit mask (those go to the reference), float32 or float64 (accumulators in the
input's dtype), head_dim <= MAX_HEAD_DIM (the per-thread rows and the shared tiles are sized by it).
"""
import math

from numba import cuda

from .. import implements
from ._common import THREADS, cupy, floats, launch

MAX_HEAD_DIM = 128          # per-thread rows (local memory) and shared tiles are this wide
ROWS = min(THREADS, 64)     # threads per block: the query (or key) rows one block owns
TILE = min(THREADS, 16)     # rows of the streamed operand staged in shared memory per step:
#                             two (TILE, MAX_HEAD_DIM) float64 tiles are 32 KiB, under the 48 KiB
#                             of static shared memory a block may have


def _supported(q, k, v, mask, *rest, **kwargs):
    return mask is None and floats(q, k, v) and q.shape[-1] <= MAX_HEAD_DIM


def _backward_supported(do, q, k, v, o, lse, mask, *rest, **kwargs):
    return _supported(q, k, v, mask) and floats(q, do, o, lse)


def _packed_supported(qkv, *rest, **kwargs):
    return floats(qkv) and qkv.shape[-1] <= MAX_HEAD_DIM


# ---- which keys a query sees --------------------------------------------------------------------
# Causal masking is aligned to the end: query i sits at position i + Tk - Tq among the keys.
@cuda.jit(device=True)
def _key_range(position, tk, causal, window):
    """[start, end): the keys a query at `position` sees (causal: up to itself; a window of W:
    the last W, or W - 1 on each side when not causal)."""
    start = 0
    end = tk
    if window > 0:
        start = max(0, position - window + 1)
        if not causal:
            end = min(tk, position + window)
    if causal:
        end = min(tk, position + 1)
    return start, end


@cuda.jit(device=True)
def _query_range(j_first, j_last, tq, tk, causal, window):
    """[first, end): the queries that see at least one key of [j_first, j_last] (the inverse of
    _key_range)."""
    offset = tk - tq
    first = 0
    end = tq
    if causal:
        first = max(first, j_first - offset)
    if window > 0:
        end = min(end, j_last + window - offset)
        if not causal:
            first = max(first, j_first - window + 1 - offset)
    return first, end


@cuda.jit(device=True)
def _block_tile(n):
    """(tile, outer): the block's tile of ROWS rows among the ceil(n / ROWS) that cover n rows,
    and the index of the (batch, head) those tiles belong to; tiles vary fastest in the grid."""
    n_tiles = (n + ROWS - 1) // ROWS
    return cuda.blockIdx.x % n_tiles, cuda.blockIdx.x // n_tiles


@cuda.jit(device=True)
def _stage(tile_a, tile_b, a, b_, n, slot_a, slot_b, first, width, d):
    """tile_a[r, :d] = a[n, slot_a, first + r], tile_b likewise from b_, for r < width; the
    block's threads share the copy (consecutive threads read consecutive elements of a row)."""
    for e in range(cuda.threadIdx.x, width * d, ROWS):
        r = e // d
        c = e - r * d
        tile_a[r, c] = a[n, slot_a, first + r, c]
        tile_b[r, c] = b_[n, slot_b, first + r, c]


# ---- forward ------------------------------------------------------------------------------------
@cuda.jit(cache=True)
def _attention_forward_kernel(q, q0, k, k0, v, v0, n_h, n_hkv, causal, window, scale, zero,
                              neg_inf, o, lse):
    # q: (B, S, Tq, D), query head h in slot q0 + h; k, v: (B, S, Tk, D), K/V head g in slots
    # k0 + g, v0 + g; o: (B, H, Tq, D); lse: (B, H, Tq). Block: (b, h, query tile); thread: row i
    tq, tk, d = q.shape[2], k.shape[2], q.shape[3]
    tile, bh = _block_tile(tq)
    b, h = bh // n_h, bh % n_h
    hk = h // (n_h // n_hkv)
    offset = tk - tq
    i = tile * ROWS + cuda.threadIdx.x
    valid = i < tq
    ks = cuda.shared.array((TILE, MAX_HEAD_DIM), q.dtype)
    vs = cuda.shared.array((TILE, MAX_HEAD_DIM), q.dtype)
    qr = cuda.local.array(MAX_HEAD_DIM, q.dtype)
    acc = cuda.local.array(MAX_HEAD_DIM, q.dtype)
    s = cuda.local.array(TILE, q.dtype)
    m = neg_inf
    total = zero
    start, end = _key_range(i + offset, tk, causal, window)
    if valid:
        for c in range(d):
            qr[c] = q[b, q0 + h, i, c]
            acc[c] = zero
    # the keys any row of the block sees (block-uniform, so syncthreads stays legal)
    block_start = _key_range(tile * ROWS + offset, tk, causal, window)[0]
    block_end = _key_range(min(tq, tile * ROWS + ROWS) - 1 + offset, tk, causal, window)[1]
    for j0 in range(block_start, block_end, TILE):
        width = min(TILE, block_end - j0)
        _stage(ks, vs, k, v, b, k0 + hk, v0 + hk, j0, width, d)
        cuda.syncthreads()
        lo = max(start - j0, 0)
        hi = min(end - j0, width)
        if valid and hi > lo:
            tile_max = neg_inf
            for jj in range(lo, hi):
                x = zero
                for c in range(d):
                    x += qr[c] * ks[jj, c]
                x *= scale
                s[jj] = x
                if x > tile_max:                  # a NaN score never becomes the max
                    tile_max = x
            new_m = tile_max if tile_max > m else m
            shift = new_m if new_m > neg_inf else zero    # all -inf so far: e^(s - 0) = 0
            rescale = math.exp(m - shift)         # 0 on the row's first visible tile
            if rescale != 1:
                total *= rescale
                for c in range(d):
                    acc[c] *= rescale
            for jj in range(lo, hi):
                p = math.exp(s[jj] - shift)
                total += p
                for c in range(d):
                    acc[c] += p * vs[jj, c]
            m = new_m
        cuda.syncthreads()                        # the next tile overwrites ks, vs
    if valid:
        for c in range(d):                        # no key seen: 0; a NaN total: a NaN row
            o[b, h, i, c] = zero if total == zero else acc[c] / total
        lse[b, h, i] = m + math.log(total) if total > zero else zero


# ---- backward -----------------------------------------------------------------------------------
@cuda.jit(cache=True)
def _attention_dq_kernel(do, o, q, q0, k, k0, v, v0, lse, n_h, n_hkv, causal, window, scale,
                         zero, dq, delta):
    # layouts as in forward; do, o: (B, H, Tq, D); dq: (B, S, Tq, D), head h in slot h;
    # delta: (B, H, Tq), written here for the dk/dv pass. Block: (b, h, query tile); thread: row i
    tq, tk, d = q.shape[2], k.shape[2], q.shape[3]
    tile, bh = _block_tile(tq)
    b, h = bh // n_h, bh % n_h
    hk = h // (n_h // n_hkv)
    offset = tk - tq
    i = tile * ROWS + cuda.threadIdx.x
    valid = i < tq
    ks = cuda.shared.array((TILE, MAX_HEAD_DIM), q.dtype)
    vs = cuda.shared.array((TILE, MAX_HEAD_DIM), q.dtype)
    qr = cuda.local.array(MAX_HEAD_DIM, q.dtype)
    gr = cuda.local.array(MAX_HEAD_DIM, q.dtype)
    dqr = cuda.local.array(MAX_HEAD_DIM, q.dtype)
    row_lse = zero
    row_delta = zero
    start, end = _key_range(i + offset, tk, causal, window)
    if valid:
        row_lse = lse[b, h, i]
        for c in range(d):
            qr[c] = q[b, q0 + h, i, c]
            gr[c] = do[b, h, i, c]
            dqr[c] = zero
            row_delta += gr[c] * o[b, h, i, c]
        delta[b, h, i] = row_delta
    block_start = _key_range(tile * ROWS + offset, tk, causal, window)[0]
    block_end = _key_range(min(tq, tile * ROWS + ROWS) - 1 + offset, tk, causal, window)[1]
    for j0 in range(block_start, block_end, TILE):
        width = min(TILE, block_end - j0)
        _stage(ks, vs, k, v, b, k0 + hk, v0 + hk, j0, width, d)
        cuda.syncthreads()
        if valid:
            for jj in range(max(start - j0, 0), min(end - j0, width)):
                x = zero
                dp = zero
                for c in range(d):
                    x += qr[c] * ks[jj, c]
                    dp += gr[c] * vs[jj, c]
                p = math.exp(x * scale - row_lse)
                ds = p * (dp - row_delta) * scale
                for c in range(d):
                    dqr[c] += ds * ks[jj, c]
        cuda.syncthreads()
    if valid:
        for c in range(d):
            dq[b, h, i, c] = dqr[c]


@cuda.jit(cache=True)
def _attention_dkv_kernel(do, q, q0, k, k0, v, v0, lse, delta, n_h, n_hkv, causal, window, scale,
                          zero, dkv):
    # layouts as in forward; do: (B, H, Tq, D); lse, delta: (B, H, Tq); dkv: (2, B, Hkv, Tk, D),
    # dk in dkv[0] and dv in dkv[1]. Block: (b, K/V head hk, key tile); thread: key row j
    tq, tk, d = q.shape[2], k.shape[2], q.shape[3]
    tile, bg = _block_tile(tk)
    b, hk = bg // n_hkv, bg % n_hkv
    group = n_h // n_hkv
    offset = tk - tq
    j = tile * ROWS + cuda.threadIdx.x
    valid = j < tk
    qs = cuda.shared.array((TILE, MAX_HEAD_DIM), q.dtype)
    gs = cuda.shared.array((TILE, MAX_HEAD_DIM), q.dtype)
    lse_s = cuda.shared.array(TILE, q.dtype)
    delta_s = cuda.shared.array(TILE, q.dtype)
    kr = cuda.local.array(MAX_HEAD_DIM, q.dtype)
    vr = cuda.local.array(MAX_HEAD_DIM, q.dtype)
    dkr = cuda.local.array(MAX_HEAD_DIM, q.dtype)
    dvr = cuda.local.array(MAX_HEAD_DIM, q.dtype)
    if valid:
        for c in range(d):
            kr[c] = k[b, k0 + hk, j, c]
            vr[c] = v[b, v0 + hk, j, c]
            dkr[c] = zero
            dvr[c] = zero
    i_first, i_end = _query_range(tile * ROWS, min(tk, tile * ROWS + ROWS) - 1, tq, tk, causal,
                                  window)
    for h in range(hk * group, hk * group + group):      # the query heads sharing this K/V head
        for i0 in range(i_first, i_end, TILE):
            width = min(TILE, i_end - i0)
            _stage(qs, gs, q, do, b, q0 + h, h, i0, width, d)
            for r in range(cuda.threadIdx.x, width, ROWS):
                lse_s[r] = lse[b, h, i0 + r]
                delta_s[r] = delta[b, h, i0 + r]
            cuda.syncthreads()
            if valid:
                for r in range(width):
                    start, end = _key_range(i0 + r + offset, tk, causal, window)
                    if start <= j and j < end:
                        x = zero
                        dp = zero
                        for c in range(d):
                            x += qs[r, c] * kr[c]
                            dp += gs[r, c] * vr[c]
                        p = math.exp(x * scale - lse_s[r])
                        ds = p * (dp - delta_s[r]) * scale
                        for c in range(d):
                            dvr[c] += p * gs[r, c]
                            dkr[c] += ds * qs[r, c]
            cuda.syncthreads()
    if valid:
        for c in range(d):
            dkv[0, b, hk, j, c] = dkr[c]
            dkv[1, b, hk, j, c] = dvr[c]


# ---- launches -----------------------------------------------------------------------------------
def _scalars(q, scale):
    t = q.dtype.type
    return t(scale), t(0), t(-math.inf)


def _forward(q, q0, k, k0, v, v0, n_h, n_hkv, causal, scale, window, o, lse):
    """q, k, v, o: (B, S, T, D) views; fills o (B, H, Tq, D) and lse (B, H, Tq)."""
    b, tq = q.shape[0], q.shape[2]
    scale, zero, neg_inf = _scalars(q, scale)
    if b * n_h * tq:
        launch(_attention_forward_kernel, b * n_h * -(-tq // ROWS), ROWS, q, q0, k, k0, v, v0,
               n_h, n_hkv, bool(causal), int(window), scale, zero, neg_inf, o, lse)


def _backward(do, o, q, q0, k, k0, v, v0, lse, n_h, n_hkv, causal, scale, window, dq, dkv):
    """Fills dq (B, S, Tq, D), head h in slot h, and dkv (2, B, Hkv, Tk, D): two launches."""
    cp = cupy()
    b, tq, tk = q.shape[0], q.shape[2], k.shape[2]
    scale, zero, _ = _scalars(q, scale)
    delta = cp.empty((b, n_h, tq), dtype=q.dtype)
    if b * n_h * tq:
        launch(_attention_dq_kernel, b * n_h * -(-tq // ROWS), ROWS, do, o, q, q0, k, k0, v, v0,
               lse, n_h, n_hkv, bool(causal), int(window), scale, zero, dq, delta)
    if b * n_hkv * tk:
        launch(_attention_dkv_kernel, b * n_hkv * -(-tk // ROWS), ROWS, do, q, q0, k, k0, v, v0,
               lse, delta, n_h, n_hkv, bool(causal), int(window), scale, zero, dkv)


# ---- head-major API: q (B, H, Tq, D), k, v (B, Hkv, Tk, D) ------------------------------------
@implements("attention_forward", device="cuda", supports=_supported)
def attention_forward(q, k, v, mask, causal, scale, window):
    cp = cupy()
    b, h, tq, d = q.shape
    o = cp.empty((b, h, tq, d), dtype=q.dtype)
    lse = cp.empty((b, h, tq), dtype=q.dtype)
    _forward(q, 0, k, 0, v, 0, h, k.shape[1], causal, scale, window, o, lse)
    return o, lse


@implements("attention_backward", device="cuda", supports=_backward_supported)
def attention_backward(do, q, k, v, o, lse, mask, causal, scale, window):
    cp = cupy()
    dq = cp.empty(q.shape, dtype=q.dtype)
    dkv = cp.empty((2,) + k.shape, dtype=q.dtype)        # dk, dv: each contiguous
    _backward(do, o, q, 0, k, 0, v, 0, lse, q.shape[1], k.shape[1], causal, scale, window, dq,
              dkv)
    return dq, dkv[0], dkv[1]


# ---- packed API: qkv (B, T, H + 2 Hkv, D), o (B, T, H, D) --------------------------------------
@implements("packed_attention_forward", device="cuda", supports=_packed_supported)
def packed_attention_forward(qkv, n_head, n_kv_head, causal, scale, window):
    cp = cupy()
    b, t, _, d = qkv.shape
    x = qkv.transpose(0, 2, 1, 3)                        # (B, S, T, D) view
    o = cp.empty((b, t, n_head, d), dtype=qkv.dtype)
    lse = cp.empty((b, n_head, t), dtype=qkv.dtype)
    _forward(x, 0, x, n_head, x, n_head + n_kv_head, n_head, n_kv_head, causal, scale, window,
             o.transpose(0, 2, 1, 3), lse)
    return o, lse


@implements("packed_attention_backward", device="cuda", supports=_packed_supported)
def packed_attention_backward(do, qkv, o, lse, n_head, n_kv_head, causal, scale, window):
    cp = cupy()
    b, t, s, d = qkv.shape
    x = qkv.transpose(0, 2, 1, 3)
    dqkv = cp.empty(qkv.shape, dtype=qkv.dtype)
    # dk, dv slots [H, H + 2 Hkv) seen as (2, B, Hkv, T, D): a view, written in place
    dkv = dqkv[:, :, n_head:].reshape(b, t, 2, n_kv_head, d).transpose(2, 0, 3, 1, 4)
    _backward(do.transpose(0, 2, 1, 3), o.transpose(0, 2, 1, 3), x, 0, x, n_head, x,
              n_head + n_kv_head, lse, n_head, n_kv_head, causal, scale, window,
              dqkv.transpose(0, 2, 1, 3), dkv)
    return dqkv
