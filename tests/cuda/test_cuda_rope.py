"""CUDA RoPE (plain and packed, forward and backward) against ops/rope.py's references
(tests/cuda/cuda_parity.py), then through RotaryEmbedding on the device.

Head dims D = 2 (one pair), odd pair counts, one past the simulator's grid stride (2 blocks of
THREADS pairs) and more; T = 1 and odd; leading dims none, one and two; tables from real angles
and random ones (which differ between the two halves, so a kernel that reads one half's entry for
both would fail); magnitudes 1e4. Packed: the rotated slots first, the rest copied (n_rotated = 1,
S - 1 and S). QK-norm with RoPE on a packed projection: the same tables or none, GQA, a head
wider than the grid stride; then through MultiHeadAttention's packed path on the device.
"""
import numpy as np
import pytest

import tinygrad_llm as tl
from cuda_parity import SIZES, THREADS, check, down, up, x
from tinygrad_llm import kernels
from tinygrad_llm.nn.attention import MultiHeadAttention
from tinygrad_llm.nn.positions import RotaryEmbedding
from tinygrad_llm.ops.rope import PackedQKNormRopeOp, PackedRopeOp, RopeOp


def _tables(rng, t, d, dtype, real):
    if real:
        angle = np.outer(np.arange(t), 10000.0 ** (-np.arange(0, d, 2) / d))
        angle = np.concatenate([angle, angle], axis=1)
        return np.cos(angle).astype(dtype), np.sin(angle).astype(dtype)
    return x(rng, (t, d), dtype), x(rng, (t, d), dtype)


PLAIN = [(1, 2), (2, SIZES[1], 6), (1, 2, 3, 2 * (2 * THREADS + 1)), (3, 1, 4)]   # (..., T, D)
PACKED = [(1, 1, 1, 2), (2, SIZES[1], 4, 6), (1, 2, 3, 2 * (2 * THREADS + 1))]    # (B, T, S, D)


def _rope_forward(rng, dtype):
    for shape in PLAIN:
        for scale, real in [(1.0, True), (1e4, False)]:
            yield (x(rng, shape, dtype, scale),) + _tables(rng, *shape[-2:], dtype, real)


def _rope_backward(rng, dtype):
    yield from _rope_forward(rng, dtype)       # (dy, cos, sin): the same arguments


def _packed_rope_forward(rng, dtype):
    for shape in PACKED:
        for scale, real in [(1.0, True), (1e4, False)]:
            cos, sin = _tables(rng, shape[1], shape[3], dtype, real)
            for n_rotated in sorted({1, max(shape[2] - 1, 1), shape[2]}):
                yield x(rng, shape, dtype, scale), cos, sin, n_rotated


def _packed_qk_norm_rope_forward(rng, dtype):
    # (B, T, H, Hkv, D): one head of one pair; GQA with odd T; a head wider than the simulator's
    # grid stride; tables real, random or none (QK-norm alone); activations at 1e4
    for b, t, h, hkv, d in [(1, 1, 1, 1, 2), (2, SIZES[1], 3, 1, 6), (1, 2, 2, 1, 2 * THREADS + 2)]:
        for scale, tables in [(1.0, "real"), (1e4, "random"), (1.0, "none")]:
            cos, sin = (None, None) if tables == "none" else _tables(rng, t, d, dtype,
                                                                     tables == "real")
            yield (x(rng, (b, t, h + 2 * hkv, d), dtype, scale), x(rng, (d,), dtype),
                   x(rng, (d,), dtype), cos, sin, h, hkv, 1e-6)


def _packed_qk_norm_rope_backward(rng, dtype):
    for qkv, w_q, w_k, cos, sin, h, hkv, eps in _packed_qk_norm_rope_forward(rng, dtype):
        _, r = kernels.reference("packed_qk_norm_rope_forward")(qkv, w_q, w_k, cos, sin, h, hkv,
                                                               eps)
        yield x(rng, qkv.shape, dtype), qkv, w_q, w_k, cos, sin, h, hkv, r


CASES = {
    "rope_forward": _rope_forward,
    "rope_backward": _rope_backward,
    "packed_rope_forward": _packed_rope_forward,
    "packed_rope_backward": _packed_rope_forward,
    "packed_qk_norm_rope_forward": _packed_qk_norm_rope_forward,
    "packed_qk_norm_rope_backward": _packed_qk_norm_rope_backward,
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_reference(name, dtype):
    check(name, CASES[name], dtype)


def test_a_nan_stays_in_its_pair():
    def cases(rng, dtype):
        a = x(rng, (1, 3, 4), dtype)
        a[0, 1, 0] = np.nan
        yield (a,) + _tables(rng, 3, 4, dtype, True)
    check("rope_forward", cases, np.float32, min_cases=1)
    check("rope_backward", cases, np.float32, min_cases=1)


@pytest.mark.parametrize("packed", [False, True], ids=["plain", "packed"])
def test_rotary_embedding_on_the_device_matches_the_cpu(packed):
    """The module's forward and backward (float64 tables cast to float32 by the op) on both
    devices, kernels on; then gradcheck in float64 on the device."""
    rng = np.random.default_rng(1)
    rope = RotaryEmbedding(6, 16)
    shape = (2, 5, 3, 6) if packed else (2, 3, 5, 6)       # (B, T, S, D) or (B, H, T, D)
    a, g = x(rng, shape, np.float32), x(rng, shape, np.float32)

    def run(device):
        module = rope.to(device)
        t = tl.Tensor(a, requires_grad=True, device=device)
        y = module.rotate_packed(t, 2, offset=3) if packed else module(t, offset=3)
        (y * tl.Tensor(g, device=device)).sum().backward()
        return down(y.data), down(t.grad.data)

    with tl.use_kernels(True):
        want = run("cpu")
        got = run("cuda")
        assert kernels.ran("packed_rope_backward" if packed else "rope_backward") == "cuda"
    for w, v in zip(want, got):
        np.testing.assert_allclose(v, w, rtol=1e-6, atol=1e-6)
    cos, sin = _tables(rng, 5, 6, np.float64, True)
    dev = tl.Tensor(x(rng, shape, np.float64), requires_grad=True, device="cuda")
    with tl.use_kernels(True):
        if packed:
            assert tl.gradcheck(lambda q: PackedRopeOp.apply(q, cos=up(cos), sin=up(sin),
                                                             n_rotated=2), dev)
        else:
            assert tl.gradcheck(lambda q: RopeOp.apply(q, cos=up(cos), sin=up(sin)), dev)


@pytest.mark.parametrize("rotary", [True, False], ids=["rope", "no_rope"])
def test_qk_norm_attention_on_the_device_matches_the_cpu(rotary):
    """MultiHeadAttention with QK-norm (and RoPE) on its packed path: output and every gradient
    on both devices, kernels on; then the op's float64 gradcheck on the device."""
    rng = np.random.default_rng(2)
    attn = MultiHeadAttention(12, 3, n_kv_head=1, qk_norm=True,
                              rotary=RotaryEmbedding(4, 8) if rotary else None)
    for p in (attn.q_norm.weight, attn.k_norm.weight):
        p.data[...] = x(rng, p.shape, np.float32)
    a, g = x(rng, (2, 5, 12), np.float32), x(rng, (2, 5, 12), np.float32)

    def run(device):
        module = attn.to(device)
        module.zero_grad()
        t = tl.Tensor(a, requires_grad=True, device=device)
        (module(t)[0] * tl.Tensor(g, device=device)).sum().backward()
        return [down(t.grad.data)] + [down(p.grad.data) for p in module.parameters()]

    with tl.use_kernels(True):
        want = run("cpu")
        got = run("cuda")
        assert kernels.ran("packed_qk_norm_rope_backward") == "cuda"
    for w, v in zip(want, got):
        np.testing.assert_allclose(v, w, rtol=1e-5, atol=1e-5)
    cos, sin = _tables(rng, 5, 4, np.float64, True) if rotary else (None, None)
    qkv = tl.Tensor(x(rng, (2, 5, 5, 4), np.float64), requires_grad=True, device="cuda")
    w_q = tl.Tensor(x(rng, (4,), np.float64), requires_grad=True, device="cuda")
    w_k = tl.Tensor(x(rng, (4,), np.float64), requires_grad=True, device="cuda")
    with tl.use_kernels(True):
        assert tl.gradcheck(lambda q, wq, wk: PackedQKNormRopeOp.apply(
            q, wq, wk, cos=up(cos) if rotary else None, sin=up(sin) if rotary else None,
            n_head=3, n_kv_head=1), qkv, w_q, w_k)
