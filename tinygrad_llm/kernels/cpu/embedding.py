"""Embedding gradient as a scatter-add (reference: ops/embedding.py).

dW[ids[n]] += dy[n] for every row n. Rows with the same id would race if rows were split across
threads, so the parallel axis is the embedding dimension instead: each thread owns a block of
columns of dW and walks all rows (each row's slice stays contiguous).
"""
import numpy as np
from numba import prange

from .. import implements
from ._common import floats, jit_parallel

_COLUMN_BLOCK = 32


@jit_parallel
def _embedding_backward_loop(dy, ids, dw):
    # dy: (N, C)  ids: (N,)  dw: (V, C), zeroed
    n_rows, c = dy.shape
    n_blocks = (c + _COLUMN_BLOCK - 1) // _COLUMN_BLOCK
    for blk in prange(n_blocks):
        lo = blk * _COLUMN_BLOCK
        hi = min(lo + _COLUMN_BLOCK, c)
        for n in range(n_rows):
            row = ids[n]
            for j in range(lo, hi):
                dw[row, j] += dy[n, j]


@implements("embedding_backward", device="cpu",
            supports=lambda dy, ids, num_embeddings: dy.ndim == 2 and floats(dy))
def embedding_backward_cpu(dy, ids, num_embeddings):
    dy = np.ascontiguousarray(dy)
    dw = np.zeros((num_embeddings, dy.shape[1]), dtype=dy.dtype)
    _embedding_backward_loop(dy, np.ascontiguousarray(ids), dw)
    return dw
