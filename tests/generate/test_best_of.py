"""Inference-time selection (generate/best_of.py): pass@k against brute-force enumeration of
every k-subset of the samples, majority vote and best-of-n with their ties and empty inputs,
and sample_n: n samples per prompt, reproducible, stopping at the stop token, greedy equal to
generate's greedy output."""
import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm.generate import best_of_n, generate, majority_vote, pass_at_k, sample_n
from tinygrad_llm.models import GPT, GPTConfig


def brute_pass_at_k(n, c, k):
    """The fraction of the k-subsets of n samples (the first c correct) holding a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_pass_at_k_is_the_fraction_of_subsets_with_a_correct_sample(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_edge_cases_and_large_n():
    assert pass_at_k(10, 0, 1) == 0.0 and pass_at_k(10, 0, 10) == 0.0      # none right
    assert pass_at_k(10, 10, 1) == 1.0 and pass_at_k(10, 10, 10) == 1.0    # all right
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)                       # pass@1 = c / n
    assert pass_at_k(10, 3, 8) == 1.0                                      # only 7 wrong
    # n = 256: the product against the exact ratio of binomials (which overflow floats)
    for c, k in ((1, 1), (5, 16), (40, 64), (200, 50), (255, 1)):
        exact = 1 - Fraction(math.comb(256 - c, k), math.comb(256, k))
        assert pass_at_k(256, c, k) == pytest.approx(float(exact), rel=1e-12, abs=1e-15)
    assert pass_at_k(np.int64(4), np.int64(2), np.int64(2)) == pytest.approx(5 / 6)


@pytest.mark.parametrize("args, match", [
    ((3, 1, 5), r"k=5 exceeds n=3"),
    ((0, 0, 1), r"n must be an int >= 1, got 0"),
    ((4, 5, 1), r"c=5 correct samples exceed n=4"),
    ((4, -1, 1), r"c must be an int >= 0"),
    ((4, 1, 0), r"k must be an int >= 1, got 0"),
    ((4.0, 1, 1), r"n must be an int"),
    ((4, True, 1), r"c must be an int"),
])
def test_pass_at_k_bad_input_names_the_argument(args, match):
    with pytest.raises(ValueError, match=match):
        pass_at_k(*args)


def test_majority_vote_counts_and_breaks_ties_by_first_appearance():
    assert majority_vote(["42", "41", "42"]) == "42"
    assert majority_vote(["7"]) == "7"
    assert majority_vote(["41", "42", "42", "41"]) == "41"          # a tie: 41 came first
    assert majority_vote(["b", "a", "c"]) == "b"
    assert majority_vote(iter(["x", "y", "y"])) == "y"              # any iterable
    with pytest.raises(ValueError, match="answers is empty"):
        majority_vote([])


def test_best_of_n_takes_the_highest_score_and_the_first_of_a_tie():
    assert best_of_n([0.1, 2.0, -1.0], ["a", "b", "c"]) == "b"
    assert best_of_n(np.array([1.0, 3.0, 3.0]), ["a", "b", "c"]) == "b"
    assert best_of_n([-np.inf, -5.0], ["a", "b"]) == "b"
    assert best_of_n([2.0], [("tokens", 1)]) == ("tokens", 1)
    with pytest.raises(ValueError, match="one per candidate"):
        best_of_n([1.0, 2.0], ["a"])
    with pytest.raises(ValueError, match="candidates is empty"):
        best_of_n([], [])
    with pytest.raises(ValueError, match="NaN at"):
        best_of_n([1.0, np.nan], ["a", "b"])


def tiny():
    tl.manual_seed(0)
    return GPT(GPTConfig.preset("gpt2", vocab_size=11, n_layer=1, n_head=2, n_embd=16,
                                block_size=32))


def test_sample_n_gives_n_samples_per_prompt_reproducibly():
    model, prompts = tiny(), [np.array([1, 2, 3]), np.array([4])]
    out = sample_n(model, prompts, 5, 6, seed=3, stop_ids=[0], rows_per_batch=4)
    assert len(out) == 2 and all(len(s) == 5 for s in out)
    for s in (x for ss in out for x in ss):
        assert 1 <= len(s) <= 6 and s.dtype == np.int64
        assert len(s) == 6 or s[-1] == 0                         # stopped at the stop token
        assert 0 not in s[:-1].tolist()
    again = sample_n(model, prompts, 5, 6, seed=3, stop_ids=[0], rows_per_batch=4)
    assert all(np.array_equal(a, b) for x, y in zip(out, again) for a, b in zip(x, y))
    other = sample_n(model, prompts, 5, 6, seed=4, stop_ids=[0], rows_per_batch=4)
    assert not all(np.array_equal(a, b) for x, y in zip(out, other) for a, b in zip(x, y))
    assert len({tuple(s) for s in out[0]}) > 1                  # the rows differ


def test_sample_n_greedy_is_generate_greedy():
    model, prompts = tiny(), [np.array([1, 2, 3]), np.array([4, 5])]
    out = sample_n(model, prompts, 3, 5, temperature=0.0, rows_per_batch=2)
    for p, samples in zip(prompts, out):
        want = generate(model, p[None], 5, temperature=0.0)[0, len(p):]
        assert all(np.array_equal(s, want) for s in samples)


def test_sample_n_bad_input_names_the_argument():
    model = tiny()
    with pytest.raises(ValueError, match="n must be an int >= 1, got 0"):
        sample_n(model, [np.array([1])], 0, 4)
    with pytest.raises(ValueError, match="prompts must be a non-empty list"):
        sample_n(model, [], 4, 4)
    with pytest.raises(ValueError, match="rows_per_batch must be an int >= 1"):
        sample_n(model, [np.array([1])], 2, 4, rows_per_batch=0)
