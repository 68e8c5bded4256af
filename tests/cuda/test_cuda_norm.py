"""CUDA LayerNorm / RMSNorm against ops/norm.py's references (tests/cuda/cuda_parity.py)."""
import numpy as np
import pytest

from cuda_parity import SIZES, check, x
from tinygrad_llm import kernels


def _rows(rng, dtype):
    for n, c in [(1, 1), (3, SIZES[2]), (2, SIZES[3]), (4, 5)]:
        for scale in (1.0, 1e4):
            yield x(rng, (n, c), dtype, scale), x(rng, (c,), dtype)


def _layer_norm_forward(rng, dtype):
    for a, w in _rows(rng, dtype):
        yield a, w, x(rng, w.shape, dtype), 1e-5
        yield a, w, None, 1e-5


def _layer_norm_backward(rng, dtype):
    for a, w, b, eps in _layer_norm_forward(rng, dtype):
        _, mu, r = kernels.reference("layer_norm_forward")(a, w, b, eps)
        yield x(rng, a.shape, dtype), a, w, mu, r, b is not None


def _rms_norm_forward(rng, dtype):
    for a, w in _rows(rng, dtype):
        yield a, w, 1e-6


def _rms_norm_backward(rng, dtype):
    for a, w, eps in _rms_norm_forward(rng, dtype):
        _, r = kernels.reference("rms_norm_forward")(a, w, eps)
        yield x(rng, a.shape, dtype), a, w, r


CASES = {
    "layer_norm_forward": _layer_norm_forward,
    "layer_norm_backward": _layer_norm_backward,
    "rms_norm_forward": _rms_norm_forward,
    "rms_norm_backward": _rms_norm_backward,
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_reference(name, dtype):
    check(name, CASES[name], dtype)


def test_nan_in_a_row_stays_in_that_row():
    def nan_rows(rng, dtype):
        a = x(rng, (3, 5), dtype)
        a[1, 2] = np.nan
        yield a, x(rng, (5,), dtype), x(rng, (5,), dtype), 1e-5
    check("layer_norm_forward", nan_rows, np.float32, min_cases=1)
