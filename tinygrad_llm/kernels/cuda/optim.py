"""Fused optimizer updates on the GPU, and the per-gradient sums of squares that clipping needs.

References: optim/sgd.py, optim/adam.py, optim/lion.py (the update rules, written out there) and
optim/clip.py (grad_squared_norms). Same arguments, same results.

Updates: one thread per element in a grid-stride loop (thread i takes elements i, i + grid, ...),
reading p, g and the state once and writing p and the state once: the array references make four
to six full passes, each a launch. The grid is capped (_common.grid_for): on a GPU enough blocks
to fill the device (more would only queue), under the simulator two, so that the tests' small
sizes already walk the stride loop. On a GPU the optimizer calls these once per parameter group,
on flat buffers (optim/flat.py), so the launch count does not grow with the number of parameters.

As in kernels/cpu/optim.py, every scalar is handed over in the parameter's dtype (a Python float
would make Numba compile a float32 update in float64) and derived once here, outside the loop.

Sums of squares: one launch per gradient; each block squares and adds its share in float64
registers (no float64 copy of the gradient is ever made) and writes its partial sum as a pair
hi + lo in the sums' dtype (float32 on a GPU: optim/clip.py says why), which carries a float64 to
~48 bits; one more launch adds each gradient's pairs in float64, in a fixed order, so the norm is
the same bit for bit on every run (atomics would add in whatever order the blocks finish).
"""
import math

from numba import cuda, float64

from .. import implements
from ._common import MAX_BLOCKS, THREADS, block_sum, cupy, floats, grid_for, launch


def _fits(p, g, *state):
    """One float dtype and one shape; p and the state contiguous (written in place through a
    flat view); g may be strided (made contiguous at the boundary)."""
    arrays = (p, g) + tuple(s for s in state if s is not None)
    return (floats(*arrays) and all(a.shape == p.shape for a in arrays)
            and all(a.flags.c_contiguous for a in arrays if a is not g))


def _flat_grad(g):
    return cupy().ascontiguousarray(g).reshape(-1)


# ---- SGD -----------------------------------------------------------------------------------------
@cuda.jit(cache=True)
def _sgd_kernel(p, g, b, has_buffer, nesterov, lr, momentum, grad_scale, weight_decay):
    # p, g, b: (N,) flat; b is a 1-element dummy without momentum; grad_scale = 1 - dampening
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        d = g[i]
        if weight_decay != 0:        # the reference adds wd * p only then (0 * inf would be NaN)
            d = d + weight_decay * p[i]
        if has_buffer:
            bi = momentum * b[i] + grad_scale * d
            b[i] = bi
            if nesterov:
                d = d + momentum * bi
            else:
                d = bi
        p[i] = p[i] - lr * d


@implements("sgd_update", device="cuda", supports=lambda p, g, b, *hyper: _fits(p, g, b))
def sgd_update(p, g, b, lr, momentum, dampening, weight_decay, nesterov):
    f = p.dtype.type
    has_buffer = b is not None
    # a separate dummy: one launch never gets two arguments over the same memory (_common.py)
    buffer = b.reshape(-1) if has_buffer else cupy().empty_like(p, shape=1)
    if p.size:
        launch(_sgd_kernel, grid_for(p.size), THREADS, p.reshape(-1), _flat_grad(g), buffer,
               has_buffer, bool(nesterov), f(lr), f(momentum), f(1.0 - dampening),
               f(weight_decay))
    return p, b


# ---- Adam / AdamW --------------------------------------------------------------------------------
@cuda.jit(cache=True)
def _adam_kernel(p, g, m, v, decay, l2, beta1, one_minus_beta1, beta2, one_minus_beta2,
                 step_size, sqrt_c2, eps):
    # p, g, m, v: (N,) flat. decay = 1 - lr * wd (AdamW) or 1; l2 = wd (Adam) or 0
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        gi = g[i]
        if l2 != 0:
            gi = gi + l2 * p[i]
        mi = beta1 * m[i] + one_minus_beta1 * gi
        vi = beta2 * v[i] + one_minus_beta2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        p[i] = decay * p[i] - step_size * mi / (math.sqrt(vi) / sqrt_c2 + eps)


@implements("adam_update", device="cuda",
            supports=lambda p, g, m, v, *hyper: _fits(p, g, m, v))
def adam_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, decoupled, bias_correction1,
                bias_correction2):
    f = p.dtype.type
    decay = 1.0 - lr * weight_decay if decoupled else 1.0
    l2 = 0.0 if decoupled else weight_decay
    if p.size:
        launch(_adam_kernel, grid_for(p.size), THREADS, p.reshape(-1), _flat_grad(g), m.reshape(-1),
               v.reshape(-1), f(decay), f(l2), f(beta1), f(1.0 - beta1), f(beta2),
               f(1.0 - beta2), f(lr / bias_correction1), f(math.sqrt(bias_correction2)), f(eps))
    return p, m, v


# ---- Lion ----------------------------------------------------------------------------------------
# sign(c) with c = beta1 m + (1 - beta1) g is taken by comparing the two products, a > -b, rather
# than from the rounded sum: the GPU compiler contracts a + b into a fused multiply-add, which
# rounds differently from the reference's two products and, near c = 0, would flip the sign and
# move p by 2 lr. A rounded sum has the sign of the exact one (no underflow to 0 without
# flush-to-zero, which is off), so the comparison gives the reference's sign exactly. The sum is
# still formed to let NaN through (a NaN input, or inf - inf).
@cuda.jit(cache=True)
def _lion_kernel(p, g, m, decay, lr, beta1, one_minus_beta1, beta2, one_minus_beta2):
    # p, g, m: (N,) flat. decay = 1 - lr * wd
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
        gi = g[i]
        mi = m[i]
        a = beta1 * mi
        b = one_minus_beta1 * gi
        c = a + b
        if c != c:
            step = c                    # NaN, as lr * sign(NaN)
        elif a > -b:
            step = lr
        elif a < -b:
            step = -lr
        else:
            step = lr - lr              # sign(0) = 0, in p's dtype
        p[i] = decay * p[i] - step
        m[i] = beta2 * mi + one_minus_beta2 * gi


@implements("lion_update", device="cuda", supports=lambda p, g, m, *hyper: _fits(p, g, m))
def lion_update(p, g, m, lr, beta1, beta2, weight_decay):
    f = p.dtype.type
    if p.size:
        launch(_lion_kernel, grid_for(p.size), THREADS, p.reshape(-1), _flat_grad(g), m.reshape(-1),
               f(1.0 - lr * weight_decay), f(lr), f(beta1), f(1.0 - beta1), f(beta2),
               f(1.0 - beta2))
    return p, m


# ---- sums of squares for clip_grad_norm_ ---------------------------------------------------------
@cuda.jit(device=True)
def _store_pair(pairs, i, value):
    """pairs[i] = (hi, lo), value (float64) as the sum of two numbers of pairs' dtype."""
    pairs[i, 0] = value
    hi = pairs[i, 0]
    # lo: what rounding dropped; 0 where hi is infinite (inf - inf would be a NaN, not inf)
    pairs[i, 1] = 0.0 if math.isinf(hi) else value - hi


@cuda.jit(cache=True)
def _sum_squares_kernel(g, k, partial):
    # g: (n,) flat; partial: (K, MAX_BLOCKS, 2); block b writes partial[k, b] = its threads'
    # squares, squared and added in float64 registers, as a (hi, lo) pair
    shared = cuda.shared.array(THREADS, float64)
    s = 0.0
    for i in range(cuda.grid(1), g.shape[0], cuda.gridsize(1)):
        x = float64(g[i])           # a float32 square would round every term
        s += x * x
    total = block_sum(shared, s)
    if cuda.threadIdx.x == 0:
        _store_pair(partial[k], cuda.blockIdx.x, total)


@cuda.jit(cache=True)
def _sum_pairs_kernel(partial, out):
    # partial: (K, MAX_BLOCKS, 2)  out: (K, 2); block k adds row k's pairs in float64
    k, t = cuda.blockIdx.x, cuda.threadIdx.x
    shared = cuda.shared.array(THREADS, float64)
    s = 0.0
    for j in range(t, partial.shape[1], THREADS):
        s += float64(partial[k, j, 0]) + float64(partial[k, j, 1])
    total = block_sum(shared, s)
    if t == 0:
        _store_pair(out, k, total)


def _squares_supported(out, grads):
    return out.ndim == 2 and floats(out) and all(floats(g) for g in grads)


@implements("grad_squared_norms", device="cuda", supports=_squares_supported)
def grad_squared_norms(out, grads):
    # each block's partial sum as a pair in out's dtype (clip.py: the gradients' own on a GPU);
    # blocks that a small gradient leaves idle keep their 0
    partial = cupy().zeros_like(out, shape=(len(grads), MAX_BLOCKS, 2))
    for k, g in enumerate(grads):
        if g.size:
            launch(_sum_squares_kernel, grid_for(g.size), THREADS, _flat_grad(g), k, partial)
    if grads:
        launch(_sum_pairs_kernel, len(grads), THREADS, partial, out)
    return out
