"""tinygrad_llm: a large-language-model library written from scratch over NumPy / CuPy.

Public surface (PyTorch-shaped): Tensor and its autograd, no_grad, manual_seed, gradcheck,
cat / stack / where, constructors (zeros, ones, randn, ...), the kernel switch use_kernels,
autocast (mixed precision, amp.py).
Layers live in tinygrad_llm.nn (functional API: tinygrad_llm.nn.functional).
Importing the package sets two process-wide defaults, each unless the user set it: OpenBLAS's
spin timeout and glibc's malloc thresholds (below).
"""
import os

# NumPy's OpenBLAS workers spin for 2^28 cycles (~0.1 s) after every GEMM by default; on a 2-core
# machine they then steal the core that the next Numba kernel's worker needs (kernels/cpu/
# __init__.py handles Numba's side). 4, OpenBLAS's shortest timeout (2^4 cycles), lets them sleep
# at once: a training-shaped sequence of GEMMs and kernels took 15% less time. OpenBLAS reads it
# when NumPy is first imported, so it takes effect only when tinygrad_llm is imported before
# NumPy; otherwise set OPENBLAS_THREAD_TIMEOUT=4 in the environment.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")


def _keep_freed_memory():
    """glibc serves each allocation above 128 KiB with a fresh mmap and unmaps it when freed, so
    every activation and gradient array of every step page-faults its memory in again (the kernel
    zero-fills each 4 KiB page): a quarter or more of a small GPT's training step went there, and
    in bench_train's config b (arrays of 25-100 MB) a GELU call spent 45 ms faulting its output in
    against 6 ms of arithmetic. Every block now comes from the heap (M_MMAP_MAX 0), which is
    trimmed only when 1 GiB lies free at its top, so the next step reuses the memory: a process
    keeps up to its peak plus 1 GiB, as a caching allocator would. Left alone where the user tuned
    malloc (MALLOC_MMAP_THRESHOLD_ / MALLOC_MMAP_MAX_ / MALLOC_TRIM_THRESHOLD_), and off glibc."""
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_MMAP_MAX_",
                                     "MALLOC_TRIM_THRESHOLD_")):
        return
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_max = -1, -4
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 1 << 30)


_keep_freed_memory()

from .backend import manual_seed  # noqa: E402
from .amp import autocast  # noqa: E402
from .factory import arange, full, ones, ones_like, rand, randn, tensor, zeros, zeros_like
from .gradcheck import GradcheckError, gradcheck
from .kernels import kernels_enabled, use_kernels
from .ops import CatOp, StackOp, split
from .tensor import Tensor, enable_grad, is_grad_enabled, no_grad, unbroadcast
from . import nn

__version__ = "0.1.0"
__all__ = ["Tensor", "no_grad", "enable_grad", "is_grad_enabled", "manual_seed", "gradcheck",
           "GradcheckError", "cat", "stack", "split", "where", "use_kernels", "kernels_enabled",
           "tensor", "zeros", "ones", "full", "arange", "randn", "rand", "zeros_like", "ones_like",
           "unbroadcast", "nn", "autocast"]


def cat(tensors, axis=0):
    """Join tensors along an existing axis (shapes must match in every other axis)."""
    return CatOp.apply(*tensors, axis=axis)


def stack(tensors, axis=0):
    """Join same-shaped tensors along a new axis."""
    return StackOp.apply(*tensors, axis=axis)


def where(cond, a, b):
    """Elementwise cond ? a : b (differentiable in a and b)."""
    return nn.functional.where(cond, a, b)


# last: generate/ builds on everything above. Imported with the package so that tl.generate is
# there and its kernels (decode_step, decode_attention) are declared beside the others.
from . import generate  # noqa: E402,F401
