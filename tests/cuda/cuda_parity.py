"""Parity of the CUDA kernels against their readable references, shared by tests/cuda/test_*.py.

Each family file defines CASES = {kernel name: maker(rng, dtype) yielding host argument tuples}
and calls `check(name, maker, dtype)`. The arguments are uploaded to the device (a real GPU when
one is present, else the CuPy stand-in with the kernels running under Numba's CUDA simulator), the
dispatching function runs there and must take the CUDA kernel, and every result is compared with
the reference run on the host copies. Under the simulator each block costs tens of milliseconds,
so the sizes stay small: 1, odd sizes, one past a tile (THREADS), large magnitudes.
"""
import numpy as np

import tinygrad_llm as tl
from tinygrad_llm import backend, kernels
from tinygrad_llm.kernels.cuda._common import THREADS

TOLERANCE = {np.float64: 1e-10, np.float32: 2e-5}
SIZES = [1, 3, THREADS + 1, 2 * THREADS + 3]    # 1, odd, one past a block, two blocks and a bit


def x(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def dispatcher(name):
    """The dispatching function of kernel `name` (what the ops call)."""
    import importlib
    for module in ("activation", "attention", "embedding", "norm", "softmax", "rope"):
        mod = importlib.import_module(f"tinygrad_llm.ops.{module}")
        for value in vars(mod).values():
            if getattr(value, "kernel_name", None) == name:
                return value
    for module in ("tinygrad_llm.optim.adam", "tinygrad_llm.optim.lion",
                   "tinygrad_llm.optim.sgd", "tinygrad_llm.quant.linear",
                   "tinygrad_llm.generate.decode_step", "tinygrad_llm.ops.activation",
                   "tinygrad_llm.random"):
        mod = importlib.import_module(module)
        for value in vars(mod).values():
            if getattr(value, "kernel_name", None) == name:
                return value
    raise KeyError(f"no dispatching function for kernel {name!r}")


def up(a):
    return backend.to_device(a, "cuda") if isinstance(a, np.ndarray) else a


def down(a):
    return backend.to_numpy(a) if hasattr(a, "__cuda_array_interface__") else a


def assert_close(name, got, want, dtype, scale_of=None, tolerance=None):
    if want is None:
        assert got is None, f"{name}: expected None"
        return
    got = down(got)
    want = np.asarray(want)
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype}, reference {want.dtype}"
    assert got.shape == want.shape, f"{name}: shape {got.shape}, reference {want.shape}"
    if not want.size:
        return
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan), f"{name}: NaNs where the reference has none"
    finite = ~nan
    scale = max(float(np.abs(want[finite]).max(initial=0.0)), 1.0) * (scale_of or 1.0)
    tol = (tolerance or TOLERANCE[dtype]) * scale
    err = float(np.abs(got[finite].astype(np.float64) - want[finite]).max(initial=0.0))
    assert err <= tol, f"{name}: max error {err:.3g} > {tol:.3g}"


def check(name, maker, dtype, min_cases=3, **tol):
    """Run every case of `maker` on the device and on the host reference; compare.
    `scale_of` may be a function of a case's arguments (a per-case condition factor)."""
    rng = np.random.default_rng(0)
    fast, reference = dispatcher(name), kernels.reference(name)
    n = 0
    scale_of = tol.pop("scale_of", None)
    for args in maker(rng, dtype):
        tol["scale_of"] = scale_of(*args) if callable(scale_of) else scale_of
        want = reference(*[a.copy() if isinstance(a, np.ndarray) else a for a in args])
        with tl.use_kernels(True):
            got = fast(*[up(a) for a in args])
        assert kernels.ran(name) == "cuda", f"{name} did not take the CUDA kernel"
        for g, w in zip(got if isinstance(got, tuple) else (got,),
                        want if isinstance(want, tuple) else (want,)):
            assert_close(name, g, w, dtype, **tol)
        n += 1
    assert n >= min_cases
