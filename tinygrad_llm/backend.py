"""Devices and array modules: the one place that knows about NumPy versus CuPy.

Reading order: device names -> array_module (which `xp` an op uses) -> transfers -> random
generators -> the TF32 switch. Every other module asks this one; only this file imports cupy
(lazily, so that a machine without a GPU never pays for it or fails on it).
"""
import contextlib
import os

import numpy as np

__all__ = ["DeviceUnavailable", "DEVICES", "default_device", "check_device", "array_module",
           "device_of", "xp_for", "reads_are_free", "to_device", "to_numpy", "scatter_add", "rng",
           "generator", "manual_seed", "get_rng_state", "set_rng_state", "nccl", "allow_tf32",
           "tf32_allowed"]

DEVICES = ("cpu", "cuda")
_CUDA_HINT = ("install CuPy with the extra that matches your CUDA toolkit: "
              "pip install 'tinygrad_llm[cuda12]' or 'tinygrad_llm[cuda13]'")
_cupy = None          # the cupy module once a "cuda" tensor has been asked for
_tf32 = None          # allow_tf32's setting; None: never set, CuPy's own default stands


class DeviceUnavailable(RuntimeError):
    """Device "cuda" was asked for and cannot be used (no CuPy, no driver, no GPU)."""


def _load_cupy():
    """Import CuPy on first use and check that a GPU answers; raise a clear error otherwise."""
    global _cupy
    if _cupy is None:
        try:
            import cupy
        except ImportError as e:
            raise DeviceUnavailable(
                f"device 'cuda' needs CuPy, which is not installed: {_CUDA_HINT}") from e
        try:
            n = cupy.cuda.runtime.getDeviceCount()
        except Exception as e:      # CUDA driver missing or broken: say so, don't crash later
            raise DeviceUnavailable(
                f"device 'cuda' asked for, but CuPy finds no usable GPU ({e})") from e
        if n == 0:
            raise DeviceUnavailable("device 'cuda' asked for, but CuPy finds no GPU on this "
                                    "machine")
        _cupy = cupy
        if _tf32 is not None:
            _set_tf32(cupy, _tf32)
    return _cupy


def default_device():
    """The device new tensors go to: $TINYGRAD_LLM_DEVICE, else "cpu"."""
    return check_device(os.environ.get("TINYGRAD_LLM_DEVICE", "cpu"))


def check_device(device):
    """Normalise a device name ("cpu", "cuda", "cuda:0") and make sure it can be used."""
    if device is None:
        return default_device()
    name = str(device).split(":")[0]
    if name not in DEVICES:
        raise ValueError(f"device: expected one of {DEVICES}, got {device!r}")
    if name == "cuda":
        _load_cupy()
    return name


def xp_for(device):
    """The array module (numpy or cupy) that holds arrays on `device`."""
    return np if device == "cpu" else _load_cupy()


def _is_device_array(x):
    """A GPU array (CuPy's, or anything exposing the CUDA array interface); NumPy's scalars and
    Python numbers are host values that mix with either device."""
    return not isinstance(x, (np.ndarray, np.generic)) and hasattr(x, "__cuda_array_interface__")


def array_module(x):
    """numpy for a NumPy array (or scalar), cupy for a CuPy array: the `xp` an op computes with."""
    return _load_cupy() if _is_device_array(x) else np


def device_of(x):
    """"cpu" or "cuda" for an array."""
    return "cuda" if _is_device_array(x) else "cpu"


def reads_are_free(device):
    """Whether reading a device value on the host costs nothing: true on the CPU; on a GPU a read
    waits for every queued kernel (a sync). Code whose shapes depend on data (MoE routing) picks
    between exact host-sized work and static shapes with this, not with a device name."""
    return device == "cpu"


def _reset_cuda():
    """Forget the loaded cupy module and the GPU generator (the tests swap CuPy for a stand-in)."""
    global _cupy
    _cupy = None
    _rngs.pop("cuda", None)


def to_device(x, device, dtype=None):
    """Array `x` on `device` (a no-op when it is already there), optionally cast to `dtype`
    (on the device: a float32 array is never sent as float64). Lists and numbers become arrays."""
    if not hasattr(x, "shape"):
        x = np.asarray(x)
    if device_of(x) != device:
        x = _load_cupy().asnumpy(x) if device == "cpu" else _load_cupy().asarray(x)
    return x if dtype is None or x.dtype == dtype else x.astype(dtype)


def to_numpy(x):
    """A NumPy array with the contents of `x`, wherever `x` lives."""
    return to_device(x, "cpu")


# ---- random numbers: seeded generators per device (resume and CPU/GPU parity rely on them) -----
# Two kinds, both reseeded by manual_seed. `generator(device)`: the counter-based Philox stream
# (random.py) behind dropout and sampling; its state is two ints, and the same state draws the
# same numbers on every device. `rng(device)`: NumPy's (or CuPy's) default_rng, which weight
# initialisation draws from on the host, once, before training; checkpoints don't need it.
_rngs = {}            # device -> numpy / cupy Generator
_generators = {}      # device -> random.Generator (Philox)
_seed = 0


def rng(device="cpu"):
    """The seeded NumPy / CuPy generator of `device` (weight initialisation, tl.randn)."""
    g = _rngs.get(device)
    if g is None:
        g = _rngs[device] = xp_for(device).random.default_rng(_seed)
    return g


def generator(device="cpu"):
    """The device's Philox generator (tinygrad_llm.random.Generator), seeded by manual_seed:
    every device starts from the same (seed, offset 0), so the same draws give the same bits."""
    g = _generators.get(device)
    if g is None:
        # random.py sits above this module (it dispatches to a kernel): imported on first use
        from .random import Generator
        g = _generators[device] = Generator(device, _seed)
    return g


def manual_seed(seed):
    """Reseed every device's generators, as torch.manual_seed does."""
    global _seed
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) \
            or not 0 <= seed < 2 ** 64:
        raise ValueError(f"seed: expected an int in [0, 2**64), got {seed!r}")
    _seed = int(seed)
    _rngs.clear()
    _generators.clear()


def get_rng_state(device="cpu"):
    """[seed, offset] of `device`'s Philox generator: two ints, JSON-able (for checkpoints)."""
    return list(generator(device).get_state())


def set_rng_state(state, device="cpu"):
    """Resume `device`'s Philox generator from get_rng_state()'s pair (saved on any device)."""
    generator(device).set_state(state)


def scatter_add(out, index, values):
    """out[index] += values, adding repeated indices once each (np.add.at / cupyx.scatter_add)."""
    if device_of(out) == "cpu":
        np.add.at(out, index, values)
    else:
        import cupyx
        cupyx.scatter_add(out, index, values)


def nccl():
    """CuPy's NCCL bindings (cupy.cuda.nccl), for data parallelism across GPUs
    (distributed/comm.py); DeviceUnavailable when CuPy or its NCCL library is missing."""
    _load_cupy()
    try:
        from cupy.cuda import nccl as module
    except ImportError as e:
        raise DeviceUnavailable(f"the nccl backend needs CuPy's NCCL bindings ({e}): pip install "
                                "nvidia-nccl-cu12 (or -cu13) next to the cuda extra") from e
    if not getattr(module, "available", True):
        raise DeviceUnavailable("CuPy finds no NCCL library: pip install nvidia-nccl-cu12 (or "
                                "-cu13) next to the cuda extra")
    return module


# ---- TF32: float32 matmuls on tensor cores ----------------------------------------------------
# TF32 (Ampere and newer) rounds a float32 GEMM's inputs to 10 mantissa bits and accumulates in
# float32: ~8x the float32 GEMM rate, with errors ~1e-3 relative instead of ~1e-6. Off by default,
# as in PyTorch since 1.12; the switch is an opt-in, like use_kernels.
def _set_tf32(cupy, enabled):
    """CuPy's switch: the cuBLAS compute type of float32 products. Its CUPY_TF32 environment
    variable sets the same thing, but only when read at the first float32 product; this call
    takes effect at any time. (On a GPU older than Ampere, CuPy warns and keeps float32.)"""
    modes = cupy._core._routines_linalg
    cupy._core.set_compute_type(np.float32, modes.COMPUTE_TYPE_TF32 if enabled
                                else modes.COMPUTE_TYPE_DEFAULT)


def allow_tf32(enabled=True):
    """Let cuBLAS run float32 matrix products on TF32 tensor cores (True) or not (False). Applies
    now if CuPy is loaded, else when it loads; a no-op on the CPU, whose BLAS has no TF32 (and on
    a machine without CuPy). Also usable as `with allow_tf32(True): ...`, which restores the
    previous setting on exit."""
    global _tf32
    previous, _tf32 = _tf32, bool(enabled)
    if _cupy is not None:
        _set_tf32(_cupy, _tf32)

    @contextlib.contextmanager
    def restore():
        global _tf32
        try:
            yield
        finally:
            _tf32 = previous
            if _cupy is not None:
                _set_tf32(_cupy, bool(previous))
    return restore()


def tf32_allowed():
    """True after allow_tf32(True): float32 products may use TF32 on a GPU that has it."""
    return bool(_tf32)
