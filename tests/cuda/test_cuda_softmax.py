"""CUDA cross-entropy (forward, backward) against ops/softmax.py's references
(tests/cuda/cuda_parity.py), then the whole loss on the device.

Rows are V = 1, odd, one past a block (THREADS + 1) and two blocks and a bit, with ignored
targets, label smoothing, logits of magnitude 1e4, and the special values whose pattern the
reference defines: a NaN anywhere in a row makes its loss NaN; -inf logits (masks) add nothing;
a row that is all -inf, or holds a +inf, has a NaN logsumexp.
"""
import numpy as np
import pytest

import standin
import tinygrad_llm as tl
import tinygrad_llm.nn.functional as F
from cuda_parity import SIZES, check, down, up, x
from tinygrad_llm import kernels

IGNORE = -100


def _targets(rng, n, v):
    t = rng.integers(0, v, n)
    t[1::3] = IGNORE
    return t


def _cross_entropy_forward(rng, dtype):
    for n, v in [(1, 1), (3, SIZES[1]), (3, SIZES[2]), (2, SIZES[3])]:
        for scale, smoothing in [(1.0, 0.0), (1e4, 0.0), (1.0, 0.1)]:
            yield x(rng, (n, v), dtype, scale), _targets(rng, n, v), IGNORE, smoothing


def _special_rows(rng, dtype):
    """NaN first / middle / last, a masked row, an all -inf row, a +inf; targets never masked."""
    v = SIZES[2]
    logits = x(rng, (7, v), dtype)
    logits[0, 0] = logits[1, v // 2] = logits[2, v - 1] = np.nan
    logits[3, 1:v:2] = -np.inf
    logits[4] = -np.inf
    logits[5, 3] = np.inf
    targets = np.array([1, 2, 3, 0, 0, 4, IGNORE])
    logits[6, 2] = np.nan                     # ignored: its loss is 0, its lse NaN
    yield logits, targets, IGNORE, 0.0
    keep = [0, 1, 2, 5, 6]                    # smoothing adds -mean(x): +inf on a masked row
    yield logits[keep], targets[keep], IGNORE, 0.1


def _backward_of(forward_cases):
    def cases(rng, dtype):
        for logits, targets, ignore, smoothing in forward_cases(rng, dtype):
            lse = kernels.reference("cross_entropy_forward")(logits, targets, ignore, smoothing)[1]
            yield (rng.random(len(targets)).astype(dtype), logits, targets, lse, ignore,
                   smoothing)
    return cases


CASES = {
    "cross_entropy_forward": _cross_entropy_forward,
    "cross_entropy_backward": _backward_of(_cross_entropy_forward),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_reference(name, dtype):
    check(name, CASES[name], dtype)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")   # inf - inf, as meant
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_special_values_follow_the_reference(dtype):
    check("cross_entropy_forward", _special_rows, dtype, min_cases=2)
    check("cross_entropy_backward", _backward_of(_special_rows), dtype, min_cases=2)


def test_the_loss_and_its_gradient_stay_on_the_device():
    """F.cross_entropy on device logits takes both kernels, agrees with the CPU, and (on the
    stand-in) brings nothing back to the host."""
    rng = np.random.default_rng(1)
    logits, targets = x(rng, (2, 3, SIZES[2]), np.float32), _targets(rng, 6, SIZES[2])
    targets = targets.reshape(2, 3)
    host = tl.Tensor(logits, requires_grad=True)
    want = F.cross_entropy(host, targets, label_smoothing=0.1)
    want.backward()
    dev = tl.Tensor(logits, requires_grad=True, device="cuda")
    with tl.use_kernels(True), standin.measure() as counted:
        loss = F.cross_entropy(dev, up(targets), label_smoothing=0.1)
        loss.backward()
        assert kernels.ran("cross_entropy_forward") == kernels.ran("cross_entropy_backward")
        assert kernels.ran("cross_entropy_backward") == "cuda"
    if not standin.HAS_GPU:
        assert counted.syncs == 0 and counted.upcasts == 0, counted
    np.testing.assert_allclose(down(loss.data), want.numpy(), rtol=1e-5)
    np.testing.assert_allclose(down(dev.grad.data), host.grad.numpy(), rtol=1e-5, atol=1e-7)
