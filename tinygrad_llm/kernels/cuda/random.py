"""Philox4x32-10 uniforms on the GPU in one launch (reference: random.py's `philox_uniform`; the
CPU version, kernels/cpu/random.py, has the same loop).

The array reference is ~110 CuPy launches per draw (ten rounds of whole-array uint64 operations),
which a dropout mask or a sampler's single uniform per row would pay on every call. Here one
thread computes one counter block and writes its words straight to floats; a grid-stride loop
covers draws larger than the grid. The bits are the reference's: integer arithmetic only (each
32 x 32-bit product is an exact uint64), so every device draws the same numbers.
"""
import numpy as np
from numba import cuda

from .. import implements
from ...random import MASK32, words_per_number
from .._philox import philox_block
from ._common import SIMULATOR, THREADS, blocks_for, floats, launch
_MAX_GRID = 2 if SIMULATOR else 4096    # blocks of THREADS; the simulator runs threads in Python


_philox_block = cuda.jit(device=True)(philox_block)


@cuda.jit(cache=True)
def _uniform32_kernel(out, k0, k1, offset):
    # out: (n,) float32; block b (one thread) gives out[4b .. 4b + 3] from its words' top 24 bits
    n = out.shape[0]
    scale = np.float32(2.0 ** -24)
    eight = np.uint64(8)
    for b in range(cuda.grid(1), (n + 3) // 4, cuda.gridsize(1)):
        w0, w1, w2, w3 = _philox_block(offset + np.uint64(b), k0, k1)
        j = 4 * b
        out[j] = np.float32(w0 >> eight) * scale
        if j + 1 < n:
            out[j + 1] = np.float32(w1 >> eight) * scale
        if j + 2 < n:
            out[j + 2] = np.float32(w2 >> eight) * scale
        if j + 3 < n:
            out[j + 3] = np.float32(w3 >> eight) * scale


@cuda.jit(cache=True)
def _uniform64_kernel(out, k0, k1, offset):
    # out: (n,) float64; block b (one thread) gives out[2b], out[2b + 1] from two words each
    n = out.shape[0]
    five, six = np.uint64(5), np.uint64(6)
    scale = 2.0 ** -53
    for b in range(cuda.grid(1), (n + 1) // 2, cuda.gridsize(1)):
        w0, w1, w2, w3 = _philox_block(offset + np.uint64(b), k0, k1)
        out[2 * b] = (np.float64(w0 >> five) * 67108864.0 + np.float64(w1 >> six)) * scale
        if 2 * b + 1 < n:
            out[2 * b + 1] = (np.float64(w2 >> five) * 67108864.0 + np.float64(w3 >> six)) * scale


@implements("philox_uniform", device="cuda",
            supports=lambda out, seed, offset: floats(out) and out.flags.c_contiguous)
def philox_uniform_cuda(out, seed, offset):
    n_blocks = -(-out.shape[0] * words_per_number(out.dtype) // 4)
    if n_blocks:
        kernel = _uniform64_kernel if words_per_number(out.dtype) == 2 else _uniform32_kernel
        launch(kernel, min(blocks_for(n_blocks), _MAX_GRID), THREADS, out,
               np.uint64(seed & MASK32), np.uint64(seed >> 32), np.uint64(offset))
    return out
