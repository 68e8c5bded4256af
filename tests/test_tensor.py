"""Tensor and the backward walk: gradient accumulation, graph freeing, grad mode, in-place
checks, dtypes, constructors and conversions, devices."""
import importlib

import numpy as np
import pytest

import tinygrad_llm as tl
import tinygrad_llm.nn.functional as F
from tinygrad_llm import Tensor

tensor_module = importlib.import_module("tinygrad_llm.tensor")   # tl.tensor is the factory


def leaf(a, device="cpu", dtype=np.float64):
    return Tensor(np.asarray(a, dtype=dtype), requires_grad=True, device=device)


# ---- the backward walk ------------------------------------------------------------------------
def test_grad_is_a_tensor_with_the_right_values(device):
    x = leaf([1.0, -2.0, 3.0], device)
    (x * x).sum().backward()
    assert isinstance(x.grad, Tensor)
    assert x.grad.device == device
    np.testing.assert_allclose(x.grad.numpy(), [2.0, -4.0, 6.0])


def test_gradients_accumulate_across_backward_calls(device):
    x = leaf([1.0, 2.0], device)
    (x * 3.0).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [3.0 + 2.0, 3.0 + 4.0])


def test_paths_through_a_shared_node_add_up(device):
    # z = y + y*y with y = 2x: dz/dx = 2 (1 + 2y) = 2 + 8x
    x = leaf([0.5, -1.0], device)
    y = x * 2.0
    (y + y * y).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 + 8 * np.array([0.5, -1.0]))


def test_same_tensor_as_both_operands(device):
    x = leaf([3.0], device)
    (x * x * x).backward()
    np.testing.assert_allclose(x.grad.numpy(), [27.0])


def test_backward_walks_a_deep_chain_without_recursion():
    x0 = leaf([1.0, 2.0])
    x = x0
    for _ in range(5000):
        x = x * 1.0001 + 0.0
    x.sum().backward()
    np.testing.assert_allclose(x0.grad.numpy(), [1.0001 ** 5000] * 2, rtol=1e-10)


def test_no_grad_records_nothing():
    x = leaf([1.0, 2.0])
    with tl.no_grad():
        assert not tl.is_grad_enabled()
        y = (x * 2.0).exp().sum()
        with tl.enable_grad():
            z = x * 2.0
    assert tl.is_grad_enabled()
    assert not y.requires_grad and y.grad_fn is None
    assert z.requires_grad and z.grad_fn is not None
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()


def test_no_grad_is_restored_after_an_exception():
    with pytest.raises(ZeroDivisionError):
        with tl.no_grad():
            1 / 0
    assert tl.is_grad_enabled()


def test_detach_cuts_the_graph():
    x = leaf([2.0, 3.0])
    d = x.detach()
    assert not d.requires_grad and d.is_leaf
    (d * x).sum().backward()          # d is a constant: the gradient is d, not 2x
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 3.0])


def test_second_backward_through_a_freed_graph_raises():
    x = leaf([1.0, 2.0])
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        y.backward()


def test_retain_graph_allows_a_second_backward():
    x = leaf([1.0, 2.0])
    y = (x.exp() * x).sum()
    y.backward(retain_graph=True)
    first = x.grad.numpy().copy()
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * first)
    np.testing.assert_allclose(first, np.exp([1.0, 2.0]) * (1 + np.array([1.0, 2.0])))


def test_inplace_change_of_a_saved_output_is_detected():
    x = leaf([1.0, 2.0])
    y = x.exp()                      # ExpOp saves its output y
    with tl.no_grad():
        y.mul_(2)
    with pytest.raises(RuntimeError, match="modified in place"):
        y.sum().backward()


def test_inplace_change_of_a_saved_constant_input_is_detected():
    a = Tensor(np.array([1.0, 2.0]))         # no grad: in-place is allowed while recording
    w = leaf([3.0, 4.0])
    y = (a * w).sum()                        # MulOp saves a for dw
    a.add_(1)
    with pytest.raises(RuntimeError, match="modified in place"):
        y.backward()


@pytest.mark.parametrize("fn,a_shape,w_shape", [
    (lambda a, w: a * w, (2, 3), (2, 3)),
    (lambda a, w: w / a, (3,), (2, 3)),
    (lambda a, w: w ** a, (2, 3), (2, 3)),
    (lambda a, w: a @ w, (2, 3), (3, 4)),
    (lambda a, w: a @ w, (3,), (3, 4)),
    (lambda a, w: w @ a, (3,), (4, 3)),
    (lambda a, w: a @ w, (2, 2, 3), (3, 4)),
    (lambda a, w: F.layer_norm(a, w), (2, 3), (3,)),
    (lambda a, w: F.rms_norm(a, w), (2, 3), (3,)),
    (lambda a, w: F.scaled_dot_product_attention(a, w, w), (1, 1, 2, 3), (1, 1, 2, 3)),
], ids=["mul", "div", "pow", "matmul", "matmul_1d_left", "matmul_1d_right", "matmul_3d_2d",
        "layer_norm", "rms_norm", "attention"])
def test_inplace_change_of_any_saved_input_is_detected(fn, a_shape, w_shape):
    a = Tensor(np.full(a_shape, 0.5))
    w = leaf(np.linspace(0.5, 1.5, int(np.prod(w_shape))).reshape(w_shape))
    y = fn(a, w)
    a.add_(1)
    with pytest.raises(RuntimeError, match="modified in place"):
        y.backward(np.ones(y.shape))


@pytest.mark.parametrize("make_view", [
    lambda t: t.reshape(-1), lambda t: t.T, lambda t: t[1:], lambda t: t.detach(),
], ids=["reshape", "transpose", "slice", "detach"])
def test_inplace_change_through_a_view_is_detected(make_view):
    x = leaf(np.linspace(0.5, 1.5, 6).reshape(2, 3))
    y = x.exp()                      # saves y; a view of y shares its version counter
    with tl.no_grad():
        make_view(y).mul_(2)
    with pytest.raises(RuntimeError, match="modified in place"):
        y.sum().backward()


def test_inplace_change_of_the_base_of_a_saved_view_is_detected():
    x = leaf(np.linspace(-1, 1, 6).reshape(2, 3))
    logits = x * 1.0
    loss = F.cross_entropy(logits, np.array([0, 2]))    # saves a reshaped view of logits
    with tl.no_grad():
        logits.mul_(2)
    with pytest.raises(RuntimeError, match="modified in place"):
        loss.backward()


def test_inplace_change_of_an_unsaved_tensor_is_fine():
    a = Tensor(np.array([1.0, 2.0]))
    w = leaf([3.0, 4.0])
    y = (a + w).sum()                        # AddOp saves nothing
    a.add_(1)
    y.backward()
    np.testing.assert_allclose(w.grad.numpy(), [1.0, 1.0])


@pytest.mark.parametrize("update", [
    lambda x: x.add_(1.0), lambda x: x.sub_(1.0), lambda x: x.mul_(2.0), lambda x: x.div_(2.0),
    lambda x: x.zero_(), lambda x: x.fill_(3.0), lambda x: x.copy_(np.zeros(2)),
    lambda x: x.__setitem__(0, 5.0), lambda x: x.masked_fill_(np.array([True, False]), 0.0),
], ids=["add_", "sub_", "mul_", "div_", "zero_", "fill_", "copy_", "setitem", "masked_fill_"])
def test_inplace_on_a_leaf_that_requires_grad(update):
    x = leaf([1.0, 2.0])
    with pytest.raises(RuntimeError, match="in-place"):
        update(x)
    np.testing.assert_array_equal(x.numpy(), [1.0, 2.0])
    with tl.no_grad():
        update(x)
    assert not np.array_equal(x.numpy(), [1.0, 2.0])


def test_backward_of_a_non_scalar_needs_an_explicit_grad():
    x = leaf([1.0, 2.0, 3.0])
    y = x * x
    with pytest.raises(RuntimeError, match="grad"):
        y.backward()
    with pytest.raises(ValueError, match="shape"):
        y.backward(np.ones(2))
    y.backward(Tensor(np.array([1.0, 0.0, -1.0])))
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 0.0, -6.0])


def test_backward_leaves_the_callers_gradient_array_alone():
    x, w = leaf([1.0, 2.0]), leaf([3.0, 4.0])
    g = np.array([1.0, -1.0])
    (x + w).backward(g)
    (x + w).backward(g)
    x.backward(g)
    np.testing.assert_array_equal(g, [1.0, -1.0])
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, -3.0])
    np.testing.assert_array_equal(w.grad.numpy(), [2.0, -2.0])


def test_one_element_tensor_backward_needs_no_grad():
    x = leaf([[2.0]])
    (x * 3.0).backward()
    np.testing.assert_allclose(x.grad.numpy(), [[3.0]])


def test_gradient_of_a_0d_tensor_is_0d():
    s, x = leaf(2.0), leaf([1.0, 2.0])
    y = (s * x).sum().retain_grad()
    (y * 3.0).backward()
    assert s.grad.shape == () and y.grad.shape == ()
    np.testing.assert_allclose(s.grad.numpy(), 9.0)
    (s * s).backward()
    assert s.grad.shape == ()
    np.testing.assert_allclose(s.grad.numpy(), 13.0)


def test_backward_on_a_leaf():
    x = leaf([1.0, 2.0])
    x.backward(np.array([3.0, 4.0]))
    np.testing.assert_allclose(x.grad.numpy(), [3.0, 4.0])


def test_retain_grad_on_a_non_leaf():
    x = leaf([1.0, 2.0])
    y = (x * 3.0).retain_grad()
    z = x * 3.0                              # not retained
    (y * y + z).sum().backward()
    np.testing.assert_allclose(y.grad.numpy(), 2 * 3.0 * np.array([1.0, 2.0]))
    assert z.grad is None
    np.testing.assert_allclose(x.grad.numpy(), 18.0 * np.array([1.0, 2.0]) + 3.0)


def test_grads_only_reach_tensors_that_require_them():
    x, c = leaf([1.0, 2.0]), Tensor(np.array([3.0, 4.0]))
    (x * c).sum().backward()
    assert c.grad is None and not c.requires_grad
    np.testing.assert_allclose(x.grad.numpy(), [3.0, 4.0])


def test_requires_grad_on_an_integer_tensor_raises():
    with pytest.raises(TypeError, match="int64"):
        Tensor([1, 2, 3], requires_grad=True)
    with pytest.raises(TypeError):
        Tensor(np.array([True, False])).requires_grad_()


class WrongShapeGradOp(tensor_module.Function):
    # y = 2x, with a planted bug: backward returns one row of the gradient
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, dy):
        return dy[:1] * 2


def test_a_gradient_of_the_wrong_shape_names_the_op_and_both_shapes():
    x = leaf(np.ones((2, 3)))
    y = WrongShapeGradOp.apply(x)
    with pytest.raises(ValueError) as info:
        y.backward(np.ones((2, 3)))
    for word in ("WrongShapeGradOp", "(1, 3)", "(2, 3)"):
        assert word in str(info.value)


# ---- dtypes -----------------------------------------------------------------------------------
@pytest.mark.parametrize("data,dtype", [
    ([1.0, 2.0], np.float32),
    (2.5, np.float32),
    (np.array([1.0, 2.0]), np.float64),
    (np.array([1.0], np.float32), np.float32),
    (np.ones(3, np.float16), np.float16),
    ([1, 2], np.int64),
    (7, np.int64),
    (np.array([1, 2], np.int32), np.int32),
    ([True, False], np.bool_),
])
def test_constructor_dtype(data, dtype):
    assert Tensor(data).dtype == dtype


def test_explicit_dtype_and_tensor_copy():
    assert Tensor([1, 2], dtype=np.float64).dtype == np.float64
    t = Tensor(np.array([1.0, 2.0]))
    assert Tensor(t).dtype == np.float64
    assert t.float().dtype == np.float32 and t.half().dtype == np.float16
    assert t.float().double().dtype == np.float64 and t.astype(np.int32).dtype == np.int32


def test_cast_is_differentiable():
    x = leaf([1.0, 2.0])
    y = x.float()
    assert y.dtype == np.float32
    (y * y).sum().backward()
    assert x.grad.dtype == np.float64
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 4.0])


def test_float16_storage():
    x = Tensor(np.ones(3, np.float16), requires_grad=True)
    y = x * 2.0 + x
    assert x.dtype == np.float16 and y.dtype == np.float16
    y.sum().backward()
    assert x.grad.dtype == np.float16
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 3.0, 3.0])


_IDS = np.array([[0, 3, 3], [1, 2, 0]])
_TARGETS = np.array([[0, 3, -100], [4, 1, 1]])
FLOAT32_FAMILIES = [
    pytest.param(lambda x, w: x @ w, [(2, 3, 4), (4, 5)], id="matmul"),
    pytest.param(lambda x, w: x @ w, [(2, 3, 4), (2, 4, 5)], id="matmul_batched"),
    pytest.param(lambda x, w, b: F.linear(x, w, b), [(2, 3, 4), (5, 4), (5,)], id="linear"),
    pytest.param(lambda x: F.softmax(x, axis=-1), [(2, 3, 5)], id="softmax"),
    pytest.param(lambda x: F.log_softmax(x, axis=1), [(2, 3, 5)], id="log_softmax"),
    pytest.param(lambda x: F.cross_entropy(x, _TARGETS), [(2, 3, 5)], id="cross_entropy"),
    pytest.param(lambda x: F.cross_entropy(x, _TARGETS, reduction="sum", label_smoothing=0.1),
                 [(2, 3, 5)], id="cross_entropy_smooth"),
    pytest.param(lambda x: F.cross_entropy(x, _TARGETS, reduction="none"), [(2, 3, 5)],
                 id="cross_entropy_none"),
    pytest.param(lambda x, w, b: F.layer_norm(x, w, b), [(2, 3, 8), (8,), (8,)], id="layer_norm"),
    pytest.param(lambda x, w: F.layer_norm(x, w), [(2, 3, 8), (8,)], id="layer_norm_no_bias"),
    pytest.param(lambda x, w: F.rms_norm(x, w), [(2, 3, 8), (8,)], id="rms_norm"),
    pytest.param(lambda x: F.gelu(x), [(3, 7)], id="gelu"),
    pytest.param(lambda x: F.gelu(x, approximate="tanh"), [(3, 7)], id="gelu_tanh"),
    pytest.param(lambda x: F.silu(x) * x.sigmoid() + x.tanh() + x.relu(), [(3, 7)],
                 id="activations"),
    pytest.param(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                 [(1, 4, 5, 8), (1, 2, 5, 8), (1, 2, 5, 8)], id="attention_causal_gqa"),
    pytest.param(lambda q, k, v: F.scaled_dot_product_attention(
        q, k, v, attn_mask=np.triu(np.full((5, 5), -1e9), 1)),
        [(1, 2, 5, 8), (1, 2, 5, 8), (1, 2, 5, 8)], id="attention_float_mask"),
    pytest.param(lambda w: F.embedding(_IDS, w), [(5, 4)], id="embedding"),
    pytest.param(lambda x: x.exp() + (x * x + 1.0).log() + (x * x + 1.0).sqrt() + x ** 2,
                 [(3, 4)], id="elementwise"),
    pytest.param(lambda x, y: x / (y * y + 1.0) - 2.0 * x + 1.0 / (y * y + 1.0), [(3, 4), (4,)],
                 id="arithmetic"),
    pytest.param(lambda x: x.mean(axis=0) + x.var(axis=0) + x.max(axis=0) + x.sum(axis=0),
                 [(3, 4)], id="reductions"),
    pytest.param(lambda x: tl.cat([x[1:], x[[0, 0]]]).transpose().reshape(-1), [(3, 4)],
                 id="shape"),
    pytest.param(lambda x: tl.where(x > 0, x, 0.5) + x.masked_fill(x < -1, 0.0), [(3, 4)],
                 id="where"),
    pytest.param(lambda x: F.dropout(x, p=0.3, seed=1), [(3, 4)], id="dropout"),
]


@pytest.mark.parametrize("fn,shapes", FLOAT32_FAMILIES)
def test_float32_forward_and_backward_stay_float32(fn, shapes, impl, monkeypatch):
    # record the dtype of every gradient array that reaches a leaf, before .grad casts it
    arriving = []
    accumulate = tensor_module._accumulate
    monkeypatch.setattr(tensor_module, "_accumulate",
                        lambda t, g: (arriving.append(g.dtype), accumulate(t, g))[1])
    inputs = [tl.randn(*s, requires_grad=True) for s in shapes]
    y = fn(*inputs)
    assert y.dtype == np.float32
    y.backward(np.ones(y.shape, np.float32))
    assert len(arriving) == len(inputs)
    assert all(d == np.float32 for d in arriving), arriving
    assert all(x.grad.dtype == np.float32 for x in inputs)


# ---- unbroadcast ------------------------------------------------------------------------------
def summed_broadcast(grad, shape):
    """Oracle: element i of `shape` gets the sum of every grad element it was broadcast to."""
    size = int(np.prod(shape))
    source = np.broadcast_to(np.arange(size).reshape(shape), grad.shape)
    return np.bincount(source.ravel(), weights=grad.ravel(), minlength=size).reshape(shape)


@pytest.mark.parametrize("grad_shape,shape", [
    ((2, 3), (3,)), ((2, 3), (1, 3)), ((2, 3), (2, 1)), ((4, 2, 3), (2, 1)), ((4, 2, 3), ()),
    ((5, 1, 3), (1, 1, 3)), ((2, 3, 4), (3, 1)), ((2, 3, 4), (1, 1, 1)), ((3,), (1,)),
])
def test_unbroadcast(grad_shape, shape):
    g = np.random.default_rng(0).standard_normal(grad_shape)
    out = tl.unbroadcast(g, shape)
    assert out.shape == shape
    np.testing.assert_allclose(out, summed_broadcast(g, shape))


def test_unbroadcast_returns_a_matching_gradient_as_it_is():
    g = np.ones((2, 3))
    assert tl.unbroadcast(g, (2, 3)) is g


@pytest.mark.parametrize("grad_shape,shape", [((3,), (2, 3)), ((2, 3), (2, 2)), ((2, 3), (4,))])
def test_unbroadcast_rejects_impossible_shapes(grad_shape, shape):
    with pytest.raises(ValueError, match="unbroadcast"):
        tl.unbroadcast(np.zeros(grad_shape), shape)


# ---- constructors and conversions ---------------------------------------------------------------
def test_zeros_ones_full(device):
    z, o = tl.zeros(2, 3, device=device), tl.ones((2, 3), dtype=np.float64, device=device)
    assert z.shape == (2, 3) and z.dtype == np.float32 and z.device == device
    assert o.dtype == np.float64 and o.numpy().tolist() == [[1.0] * 3] * 2
    assert not (z.numpy() != 0).any()
    f = tl.full((2,), 7.0, requires_grad=True, device=device)
    assert f.requires_grad and f.tolist() == [7.0, 7.0]
    assert tl.zeros_like(o).dtype == np.float64 and tl.ones_like(z).numpy().sum() == 6


def test_randn_follows_manual_seed(device):
    a, b = tl.randn(4, 5, device=device), tl.randn(4, 5, device=device)
    assert a.shape == (4, 5) and a.dtype == np.float32
    assert not np.array_equal(a.numpy(), b.numpy())
    tl.manual_seed(0)
    np.testing.assert_array_equal(tl.randn(4, 5, device=device).numpy(), a.numpy())
    tl.manual_seed(1)
    assert not np.array_equal(tl.randn(4, 5, device=device).numpy(), a.numpy())
    r = tl.rand(1000, device=device).numpy()
    assert r.min() >= 0 and r.max() < 1
    big = tl.randn(10000, dtype=np.float64).numpy()
    assert big.dtype == np.float64 and abs(big.mean()) < 0.05 and abs(big.std() - 1) < 0.05


def test_manual_seed_rejects_bad_seeds():
    for bad in (-1, 1.5, "0"):
        with pytest.raises(ValueError):
            tl.manual_seed(bad)


def test_arange(device):
    a = tl.arange(5, device=device)
    assert a.dtype == np.int64 and a.tolist() == [0, 1, 2, 3, 4]
    assert tl.arange(1, 7, 2).tolist() == [1, 3, 5]
    assert tl.arange(3, dtype=np.float32).dtype == np.float32


def test_item_numpy_tolist(device):
    t = Tensor(np.array([[1.5, 2.0], [3.0, 4.0]]), device=device)
    assert isinstance(t.numpy(), np.ndarray)
    np.testing.assert_array_equal(t.numpy(), [[1.5, 2.0], [3.0, 4.0]])
    assert t.tolist() == [[1.5, 2.0], [3.0, 4.0]]
    assert t[0, 0].item() == 1.5 and isinstance(t[0, 0].item(), float)
    assert t.sum().item() == 10.5
    assert Tensor([[7]]).item() == 7 and isinstance(Tensor([[7]]).item(), int)
    with pytest.raises(ValueError, match="one-element"):
        t.item()
    assert t.shape == (2, 2) and t.ndim == 2 and t.numel() == 4 and len(t) == 2
    assert np.asarray(t).shape == (2, 2)


def test_comparisons_give_graph_free_masks():
    x = leaf([1.0, -2.0])
    m = x > 0
    assert m.dtype == np.bool_ and not m.requires_grad and m.tolist() == [True, False]


_HAS_CUPY = True
try:
    import cupy  # noqa: F401
except ImportError:
    _HAS_CUPY = False


@pytest.mark.skipif(_HAS_CUPY, reason="checks the message shown when CuPy is missing")
def test_cuda_without_cupy_says_how_to_install_it():
    x = Tensor([1.0, 2.0])
    with pytest.raises(RuntimeError, match="cuda12"):
        x.to("cuda")
    with pytest.raises(RuntimeError, match="cuda12"):
        Tensor([1.0], device="cuda")


@pytest.mark.parametrize("bad", ["tpu", "gpu", "mps:0"])
def test_unknown_device_raises(bad):
    with pytest.raises(ValueError, match="device"):
        Tensor([1.0], device=bad)


def test_to_same_device_is_a_no_op(device):
    x = Tensor([1.0], device=device)
    assert x.to(device) is x and x.to() is x


@pytest.mark.gpu
@pytest.mark.skipif(not _HAS_CUPY, reason="needs CuPy and a GPU")
def test_mixing_devices_raises_and_to_moves_gradients_back():
    a = leaf([1.0, 2.0], "cpu")
    b = leaf([3.0, 4.0], "cuda")
    with pytest.raises(ValueError, match="device"):
        a + b
    with pytest.raises(ValueError, match="device"):
        a @ b
    y = (a.to("cuda") * b).sum()
    assert y.device == "cuda"
    y.backward()
    assert a.grad.device == "cpu" and b.grad.device == "cuda"
    np.testing.assert_allclose(a.grad.numpy(), [3.0, 4.0])
    np.testing.assert_allclose(b.grad.numpy(), [1.0, 2.0])
