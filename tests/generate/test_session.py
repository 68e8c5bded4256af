"""DecodeSession: the same tokens as generate() (greedy and seeded sampling), incremental feeds
equal to one feed and to a full forward, only new tokens reach the model, stop tokens, the
window limit (error or context shift), reset, and bad input."""
import numpy as np
import pytest

from tinygrad_llm import no_grad
from tinygrad_llm.generate import generate
from tinygrad_llm.generate import session as session_module
from tinygrad_llm.generate.session import DecodeSession
from tinygrad_llm.models import GPT, GPTConfig

V = 29


def tiny(preset="gpt2", **overrides):
    base = dict(vocab_size=V, n_layer=2, n_head=4, n_embd=16, block_size=48)
    return GPT(GPTConfig.preset(preset, **{**base, **overrides})).to(dtype=np.float64).eval()


def prompt(n=6, seed=1):
    return np.random.default_rng(seed).integers(0, V, n)


class CountingForward:
    """Wraps the session's forward (the fused step or the model's forward) to record how many
    tokens each call runs."""

    def __init__(self, monkeypatch):
        self.calls, inner = [], session_module.forward_logits

        def counting(model, ids, caches, offset):
            self.calls.append(len(ids))
            return inner(model, ids, caches, offset)
        monkeypatch.setattr(session_module, "forward_logits", counting)


MODELS = [("gpt2", {}), ("llama", dict(n_kv_head=2)), ("gpt2", dict(window=5))]


@pytest.mark.parametrize("preset, overrides", MODELS, ids=["gpt2", "llama_gqa", "window_5"])
def test_greedy_equals_generate(preset, overrides):
    model = tiny(preset, **overrides)
    p = prompt()
    want = generate(model, p[None], 20, temperature=0)[0, len(p):]
    session = DecodeSession(model, temperature=0)
    session.feed(p)
    got = list(session.generate(20))
    assert got == want.tolist()
    assert session.length == len(p) + 20
    np.testing.assert_array_equal(session.tokens, np.concatenate([p, want]))


def test_seeded_sampling_and_penalties_equal_generate():
    model = tiny()
    p = prompt(5, seed=3)
    kw = dict(temperature=0.9, top_k=10, top_p=0.95, repetition_penalty=1.3)
    want = generate(model, p[None], 15, seed=7, **kw)[0, len(p):]
    session = DecodeSession(model, seed=7, **kw)
    session.feed(p)
    assert list(session.generate(15)) == want.tolist()


def test_feeding_in_parts_equals_one_feed_and_full_forward():
    model = tiny()
    p = prompt(12)
    whole = DecodeSession(model)
    logits_once = whole.feed(p)
    parts = DecodeSession(model)
    parts.feed(p[:5])
    parts.feed(p[5:11])
    logits_parts = parts.feed(p[11:])
    with no_grad():
        full = model(p[None]).numpy()[0, -1]
    assert logits_once.shape == (V,) and logits_once.dtype == np.float64
    np.testing.assert_allclose(logits_parts, logits_once, rtol=0, atol=1e-10)
    np.testing.assert_allclose(logits_once, full, rtol=0, atol=1e-10)
    assert parts.length == whole.length == 12


def test_second_turn_feeds_only_new_tokens(monkeypatch):
    model = tiny()
    counter = CountingForward(monkeypatch)
    session = DecodeSession(model, temperature=0)
    first, second = prompt(7, seed=1), prompt(4, seed=2)
    session.feed(first)
    reply1 = list(session.generate(5))
    session.feed(second)
    reply2 = list(session.generate(6))
    # prefill 7, five 1-token steps, then only the 4 new tokens, six 1-token steps
    assert counter.calls == [7] + [1] * 5 + [4] + [1] * 6
    assert session.length == 7 + 5 + 4 + 6
    # the continuation is what a from-scratch greedy decode of the whole history makes
    history = np.concatenate([first, reply1, second])
    want = generate(model, history[None], 6, temperature=0)[0, len(history):]
    assert reply2 == want.tolist()


def test_generate_in_two_calls_equals_one_call():
    model = tiny()
    a, b = DecodeSession(model, seed=4, temperature=1.0), DecodeSession(model, seed=4)
    a.feed(prompt())
    b.feed(prompt())
    assert list(a.generate(6)) + list(a.generate(6)) == list(b.generate(12))
    np.testing.assert_allclose(a.logits, b.logits, rtol=0, atol=1e-12)


def test_overrides_apply_to_one_call_only():
    model = tiny()
    session = DecodeSession(model, temperature=5.0, seed=0)
    session.feed(prompt())
    greedy = list(session.generate(8, temperature=0))
    ref = DecodeSession(model, temperature=0)
    ref.feed(prompt())
    assert greedy == list(ref.generate(8))
    assert session.sampling == {"temperature": 5.0}


def test_stop_token_ends_and_is_fed():
    model = tiny()
    session = DecodeSession(model, temperature=0)
    session.feed(prompt())
    free = list(session.generate(10))
    stop = free[3]
    first = free.index(stop)                 # the first time the stop token appears
    session.reset()
    session.feed(prompt())
    out = list(session.generate(10, stop_ids=[stop]))
    assert out == free[:first + 1]
    assert session.tokens[-1] == stop and session.length == len(prompt()) + first + 1


def test_window_overflow_raises_by_default():
    model = tiny(block_size=16)
    session = DecodeSession(model, temperature=0)
    session.feed(prompt(10))
    with pytest.raises(ValueError, match="exceed max_len=16"):
        session.feed(prompt(7))
    assert session.length == 10                         # nothing was appended
    assert len(list(session.generate(6))) == 6          # fills the window exactly
    with pytest.raises(ValueError, match="max_len"):
        next(session.generate(1))


def test_context_shift_keeps_the_recent_half():
    model = tiny(block_size=16)
    session = DecodeSession(model, temperature=0, context_shift=True)
    p = prompt(14)
    session.feed(p)
    new = prompt(4, seed=9)
    logits = session.feed(new)
    # 14 + 4 > 16: keep the last 8 of the window, then the 4 new ones, re-run from position 0
    np.testing.assert_array_equal(session.tokens, np.concatenate([p[-8:], new]))
    assert session.length == 12 and session.shifts == 1
    fresh = DecodeSession(model)
    np.testing.assert_allclose(logits, fresh.feed(session.tokens), rtol=0, atol=1e-10)
    # decoding goes on past the window, shifting again as needed
    assert len(list(session.generate(10))) == 10 and session.shifts == 2
    assert session.length <= 16


def test_max_len_smaller_than_the_model():
    model = tiny()
    session = DecodeSession(model, max_len=8)
    session.feed(prompt(8))
    with pytest.raises(ValueError, match="max_len=8"):
        session.feed([1])


def test_reset_forgets_the_history():
    model = tiny()
    session = DecodeSession(model, temperature=0)
    first = session.feed(prompt()).copy()
    list(session.generate(5))
    session.reset()
    assert session.length == 0 and session.logits is None
    np.testing.assert_allclose(session.feed(prompt()), first, rtol=0, atol=0)


def test_feed_keeps_training_mode_and_records_no_graph():
    model = tiny().train()
    session = DecodeSession(model)
    session.feed(np.array([[1, 2, 3]]))                 # (1, T) works too
    assert model.training
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("ids, match", [
    ([], "empty"),
    ([1, V], r"\[0, 29\)"),
    ([-1], r"\[0, 29\)"),
    (np.zeros((2, 3), dtype=np.int64), "1-D"),
    (np.array([0.5, 1.0]), "dtype float64"),
])
def test_bad_feed_raises(ids, match):
    session = DecodeSession(tiny())
    with pytest.raises(ValueError, match=match):
        session.feed(ids)
    assert session.length == 0


def test_bad_arguments_raise():
    model = tiny()
    with pytest.raises(ValueError, match=r"max_len must be an int in \[1, 48\].*got 49"):
        DecodeSession(model, max_len=49)
    with pytest.raises(TypeError, match="unknown sampling settings \\['temprature'\\]"):
        DecodeSession(model, temprature=0.5)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        DecodeSession(model, temperature=-1)
    session = DecodeSession(model)
    with pytest.raises(ValueError, match="feed\\(\\) a prompt first"):
        session.generate(3)
    session.feed([1, 2])
    with pytest.raises(ValueError, match="max_new_tokens must be a non-negative int, got -1"):
        session.generate(-1)
    with pytest.raises(TypeError, match="unknown sampling settings"):
        session.generate(2, top_q=0.5)
