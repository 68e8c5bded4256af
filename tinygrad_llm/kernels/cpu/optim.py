"""Fused optimizer updates (references: optim/sgd.py, optim/adam.py, optim/lion.py), and the
gradients' sums of squares that clipping needs (reference: optim/clip.py).

Each update is one pass over the parameter: read p, g and the state, write p and the state, with
no temporaries (the array references make four to six full-size passes). A parameter above
PARALLEL_MIN elements is split into CHUNK-sized pieces run with prange; smaller ones run serially,
since waking the thread pool costs more than updating a few thousand floats. The parallel loop
hands each task slices, and every loop runs i over range(len): with a range [lo, hi) Numba's
negative-index wraparound stays in the loop and LLVM does not vectorise it (seen in the assembly:
scalar `ss` instructions instead of packed `ps`).

Scalars are handed to the loops in the parameter's dtype: an np.float64 (or Python float) scalar
would make Numba compute a float32 parameter's update in float64. So every derived constant
(1 - beta, lr / c1, sqrt(c2), the decay factor) is computed here, once, outside the loop.
"""
import math

import numpy as np
from numba import njit, prange

from .. import implements
from ._common import floats, jit, jit_parallel

PARALLEL_MIN = 1 << 16       # elements; below this the update runs on one thread
CHUNK = 1 << 14              # elements per parallel task


def _fits(p, g, *state):
    """NumPy arrays of one float dtype and one shape; p and the state contiguous (written in
    place through a flat view); g may be strided (made contiguous at the boundary)."""
    arrays = (p, g) + tuple(s for s in state if s is not None)
    return (all(isinstance(a, np.ndarray) for a in arrays) and floats(*arrays)
            and all(a.shape == p.shape for a in arrays)
            and all(a.flags.c_contiguous for a in arrays if a is not g))


def _flat(a):
    return a.reshape(-1)      # a view: the arrays are contiguous


def _run(serial, parallel, *args):
    """The serial loop for small parameters, the chunked prange loop for large (args[0] is p)."""
    (parallel if args[0].size >= PARALLEL_MIN else serial)(*args)


# ---- SGD -----------------------------------------------------------------------------------------
@jit
def _sgd_loop(p, g, b, has_buffer, nesterov, lr, momentum, grad_scale, weight_decay):
    # p, g, b: (N,) flat; b unused (size 0) without momentum; grad_scale = 1 - dampening
    for i in range(p.shape[0]):
        d = g[i] + weight_decay * p[i]
        if has_buffer:
            bi = momentum * b[i] + grad_scale * d
            b[i] = bi
            d = d + momentum * bi if nesterov else bi
        p[i] = p[i] - lr * d


@jit_parallel
def _sgd_chunks(p, g, b, has_buffer, nesterov, lr, momentum, grad_scale, weight_decay):
    n = p.shape[0]
    for c in prange((n + CHUNK - 1) // CHUNK):
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        _sgd_loop(p[lo:hi], g[lo:hi], b[lo:hi] if has_buffer else b, has_buffer, nesterov, lr,
                  momentum, grad_scale, weight_decay)


@implements("sgd_update", device="cpu",
            supports=lambda p, g, b, *hyper: _fits(p, g, b))
def sgd_update_cpu(p, g, b, lr, momentum, dampening, weight_decay, nesterov):
    f = p.dtype.type
    has_buffer = b is not None
    buffer = _flat(b) if has_buffer else np.empty(0, p.dtype)
    _run(_sgd_loop, _sgd_chunks, _flat(p), _flat(np.ascontiguousarray(g)), buffer,
         has_buffer, bool(nesterov), f(lr), f(momentum), f(1.0 - dampening), f(weight_decay))
    return p, b


# ---- Adam / AdamW --------------------------------------------------------------------------------
@jit
def _adam_loop(p, g, m, v, decay, l2, beta1, one_minus_beta1, beta2, one_minus_beta2, step_size,
               sqrt_c2, eps):
    # p, g, m, v: (N,) flat. decay = 1 - lr * wd (AdamW) or 1; l2 = wd (Adam) or 0
    for i in range(p.shape[0]):
        gi = g[i] + l2 * p[i]
        mi = beta1 * m[i] + one_minus_beta1 * gi
        vi = beta2 * v[i] + one_minus_beta2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        p[i] = decay * p[i] - step_size * mi / (math.sqrt(vi) / sqrt_c2 + eps)


@jit_parallel
def _adam_chunks(p, g, m, v, decay, l2, beta1, one_minus_beta1, beta2, one_minus_beta2,
                 step_size, sqrt_c2, eps):
    n = p.shape[0]
    for c in prange((n + CHUNK - 1) // CHUNK):
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        _adam_loop(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], decay, l2, beta1, one_minus_beta1,
                   beta2, one_minus_beta2, step_size, sqrt_c2, eps)


@implements("adam_update", device="cpu",
            supports=lambda p, g, m, v, *hyper: _fits(p, g, m, v))
def adam_update_cpu(p, g, m, v, lr, beta1, beta2, eps, weight_decay, decoupled,
                    bias_correction1, bias_correction2):
    f = p.dtype.type
    decay = 1.0 - lr * weight_decay if decoupled else 1.0
    l2 = 0.0 if decoupled else weight_decay
    _run(_adam_loop, _adam_chunks, _flat(p), _flat(np.ascontiguousarray(g)), _flat(m),
         _flat(v), f(decay), f(l2), f(beta1), f(1.0 - beta1), f(beta2), f(1.0 - beta2),
         f(lr / bias_correction1), f(math.sqrt(bias_correction2)), f(eps))
    return p, m, v


# ---- Lion ----------------------------------------------------------------------------------------
# Compiled without 'contract': a fused multiply-add in c = beta1 * m + (1 - beta1) * g rounds
# differently from the reference's two products, and near c = 0 that flips sign(c), moving p by
# 2 lr instead of one ulp.
@njit(cache=True, error_model="numpy")
def _lion_loop(p, g, m, decay, lr, beta1, one_minus_beta1, beta2, one_minus_beta2):
    # p, g, m: (N,) flat. decay = 1 - lr * wd
    for i in range(p.shape[0]):
        gi = g[i]
        mi = m[i]
        c = beta1 * mi + one_minus_beta1 * gi
        step = lr if c > 0 else (-lr if c < 0 else lr - lr)     # lr * sign(c), in p's dtype
        p[i] = decay * p[i] - step
        m[i] = beta2 * mi + one_minus_beta2 * gi


@njit(cache=True, error_model="numpy", parallel=True)
def _lion_chunks(p, g, m, decay, lr, beta1, one_minus_beta1, beta2, one_minus_beta2):
    n = p.shape[0]
    for c in prange((n + CHUNK - 1) // CHUNK):
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        _lion_loop(p[lo:hi], g[lo:hi], m[lo:hi], decay, lr, beta1, one_minus_beta1, beta2,
                   one_minus_beta2)


@implements("lion_update", device="cpu",
            supports=lambda p, g, m, *hyper: _fits(p, g, m))
def lion_update_cpu(p, g, m, lr, beta1, beta2, weight_decay):
    f = p.dtype.type
    _run(_lion_loop, _lion_chunks, _flat(p), _flat(np.ascontiguousarray(g)), _flat(m),
         f(1.0 - lr * weight_decay), f(lr), f(beta1), f(1.0 - beta1), f(beta2), f(1.0 - beta2))
    return p, m


# ---- the sums of squares that clipping needs (reference: optim/clip.py) -------------------------
@jit
def _sum_squares(flat):
    # flat: (N,) float32 or float64; each square added in float64 (no float64 copy of the array)
    total = 0.0
    for i in range(flat.size):
        v = np.float64(flat[i])
        total += v * v
    return total


@implements("grad_squared_norms", device="cpu", supports=lambda out, grads: out.ndim == 2
            and out.dtype == np.float64 and all(floats(g) for g in grads))
def grad_squared_norms_cpu(out, grads):
    # the reference makes a float64 copy of every gradient before its dot product: for the main
    # job's 1.8M parameters a clip took 0.88 ms that way and 0.17 ms here
    for k, g in enumerate(grads):
        out[k, 0] = _sum_squares(np.ascontiguousarray(g).reshape(-1))
    return out
