"""CUDA embedding gradient (an atomic scatter-add) against ops/embedding.py's reference
(tests/cuda/cuda_parity.py), then through F.embedding on the device.

Rows: one, odd counts, one past a block (THREADS + 1 rows, each a block), widths one past a block
and two blocks and a bit; ids repeat (every row onto one id, a few ids shared) or are spread over
a large table, so rows meet in dW and must add up; magnitudes 1e4.
"""
import numpy as np
import pytest

import tinygrad_llm as tl
import tinygrad_llm.nn.functional as F
from cuda_parity import SIZES, check, down, up, x
from tinygrad_llm import kernels


def _embedding_backward(rng, dtype):
    for n, c, v in [(1, 1, 1), (SIZES[1], SIZES[2], 1), (SIZES[2], 5, 3), (4, SIZES[3], 1000)]:
        for scale in (1.0, 1e4):
            yield x(rng, (n, c), dtype, scale), rng.integers(0, v, n), v
    yield x(rng, (3, 4), dtype), np.array([2, 0, 2], dtype=np.int32), 5    # int32 ids


CASES = {"embedding_backward": _embedding_backward}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_reference(name, dtype):
    check(name, CASES[name], dtype)


def test_embedding_gradient_on_the_device():
    rng = np.random.default_rng(1)
    weight, ids = x(rng, (6, 5), np.float32), np.array([[1, 4, 1], [0, 1, 5]])
    dy = x(rng, (2, 3, 5), np.float32)
    host = tl.Tensor(weight, requires_grad=True)
    (F.embedding(ids, host) * tl.Tensor(dy)).sum().backward()
    dev = tl.Tensor(weight, requires_grad=True, device="cuda")
    with tl.use_kernels(True):
        (F.embedding(up(ids), dev) * tl.Tensor(dy, device="cuda")).sum().backward()
    assert kernels.ran("embedding_backward") == "cuda"
    np.testing.assert_allclose(down(dev.grad.data), host.grad.numpy(), rtol=1e-6, atol=1e-6)
