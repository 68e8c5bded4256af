"""Shared pieces of the Numba kernels: the jit decorators, the task-range threads (jit_tasks,
run_tasks), the `supports` predicate `floats`, the fixed row chunking for column reductions, a
vectorisable float32 exp (exp_f32) and the row primitives built on it (exp_shifted,
exp_shifted_affine), row_max, and on_first_compile (a hook on Numba's compile events that
train/warmup.py starts its compile-ahead helper from).

Every loop is compiled with `cache=True` (the first call's compile is paid once per machine) and
fastmath limited to {'contract', 'reassoc'}: fused multiply-adds and reassociated reductions let
LLVM vectorise, while inf/NaN semantics stay exact (causal masks rely on -inf). error_model="numpy"
gives IEEE division (x/0 is inf, as in NumPy) instead of Python's ZeroDivisionError check, whose
branch on every division stops vectorisation.
"""
import concurrent.futures
import contextlib
import functools
import math
import os
import threading

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import event
from numba.extending import intrinsic, overload

FASTMATH = {"contract", "reassoc"}
FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
N_CHUNKS = 8   # row chunks for column reductions (dw, db): fixed so results don't depend on threads


def jit(fn):
    """A serial Numba loop."""
    return njit(cache=True, fastmath=FASTMATH, error_model="numpy")(fn)


def jit_parallel(fn):
    """A Numba loop with `prange` over an axis that owns its writes."""
    return njit(cache=True, fastmath=FASTMATH, error_model="numpy", parallel=True)(fn)


def jit_tasks(fn):
    """A serial Numba loop over a range of tasks, for run_tasks: its first two arguments are
    `lo, hi` and its body `for task in range(lo, hi): ...`, each task owning everything it
    writes (the contract of a prange loop). nogil, so that run_tasks' threads run it at once."""
    return njit(cache=True, fastmath=FASTMATH, error_model="numpy", nogil=True)(fn)


# ---- run_tasks: a jit_tasks loop on several threads ---------------------------------------------
# What prange does, without its compile cost: Numba's parallel lowering (the loop outlined into a
# gufunc, compiled and optimised again) roughly tripled the compile time of the large loops, and
# that compile is what a fresh install's first training step waits for (bench/bench_compile.py,
# numba 0.68, a loaded 2-core machine: attention's two loops 13.4 s with prange, 4.7 s as task
# loops). Here a loop compiles once, serially, and Python threads run contiguous ranges of its
# tasks (a prange body moved into a jitted function does not help: the gufunc compiles it again
# inlined). Each task does the same arithmetic whoever runs it, so results don't depend on the
# thread count. A call costs a sleeping worker thread's wake-up, tens of microseconds (about what
# a prange launch costs when its workers sleep): small beside loops of a millisecond, not beside a
# few microseconds. Loops called from other jitted code (decode, quant) keep prange.
_pool = None                          # run_tasks' worker threads, started on its first need
_pool_lock = threading.Lock()


def _workers():
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = concurrent.futures.ThreadPoolExecutor(
                    max(1, numba.config.NUMBA_NUM_THREADS - 1),
                    thread_name_prefix="tinygrad_llm_tasks")
    return _pool


def _forget_workers():
    """In a forked child the pool's threads don't exist: start a new pool when one is needed."""
    global _pool
    _pool = None


os.register_at_fork(after_in_child=_forget_workers)


def task_bounds(n_tasks, n_threads):
    """Boundaries of min(n_threads, n_tasks) contiguous, near-equal ranges of range(n_tasks):
    range k is [b[k], b[k + 1])."""
    n = min(n_threads, n_tasks)
    return [k * n_tasks // n for k in range(n + 1)] if n > 0 else [0]


# A call whose loop touches fewer elements than this runs in the calling thread: waking a worker
# and waiting for it cost ~50-75 us here (an empty task loop took 74 us through run_tasks against
# 0.2 us called directly), more than the half of such a loop it would take. A layer norm over bench_train's config a (768 x 128) took 66 us forward
# and 102 us backward in one thread against 123 and 153 us on two; at 2048 x 192 (the main job)
# the two were even forward and two threads won backward (224 against 333 us).
SERIAL_BELOW = 1 << 18


def run_tasks(kernel, n_tasks, *args, work=None):
    """kernel(lo, hi, *args) over the tasks 0..n_tasks-1, split into numba.get_num_threads()
    contiguous ranges (fewer when there are fewer tasks): the first runs in this thread, the
    others on worker threads. Returns when all are done; a worker's exception is raised here.

    kernel: a jit_tasks loop (nogil: a loop holding the GIL would run the ranges one by one).
    work: about how many elements the loop touches; below SERIAL_BELOW every task runs in this
        thread (the same arithmetic either way). None: as many threads as there are."""
    threads = 1 if work is not None and work < SERIAL_BELOW else numba.get_num_threads()
    bounds = task_bounds(n_tasks, threads)
    if len(bounds) <= 2:                          # one range or none: no thread to wake
        if n_tasks > 0:
            kernel(0, n_tasks, *args)
        return
    pool = _workers()
    futures = [pool.submit(kernel, bounds[k], bounds[k + 1], *args)
               for k in range(1, len(bounds) - 1)]
    try:
        kernel(bounds[0], bounds[1], *args)
    finally:                                      # no worker may still be writing on return
        concurrent.futures.wait(futures)
    for future in futures:
        future.result()


class _FirstCompile(event.Listener):
    def __init__(self, callback):
        self.callback, self.fired = callback, False

    def on_start(self, ev):
        if not self.fired:
            self.fired = True
            self.callback()

    def on_end(self, ev):
        pass


@contextlib.contextmanager
def on_first_compile(callback):
    """Within the block, call callback() once, as the block's first Numba compile starts (in
    the compiling thread, before the compile; a run whose kernels all come from the cache never
    calls it). callback must not raise."""
    listener = _FirstCompile(callback)
    event.register("numba:compile", listener)
    try:
        yield
    finally:
        event.unregister("numba:compile", listener)


def floats(*arrays):
    """True when every array is float32, or every one float64 (what the loops are written for)."""
    dtype = arrays[0].dtype
    return dtype in FLOATS and all(a.dtype == dtype for a in arrays)


@functools.lru_cache(maxsize=256)
def chunk_bounds(n):
    """Row boundaries of N_CHUNKS near-equal chunks of n rows: chunk k is [b[k], b[k+1]).
    Cached (and read-only): three NumPy calls cost ~1.3 us, a tenth of a small kernel's call."""
    bounds = np.arange(N_CHUNKS + 1) * n // N_CHUNKS
    bounds.flags.writeable = False
    return bounds


# ---- a vectorisable exp for softmax-shaped loops ------------------------------------------------
# libm's expf is a scalar call (about 2 ns) that keeps LLVM from vectorising the loop around it.
# For float32, exp(z) = 2^n * e^f with n = round(z / ln 2) and f = z - n ln 2 (Cody & Waite, 1980:
# ln 2 split in a short exact part and a correction, so f keeps full precision), e^f from its Taylor
# polynomial to degree 7 (|f| <= 0.35), and 2^n made by writing n + 127 into a float's exponent
# bits (`_int32_as_float32`, a bit cast that stays in a vector register). n stays a float32
# (np.floor, not math.floor, whose int64 result would turn the arithmetic into float64). Relative
# error 7e-8 for z >= -87; e^z below that (float32's denormals) is 0, and a NaN z gives NaN (the
# comparisons are written so: a NaN logit must not vanish from a loss). float64 uses libm's exp:
# gradcheck needs it exact.
@intrinsic
def _int32_as_float32(typingctx, bits):
    """The float32 whose bit pattern is the int32 `bits` (C's memcpy, NumPy's .view)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@njit(cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def exp_f32(z):
    """e^z for a float32 z <= 88 (the scalar body of exp_shifted's loops; see above)."""
    f32 = np.float32
    zc = f32(-87.0) if z < f32(-87.0) else z          # written so that a NaN stays NaN
    n = np.floor(zc * f32(1.4426950408889634) + f32(0.5))
    f = (zc - n * f32(0.693359375)) + n * f32(2.12194440e-4)
    p = f32(1.0 / 5040)
    p = p * f + f32(1.0 / 720)
    p = p * f + f32(1.0 / 120)
    p = p * f + f32(1.0 / 24)
    p = p * f + f32(1.0 / 6)
    p = p * f + f32(0.5)
    p = p * f + f32(1.0)
    p = p * f + f32(1.0)
    two_n = _int32_as_float32((np.int32(n) + np.int32(127)) << np.int32(23))
    return f32(0.0) if z < f32(-87.0) else p * two_n


def exp_shifted(x, shift, out, width):
    """out[j] = exp(x[j] - shift) for j < width, where x[j] - shift <= 0 (a softmax row; out may
    be x); returns their sum, accumulated in float64."""
    raise NotImplementedError("exp_shifted is called from jitted code only")


def exp_shifted_affine(x, shift, gain, bias, out, width):
    """out[j] = gain * exp(x[j] - shift) + bias: a softmax gradient row, g (p - c), in one pass.
    gain and bias in x's dtype."""
    raise NotImplementedError("exp_shifted_affine is called from jitted code only")


# The exponentials and the sum are two loops: in one, the float64 sum beside the float32
# arithmetic kept LLVM from vectorising the exponentials (measured 1.3x slower at V=1024).
def _exp_shifted_f32(x, shift, out, width):
    for j in range(width):
        out[j] = exp_f32(x[j] - shift)
    total = 0.0
    for j in range(width):
        total += out[j]
    return total


def _exp_shifted_f64(x, shift, out, width):
    total = 0.0
    for j in range(width):
        e = math.exp(x[j] - shift)
        out[j] = e
        total += e
    return total


def _exp_affine_f32(x, shift, gain, bias, out, width):
    for j in range(width):
        out[j] = gain * exp_f32(x[j] - shift) + bias


def _exp_affine_f64(x, shift, gain, bias, out, width):
    for j in range(width):
        out[j] = gain * math.exp(x[j] - shift) + bias


# Both are inlined where they are called (Numba IR inlining): as calls, passing the arrays cost
# ~10 ns per row, a quarter of a 65-wide softmax row's time (row_max likewise). Numba's inliner
# emits pedantic warnings when one function inlines either at two sites, so callers keep one.
@overload(exp_shifted_affine, jit_options={"fastmath": FASTMATH, "error_model": "numpy"},
          inline="always")
def _exp_affine_typed(x, shift, gain, bias, out, width):
    return _exp_affine_f32 if x.dtype == types.float32 else _exp_affine_f64


@overload(exp_shifted, jit_options={"fastmath": FASTMATH, "error_model": "numpy"}, inline="always")
def _exp_shifted_typed(x, shift, out, width):
    return _exp_shifted_f32 if x.dtype == types.float32 else _exp_shifted_f64


@njit(cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def row_max(x, width):
    """max(x[:width]) for width >= 1. Eight independent running maxima: a single chain of
    `max` can't be vectorised without assuming no NaNs, and runs 4x slower (measured)."""
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = x[0]
    n8 = width - width % 8
    for j in range(0, n8, 8):
        m0, m1, m2, m3 = max(m0, x[j]), max(m1, x[j + 1]), max(m2, x[j + 2]), max(m3, x[j + 3])
        m4, m5, m6, m7 = max(m4, x[j + 4]), max(m5, x[j + 5]), max(m6, x[j + 6]), max(m7, x[j + 7])
    m = max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))
    for j in range(n8, width):
        m = max(m, x[j])
    return m
