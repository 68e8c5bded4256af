"""Inference-time compute: many samples of each prompt, and the ways of turning them into one
answer or into a score.

    sample_n(model, prompts, n, ...)   n samples of every prompt, KV-cached and batched (each
                                       prompt replicated n times, rows_per_batch rows at a time)
    pass_at_k(n, c, k)                 the unbiased pass@k of one problem from c correct of n
    majority_vote(answers)             self-consistency: the most frequent answer
    best_of_n(scores, candidates)      the candidate a scorer (reward model, log-likelihood)
                                       ranks first

pass@k (Chen et al., 2021) is the chance that at least one of k samples is right. Drawing k of
the n samples without replacement, none is right with probability C(n - c, k) / C(n, k), so

    pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n - c + 1}^{n} (1 - k / i)

the product form (theirs) has no large binomials to overflow; it is an unbiased estimate of the
pass@k of the model, where 1 - (1 - c / n)^k would be biased low. pass@k needs a checker of the
answer (an oracle); majority vote (Wang et al., 2022) and best-of-n do not: they pick one answer,
and its accuracy is what a user without the checker gets.

Ties are broken by order, so a result never depends on hashing: the vote's tied answers go to
the one seen first, best-of-n's tied scores to the first candidate (samples are exchangeable, so
"first" is as good as a random pick). Pure Python and NumPy, apart from sample_n.

Reading order: pass_at_k, majority_vote, best_of_n, sample_n.
"""
import math
from collections import Counter

import numpy as np

from .generate import generate, prepare_prompts

__all__ = ["pass_at_k", "majority_vote", "best_of_n", "sample_n"]


def _count(owner, name, value, low):
    """An int >= low (NumPy ints too, never a bool), or a ValueError naming it."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or value < low:
        raise ValueError(f"{owner}: {name} must be an int >= {low}, got {value!r}")
    return int(value)


def pass_at_k(n, c, k):
    """The unbiased pass@k of one problem: c of its n samples are correct, k are drawn.

    1 - C(n - c, k) / C(n, k) as the product 1 - prod_{i=n-c+1}^{n} (1 - k / i); 1.0 when
    fewer than k samples are wrong. Raises ValueError naming k and n when k > n."""
    n = _count("pass_at_k", "n", n, 1)
    c = _count("pass_at_k", "c", c, 0)
    k = _count("pass_at_k", "k", k, 1)
    if c > n:
        raise ValueError(f"pass_at_k: c={c} correct samples exceed n={n} samples")
    if k > n:
        raise ValueError(f"pass_at_k: k={k} exceeds n={n}: pass@k draws k of the n samples; "
                         f"sample at least k={k} per problem")
    if n - c < k:                      # every draw of k holds a correct one
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def majority_vote(answers):
    """The most frequent of `answers` (hashable, e.g. normalised strings); among answers tied
    for the most votes, the one that appears first. Raises ValueError on an empty list."""
    answers = list(answers)
    if not answers:
        raise ValueError("majority_vote: answers is empty; a vote needs at least one answer")
    counts = Counter(answers)          # keys in first-seen order; max keeps the first maximum
    return max(counts, key=counts.__getitem__)


def best_of_n(scores, candidates):
    """The candidate with the highest score (the first of a tie).

    scores: (n,) numbers, e.g. a reward model's r(x, y) or the log-likelihood of each sample;
    candidates: n items in the same order. Raises ValueError when they are empty, differ in
    length, or a score is NaN (which no ranking can place)."""
    scores, candidates = np.asarray(scores, dtype=np.float64), list(candidates)
    if scores.ndim != 1 or len(scores) != len(candidates):
        raise ValueError(f"best_of_n: scores must be (n,) with one per candidate, got shape "
                         f"{scores.shape} for {len(candidates)} candidates")
    if not len(candidates):
        raise ValueError("best_of_n: candidates is empty; best-of-n needs n >= 1")
    if np.isnan(scores).any():
        raise ValueError(f"best_of_n: scores hold NaN at {np.flatnonzero(np.isnan(scores))[:5]}")
    return candidates[int(np.argmax(scores))]          # argmax: the first of the maxima


def sample_n(model, prompts, n, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
             stop_ids=None, seed=0, rows_per_batch=1024):
    """n sampled continuations of each prompt, through the KV-cached decoder.

    prompts: a list of 1-D id sequences (lengths may differ). Each is replicated n times and
    the rows are decoded rows_per_batch at a time (padded on the left, generate's batching); a
    row stops at one of stop_ids or after max_new_tokens. Batch b draws from the seed
    (seed, b), so the samples of a call are reproducible (and change with rows_per_batch).
    Returns [[n 1-D int64 arrays of new tokens, through the stop token]] per prompt; their
    lengths are the tokens generated."""
    n = _count("sample_n", "n", n, 1)
    rows_per_batch = _count("sample_n", "rows_per_batch", rows_per_batch, 1)
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"sample_n: prompts must be a non-empty list of id sequences, got "
                         f"{prompts!r:.80}")
    prompts, _ = prepare_prompts(list(prompts))
    rows = [p for p in prompts for _ in range(n)]              # prompt-major: (P * n) rows
    new = []
    for b, start in enumerate(range(0, len(rows), rows_per_batch)):
        batch = rows[start:start + rows_per_batch]
        seed_b = int(np.random.SeedSequence([seed, b]).generate_state(1)[0])
        out = generate(model, batch, max_new_tokens, temperature=temperature, top_k=top_k,
                       top_p=top_p, stop_ids=stop_ids, seed=seed_b)
        new += [o[len(p):] for p, o in zip(batch, out)]
    return [new[i * n:(i + 1) * n] for i in range(len(prompts))]
