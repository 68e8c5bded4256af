"""CUDA Philox uniforms against random.py's reference (tests/cuda/cuda_parity.py): bit for bit,
since the generator's promise is the same numbers on every device."""
import numpy as np
import pytest

from cuda_parity import SIZES, check
from tinygrad_llm import backend
from tinygrad_llm.kernels.cuda import launch_count
from tinygrad_llm.kernels.cuda._common import THREADS
from tinygrad_llm.random import Generator

EXACT = 1e-300        # check()'s tolerance is relative; this leaves no room for any difference


def _uniform(rng, dtype):
    # sizes: 1, odd, one past a block of threads (4 numbers per thread for float32), past the
    # simulator's two-block grid (the grid-stride loop's second lap)
    for n in SIZES + [4 * THREADS + 1, 4 * 2 * THREADS * 2 + 5]:
        for seed, offset in [(0, 0), (2 ** 64 - 1, 2 ** 32 - 1), (12345, 7)]:
            yield np.full(n, np.nan, dtype), seed, offset


CASES = {"philox_uniform": _uniform}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_reference(name, dtype):
    check(name, CASES[name], dtype, tolerance=EXACT)


def test_a_generator_draws_the_cpu_stream_with_one_kernel_per_draw():
    cpu, gpu = Generator("cpu", 3), Generator("cuda", 3)
    for shape, dtype in [((2, 3, 5), np.float32), ((7,), np.float64)]:
        before = launch_count()
        u = gpu.random(shape, dtype)
        assert launch_count() - before == 1
        np.testing.assert_array_equal(backend.to_numpy(u), cpu.random(shape, dtype))
