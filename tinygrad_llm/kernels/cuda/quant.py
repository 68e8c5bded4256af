"""Quantized matrix products on the GPU that decode the weight in registers, never as a whole
(reference: quant/linear.py quant_matmul, which decodes the matrix first; the schemes and their
common form: quant/formats.py matmul_operands).

    y[i, o] = sum over k of W_hat[o, k] x[i, k]
    W_hat[o, k] = scale[o, k // group] value(o, k)  (+ min[o, k // 32], q4_1 only)

value is the signed byte q[o, k] (int8, q8_0) or levels[nibble] (q4_0: nibble - 8, q4_1: nibble,
nf4: the code book), the nibbles packed as ggml packs them: byte 16 b + j of a row holds element
32 b + j in its low nibble and 32 b + j + 16 in its high one. Each weight is formed as the
reference forms W_hat (the same float32 product) before it meets x.

Layout. On the GPU a PackedWeight keeps matmul_operands' row-major arrays (quant_pack's reference:
the CPU's column tiles serve SIMD lanes over outputs, while here the threads of a block read one
row's bytes side by side, which row-major storage makes coalesced).

Threads. A row gets LANES threads (a warp on a GPU), a block ROWS = THREADS / LANES rows of one
token. Lane l of row o takes bytes l, l + LANES, ... of the row, decodes each to one weight
(8-bit) or two (4-bit: the 16 levels sit in shared memory), multiplies by x and keeps a running
sum in x's dtype; the row's lanes add their sums in shared memory (a tree, in float64). Lanes
read adjacent bytes, and GPT-2 small's narrowest rows (768 inputs: 384 bytes of Q4_0) still give
each lane a dozen. Every token of a small batch re-reads the row (from cache after the first):
this is the decode step's matrix-vector product and a few tokens at once (up to MAX_TOKENS, as
speculative decoding verifies); a longer input (a prompt) takes the reference, which decodes the
matrix once into a temporary on the device and multiplies with cuBLAS: faster at that size, and
nothing crosses to the host either way.
"""
from numba import cuda, float32, float64

from .. import implements
from ._common import SIMULATOR, THREADS, blocks_for, cupy, floats, launch

MAX_TOKENS = 16             # rows of x up to which the kernels beat decode-then-cuBLAS
LANES = 4 if SIMULATOR else 32          # threads per output row (a warp on a GPU)
ROWS = THREADS // LANES                 # output rows per block


def _supported(x, weight):
    return (x.ndim == 2 and floats(x) and 0 < x.shape[0] <= MAX_TOKENS
            and weight.device == "cuda" and weight.tiles is None)


@cuda.jit(device=True)
def _row_sum(partial, value):
    """The sum of `value` over each row's LANES threads (consecutive in the block); right only
    in the row's first lane. Every thread of the block calls it (it holds barriers)."""
    t = cuda.threadIdx.x
    lane = t % LANES
    partial[t] = value
    cuda.syncthreads()
    step = LANES // 2
    while step > 0:
        if lane < step:
            partial[t] += partial[t + step]
        cuda.syncthreads()
        step //= 2
    return partial[t]


@cuda.jit(cache=True)
def _matvec_8bit_kernel(q, scale, group, x, zero, y):
    # q: (M, K) int8  scale: (M, K / group) float16 or float32  x: (N, K)  y: (N, M)
    # zero: 0 in x's dtype (the running sum's type); block (r, i): rows r ROWS.., token i
    t, i = cuda.threadIdx.x, cuda.blockIdx.y
    o, lane = cuda.blockIdx.x * ROWS + t // LANES, t % LANES
    partial = cuda.shared.array(THREADS, float64)
    acc = zero
    if o < q.shape[0]:                  # a row past the end only joins the barriers
        for k in range(lane, q.shape[1], LANES):
            w = float32(q[o, k]) * float32(scale[o, k // group])          # W_hat[o, k]
            acc += w * x[i, k]
    total = _row_sum(partial, acc)
    if lane == 0 and o < q.shape[0]:
        y[i, o] = total


@cuda.jit(cache=True)
def _matvec_4bit_kernel(q, scale, minimum, has_min, levels, group, x, zero, y):
    # q: (M, K / 2) uint8  scale: (M, K / group)  minimum: (M, K / 32) when has_min
    # levels: (16,) float32  x: (N, K)  y: (N, M); block (r, i): rows r ROWS.., token i
    t, i = cuda.threadIdx.x, cuda.blockIdx.y
    o, lane = cuda.blockIdx.x * ROWS + t // LANES, t % LANES
    table = cuda.shared.array(16, float32)
    partial = cuda.shared.array(THREADS, float64)
    for j in range(t, 16, THREADS):
        table[j] = levels[j]
    cuda.syncthreads()
    acc = zero
    if o < q.shape[0]:
        for p in range(lane, q.shape[1], LANES):
            b = p // 16                         # the run of 32 elements byte p belongs to
            k = p + 16 * b                      # its low nibble's element, 32 b + p % 16
            s = float32(scale[o, (32 * b) // group])
            byte = q[o, p]
            lo = table[byte & 15] * s
            hi = table[byte >> 4] * s
            if has_min:
                m = float32(minimum[o, b])
                lo += m
                hi += m
            acc += lo * x[i, k] + hi * x[i, k + 16]
    total = _row_sum(partial, acc)
    if lane == 0 and o < q.shape[0]:
        y[i, o] = total


@implements("quant_matmul", device="cuda", supports=_supported)
def quant_matmul(x, weight):
    # x: (N, K) float32/64, weight: a PackedWeight on the GPU -> y: (N, M) in x's dtype
    cp = cupy()
    x = cp.ascontiguousarray(x)
    q, scale, minimum, levels, group = weight.operands
    n, m = x.shape[0], q.shape[0]
    y = cp.empty((n, m), dtype=x.dtype)
    if m == 0:
        return y
    zero = x.dtype.type(0)
    grid = (blocks_for(m, ROWS), n)
    if levels is None:
        launch(_matvec_8bit_kernel, grid, THREADS, q, scale, group, x, zero, y)
    else:
        # without mins the scale stands in for them, read by no thread (has_min is False)
        launch(_matvec_4bit_kernel, grid, THREADS, q, scale,
               scale if minimum is None else minimum, minimum is not None, levels, group, x,
               zero, y)
    return y
