"""The bias of a Linear layer, forward and backward (reference: ops/linalg.py's add_bias and
bias_grad); the layer's two GEMMs stay with BLAS.

NumPy runs `y += b` and `dy.sum(axis=0)` on one core, and at bench_train's config b (y up to
16384 x 1536, 100 MB) they are memory-bound passes: split over the cores they took 42 and 37 ms
a step instead of 112 and 66. Forward: each task adds b to a range of rows, in place. Backward:
rows go in N_CHUNKS fixed chunks, each summed into its own float64 row of partial sums, which are
added at the end, so the result does not depend on the thread count (and float32 gradients are
summed in float64, as the norms' weight gradients are).
"""
import numpy as np

from .. import implements
from ._common import N_CHUNKS, chunk_bounds, floats, jit_tasks, run_tasks

# One add per element: a worker's wake-up pays off only from about a million elements (768 x 384:
# 31 us in one thread against 160 us on two; 4096 x 768: 273 against 226; 16384 x 1536: 4.8 ms
# against 3.8), so run_tasks counts these loops' elements at a quarter.
_CHEAP = 4


@jit_tasks
def _add_bias_loop(lo, hi, y, b):
    # y: (M, N) in place  b: (N,)  task m: row m
    for m in range(lo, hi):
        for j in range(y.shape[1]):
            y[m, j] += b[j]


@jit_tasks
def _bias_grad_loop(lo, hi, dy, bounds, part):
    # dy: (M, N)  part: (N_CHUNKS, N) float64, zeroed  task k: rows bounds[k]..bounds[k+1]-1
    for k in range(lo, hi):
        for m in range(bounds[k], bounds[k + 1]):
            for j in range(dy.shape[1]):
                part[k, j] += dy[m, j]


@implements("add_bias", device="cpu", supports=lambda y, b: y.ndim == 2 and b.ndim == 1
            and floats(y, b) and y.flags.c_contiguous)
def add_bias_cpu(y, b):
    run_tasks(_add_bias_loop, y.shape[0], y, np.ascontiguousarray(b), work=y.size // _CHEAP)
    return y


@implements("bias_grad", device="cpu", supports=lambda dy: dy.ndim == 2 and floats(dy))
def bias_grad_cpu(dy):
    dy = np.ascontiguousarray(dy)
    part = np.zeros((N_CHUNKS, dy.shape[1]))
    run_tasks(_bias_grad_loop, N_CHUNKS, dy, chunk_bounds(dy.shape[0]), part,
              work=dy.size // _CHEAP)
    return part.sum(axis=0).astype(dy.dtype)
