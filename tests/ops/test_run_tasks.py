"""run_tasks (kernels/cpu/_common.py): a jit_tasks loop's tasks split into contiguous ranges, one
per thread, the first run by the caller; and the loops converted to it (attention, cross-entropy,
the norms) give bit-identical results on one thread and on two.

The split tests use plain Python kernels (run_tasks calls any callable): they record which range
ran where, and a barrier proves the ranges run at once.
"""
import multiprocessing
import threading
import time
from functools import partial

import numba
import numpy as np
import pytest

from tinygrad_llm.kernels.cpu import _common, attention, norm, softmax
from tinygrad_llm.kernels.cpu._common import SERIAL_BELOW, run_tasks, task_bounds

two_threads = pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2,
                                 reason="Numba has a single thread here (NUMBA_NUM_THREADS)")


@pytest.fixture
def threads():
    """set(n): numba.set_num_threads(n) for this test; the count is restored after it."""
    before = numba.get_num_threads()
    yield numba.set_num_threads
    numba.set_num_threads(before)


@pytest.mark.parametrize("n_tasks", [0, 1, 2, 3, 7, 8, 65])
@pytest.mark.parametrize("n_threads", [1, 2, 3, 4, 16])
def test_task_bounds_are_contiguous_near_equal_ranges(n_tasks, n_threads):
    bounds = task_bounds(n_tasks, n_threads)
    assert bounds[0] == 0 and bounds[-1] == n_tasks
    assert len(bounds) - 1 == min(n_tasks, n_threads)             # no empty range
    sizes = np.diff(bounds)
    if n_tasks:
        assert sizes.min() >= 1 and sizes.max() - sizes.min() <= 1


def _recording_kernel():
    ran = []                                      # (lo, hi, thread id) of each call

    def kernel(lo, hi, out):
        ran.append((lo, hi, threading.get_ident()))
        for task in range(lo, hi):
            out[task] += task + 1
    return kernel, ran


@pytest.mark.parametrize("n_tasks, want_ranges", [
    (0, []), (1, [(0, 1)]), (2, [(0, 1), (1, 2)]), (7, [(0, 3), (3, 7)]), (65, [(0, 32), (32, 65)]),
])
@two_threads
def test_run_tasks_runs_every_task_once(threads, n_tasks, want_ranges):
    """At two threads: 0 tasks call nothing, 1 task runs in the caller (fewer tasks than
    threads), an odd count splits 3 + 4. Each task runs once, the first range in the caller."""
    threads(2)
    kernel, ran = _recording_kernel()
    out = np.zeros(n_tasks, np.int64)
    run_tasks(kernel, n_tasks, out)
    np.testing.assert_array_equal(out, np.arange(1, n_tasks + 1))
    assert sorted((lo, hi) for lo, hi, _ in ran) == want_ranges
    caller = [(lo, hi) for lo, hi, ident in ran if ident == threading.get_ident()]
    assert caller == want_ranges[:1]


def test_run_tasks_on_one_thread_is_one_call(threads):
    threads(1)
    kernel, ran = _recording_kernel()
    run_tasks(kernel, 7, np.zeros(7, np.int64))
    assert ran == [(0, 7, threading.get_ident())]


@two_threads
@pytest.mark.parametrize("work, calls", [(SERIAL_BELOW - 1, 1), (SERIAL_BELOW, 2), (None, 2)])
def test_small_work_runs_in_the_caller_alone(threads, work, calls):
    """A loop touching fewer than SERIAL_BELOW elements is not worth a worker's wake-up."""
    threads(2)
    kernel, ran = _recording_kernel()
    out = np.zeros(7, np.int64)
    run_tasks(kernel, 7, out, work=work)
    np.testing.assert_array_equal(out, np.arange(1, 8))
    assert len(ran) == calls
    assert (0, 7 if calls == 1 else 3, threading.get_ident()) in ran


@two_threads
def test_the_ranges_run_at_once(threads):
    """Each range waits at a barrier for the other: run one after the other, they would break it
    (a kernel that holds the GIL throughout would; jit_tasks loops are nogil)."""
    threads(2)
    barrier = threading.Barrier(2, timeout=10)
    run_tasks(lambda lo, hi: barrier.wait(), 2)
    assert not barrier.broken


@two_threads
def test_a_worker_exception_is_raised_in_the_caller(threads):
    threads(2)

    def kernel(lo, hi):
        if lo > 0:                                # the range a worker runs
            raise ValueError(f"task range {lo}..{hi}")
    with pytest.raises(ValueError, match="task range 1..2"):
        run_tasks(kernel, 2)


@two_threads
def test_the_caller_waits_for_the_workers_before_raising(threads):
    """The caller's own range fails at once; the worker's is still writing. run_tasks must not
    return (or raise) while a worker may still write into the caller's arrays."""
    threads(2)
    done = []

    def kernel(lo, hi):
        if lo == 0:
            raise RuntimeError("caller's range")
        time.sleep(0.2)
        done.append(lo)
    with pytest.raises(RuntimeError, match="caller's range"):
        run_tasks(kernel, 2)
    assert done == [1]


def _run_in_forked_child(queue):
    out = np.zeros(5, np.int64)
    run_tasks(lambda lo, hi, out: out.__setitem__(slice(lo, hi), 1), 5, out)
    queue.put(int(out.sum()))


@two_threads
def test_run_tasks_works_in_a_forked_child(threads):
    """The pool's threads don't survive a fork: the child starts its own (with the parent's pool
    object, its tasks would queue for threads that don't exist, and it would hang)."""
    threads(2)
    run_tasks(lambda lo, hi: None, 2)             # the parent's pool exists
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_run_in_forked_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        pytest.fail("run_tasks hung in a forked child")
    assert child.exitcode == 0 and queue.get(timeout=5) == 5


# ---- the converted kernels: the same bits on one thread and on two ------------------------------
def _x(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def _cases(rng, dtype):
    """(name, call): each call runs one converted kernel at odd sizes (odd task counts)."""
    # attention: B=3, H=3 or 6 over Hkv=3, Tq=Tk=17, D=5: 9 or 18 forward tasks, 9 backward
    for h, hkv, causal, window in [(3, 3, True, 0), (6, 3, True, 5), (3, 3, False, 4)]:
        q, do = _x(rng, (3, h, 17, 5), dtype, 3.0), _x(rng, (3, h, 17, 5), dtype)
        k, v = _x(rng, (3, hkv, 17, 5), dtype, 3.0), _x(rng, (3, hkv, 17, 5), dtype)
        o, lse = attention.attention_forward_cpu(q, k, v, None, causal, 0.4, window)
        yield "attention_forward", partial(attention.attention_forward_cpu, q, k, v, None,
                                           causal, 0.4, window)
        yield "attention_backward", partial(attention.attention_backward_cpu, do, q, k, v, o,
                                            lse, None, causal, 0.4, window)
    # packed: B=3, T=17, H=3, Hkv=1: 9 forward tasks, 3 backward
    qkv = _x(rng, (3, 17, 5, 8), dtype, 2.0)
    o, lse = attention.packed_attention_forward_cpu(qkv, 3, 1, True, 0.35, 0)
    yield "packed_attention_forward", partial(attention.packed_attention_forward_cpu, qkv, 3, 1,
                                              True, 0.35, 0)
    yield "packed_attention_backward", partial(attention.packed_attention_backward_cpu,
                                               _x(rng, o.shape, dtype), qkv, o, lse, 3, 1, True,
                                               0.35, 0)
    # cross-entropy: N=17 rows of V=65, ignored targets, label smoothing
    logits, targets = _x(rng, (17, 65), dtype, 5.0), rng.integers(0, 65, 17)
    targets[::4] = -100
    _, lse = softmax.cross_entropy_forward_cpu(logits, targets, -100, 0.1)
    yield "cross_entropy_forward", partial(softmax.cross_entropy_forward_cpu, logits, targets,
                                           -100, 0.1)
    yield "cross_entropy_backward", partial(softmax.cross_entropy_backward_cpu, _x(rng, 17, dtype),
                                            logits, targets, lse, -100, 0.1)
    # norms: N=17 rows of C=33
    x, dy = _x(rng, (17, 33), dtype), _x(rng, (17, 33), dtype)
    w, b = _x(rng, 33, dtype), _x(rng, 33, dtype)
    _, mu, r = norm.layer_norm_forward_cpu(x, w, b, 1e-5)
    _, rms_r = norm.rms_norm_forward_cpu(x, w, 1e-6)
    yield "layer_norm_forward", partial(norm.layer_norm_forward_cpu, x, w, b, 1e-5)
    yield "layer_norm_backward", partial(norm.layer_norm_backward_cpu, dy, x, w, mu, r, True)
    yield "rms_norm_forward", partial(norm.rms_norm_forward_cpu, x, w, 1e-6)
    yield "rms_norm_backward", partial(norm.rms_norm_backward_cpu, dy, x, w, rms_r)


def _bits(result):
    return [a.tobytes() for a in (result if isinstance(result, tuple) else (result,))
            if a is not None]


@two_threads
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_converted_kernels_give_the_same_bits_on_one_and_two_threads(threads, dtype,
                                                                      monkeypatch):
    monkeypatch.setattr(_common, "SERIAL_BELOW", 0)     # these small loops would run serially
    names = set()
    for name, call in _cases(np.random.default_rng(0), dtype):
        threads(1)
        one = _bits(call())
        threads(2)
        two = _bits(call())
        assert one == two, f"{name}: results differ between one thread and two"
        names.add(name)
    assert len(names) == 10
