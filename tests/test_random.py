"""The Philox4x32-10 generator (tinygrad_llm/random.py): the published known-answer vectors and a
scalar implementation written from the paper's definition as oracles, the Numba kernel against
the array reference, the same bits on the CPU and on "cuda", state as two ints, draws that never
overlap, uniforms in [0, 1), and dropout masks that agree across devices."""
import json
import math

import numpy as np
import pytest

import tinygrad_llm as tl
import tinygrad_llm.nn.functional as F
from tinygrad_llm import backend, kernels
from tinygrad_llm.random import Generator, philox4x32, philox_uniform

MASK = 0xFFFFFFFF


def philox_scalar(counter, key):
    """Philox4x32-10 on Python ints, straight from Salmon et al. (2011): ten rounds of
    (c0, c1, c2, c3) <- (hi(M1 c2) ^ c1 ^ k0, lo(M1 c2), hi(M0 c0) ^ c3 ^ k1, lo(M0 c0)), the key
    bumped by (W0, W1) between rounds."""
    c, (k0, k1) = list(counter), key
    for r in range(10):
        if r:
            k0, k1 = (k0 + 0x9E3779B9) & MASK, (k1 + 0xBB67AE85) & MASK
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k0, p1 & MASK, (p0 >> 32) ^ c[3] ^ k1, p0 & MASK]
    return c


# Random123's kat_vectors for philox4x32 with 10 rounds: counter, key -> output
KAT = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
       ((MASK,) * 4, (MASK, MASK), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
       ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]


@pytest.mark.parametrize("counter, key, want", KAT)
def test_known_answers(counter, key, want):
    assert tuple(philox_scalar(counter, key)) == want
    out = philox4x32([np.array([c], dtype=np.uint32) for c in counter], key)
    assert all(o.dtype == np.uint32 for o in out)
    assert tuple(int(o[0]) for o in out) == want


def test_array_rounds_match_the_scalar_definition():
    rng = np.random.default_rng(0)
    counters = rng.integers(0, 2 ** 32, (4, 50), dtype=np.uint64).astype(np.uint32)
    for key in [(0, 0), (MASK, 1), (123456789, 987654321)]:
        out = np.stack(philox4x32(list(counters), key))                 # (4, 50)
        for i in range(counters.shape[1]):
            assert out[:, i].tolist() == philox_scalar(counters[:, i].tolist(), key)


def _uniform_scalar(seed, offset, n, dtype):
    """The documented layout: block b = offset + b as (low, high, 0, 0), key = seed's two words;
    float32 from a word's top 24 bits, float64 from two words' top 27 and 26 bits."""
    w = 2 if dtype == np.float64 else 1
    words = []
    for b in range(-(-n * w // 4)):
        block = (offset + b) % 2 ** 64
        words += philox_scalar((block & MASK, block >> 32, 0, 0), (seed & MASK, seed >> 32))
    if w == 1:
        return np.array([(x >> 8) * 2.0 ** -24 for x in words[:n]], dtype=np.float32)
    return np.array([((words[2 * i] >> 5) * 2 ** 26 + (words[2 * i + 1] >> 6)) * 2.0 ** -53
                     for i in range(n)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 3, 4, 5, 17])
@pytest.mark.parametrize("seed, offset", [(0, 0), (2 ** 64 - 1, 2 ** 32 - 1), (7, 2 ** 64 - 2)])
def test_uniform_kernel_and_reference_follow_the_definition(impl, dtype, n, seed, offset):
    out = philox_uniform(np.empty(n, dtype), seed, offset)
    assert kernels.ran("philox_uniform") == ("cpu" if impl == "fast" else "reference")
    np.testing.assert_array_equal(out, _uniform_scalar(seed, offset, n, dtype))


def test_main_job_dropout_shape_takes_the_fast_path():
    with kernels.trace() as log:
        Generator("cpu", 1).random((12, 64, 128))
    assert log == [("philox_uniform", "cpu")]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_same_bits_on_every_device(device, dtype):
    for seed in (0, 1234567, 2 ** 63 + 5):
        cpu, dev = Generator("cpu", seed), Generator(device, seed)
        for shape in [(1,), (3, 5), (2, 3, 17)]:
            a = cpu.random(shape, dtype)
            b = dev.random(shape, dtype)
            assert backend.device_of(b) == device and b.dtype == dtype and b.shape == shape
            np.testing.assert_array_equal(backend.to_numpy(b), a)
        assert cpu.get_state() == dev.get_state()


def test_normals_on_every_device(device):
    cpu, dev = Generator("cpu", 3), Generator(device, 3)
    a, b = cpu.standard_normal((4, 7)), backend.to_numpy(dev.standard_normal((4, 7)))
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)     # log/cos may differ in a last bit
    z = Generator("cpu", 0).standard_normal(100_001, np.float64)
    assert z.shape == (100_001,) and z.dtype == np.float64
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02 and np.isfinite(z).all()


def test_state_is_two_ints_and_round_trips():
    g = Generator("cpu", 42)
    g.random(10)
    state = g.get_state()
    assert state == (42, 3) and all(type(v) is int for v in state)
    want = g.random((2, 9))
    restored = Generator("cpu", 0)
    restored.set_state(json.loads(json.dumps(state)))          # as stored in a checkpoint
    np.testing.assert_array_equal(restored.random((2, 9)), want)
    assert restored.get_state() == g.get_state()
    for bad in [(1,), (1, 2, 3), (-1, 0), (0, 2 ** 64), (0.5, 0), "12"]:
        with pytest.raises(ValueError):
            restored.set_state(bad)


def test_library_generators_follow_manual_seed(device):
    tl.manual_seed(5)
    a = backend.generator(device).random(10)
    assert backend.get_rng_state(device) == [5, 3]
    tl.manual_seed(5)
    np.testing.assert_array_equal(backend.to_numpy(backend.generator(device).random(10)),
                                  backend.to_numpy(a))
    backend.set_rng_state([5, 0], "cpu")                         # any device's state, anywhere
    np.testing.assert_array_equal(backend.generator("cpu").random(10), backend.to_numpy(a))
    for bad in (-1, 2 ** 64, True, 1.0):
        with pytest.raises(ValueError):
            tl.manual_seed(bad)


@pytest.mark.parametrize("dtype, per_block", [(np.float32, 4), (np.float64, 2)])
def test_draws_never_overlap(dtype, per_block):
    whole = Generator("cpu", 9).random(64, dtype)
    g = Generator("cpu", 9)
    start = 0
    for n in (5, 3, 1, 8, 7):
        blocks = math.ceil(n / per_block)
        np.testing.assert_array_equal(g.random(n, dtype), whole[start:start + n])
        start += blocks * per_block                       # a draw uses whole blocks
        assert g.offset == start // per_block
    assert g.random(0, dtype).shape == (0,) and g.offset == start // per_block


def test_counter_wraps_at_two_to_the_64():
    g = Generator("cpu", 1)
    g.set_state((1, 2 ** 64 - 1))
    last_and_first = g.random(8)
    assert g.offset == 1
    np.testing.assert_array_equal(last_and_first[4:], Generator("cpu", 1).random(4))


@pytest.mark.parametrize("dtype, bits", [(np.float32, 24), (np.float64, 53)])
def test_uniforms_lie_in_zero_one_on_a_grid(dtype, bits):
    u = Generator("cpu", 11).random(200_000, dtype)
    assert u.dtype == dtype and u.min() >= 0 and u.max() < 1
    grid = u.astype(np.float64) * 2.0 ** bits
    assert np.array_equal(grid, np.floor(grid))                  # k / 2^bits exactly
    counts = np.bincount((u * 20).astype(int), minlength=20)    # chi-square, 19 dof, p = 0.001
    expected = len(u) / 20
    assert ((counts - expected) ** 2 / expected).sum() < 43.82
    with pytest.raises(TypeError, match="float32 or float64"):
        Generator("cpu").random(3, np.float16)


def test_dropout_masks_agree_across_devices(device):
    x = np.ones((6, 33), np.float32)
    for p in (0.1, 0.5, 0.9):
        a = F.dropout(tl.Tensor(x), p=p, seed=12).numpy()
        b = F.dropout(tl.Tensor(x, device=device), p=p, seed=12).numpy()
        np.testing.assert_array_equal(a, b)
        assert set(np.unique(a)) <= {0.0, np.float32(1 / (1 - p))}
    tl.manual_seed(4)                          # the library's generators: same stream everywhere
    a = [F.dropout(tl.Tensor(x), p=0.3).numpy() for _ in range(2)]
    tl.manual_seed(4)
    b = [F.dropout(tl.Tensor(x, device=device), p=0.3).numpy() for _ in range(2)]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[0], a[1])       # successive masks differ


def test_dropout_rate_and_scale():
    y = F.dropout(tl.Tensor(np.ones((400, 500), np.float32)), p=0.3).numpy()
    assert abs((y == 0).mean() - 0.3) < 0.005
    np.testing.assert_allclose(y[y != 0], 1 / 0.7, rtol=1e-6)
