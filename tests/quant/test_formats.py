"""Quantization formats: llama.cpp's Q8_0 / Q4_0 / Q4_1 byte for byte against the `gguf` package's
port of ggml's quantizers (random and trained-like weights, zero / constant / tied blocks, tiny and
huge magnitudes), raw blocks round-trip, nibble packing, each scheme's error bound, the NF4
code book's published values, double quantization, and bad input."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygrad_llm.quant.formats import (GGML_TYPES, SCHEMES, dequantize_weight,
                                        fitting_group, from_ggml, nf4_codebook, pack_nibbles,
                                        quantize_weight, to_ggml, unpack_nibbles)

# the values printed in the QLoRA paper's appendix / bitsandbytes' NF4 table
PUBLISHED_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                 -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                 0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
                 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                 0.7229568362236023, 1.0]


def weights(seed=0, rows=37, cols=256, scale=1.0, kind="normal"):
    rng = np.random.default_rng(seed)
    if kind == "student":                 # heavy tails, like trained transformer weights
        w = rng.standard_t(3, (rows, cols)) * 0.02 * scale
    else:
        w = rng.standard_normal((rows, cols)) * scale
    w = w.astype(np.float32)
    w[0, :32] = 0                         # an all-zero block
    w[1, :32] = 0.75 * scale              # a constant block
    w[2, :32] = np.float32(scale)         # a block where every magnitude ties
    w[2, 7] = -np.float32(scale)
    w[3, 40] = -30 * scale                # a lone negative extreme
    return w


CASES = [dict(scale=1.0), dict(scale=1e-4), dict(scale=3e4), dict(kind="student"),
         dict(rows=1, cols=32), dict(rows=5, cols=96, seed=3)]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")      # gguf's float16 overflow at 3e4
@pytest.mark.parametrize("scheme", GGML_TYPES)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_ggml_blocks_match_the_gguf_package(scheme, case):
    gguf = pytest.importorskip("gguf")
    qtype = getattr(gguf.GGMLQuantizationType, scheme.upper())
    w = weights(**CASES[case]) if CASES[case].get("rows", 37) > 3 else \
        np.random.default_rng(1).standard_normal((CASES[case]["rows"], CASES[case]["cols"])) \
        .astype(np.float32)
    fields = quantize_weight(w, scheme)
    raw = to_ggml(fields, scheme)
    want = gguf.quants.quantize(w, qtype)
    assert raw.dtype == np.uint8 and raw.shape == want.shape
    np.testing.assert_array_equal(raw, want)
    np.testing.assert_array_equal(dequantize_weight(fields, scheme),
                                  gguf.quants.dequantize(want, qtype))


@pytest.mark.parametrize("scheme", GGML_TYPES)
def test_raw_blocks_round_trip(scheme):
    w = weights(seed=4)
    fields = quantize_weight(w, scheme)
    raw = to_ggml(fields, scheme)
    bytes_per_block = {"q8_0": 34, "q4_0": 18, "q4_1": 20}[scheme]
    assert raw.shape == (w.shape[0], w.shape[1] // 32 * bytes_per_block)
    back = from_ggml(raw, scheme, w.shape)
    assert sorted(back) == sorted(fields)
    for name in fields:
        assert back[name].dtype == fields[name].dtype
        np.testing.assert_array_equal(back[name], fields[name])


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 4), st.integers(1, 3), st.integers(0, 2 ** 32 - 1))
def test_nibble_packing_is_exact(rows, blocks, seed):
    q = np.random.default_rng(seed).integers(0, 16, (rows, 32 * blocks)).astype(np.uint8)
    packed = pack_nibbles(q)
    assert packed.shape == (rows, 16 * blocks)
    np.testing.assert_array_equal(unpack_nibbles(packed), q)
    # ggml's order: byte j of a block holds element j (low nibble) and j + 16 (high nibble)
    assert packed[0, 0] == q[0, 0] | (q[0, 16] << 4)


def _block_view(a, width):
    return a.reshape(a.shape[0], -1, width)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("kind", ["normal", "student"])
def test_error_within_the_scheme_bound(scheme, kind):
    w = weights(seed=5, kind=kind)
    fields = quantize_weight(w, scheme, group_size=64)
    err = np.abs(dequantize_weight(fields, scheme) - w)
    half_ulp16 = 2.0 ** -11                       # float16 rounding of a stored scale
    if scheme == "int8":
        bound = fields["scale"][:, None] / 2 * (1 + 1e-5)
    elif scheme == "nf4":
        gap = np.diff(nf4_codebook()).max() / 2
        bound = np.repeat(fields["absmax"], 64, axis=1) * gap * (1 + 1e-5)
    else:
        d = np.abs(fields["scale"].astype(np.float32))
        step = {"q8_0": 0.5, "q4_0": 1.0, "q4_1": 0.5}[scheme]    # q4_0: the clipped +8 side
        levels = {"q8_0": 127, "q4_0": 8, "q4_1": 15}[scheme]
        bound = np.repeat(d * (step + levels * half_ulp16) + 1e-30, 32, axis=1)
        if scheme == "q4_1":
            bound = bound + np.repeat(np.abs(fields["min"].astype(np.float32)) * half_ulp16,
                                      32, axis=1)
    assert (err <= bound).all(), (scheme, kind, (err - bound).max())


def test_nf4_codebook_has_its_published_values():
    book = nf4_codebook()
    assert book.shape == (16,) and book.dtype == np.float32
    np.testing.assert_allclose(book, PUBLISHED_NF4, rtol=0, atol=1e-6)
    assert book[7] == 0.0 and book[0] == -1.0 and book[15] == 1.0


def test_nf4_double_quantization():
    w = (np.random.default_rng(6).standard_t(3, (64, 512)) * 0.02).astype(np.float32)
    plain = quantize_weight(w, "nf4", group_size=64)
    dq = quantize_weight(w, "nf4", group_size=64, double_quant=True)
    assert "absmax" not in dq and dq["absmax_q"].dtype == np.uint8
    np.testing.assert_array_equal(dq["qweight"].shape, plain["qweight"].shape)
    bytes_plain = sum(a.nbytes for a in plain.values())
    bytes_dq = sum(a.nbytes for a in dq.values())
    assert bytes_dq < bytes_plain                      # 8 instead of 32 bits per group scale
    err_plain = np.abs(dequantize_weight(plain, "nf4") - w).mean()
    err_dq = np.abs(dequantize_weight(dq, "nf4") - w).mean()
    assert err_dq < 1.02 * err_plain                   # the scales' 8-bit codes cost little
    absmax = np.abs(w.reshape(64, -1, 64)).max(axis=2)
    from tinygrad_llm.quant.formats import _nf4_absmax
    np.testing.assert_allclose(_nf4_absmax(dq), absmax, rtol=0.01)


@pytest.mark.parametrize("group", [32, 64, 128])
def test_nf4_groups(group):
    w = weights(seed=7, cols=256)
    fields = quantize_weight(w, "nf4", group_size=group)
    assert fields["absmax"].shape == (w.shape[0], 256 // group)
    np.testing.assert_allclose(fields["absmax"], np.abs(_block_view(w, group)).max(axis=2))


@pytest.mark.parametrize("scheme, group, width, want", [
    ("q4_0", 64, 96, 64), ("q8_0", 64, 48, None), ("int8", 64, 7, 64),
    ("nf4", 128, 256, 128), ("nf4", 128, 192, 64), ("nf4", 128, 96, 32), ("nf4", 64, 352, 32),
    ("nf4", 64, 48, None), ("nf4", 32, 64, 32)])
def test_fitting_group_falls_back_to_a_smaller_block(scheme, group, width, want):
    assert fitting_group(scheme, group, width) == want


def test_bad_input():
    w = np.ones((4, 64), np.float32)
    with pytest.raises(ValueError, match=r"unknown quantization scheme 'q3'.*'int8'.*'nf4'"):
        quantize_weight(w, "q3")
    with pytest.raises(ValueError, match="input dimension 48 is not a multiple of the block "
                                         "size 32"):
        quantize_weight(np.ones((4, 48), np.float32), "q4_0")
    with pytest.raises(ValueError, match="group_size must be one of"):
        quantize_weight(w, "nf4", group_size=48)
    with pytest.raises(ValueError, match=r"expected a float \(out, in\) matrix"):
        quantize_weight(np.ones(64, np.float32), "int8")
    with pytest.raises(ValueError, match="not a llama.cpp block type"):
        to_ggml(quantize_weight(w, "int8"), "int8")
