"""CUDA GELU (exact and tanh), the squared ReLU and SwiGLU against ops/activation.py's references
(tests/cuda/cuda_parity.py); then the references themselves on the device: the array erfc is
accurate, and exact GELU costs ~60 array launches, not the ~240 of the old series.

Sizes are 1, odd, one past the simulator's grid stride (2 blocks of THREADS) and several strides,
in 1-3 dimensions, at scales 1, 4 (the erf tail) and 1e4, with NaN and -inf (NaN out, as the
reference gives; for the squared ReLU exact zeros too, +0.0 and -0.0).
"""
import math

import numpy as np
import pytest

import standin
import tinygrad_llm as tl
from cuda_parity import SIZES, THREADS, check, down, up, x
from tinygrad_llm import kernels
from tinygrad_llm.ops.activation import Relu2Op, SwigluOp, erf, erfc, gelu_forward, relu2_backward

SHAPES = [(1,), (SIZES[1],), (2 * THREADS + 1,), (2, SIZES[3]), (2, 3, 5)]


def _inputs(rng, dtype):
    for shape in SHAPES:
        for scale in (1.0, 4.0, 1e4):
            yield x(rng, shape, dtype, scale)
    special = x(rng, (7,), dtype)
    special[[1, 4]] = np.nan, -np.inf
    yield special


def _gelu_forward(rng, dtype):
    for a in _inputs(rng, dtype):
        for approximate in ("none", "tanh"):
            yield a, approximate


def _gelu_backward(rng, dtype):
    for a, approximate in _gelu_forward(rng, dtype):
        yield x(rng, a.shape, dtype), a, approximate


def _relu2_forward(rng, dtype):
    for a in _inputs(rng, dtype):
        a.reshape(-1)[:2] = [0.0, -0.0][:a.size]
        yield (a,)


def _relu2_backward(rng, dtype):
    for (a,) in _relu2_forward(rng, dtype):
        yield x(rng, a.shape, dtype), a


def _swiglu_forward(rng, dtype):
    for gate in _inputs(rng, dtype):
        yield gate, x(rng, gate.shape, dtype)


def _swiglu_backward(rng, dtype):
    for gate, u in _swiglu_forward(rng, dtype):
        yield x(rng, gate.shape, dtype), gate, u


CASES = {
    "gelu_forward": _gelu_forward,
    "gelu_backward": _gelu_backward,
    "relu2_forward": _relu2_forward,
    "relu2_backward": _relu2_backward,
    "swiglu_forward": _swiglu_forward,
    "swiglu_backward": _swiglu_backward,
}


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")   # -inf * 0 = NaN, as meant
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_reference(name, dtype):
    check(name, CASES[name], dtype)


def test_strided_input_is_made_contiguous():
    a = x(np.random.default_rng(1), (5, 3), np.float32)
    with tl.use_kernels(True):
        got = gelu_forward(up(a).T, "none")
    assert kernels.ran("gelu_forward") == "cuda"
    np.testing.assert_allclose(down(got), kernels.reference("gelu_forward")(a.T, "none"),
                               rtol=1e-6, atol=1e-7)


def test_relu2_strided_inputs_are_made_contiguous():
    rng = np.random.default_rng(1)
    a, dy = x(rng, (5, 6), np.float32), x(rng, (3, 5), np.float32)
    with tl.use_kernels(True):
        got = relu2_backward(up(dy), up(a).T[::2])
    assert kernels.ran("relu2_backward") == "cuda"
    np.testing.assert_array_equal(down(got), kernels.reference("relu2_backward")(dy, a.T[::2]))


def test_relu2_op_matches_the_composition_and_gradchecks():
    """Relu2Op (F.relu2, the mlp="relu2" activation) gives max(x, 0)^2 and its gradient
    2 max(x, 0) dy bit for bit on the device (both are exact products); its CUDA kernels pass
    gradcheck in float64 (values away from 0, as the relu checks keep them)."""
    rng = np.random.default_rng(4)
    a = rng.choice([-1.0, 1.0], (3, 5)) * rng.uniform(0.2, 1.5, (3, 5))
    dy = x(rng, (3, 5), np.float64)
    xd = tl.Tensor(a, requires_grad=True, device="cuda")
    with tl.use_kernels(True):
        y = Relu2Op.apply(xd)
        assert kernels.ran("relu2_forward") == "cuda"
        y.backward(up(dy))
        assert kernels.ran("relu2_backward") == "cuda"
        np.testing.assert_array_equal(down(y.data), np.maximum(a, 0) ** 2)
        np.testing.assert_array_equal(down(xd.grad.data), 2 * np.maximum(a, 0) * dy)
        assert tl.gradcheck(lambda t: Relu2Op.apply(t), tl.Tensor(a, requires_grad=True,
                                                                   device="cuda"))


def test_swiglu_op_matches_the_composition_and_gradchecks():
    """SwigluOp (nn.SwiGLU's activation) is silu(gate) * up, bit for bit on the CPU; on the
    device its kernels pass gradcheck in float64."""
    rng = np.random.default_rng(2)
    g, u = (tl.Tensor(x(rng, (3, 5), np.float64), requires_grad=True) for _ in range(2))
    fused = SwigluOp.apply(g, u)
    composed = g.silu() * u
    np.testing.assert_array_equal(fused.numpy(), composed.numpy())
    gd, ud = (tl.Tensor(t.numpy(), requires_grad=True, device="cuda") for t in (g, u))
    with tl.use_kernels(True):
        assert tl.gradcheck(lambda a, b: SwigluOp.apply(a, b), gd, ud)
        assert kernels.ran("swiglu_backward") == "cuda"


# ---- the references on the device ---------------------------------------------------------------
def test_array_erfc_is_accurate():
    z = np.concatenate([np.linspace(-7.0, 7.0, 2801), [0.0, 1e-300, -1e-9, 26.0, 30.0]])
    want_erfc = np.array([math.erfc(v) for v in z])
    assert np.all(np.abs(erfc(z) - want_erfc) <= 1e-14 * want_erfc)
    assert np.abs(erf(z) - np.array([math.erf(v) for v in z])).max() <= 1e-14
    np.testing.assert_array_equal(erfc(np.array([np.inf, -np.inf])), [0.0, 2.0])
    assert np.isnan(erfc(np.array([np.nan])))[0]
    assert erfc(np.float32([0.5, -3.0])).dtype == np.float32


@pytest.mark.skipif(standin.HAS_GPU, reason="array launches are counted by the stand-in")
def test_exact_gelu_reference_is_a_few_dozen_launches():
    a = up(x(np.random.default_rng(3), (4, 8), np.float32))
    with standin.measure() as fwd:
        y = kernels.reference("gelu_forward")(a, "none")
    with standin.measure() as bwd:
        kernels.reference("gelu_backward")(a, a, "none")
    assert y.dtype == np.float32 and fwd.upcasts == bwd.upcasts == 0
    assert fwd.syncs == bwd.syncs == 0
    assert fwd.launches <= 60 and bwd.launches <= 66, (fwd.launches, bwd.launches)   # were 241, 247
