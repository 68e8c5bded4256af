"""Every registered kernel against its readable reference.

The table below maps each kernel name to a maker of argument tuples; a test asserts that the
table's names equal the registry's, so no kernel lands untested. Cases cover sizes 1, 3, 17, 65
and the main job's shapes, and large magnitudes (1e4 logits and activations). float64 must agree
to rounding; float32 to a few ulps of the values' scale.
"""
import numpy as np
import pytest

import tinygrad_llm as tl
import tinygrad_llm.nn.functional as F
from tinygrad_llm import kernels
from tinygrad_llm.ops.attention import PackedAttentionOp, attention_forward
from tinygrad_llm.ops.rope import PackedQKNormRopeOp
from tinygrad_llm.optim import SGD, AdamW, Lion, clip_grad_norm_

SIZES = [1, 3, 17, 65]


def _x(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def _cross_entropy_forward(rng, dtype):
    for n, v in [(1, 1), (3, 3), (17, 65), (65, 17), (768, 65)]:
        for scale, smoothing in [(1.0, 0.0), (1e4, 0.0), (1.0, 0.1)]:
            targets = rng.integers(0, v, n)
            targets[::5] = -100
            yield _x(rng, (n, v), dtype, scale), targets, -100, smoothing


def _cross_entropy_backward(rng, dtype):
    for logits, targets, ignore, smoothing in _cross_entropy_forward(rng, dtype):
        lse = kernels.reference("cross_entropy_forward")(logits, targets, ignore, smoothing)[1]
        yield rng.random(len(targets)).astype(dtype), logits, targets, lse, ignore, smoothing


def _rows(rng, dtype):
    for n in SIZES + [768]:
        for c in SIZES + [128]:
            for scale in (1.0, 1e4):
                yield _x(rng, (n, c), dtype, scale), _x(rng, (c,), dtype)


def _layer_norm_forward(rng, dtype):
    for x, w in _rows(rng, dtype):
        yield x, w, _x(rng, w.shape, dtype), 1e-5
        yield x, w, None, 1e-5


def _layer_norm_backward(rng, dtype):
    for x, w, b, eps in _layer_norm_forward(rng, dtype):
        _, mu, r = kernels.reference("layer_norm_forward")(x, w, b, eps)
        yield _x(rng, x.shape, dtype), x, w, mu, r, b is not None


def _rms_norm_forward(rng, dtype):
    for x, w in _rows(rng, dtype):
        yield x, w, 1e-6


def _rms_norm_backward(rng, dtype):
    for x, w, eps in _rms_norm_forward(rng, dtype):
        _, r = kernels.reference("rms_norm_forward")(x, w, eps)
        yield _x(rng, x.shape, dtype), x, w, r


def _gelu_forward(rng, dtype):
    for shape in [(1,), (3,), (17, 65), (12, 64, 512)]:
        for scale in (1.0, 4.0, 1e4):
            for approximate in ("none", "tanh"):
                yield _x(rng, shape, dtype, scale), approximate


def _gelu_backward(rng, dtype):
    for x, approximate in _gelu_forward(rng, dtype):
        yield _x(rng, x.shape, dtype), x, approximate


def _relu2_forward(rng, dtype):
    """Sizes 1, odd, past the parallel loop's split over threads (100_003) and the main job's
    (B, T, 4C) = (16, 128, 768), with exact zeros (+0.0 and -0.0) among the values; NaN and
    infinities: test_relu2_kernel_is_exact_on_special_and_strided_inputs."""
    for shape in [(1,), (3,), (17, 65), (100_003,), (16, 128, 768)]:
        for scale in (1.0, 1e4):
            x = _x(rng, shape, dtype, scale)
            x.reshape(-1)[:2] = [0.0, -0.0][:x.size]
            yield (x,)


def _relu2_backward(rng, dtype):
    for (x,) in _relu2_forward(rng, dtype):
        yield _x(rng, x.shape, dtype), x


def _embedding_backward(rng, dtype):
    for n, c, v in [(1, 1, 1), (3, 3, 2), (17, 65, 5), (768, 128, 65), (65, 17, 1000)]:
        yield _x(rng, (n, c), dtype), rng.integers(0, v, n), v


ATTENTION_SHAPES = [  # (B, H, Hkv, Tq, Tk, D, causal)
    (1, 1, 1, 1, 1, 1, True), (2, 3, 3, 3, 3, 5, True), (1, 4, 2, 17, 17, 8, True),
    (2, 4, 1, 65, 65, 16, True), (1, 2, 2, 3, 17, 4, True), (1, 2, 2, 1, 70, 8, True),
    (2, 2, 1, 17, 17, 3, False), (1, 2, 2, 5, 9, 4, False), (12, 4, 4, 64, 64, 32, True),
]
WINDOWS = {(1, 4, 2, 17, 17, 8, True): 5, (2, 4, 1, 65, 65, 16, True): 1,   # sliding window
           (1, 2, 2, 3, 17, 4, True): 7, (12, 4, 4, 64, 64, 32, True): 16,
           (2, 2, 1, 17, 17, 3, False): 4, (1, 2, 2, 5, 9, 4, False): 2}


def _attention_forward(rng, dtype):
    for shape in ATTENTION_SHAPES:
        b, h, hkv, tq, tk, d, causal = shape
        for scale in (1.0, 30.0):              # 30: scores in the hundreds, softmax saturates
            for window in {0, WINDOWS.get(shape, 0)}:
                yield (_x(rng, (b, h, tq, d), dtype, scale),
                       _x(rng, (b, hkv, tk, d), dtype, scale), _x(rng, (b, hkv, tk, d), dtype),
                       None, causal, d ** -0.5, window)


def _attention_backward(rng, dtype):
    for q, k, v, mask, causal, scale, window in _attention_forward(rng, dtype):
        o, lse = kernels.reference("attention_forward")(q, k, v, mask, causal, scale, window)
        yield _x(rng, q.shape, dtype), q, k, v, o, lse, mask, causal, scale, window


def _packed_attention_forward(rng, dtype):
    for shape in ATTENTION_SHAPES:
        b, h, hkv, tq, tk, d, causal = shape
        if tq != tk:                           # one qkv array: queries and keys share T
            continue
        for scale in (1.0, 30.0):
            for window in {0, WINDOWS.get(shape, 0)}:
                qkv = _x(rng, (b, tq, h + 2 * hkv, d), dtype, scale)
                qkv[:, :, h + hkv:] /= scale       # values at unit scale, as above
                yield qkv, h, hkv, causal, d ** -0.5, window


def _packed_attention_backward(rng, dtype):
    for qkv, h, hkv, causal, scale, window in _packed_attention_forward(rng, dtype):
        o, lse = kernels.reference("packed_attention_forward")(qkv, h, hkv, causal, scale, window)
        yield _x(rng, o.shape, dtype), qkv, o, lse, h, hkv, causal, scale, window


def _packed_magnitude(qkv, h, hkv, scale):
    return _score_magnitude(qkv[:, :, :h].transpose(0, 2, 1, 3),
                            qkv[:, :, h:h + hkv].transpose(0, 2, 1, 3), scale)


def _packed_qk_norm_rope_forward(rng, dtype):
    # (B, T, H, Hkv, D): one head each, odd T and heads, GQA, a task boundary past 8 chunks
    # (B T = 17 rows), the main job's (16, 128, 4, 4, 48); tables real-looking or random (halves
    # differ), or None (QK-norm alone); activations at 1e4 (the norm takes the scale out)
    for b, t, h, hkv, d in [(1, 1, 1, 1, 2), (1, 17, 3, 1, 6), (3, 5, 4, 2, 10),
                            (16, 128, 4, 4, 48)]:
        for scale, tables in [(1.0, "random"), (1e4, "none"), (1.0, "none"), (1e4, "random")]:
            qkv = _x(rng, (b, t, h + 2 * hkv, d), dtype, scale)
            w_q, w_k = _x(rng, (d,), dtype), _x(rng, (d,), dtype)
            cos = _x(rng, (t, d), dtype) if tables == "random" else None
            sin = _x(rng, (t, d), dtype) if tables == "random" else None
            yield qkv, w_q, w_k, cos, sin, h, hkv, 1e-6


def _packed_qk_norm_rope_backward(rng, dtype):
    for qkv, w_q, w_k, cos, sin, h, hkv, eps in _packed_qk_norm_rope_forward(rng, dtype):
        _, r = kernels.reference("packed_qk_norm_rope_forward")(qkv, w_q, w_k, cos, sin, h, hkv,
                                                               eps)
        yield _x(rng, qkv.shape, dtype), qkv, w_q, w_k, cos, sin, h, hkv, r


def _optimizer_state(rng, dtype):
    """Parameters, gradients and mid-training state, zero gradient/momentum in every 4th entry
    (unused embedding rows; Lion's sign(0)). 100_003 crosses the kernels' parallel threshold."""
    for shape in [(1,), (3,), (17,), (65,), (17, 65), (100_003,)]:
        p, g, m = (_x(rng, shape, dtype) for _ in range(3))
        g.reshape(-1)[::4] = m.reshape(-1)[::4] = 0
        yield p, g, m, (rng.random(shape) + 0.01).astype(dtype)


def _adam_update(rng, dtype):
    for p, g, m, v in _optimizer_state(rng, dtype):
        for decoupled, weight_decay in [(True, 0.1), (False, 0.1), (True, 0.0)]:
            yield (p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, weight_decay, decoupled, 1 - 0.9 ** 3,
                   1 - 0.999 ** 3)


def _sgd_update(rng, dtype):
    for p, g, m, _ in _optimizer_state(rng, dtype):
        for momentum, dampening, weight_decay, nesterov in [
                (0.0, 0.0, 0.0, False), (0.9, 0.0, 0.01, True), (0.9, 0.1, 0.0, False)]:
            yield p, g, m if momentum else None, 0.1, momentum, dampening, weight_decay, nesterov


def _lion_update(rng, dtype):
    for p, g, m, _ in _optimizer_state(rng, dtype):
        for weight_decay in (0.0, 0.3):
            yield p, g, m, 1e-3, 0.9, 0.99, weight_decay


def _add_bias(rng, dtype):
    for m in SIZES + [768, 4096]:
        for n in SIZES + [384]:                   # 4096 x 384 runs on several threads
            for scale in (1.0, 1e4):
                yield _x(rng, (m, n), dtype, scale), _x(rng, (n,), dtype, scale)


def _bias_grad(rng, dtype):
    for m in SIZES + [768, 4096]:                 # 4096 x 384 runs on several threads
        for n in SIZES + [384]:
            for scale in (1.0, 1e4):
                yield (_x(rng, (m, n), dtype, scale),)
    yield (_x(rng, (384, 96), dtype).T,)          # a transposed (strided) view


def _grad_squared_norms(rng, dtype):
    for shapes in [[(1,)], [(3,), (17, 65)], [(65, 3, 17), (1, 1), (768, 128)]]:
        for scale in (1.0, 1e4):
            grads = [_x(rng, shape, dtype, scale) for shape in shapes]
            grads[-1] = grads[-1].T if grads[-1].ndim == 2 else grads[-1]      # a strided one
            yield np.zeros((len(grads), 2)), grads


CASES = {
    "grad_squared_norms": _grad_squared_norms,
    "add_bias": _add_bias,
    "bias_grad": _bias_grad,
    "cross_entropy_forward": _cross_entropy_forward,
    "cross_entropy_backward": _cross_entropy_backward,
    "layer_norm_forward": _layer_norm_forward,
    "layer_norm_backward": _layer_norm_backward,
    "rms_norm_forward": _rms_norm_forward,
    "rms_norm_backward": _rms_norm_backward,
    "gelu_forward": _gelu_forward,
    "gelu_backward": _gelu_backward,
    "relu2_forward": _relu2_forward,
    "relu2_backward": _relu2_backward,
    "embedding_backward": _embedding_backward,
    "attention_forward": _attention_forward,
    "attention_backward": _attention_backward,
    "packed_attention_forward": _packed_attention_forward,
    "packed_attention_backward": _packed_attention_backward,
    "packed_qk_norm_rope_forward": _packed_qk_norm_rope_forward,
    "packed_qk_norm_rope_backward": _packed_qk_norm_rope_backward,
    "adam_update": _adam_update,
    "sgd_update": _sgd_update,
    "lion_update": _lion_update,
}
TOLERANCE = {np.float64: 1e-10, np.float32: 2e-5}


def _score_magnitude(q, k, scale):
    """Attention outputs go through e^(s - lse): an absolute rounding error in a score of size
    |s| moves them by about |s| ulps, in any float32 implementation."""
    group = q.shape[1] // k.shape[1]
    s = np.einsum("bhqd,bhkd->bhqk", q.astype(np.float64), np.repeat(k, group, axis=1))
    return max(1.0, float(np.abs(s).max()) * scale)


CONDITION = {  # float32 error grows with these; both implementations round differently
    "attention_forward": lambda q, k, v, mask, causal, scale, window:
        _score_magnitude(q, k, scale),
    "attention_backward": lambda do, q, k, v, o, lse, mask, causal, scale, window:
        _score_magnitude(q, k, scale),
    "packed_attention_forward": lambda qkv, h, hkv, causal, scale, window:
        _packed_magnitude(qkv, h, hkv, scale),
    "packed_attention_backward": lambda do, qkv, o, lse, h, hkv, causal, scale, window:
        _packed_magnitude(qkv, h, hkv, scale),
}


# integer kernels with their own kernel-vs-reference tests (odd sizes, size 1, huge counts)
TESTED_ELSEWHERE = {"bpe_learn_merges": "tests/tokenizers/test_bpe.py",
                    "decode_step": "tests/generate/test_decode_step.py",
                    "kv_quant_attention": "tests/generate/test_kv_quant_kernel.py",
                    "minhash": "tests/data/test_dedup.py",
                    "quant_matmul": "tests/quant/test_linear.py",
                    "quant_pack": "tests/quant/test_linear.py",
                    "philox_uniform": "tests/test_random.py"}


def test_every_registered_kernel_has_parity_cases():
    assert set(CASES) | set(TESTED_ELSEWHERE) == set(kernels.registered("cpu"))


def _assert_close(name, got, want, dtype, args):
    condition = CONDITION.get(name, lambda *a: 1.0)(*args) if dtype == np.float32 else 1.0
    if want is None:
        assert got is None
        return
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype}, reference {want.dtype}"
    assert got.shape == want.shape
    scale = max(float(np.abs(want).max()), 1.0) if want.size else 1.0
    tol = TOLERANCE[dtype] * scale * condition
    err = float(np.abs(got.astype(np.float64) - want).max()) if want.size else 0.0
    shapes = [getattr(a, "shape", a) for a in args]
    assert err <= tol, f"{name} {shapes}: max error {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_matches_reference(name, dtype):
    rng = np.random.default_rng(0)
    fast = getattr(_dispatchers(), name)
    reference = kernels.reference(name)
    n = 0
    for args in CASES[name](rng, dtype):
        want = reference(*_fresh(args))
        with tl.use_kernels(True):
            got = fast(*_fresh(args))
        assert kernels.ran(name) == "cpu", f"{name} did not take the fast path for this case"
        for g, w in zip(got if isinstance(got, tuple) else (got,),
                        want if isinstance(want, tuple) else (want,)):
            _assert_close(name, g, w, dtype, args)
        n += 1
    assert n >= 5


def _fresh(args):
    """Copies of the array arguments: the optimizer updates write theirs in place."""
    return tuple(a.copy() if isinstance(a, np.ndarray) else a for a in args)


def _dispatchers():
    """The dispatching functions, by kernel name (what the ops call)."""
    from tinygrad_llm.ops import activation, attention, embedding, linalg, norm, rope, softmax
    from tinygrad_llm.optim import adam, clip, lion, sgd

    class Table:
        pass
    table = Table()
    for module in (activation, attention, embedding, linalg, norm, rope, softmax, adam, clip,
                   lion, sgd):
        for value in vars(module).values():
            if hasattr(value, "kernel_name"):
                setattr(table, value.kernel_name, value)
    return table


def test_use_kernels_false_forces_the_reference():
    x = np.ones((3, 4), np.float32)
    with tl.use_kernels(False):
        attention_forward(x[None, None], x[None, None], x[None, None], None, True, 0.5, 0)
    assert kernels.ran("attention_forward") == "reference"
    with tl.use_kernels(True):
        attention_forward(x[None, None], x[None, None], x[None, None], None, True, 0.5, 0)
    assert kernels.ran("attention_forward") == "cpu"


def test_explicit_mask_runs_the_reference():
    q = np.ones((1, 1, 3, 4), np.float32)
    with tl.use_kernels(True):
        attention_forward(q, q, q, np.ones((3, 3), bool), False, 0.5, 0)
    assert kernels.ran("attention_forward") == "reference"


def test_training_step_shapes_take_the_fast_path():
    """A float32 step through every fused family (the main job's shapes) runs no reference."""
    rng = np.random.default_rng(0)
    b, t, c, h, v = 12, 64, 128, 4, 65
    ids = rng.integers(0, v, (b, t))
    wte = tl.Tensor(_x(rng, (v, c), np.float32), requires_grad=True)
    ln_w = tl.Tensor(np.ones(c, np.float32), requires_grad=True)
    ln_b = tl.Tensor(np.zeros(c, np.float32), requires_grad=True)
    rms_w = tl.Tensor(np.ones(c, np.float32), requires_grad=True)
    with tl.use_kernels(True), kernels.trace() as log:
        x = F.embedding(ids, wte)                                        # (B, T, C)
        x = F.layer_norm(x, ln_w, ln_b)
        qkv = x.reshape(b, t, h, c // h).transpose(0, 2, 1, 3)          # (B, H, T, D)
        y = F.scaled_dot_product_attention(qkv, qkv, qkv, is_causal=True)
        y = y.transpose(0, 2, 1, 3).reshape(b, t, c)                    # (B, T, C)
        y = F.rms_norm(F.gelu(y) + F.relu2(y), rms_w)
        packed = x.reshape(b, t, 4, c // 4)                              # (B, T, S, D)
        cos = np.cos(np.arange(t * c // 4) / t).reshape(t, c // 4)
        packed = PackedQKNormRopeOp.apply(packed, rms_w[:c // 4], ln_w[:c // 4], cos=cos,
                                          sin=np.sin(cos), n_head=2, n_kv_head=1)
        packed = PackedAttentionOp.apply(packed, n_head=2, n_kv_head=1)
        loss = F.cross_entropy(F.linear(y, wte, ln_b[:v]), ids) + (packed * packed).mean()
        loss.backward()
        params = [wte, ln_w, ln_b, rms_w]
        clip_grad_norm_(params, 1.0)
        for opt in (AdamW(params), SGD(params, lr=0.1, momentum=0.9), Lion(params)):
            opt.step()
    assert loss.dtype == np.float32 and wte.grad.dtype == np.float32
    ran = {name for name, _ in log}
    assert ran == set(CASES), f"families not exercised: {set(CASES) - ran}"
    slow = [(name, impl) for name, impl in log if impl != "cpu"]
    assert not slow, f"fell back to the reference: {slow}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_a_nan_input_gives_nan_where_the_reference_does(dtype):
    """A NaN logit or score anywhere in a row must reach that row's loss or output (a diverging
    run has to show NaN, not a finite loss with the NaN softmaxed away); -inf entries (masked
    logits) must not. The reference's NaN pattern is the specification."""
    rng = np.random.default_rng(0)
    logits = _x(rng, (6, 65), dtype)
    logits[0, 5] = logits[1, 0] = logits[2, 64] = np.nan          # first, middle, last column
    logits[3, 7] = -np.inf
    targets = np.array([1, 2, 3, 4, 5, -100])
    logits[5, 9] = np.nan                                         # an ignored row: loss 0
    ce = _dispatchers().cross_entropy_forward
    want, lse = kernels.reference("cross_entropy_forward")(logits, targets, -100, 0.0)
    with tl.use_kernels(True):
        got, _ = ce(logits, targets, -100, 0.0)
    assert kernels.ran("cross_entropy_forward") == "cpu"
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got[:3]).all() and np.isfinite(got[3:]).all()
    dloss = np.ones(6, dtype)
    want = kernels.reference("cross_entropy_backward")(dloss, logits, targets, lse, -100, 0.0)
    with tl.use_kernels(True):
        got = _dispatchers().cross_entropy_backward(dloss, logits, targets, lse, -100, 0.0)
    np.testing.assert_array_equal(np.isnan(got[:5]).any(1), np.isnan(want[:5]).any(1))

    q, k, v = (_x(rng, (1, 2, 17, 8), dtype) for _ in range(3))
    k[0, 0, 6, 3] = np.nan                       # key 6 of head 0: queries 6.. see it if causal
    for causal in (True, False):
        want, _ = attention_forward.__wrapped__(q, k, v, None, causal, 0.35, 0)
        with tl.use_kernels(True):
            got, _ = attention_forward(q, k, v, None, causal, 0.35, 0)
        assert kernels.ran("attention_forward") == "cpu"
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        assert np.isnan(want).any() and not np.isnan(want[0, 1]).any()


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")   # 0 * inf = NaN, as meant
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_relu2_kernel_is_exact_on_special_and_strided_inputs(dtype):
    """The squared ReLU is a compare and exact doublings and products, so the kernel gives the
    reference's values bit for bit: NaN in x or dy passes through (a diverging run shows NaN),
    -inf gives 0 and +inf gives inf, 0 * inf in the gradient is NaN as in the reference; on
    non-contiguous x and dy (transposed, strided views, as a model hands them over)."""
    rng = np.random.default_rng(0)
    base = _x(rng, (9, 34), dtype, 3.0)
    base[0, :12:2] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30]
    x = base.T[::2]                                         # (17, 9): rows 0..5 hold the specials
    dy = _x(rng, (17, 18), dtype)[:, ::2]                   # (17, 9)
    dy[3, 0] = np.inf                                       # against x = 0: 0 * inf
    dy[2, 0] = np.nan                                       # against x = -inf: NaN * 0
    dy[6, 1] = np.nan
    assert not x.flags.c_contiguous and not dy.flags.c_contiguous
    act = _dispatchers()
    want_y = kernels.reference("relu2_forward")(x)
    want_dx = kernels.reference("relu2_backward")(dy, x)
    with tl.use_kernels(True):
        y = act.relu2_forward(x)
        assert kernels.ran("relu2_forward") == "cpu"
        dx = act.relu2_backward(dy, x)
        assert kernels.ran("relu2_backward") == "cpu"
    assert y.dtype == dx.dtype == dtype and y.shape == dx.shape == x.shape
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(dx, want_dx)
    assert np.isnan(y[0, 0]) and y[1, 0] == np.inf and (y[2:5, 0] == 0).all()
    assert np.isnan(dx[[0, 2, 3, 6], [0, 0, 0, 1]]).all()


@pytest.mark.parametrize("head_major", [True, False], ids=["head_major", "token_major"])
def test_attention_kernel_writes_every_output_element(head_major):
    """The kernels fill their outputs themselves (o, and dq, dk, dv zeroed by the task that owns
    each row), so outputs handed over full of NaN must come back equal to the reference: rows
    that see no key (causal with more queries than keys, a window) included."""
    from tinygrad_llm.kernels.cpu import attention as cpu_attention
    rng = np.random.default_rng(0)
    cases = [(2, 4, 2, 5, 3, 8, True, 0), (1, 3, 3, 17, 17, 4, True, 5),
             (2, 2, 1, 9, 9, 4, False, 2), (1, 2, 2, 1, 1, 8, True, 0)]
    for b, h, hkv, tq, tk, d, causal, window in cases:
        q, do = _x(rng, (b, h, tq, d), np.float32), _x(rng, (b, h, tq, d), np.float32)
        k, v = _x(rng, (b, hkv, tk, d), np.float32), _x(rng, (b, hkv, tk, d), np.float32)
        want_o, lse = attention_forward.__wrapped__(q, k, v, None, causal, 0.4, window)
        want = kernels.reference("attention_backward")(do, q, k, v, want_o, lse, None, causal,
                                                        0.4, window)
        lay = (lambda x: x) if head_major else (lambda x: np.ascontiguousarray(
            x.transpose(0, 2, 1, 3)))
        back = (lambda x: x) if head_major else (lambda x: x.transpose(0, 2, 1, 3))
        qs, ks, vs, dos = lay(q), lay(k), lay(v), lay(do)
        o = np.full_like(qs, np.nan)
        cpu_attention._forward(qs, 0, ks, 0, vs, 0, h, hkv, head_major, causal, 0.4, window, o)
        np.testing.assert_allclose(back(o), want_o, atol=1e-5)
        grads = [np.full_like(a, np.nan) for a in (qs, ks, vs)]
        cpu_attention._backward(dos, lay(want_o), qs, 0, ks, 0, vs, 0, h, hkv, head_major, lse,
                                causal, 0.4, window, *grads)
        for got, ref in zip(grads, want):
            np.testing.assert_allclose(back(got), ref, atol=1e-4)


def test_vectorised_exp_matches_numpy_and_keeps_nan():
    """exp_f32, the polynomial exp every float32 softmax loop uses, against NumPy's exp in
    float64: within 2e-7 relative for z in [-87, 88], exactly 0 below -87 (float32's denormals)
    and at -inf, 1 at 0, and NaN for NaN."""
    from numba import njit

    from tinygrad_llm.kernels.cpu._common import exp_f32

    @njit
    def apply(z, out):
        for j in range(z.shape[0]):
            out[j] = exp_f32(z[j])

    z = np.concatenate([np.linspace(-87, 88, 200_001), [-87.0, -87.5, -100.0, -1e30, 0.0, -0.0,
                                                       -np.inf, np.nan]]).astype(np.float32)
    got = np.empty_like(z)
    apply(z, got)
    want = np.exp(z.astype(np.float64))
    normal = z >= -87
    rel = np.abs(got[normal] - want[normal]) / want[normal]
    assert rel.max() < 2e-7, f"max relative error {rel.max():.2e} at z={z[normal][rel.argmax()]}"
    assert (got[(z < -87) | np.isneginf(z)] == 0).all()
    assert got[z == 0].tolist() == [1.0, 1.0]
    assert np.isnan(got[np.isnan(z)]).all()
