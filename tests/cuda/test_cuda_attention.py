"""CUDA attention (forward, backward; head-major and packed) against ops/attention.py's references
(tests/cuda/cuda_parity.py).

Shapes cross both tiles (the kernels' ROWS and TILE are THREADS = 8 under the simulator) with
T = 9 and 17, and cover T = 1, odd sizes, Tq < Tk (a query block against a KV cache), Tq > Tk
(causal rows that see no key), GQA and MQA, sliding windows (causal and not), large magnitudes.

Tolerance: in float32 an absolute rounding error in a score s moves e^(s - lse) by about |s| ulps
in any implementation (the reference's BLAS and the kernels' loops sum in different orders), so
the float32 tolerance is scaled by the largest |score| (as tests/ops/test_kernels.py does with
_score_magnitude); float64 stays at the tight default.
"""
import numpy as np
import pytest

from cuda_parity import check, x
from tinygrad_llm import kernels
from tinygrad_llm.kernels.cuda import attention as cuda_attention

# (B, H, Hkv, Tq, Tk, D, causal, window)
SHAPES = [
    (1, 1, 1, 1, 1, 1, True, 0),        # size 1
    (1, 2, 2, 3, 3, 5, False, 0),       # odd, bidirectional
    (1, 2, 1, 9, 9, 4, True, 0),        # MQA, one past a tile
    (1, 4, 2, 17, 17, 3, True, 5),      # GQA, causal window, two tiles and a bit
    (2, 2, 1, 9, 9, 4, False, 3),       # bidirectional window across a tile
    (1, 2, 2, 3, 11, 4, True, 0),       # Tq < Tk: queries appended to a cache
    (1, 2, 1, 1, 10, 33, True, 4),      # one decode query, window, a wide head
    (1, 2, 2, 5, 9, 4, False, 2),       # Tq < Tk, bidirectional window
    (1, 2, 1, 5, 3, 4, True, 0),        # Tq > Tk: the first rows see no key
]
LARGE = {SHAPES[2], SHAPES[3], SHAPES[4]}   # also run with scores in the hundreds


def _attention_forward(rng, dtype):
    for shape in SHAPES:
        b, h, hkv, tq, tk, d, causal, window = shape
        for scale in (1.0, 30.0) if shape in LARGE else (1.0,):
            yield (x(rng, (b, h, tq, d), dtype, scale), x(rng, (b, hkv, tk, d), dtype, scale),
                   x(rng, (b, hkv, tk, d), dtype), None, causal, d ** -0.5, window)


def _attention_backward(rng, dtype):
    for q, k, v, mask, causal, scale, window in _attention_forward(rng, dtype):
        o, lse = kernels.reference("attention_forward")(q, k, v, mask, causal, scale, window)
        yield x(rng, q.shape, dtype), q, k, v, o, lse, mask, causal, scale, window


def _packed_attention_forward(rng, dtype):
    for shape in SHAPES:
        b, h, hkv, tq, tk, d, causal, window = shape
        if tq != tk:                      # one qkv array: queries and keys share T
            continue
        for scale in (1.0, 30.0) if shape in LARGE else (1.0,):
            qkv = x(rng, (b, tq, h + 2 * hkv, d), dtype, scale)
            qkv[:, :, h + hkv:] /= scale  # values at unit scale
            yield qkv, h, hkv, causal, d ** -0.5, window


def _packed_attention_backward(rng, dtype):
    for qkv, h, hkv, causal, scale, window in _packed_attention_forward(rng, dtype):
        o, lse = kernels.reference("packed_attention_forward")(qkv, h, hkv, causal, scale, window)
        yield x(rng, o.shape, dtype), qkv, o, lse, h, hkv, causal, scale, window


def _score_magnitude(q, k, scale):
    """The largest |score| (at least 1): float32's condition factor for attention."""
    group = q.shape[1] // k.shape[1]
    s = np.einsum("bhqd,bhkd->bhqk", q.astype(np.float64),
                  np.repeat(k, group, axis=1).astype(np.float64))
    return max(1.0, float(np.abs(s).max(initial=0.0)) * scale)


def _packed_magnitude(qkv, h, hkv, scale):
    return _score_magnitude(qkv[:, :, :h].transpose(0, 2, 1, 3),
                            qkv[:, :, h:h + hkv].transpose(0, 2, 1, 3), scale)


CONDITION = {
    "attention_forward": lambda q, k, v, mask, causal, scale, window:
        _score_magnitude(q, k, scale),
    "attention_backward": lambda do, q, k, v, o, lse, mask, causal, scale, window:
        _score_magnitude(q, k, scale),
    "packed_attention_forward": lambda qkv, h, hkv, causal, scale, window:
        _packed_magnitude(qkv, h, hkv, scale),
    "packed_attention_backward": lambda do, qkv, o, lse, h, hkv, causal, scale, window:
        _packed_magnitude(qkv, h, hkv, scale),
}

CASES = {
    "attention_forward": _attention_forward,
    "attention_backward": _attention_backward,
    "packed_attention_forward": _packed_attention_forward,
    "packed_attention_backward": _packed_attention_backward,
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_reference(name, dtype):
    check(name, CASES[name], dtype,
          scale_of=CONDITION[name] if dtype == np.float32 else None)


def test_a_nan_key_gives_nan_where_the_reference_does():
    """A NaN in key 6 of K/V head 0 (batch 0): the rows that see it are NaN (their lse 0, as
    the reference's), the rest finite. Backward is compared bidirectionally, where every row
    sees the key; with a causal mask the reference also turns the gradients of keys a NaN row
    cannot see into NaN (0 * NaN on masked entries), which the kernels don't visit."""
    def forward(rng, dtype):
        for causal in (True, False):
            q, k, v = x(rng, (2, 2, 9, 4), dtype), x(rng, (2, 1, 9, 4), dtype), x(
                rng, (2, 1, 9, 4), dtype)
            k[0, 0, 6, 3] = np.nan
            yield q, k, v, None, causal, 0.35, 0

    def backward(rng, dtype):
        for q, k, v, mask, causal, scale, window in forward(rng, dtype):
            if causal:
                continue
            o, lse = kernels.reference("attention_forward")(q, k, v, mask, causal, scale, window)
            yield x(rng, q.shape, dtype), q, k, v, o, lse, mask, causal, scale, window

    def packed_forward(rng, dtype):
        for causal in (True, False):
            qkv = x(rng, (2, 9, 3, 4), dtype)              # H = 1, Hkv = 1
            qkv[1, 4, 1, 0] = np.nan                       # key 4 of batch 1
            yield qkv, 1, 1, causal, 0.35, 0

    def packed_backward(rng, dtype):
        for qkv, h, hkv, causal, scale, window in packed_forward(rng, dtype):
            if causal:
                continue
            o, lse = kernels.reference("packed_attention_forward")(qkv, h, hkv, causal, scale,
                                                                   window)
            yield x(rng, o.shape, dtype), qkv, o, lse, h, hkv, causal, scale, window

    for name, maker, n in [("attention_forward", forward, 2), ("attention_backward", backward, 1),
                           ("packed_attention_forward", packed_forward, 2),
                           ("packed_attention_backward", packed_backward, 1)]:
        check(name, maker, np.float32, min_cases=n)


def test_explicit_masks_and_wide_heads_go_to_the_reference():
    """An attn_mask, or a head wider than the kernels' per-thread rows, takes the reference."""
    from cuda_parity import dispatcher, up
    rng = np.random.default_rng(0)
    q = up(x(rng, (1, 1, 3, 4), np.float32))
    dispatcher("attention_forward")(q, q, q, up(np.ones((3, 3), bool)), False, 0.5, 0)
    assert kernels.ran("attention_forward") == "reference"
    wide = up(x(rng, (1, 1, 2, cuda_attention.MAX_HEAD_DIM + 1), np.float32))
    dispatcher("attention_forward")(wide, wide, wide, None, True, 0.5, 0)
    assert kernels.ran("attention_forward") == "reference"


@pytest.mark.parametrize("head_major", [True, False], ids=["head_major", "token_major"])
def test_kernels_write_every_output_element(head_major):
    """Outputs handed over full of NaN come back equal to the reference: rows that see no key
    (more queries than keys, a window) and keys no query sees are written too. Token-major
    arrays reach the kernels as (B, S, T, D) views of (B, T, S, D) memory, as the packed path's."""
    from cuda_parity import down, up
    cp = cuda_attention.cupy()
    rng = np.random.default_rng(0)
    cases = [(2, 4, 2, 5, 3, 8, True, 0), (1, 3, 3, 17, 17, 4, True, 5),
             (2, 2, 1, 9, 9, 4, False, 2), (1, 2, 2, 1, 1, 8, True, 0)]
    for b, h, hkv, tq, tk, d, causal, window in cases:
        q, do = x(rng, (b, h, tq, d), np.float32), x(rng, (b, h, tq, d), np.float32)
        k, v = x(rng, (b, hkv, tk, d), np.float32), x(rng, (b, hkv, tk, d), np.float32)
        want_o, lse = kernels.reference("attention_forward")(q, k, v, None, causal, 0.4, window)
        want = kernels.reference("attention_backward")(do, q, k, v, want_o, lse, None, causal,
                                                        0.4, window)

        def lay(a):                        # on the device, as the kernels see it
            if head_major:
                return up(a)
            return up(np.ascontiguousarray(a.transpose(0, 2, 1, 3))).transpose(0, 2, 1, 3)

        qs, ks, vs, dos, os_ = lay(q), lay(k), lay(v), lay(do), lay(want_o)
        o = lay(np.full_like(q, np.nan))
        lse_got = cp.full(lse.shape, np.nan, dtype=np.float32)
        cuda_attention._forward(qs, 0, ks, 0, vs, 0, h, hkv, causal, 0.4, window, o, lse_got)
        np.testing.assert_allclose(down(o), want_o, atol=1e-5)
        np.testing.assert_allclose(down(lse_got), lse, atol=1e-5)
        dq = lay(np.full_like(q, np.nan))
        dkv = cp.full((2,) + k.shape, np.nan, dtype=np.float32)
        cuda_attention._backward(dos, os_, qs, 0, ks, 0, vs, 0, up(lse), h, hkv, causal, 0.4,
                                 window, dq, dkv)
        dkv = down(dkv)
        for got, ref in zip((down(dq), dkv[0], dkv[1]), want):
            np.testing.assert_allclose(got, ref, atol=1e-4)


def test_no_host_round_trips_and_counted_launches():
    """Forward is one launch, backward two (dq and delta, then dk and dv), with no host sync, no
    transfer and nothing upcast to float64 (on the stand-in; its counters don't see a real GPU)."""
    import standin
    from cuda_parity import up
    from tinygrad_llm.kernels.cuda import launch_count
    if standin.HAS_GPU:
        pytest.skip("the stand-in's counters are checked where no real GPU is present")
    rng = np.random.default_rng(0)
    qkv = up(x(rng, (1, 3, 4, 4), np.float32))             # H = 2, Hkv = 1, T = 3
    fwd, bwd = cuda_attention.packed_attention_forward, cuda_attention.packed_attention_backward
    with standin.measure() as c:
        before = launch_count()
        o, lse = fwd(qkv, 2, 1, True, 0.5, 0)
        assert launch_count() - before == 1
        dqkv = bwd(o, qkv, o, lse, 2, 1, True, 0.5, 0)
        assert launch_count() - before == 3
    assert (c.syncs, c.h2d_bytes, c.d2h_bytes, c.upcasts) == (0, 0, 0, 0)
    assert dqkv.shape == qkv.shape and dqkv.dtype == np.float32
