"""The warmup-stable-decay schedule and the size ramp behind sequence-length and batch-size
warmup: values at their landmarks (step 0, end of warmup, start of decay, last step), shape
(monotone, flat where it should be), agreement with linear_decay where the two coincide, and bad
arguments named."""
import math

import pytest

from tinygrad_llm.optim.schedule import linear_decay, size_warmup, warmup_stable_decay

KW = dict(max_lr=1.0, min_lr=0.1, warmup_steps=10, total_steps=100)   # decay over steps 80..100


@pytest.mark.parametrize("decay, left", [("linear", lambda done: 1 - done),
                                         ("1-sqrt", lambda done: 1 - math.sqrt(done))])
def test_wsd_landmarks(decay, left):
    lr = lambda step: warmup_stable_decay(step, **KW, decay_frac=0.2, decay=decay)  # noqa: E731
    assert lr(0) == pytest.approx(0.1)                       # max_lr / warmup_steps
    assert lr(4) == pytest.approx(0.5)
    assert lr(9) == pytest.approx(1.0)                       # end of warmup
    assert all(lr(s) == 1.0 for s in range(10, 81))          # stable, through the decay's start
    assert lr(90) == pytest.approx(0.1 + 0.9 * left(0.5))
    assert lr(99) == pytest.approx(0.1 + 0.9 * left(19 / 20))   # the last step of a 100-step run
    assert lr(100) == pytest.approx(0.1) and lr(10_000) == 0.1


@pytest.mark.parametrize("decay", ["linear", "1-sqrt"])
@pytest.mark.parametrize("warmup_steps, total_steps, decay_frac",
                         [(10, 100, 0.2), (0, 37, 0.3), (5, 7, 0.5), (3, 50, 1.0), (0, 1, 0.01)])
def test_wsd_rises_then_falls(decay, warmup_steps, total_steps, decay_frac):
    lrs = [warmup_stable_decay(s, 1.0, 0.1, warmup_steps, total_steps, decay_frac, decay)
           for s in range(total_steps + 2)]
    peak = max(warmup_steps - 1, 0)
    assert lrs[peak] == 1.0 and max(lrs) == 1.0
    assert all(a <= b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:]))
    assert lrs[total_steps - 1] > 0.1 == lrs[total_steps]    # min_lr is reached after the run


def test_wsd_decay_never_starts_inside_the_warmup():
    # 6 steps, 4 of warmup, a 3-step decay asked for: the decay starts when the warmup ends
    lrs = [warmup_stable_decay(s, 1.0, 0.0, 4, 6, decay_frac=0.5) for s in range(7)]
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 0.5, 0.0])


@pytest.mark.parametrize("warmup_steps, total_steps", [(0, 20), (4, 24), (7, 8)])
def test_wsd_decaying_over_the_whole_run_is_linear_decay(warmup_steps, total_steps):
    for s in range(total_steps + 3):
        assert warmup_stable_decay(s, 1.0, 0.2, warmup_steps, total_steps, decay_frac=1.0) == \
            pytest.approx(linear_decay(s, 1.0, 0.2, warmup_steps, total_steps))


def test_size_warmup_lengths_over_the_steps():
    lengths = [size_warmup(s, 8, 64, 8, multiple=8) for s in range(11)]
    assert lengths == [8, 8, 16, 24, 32, 40, 48, 56, 64, 64, 64]
    assert [size_warmup(s, 1, 12, 4) for s in range(6)] == [1, 3, 6, 9, 12, 12]
    # a start that is not a multiple: kept until the ramp reaches the next multiple
    assert [size_warmup(s, 5, 20, 5, multiple=8) for s in range(6)] == [5, 8, 8, 8, 16, 20]
    assert size_warmup(0, 3, 30, 0) == 30                       # no warmup: the full size at once
    assert size_warmup(9, 30, 30, 10, multiple=8) == 30


BAD = [
    (lambda: warmup_stable_decay(0, 1.0, 0.1, 2, 10, decay_frac=0.0), "decay_frac"),
    (lambda: warmup_stable_decay(0, 1.0, 0.1, 2, 10, decay_frac=1.5), "decay_frac"),
    (lambda: warmup_stable_decay(0, 1.0, 0.1, 2, 10, decay_frac=-0.2), "decay_frac"),
    (lambda: warmup_stable_decay(0, 1.0, 0.1, 2, 10, decay_frac=True), "decay_frac"),
    (lambda: warmup_stable_decay(0, 1.0, 0.1, 2, 10, decay="cosine"), "decay: expected one of"),
    (lambda: warmup_stable_decay(-1, 1.0, 0.1, 2, 10), "step"),
    (lambda: warmup_stable_decay(0, 1.0, 0.1, 12, 10), "total_steps"),
    (lambda: size_warmup(0, 9, 8, 4), "start: expected <= end=8, got 9"),
    (lambda: size_warmup(0, 0, 8, 4), "start: expected an int >= 1"),
    (lambda: size_warmup(0, 2, 8, 4, multiple=0), "multiple"),
    (lambda: size_warmup(0, 2, 8.0, 4), "end"),
    (lambda: size_warmup(-1, 2, 8, 4), "step"),
]


@pytest.mark.parametrize("call, message", BAD, ids=[b[1][:24] + str(i) for i, b in enumerate(BAD)])
def test_bad_arguments_raise_naming_them(call, message):
    with pytest.raises(ValueError, match=message):
        call()
