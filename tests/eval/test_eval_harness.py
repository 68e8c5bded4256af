"""The harness's requests against a direct forward of a tiny float64 GPT: loglikelihood and
is_greedy, shared-context batching against one request at a time, rolling windows (each token
once; stride = window is the disjoint windows' mean NLL), bits per byte, multiple-choice
metrics on a constructed case, generate_until's stop strings."""
import math

import numpy as np
import pytest

from tinygrad_llm.eval import (generate_until, loglikelihood, loglikelihood_rolling,
                               multiple_choice, rolling_windows)
from tinygrad_llm.models import GPT, GPTConfig
from tinygrad_llm.tokenizers import CharTokenizer

TEXT = "the quick brown fox jumps over the lazy dog. Who? ABCD\n"


@pytest.fixture
def tok():
    return CharTokenizer.from_text(TEXT)


def tiny_gpt(tok, block_size=16, sharpen=1.0):
    config = GPTConfig.preset("gpt2", n_layer=2, n_head=2, n_embd=16, block_size=block_size,
                              vocab_size=tok.vocab_size, dropout=0.0)
    model = GPT(config).to(dtype=np.float64).eval()
    model.head.weight.data *= sharpen        # peaked distributions, so argmax is not a tie
    return model


def direct_logprobs(model, ids):
    """(T - 1,) log p(ids[t] | ids[:t]) from one full forward, log-softmax in float64."""
    logits = model(np.asarray([ids[:-1]])).numpy()[0].astype(np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    return logp[np.arange(len(ids) - 1), ids[1:]], logp


def test_loglikelihood_equals_direct_forward(tok):
    model = tiny_gpt(tok)
    context, continuation = "the quick", " brown"
    [(got, _)] = loglikelihood(model, tok, [(context, continuation)])
    ids = list(tok.encode(context + continuation))
    picked, _ = direct_logprobs(model, ids)
    want = picked[len(context) - 1:].sum()                  # the continuation's 6 tokens
    assert got == pytest.approx(want, rel=1e-10, abs=1e-10)
    assert got < 0


def test_is_greedy_true_exactly_for_the_argmax_continuation(tok):
    model = tiny_gpt(tok, sharpen=20.0)
    context = "the lazy"
    ids = list(tok.encode(context))
    greedy = []
    for _ in range(3):                                      # the model's own greedy 3 tokens
        logits = model(np.asarray([ids + greedy])).numpy()[0, -1]
        greedy.append(int(np.argmax(logits)))
    best = tok.decode(greedy)
    other = tok.decode(greedy[:2] + [int(np.argsort(logits)[-2])])   # last token 2nd best
    out = loglikelihood(model, tok, [(context, best), (context, other)])
    assert out[0][1] is True and out[1][1] is False
    assert out[0][0] > out[1][0]


def test_shared_context_batching_matches_one_at_a_time(tok):
    model = tiny_gpt(tok)
    requests = [("the quick brown", " fox"), ("the quick brown", " dog."),
                ("over the", " lazy dog"), ("the quick brown", "x"),
                ("the quick brown", " fox jumps"), ("over the", " A")]
    together = loglikelihood(model, tok, requests, batch_size=16)
    small = loglikelihood(model, tok, requests, batch_size=2)
    alone = [loglikelihood(model, tok, [r])[0] for r in requests]
    for a, b, c in zip(together, small, alone):
        assert a[0] == pytest.approx(c[0], rel=1e-10, abs=1e-10)
        assert b[0] == pytest.approx(c[0], rel=1e-10, abs=1e-10)
        assert a[1] == b[1] == c[1]


def test_long_context_is_truncated_from_the_left(tok):
    model = tiny_gpt(tok, block_size=8)
    context, continuation = "the quick brown fox jumps", " over"
    [(got, _)] = loglikelihood(model, tok, [(context, continuation)])
    ids = list(tok.encode(context + continuation))[-9:]    # 8 inputs, 9 tokens
    picked, _ = direct_logprobs(model, ids)
    assert got == pytest.approx(picked[-len(continuation):].sum(), rel=1e-10)


def test_trailing_space_moves_to_the_continuation(tok):
    model = tiny_gpt(tok)
    a = loglikelihood(model, tok, [("the quick ", "brown"), ("the quick", " brown")])
    assert a[0][0] == pytest.approx(a[1][0], rel=1e-12)


@pytest.mark.parametrize("n, window, stride", [(40, 8, 8), (40, 8, 3), (9, 8, 8), (30, 8, 1),
                                               (5, 8, 8)])
def test_rolling_windows_score_every_token_once(n, window, stride):
    scored = []
    for start, end, k in rolling_windows(n, window, stride):
        assert 0 < end - start <= window and k <= end - start
        scored += list(range(end - k + 1, end + 1))         # target indices of this window
    assert scored == list(range(1, n))


def test_rolling_with_stride_equal_to_window_is_disjoint_windows(tok):
    model = tiny_gpt(tok, block_size=8)
    text = TEXT[:41]                                        # 41 tokens: 40 targets, 5 windows
    out = loglikelihood_rolling(model, tok, text, batch_size=2)
    ids = np.asarray(tok.encode(text))
    nll = []
    for w in range(5):
        picked, _ = direct_logprobs(model, list(ids[8 * w:8 * w + 9]))
        nll.append(-picked.mean())
    assert out["tokens"] == 40
    assert out["nll"] / out["tokens"] == pytest.approx(np.mean(nll), rel=1e-10)
    assert out["perplexity"] == pytest.approx(math.exp(np.mean(nll)), rel=1e-10)


def test_rolling_with_overlap_scores_each_token_once_with_its_window_context(tok):
    model = tiny_gpt(tok, block_size=8)
    text = TEXT[:30]
    out = loglikelihood_rolling(model, tok, text, stride=3)
    ids = list(tok.encode(text))
    want = 0.0
    for start, end, k in rolling_windows(len(ids), 8, 3):
        picked, _ = direct_logprobs(model, ids[start:end + 1])
        want -= picked[-k:].sum()
    assert out["tokens"] == len(ids) - 1
    assert out["nll"] == pytest.approx(want, rel=1e-10)
    # the overlapping windows give later tokens more context than disjoint ones do
    disjoint = loglikelihood_rolling(model, tok, text)
    assert disjoint["tokens"] == out["tokens"] and disjoint["nll"] != pytest.approx(out["nll"])


def test_bits_per_byte_formula(tok):
    model = tiny_gpt(tok, block_size=8)
    text = "the lazy dog. Who?"
    out = loglikelihood_rolling(model, tok, text)
    assert out["bytes"] == len(text.encode()) - 1           # the first character is context
    assert out["bits_per_byte"] == pytest.approx(out["nll"] / math.log(2) / out["bytes"])


def test_multiple_choice_acc_acc_norm_and_centred(tok, monkeypatch):
    import tinygrad_llm.eval.harness as harness
    # log-likelihoods: "A" -> -1.0 (1 char), "BCD" -> -1.5 (3 chars: -0.5 per char)
    scores = {" A": (-1.0, False), " BCD": (-1.5, False), " ABCD": (-4.0, False)}
    monkeypatch.setattr(harness, "loglikelihood",
                        lambda model, tok, reqs, batch_size=16: [scores[c] for _, c in reqs])
    docs = [{"context": "Who?", "choices": ["A", "BCD"], "gold": 0},            # acc 1, norm 0
            {"context": "Who?", "choices": ["A", "BCD", "ABCD", "B"], "gold": 1}]
    scores[" B"] = (-9.0, False)
    out = multiple_choice(None, tok, docs)
    np.testing.assert_array_equal(out["acc"], [1.0, 0.0])
    np.testing.assert_array_equal(out["acc_norm"], [0.0, 1.0])  # -0.5/char beats -1.0/char
    np.testing.assert_allclose(out["acc_centred"], [1.0, (0 - 0.25) / 0.75])


def test_multiple_choice_through_the_model(tok):
    model = tiny_gpt(tok)
    docs = [{"context": "the quick", "choices": ["brown", "lazy", "dog"], "gold": 2}]
    out = multiple_choice(model, tok, docs)
    lls = [s for s, _ in loglikelihood(model, tok, [("the quick", " " + c)
                                                     for c in docs[0]["choices"]])]
    assert out["acc"][0] == float(np.argmax(lls) == 2)
    assert out["acc_norm"][0] == float(np.argmax(np.array(lls) / [5, 4, 3]) == 2)


def test_generate_until_is_greedy_and_cuts_at_the_stop_string(tok):
    model = tiny_gpt(tok, sharpen=20.0)
    context = "the quick"
    free = generate_until(model, tok, context, stop=[], max_new_tokens=6)
    assert len(free) == 6
    ids = list(tok.encode(context))
    for _ in range(6):
        ids.append(int(np.argmax(model(np.asarray([ids])).numpy()[0, -1])))
    assert free == tok.decode(ids[len(context):])
    stop = free[2]
    cut = generate_until(model, tok, context, stop=[stop], max_new_tokens=6)
    assert cut == free[:free.index(stop)]
