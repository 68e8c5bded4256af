"""MinHash signatures over 64-bit shingle hashes (reference: data/dedup.py's `minhash`).

    out[i, j] = min over the shingle hashes x of document i of  h_j(x) = (a_j x + b_j) mod p

with p = 2^61 - 1, a Mersenne prime (Carter & Wegman, 1979: a universal family; Thorup, 2000, for
the reduction): 2^61 = 1 (mod p), so a 122-bit product folds back below 2^63 with shifts and adds
and no division. The product is built from 32-bit halves, each partial product exact in uint64:

    a x = hi 2^64 + mid 2^32 + lo      hi = a_hi x_hi,  mid = a_lo x_hi + a_hi x_lo,  lo = a_lo x_lo
        = 8 hi + (mid >> 29) + (mid mod 2^29) 2^32 + (lo >> 61) + (lo mod 2^61)     (mod p)

For a, x < 2^61 every term is below 2^61 and their sum below 2^63. Every constant is a typed
uint64: Numba, like NumPy, turns uint64 mixed with int64 into float64.

A task is one document: it owns its row of `out`. The tasks run on run_tasks' threads (what a
prange over documents would do, without its compile cost). The loop order is shingle-major, so
the inner loop walks a, b and the document's row contiguously, and LLVM can vectorise it.

tests/data/test_dedup.py compares it with the reference. There is no CUDA version: deduplication
runs over text on the host, before any array reaches a device.
"""
import numpy as np

from .. import implements
from ._common import jit_tasks, run_tasks

P61 = np.uint64((1 << 61) - 1)
_LOW32 = np.uint64(0xFFFFFFFF)
_LOW29 = np.uint64((1 << 29) - 1)
_S3, _S29, _S32, _S61 = np.uint64(3), np.uint64(29), np.uint64(32), np.uint64(61)


@jit_tasks
def _minhash_loop(lo_doc, hi_doc, hashes, offsets, a, b, out):
    # hashes: (S,) uint64 < p, every document's shingle hashes back to back
    # offsets: (N + 1,) int64, document i owns hashes[offsets[i]:offsets[i + 1]]
    # a, b: (P,) uint64 in [1, p) and [0, p);  out: (N, P) uint64, each entry in [0, p)
    n_perm = a.shape[0]
    for i in range(lo_doc, hi_doc):
        row = out[i]
        for j in range(n_perm):
            row[j] = P61                      # above every hash value: the min's identity
        for s in range(offsets[i], offsets[i + 1]):
            x = hashes[s]
            x_lo, x_hi = x & _LOW32, x >> _S32
            for j in range(n_perm):
                a_lo, a_hi = a[j] & _LOW32, a[j] >> _S32
                lo = a_lo * x_lo
                mid = a_lo * x_hi + a_hi * x_lo
                r = ((a_hi * x_hi) << _S3) + (mid >> _S29) + ((mid & _LOW29) << _S32) \
                    + (lo >> _S61) + (lo & P61)
                r = (r & P61) + (r >> _S61)
                r = r + b[j]                  # < 2^62
                r = (r & P61) + (r >> _S61)
                if r >= P61:
                    r -= P61
                if r < row[j]:
                    row[j] = r


@implements("minhash", device="cpu", supports=lambda hashes, *rest: hashes.dtype == np.uint64)
def minhash_cpu(hashes, offsets, a, b):
    """(N, P) uint64 signatures of the N documents whose shingle hashes (each < p) lie in
    hashes[offsets[i]:offsets[i + 1]], under the P hash functions (a_j x + b_j) mod p."""
    # hashes: (S,) uint64   offsets: (N + 1,) int64   a, b: (P,) uint64
    out = np.empty((len(offsets) - 1, len(a)), dtype=np.uint64)
    run_tasks(_minhash_loop, out.shape[0], np.ascontiguousarray(hashes, dtype=np.uint64),
              np.ascontiguousarray(offsets, dtype=np.int64),
              np.ascontiguousarray(a, dtype=np.uint64), np.ascontiguousarray(b, dtype=np.uint64),
              out)
    return out
