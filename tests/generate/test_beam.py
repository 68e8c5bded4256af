"""Beam search: one beam is greedy decoding; cached equals uncached; enough beams find the
brute-force maximum-likelihood continuation; stop ids, early stopping and the length penalty on
constructed bigram models whose answers are worked out by hand; bad arguments."""
import itertools
from types import SimpleNamespace

import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import Tensor, no_grad
from tinygrad_llm.generate import generate
from tinygrad_llm.generate.beam import _top_candidates, beam_search
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.nn.module import Module

V = 13


def tiny(preset="llama", seed=0, sharpen=1.0, **overrides):
    """A float64 tiny GPT; sharpen scales the head so next-token distributions are peaked
    (GPT-2's init makes them nearly uniform)."""
    tl.manual_seed(seed)
    base = dict(vocab_size=V, n_layer=2, n_head=2, n_embd=16, block_size=64)
    model = GPT(GPTConfig.preset(preset, **{**base, **overrides})).to(dtype=np.float64)
    with no_grad():
        model.head.weight.data *= sharpen
    return model


def sequence_logprobs(model, prompt, continuations):
    """Sum of log p(new tokens | prompt) for each row of continuations (N, n), by one full
    forward pass per row batch (no cache): the oracle beam search's scores are checked against."""
    continuations = np.asarray(continuations, dtype=np.int64)
    seqs = np.concatenate([np.repeat(np.asarray(prompt)[None], len(continuations), 0),
                           continuations], axis=1)
    with no_grad():
        logits = model.eval()(seqs).numpy().astype(np.float64)
    t = len(prompt)
    logits = logits[:, t - 1:-1]                                  # predicts each new token
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    return np.take_along_axis(logp, continuations[..., None], -1)[..., 0].sum(-1)


class BigramLM(Module):
    """The next token depends only on the last one: p(next | last) = table[last]. Built to
    work out beam search's answers by hand; records each call's training mode and grad mode."""

    def __init__(self, table, max_positions=64):
        super().__init__()
        table = np.asarray(table, dtype=np.float64)
        self.logits = np.log(table / table.sum(-1, keepdims=True))
        self.config = SimpleNamespace(max_positions=max_positions, vocab_size=len(table))
        self.blocks = []                 # make_caches gives no caches: a bigram needs no history
        self.pos_emb = None
        self.calls = []

    def forward(self, idx, caches=None, offset=0, **kwargs):
        self.calls.append((self.training, tl.is_grad_enabled()))
        return Tensor(self.logits[np.asarray(idx)])


# Tokens: 0 start, 1 stop, 2 "a", 3 "b". After start: stop 0.40, a 0.34, b 0.25. After a the
# text almost surely stops (0.9); after b it almost surely goes on with b (0.9).
START, STOP, A, B = 0, 1, 2, 3
STOP_A_B = [[0.01, 0.40, 0.34, 0.25],
            [0.25, 0.25, 0.25, 0.25],
            [0.01, 0.90, 0.05, 0.04],
            [0.01, 0.05, 0.04, 0.90]]


# ---- num_beams = 1 is greedy ----------------------------------------------------------------
@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_one_beam_equals_greedy(preset, use_cache):
    model = tiny(preset, seed=1, sharpen=20.0)
    for prompt in ([3], [5, 1, 4], [2, 7, 1, 8, 2, 8, 1, 8, 2]):
        want = generate(model, np.array([prompt]), 12, temperature=0)
        got = beam_search(model, np.array(prompt), 12, num_beams=1, use_cache=use_cache)
        np.testing.assert_array_equal(got, want)
        assert got.shape == (1, len(prompt) + 12) and got.dtype == np.int64


def test_one_beam_with_a_stop_id_is_greedy_through_the_stop():
    model = tiny("gpt2", seed=3, sharpen=20.0)
    prompt = np.array([4, 2])
    greedy = generate(model, prompt[None], 10, temperature=0)[0]
    stop = int(greedy[len(prompt) + 3])                  # greedy's 4th new token
    first = len(prompt) + list(greedy[len(prompt):]).index(stop)
    got = beam_search(model, prompt, 10, num_beams=1, stop_ids=[stop])
    np.testing.assert_array_equal(got[0], greedy[:first + 1])


# ---- the cache changes nothing --------------------------------------------------------------
CACHE_VARIANTS = [
    ("gpt2", "gpt2", {}),
    ("llama_gqa", "llama", dict(n_head=4, n_kv_head=2)),
    ("sinusoidal", "gpt2", dict(pos="sinusoidal")),
    ("window_3", "llama", dict(window=3)),
    ("kv_share_2", "llama", dict(kv_share=2, n_layer=4)),
    ("linear_attention", "gpt2", dict(attention="linear")),
]


@pytest.mark.parametrize("num_beams, stop_ids", [(3, None), (5, [4, 9])])
@pytest.mark.parametrize("name, preset, overrides", CACHE_VARIANTS,
                         ids=[v[0] for v in CACHE_VARIANTS])
def test_cached_equals_uncached(name, preset, overrides, num_beams, stop_ids):
    model = tiny(preset, seed=2, sharpen=5.0, **overrides)
    prompt = np.array([1, 5, 2, 11])
    kw = dict(num_beams=num_beams, stop_ids=stop_ids, early_stopping=False, return_all=True)
    cached = beam_search(model, prompt, 9, use_cache=True, **kw)
    uncached = beam_search(model, prompt, 9, use_cache=False, **kw)
    assert len(cached) == len(uncached) == num_beams
    for (s1, seq1), (s2, seq2) in zip(cached, uncached):
        np.testing.assert_array_equal(seq1, seq2, err_msg=name)
        np.testing.assert_allclose(s1, s2, rtol=1e-10, atol=1e-12, err_msg=name)


# ---- enough beams are exhaustive -------------------------------------------------------------
@pytest.mark.parametrize("preset, prompt", [("llama", [3, 1]), ("gpt2", [7]),
                                            ("llama", [0, 12, 6, 6])])
def test_enough_beams_find_the_maximum_likelihood_continuation(preset, prompt):
    # with num_beams = V^(n-1) every prefix of n - 1 tokens survives, so the last step compares
    # all V^n continuations: the search is exhaustive and its kept hypotheses are the top ones
    n = 3
    model = tiny(preset, seed=4, sharpen=8.0)
    every = np.array(list(itertools.product(range(V), repeat=n)))           # (V^n, n)
    truth = sequence_logprobs(model, prompt, every)
    order = np.argsort(-truth, kind="stable")
    found = beam_search(model, np.array(prompt), n, num_beams=V ** (n - 1), length_penalty=0.0,
                        return_all=True)
    assert len(found) == V ** (n - 1)
    best_score, best = found[0]
    np.testing.assert_array_equal(best, np.concatenate([prompt, every[order[0]]]))
    np.testing.assert_allclose(best_score, truth[order[0]], rtol=1e-10)
    # every kept hypothesis is the next best continuation, with its exact log-probability
    kept = np.array([seq[len(prompt):] for _, seq in found])
    np.testing.assert_array_equal(kept, every[order[:len(found)]])
    np.testing.assert_allclose([s for s, _ in found], truth[order[:len(found)]], rtol=1e-10)
    # and greedy decoding can do no better
    greedy = generate(model, np.array([prompt]), n, temperature=0)[0, len(prompt):]
    assert best_score >= sequence_logprobs(model, prompt, greedy[None])[0] - 1e-12


def test_beam_search_beats_greedy_on_a_garden_path():
    # "b" is the likelier first token, but everything after it is spread out; after "a" one
    # token is almost certain: greedy takes b, two beams find a a
    table = [[1, 1, 40, 50], [1, 1, 1, 1], [1, 1, 100, 1], [30, 30, 30, 30]]
    model = BigramLM(table)
    greedy = generate(model, np.array([[START]]), 2, temperature=0)
    np.testing.assert_array_equal(greedy, [[START, B, START]])
    np.testing.assert_array_equal(beam_search(model, [START], 2, num_beams=2), [[START, A, A]])


def test_top_candidates_is_a_stable_argsort():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, (5, 7)).astype(np.float64)      # many ties
    scores[1] = -np.inf                                         # a dead beam
    for k in (1, 3, 10, 17, 35):
        want = np.argsort(-scores.ravel(), kind="stable")[:k]
        np.testing.assert_array_equal(_top_candidates(scores, k), want)


# ---- stop ids, early stopping, length penalty -----------------------------------------------
def test_stopped_hypotheses_end_with_the_stop_token():
    model = tiny("llama", seed=5, sharpen=5.0)
    prompt = np.array([2, 9, 4])
    stop = int(generate(model, prompt[None], 1, temperature=0)[0, -1])   # greedy's first token
    found = beam_search(model, prompt, 8, num_beams=4, stop_ids=stop, early_stopping=False,
                        return_all=True)
    stopped = 0
    for _, seq in found:
        new = list(seq[len(prompt):])
        np.testing.assert_array_equal(seq[:len(prompt)], prompt)
        assert stop not in new[:-1]                     # nothing goes on after a stop
        if len(new) < 8:
            assert new[-1] == stop
        stopped += new[-1] == stop
    assert stopped >= 1
    assert [s for s, _ in found] == sorted((s for s, _ in found), reverse=True)


def test_early_stopping_ends_when_num_beams_hypotheses_are_finished():
    # by hand: step 1 finishes [stop] and keeps beams a, b; step 2 finishes [a, stop]: two
    # hypotheses, so early_stopping=True ends after two model calls (prefill + one step)
    model = BigramLM(STOP_A_B)
    found = beam_search(model, [START], 10, num_beams=2, stop_ids=[STOP], length_penalty=1.0,
                        return_all=True)
    assert len(model.calls) == 2
    p = np.array(STOP_A_B) / np.sum(STOP_A_B, axis=1, keepdims=True)
    short, long = np.log(p[START, STOP]), np.log(p[START, A]) + np.log(p[A, STOP])
    assert [seq.tolist() for _, seq in found] == [[START, A, STOP], [START, STOP]]
    np.testing.assert_allclose([s for s, _ in found], [long / 2, short / 1], rtol=1e-12)


def test_early_stopping_false_searches_on_while_a_beam_can_win():
    # with length_penalty 1 the beam b b b ... can still beat the worst finished hypothesis
    # (its bound is its sum over max_new_tokens), so the search runs to the end, where
    # [b] * 10 (mean log-prob about -0.23) beats [a, stop] (-0.59)
    p = np.array(STOP_A_B) / np.sum(STOP_A_B, axis=1, keepdims=True)
    model = BigramLM(STOP_A_B)
    eager = beam_search(model, [START], 10, num_beams=2, stop_ids=[STOP], return_all=True)
    model.calls.clear()
    patient = beam_search(model, [START], 10, num_beams=2, stop_ids=[STOP],
                          early_stopping=False, return_all=True)
    assert len(model.calls) == 10
    np.testing.assert_array_equal(patient[0][1], [START] + [B] * 10)
    want = (np.log(p[START, B]) + 9 * np.log(p[B, B])) / 10
    np.testing.assert_allclose(patient[0][0], want, rtol=1e-12)
    assert patient[0][0] > eager[0][0]
    # with length_penalty 0 no beam can recover from below the worst finished sum: it stops
    # as early as early_stopping=True and agrees with it
    model.calls.clear()
    flat = beam_search(model, [START], 10, num_beams=2, stop_ids=[STOP], length_penalty=0.0,
                       early_stopping=False)
    assert len(model.calls) == 2
    np.testing.assert_array_equal(flat, [[START, STOP]])


def test_a_stop_ranked_below_num_beams_is_dropped():
    # with stops {stop, b}, step 1 ranks stop (finished), a (beam 0), b: a stop at rank 2 >=
    # num_beams, so (as in Hugging Face) it is not a hypothesis, and start fills beam 1; step 2
    # finishes [a, stop]. Keeping [b] would have ended the search after one step instead
    model = BigramLM(STOP_A_B)
    found = beam_search(model, [START], 10, num_beams=2, stop_ids=[STOP, B], return_all=True)
    assert [seq.tolist() for _, seq in found] == [[START, A, STOP], [START, STOP]]
    assert len(model.calls) == 2


def test_when_every_token_stops_the_search_ends_after_one_step():
    model = BigramLM(STOP_A_B)
    found = beam_search(model, [START], 5, num_beams=2, stop_ids=[0, 1, 2, 3], return_all=True)
    assert len(model.calls) == 1
    assert [seq.tolist() for _, seq in found] == [[START, STOP], [START, A]]


@pytest.mark.parametrize("length_penalty, want", [
    (-1.0, [START, STOP]), (0.0, [START, STOP]), (0.2, [START, STOP]),
    (0.5, [START, A, STOP]), (1.0, [START, A, STOP]), (2.0, [START, A, STOP])])
def test_length_penalty_favours_longer_hypotheses(length_penalty, want):
    # [stop]: log 0.40 = -0.916 over 1 token; [a, stop]: log 0.34 + log 0.9 = -1.184 over 2.
    # The long one wins once -1.184 / 2^lp > -0.916, i.e. lp > log2(1.184 / 0.916) = 0.37
    got = beam_search(BigramLM(STOP_A_B), [START], 10, num_beams=2, stop_ids=[STOP],
                      length_penalty=length_penalty)
    np.testing.assert_array_equal(got[0], want)


def test_scores_follow_the_length_penalty_formula():
    model = tiny("gpt2", seed=6, sharpen=5.0)
    prompt = np.array([1, 2, 3])
    stop = int(generate(model, prompt[None], 2, temperature=0)[0, -1])   # greedy's 2nd token
    best_lengths = []
    for length_penalty in (0.0, 0.7, 1.0, 2.0):
        found = beam_search(model, prompt, 6, num_beams=3, length_penalty=length_penalty,
                            stop_ids=[stop], early_stopping=False, return_all=True)
        assert len(found) == 3
        for score, seq in found:
            new = seq[len(prompt):]
            total = sequence_logprobs(model, prompt, new[None])[0]
            np.testing.assert_allclose(score, total / len(new) ** length_penalty, rtol=1e-10)
        best_lengths.append(len(found[0][1]) - len(prompt))
    # a larger penalty never prefers a shorter output here, and does change the winner
    assert best_lengths == sorted(best_lengths) and best_lengths[0] < best_lengths[-1]


# ---- modes and arguments --------------------------------------------------------------------
def test_eval_mode_and_no_graph_during_the_search_training_mode_restored():
    model = BigramLM(STOP_A_B)
    model.train()
    beam_search(model, [START], 4, num_beams=2)
    assert model.calls and all(call == (False, False) for call in model.calls)
    assert model.training
    model.eval()
    beam_search(model, [START], 4, num_beams=2)
    assert not model.training


def test_zero_new_tokens_returns_the_prompt():
    model = tiny()
    np.testing.assert_array_equal(beam_search(model, [[4, 5]], 0), [[4, 5]])
    (score, seq), = beam_search(model, [4, 5], 0, return_all=True)
    assert score == 0.0
    np.testing.assert_array_equal(seq, [4, 5])


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(num_beams=0), ValueError, ["num_beams", "0"]),
    (dict(num_beams=-2), ValueError, ["num_beams", "-2"]),
    (dict(num_beams=2.5), ValueError, ["num_beams", "2.5"]),
    (dict(num_beams=True), ValueError, ["num_beams", "True"]),
    (dict(max_new_tokens=-1), ValueError, ["max_new_tokens", "-1"]),
    (dict(max_new_tokens=62), ValueError, ["max_new_tokens", "62", "64"]),
    (dict(length_penalty=float("nan")), ValueError, ["length_penalty", "nan"]),
    (dict(length_penalty="long"), TypeError, ["length_penalty", "long"]),
    (dict(early_stopping="never"), TypeError, ["early_stopping", "never"]),
    (dict(idx=np.zeros((2, 3), dtype=np.int64)), ValueError, ["idx", "batch of 2"]),
    (dict(idx=np.zeros((2, 3, 1), dtype=np.int64)), ValueError, ["idx", "(2, 3, 1)"]),
])
def test_bad_arguments_raise(kwargs, error, words):
    args = dict(idx=np.array([1, 2, 3]), max_new_tokens=4)
    args.update(kwargs)
    with pytest.raises(error) as info:
        beam_search(tiny(), **args)
    for word in words:
        assert word in str(info.value)
