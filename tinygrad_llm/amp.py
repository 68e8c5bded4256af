"""Mixed precision: `autocast` runs the matrix products in float16 (or bfloat16) over float32
master weights. Dynamic loss scaling, which float16 training needs, is optim/scaler.py.

    with tl.autocast("float16"):                # the forward and the loss
        _, loss = model(x, y)
    scaler.scale(loss).backward()               # outside: backward follows the graph it recorded

Reading order: the dtype names (`resolve_dtype`, `dtype_problem`), the switch (`autocast`), the
weight-cast cache, and `linear`, the one op autocast changes.

What runs in low precision, and why only that. Under autocast, nn.Linear (every projection, the
MLP and the LM head: nearly all of a transformer's FLOPs) casts its float32 input, weight and bias
to the low dtype, multiplies there (cuBLAS uses tensor cores for float16 / bfloat16, accumulating
in float32), and casts the result back to float32. Everything else stays float32: norms, softmax,
cross-entropy and the loss (sums of many terms and exponentials, which float16's 11-bit mantissa
and 65504 ceiling would lose), the residual stream (in float16 a layer's small update to it would
round away), embeddings, and the attention core (its fused kernels, on both devices, take float32
and keep the online softmax in float32; float16 q/k/v would send it to the reference, which
builds the whole (B, H, T, T) score matrix).

Why the result goes back to float32 (PyTorch's autocast leaves it float16): every fused kernel
between two matmuls (LayerNorm/RMSNorm, GELU/SwiGLU, RoPE, attention, cross-entropy) takes
float32 or float64, and a float16 activation would send each one to its array reference (on a
GPU, dozens of launches in place of one). With one dtype outside the GEMMs, no op ever mixes
float16 and float32, so every gradient in the backward walk already has its tensor's dtype: the
casts are ordinary CastOps, and their backward casts the gradient (the float16 GEMMs run
backward in float16 too, and the weight gradient arrives at the float32 master in float32).
What it costs: each Linear makes two memory-bound cast passes each way, 6 bytes per element cast
against the GEMM's 2 C FLOPs per output. By that roofline count (an estimate, not a measurement)
the casts at n_embd 768 on an H100 take about as long as the float16 GEMMs they surround: the
pair is still several times faster than a float32 GEMM, but only level with TF32
(backend.allow_tf32, no casts); its other gain is memory (a Linear saves its input in float16).
Fusing the casts into the neighbouring kernels, once those take float16 (a norm that writes
float16, a GELU that reads it), is what removes them.

Which inputs. Only float32 ones: a float64 model (gradcheck) or one already cast to float16 runs
exactly as without autocast, so gradcheck stays float64 whatever the context.

Casting a weight once. Without autograd (evaluation, generation) a block may run the model many
times: each weight's low-precision copy is cached for the block, and made again when the weight
changes (its array is replaced, as Module.to and the optimizers' GPU packing do, or its version
counter moves, as every optimizer step and in-place edit does). While recording a graph the copy
is made per call, which is once per step per weight (each Linear weight is used once in a
forward): a cached copy shared by two graphs would be freed by the first backward.

Like grad mode and the kernel switch, the autocast state is process-wide (one thread trains).
"""
import numpy as np

from .ops import LinearOp
from .tensor import is_grad_enabled

__all__ = ["autocast", "autocast_dtype", "linear", "resolve_dtype", "dtype_problem", "DTYPES"]

DTYPES = ("float32", "float16", "bfloat16")      # the names --dtype takes


# ---- dtype names ------------------------------------------------------------------------------
def _bfloat16():
    """NumPy has no bfloat16; the ml_dtypes package provides one (and CuPy uses that one)."""
    try:
        import ml_dtypes
    except ImportError:
        raise ValueError("bfloat16 needs the ml_dtypes package, which is not installed "
                         "(NumPy has no bfloat16 type): pip install ml_dtypes") from None
    return np.dtype(ml_dtypes.bfloat16)


def resolve_dtype(dtype, device="cpu"):
    """The low-precision NumPy dtype for a name in DTYPES (or a dtype), None for float32 (no
    autocast). ValueError, in one line, for another name, or for bfloat16 where the ml_dtypes
    package or (on "cuda") CuPy's bfloat16 matrix product is missing."""
    if isinstance(dtype, str):
        if dtype == "float32":                      # the common case first: autocast off
            return None
        if dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {DTYPES}, got {dtype!r}")
        low = _bfloat16() if dtype == "bfloat16" else np.dtype(dtype)
    else:
        low = np.dtype(dtype)
    if low == np.float32:
        return None
    if low != np.float16 and low.name != "bfloat16":
        raise ValueError(f"dtype: autocast computes in float16 or bfloat16, got {low}")
    if device == "cuda" and low.name == "bfloat16":
        _check_device_matmul(low)
    return low


def _check_device_matmul(low):
    """A 2x2 product on the GPU in `low`, to turn a CuPy without bfloat16 support into one clear
    line now rather than a failure deep inside the first forward."""
    from . import backend
    xp = backend.xp_for("cuda")
    try:
        xp.ones((2, 2), dtype=low) @ xp.ones((2, 2), dtype=low)
    except Exception as e:          # CuPy's error for a dtype it has no loop for varies
        version = getattr(xp, "__version__", "?")
        raise ValueError(f"bfloat16: CuPy {version} cannot multiply bfloat16 matrices "
                         f"({type(e).__name__}: {e}); use float16") from None


def dtype_problem(dtype, device):
    """None when the examples should train or decode on `device` in `dtype`; otherwise why not,
    in one line (an unknown name, a missing package, or low precision on the CPU, where NumPy has
    no float16 BLAS: a float16 GEMM is a slow loop, measured ~100x float32's time)."""
    try:
        low = resolve_dtype(dtype, device)
    except ValueError as e:
        return str(e)
    if low is not None and device == "cpu":
        return (f"{dtype} is for device 'cuda': NumPy has no {dtype} matrix product (BLAS), so "
                "on the CPU it is ~100x slower than float32; use --dtype=float32 there")
    return None


# ---- the switch -------------------------------------------------------------------------------
_dtype = None           # the innermost autocast block's low-precision dtype; None outside
_cache = None           # id(weight) -> _Cast, the block's weight copies (made without autograd)


class autocast:
    """Context manager: inside, nn.Linear multiplies float32 inputs in `dtype` ("float16" or
    "bfloat16"; "float32" or enabled=False turns autocast off inside the block). Wrap the forward
    and the loss, not backward or the optimizer step. Blocks nest; the inner one wins."""

    def __init__(self, dtype="float16", enabled=True):
        self.dtype = resolve_dtype(dtype) if enabled else None
        self._saved = []

    def __enter__(self):
        global _dtype, _cache
        self._saved.append((_dtype, _cache))
        if self.dtype != _dtype:
            _dtype, _cache = self.dtype, ({} if self.dtype is not None else None)
        return self

    def __exit__(self, *exc):
        global _dtype, _cache
        _dtype, _cache = self._saved.pop()


def autocast_dtype():
    """The dtype matmuls run in here: float16 / bfloat16 inside autocast, None outside."""
    return _dtype


# ---- casting the weights ----------------------------------------------------------------------
class _Cast:
    """A weight's low-precision copy and what it was made from (the cache entry)."""
    __slots__ = ("weight", "source", "version", "copy")

    def __init__(self, weight, copy):
        self.weight, self.source, self.version = weight, weight.data, weight._version[0]
        self.copy = copy


def _cast(weight):
    """`weight` (a float32 Parameter) in the block's dtype: a CastOp, differentiable, while
    recording a graph; otherwise the block's cached copy, remade if the weight changed."""
    if is_grad_enabled():
        return weight.to(dtype=_dtype)
    entry = _cache.get(id(weight))
    if entry is None or entry.source is not weight.data or entry.version != weight._version[0]:
        entry = _cache[id(weight)] = _Cast(weight, weight.to(dtype=_dtype))
    return entry.copy


# ---- the one op autocast changes ----------------------------------------------------------------
def linear(x, weight, bias=None):
    """x @ weight^T + bias (nn.functional.linear) as autocast runs it: the product in the block's
    low dtype when x and weight are float32, the result float32. x: (..., in) -> (..., out)."""
    if _dtype is None or x.dtype != np.float32 or weight.dtype != np.float32:
        return LinearOp.apply(x, weight) if bias is None else LinearOp.apply(x, weight, bias)
    inputs = (x.to(dtype=_dtype), _cast(weight)) + (() if bias is None else (_cast(bias),))
    return LinearOp.apply(*inputs).to(dtype=np.float32)
