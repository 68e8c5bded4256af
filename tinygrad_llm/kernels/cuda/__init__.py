"""CUDA kernels, written with Numba's CUDA target and launched on CuPy arrays. Importing this
package registers every fast implementation for device "cuda"; the kernel registry does so on the
first dispatch to a CuPy array.

One file per fused family, named as in kernels/cpu/ and ops/. Each kernel reads and writes CuPy
arrays in place through the CUDA array interface, on CuPy's current stream, and never brings a
value back to the host. Without a GPU, CI runs them under Numba's CUDA simulator
(NUMBA_ENABLE_CUDASIM=1) on the tests' CuPy stand-in; `_common.py` holds the launch plumbing.

`launch_count()` counts the launches made so far: a GPU's per-op overhead, as thread wake-ups
are the CPU's (the tests assert per-step budgets with it).
"""
from ._common import launch_count

__all__ = ["launch_count"]

from . import (activation, attention, decode, embedding, norm, optim,  # noqa: E402,F401
               quant, random, rope, softmax)
