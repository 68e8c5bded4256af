"""One Philox4x32-10 block (Salmon et al., 2011) as scalar code, compiled twice: by Numba for the
CPU kernel (kernels/cpu/random.py, inlined) and by Numba's CUDA target as a device function
(kernels/cuda/random.py). random.py holds the constants and the whole-array reference.

All arithmetic is uint64 on 32-bit values (a product of two 32-bit words is exact), with every
constant typed: Numba, like NumPy, turns uint64 mixed with int64 into float64.
"""
import numpy as np

from ..random import M0, M1, MASK32, ROUNDS, W0, W1

_MASK = np.uint64(MASK32)
_SHIFT = np.uint64(32)


def philox_block(block, k0, k1):
    # block: uint64 counter (c0 = low word, c1 = high word, c2 = c3 = 0); k0, k1: uint64 key words
    c0, c1 = block & _MASK, block >> _SHIFT
    c2, c3 = np.uint64(0), np.uint64(0)
    for r in range(ROUNDS):
        if r:
            k0 = (k0 + np.uint64(W0)) & _MASK
            k1 = (k1 + np.uint64(W1)) & _MASK
        p0, p1 = c0 * np.uint64(M0), c2 * np.uint64(M1)
        c0, c1, c2, c3 = (p1 >> _SHIFT) ^ c1 ^ k0, p1 & _MASK, (p0 >> _SHIFT) ^ c3 ^ k1, p0 & _MASK
    return c0, c1, c2, c3
