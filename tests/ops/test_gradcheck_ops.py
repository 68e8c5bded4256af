"""Finite-difference gradient checks of every differentiable op, in float64.

One line per case: a name, the function of the inputs, and one spec per input (its shape and
how its values are drawn). Every case runs with the reference and the fast implementation and on
each device (fixtures in tests/conftest.py). `tl.gradcheck` contracts the output with a random
cotangent, so functions return the op's output as it is (never `.sum()`): a uniform cotangent
hides gradients sent to the wrong element. Every float input requires grad, weights included.
Integer ids, targets and masks are module constants (NumPy arrays; the library moves them to the
input's device).
"""
import numpy as np
import pytest

import tinygrad_llm as tl
import tinygrad_llm.nn.functional as F
from tinygrad_llm.kernels import trace
from tinygrad_llm.ops.activation import Relu2Op
from tinygrad_llm.ops.attention import PackedAttentionOp
from tinygrad_llm.ops.rope import PackedQKNormRopeOp, PackedRopeOp


# ---- input specs: (kind, shape) --------------------------------------------------------------
def N(*shape):
    """Standard normal values."""
    return ("normal", shape)


def P(*shape):
    """Positive values in [0.5, 2] (log, sqrt, fractional and negative powers, divisors)."""
    return ("positive", shape)


def D(*shape):
    """Distinct values at least 0.1 apart (max without ties)."""
    return ("distinct", shape)


def A(*shape):
    """Values with 0.2 <= |x| <= 1.5 (relu, abs: away from the kink at 0)."""
    return ("away", shape)


def _values(kind, shape, rng):
    n = int(np.prod(shape))
    if kind == "normal":
        return rng.standard_normal(shape)
    if kind == "positive":
        return rng.uniform(0.5, 2.0, shape)
    if kind == "distinct":
        return (rng.permutation(n) * 0.1 - 0.05 * n + rng.uniform(-0.02, 0.02, n)).reshape(shape)
    if kind == "away":
        return rng.choice([-1.0, 1.0], shape) * rng.uniform(0.2, 1.5, shape)
    raise ValueError(kind)


def _inputs(specs, device, seed=0):
    rng = np.random.default_rng(seed)
    return [tl.Tensor(_values(kind, shape, rng), requires_grad=True, device=device)
            for kind, shape in specs]


def case(name, fn, *specs):
    return pytest.param(fn, specs, id=name)


# ---- constants: ids, targets, masks, indices -------------------------------------------------
COND = np.array([[True, False, True], [False, False, True]])                     # (2, 3)
ROW_MASK = np.array([True, False, True])[:, None]                                 # (3, 1)
PICK = np.array([[True, False, True, True], [False, False, False, True],
                 [True, True, False, False]])                                     # (3, 4)
TARGETS = np.array([[1, 4, -100], [0, -100, 2]])                                  # (B, T) = (2, 3)
TARGETS_ALL = np.array([[1, 4, 3], [0, 0, 2]])
IDS = np.array([[0, 2, 2], [4, 0, 1]])                                            # repeats 0 and 2
CAUSAL_LIKE = np.array([[True, False, True], [True, True, False], [False, True, True]])
DEAD_ROW = np.array([[True, True, False], [False, False, False], [True, False, True]])
ADDITIVE = np.array([[[[0.3, -0.7, 0.0], [-np.inf, 0.5, 1.2], [0.1, 0.0, -2.0]]]])  # (1,1,3,3)
ANGLES = np.array([[0.3, -1.1, 0.3, -1.1], [0.7, 2.0, 0.7, 2.0], [-0.4, 0.9, -0.4, 0.9]])  # (T, D)
HEAD_MASK = np.array([True, False, True, True])[None, :, None, None] & CAUSAL_LIKE  # (1,4,3,3)


def sdpa(**kw):
    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, **kw)


def cat_pieces(pieces, axis):
    """Pieces joined in reverse order, so a piece's gradient must come back from elsewhere."""
    return tl.cat(pieces[::-1], axis=axis)


CASES = [
    # arithmetic, with broadcasting between different shapes and python scalars on either side
    case("add", lambda a, b: a + b, N(2, 3), N(2, 3)),
    case("add_broadcast", lambda a, b: a + b, N(2, 3, 4), N(3, 1)),
    case("add_broadcast_both", lambda a, b: a + b, N(2, 1, 4), N(3, 1)),
    case("add_scalar_right", lambda a: a + 1.5, N(2, 3)),
    case("add_scalar_left", lambda a: 2 + a, N(2, 3)),
    case("add_ndarray", lambda a: a + np.arange(3.0), N(2, 3)),
    case("sub", lambda a, b: a - b, N(2, 3), N(2, 3)),
    case("sub_broadcast", lambda a, b: a - b, N(4,), N(3, 4)),
    case("sub_scalar_right", lambda a: a - 2.5, N(2, 3)),
    case("sub_scalar_left", lambda a: 2.5 - a, N(2, 3)),
    case("mul", lambda a, b: a * b, N(2, 3), N(2, 3)),
    case("mul_broadcast", lambda a, b: a * b, N(2, 1, 3), N(4, 1)),
    case("mul_scalar_right", lambda a: a * -3.0, N(2, 3)),
    case("mul_scalar_left", lambda a: 2 * a, N(2, 3)),
    case("mul_same_tensor", lambda a: a * a, N(2, 3)),
    case("div", lambda a, b: a / b, N(2, 3), P(2, 3)),
    case("div_broadcast", lambda a, b: a / b, N(2, 3, 2), P(3, 1)),
    case("div_scalar_right", lambda a: a / 4.0, N(2, 3)),
    case("div_scalar_left", lambda a: 3.0 / a, P(2, 3)),
    case("mul_0d_tensor", lambda s, a: s * a, N(), N(2, 3)),
    case("0d_only", lambda s, t: (s * t).exp() / t, N(), P()),
    case("neg", lambda a: -a, N(2, 3)),
    case("neg_method", lambda a: a.neg(), N(2, 3)),
    # powers
    case("pow_2", lambda a: a ** 2, N(2, 3)),
    case("pow_3", lambda a: a ** 3, N(2, 3)),
    case("pow_half", lambda a: a ** 0.5, P(2, 3)),
    case("pow_minus_1", lambda a: a ** -1, P(2, 3)),
    case("pow_tensor", lambda a, b: a ** b, P(2, 3), N(2, 3)),
    case("pow_tensor_broadcast", lambda a, b: a ** b, P(2, 3), N(3,)),
    case("rpow_scalar_base", lambda b: 1.5 ** b, N(2, 3)),
    # matmul
    case("matmul_2d", lambda a, b: a @ b, N(3, 4), N(4, 2)),
    case("matmul_1d_2d", lambda a, b: a @ b, N(4,), N(4, 3)),
    case("matmul_2d_1d", lambda a, b: a @ b, N(3, 4), N(4,)),
    case("matmul_1d_1d", lambda a, b: a @ b, N(4,), N(4,)),
    case("matmul_batched", lambda a, b: a @ b, N(2, 3, 4), N(2, 4, 2)),
    case("matmul_batch_times_2d", lambda a, b: a @ b, N(2, 3, 4), N(4, 2)),
    case("matmul_broadcast_batch", lambda a, b: a @ b, N(1, 3, 4), N(2, 4, 2)),
    case("matmul_4d_broadcast", lambda a, b: a @ b, N(2, 1, 2, 3), N(1, 2, 3, 2)),
    case("linear", lambda x, w, b: F.linear(x, w, b), N(2, 3, 4), N(5, 4), N(5)),
    case("linear_no_bias", lambda x, w: F.linear(x, w), N(2, 3, 4), N(5, 4)),
    case("linear_1d_input", lambda x, w, b: F.linear(x, w, b), N(4), N(5, 4), N(5)),
    case("linear_strided", lambda x, w: F.linear(x.transpose(1, 0, 2), w.T), N(3, 2, 4), N(4, 5)),
    # reductions
    case("sum_all", lambda a: a.sum(), N(2, 3, 4)),
    case("sum_axis", lambda a: a.sum(axis=1), N(2, 3, 4)),
    case("sum_neg_axis_keep", lambda a: a.sum(axis=-1, keepdims=True), N(2, 3, 4)),
    case("sum_tuple", lambda a: a.sum(axis=(0, 2)), N(2, 3, 4)),
    case("sum_tuple_keep", lambda a: a.sum(axis=(0, -1), keepdims=True), N(2, 3, 4)),
    case("sum_all_keep", lambda a: a.sum(keepdims=True), N(2, 3)),
    case("mean_all", lambda a: a.mean(), N(2, 3, 4)),
    case("mean_axis", lambda a: a.mean(axis=0), N(2, 3, 4)),
    case("mean_neg_axis_keep", lambda a: a.mean(axis=-2, keepdims=True), N(2, 3, 4)),
    case("mean_tuple", lambda a: a.mean(axis=(1, 2)), N(2, 3, 4)),
    case("max_all", lambda a: a.max(), D(2, 3, 4)),
    case("max_axis", lambda a: a.max(axis=1), D(2, 3, 4)),
    case("max_neg_axis_keep", lambda a: a.max(axis=-1, keepdims=True), D(2, 3, 4)),
    case("max_tuple", lambda a: a.max(axis=(0, 2)), D(2, 3, 4)),
    case("max_tuple_keep", lambda a: a.max(axis=(0, 1), keepdims=True), D(2, 3, 4)),
    case("min_axis", lambda a: a.min(axis=0), D(3, 4)),
    case("var_all", lambda a: a.var(), N(2, 3, 4)),
    case("var_axis", lambda a: a.var(axis=1), N(2, 3, 4)),
    case("var_neg_axis_keep", lambda a: a.var(axis=-1, keepdims=True), N(2, 3, 4)),
    case("var_tuple", lambda a: a.var(axis=(0, 2)), N(2, 3, 4)),
    case("var_tuple_keep", lambda a: a.var(axis=(0, 2), keepdims=True), N(2, 3, 4)),
    case("var_correction_1", lambda a: a.var(axis=0, correction=1), N(3, 4)),
    # shape
    case("reshape", lambda a: a.reshape(4, 6), N(2, 3, 4)),
    case("reshape_minus_1", lambda a: a.reshape(-1, 2), N(2, 3, 4)),
    case("view_flatten", lambda a: a.flatten(1), N(2, 3, 4)),
    case("unsqueeze_squeeze", lambda a: a.unsqueeze(1).squeeze(), N(2, 3)),
    case("expand", lambda a: a.expand(2, 3, 4), N(3, 1)),
    case("transpose_2d", lambda a: a.transpose(), N(3, 4)),
    case("transpose_no_args_3d", lambda a: a.transpose(), N(2, 3, 4)),
    case("transpose_two_axes", lambda a: a.transpose(0, 2), N(2, 3, 4)),
    case("transpose_neg_axes", lambda a: a.transpose(-1, -2), N(2, 3, 4)),
    case("T", lambda a: a.T, N(3, 4)),
    case("permute", lambda a: a.permute(1, 2, 0), N(2, 3, 4)),
    # indexing
    case("getitem_slices", lambda a: a[1:, ::2], N(3, 4)),
    case("getitem_neg_step", lambda a: a[::-1, 3:0:-2], N(3, 4)),
    case("getitem_int", lambda a: a[1], N(3, 4)),
    case("getitem_ints", lambda a: a[2, -1], N(3, 4)),
    case("getitem_ellipsis_none", lambda a: a[..., None, 1], N(2, 3, 4)),
    case("getitem_int_array_repeats", lambda a: a[[0, 2, 2, 1]], N(3, 4)),
    case("getitem_int_ndarray_2d", lambda a: a[np.array([[0, 1], [1, 1]])], N(3, 4)),
    case("getitem_bool_mask", lambda a: a[tl.Tensor(PICK, device=a.device)], N(3, 4)),
    case("getitem_bool_rows", lambda a: a[np.array([True, False, True])], N(3, 4)),
    case("getitem_slice_and_int_array", lambda a: a[:, [3, 0, 0]], N(3, 4)),
    case("getitem_two_int_arrays", lambda a: a[[0, 2, 0], [1, 1, 1]], N(3, 4)),
    case("getitem_int_array_tensor", lambda a: a[tl.Tensor(np.array([1, 1, 0]), device=a.device)],
         N(3, 4)),
    # cat / stack / split
    case("cat_axis0", lambda a, b: tl.cat([a, b]), N(2, 3), N(1, 3)),
    case("cat_axis1_three", lambda a, b, c: tl.cat([a, b, c], axis=1), N(2, 1), N(2, 3), N(2, 2)),
    case("cat_neg_axis", lambda a, b: tl.cat([a, b], axis=-1), N(2, 2, 1), N(2, 2, 3)),
    case("cat_same_tensor", lambda a: tl.cat([a, a * 2.0], axis=0), N(2, 3)),
    case("stack_axis0", lambda a, b: tl.stack([a, b]), N(2, 3), N(2, 3)),
    case("stack_last_axis", lambda a, b, c: tl.stack([a, b, c], axis=-1), N(2, 3), N(2, 3),
         N(2, 3)),
    case("split_int", lambda a: cat_pieces(a.split(2, axis=1), axis=1), N(2, 5)),
    case("split_list", lambda a: cat_pieces(a.split([1, 3, 1], axis=0), axis=0), N(5, 2)),
    case("split_function", lambda a: cat_pieces(tl.split(a, 1, axis=-1), axis=-1), N(2, 3)),
    case("chunk", lambda a: cat_pieces(a.chunk(2, axis=0), axis=0), N(4, 2)),
    # smooth elementwise
    case("exp", lambda a: a.exp(), N(2, 3)),
    case("log", lambda a: a.log(), P(2, 3)),
    case("sqrt", lambda a: a.sqrt(), P(2, 3)),
    case("tanh", lambda a: a.tanh(), N(2, 3)),
    case("sigmoid", lambda a: a.sigmoid(), N(2, 3)),
    case("sigmoid_large", lambda a: (a * 8.0).sigmoid(), N(2, 3)),
    case("relu", lambda a: a.relu(), A(3, 4)),
    case("F_relu", lambda a: F.relu(a), A(3, 4)),
    case("abs", lambda a: a.abs(), A(3, 4)),
    case("clamp", lambda a: a.clamp(-0.7, 0.9), A(3, 4)),
    case("gelu_none", lambda a: F.gelu(a, approximate="none"), N(3, 4)),
    case("gelu_none_wide", lambda a: F.gelu(a * 3.0), N(3, 4)),
    case("gelu_tanh", lambda a: F.gelu(a, approximate="tanh"), N(3, 4)),
    case("relu2", lambda a: Relu2Op.apply(a), A(2, 3, 4)),      # at 0: tests/ops/test_activation.py
    case("F_relu2", lambda a: F.relu2(a), A(3, 4)),
    case("silu", lambda a: F.silu(a), N(3, 4)),
    case("silu_method", lambda a: (a * 4.0).silu(), N(3, 4)),
    # softmax family
    case("softmax_last", lambda a: F.softmax(a, axis=-1), N(2, 3, 4)),
    case("softmax_axis0", lambda a: F.softmax(a, axis=0), N(2, 3, 4)),
    case("softmax_axis1", lambda a: F.softmax(a, axis=1), N(2, 3, 4)),
    case("softmax_method", lambda a: a.softmax(), N(3, 4)),
    case("log_softmax_last", lambda a: F.log_softmax(a, axis=-1), N(2, 3, 4)),
    case("log_softmax_axis0", lambda a: F.log_softmax(a, axis=0), N(2, 3, 4)),
    case("log_softmax_axis1", lambda a: F.log_softmax(a, axis=1), N(2, 3, 4)),
    # cross-entropy: logits (B, T, V), targets (B, T)
    case("ce_mean", lambda x: F.cross_entropy(x, TARGETS_ALL), N(2, 3, 5)),
    case("ce_mean_ignore", lambda x: F.cross_entropy(x, TARGETS), N(2, 3, 5)),
    case("ce_sum_ignore", lambda x: F.cross_entropy(x, TARGETS, reduction="sum"), N(2, 3, 5)),
    case("ce_none_ignore", lambda x: F.cross_entropy(x, TARGETS, reduction="none"), N(2, 3, 5)),
    case("ce_mean_smooth", lambda x: F.cross_entropy(x, TARGETS, label_smoothing=0.1), N(2, 3, 5)),
    case("ce_sum_smooth", lambda x: F.cross_entropy(x, TARGETS_ALL, reduction="sum",
                                                    label_smoothing=0.1), N(2, 3, 5)),
    case("ce_none_smooth", lambda x: F.cross_entropy(x, TARGETS, reduction="none",
                                                     label_smoothing=0.1), N(2, 3, 5)),
    case("ce_ignore_index_0", lambda x: F.cross_entropy(x, TARGETS_ALL, ignore_index=0),
         N(2, 3, 5)),
    case("ce_2d", lambda x: F.cross_entropy(x, TARGETS_ALL[0]), N(3, 5)),
    # where / masked_fill
    case("where", lambda a, b: tl.where(COND, a, b), N(2, 3), N(2, 3)),
    case("where_broadcast", lambda a, b: tl.where(COND, a, b), N(3,), N(2, 1)),
    case("where_scalar", lambda a: tl.where(COND, 0.5, a), N(2, 3)),
    case("where_tensor_cond", lambda a, b: tl.where(a > 0, a, b), A(2, 3), N(2, 3)),
    case("F_where", lambda a, b: F.where(COND, a, b), N(2, 3), N(2, 3)),
    case("masked_fill", lambda a: a.masked_fill(PICK, -1.0), N(3, 4)),
    case("masked_fill_broadcast", lambda a: F.masked_fill(a, ROW_MASK, 0.0), N(3, 4)),
    # dropout (a fixed seed makes the mask the same on every call)
    case("dropout", lambda a: F.dropout(a, p=0.3, training=True, seed=5), N(4, 5)),
    case("dropout_eval", lambda a: F.dropout(a, p=0.3, training=False), N(2, 3)),
    # embedding: gradient w.r.t. the weight, ids with repeats
    case("embedding", lambda w: F.embedding(IDS, w), N(5, 3)),
    case("embedding_1d", lambda w: F.embedding(np.array([3, 3, 0]), w), N(4, 2)),
    case("embedding_tensor_ids", lambda w: F.embedding(tl.Tensor(IDS, device=w.device), w),
         N(5, 3)),
    # norms
    case("layer_norm", lambda x, w, b: F.layer_norm(x, w, b), N(2, 3, 4), N(4), N(4)),
    case("layer_norm_no_bias", lambda x, w: F.layer_norm(x, w), N(2, 3, 4), N(4)),
    case("layer_norm_no_affine", lambda x: F.layer_norm(x, eps=1e-3), N(3, 4)),
    case("rms_norm", lambda x, w: F.rms_norm(x, w), N(2, 3, 4), N(4)),
    case("rms_norm_2d", lambda x, w: F.rms_norm(x, w, eps=1e-3), N(3, 5), N(5)),
    case("rms_norm_no_weight", lambda x: F.rms_norm(x), N(3, 4)),
    # attention: q (B, H, Tq, D), k, v (B, Hkv, Tk, D)
    case("sdpa", sdpa(), N(2, 2, 3, 2), N(2, 2, 3, 2), N(2, 2, 3, 2)),
    case("sdpa_causal", sdpa(is_causal=True), N(2, 2, 3, 2), N(2, 2, 3, 2), N(2, 2, 3, 2)),
    case("sdpa_gqa_half", sdpa(is_causal=True), N(1, 4, 3, 2), N(1, 2, 3, 2), N(1, 2, 3, 2)),
    case("sdpa_mqa", sdpa(), N(1, 4, 3, 2), N(1, 1, 3, 2), N(1, 1, 3, 2)),
    case("sdpa_mqa_causal", sdpa(is_causal=True), N(1, 4, 3, 2), N(1, 1, 3, 2), N(1, 1, 3, 2)),
    case("sdpa_bool_mask", sdpa(attn_mask=CAUSAL_LIKE), N(1, 2, 3, 2), N(1, 2, 3, 2),
         N(1, 2, 3, 2)),
    case("sdpa_bool_mask_per_head_gqa", sdpa(attn_mask=HEAD_MASK), N(1, 4, 3, 2), N(1, 2, 3, 2),
         N(1, 2, 3, 2)),
    case("sdpa_fully_masked_row", sdpa(attn_mask=DEAD_ROW), N(1, 2, 3, 2), N(1, 2, 3, 2),
         N(1, 2, 3, 2)),
    case("sdpa_additive_mask", sdpa(attn_mask=ADDITIVE), N(2, 2, 3, 2), N(2, 2, 3, 2),
         N(2, 2, 3, 2)),
    case("sdpa_additive_mask_causal", sdpa(attn_mask=ADDITIVE, is_causal=True), N(1, 2, 3, 2),
         N(1, 2, 3, 2), N(1, 2, 3, 2)),
    case("sdpa_scale", sdpa(scale=0.3), N(1, 2, 3, 2), N(1, 2, 3, 2), N(1, 2, 3, 2)),
    case("sdpa_causal_tq_lt_tk", sdpa(is_causal=True), N(1, 2, 2, 3), N(1, 2, 4, 3),
         N(1, 2, 4, 3)),
    case("sdpa_causal_tq_gt_tk", sdpa(is_causal=True), N(1, 2, 4, 2), N(1, 2, 2, 2),
         N(1, 2, 2, 2)),
    case("sdpa_noncausal_tq_ne_tk_gqa", sdpa(), N(1, 2, 2, 3), N(1, 1, 4, 3), N(1, 1, 4, 3)),
    case("sdpa_sliding_window", sdpa(is_causal=True, window=2), N(1, 2, 5, 2), N(1, 1, 5, 2),
         N(1, 1, 5, 2)),
    case("sdpa_window_bidirectional", sdpa(window=2), N(1, 2, 5, 2), N(1, 1, 5, 2),
         N(1, 1, 5, 2)),
    case("sdpa_window_tq_lt_tk", sdpa(is_causal=True, window=3), N(1, 2, 2, 3), N(1, 2, 6, 3),
         N(1, 2, 6, 3)),
    # attention straight from a packed projection qkv (B, T, H + 2 Hkv, D)
    case("packed_attention_mha", lambda qkv: PackedAttentionOp.apply(qkv, n_head=2, n_kv_head=2),
         N(2, 3, 6, 2)),
    case("packed_attention_gqa_window", lambda qkv: PackedAttentionOp.apply(
        qkv, n_head=4, n_kv_head=2, window=2), N(1, 5, 8, 2)),
    case("packed_attention_mqa_bidirectional", lambda qkv: PackedAttentionOp.apply(
        qkv, n_head=2, n_kv_head=1, causal=False), N(2, 3, 4, 3)),
    case("packed_rope", lambda qkv: PackedRopeOp.apply(qkv, cos=np.cos(ANGLES), sin=np.sin(ANGLES),
                                                      n_rotated=3), N(2, 3, 4, 4)),
    # QK-norm (and RoPE) on the packed projection: the gains get their gradients too
    case("packed_qk_norm_rope_gqa", lambda qkv, w_q, w_k: PackedQKNormRopeOp.apply(
        qkv, w_q, w_k, cos=np.cos(ANGLES), sin=np.sin(ANGLES), n_head=2, n_kv_head=1),
        N(2, 3, 4, 4), N(4), N(4)),
    case("packed_qk_norm_mha", lambda qkv, w_q, w_k: PackedQKNormRopeOp.apply(
        qkv, w_q, w_k, n_head=2, n_kv_head=2), N(1, 3, 6, 4), N(4), N(4)),
    # a learned additive bias (T5 / ALiBi-like) broadcast over the batch gets its own gradient
    case("sdpa_learned_bias", lambda q, k, v, bias: F.scaled_dot_product_attention(
        q, k, v, attn_mask=bias, is_causal=True), N(2, 2, 3, 2), N(2, 2, 3, 2), N(2, 2, 3, 2),
        N(1, 2, 3, 3)),
    # strided (non-contiguous) inputs and incoming gradients, as a model produces them
    case("sdpa_from_B_T_H_D", lambda q, k, v: F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True).transpose(1, 2),
        N(2, 3, 2, 2), N(2, 3, 1, 2), N(2, 3, 1, 2)),
    case("gelu_strided", lambda a: F.gelu(a.T[::2]).T, N(3, 4)),
    case("relu2_strided", lambda a: F.relu2(a.T[::2]).T, A(3, 4)),
    case("layer_norm_strided", lambda x, w, b: F.layer_norm(x[:, ::2], w, b).transpose(0, 1),
         N(2, 6, 3), N(3), N(3)),
    case("rms_norm_strided", lambda x, w: F.rms_norm(x.T, w[::2]).T, N(4, 3), N(8)),
    case("embedding_strided_weight", lambda w: F.embedding(IDS, w.T).transpose(0, 2), N(3, 5)),
    case("ce_strided_logits", lambda x: F.cross_entropy(x.transpose(0, 1), TARGETS,
                                                        reduction="none").T, N(3, 2, 5)),
]


@pytest.mark.parametrize("fn,specs", CASES)
def test_gradcheck(fn, specs, impl, device):
    inputs = _inputs(specs, device)
    with trace() as dispatched:
        assert tl.gradcheck(fn, *inputs)
    if impl == "reference":  # use_kernels(False) forces the reference everywhere
        assert all(label == "reference" for _, label in dispatched), dispatched
    for x in inputs:         # and every input did get a gradient of its own shape and dtype
        assert x.grad is not None and x.grad.shape == x.shape and x.grad.dtype == np.float64


# ---- random directions for inputs too large to perturb element by element -------------------
LARGE = [
    case("sdpa_causal_T33_D16", sdpa(is_causal=True), N(1, 2, 33, 16), N(1, 2, 33, 16),
         N(1, 2, 33, 16)),
    case("sdpa_gqa_T33_D16", sdpa(), N(1, 4, 33, 16), N(1, 1, 33, 16), N(1, 1, 33, 16)),
    case("sdpa_window_T70_D8", sdpa(is_causal=True, window=9), N(1, 2, 70, 8), N(1, 1, 70, 8),
         N(1, 1, 70, 8)),
    case("ce_smooth_V257", lambda x: F.cross_entropy(x, np.arange(24).reshape(4, 6) * 10 % 257,
                                                     label_smoothing=0.1), N(4, 6, 257)),
    case("layer_norm_C192", lambda x, w, b: F.layer_norm(x, w, b), N(2, 17, 192), N(192), N(192)),
    case("rms_norm_C192", lambda x, w: F.rms_norm(x, w), N(2, 17, 192), N(192)),
    case("gelu_1k", lambda x: F.gelu(x * 3.0), N(33, 40)),
    case("relu2_1k", lambda x: F.relu2(x * 3.0), A(33, 40)),
    case("embedding_V65", lambda w: F.embedding(np.arange(64).reshape(4, 16) % 13, w), N(65, 32)),
]


@pytest.mark.parametrize("fn,specs", LARGE)
def test_gradcheck_directions(fn, specs, impl, device):
    inputs = _inputs(specs, device)
    assert tl.gradcheck(fn, *inputs, directions=5)


def test_dropout_seed_is_deterministic(device):
    x = tl.Tensor(np.ones((50, 40)), device=device)
    a, b = (F.dropout(x, p=0.3, training=True, seed=5).numpy() for _ in range(2))
    c = F.dropout(x, p=0.3, training=True, seed=6).numpy()
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    assert set(np.unique(a)) == {0.0, 1 / 0.7}
    assert 0.2 < (a == 0).mean() < 0.4


# ---- where finite differences don't apply: ties and dead rows -------------------------------
@pytest.mark.parametrize("axis,expected", [
    (None, [[0.0, 0.5, 0.0], [0.0, 0.5, 0.0]]),
    (1, [[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]),
    (0, [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]),
])
def test_max_ties_share_the_gradient(axis, expected, device):
    x = tl.Tensor(np.array([[1.0, 3.0, 2.0], [1.0, 3.0, 2.0]]), requires_grad=True, device=device)
    x.max(axis=axis).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), expected)


def test_attention_row_with_every_key_masked_is_zero(impl, device):
    q, k, v = _inputs([N(1, 2, 3, 2)] * 3, device)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=DEAD_ROW)
    assert np.isfinite(o.numpy()).all()
    np.testing.assert_array_equal(o.numpy()[:, :, 1], 0.0)
    o.backward(np.ones(o.shape))
    for x in (q, k, v):
        assert np.isfinite(x.grad.numpy()).all()
    np.testing.assert_array_equal(q.grad.numpy()[:, :, 1], 0.0)
