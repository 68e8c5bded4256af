"""Launch plumbing shared by the CUDA kernels: how a CuPy array reaches a Numba kernel, on which
stream, with how many threads.

- A CuPy array is passed as a Numba device array made from its `__cuda_array_interface__`, without
  the interface's synchronisation (Numba would otherwise wait for the stream on every launch: a
  host sync per kernel), and the kernel runs on CuPy's current stream, so that kernels and CuPy's
  own operations stay ordered without waiting.
- Under Numba's CUDA simulator there is no device: device memory is host memory, so the interface's
  pointer is viewed as a NumPy array and the kernel runs on it in place. Only the simulator path
  touches NumPy; the simulator runs every thread as a Python thread, so its blocks are kept small.
- `launch(kernel, blocks, threads, *args)` is the one place a kernel is started; it counts.
- One launch never gets two arguments over the same memory: the simulator copies each argument in
  and back out, so the last copy written back would win.

Kernels accumulate in float32 registers unless the comment says otherwise (float64 on a GPU costs
32-64x on consumer parts); inputs are float32 or float64 and each kernel is compiled per dtype.
"""
import ctypes

from numba import config, cuda

from ...backend import xp_for

__all__ = ["SIMULATOR", "THREADS", "MAX_BLOCKS", "launch", "launch_count", "floats", "blocks_for",
           "grid_for", "block_sum", "cupy"]

SIMULATOR = bool(config.ENABLE_CUDASIM)
THREADS = 8 if SIMULATOR else 256       # threads per block for row-parallel kernels
# grid-stride kernels cap their grid: 1024 x 256 threads fill an H100 (132 SMs x 2048 threads);
# under the simulator 2 blocks, so that small tests still take the stride loop
MAX_BLOCKS = 2 if SIMULATOR else 1024
_launches = 0


def cupy():
    """The cupy module (loaded by the backend, which checks that a GPU answers)."""
    return xp_for("cuda")


def launch_count():
    """How many CUDA kernels this library has launched so far."""
    return _launches


def floats(*arrays):
    """True when every array is float32 or float64 (the kernels' dtypes) and they agree."""
    dt = arrays[0].dtype
    return dt.kind == "f" and dt.itemsize in (4, 8) and all(a.dtype == dt for a in arrays)


def blocks_for(n, threads=None):
    return max(1, -(-n // (threads or THREADS)))


def grid_for(n):
    """Blocks for a grid-stride loop over n elements: enough to cover them, at most MAX_BLOCKS."""
    return min(blocks_for(n), MAX_BLOCKS)


@cuda.jit(device=True)
def block_sum(partial, value):
    """The sum of `value` over the block's threads (every thread gets it)."""
    t = cuda.threadIdx.x
    partial[t] = value
    cuda.syncthreads()
    step = THREADS // 2
    while step > 0:
        if t < step:
            partial[t] += partial[t + step]
        cuda.syncthreads()
        step //= 2
    total = partial[0]
    cuda.syncthreads()          # partial is reused by the next reduction
    return total


def _host_view(a):
    """The NumPy array over the memory behind `a`'s CUDA array interface (simulator only)."""
    import numpy as np
    cai = a.__cuda_array_interface__
    dtype, shape = np.dtype(cai["typestr"]), tuple(cai["shape"])
    strides = cai.get("strides") or None
    size = 1
    for n in shape:
        size *= n
    if size == 0:
        return np.empty(shape, dtype)
    if strides is None:
        extent = size * dtype.itemsize
    else:
        extent = dtype.itemsize + sum((n - 1) * abs(s) for n, s in zip(shape, strides))
    buf = (ctypes.c_byte * extent).from_address(cai["data"][0])
    return np.ndarray(shape, dtype, buffer=buf, strides=strides)


def _device_arg(a):
    if not hasattr(a, "__cuda_array_interface__"):
        return a                                  # scalars
    if SIMULATOR:
        view = _host_view(a)
        if view.flags.c_contiguous or view.flags.f_contiguous:
            return view
        # the simulator cannot copy a strided view (a transpose, a slice of slots) in and out:
        # handed over as a simulated device array, the kernel reads and writes it in place
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
        return FakeCUDAArray(view)
    return cuda.as_cuda_array(a, sync=False)


def launch(kernel, blocks, threads, *args):
    """Start `kernel` with `blocks` x `threads` on CuPy's current stream (no host sync)."""
    global _launches
    _launches += 1
    args = [_device_arg(a) for a in args]
    if SIMULATOR:
        kernel[blocks, threads](*args)
    else:
        stream = cuda.external_stream(cupy().cuda.get_current_stream().ptr)
        kernel[blocks, threads, stream](*args)
