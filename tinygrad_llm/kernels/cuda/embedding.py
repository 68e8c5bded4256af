"""Embedding gradient on the GPU: a scatter-add with atomics (reference: ops/embedding.py).

dW[ids[n]] += dy[n] for every row n: block n adds row n of dy into row ids[n] of a zeroed dW, its
threads walking the columns (coalesced reads and writes). Rows with the same id meet in dW, so the
adds are atomic: repeated ids add up, in whatever order the blocks run (float sums may differ in
the last bits from run to run; the CPU kernel's column split is deterministic).

Ids are not checked here (the op checks host ids; reading device ids back would be a host sync);
an id outside [0, V) is skipped rather than written out of bounds.
"""
from numba import cuda

from .. import implements
from ._common import THREADS, cupy, floats, launch


@cuda.jit(cache=True)
def _embedding_backward_kernel(dy, ids, dw):
    # dy: (N, C)  ids: (N,)  dw: (V, C), zeroed; block n owns row n of dy
    n, t = cuda.blockIdx.x, cuda.threadIdx.x
    row = ids[n]
    if row < 0 or row >= dw.shape[0]:
        return
    for j in range(t, dy.shape[1], THREADS):
        cuda.atomic.add(dw, (row, j), dy[n, j])


@implements("embedding_backward", device="cuda",
            supports=lambda dy, ids, num_embeddings: dy.ndim == 2 and floats(dy)
            and ids.dtype.kind in "iu")
def embedding_backward(dy, ids, num_embeddings):
    cp = cupy()
    dy, ids = cp.ascontiguousarray(dy), cp.ascontiguousarray(ids)
    dw = cp.zeros((num_embeddings, dy.shape[1]), dtype=dy.dtype)
    if dy.shape[0] and dy.shape[1]:
        launch(_embedding_backward_kernel, dy.shape[0], THREADS, dy, ids, dw)
    return dw
