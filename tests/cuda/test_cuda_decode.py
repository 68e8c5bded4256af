"""CUDA decode attention (kernels/cuda/decode.py) against generate/decode_step.py's reference
(tests/cuda/cuda_parity.py): one query and a few (a prompt or speculative tokens, causal within
the step), caches of 1 key, odd lengths, one past a tile of THREADS keys and two tiles and a bit,
GQA and MQA, head_dim above THREADS (several columns per thread), large magnitudes, NaN rows; the
cache read through a strided view, as the decode step hands it over."""
import numpy as np
import pytest

import tinygrad_llm as tl
from cuda_parity import SIZES, THREADS, check, down, up, x
from tinygrad_llm import backend, kernels
from tinygrad_llm.generate.decode_step import decode_attention

# (H, Hkv, t, start, D): n = start + t keys
SHAPES = [
    (1, 1, 1, 0, 1),                    # size 1: one query, one key
    (3, 3, 1, 4, 5),                    # odd sizes
    (4, 2, 1, SIZES[2] - 1, 4),         # GQA, one past a tile of keys
    (2, 1, 3, SIZES[3] - 3, 6),         # MQA, three tokens in a step, two tiles and a bit
    (2, 2, 2, 5, THREADS + 3),          # a head wider than the block: several columns a thread
]


def _decode_attention(rng, dtype):
    for h, hkv, t, start, d in SHAPES:
        n = start + t
        yield (x(rng, (h, t, d), dtype), x(rng, (hkv, n, d), dtype), x(rng, (hkv, n, d), dtype),
               start, d ** -0.5)
    h, hkv, t, start, d = SHAPES[3]                                     # scores in the hundreds
    yield (x(rng, (h, t, d), dtype, 30.0), x(rng, (hkv, start + t, d), dtype, 30.0),
           x(rng, (hkv, start + t, d), dtype, 1e4), start, d ** -0.5)


CASES = {"decode_attention": _decode_attention}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_matches_reference(dtype):
    # float32: a score's rounding moves e^(s - max) by |s| ulps in any summation order
    check("decode_attention", _decode_attention, dtype,
          scale_of=lambda q, k, v, start, scale: max(1.0, float(np.abs(q).max() * np.abs(k).max()
                                                            * q.shape[-1] * scale) / 10))


def test_nan_stays_in_its_row_and_column():
    def nan_inputs(rng, dtype):
        q, k, v = x(rng, (2, 1, 4), dtype), x(rng, (1, 9, 4), dtype), x(rng, (1, 9, 4), dtype)
        q[1, 0, 2] = np.nan                     # query head 1: its whole row
        yield q, k, v, 8, 0.5
        q, v = x(rng, (2, 1, 4), dtype), v.copy()
        v[0, 3, 1] = np.nan                     # one value: column 1 of every row
        yield q, k, v, 8, 0.5
    check("decode_attention", nan_inputs, np.float32, min_cases=2)


def test_reads_the_cache_through_a_strided_view():
    # the decode step passes K[:, :n] of a (Hkv, max_len, D) buffer: rows max_len apart
    rng = np.random.default_rng(1)
    q, cache_k, cache_v = x(rng, (4, 2, 3), np.float32), x(rng, (2, 20, 3), np.float32), \
        x(rng, (2, 20, 3), np.float32)
    want = kernels.reference("decode_attention")(q, cache_k[:, :11], cache_v[:, :11], 9, 0.6)
    k, v = up(cache_k), up(cache_v)
    with tl.use_kernels(True):
        got = decode_attention(up(q), k[:, :11], v[:, :11], 9, 0.6)
    assert kernels.ran("decode_attention") == "cuda"
    assert backend.device_of(got) == "cuda"
    np.testing.assert_allclose(down(got), want, rtol=1e-5, atol=1e-6)
