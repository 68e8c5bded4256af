"""Linear attention (ops/linear_attention.py): gradients, an O(T^2) oracle, causality, the
recurrent form, the feature maps and bad input.

The oracle is the quadratic form of the same function, written in NumPy:
out = (M * (phi_Q phi_K^T)) V / (rowsum(M * (phi_Q phi_K^T)) + eps), M the causal lower triangle
(or all ones). The op computes it chunk by chunk with running sums, so every comparison runs
several chunk sizes, including ones that leave a short last chunk. Every body runs on each device
(fixture in tests/conftest.py).
"""
import re

import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm.ops.linear_attention import (
    LinearAttentionOp,
    elu_feature_map,
    linear_attention,
    linear_attention_state,
    linear_attention_step,
    relu_feature_map,
)

EPS = 1e-6


def naive(phi_q, phi_k, v, causal, eps=EPS):
    """The O(T^2) form in NumPy: phi_q (B, H, T, D), phi_k (B, H, Tk, D), v (B, H, Tk, Dv)."""
    a = phi_q @ phi_k.swapaxes(-1, -2)                                  # (B, H, T, Tk)
    if causal:
        a = a * np.tril(np.ones(a.shape[-2:]))
    return (a @ v) / (a.sum(axis=-1, keepdims=True) + eps)


def positive(rng, *shape):
    """Features in [0.1, 2]: what a feature map hands the op."""
    return rng.uniform(0.1, 2.0, shape)


def away(rng, *shape):
    """Values with 0.2 <= |x| <= 1.5: away from the kink of relu (and the seam of elu + 1)."""
    return rng.choice([-1.0, 1.0], shape) * rng.uniform(0.2, 1.5, shape)


def tensors(device, *arrays, requires_grad=True):
    return [tl.Tensor(a, requires_grad=requires_grad, device=device) for a in arrays]


def op(causal, chunk_size=64):
    return lambda q, k, v: LinearAttentionOp.apply(q, k, v, causal=causal, chunk_size=chunk_size)


# ---- gradients of the op ---------------------------------------------------------------------
# (causal, chunk_size, (B, H, T, Tk, D, Dv))
GRAD_CASES = [
    pytest.param(True, 64, (2, 2, 5, 5, 3, 4), id="causal_odd_T_one_chunk"),
    pytest.param(True, 2, (2, 2, 5, 5, 3, 4), id="causal_chunks_of_2_short_last"),
    pytest.param(True, 1, (1, 2, 4, 4, 2, 3), id="causal_chunks_of_1"),
    pytest.param(True, 3, (1, 1, 7, 7, 4, 2), id="causal_D_gt_Dv"),
    pytest.param(True, 64, (2, 1, 1, 1, 3, 2), id="causal_T1"),
    pytest.param(False, 64, (2, 2, 5, 5, 3, 4), id="noncausal_odd_T"),
    pytest.param(False, 64, (1, 2, 1, 1, 2, 3), id="noncausal_T1"),
    pytest.param(False, 2, (1, 2, 3, 6, 3, 2), id="noncausal_Tq_ne_Tk"),
]


@pytest.mark.parametrize("causal,chunk_size,dims", GRAD_CASES)
def test_gradcheck(device, causal, chunk_size, dims):
    b, h, t, tk, d, dv = dims
    rng = np.random.default_rng(1)
    q, k, v = tensors(device, positive(rng, b, h, t, d), positive(rng, b, h, tk, d),
                      rng.standard_normal((b, h, tk, dv)))
    assert tl.gradcheck(op(causal, chunk_size), q, k, v)


def test_gradcheck_catches_a_wrong_gradient(device):
    """The check above can fail: a gradient off by a factor is reported."""
    rng = np.random.default_rng(2)
    q, k, v = tensors(device, positive(rng, 1, 1, 4, 2), positive(rng, 1, 1, 4, 2),
                      rng.standard_normal((1, 1, 4, 3)))

    class Broken(LinearAttentionOp):
        @staticmethod
        def backward(ctx, dout):
            dq, dk, dv = LinearAttentionOp.backward(ctx, dout)
            return dq, dk * 2, dv

    with pytest.raises(tl.GradcheckError):
        tl.gradcheck(lambda a, b, c: Broken.apply(a, b, c, causal=True), q, k, v)


# ---- the forward against the quadratic oracle -------------------------------------------------
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
@pytest.mark.parametrize("t", [1, 5, 17, 70])
@pytest.mark.parametrize("chunk_size", [1, 3, 16, 64])
def test_matches_naive(device, causal, t, chunk_size):
    rng = np.random.default_rng(t)
    phi_q, phi_k = positive(rng, 2, 3, t, 4), positive(rng, 2, 3, t, 4)
    v = rng.standard_normal((2, 3, t, 5))
    out = LinearAttentionOp.apply(*tensors(device, phi_q, phi_k, v, requires_grad=False),
                                  causal=causal, chunk_size=chunk_size)
    np.testing.assert_allclose(out.numpy(), naive(phi_q, phi_k, v, causal), rtol=1e-12,
                               atol=1e-12)


def test_matches_naive_through_the_feature_maps(device):
    rng = np.random.default_rng(3)
    q, k, v = rng.standard_normal((2, 2, 9, 4)), rng.standard_normal((2, 2, 9, 4)), \
        rng.standard_normal((2, 2, 9, 3))
    def elu1(x):
        return np.where(x > 0, x + 1, np.exp(np.minimum(x, 0)))

    for name, phi in [("elu", elu1), ("relu", lambda x: np.maximum(x, 0))]:
        for causal in (True, False):
            out = linear_attention(*tensors(device, q, k, v, requires_grad=False),
                                   causal=causal, feature_map=name)
            np.testing.assert_allclose(out.numpy(), naive(phi(q), phi(k), v, causal),
                                       rtol=1e-12, atol=1e-12)


def test_eps_is_in_the_denominator(device):
    """Changing eps changes the output as 1 / (den + eps) says (and it is not silently dropped)."""
    rng = np.random.default_rng(4)
    phi_q, phi_k, v = positive(rng, 1, 1, 3, 2), positive(rng, 1, 1, 3, 2), \
        rng.standard_normal((1, 1, 3, 2))
    out = LinearAttentionOp.apply(*tensors(device, phi_q, phi_k, v, requires_grad=False),
                                  causal=True, eps=0.5)
    np.testing.assert_allclose(out.numpy(), naive(phi_q, phi_k, v, True, eps=0.5), rtol=1e-12)


# ---- causality -------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk_size", [1, 3, 64])
def test_future_keys_and_values_never_change_the_past(device, chunk_size):
    t = 8
    rng = np.random.default_rng(5)
    phi_q, phi_k, v = positive(rng, 2, 2, t, 3), positive(rng, 2, 2, t, 3), \
        rng.standard_normal((2, 2, t, 4))

    def run(k_, v_):
        return LinearAttentionOp.apply(*tensors(device, phi_q, k_, v_, requires_grad=False),
                                       causal=True, chunk_size=chunk_size).numpy()

    base = run(phi_k, v)
    for s in range(t - 1):
        k2, v2 = phi_k.copy(), v.copy()
        k2[:, :, s + 1:] *= rng.uniform(2.0, 5.0, k2[:, :, s + 1:].shape)
        v2[:, :, s + 1:] += rng.standard_normal(v2[:, :, s + 1:].shape)
        for changed in (run(k2, v), run(phi_k, v2)):
            np.testing.assert_allclose(changed[:, :, :s + 1], base[:, :, :s + 1], rtol=1e-13,
                                       atol=1e-13)
            assert not np.allclose(changed[:, :, s + 1:], base[:, :, s + 1:])


@pytest.mark.parametrize("chunk_size", [2, 64])
def test_past_outputs_send_no_gradient_to_future_keys_and_values(device, chunk_size):
    t, s = 7, 3
    rng = np.random.default_rng(6)
    q, k, v = tensors(device, positive(rng, 1, 2, t, 3), positive(rng, 1, 2, t, 3),
                      rng.standard_normal((1, 2, t, 2)))
    out = LinearAttentionOp.apply(q, k, v, causal=True, chunk_size=chunk_size)
    cot = rng.standard_normal(out.shape)
    cot[:, :, s + 1:] = 0                     # only outputs at positions <= s
    out.backward(tl.Tensor(cot, device=device))
    for grad in (k.grad.numpy(), v.grad.numpy()):
        assert np.all(grad[:, :, s + 1:] == 0)
        assert np.abs(grad[:, :, :s + 1]).min() > 0
    assert np.all(q.grad.numpy()[:, :, s + 1:] == 0)


def test_noncausal_sees_the_future(device):
    """Without the causal flag, the last value reaches the first output (the flag matters)."""
    rng = np.random.default_rng(7)
    phi_q, phi_k, v = positive(rng, 1, 1, 4, 2), positive(rng, 1, 1, 4, 2), \
        rng.standard_normal((1, 1, 4, 3))
    v2 = v.copy()
    v2[:, :, -1] += 1.0
    a = LinearAttentionOp.apply(*tensors(device, phi_q, phi_k, v), causal=False).numpy()
    b = LinearAttentionOp.apply(*tensors(device, phi_q, phi_k, v2), causal=False).numpy()
    assert not np.allclose(a[:, :, 0], b[:, :, 0])


# ---- the recurrent (RNN) form ----------------------------------------------------------------
@pytest.mark.parametrize("prefill", [0, 1, 6])
def test_step_by_step_equals_the_causal_op(device, prefill):
    t = 11
    rng = np.random.default_rng(8)
    phi_q, phi_k, v = tensors(device, positive(rng, 2, 3, t, 4), positive(rng, 2, 3, t, 4),
                              rng.standard_normal((2, 3, t, 5)), requires_grad=False)
    full = LinearAttentionOp.apply(phi_q, phi_k, v, causal=True, chunk_size=4).numpy()
    s = z = None
    if prefill:
        s, z = linear_attention_state(phi_k[:, :, :prefill], v[:, :, :prefill])
    for i in range(prefill, t):
        s_before = None if s is None else s.copy()
        out, s, z = linear_attention_step(phi_q.data[:, :, i], phi_k.data[:, :, i],
                                          v.data[:, :, i], s, z)
        np.testing.assert_allclose(tl.Tensor(out).numpy(), full[:, :, i], rtol=1e-12,
                                   atol=1e-12)
        if s_before is not None:           # the step returns new state, it does not edit it
            assert not np.allclose(tl.Tensor(s_before).numpy(), tl.Tensor(s).numpy())
    s_all, z_all = linear_attention_state(phi_k, v)
    np.testing.assert_allclose(tl.Tensor(s).numpy(), tl.Tensor(s_all).numpy(), rtol=1e-12)
    np.testing.assert_allclose(tl.Tensor(z).numpy(), tl.Tensor(z_all).numpy(), rtol=1e-12)


def test_state_is_the_sum_of_outer_products(device):
    rng = np.random.default_rng(9)
    phi_k, v = positive(rng, 2, 2, 5, 3), rng.standard_normal((2, 2, 5, 4))
    s, z = linear_attention_state(*tensors(device, phi_k, v, requires_grad=False))
    np.testing.assert_allclose(tl.Tensor(s).numpy(),
                               np.einsum("bhtd,bhte->bhde", phi_k, v), rtol=1e-12)
    np.testing.assert_allclose(tl.Tensor(z).numpy(), phi_k.sum(axis=2), rtol=1e-12)


# ---- feature maps ----------------------------------------------------------------------------
@pytest.mark.parametrize("fmap", [elu_feature_map, relu_feature_map], ids=["elu", "relu"])
def test_feature_map_gradcheck(device, fmap):
    rng = np.random.default_rng(10)
    (x,) = tensors(device, away(rng, 3, 7))
    assert tl.gradcheck(fmap, x)


def test_elu_feature_map_values(device):
    x = np.array([-1000.0, -3.0, -0.5, 0.0, 0.5, 3.0, 1000.0])
    with np.errstate(over="raise", invalid="raise"):   # the unused exp branch must not overflow
        y = elu_feature_map(tl.Tensor(x, device=device)).numpy()
    expected = np.array([0.0, np.exp(-3.0), np.exp(-0.5), 1.0, 1.5, 4.0, 1001.0])
    np.testing.assert_allclose(y, expected, rtol=1e-15, atol=0)
    assert np.all(elu_feature_map(tl.Tensor(x[1:], device=device)).numpy() > 0)


def test_elu_feature_map_slope_is_one_at_zero(device):
    """elu + 1 is C1 at 0: the gradient there is 1 from the x > 0 side and e^0 from the other."""
    x = tl.Tensor(np.array([0.0, -1e-9, 1e-9]), requires_grad=True, device=device)
    elu_feature_map(x).backward(tl.Tensor(np.ones(3), device=device))
    np.testing.assert_allclose(x.grad.numpy(), [1.0, 1.0, 1.0], rtol=1e-8)


def test_relu_feature_map_zero_features_give_zero_not_nan(device):
    """All-negative keys give phi = 0 and a denominator of eps: the output is 0, never NaN."""
    rng = np.random.default_rng(11)
    q, k, v = tensors(device, away(rng, 1, 1, 4, 3), -rng.uniform(0.5, 1.0, (1, 1, 4, 3)),
                      rng.standard_normal((1, 1, 4, 2)))
    out = linear_attention(q, k, v, feature_map="relu")
    out.backward(tl.Tensor(rng.standard_normal(out.shape), device=device))
    assert np.all(out.numpy() == 0)
    assert all(np.all(np.isfinite(t.grad.numpy())) for t in (q, k, v))


# ---- the Tensor-level entry point ------------------------------------------------------------
@pytest.mark.parametrize("feature_map", ["elu", "relu", lambda x: x.exp()],
                         ids=["elu", "relu", "callable_exp"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
def test_linear_attention_gradcheck(device, feature_map, causal):
    rng = np.random.default_rng(12)
    q, k, v = tensors(device, away(rng, 2, 2, 5, 3), away(rng, 2, 2, 5, 3),
                      rng.standard_normal((2, 2, 5, 4)))
    def f(a, b, c):
        return linear_attention(a, b, c, causal=causal, feature_map=feature_map, chunk_size=2)

    assert tl.gradcheck(f, q, k, v)


def test_float32_stays_float32(device):
    rng = np.random.default_rng(13)
    q, k, v = tensors(device, *(rng.standard_normal((2, 2, 6, 4)).astype(np.float32)
                                for _ in range(3)))
    for causal in (True, False):
        for t in (q, k, v):
            t.grad = None
        out = linear_attention(q, k, v, causal=causal, chunk_size=4)
        assert out.dtype == np.float32
        out.backward(tl.Tensor(np.ones(out.shape, dtype=np.float32), device=device))
        assert all(t.grad.dtype == np.float32 for t in (q, k, v))
    out, s, z = linear_attention_step(q.data[:, :, 0], k.data[:, :, 0], v.data[:, :, 0])
    assert out.dtype == s.dtype == z.dtype == np.float32


# ---- bad input -------------------------------------------------------------------------------
BAD_SHAPES = [   # (phi_q, phi_k, v, causal, which shapes the message must name: 0 q, 1 k, 2 v)
    pytest.param((2, 2, 4, 3), (2, 4, 4, 3), (2, 4, 4, 5), True, (0, 1), id="heads_differ"),
    pytest.param((2, 2, 4, 3), (2, 2, 4, 2), (2, 2, 4, 5), True, (0, 1), id="feature_dims_differ"),
    pytest.param((2, 2, 4, 3), (1, 2, 4, 3), (1, 2, 4, 5), True, (0, 1), id="batch_differs"),
    pytest.param((2, 2, 4, 3), (2, 2, 6, 3), (2, 2, 6, 5), True, (0, 1), id="causal_T_differs"),
    pytest.param((2, 2, 4, 3), (2, 2, 4, 3), (2, 2, 5, 5), False, (1, 2), id="v_T_differs"),
    pytest.param((2, 2, 4, 3), (2, 2, 4, 3), (2, 3, 4, 5), False, (1, 2), id="v_heads_differ"),
    pytest.param((2, 4, 3), (2, 4, 3), (2, 4, 5), True, (0, 1, 2), id="three_dims"),
]


@pytest.mark.parametrize("q_shape,k_shape,v_shape,causal,named", BAD_SHAPES)
def test_bad_shapes_raise_naming_the_shapes(device, q_shape, k_shape, v_shape, causal, named):
    shapes = (q_shape, k_shape, v_shape)
    with pytest.raises(ValueError) as info:
        LinearAttentionOp.apply(*tensors(device, *(np.ones(s) for s in shapes)), causal=causal)
    message = str(info.value)
    assert "linear_attention" in message
    for i in named:
        assert str(shapes[i]) in message, (shapes[i], message)


def test_bad_feature_map_and_chunk_size(device):
    q, k, v = tensors(device, np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2)))
    with pytest.raises(ValueError, match=re.escape("'softmax'")):
        linear_attention(q, k, v, feature_map="softmax")
    with pytest.raises(TypeError, match="int"):
        linear_attention(q, k, v, feature_map=3)
    with pytest.raises(ValueError, match="chunk_size.*0"):
        linear_attention(q, k, v, chunk_size=0)


def test_step_and_state_bad_shapes(device):
    def xp_ones(*shape):
        return tl.Tensor(np.ones(shape), device=device).data

    with pytest.raises(ValueError, match=re.escape("(2, 3, 4)") + ".*" + re.escape("(2, 3, 5)")):
        linear_attention_step(xp_ones(2, 3, 4), xp_ones(2, 3, 5), xp_ones(2, 3, 6))
    with pytest.raises(ValueError, match=re.escape("(2, 3, 4, 7)")):
        linear_attention_step(xp_ones(2, 3, 4), xp_ones(2, 3, 4), xp_ones(2, 3, 6),
                              xp_ones(2, 3, 4, 7), xp_ones(2, 3, 4))
    with pytest.raises(ValueError, match="both"):
        linear_attention_step(xp_ones(2, 3, 4), xp_ones(2, 3, 4), xp_ones(2, 3, 6),
                              xp_ones(2, 3, 4, 6), None)
    with pytest.raises(ValueError, match=re.escape("(1, 2, 3, 4)") + ".*"
                       + re.escape("(1, 2, 5, 4)")):
        linear_attention_state(xp_ones(1, 2, 3, 4), xp_ones(1, 2, 5, 4))
