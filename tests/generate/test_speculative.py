"""Speculative decoding: greedy output equals the target's greedy output token for token; with
sampling, a chi-square test shows the output distribution is the target's."""
import numpy as np
import pytest

from tinygrad_llm import no_grad
from tinygrad_llm.generate import generate
from tinygrad_llm.generate.speculative import speculative_generate
from tinygrad_llm.models import GPT, GPTConfig


def tiny(preset="llama", vocab_size=29, seed=0, **kw):
    import tinygrad_llm as tl
    tl.manual_seed(seed)
    base = dict(vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=16, block_size=64)
    return GPT(GPTConfig.preset(preset, **{**base, **kw})).to(dtype=np.float64)


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_greedy_equals_target_greedy(k, preset):
    target, draft = tiny(preset, seed=1, n_layer=3), tiny(preset, seed=2, n_layer=1)
    for prompt in ([3], [5, 1, 4, 1, 5, 9, 2]):
        want = generate(target, np.array([prompt]), 30, temperature=0)
        out, stats = speculative_generate(target, draft, np.array(prompt), 30, k=k)
        np.testing.assert_array_equal(out, want)
        assert stats["proposed"] >= stats["accepted"] >= 0


def test_a_perfect_draft_is_always_accepted():
    target = tiny(seed=1)
    out, stats = speculative_generate(target, target, np.array([1, 2, 3]), 20, k=4)
    assert stats["acceptance_rate"] == 1.0
    assert stats["tokens_per_target_call"] == 5.0      # k accepted + 1 bonus each pass
    np.testing.assert_array_equal(out, generate(target, np.array([[1, 2, 3]]), 20,
                                                temperature=0))


def test_window_models_roll_back_their_rings():
    target, draft = tiny(seed=1, window=4), tiny(seed=2, window=3)
    want = generate(target, np.array([[7, 8]]), 25, temperature=0)
    out, _ = speculative_generate(target, draft, np.array([7, 8]), 25, k=4)
    np.testing.assert_array_equal(out, want)


def test_stop_ids_end_the_output():
    target = tiny(seed=1)
    plain = generate(target, np.array([[1, 2]]), 15, temperature=0)[0, 2:]
    stop = int(plain[5])
    out, _ = speculative_generate(target, tiny(seed=2), np.array([1, 2]), 15, k=3,
                                  stop_ids=[stop])
    new = out[0, 2:].tolist()
    assert new[-1] == stop and stop not in new[:-1]
    assert new == plain[:len(new)].tolist()


def test_sampled_output_follows_the_target_distribution():
    """Chi-square over the joint distribution of the first two tokens (V = 5: 25 cells) against
    the target's exact probabilities p(a) p(b | a)."""
    V = 5
    target, draft = tiny(vocab_size=V, seed=1), tiny(vocab_size=V, seed=2, n_layer=1)
    for model in (target, draft):       # random init is near uniform: make p and q peaked
        model.head.weight.data *= 30
    prompt = np.array([[2, 4]])

    def softmax(x):
        e = np.exp(x - x.max())
        return e / e.sum()

    with no_grad():
        p1 = softmax(target(prompt).numpy()[0, -1])
        exact = np.zeros((V, V))
        for a in range(V):
            nxt = softmax(target(np.array([[2, 4, a]])).numpy()[0, -1])
            exact[a] = p1[a] * nxt
    n = 1500
    counts = np.zeros((V, V))
    rejected = 0
    for seed in range(n):
        out, stats = speculative_generate(target, draft, prompt, 2, k=2, temperature=1.0,
                                          seed=seed)
        counts[out[0, 2], out[0, 3]] += 1
        rejected += stats["proposed"] - stats["accepted"]
    assert rejected > 300                      # the draft differs: rejections were exercised
    expected = n * exact.reshape(-1)
    chi2 = ((counts.reshape(-1) - expected) ** 2 / expected).sum()
    assert chi2 < 51.2                          # df = 24, p = 0.001


def test_bad_input():
    target = tiny()
    with pytest.raises(ValueError, match="k must be a positive int, got 0"):
        speculative_generate(target, target, np.array([1]), 5, k=0)
    with pytest.raises(ValueError, match="one prompt at a time"):
        speculative_generate(target, target, np.array([[1], [2]]), 5)
    with pytest.raises(ValueError, match="vocabularies differ"):
        speculative_generate(target, tiny(vocab_size=7), np.array([1]), 5)
    with pytest.raises(ValueError, match="exceed the models' 64 positions"):
        speculative_generate(target, target, np.array([1] * 60), 10)
    with pytest.raises(ValueError, match="linear-attention draft"):
        speculative_generate(target, tiny(attention="linear"), np.array([1]), 5)


def test_speculative_example_runs(tmp_path, monkeypatch, capsys):
    import json
    import os
    import sys
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("ROMEO:\nBut soft, what light through yonder window breaks?\n" * 60)
    monkeypatch.setenv("TINYGRAD_LLM_DATA", str(corpus))
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))
    import speculative
    result = speculative.main([f"--target={tmp_path / 't' / 'ckpt.safetensors'}",
                               f"--draft={tmp_path / 'd' / 'ckpt.safetensors'}",
                               "--target_iters=2", "--draft_iters=2", "--max_new_tokens=12",
                               "--k=3"])
    assert result["identical_to_target_greedy"] is True
    assert 0 <= result["acceptance_rate"] <= 1
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["k"] == 3
