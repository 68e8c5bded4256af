"""Property tests over random shapes: broadcasting gradients, unbroadcast, batched matmul and
reductions. Shapes have up to 4 dims of sizes 1-3, with size-1 and missing leading dims mixed in.
"""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygrad_llm as tl

SETTINGS = settings(max_examples=30, deadline=None)


@st.composite
def broadcastable_to(draw, shape):
    """A shape that broadcasts to `shape`: a suffix of it, with some dims replaced by 1."""
    n = draw(st.integers(0, len(shape)))
    return tuple(draw(st.sampled_from([d, 1])) for d in shape[len(shape) - n:])


shapes = st.lists(st.integers(1, 3), min_size=0, max_size=4).map(tuple)


@st.composite
def broadcast_pair(draw):
    out = draw(shapes)
    return draw(broadcastable_to(out)), draw(broadcastable_to(out))


def values(shape, seed, away_from_zero=False):
    rng = np.random.default_rng(seed)
    if away_from_zero:        # |b| is differentiated: keep it off the kink at 0
        return rng.uniform(0.3, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
    return rng.standard_normal(shape)


@SETTINGS
@given(broadcast_pair(), st.integers(0, 2 ** 16))
def test_broadcasting_gradients(pair, seed):
    a_shape, b_shape = pair
    a = tl.Tensor(values(a_shape, seed), requires_grad=True)
    b = tl.Tensor(values(b_shape, seed + 1, away_from_zero=True), requires_grad=True)

    def f(a, b):
        return a * b + a / (b.abs() + 1.0) - (b - a) ** 2

    assert f(a, b).shape == np.broadcast_shapes(a_shape, b_shape)
    assert tl.gradcheck(f, a, b)
    assert a.grad.shape == a_shape and b.grad.shape == b_shape


def summed_broadcast(grad, shape):
    """Oracle: element i of `shape` gets the sum of every grad element it was broadcast to."""
    size = int(np.prod(shape))
    source = np.broadcast_to(np.arange(size).reshape(shape), grad.shape)
    return np.bincount(source.ravel(), weights=grad.ravel(), minlength=size).reshape(shape)


@SETTINGS
@given(st.data())
def test_unbroadcast_sums_the_explicit_broadcast(data):
    grad_shape = data.draw(shapes)
    shape = data.draw(broadcastable_to(grad_shape))
    grad = values(grad_shape, data.draw(st.integers(0, 2 ** 16)))
    out = tl.unbroadcast(grad, shape)
    assert out.shape == shape
    np.testing.assert_allclose(out, summed_broadcast(grad, shape), rtol=1e-12, atol=1e-12)


@SETTINGS
@given(st.data())
def test_batched_matmul_gradients(data):
    batch = data.draw(st.lists(st.integers(1, 3), max_size=2).map(tuple))
    m, k, n = (data.draw(st.integers(1, 3)) for _ in range(3))
    a_shape = data.draw(broadcastable_to(batch)) + (m, k)
    b_shape = data.draw(broadcastable_to(batch)) + (k, n)
    seed = data.draw(st.integers(0, 2 ** 16))
    a = tl.Tensor(values(a_shape, seed), requires_grad=True)
    b = tl.Tensor(values(b_shape, seed + 1), requires_grad=True)
    assert (a @ b).shape == np.broadcast_shapes(a_shape[:-2], b_shape[:-2]) + (m, n)
    assert tl.gradcheck(lambda a, b: a @ b, a, b)
    assert a.grad.shape == a_shape and b.grad.shape == b_shape


@SETTINGS
@given(st.data())
def test_reduction_gradients_over_random_axes(data):
    shape = data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=4).map(tuple))
    axes = data.draw(st.lists(st.integers(-len(shape), len(shape) - 1), min_size=1,
                              max_size=len(shape), unique_by=lambda a: a % len(shape)))
    axis = axes[0] if len(axes) == 1 else tuple(axes)
    keepdims = data.draw(st.booleans())
    x = tl.Tensor(values(shape, data.draw(st.integers(0, 2 ** 16))), requires_grad=True)

    def f(x):
        return (x.sum(axis=axis, keepdims=keepdims) + x.mean(axis=axis, keepdims=keepdims)
                + x.var(axis=axis, keepdims=keepdims))

    expected = np.sum(x.numpy(), axis=axis, keepdims=keepdims).shape
    assert f(x).shape == expected
    assert tl.gradcheck(f, x)
