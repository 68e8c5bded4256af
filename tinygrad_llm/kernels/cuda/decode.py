"""The decode step's attention on the GPU: a step's few queries against the KV cache in one launch
(reference: generate/decode_step.py decode_attention, where the math is written).

    q: (H, t, D)   keys, values: (Hkv, n, D), n = start + t   o: (H, t, D)
    o[h, i] = sum_j softmax_j(q[h, i] . k[g, j] * scale) v[g, j],   j <= start + i,  g = h // G

Through array operations this is eight launches per layer (scale, scores, max, shift, exp, sum,
divide, weighted sum), each a separate pass over a small (H, n) matrix; the tiled attention
kernel (attention.py) gives each query one thread, which leaves a single query walking the
whole cache alone. Here a block of THREADS threads owns one (query head h, token i) and splits
the cache between its threads, a tile of THREADS keys at a time, with an online softmax
(Milakov & Gimelshein, 2018) carried across tiles:

    thread r of tile J:  s = q . k[j0 + r] * scale               (one key per thread)
    block:               m' = max(m, max_r s),  e_r = e^(s_r - m'),  c = e^(m - m')
                         l = l c + sum_r e_r
                         acc[col] = acc[col] c + sum_r e_r v[j0 + r, col]   (one column per thread)
                         m = m'
    o[h, i, col] = acc[col] / l

Scores are computed with the keys split over threads, the weighted sum with the columns split
over threads (each reads a value row's columns side by side). Every thread of the block ends a
tile with the same m and l, so the rescale needs no extra barrier. Like the reference: a NaN score
makes the max, hence its whole row, NaN, and a NaN value its column; no row is fully masked (a
query always sees itself).
Accumulators are in the inputs' dtype. Supported: float32/float64 with head_dim <= MAX_HEAD_DIM.
"""
import math

from numba import cuda

from .. import implements
from ._common import THREADS, block_sum, cupy, floats, launch

MAX_HEAD_DIM = 256                         # the query row is staged in shared memory
COLUMNS = -(-MAX_HEAD_DIM // THREADS)      # output columns one thread may own (1 on a GPU)


def _supported(q, keys, values, start, scale):
    return (q.ndim == 3 and keys.ndim == 3 and floats(q, keys, values)
            and q.shape[2] <= MAX_HEAD_DIM and keys.shape[0] > 0
            and q.shape[0] % keys.shape[0] == 0)


@cuda.jit(device=True)
def _block_max(partial, value):
    """The max of `value` over the block's threads (every thread gets it); NaN if any is NaN,
    as the reference's max."""
    t = cuda.threadIdx.x
    partial[t] = value
    cuda.syncthreads()
    step = THREADS // 2
    while step > 0:
        if t < step:
            other = partial[t + step]
            if other > partial[t] or other != other:
                partial[t] = other
        cuda.syncthreads()
        step //= 2
    best = partial[0]
    cuda.syncthreads()
    return best


@cuda.jit(cache=True)
def _decode_attention_kernel(q, keys, values, start, scale, zero, neg_inf, o):
    # q, o: (H, t, D)  keys, values: (Hkv, n, D); block (h, i): query head h, the step's token i
    h, i, r = cuda.blockIdx.x, cuda.blockIdx.y, cuda.threadIdx.x
    d = q.shape[2]
    g = h // (q.shape[0] // keys.shape[0])
    end = start + i + 1                                 # keys 0 .. start + i are visible
    qs = cuda.shared.array(MAX_HEAD_DIM, q.dtype)
    p = cuda.shared.array(THREADS, q.dtype)             # the tile's e^(s - m')
    partial = cuda.shared.array(THREADS, q.dtype)       # reductions
    acc = cuda.local.array(COLUMNS, q.dtype)            # columns r, r + THREADS, ...
    for c in range(r, d, THREADS):
        qs[c] = q[h, i, c] * scale
    for k in range(COLUMNS):
        acc[k] = zero
    cuda.syncthreads()
    m = neg_inf
    total = zero
    for j0 in range(0, end, THREADS):
        width = min(THREADS, end - j0)
        s = neg_inf
        if r < width:
            s = zero
            for c in range(d):
                s += qs[c] * keys[g, j0 + r, c]
        tile_max = _block_max(partial, s)
        new_m = tile_max if tile_max > m or tile_max != tile_max else m
        e = zero
        if r < width:
            e = math.exp(s - new_m)
        p[r] = e
        rescale = zero if m == neg_inf else math.exp(m - new_m)    # 0 on the first tile
        total = total * rescale + block_sum(partial, e)  # its barriers also publish p
        k = 0
        for c in range(r, d, THREADS):
            a = acc[k] * rescale
            for jj in range(width):
                a += p[jj] * values[g, j0 + jj, c]
            acc[k] = a
            k += 1
        m = new_m
        cuda.syncthreads()                              # the next tile overwrites p
    k = 0
    for c in range(r, d, THREADS):
        o[h, i, c] = acc[k] / total
        k += 1


@implements("decode_attention", device="cuda", supports=_supported)
def decode_attention(q, keys, values, start, scale):
    cp = cupy()
    h, t, d = q.shape
    o = cp.empty((h, t, d), dtype=q.dtype)
    if h * t and d:
        kind = q.dtype.type
        launch(_decode_attention_kernel, (h, t), THREADS, q, keys, values, int(start),
               kind(scale), kind(0), kind(-math.inf), o)
    return o
