"""Position schemes: RopeOp and the modules of nn/positions.py.

Gradients: float64 gradchecks (random cotangent) of RopeOp, RotaryEmbedding with an offset,
LearnedPositions and T5RelativeBias (into its table). Oracles: RoPE against the complex-number
formulation, the sinusoidal formula, hand-computed ALiBi slopes and T5 buckets. Properties: RoPE
scores depend only on relative position, position 0 is the identity, linear scaling, NTK and
YaRN do what their papers say (YaRN's ramp also as Hugging Face computes it), and
GPT.set_rope_scaling rescales a model in place and back. Bad arguments raise ValueError naming
the limit or the key.
"""
import math

import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import backend
from tinygrad_llm.generate import generate
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.models.hf import _rope_from_hf
from tinygrad_llm.nn.positions import (ALiBi, LearnedPositions, RotaryEmbedding,
                                       SinusoidalPositions, T5RelativeBias, alibi_slopes,
                                       rope_frequencies, yarn_frequencies)
from tinygrad_llm.ops.rope import RopeOp, rotate_half, rotate_half_transpose


def _randn(*shape, seed=0, device="cpu", requires_grad=False):
    data = np.random.default_rng(seed).standard_normal(shape)
    return tl.Tensor(data, requires_grad=requires_grad, device=device)


def _rope_complex(x, positions, theta):
    """Oracle: pair (i, i + D/2) as the complex number x_i + j x_{i+D/2}, times
    e^{j p theta^(-2i/D)}. x: (..., T, D) NumPy, positions: (T,)."""
    D = x.shape[-1]
    half = D // 2
    z = x[..., :half] + 1j * x[..., half:]
    angle = np.asarray(positions, dtype=np.float64)[:, None] * theta ** (-2.0 * np.arange(half) / D)
    z = z * np.exp(1j * angle)
    return np.concatenate((z.real, z.imag), axis=-1)


# ---- RopeOp ----------------------------------------------------------------------------------
@pytest.mark.parametrize("T, D", [(1, 2), (3, 4), (5, 6), (7, 8)])
def test_rope_op_gradcheck(device, T, D):
    # general (non-trigonometric) tables with different halves: a swapped half or sign shows
    rng = np.random.default_rng(T * 10 + D)
    cos, sin = rng.standard_normal((T, D)), rng.standard_normal((T, D))
    x = _randn(2, 3, T, D, seed=D, device=device, requires_grad=True)
    xp = tl.backend.xp_for(device)
    assert tl.gradcheck(lambda x: RopeOp.apply(x, cos=xp.asarray(cos), sin=xp.asarray(sin)), x)


def test_rotate_half_transpose_is_its_adjoint():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((3, 8)), rng.standard_normal((3, 8))
    assert np.isclose(np.sum(rotate_half(a) * b), np.sum(a * rotate_half_transpose(b)))
    assert np.array_equal(rotate_half(np.array([1.0, 2.0, 3.0, 4.0])), [-3.0, -4.0, 1.0, 2.0])


def test_rope_op_rejects_bad_tables():
    x = np.zeros((1, 1, 3, 4))
    with pytest.raises(ValueError, match=r"cos has shape \(2, 4\)"):
        RopeOp.apply(tl.Tensor(x), cos=np.zeros((2, 4)), sin=np.zeros((3, 4)))
    with pytest.raises(ValueError, match="even"):
        RopeOp.apply(tl.Tensor(np.zeros((1, 3, 5))), cos=np.zeros((3, 5)), sin=np.zeros((3, 5)))
    with pytest.raises(TypeError, match="sin must be an array"):
        RopeOp.apply(tl.Tensor(x), cos=np.zeros((3, 4)), sin=None)


# ---- RotaryEmbedding ---------------------------------------------------------------------------
def test_rotary_gradcheck_with_offset(device):
    rope = RotaryEmbedding(8, 16, dtype=np.float64).to(device)
    x = _randn(2, 2, 3, 8, device=device, requires_grad=True)
    assert tl.gradcheck(lambda x: rope(x, offset=5), x)


@pytest.mark.parametrize("D, theta, offset", [(2, 10000.0, 0), (8, 10000.0, 3), (16, 500.0, 9)])
def test_rotary_matches_complex_rotation(device, D, theta, offset):
    rope = RotaryEmbedding(D, 32, theta=theta, dtype=np.float64).to(device)
    x = _randn(2, 3, 5, D, seed=D, device=device)
    want = _rope_complex(x.numpy(), np.arange(offset, offset + 5), theta)
    np.testing.assert_allclose(rope(x, offset=offset).numpy(), want, rtol=1e-12, atol=1e-12)


def test_rotary_scores_depend_only_on_relative_position():
    D = 16
    rope = RotaryEmbedding(D, 128, dtype=np.float64)
    q, k = _randn(1, 1, 1, D, seed=1), _randn(1, 1, 1, D, seed=2)

    def score(m, n):
        return float(np.sum(rope(q, offset=m).numpy() * rope(k, offset=n).numpy()))

    for m, n, s in [(3, 7, 11), (10, 2, 50), (0, 0, 90), (5, 40, 17)]:
        assert math.isclose(score(m, n), score(m + s, n + s), rel_tol=1e-10, abs_tol=1e-12)
    # and it does depend on the distance (the test above could not pass for a no-op rotation
    # only by accident)
    assert not math.isclose(score(3, 7), score(3, 8), rel_tol=1e-6)


def test_rotary_position_zero_is_identity(device):
    rope = RotaryEmbedding(8, 16).to(device)
    x = _randn(2, 3, 4, 8, device=device).float()
    y = rope(x).numpy()
    np.testing.assert_array_equal(y[..., 0, :], x.numpy()[..., 0, :])
    assert not np.allclose(y[..., 1, :], x.numpy()[..., 1, :])


def test_rotary_linear_scaling_interpolates_positions():
    D, f = 8, 4
    plain = RotaryEmbedding(D, 16, dtype=np.float64)
    scaled = RotaryEmbedding(D, 16, scaling={"type": "linear", "factor": f}, dtype=np.float64)
    assert scaled.max_positions == 64 and plain.max_positions == 16
    x = _randn(1, 2, 1, D, seed=3)
    for p in (0, 1, 5, 15):
        np.testing.assert_allclose(scaled(x, offset=f * p).numpy(), plain(x, offset=p).numpy(),
                                   rtol=1e-12, atol=1e-12)
    # a position between two trained ones is a genuine interpolation, not a copy
    assert not np.allclose(scaled(x, offset=f * 2 + 1).numpy(), plain(x, offset=2).numpy())


def test_rotary_ntk_scaling_changes_theta():
    D, f, theta = 8, 4.0, 10000.0
    ntk = RotaryEmbedding(D, 16, theta=theta, scaling={"type": "ntk", "factor": f},
                          dtype=np.float64)
    assert ntk.max_positions == 64
    assert math.isclose(ntk.effective_theta, theta * f ** (D / (D - 2)))
    same = RotaryEmbedding(D, 64, theta=theta * f ** (D / (D - 2)), dtype=np.float64)
    np.testing.assert_allclose(ntk.cos, same.cos, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ntk.sin, same.sin, rtol=1e-12, atol=1e-12)
    # NTK-aware: the highest frequency (pair 0) is untouched, the lowest (pair D/2-1) is slowed by
    # exactly f: angle(p) = p * theta'^(-(D-2)/D) = p * theta^(-(D-2)/D) / f
    plain = RotaryEmbedding(D, 64, theta=theta, dtype=np.float64)
    np.testing.assert_allclose(ntk.cos[:, 0], plain.cos[:, 0], rtol=1e-12, atol=1e-12)
    low = D // 2 - 1
    p = np.arange(64)
    np.testing.assert_allclose(ntk.cos[:, low], np.cos(p * theta ** (-(D - 2) / D) / f),
                               rtol=1e-12, atol=1e-12)


# ---- YaRN ----------------------------------------------------------------------------------
# D = 16, theta = 1e4 over L = 4096 original positions: pair i turns r_i = L theta^(-i/8) / (2 pi)
# times, 652, 206, 65 (r > beta_fast = 32: kept), 20.6, 6.5, 2.1 (ramp), 0.65, 0.21 (< beta_slow
# = 1: interpolated)
YARN_D, YARN_L = 16, 4096


def _yarn(factor=4.0, **extra):
    scaling = {"type": "yarn", "factor": factor, "original_max_position_embeddings": YARN_L,
               **extra}
    return RotaryEmbedding(YARN_D, 16, scaling=scaling, dtype=np.float64)


def test_yarn_keeps_high_frequencies_and_interpolates_low_ones():
    f = 4.0
    plain = rope_frequencies(YARN_D, 10000.0)
    got = yarn_frequencies(YARN_D, 10000.0, f, YARN_L)
    np.testing.assert_array_equal(got[:3], plain[:3])                 # plain RoPE's
    np.testing.assert_allclose(got[6:], plain[6:] / f, rtol=1e-15)    # position interpolation's
    r = YARN_L * plain[3:6] / (2 * math.pi)
    gamma = (r - 1.0) / (32.0 - 1.0)                                  # the paper's ramp
    np.testing.assert_allclose(got[3:6], (1 - gamma) * plain[3:6] / f + gamma * plain[3:6],
                               rtol=1e-15)
    assert np.all(plain[3:6] / f < got[3:6]) and np.all(got[3:6] < plain[3:6])
    # the tables: mscale * cos / sin of p * theta_i', both halves
    rope = _yarn(f)
    angle = np.arange(64)[:, None] * got[None, :]
    np.testing.assert_allclose(rope.cos, rope.mscale * np.cos(np.tile(angle, 2)), atol=1e-15)
    np.testing.assert_allclose(rope.sin, rope.mscale * np.sin(np.tile(angle, 2)), atol=1e-15)


def test_yarn_index_ramp_is_hugging_faces():
    # Hugging Face (and the YaRN authors' code) ramp over the pair index between
    # floor(i(r = 32)) and ceil(i(r = 1)), i(r) = D ln(L / (2 pi r)) / (2 ln theta): here with
    # L = 64, i(32) < 0 -> 0 and i(1) = 2.02 -> 3, so gamma = 1, 2/3, 1/3, 0, 0, ...
    plain = rope_frequencies(YARN_D, 10000.0)
    got = yarn_frequencies(YARN_D, 10000.0, 4.0, 64, ramp="index")
    gamma = np.array([1, 2 / 3, 1 / 3, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(got, (1 - gamma) * plain / 4.0 + gamma * plain, rtol=1e-15)
    assert not np.allclose(got, yarn_frequencies(YARN_D, 10000.0, 4.0, 64))


def test_yarn_temperature():
    f = 8.0
    rope = _yarn(f)
    assert rope.mscale == pytest.approx(0.1 * math.log(f) + 1.0, rel=1e-15)
    assert rope.max_positions == 16 * f
    # position 0 scales by mscale, so a score q.k at equal positions by mscale^2
    q, k = _randn(1, 1, 1, YARN_D, seed=1), _randn(1, 1, 1, YARN_D, seed=2)
    plain_score = float(np.sum(q.numpy() * k.numpy()))
    score = float(np.sum(rope(q, offset=9).numpy() * rope(k, offset=9).numpy()))
    assert score == pytest.approx(rope.mscale ** 2 * plain_score, rel=1e-12)
    assert _yarn(f, mscale=1.5).mscale == 1.5
    assert _yarn(f, attention_factor=0.75).cos[0, 0] == 0.75          # Hugging Face's name


@pytest.mark.parametrize("kind", ["linear", "ntk", "yarn"])
def test_factor_one_is_plain_rope(kind):
    plain = RotaryEmbedding(YARN_D, 32, dtype=np.float64)
    same = RotaryEmbedding(YARN_D, 32, scaling={"rope_type": kind, "factor": 1},
                           dtype=np.float64)
    assert same.max_positions == 32 and same.mscale == 1.0
    np.testing.assert_allclose(same.cos, plain.cos, rtol=0, atol=1e-15)
    np.testing.assert_allclose(same.sin, plain.sin, rtol=0, atol=1e-15)


def test_yarn_gradcheck_and_tables_on_device(device):
    rope = RotaryEmbedding(8, 16, scaling={"type": "yarn", "factor": 2}, device=device,
                           dtype=np.float64)
    assert backend.device_of(rope.cos) == device and backend.device_of(rope.sin) == device
    x = _randn(2, 2, 3, 8, device=device, requires_grad=True)
    assert tl.gradcheck(lambda x: rope(x, offset=20), x)


@pytest.mark.parametrize("extra, match", [
    ({"type": "yarn"}, "'factor' must be a number >= 1"),
    ({"type": "yarn", "factor": 2, "beta": 3}, r"unknown keys \['beta'\]"),
    ({"type": "linear", "factor": 2, "beta_fast": 3}, r"unknown keys \['beta_fast'\]"),
    ({"type": "yarn", "factor": 2, "beta_slow": 0}, "'beta_slow' must be a number > 0"),
    ({"type": "yarn", "factor": 2, "beta_fast": 1}, "'beta_fast' must be a number > 1.0"),
    ({"type": "yarn", "factor": 2, "beta_fast": "32"}, "'beta_fast' must be a number"),
    ({"type": "yarn", "factor": 2, "original_max_position_embeddings": 0},
     "'original_max_position_embeddings': expected a positive int, got 0"),
    ({"type": "yarn", "factor": 2, "mscale": -1}, "'mscale' must be a number > 0"),
    ({"type": "yarn", "factor": 2, "mscale": 1, "attention_factor": 1}, "not both"),
    ({"type": "yarn", "factor": 2, "ramp": "dims"}, "'ramp' must be one of"),
    ({"type": "yarn", "rope_type": "linear", "factor": 2}, "'type' must be one of"),
])
def test_yarn_bad_keys(extra, match):
    with pytest.raises(ValueError, match=match):
        RotaryEmbedding(8, 16, scaling=extra)


def test_hugging_face_yarn_config_loads_with_its_ramp():
    theta, scaling, block_size = _rope_from_hf({
        "max_position_embeddings": 4096, "rope_theta": 5e5,
        "rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                         "original_max_position_embeddings": 1024}})
    assert (theta, block_size) == (5e5, 1024)
    assert scaling == {"type": "yarn", "factor": 4.0, "ramp": "index", "beta_fast": 32.0,
                       "beta_slow": 1.0}
    config = GPTConfig.preset("llama", block_size=block_size, rope_theta=theta,
                              rope_scaling=scaling)
    assert config.max_positions == 4096
    _, scaling, _ = _rope_from_hf({"max_position_embeddings": 4096, "rope_scaling": {
        "rope_type": "yarn", "factor": 40, "mscale": 1.0, "mscale_all_dim": 0.5}})
    expected = (0.1 * math.log(40) + 1) / (0.05 * math.log(40) + 1)   # DeepSeek's form
    assert scaling["mscale"] == pytest.approx(expected)


# ---- GPT.set_rope_scaling -----------------------------------------------------------------------
def _rope_model(device="cpu", block_size=16):
    tl.manual_seed(0)
    config = GPTConfig.preset("llama", n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                              block_size=block_size, vocab_size=53)
    return GPT(config).to(device)


IDS = np.random.default_rng(0).integers(0, 53, size=(2, 16))


def _round_trip(model, scaling, device):
    before = model(IDS).numpy()
    old = model.rotary
    assert model.set_rope_scaling(scaling) is model
    rotaries = {id(b.attn.rotary) for b in model.blocks} | {id(model.rotary)}
    assert rotaries == {id(model.rotary)} and model.rotary is not old
    assert backend.device_of(model.rotary.cos) == device and model.rotary.cos.dtype == np.float32
    assert model.config.rope_scaling["type"] == scaling.get("type", scaling.get("rope_type"))
    assert not np.allclose(model(IDS).numpy(), before, atol=1e-4)
    model.set_rope_scaling(None)
    assert model.config.rope_scaling is None and model.config.max_positions == 16
    np.testing.assert_array_equal(model(IDS).numpy(), before)


@pytest.mark.parametrize("scaling", [{"type": "linear", "factor": 2},
                                     {"type": "ntk", "factor": 4},
                                     {"rope_type": "yarn", "factor": 4, "beta_fast": 16}])
def test_set_rope_scaling_round_trip(scaling):
    _round_trip(_rope_model(), scaling, "cpu")


def test_set_rope_scaling_on_device(device):
    # the reference ops: on the stand-in the CUDA kernels would run under Numba's simulator
    with tl.use_kernels(False):
        _round_trip(_rope_model(device), {"type": "yarn", "factor": 2}, device)


def test_set_rope_scaling_extends_the_accepted_length():
    model = _rope_model()
    shared_config = model.config
    with pytest.raises(ValueError, match="17 positions exceeds block_size=16"):
        model(np.zeros((1, 17), dtype=np.int64))
    model.set_rope_scaling({"type": "yarn", "factor": 4})
    assert model.config.max_positions == 64 and shared_config.max_positions == 16
    assert model(np.zeros((1, 64), dtype=np.int64)).shape == (1, 64, 53)
    with pytest.raises(ValueError, match="max_positions=64"):
        model(np.zeros((1, 65), dtype=np.int64))


def test_set_rope_scaling_reaches_the_decode_step():
    # the cached decode weights hold the rotary tables: rescaling must replace them too
    model = _rope_model(block_size=32)
    with tl.no_grad():
        for p in model.parameters():           # large weights: greedy tokens follow positions
            p.data *= 8
    prompt = IDS[:1, :8]
    plain = generate(model, prompt, 16, temperature=0)
    model.set_rope_scaling({"type": "yarn", "factor": 2})
    cached = generate(model, prompt, 16, temperature=0)
    recomputed = generate(model, prompt, 16, temperature=0, use_cache=False)
    np.testing.assert_array_equal(cached, recomputed)
    assert not np.array_equal(cached, plain)


def test_set_rope_scaling_errors():
    learned = GPT(GPTConfig.preset("gpt2", n_layer=1, n_head=2, n_embd=16, block_size=8,
                                   vocab_size=11))
    with pytest.raises(ValueError, match="pos='learned'"):
        learned.set_rope_scaling({"type": "linear", "factor": 2})
    model = _rope_model()
    with pytest.raises(ValueError, match="'factor' must be a number >= 1"):
        model.set_rope_scaling({"type": "yarn", "factor": 0.5})
    assert model.config.rope_scaling is None                     # nothing changed


def test_rotary_tables_are_non_persistent_buffers_cast_to_x():
    rope = RotaryEmbedding(4, 8, dtype=np.float64)
    assert rope.state_dict() == {} and {n for n, _ in rope.named_buffers()} == {"cos", "sin"}
    x = tl.Tensor(np.ones((1, 1, 3, 4), dtype=np.float32), requires_grad=True)
    y = rope(x, offset=2)
    assert y.dtype == np.float32
    y.backward(np.ones(y.shape, dtype=np.float32))
    assert x.grad.dtype == np.float32
    rope.to(dtype=np.float32)
    assert rope.cos.dtype == np.float32


def test_rotary_errors():
    with pytest.raises(ValueError, match="head_dim.*even.*got 7"):
        RotaryEmbedding(7, 16)
    rope = RotaryEmbedding(4, 16)
    with pytest.raises(ValueError, match="max_positions=16"):
        rope(_randn(1, 1, 3, 4), offset=14)
    scaled = RotaryEmbedding(4, 16, scaling={"type": "linear", "factor": 2})
    scaled(_randn(1, 1, 3, 4), offset=29)                # 29..31 fit in 32
    with pytest.raises(ValueError, match="max_positions=32"):
        scaled(_randn(1, 1, 3, 4), offset=30)
    with pytest.raises(ValueError, match="head_dim = 4"):
        rope(_randn(1, 1, 3, 6))
    with pytest.raises(ValueError, match="'type' must be one of"):
        RotaryEmbedding(4, 16, scaling={"type": "dynamic", "factor": 2})
    with pytest.raises(ValueError, match="'factor' must be a number >= 1"):
        RotaryEmbedding(4, 16, scaling={"type": "linear", "factor": 0.5})
    with pytest.raises(ValueError, match="head_dim > 2"):
        RotaryEmbedding(2, 16, scaling={"type": "ntk", "factor": 2})


# ---- absolute positions ------------------------------------------------------------------------
def test_sinusoidal_table_matches_formula_and_is_not_saved():
    d = 6
    sp = SinusoidalPositions(20, d, dtype=np.float64)
    t = sp(20).numpy()
    for pos, i in [(0, 0), (3, 0), (7, 1), (19, 2)]:
        angle = pos / 10000 ** (2 * i / d)
        assert math.isclose(t[pos, 2 * i], math.sin(angle), abs_tol=1e-15)
        assert math.isclose(t[pos, 2 * i + 1], math.cos(angle), abs_tol=1e-15)
    assert sp.state_dict() == {} and "table" in dict(sp.named_buffers())
    part = sp(4, offset=5)
    assert not part.requires_grad and part.shape == (4, d)
    np.testing.assert_array_equal(part.numpy(), t[5:9])


def test_sinusoidal_odd_dim():
    sp = SinusoidalPositions(8, 5, dtype=np.float64)
    t = sp(8).numpy()
    assert t.shape == (8, 5)
    assert math.isclose(t[3, 4], math.sin(3 / 10000 ** (4 / 5)))    # the extra sin column


def test_learned_positions_gradient_reaches_the_rows_used(device):
    lp = LearnedPositions(8, 3, dtype=np.float64).to(device)
    assert abs(float(lp.weight.numpy().std()) - 0.02) < 0.015
    out = lp(3, offset=2)
    np.testing.assert_array_equal(out.numpy(), lp.weight.numpy()[2:5])
    g = np.random.default_rng(0).standard_normal((3, 3))
    out.backward(tl.Tensor(g, device=device))
    want = np.zeros((8, 3))
    want[2:5] = g
    np.testing.assert_array_equal(lp.weight.grad.numpy(), want)
    assert tl.gradcheck(lambda w: lp(4, offset=4), lp.weight)


@pytest.mark.parametrize("cls", [LearnedPositions, SinusoidalPositions])
def test_offset_beyond_block_size(cls):
    m = cls(8, 4)
    m(3, offset=5)
    with pytest.raises(ValueError, match="block_size=8"):
        m(3, offset=6)
    with pytest.raises(ValueError, match="offset must be a non-negative int"):
        m(2, offset=-1)


# ---- ALiBi -----------------------------------------------------------------------------------
def test_alibi_slopes():
    np.testing.assert_array_equal(alibi_slopes(8), 2.0 ** -np.arange(1, 9))
    # 6 heads: the 4-head slopes 2^-2, 2^-4, 2^-6, 2^-8, then every other 8-head slope: 2^-1, 2^-3
    np.testing.assert_array_equal(alibi_slopes(6), 2.0 ** -np.array([2, 4, 6, 8, 1, 3]))
    np.testing.assert_array_equal(alibi_slopes(1), [2.0 ** -8])
    with pytest.raises(ValueError, match="n_head"):
        alibi_slopes(0)


def test_alibi_bias_values(device):
    bias = ALiBi(2)(3, 5, device, np.float64)
    assert bias.shape == (1, 2, 3, 5) and bias.dtype == np.float64
    b = tl.backend.to_numpy(bias)
    s = alibi_slopes(2)                                   # 2^-4, 2^-8
    # query 0 sits at absolute position 2 (end-aligned): keys 0, 1, 2 are 2, 1, 0 back
    np.testing.assert_array_equal(b[0, :, 0], -s[:, None] * np.array([2, 1, 0, 0, 0]))
    np.testing.assert_array_equal(b[0, 1, 2], -s[1] * np.array([4, 3, 2, 1, 0]))
    assert b[0, 0, 1, 4] == 0.0                           # a future key: left to the causal mask
    assert ALiBi(4)(2, 2).dtype == np.float32
    assert ALiBi(4).state_dict() == {}


# ---- T5 relative bias -------------------------------------------------------------------------
def test_t5_buckets_unidirectional():
    t5 = T5RelativeBias(2, num_buckets=32, max_distance=128)
    n = np.arange(0, 400)
    b = t5.bucket(-n)                                     # keys n positions back
    np.testing.assert_array_equal(b[:16], np.arange(16))          # exact below num_buckets / 2
    assert np.all(np.diff(b) >= 0) and b.max() == 31 and b[128] == 31 and b[399] == 31
    # log-spaced: 16 + int(log(n/16) / log(128/16) * 16)
    assert (b[16], b[32], b[64], b[127]) == (16, 21, 26, 31)
    np.testing.assert_array_equal(t5.bucket(np.array([1, 5, 100])), [0, 0, 0])   # future keys


def test_t5_buckets_bidirectional():
    t5 = T5RelativeBias(2, num_buckets=32, max_distance=128, bidirectional=True)
    n = np.arange(0, 400)
    back, ahead = t5.bucket(-n), t5.bucket(n)
    np.testing.assert_array_equal(back[:8], np.arange(8))
    np.testing.assert_array_equal(ahead[1:8], 16 + np.arange(1, 8))
    assert np.all(np.diff(back) >= 0) and back.max() == 15
    assert np.all(np.diff(ahead[1:]) >= 0) and ahead.max() == 31 and ahead[1:].min() == 17


def test_t5_forward_gathers_the_table(device):
    t5 = T5RelativeBias(3, num_buckets=8, max_distance=16, dtype=np.float64).to(device)
    out = t5(2, 5)
    assert out.shape == (1, 3, 2, 5) and out.requires_grad
    w = t5.weight.numpy()
    for i in range(2):
        for j in range(5):
            bucket = int(t5.bucket(np.array(j - (i + 3))))     # query i at position i + 5 - 2
            np.testing.assert_array_equal(out.numpy()[0, :, i, j], w[bucket])


def test_t5_gradcheck_into_table(device):
    # 20 keys over 8 buckets: many positions share a bucket, so the scatter-add must sum them
    t5 = T5RelativeBias(2, num_buckets=8, max_distance=16, bidirectional=True,
                        dtype=np.float64).to(device)
    assert tl.gradcheck(lambda w: t5(4, 20), t5.weight)
    t5.zero_grad()
    out = t5(4, 20)
    g = np.random.default_rng(0).standard_normal(out.shape)
    out.backward(tl.Tensor(g, device=device))
    # every bucket's gradient is the sum of the cotangent over the (i, j) that fall in it
    b = t5.bucket(np.arange(20)[None, :] - (np.arange(4)[:, None] + 16))
    want = np.stack([g[0, :, b == k].sum(axis=0) for k in range(8)])
    np.testing.assert_allclose(t5.weight.grad.numpy(), want, rtol=1e-12, atol=1e-12)


def test_t5_errors():
    with pytest.raises(ValueError, match="num_buckets"):
        T5RelativeBias(2, num_buckets=2, bidirectional=True)
    with pytest.raises(ValueError, match="max_distance"):
        T5RelativeBias(2, num_buckets=32, max_distance=16)
