"""The squared ReLU as one op (Relu2Op, F.relu2) against the composition it replaced,
`r = x.relu(); r * r`, its oracle (STYLE.md: a composite that becomes hot gets its own op, and the
composition becomes that op's test). Kernel parity is in test_kernels.py and
tests/cuda/test_cuda_activation.py, the finite-difference checks in test_gradcheck_ops.py; here:
values and gradients equal the composition's on every device and implementation, through
nn.MLP's activation table too, float32 stays float32, and the kink at 0 behaves.
"""
import numpy as np
import pytest

import tinygrad_llm as tl
import tinygrad_llm.nn as nn
import tinygrad_llm.nn.functional as F
from tinygrad_llm import backend, kernels
from tinygrad_llm.ops.activation import Relu2Op


def _composition(x):
    r = x.relu()
    return r * r


def _value_and_grad(fn, a, dy, device):
    x = tl.Tensor(a, requires_grad=True, device=device)
    y = fn(x)
    y.backward(backend.to_device(dy, device))
    return y.numpy(), x.grad.numpy()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_relu2_equals_the_composition(dtype, impl, device):
    """Same values and gradients as relu then a product, bit for bit: both compute r * r and
    2 r dy with one rounding each (the composition's backward, dy r + dy r, is exact too). The
    shape is odd, with exact zeros of both signs; the inputs' dtype is kept."""
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((3, 17, 5)) * 3).astype(dtype)
    a[0, 0, :2] = 0.0, -0.0
    dy = rng.standard_normal(a.shape).astype(dtype)
    with kernels.trace() as log:
        y, dx = _value_and_grad(F.relu2, a, dy, device)
    want_y, want_dx = _value_and_grad(_composition, a, dy, device)
    assert y.dtype == dx.dtype == dtype
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(dx, want_dx)
    linear_bias = ("add_bias", "bias_grad")                 # the Linear layers' bias kernels
    assert [name for name, _ in log if name not in linear_bias] == ["relu2_forward",
                                                                    "relu2_backward"]
    want_impl = {"reference": "reference", "fast": device}[impl]
    assert {label for _, label in log} == {want_impl}


def test_relu2_saves_only_its_input():
    x = tl.Tensor(np.arange(-2.0, 3.0), requires_grad=True)
    y = Relu2Op.apply(x)
    saved = y.grad_fn.saved
    assert len(saved) == 1 and saved[0] is x.data


def test_relu2_at_and_near_zero():
    """max(x, 0)^2 is C^1: its derivative 2 max(x, 0) is 0 from both sides at x = 0 (+0.0 and
    -0.0 alike), so the gradient there is exactly 0 and tiny inputs get 2x. A central difference
    straddling 0 sees (h^2 - 0) / 2h = h / 2 instead of 0, within gradcheck's atol, so the check
    holds even at and next to the kink, unlike relu's (whose derivative jumps there)."""
    a = np.array([0.0, -0.0, 1e-7, -1e-7, 1e-3, -1e-3, 5e-7, -5e-7])
    dy = np.linspace(0.5, 2.0, a.size)
    for enabled in (False, True):
        with tl.use_kernels(enabled):
            y, dx = _value_and_grad(F.relu2, a, dy, "cpu")
            np.testing.assert_array_equal(y, np.maximum(a, 0) ** 2)
            np.testing.assert_array_equal(dx, 2 * np.maximum(a, 0) * dy)
            assert (dx[[0, 1, 3, 5, 7]] == 0).all() and (y[[0, 1, 3, 5, 7]] == 0).all()
            assert tl.gradcheck(F.relu2, tl.Tensor(a, requires_grad=True))


def test_mlp_relu2_is_the_fused_op_and_equals_the_composition():
    """nn.MLP(activation="relu2") computes down(max(up(x), 0)^2) with Relu2Op: its output and
    every gradient equal the composition's to float32 rounding (the fused op is exact, so only
    the matmuls' summation order could differ), and the trace shows the op's kernels."""
    assert nn.layers.ACTIVATIONS["relu2"] is F.relu2
    rng = np.random.default_rng(1)
    mlp = nn.MLP(8, 32, activation="relu2")
    x = tl.Tensor(rng.standard_normal((2, 5, 8)).astype(np.float32), requires_grad=True)
    dy = rng.standard_normal((2, 5, 8)).astype(np.float32)
    with kernels.trace() as log:
        y = mlp(x)
        y.backward(dy)
    got = [y.numpy()] + [t.grad.numpy() for t in (x, mlp.up.weight, mlp.down.weight)]
    linear_bias = ("add_bias", "bias_grad")                 # the Linear layers' bias kernels
    assert [name for name, _ in log if name not in linear_bias] == ["relu2_forward",
                                                                    "relu2_backward"]
    for t in (x, *mlp.parameters()):
        t.grad = None
    y = mlp.down(_composition(mlp.up(x)))
    y.backward(dy)
    want = [y.numpy()] + [t.grad.numpy() for t in (x, mlp.up.weight, mlp.down.weight)]
    for g, w in zip(got, want):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6 * np.abs(w).max())
