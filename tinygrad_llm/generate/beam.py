"""Beam search: decode the most likely continuation, approximately, by keeping several.

Greedy decoding commits to the single most likely token at every step. The most likely
*sequence* can start with a less likely token: "the dog" may beat "a dog" as a whole even when
"a" beats "the" alone. Finding the best sequence of n tokens exactly means scoring all V^n of
them, so beam search (Graves, 2012; Sutskever et al., 2014) keeps a fixed number of candidates,
the beams, and extends them together:

    score(y_1..y_t) = sum_i log p(y_i | prompt, y_<i)          the cumulative log-probability
    each step: every beam b and every token v gives a candidate with score(b) + log p(v | b);
               the best num_beams candidates over all beams become the next beams.

With num_beams = 1 this is greedy decoding; with num_beams >= V^(n-1) it is exhaustive over n
tokens (every prefix survives until the last step, where all V^n are compared). In between it is
a heuristic: a prefix dropped early cannot come back.

Stopping. A candidate ending in one of `stop_ids` (end of text) is a finished hypothesis and no
longer extended. Raw log-probabilities only fall as a sequence grows, so the raw score prefers
short outputs; Wu et al. (2016) divide by a length term. Hugging Face's simple form is used:

    score(hypothesis) = sum log p / L ** length_penalty        L: new tokens, the stop included

length_penalty = 0 ranks by total log-probability; 1 by the mean per token; larger values favour
longer outputs still (the sum is negative, so a larger divisor raises it).

As in Hugging Face, 2 * num_beams candidates (more with several stop ids) are ranked each step,
so that num_beams beams can go on even when some candidates stop; a stop candidate ranked below
the num_beams-th is dropped (it would not have been a beam either). The search ends at
max_new_tokens, or earlier once num_beams hypotheses are finished and:

    early_stopping=True   at once (no later hypothesis is considered);
    early_stopping=False  when no running beam can still beat the worst kept hypothesis.
        A beam's sum of log-probabilities s <= 0 only falls, so its final score is at most
        s / L ** length_penalty for the L that makes this largest: with length_penalty > 0 the
        longest it may reach, L = max_new_tokens (Hugging Face's early_stopping="never"); with
        length_penalty <= 0 the current length. Hugging Face's early_stopping=False uses the
        current length always, which can stop too soon; this bound cannot, so stopping on it
        gives the same hypotheses as running on to max_new_tokens.

Beams still running when max_new_tokens is reached are finished hypotheses too, normalised the
same way (not after early_stopping=True has ended the search: they have not stopped).

Each step, with a KV cache: the caches' batch rows are reordered so row i holds beam i's history
(`cache.reorder(rows)`, repeats allowed) and only the chosen tokens are fed, (num_beams, 1) at the
next position. The prompt is prefilled once with batch 1 and its row repeated. use_cache=False
recomputes all columns of every beam each step: the slow reference the cached search is tested
against.
"""
import numbers

import numpy as np

from .. import backend
from ..tensor import no_grad
from .generate import _stop_ids, prepare_prompts
from .kv_cache import make_caches

__all__ = ["beam_search"]


def _log_softmax(logits):
    """(N, V) float64 logits -> log-probabilities, shifted by the row max for stability."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _top_candidates(scores, k):
    """Flat indices of the k largest entries of scores (N, V), best first, ties by lower flat
    index: np.argsort(-scores.ravel(), kind="stable")[:k], without sorting all N V entries."""
    flat = scores.ravel()
    if k < flat.size:
        kth = np.partition(flat, flat.size - k)[flat.size - k]    # the k-th largest value
        candidates = np.flatnonzero(flat >= kth)                  # every tie of it, in order
    else:
        candidates = np.arange(flat.size)
    return candidates[np.argsort(-flat[candidates], kind="stable")][:k]


class _Hypotheses:
    """The best `size` finished hypotheses so far, as (score, new tokens), best first."""

    def __init__(self, size, length_penalty):
        self.size, self.length_penalty = size, length_penalty
        self.items = []

    def score(self, sum_logprobs, length):
        return sum_logprobs / length ** self.length_penalty

    @property
    def full(self):
        return len(self.items) >= self.size

    @property
    def worst(self):
        return self.items[-1][0]

    def add(self, sum_logprobs, new_tokens):
        score = self.score(sum_logprobs, len(new_tokens))
        if self.full and score <= self.worst:
            return
        self.items.append((score, new_tokens))
        self.items.sort(key=lambda item: -item[0])          # stable: earlier first on ties
        del self.items[self.size:]


class _Decoder:
    """The model's next-token logits for the beams: with a cache, one new column per step."""

    def __init__(self, model, max_len, use_cache):
        self.model = model
        self.caches = make_caches(model, 1, max_len) if use_cache else None

    def _run(self, tokens, offset):
        logits = self.model(backend.to_device(tokens, self.model.device), caches=self.caches,
                            offset=offset)
        return backend.to_numpy(logits.data[:, -1]).astype(np.float64)     # (rows, V)

    def first(self, prompt):
        """Prefill the prompt (batch 1) -> its next-token logits (1, V)."""
        return self._run(prompt[None], 0)

    def next(self, rows, tokens):
        """Beam i continues old row rows[i]; tokens (num_beams, T') are the beams' full
        sequences, the last column new -> logits (num_beams, V)."""
        if self.caches is None:
            return self._run(tokens, 0)
        for cache in self.caches:
            if cache is not None:
                cache.reorder(rows)
        return self._run(tokens[:, -1:], tokens.shape[1] - 1)


def _check_args(num_beams, max_new_tokens, length_penalty, early_stopping):
    if isinstance(num_beams, bool) or not isinstance(num_beams, numbers.Integral) \
            or num_beams < 1:
        raise ValueError(f"beam_search: num_beams must be a positive int, got {num_beams!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral) \
            or max_new_tokens < 0:
        raise ValueError(f"beam_search: max_new_tokens must be a non-negative int, got "
                         f"{max_new_tokens!r}")
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, numbers.Real):
        raise TypeError(f"beam_search: length_penalty must be a number, got "
                        f"{length_penalty!r}")
    if not np.isfinite(length_penalty):
        raise ValueError(f"beam_search: length_penalty must be finite, got {length_penalty!r}")
    if not isinstance(early_stopping, (bool, np.bool_)):
        raise TypeError(f"beam_search: early_stopping must be True or False, got "
                        f"{early_stopping!r}")


def beam_search(model, idx, max_new_tokens, num_beams=4, length_penalty=1.0, early_stopping=True,
                stop_ids=None, use_cache=True, return_all=False):
    """The highest-scoring continuation of one prompt found by beam search.

    idx: one prompt, (T,) or (1, T) int ids. num_beams: hypotheses kept each step (1: greedy).
    length_penalty: a finished hypothesis scores sum log p / L ** length_penalty (L new tokens,
    the stop included). early_stopping: see the module docstring. stop_ids: an id or ids that
    end a hypothesis. use_cache=False recomputes the whole context each step (the reference).
    Returns the best sequence, prompt + new tokens, as a (1, T + n) int64 array; with
    return_all=True, a list of (score, (T + n,) int64 array) for the kept hypotheses, best
    first. The prompt plus max_new_tokens must fit the model's positions (no context shift).
    No autograd graph is recorded; the model's training mode is restored after."""
    _check_args(num_beams, max_new_tokens, length_penalty, early_stopping)
    prompts, _ = prepare_prompts(idx)
    if len(prompts) != 1:
        raise ValueError(f"beam_search: idx must hold one prompt, (T,) or (1, T), got a batch "
                         f"of {len(prompts)}")
    prompt = prompts[0]
    limit = model.config.max_positions
    if len(prompt) + max_new_tokens > limit:
        raise ValueError(f"beam_search: prompt {len(prompt)} + max_new_tokens {max_new_tokens} "
                         f"exceed the model's {limit} positions")
    stops = _stop_ids(stop_ids)
    hypotheses = _Hypotheses(int(num_beams), float(length_penalty))
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            _search(model, prompt, int(max_new_tokens), int(num_beams), stops, hypotheses,
                    bool(early_stopping), use_cache)
    finally:
        model.train(was_training)
    if not hypotheses.items:                      # max_new_tokens == 0
        hypotheses.items = [(0.0, [])]
    results = [(float(score), np.concatenate([prompt, np.asarray(new, dtype=np.int64)]))
               for score, new in hypotheses.items]
    return results if return_all else results[0][1][None]


def _search(model, prompt, max_new_tokens, num_beams, stops, hypotheses, early_stopping,
            use_cache):
    """Run the search, filling `hypotheses` (the kept finished hypotheses)."""
    if max_new_tokens == 0:
        return
    decoder = _Decoder(model, len(prompt) + max_new_tokens, use_cache)
    logits = decoder.first(prompt)                                       # (1, V)
    vocab = logits.shape[-1]
    # every beam starts as the prompt; only beam 0 is live, so the first step's candidates
    # are not num_beams copies of the same tokens
    rows = np.zeros(num_beams, dtype=np.int64)
    tokens = np.repeat(prompt[None], num_beams, axis=0)                  # (num_beams, T)
    beam_scores = np.full(num_beams, -np.inf)
    beam_scores[0] = 0.0
    logits = np.repeat(logits, num_beams, axis=0)
    if decoder.caches is not None:
        for cache in decoder.caches:
            if cache is not None:
                cache.reorder(rows)
    # enough candidates that num_beams non-stop ones remain however many stop (each beam
    # contributes at most len(stops) stop candidates)
    n_stop = sum(0 <= s < vocab for s in stops)
    k = min(num_beams * vocab, max(2, 1 + n_stop) * num_beams)
    for step in range(1, max_new_tokens + 1):
        if step > 1:
            logits = decoder.next(rows, tokens)
        scores = beam_scores[:, None] + _log_softmax(logits)             # (num_beams, V)
        new_rows, new_ids, new_scores = [], [], []
        for rank, flat in enumerate(_top_candidates(scores, k)):
            beam, token = divmod(int(flat), vocab)
            score = scores[beam, token]
            if token in stops:
                if rank < num_beams and np.isfinite(score):
                    hypotheses.add(score, tokens[beam, len(prompt):].tolist() + [token])
                continue
            new_rows.append(beam)
            new_ids.append(token)
            new_scores.append(score)
            if len(new_rows) == num_beams:
                break
        while len(new_rows) < num_beams:              # every token stops: dead placeholders
            new_rows.append(0)
            new_ids.append(0)
            new_scores.append(-np.inf)
        rows = np.asarray(new_rows, dtype=np.int64)
        tokens = np.concatenate([tokens[rows], np.asarray(new_ids, dtype=np.int64)[:, None]],
                                axis=1)
        beam_scores = np.asarray(new_scores, dtype=np.float64)
        best = beam_scores.max()
        if not np.isfinite(best):
            return                                    # nothing left to extend
        if hypotheses.full:
            if early_stopping:
                return
            # the best score a running beam can still reach (see the module docstring)
            length = max_new_tokens if hypotheses.length_penalty > 0 else step
            if hypotheses.worst >= hypotheses.score(best, length):
                return
    for beam in range(num_beams):                     # reached max_new_tokens: all finish
        if np.isfinite(beam_scores[beam]):
            hypotheses.add(beam_scores[beam], tokens[beam, len(prompt):].tolist())
