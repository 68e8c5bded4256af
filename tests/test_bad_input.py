"""Bad arguments fail early with a ValueError / TypeError that names what was received and what
was expected (shapes as Python tuples, the offending id or target)."""
import numpy as np
import pytest

import tinygrad_llm as tl
import tinygrad_llm.nn.functional as F


def t(*shape, dtype=np.float64):
    return tl.Tensor(np.ones(shape, dtype=dtype))


def sdpa(q, k, v, **kw):
    return lambda: F.scaled_dot_product_attention(t(*q), t(*k), t(*v), **kw)


def qk_norm(qkv, w_q=(4,), w_k=(4,), **kw):
    from tinygrad_llm.ops.rope import PackedQKNormRopeOp
    kw = {"n_head": 2, "n_kv_head": 1, **kw}
    return lambda: PackedQKNormRopeOp.apply(t(*qkv), t(*w_q), t(*w_k), **kw)


CASES = [
    # name, call, error type, substrings the message must contain
    ("qk_norm_ndim", qk_norm((3, 4, 4)), ValueError, ["qkv (B, T, S, D)", "(3, 4, 4)"]),
    ("qk_norm_slots", qk_norm((1, 3, 2, 4)), ValueError, ["n_head + n_kv_head <= S",
                                                         "(1, 3, 2, 4)", "n_head=2"]),
    ("qk_norm_gain", qk_norm((1, 3, 4, 4), w_k=(3,)), ValueError, ["w_k", "(4,)", "(3,)"]),
    ("qk_norm_one_table", qk_norm((1, 3, 4, 4), cos=np.ones((3, 4))), ValueError,
     ["cos and sin"]),
    ("qk_norm_table_shape", qk_norm((1, 3, 4, 4), cos=np.ones((2, 4)), sin=np.ones((2, 4))),
     ValueError, ["cos", "(2, 4)", "(3, 4)"]),
    ("matmul_inner", lambda: t(2, 3) @ t(4, 5), ValueError, ["(2, 3)", "(4, 5)"]),
    ("matmul_1d", lambda: t(3) @ t(4, 5), ValueError, ["(3,)", "(4, 5)"]),
    ("matmul_2d_1d", lambda: t(4, 5) @ t(4), ValueError, ["(4, 5)", "(4,)"]),
    ("matmul_batch", lambda: t(2, 3, 4) @ t(3, 4, 5), ValueError, ["(2, 3, 4)", "(3, 4, 5)"]),
    ("matmul_scalar", lambda: t() @ t(3), ValueError, ["matmul", "()", "(3,)"]),
    ("cat_shapes", lambda: tl.cat([t(2, 3), t(2, 4)]), ValueError, ["cat", "(2, 3)", "(2, 4)"]),
    ("cat_ndim", lambda: tl.cat([t(2, 3), t(2, 3, 1)], axis=1), ValueError,
     ["(2, 3)", "(2, 3, 1)"]),
    ("cat_empty", lambda: tl.cat([]), ValueError, ["cat"]),
    ("stack_shapes", lambda: tl.stack([t(2, 3), t(3, 2)]), ValueError, ["(2, 3)", "(3, 2)"]),
    ("add_broadcast", lambda: t(2, 3) + t(4), ValueError, ["add", "(2, 3)", "(4,)"]),
    ("sub_broadcast", lambda: t(2, 3) - t(2, 2), ValueError, ["sub", "(2, 3)", "(2, 2)"]),
    ("mul_broadcast", lambda: t(5) * t(2, 3), ValueError, ["mul", "(5,)", "(2, 3)"]),
    ("div_broadcast", lambda: t(2, 3, 4) / t(3, 3), ValueError, ["div", "(2, 3, 4)", "(3, 3)"]),
    ("pow_broadcast", lambda: t(2, 3) ** t(2), ValueError, ["pow", "(2, 3)", "(2,)"]),
    ("add_ndarray", lambda: t(2, 3) + np.ones(4), ValueError, ["(2, 3)", "(4,)"]),
    ("radd_ndarray", lambda: np.ones(4) + t(2, 3), ValueError, ["(4,)", "(2, 3)"]),
    ("ce_target_high", lambda: F.cross_entropy(t(2, 3), np.array([0, 5])), ValueError,
     ["target 5", "[0, 3)"]),
    ("ce_target_negative", lambda: F.cross_entropy(t(2, 3), np.array([-1, 0])), ValueError,
     ["target -1"]),
    ("ce_target_3d", lambda: F.cross_entropy(t(2, 2, 4), np.array([[0, 1], [9, 2]])), ValueError,
     ["target 9", "[0, 4)"]),
    ("ce_target_shape", lambda: F.cross_entropy(t(2, 3), np.array([0, 1, 2])), ValueError,
     ["(3,)", "(2, 3)"]),
    ("ce_target_float", lambda: F.cross_entropy(t(2, 3), np.array([0.0, 1.0])), TypeError,
     ["float64"]),
    ("ce_reduction", lambda: F.cross_entropy(t(2, 3), np.array([0, 1]), reduction="avg"),
     ValueError, ["reduction", "'avg'"]),
    ("ce_label_smoothing", lambda: F.cross_entropy(t(2, 3), np.array([0, 1]),
                                                   label_smoothing=1.5), ValueError, ["1.5"]),
    ("embedding_high", lambda: F.embedding(np.array([0, 7]), t(5, 3)), ValueError,
     ["id 7", "[0, 5)"]),
    ("embedding_negative", lambda: F.embedding(np.array([[1], [-2]]), t(5, 3)), ValueError,
     ["id -2"]),
    ("embedding_float_ids", lambda: F.embedding(np.array([0.0]), t(5, 3)), TypeError,
     ["float64"]),
    ("reshape_size", lambda: t(2, 3).reshape(4, 2), ValueError, ["(2, 3)", "(4, 2)"]),
    ("reshape_minus_1", lambda: t(2, 3).reshape(4, -1), ValueError, ["(2, 3)", "(4, -1)"]),
    ("expand", lambda: t(2, 3).expand(3, 3), ValueError, ["(2, 3)", "(3, 3)"]),
    ("permute", lambda: t(2, 3).permute(0, 0), ValueError, ["permute"]),
    ("sum_axis", lambda: t(2, 3).sum(axis=2), ValueError, ["axis", "2"]),
    ("max_axis", lambda: t(2, 3).max(axis=-3), ValueError, ["axis", "-3"]),
    ("var_dof", lambda: t(2, 3).var(axis=0, correction=2), ValueError, ["correction"]),
    ("split_sections", lambda: t(5, 2).split([2, 2]), ValueError, ["[2, 2]", "5"]),
    ("split_size", lambda: t(5, 2).split(0), ValueError, ["split_size"]),
    ("sdpa_heads", sdpa((1, 3, 2, 4), (1, 2, 2, 4), (1, 2, 2, 4)), ValueError,
     ["3 query heads", "2 key/value heads"]),
    ("sdpa_head_dim", sdpa((1, 2, 2, 4), (1, 2, 2, 3), (1, 2, 2, 3)), ValueError,
     ["(1, 2, 2, 4)", "(1, 2, 2, 3)"]),
    ("sdpa_kv_mismatch", sdpa((1, 2, 2, 4), (1, 2, 2, 4), (1, 2, 3, 4)), ValueError,
     ["(1, 2, 2, 4)", "(1, 2, 3, 4)"]),
    ("sdpa_batch", sdpa((2, 2, 2, 4), (1, 2, 2, 4), (1, 2, 2, 4)), ValueError, ["(2, 2, 2, 4)"]),
    ("sdpa_ndim", sdpa((2, 2, 4), (2, 2, 4), (2, 2, 4)), ValueError, ["(2, 2, 4)"]),
    ("sdpa_mask", sdpa((1, 2, 2, 4), (1, 2, 2, 4), (1, 2, 2, 4), attn_mask=np.ones((3, 3), bool)),
     ValueError, ["(3, 3)", "(1, 2, 2, 2)"]),
    ("layer_norm_weight", lambda: F.layer_norm(t(2, 3), t(4)), ValueError, ["(4,)", "(2, 3)"]),
    ("layer_norm_bias", lambda: F.layer_norm(t(2, 3), t(3), t(2)), ValueError, ["(2,)"]),
    ("rms_norm_weight", lambda: F.rms_norm(t(2, 3), t(3, 1)), ValueError, ["(3, 1)", "(2, 3)"]),
    ("gelu_approximate", lambda: F.gelu(t(3), approximate="erf"), ValueError, ["'erf'"]),
    ("dropout_p", lambda: F.dropout(t(3), p=1.5), ValueError, ["1.5"]),
    ("backward_grad_shape", lambda: (tl.Tensor(np.ones(3), requires_grad=True) * 2.0)
     .backward(np.ones(2)), ValueError, ["(2,)", "(3,)"]),
    ("item_many", lambda: t(2).item(), ValueError, ["(2,)"]),
    ("bool_many", lambda: bool(t(2)), ValueError, ["(2,)"]),
    ("device", lambda: tl.Tensor([1.0], device="tpu"), ValueError, ["'tpu'"]),
    ("requires_grad_int", lambda: tl.Tensor(np.arange(3), requires_grad=True), TypeError,
     ["int64"]),
    ("gradcheck_float32", lambda: tl.gradcheck(lambda x: x * 2.0, t(2, dtype=np.float32)
                                               .requires_grad_()), TypeError, ["float32"]),
    ("gradcheck_no_grad", lambda: tl.gradcheck(lambda x: x * 2.0, t(2)), ValueError,
     ["requires_grad"]),
]


@pytest.mark.parametrize("call,error,words", [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_bad_input_raises_a_clear_error(call, error, words):
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_ignored_targets_may_be_out_of_range():
    loss = F.cross_entropy(tl.Tensor(np.zeros((2, 3))), np.array([-100, 1]))
    np.testing.assert_allclose(loss.item(), np.log(3))
    loss = F.cross_entropy(tl.Tensor(np.zeros((2, 3))), np.array([7, 1]), ignore_index=7)
    np.testing.assert_allclose(loss.item(), np.log(3))


def test_errors_leave_no_half_built_graph():
    x = tl.Tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(ValueError):
        x * tl.Tensor(np.ones(4))
    (x * 2.0).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.full((2, 3), 2.0))
