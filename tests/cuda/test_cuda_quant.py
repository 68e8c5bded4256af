"""CUDA quant_matmul against quant/linear.py's reference (tests/cuda/cuda_parity.py), for every
scheme: one row and one token, odd sizes, quantization blocks and thread strides crossed, a few
tokens at once, large magnitudes, NaN rows; longer inputs take the reference on the device."""
import numpy as np
import pytest

import tinygrad_llm as tl
from cuda_parity import SIZES, THREADS, check, down, up, x
from tinygrad_llm import kernels
from tinygrad_llm.kernels.cuda.quant import MAX_TOKENS
from tinygrad_llm.quant.formats import SCHEMES, quantize_weight
from tinygrad_llm.quant.linear import PackedWeight, quant_matmul

# W_hat is float32 data: in float64 only the product's rounding is compared, but a GPU may fuse
# q4_1's scale * level + min into one rounding, an ulp of float32 away from the reference's W_hat
TOLERANCE = {np.float32: None, np.float64: 1e-6}


def _weight(rng, scheme, rows, cols, scale=1.0, group=32, double_quant=False):
    """A PackedWeight on the GPU (row-major fields, quant_pack's reference layout)."""
    w = x(rng, (rows, cols), np.float32, scale)
    return PackedWeight(scheme, quantize_weight(w, scheme, group, double_quant), device="cuda")


def _widths(scheme):
    """Input widths: one quantization block, then a few (int8's block is the whole row: one past
    the block's threads, two blocks of threads and a bit)."""
    return [1, SIZES[2], SIZES[3]] if scheme == "int8" else [32, 64, 96]


def _maker(scheme):
    def make(rng, dtype):
        k1, k2, k3 = _widths(scheme)
        yield x(rng, (1, k1), dtype), _weight(rng, scheme, 1, k1)          # one row, one token
        yield x(rng, (3, k3), dtype), _weight(rng, scheme, 3, k3)          # odd sizes
        yield x(rng, (5, k2), dtype), _weight(rng, scheme, 2, k2)          # a few tokens
        yield x(rng, (2, k2), dtype, 1e4), _weight(rng, scheme, 2, k2, 1e3)    # large magnitudes
        if scheme == "nf4":                                  # wider groups, double quantization
            yield x(rng, (1, 128), dtype), _weight(rng, scheme, 2, 128, group=128)
            yield x(rng, (2, 128), dtype), _weight(rng, scheme, 2, 128, group=64,
                                                   double_quant=True)
    return make


CASES = {"quant_matmul": _maker("q4_0")}        # the registry's name; every scheme runs below


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_matches_reference(scheme, dtype):
    check("quant_matmul", _maker(scheme), dtype, tolerance=TOLERANCE[dtype])


@pytest.mark.parametrize("scheme", ["q8_0", "q4_1"])
def test_nan_in_a_token_stays_in_that_token(scheme):
    def nan_rows(rng, dtype):
        a = x(rng, (3, 64), dtype)
        a[1, 37] = np.nan
        yield a, _weight(rng, scheme, 2, 64)
    check("quant_matmul", nan_rows, np.float32, min_cases=1)


def test_a_prompt_takes_the_reference_on_the_device():
    """More than MAX_TOKENS rows: the reference decodes the weight on the device (no transfer)."""
    import standin
    rng = np.random.default_rng(0)
    weight = _weight(rng, "q4_0", 3, 64)
    a = x(rng, (MAX_TOKENS + 1, 64), np.float32)
    want = quant_matmul(a, weight)                       # host x: the reference, W_hat brought over
    dev = up(a)
    with standin.measure() as c:
        got = quant_matmul(dev, weight)
    assert kernels.ran("quant_matmul") == "reference"
    if not standin.HAS_GPU:
        assert c.h2d_bytes == 0 and c.d2h_bytes == 0 and c.syncs == 0
    np.testing.assert_allclose(down(got), want, rtol=0, atol=2e-5 * np.abs(want).max())


def test_kernel_moves_nothing_to_the_host():
    import standin
    if standin.HAS_GPU:
        pytest.skip("the stand-in counts transfers")
    rng = np.random.default_rng(0)
    weight = _weight(rng, "nf4", 2, THREADS * 8)
    dev = up(x(rng, (1, THREADS * 8), np.float32))
    with tl.use_kernels(True), standin.measure() as c:
        quant_matmul(dev, weight)
    assert kernels.ran("quant_matmul") == "cuda"
    assert (c.h2d_bytes, c.d2h_bytes, c.syncs, c.upcasts) == (0, 0, 0, 0)
