"""The KIVI attention kernel (kernels/cpu/kv_quant.py, which reads the packed codes) against its
reference (generate/long_caches.py kv_quant_attention: dequantize the store, then attend), and
QuantizedKVCache's store, whose buffers grow by doubling.

- Parity, table-driven: bits 8, 4 and 2, float32 and float64; size 1, odd head_dim with group
  sizes that split bytes (the channel-by-channel path), GQA, an empty store, a store at a block
  boundary (no residual), several online-softmax tiles and a block longer than a tile, t = 1 to
  MAX_ROWS query rows, bidirectional, and scores in the hundreds with values near 1e4. The
  store's buffers carry NaN past the held tokens: the kernel must not read them.
- Dispatch: a mask or a chunk longer than MAX_ROWS takes the reference; use_kernels(False) too.
- A cache fed token by token (through the growth of its buffers) gives the reference's outputs,
  and generate() gives the reference's greedy tokens.
- The store: capacity doubles from 8 blocks, a flush writes only its blocks, the held codes are
  those of every token, nbytes counts what is held and capacity_nbytes what is allocated.
"""
import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import kernels
from tinygrad_llm.generate import QuantizedKVCache, generate
from tinygrad_llm.generate.long_caches import (dequantize_keys, dequantize_values,
                                               kv_quant_attention, quantize_keys,
                                               quantize_values)
from tinygrad_llm.kernels.cpu.kv_quant import MAX_ROWS
from tinygrad_llm.models import GPT, GPTConfig

BITS = (8, 4, 2)
DTYPES = [np.float32, np.float64]
TOLERANCE = {np.float32: 2e-5, np.float64: 1e-10}

# (name, B, H, Hkv, D, blocks, R, residual, t, group_size, causal, q/k scale, v scale)
CASES = [
    ("size_1", 1, 1, 1, 1, 1, 1, 0, 1, 1, True, 1.0, 1.0),
    ("decode", 1, 4, 4, 64, 8, 32, 5, 1, 32, True, 1.0, 1.0),
    ("gqa_chunk", 2, 6, 2, 8, 5, 4, 3, 3, 4, True, 1.0, 1.0),
    ("mqa_odd_d", 1, 3, 1, 5, 3, 3, 2, 2, 5, True, 1.0, 1.0),
    ("group_1", 2, 2, 1, 7, 4, 2, 1, 1, 1, True, 1.0, 1.0),
    ("group_splits_bytes", 1, 2, 2, 6, 3, 4, 1, 2, 3, True, 1.0, 1.0),
    ("empty_store", 2, 2, 2, 8, 0, 4, 3, 2, 4, True, 1.0, 1.0),
    ("block_boundary", 1, 2, 1, 16, 6, 8, 0, 1, 8, True, 1.0, 1.0),
    ("many_tiles", 1, 2, 2, 8, 70, 4, 3, 1, 8, True, 1.0, 1.0),
    ("block_past_tile", 1, 1, 1, 4, 2, 300, 7, 1, 2, True, 1.0, 1.0),
    ("max_rows", 1, 2, 1, 8, 3, 4, 2, MAX_ROWS, 4, True, 1.0, 1.0),
    ("bidirectional", 2, 2, 2, 8, 3, 4, 2, 3, 4, False, 1.0, 1.0),
    ("large_magnitudes", 1, 4, 2, 16, 4, 8, 3, 2, 8, True, 6.0, 1e4),
]


def _held_store(k, v, bits, block, group_size, spare):
    """Store buffers for the quantized tokens k, v (B, Hkv, n, D), with `spare` more tokens of
    capacity holding NaN scales and random codes (what the cache's np.empty may hold)."""
    rng = np.random.default_rng(1)
    store = quantize_keys(k, bits, block) + quantize_values(v, bits, group_size)
    padded = []
    for i, a in enumerate(store):
        rows = spare // block if i in (1, 2) else spare
        junk = (rng.integers(0, 256, a.shape[:2] + (rows,) + a.shape[3:]).astype(np.uint8)
                if a.dtype == np.uint8 else np.full(a.shape[:2] + (rows,) + a.shape[3:], np.nan,
                                                    a.dtype))
        padded.append(np.concatenate([a, junk], axis=2))
    return padded


def _arguments(case, bits, dtype, seed=0):
    _, b, h, hkv, d, blocks, block, residual, t, group_size, causal, qk, vs = case
    rng = np.random.default_rng(seed)
    n = blocks * block

    def draw(shape, scale):
        return (rng.standard_normal(shape) * scale).astype(dtype)

    k, v = draw((b, hkv, n, d), qk), draw((b, hkv, n, d), vs)
    k[..., 0] += qk * 3                                    # an outlier channel, as KIVI sees
    store = _held_store(k, v, bits, block, group_size, spare=2 * block) if n else [None] * 6
    q = draw((b, h, t, d), qk)
    tail_k, tail_v = draw((b, hkv, residual + t, d), qk), draw((b, hkv, residual + t, d), vs)
    return (q, tail_k, tail_v, *store, n, bits, block, group_size, None, causal, d ** -0.5)


def _score_magnitude(args):
    """|s| at its largest over the dequantized keys: a float32 output moves by about |s| ulps
    of its scale in any implementation (the e^(s - max) of every score rounds)."""
    q, keys, _, k_codes, k_scale, k_min = args[:6]
    n, bits, block, scale = args[9], args[10], args[11], args[15]
    if n:
        blocks = n // block
        held = dequantize_keys(k_codes[:, :, :n], k_scale[:, :, :blocks], k_min[:, :, :blocks],
                               bits, block, q.shape[-1])
        keys = np.concatenate([held, keys], axis=2)
    group = q.shape[1] // keys.shape[1]
    s = np.einsum("bhqd,bhkd->bhqk", q.astype(np.float64), np.repeat(keys, group, axis=1))
    return max(1.0, float(np.abs(s).max()) * scale)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_kernel_matches_reference(case, bits, dtype):
    args = _arguments(case, bits, dtype)
    with tl.use_kernels(False):
        want = kv_quant_attention(*args)
    assert kernels.ran("kv_quant_attention") == "reference"
    with tl.use_kernels(True):
        got = kv_quant_attention(*args)
    assert kernels.ran("kv_quant_attention") == "cpu"
    assert got.dtype == want.dtype == dtype and got.shape == want.shape
    assert np.isfinite(want).all()
    condition = _score_magnitude(args) if dtype == np.float32 else 1.0
    tol = TOLERANCE[dtype] * max(1.0, float(np.abs(want).max())) * condition
    err = float(np.abs(got.astype(np.float64) - want).max())
    assert err <= tol, f"{case[0]} bits={bits}: max error {err:.3g} > {tol:.3g}"


def test_the_kernel_reads_the_codes_it_is_given():
    """A changed code (or scale) changes the kernel's output as it changes the reference's: the
    kernel is not reading something else that happens to agree."""
    args = list(_arguments(CASES[1], 4, np.float64))
    with tl.use_kernels(True):
        before = kv_quant_attention(*args)
    args[3] = args[3].copy()
    args[3][0, 0, 3] ^= 0xFF                               # flip every bit of key 3's codes
    args[7] = args[7].copy()
    args[7][0, 1, 5] *= 2                                  # double token 5's value scales
    with tl.use_kernels(False):
        want = kv_quant_attention(*args)
    with tl.use_kernels(True):
        got = kv_quant_attention(*args)
    assert np.abs(got - before).max() > 1e-4
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("change, why", [
    (dict(mask=True), "an additive mask"),
    (dict(t=MAX_ROWS + 1), "a prefill chunk longer than MAX_ROWS"),
    (dict(dtype=np.float16), "a dtype the loop is not written for"),
])
def test_what_the_kernel_leaves_to_the_reference(change, why):
    case = list(CASES[2])
    if "t" in change:
        case[8] = change["t"]
    args = list(_arguments(tuple(case), 4, change.get("dtype", np.float32)))
    if change.get("mask"):
        b, h, t = args[0].shape[:3]
        args[13] = np.zeros((1, 1, t, args[9] + args[1].shape[2]), np.float32)
    with tl.use_kernels(True):
        kv_quant_attention(*args)
    assert kernels.ran("kv_quant_attention") == "reference", why


# ---- through the cache and generate() ---------------------------------------------------------
def _stream(kernel_on, bits, dtype, pieces, seed=3):
    """Outputs of a QuantizedKVCache fed the same random stream in the given piece lengths."""
    b, h, hkv, d = 2, 4, 2, 8
    rng = np.random.default_rng(seed)
    cache = QuantizedKVCache(b, hkv, d, bits=bits, group_size=4, residual_length=4)
    outs = []
    with tl.use_kernels(kernel_on):
        for t in pieces:
            q = rng.standard_normal((b, h, t, d)).astype(dtype)
            k, v = rng.standard_normal((2, b, hkv, t, d)).astype(dtype)
            outs.append(cache.attend(q, k, v).numpy())
            assert kernels.ran("kv_quant_attention") == ("cpu" if kernel_on else "reference")
    return outs, cache


@pytest.mark.parametrize("bits", BITS)
def test_a_cache_fed_through_its_growth_matches_the_reference(bits):
    pieces = [5] + [1] * 60 + [3, 2] + [1] * 70          # past 8, 16 and 32 blocks of 4
    fast, cache = _stream(True, bits, np.float64, pieces)
    slow, _ = _stream(False, bits, np.float64, pieces)
    assert cache.capacity == 256 and cache.n_quantized == 140
    for step, (got, want) in enumerate(zip(fast, slow)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-10, err_msg=f"step {step}")


def _model(dtype):
    tl.manual_seed(0)
    config = GPTConfig.preset("llama", vocab_size=37, n_layer=2, n_head=4, n_kv_head=2,
                              n_embd=32, block_size=96)
    return GPT(config).to(dtype=dtype).eval()


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("bits", [4, 2])
def test_generate_gives_the_reference_tokens(bits, dtype):
    prompt = np.random.default_rng(0).integers(0, 37, (2, 11))
    kw = dict(temperature=0, cache_implementation="quantized",
              cache_config=dict(bits=bits, residual_length=4, group_size=4))
    model = _model(dtype)
    with tl.use_kernels(False):
        want = generate(model, prompt, 60, **kw)
    with tl.use_kernels(True), kernels.trace() as log:
        got = generate(model, prompt, 60, **kw)
    ran = [impl for name, impl in log if name == "kv_quant_attention"]
    assert ran[0] == "cpu" and set(ran) == {"cpu"}       # the 11-token prompt too (<= MAX_ROWS)
    np.testing.assert_array_equal(got, want)


# ---- the store --------------------------------------------------------------------------------
def test_the_store_doubles_and_holds_every_token():
    b, hkv, d, bits, group_size, r = 1, 2, 6, 4, 3, 2
    rng = np.random.default_rng(0)
    n = 101
    k, v = rng.standard_normal((2, b, hkv, n, d))
    cache = QuantizedKVCache(b, hkv, d, bits=bits, group_size=group_size, residual_length=r)
    capacities, buffers = [], []            # the buffers kept alive, so each is a new object
    for i in range(n):
        cache.attend(rng.standard_normal((b, hkv, 1, d)), k[:, :, i:i + 1], v[:, :, i:i + 1])
        capacities.append(cache.capacity)
        buffer = cache._buffers["k_codes"] if cache._buffers else None
        if not any(buffer is seen for seen in buffers):
            buffers.append(buffer)
    assert sorted(set(capacities)) == [0, 16, 32, 64, 128]    # 8 blocks, then doubling
    assert len(buffers) == 5                                  # None, then four allocations
    nq = cache.n_quantized
    assert nq == 100 and cache.k_codes.shape[2] == nq and cache.k_scale.shape[2] == nq // r
    kq, vq = cache.dequantized()
    np.testing.assert_array_equal(kq, dequantize_keys(*quantize_keys(k[:, :, :nq], bits, r),
                                                      bits, r, d))
    np.testing.assert_array_equal(vq, dequantize_values(
        *quantize_values(v[:, :, :nq], bits, group_size), bits, group_size, d))
    held = sum(a.nbytes for a in (cache.k_codes, cache.k_scale, cache.k_min, cache.v_codes,
                                  cache.v_scale, cache.v_min, cache.res_k, cache.res_v))
    assert cache.nbytes == held
    assert cache.capacity_nbytes - cache.nbytes == (128 - nq) * hkv * (
        2 * 3 + 2 * (d // group_size) * 8) + (128 - nq) // r * hkv * 2 * d * 8


def test_reorder_copies_the_held_store_only():
    rng = np.random.default_rng(0)
    cache = QuantizedKVCache(2, 1, 4, bits=2, group_size=2, residual_length=2)
    k, v = rng.standard_normal((2, 2, 1, 21, 4))
    cache.attend(rng.standard_normal((2, 1, 21, 4)), k, v)
    assert cache.capacity == 20 and cache.n_quantized == 20
    cache.attend(rng.standard_normal((2, 1, 1, 4)), k[:, :, :1], v[:, :, :1])   # grows to 40
    assert cache.capacity == 40
    kq, vq = cache.dequantized()
    cache.reorder(np.array([1, 0, 1]))
    assert cache.capacity == cache.n_quantized == 22 and cache.nbytes == cache.capacity_nbytes
    kq2, vq2 = cache.dequantized()
    np.testing.assert_array_equal(kq2, kq[[1, 0, 1]])
    np.testing.assert_array_equal(vq2, vq[[1, 0, 1]])
