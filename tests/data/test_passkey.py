"""data/passkey.py: the landmark-attention passkey texts, their lengths in tokens, the training
batches and the score."""
import numpy as np
import pytest

from tinygrad_llm.data import (FILLER, INTRO, PASSKEY_PATTERN, QUESTION, filler_for_length,
                               key_matches, passkey_accuracy, passkey_batch, passkey_text,
                               passkey_training_text)
from tinygrad_llm.tokenizers import BPETokenizer, CharTokenizer

SENTENCES = [s.strip() + "." for s in FILLER.split(".") if s.strip()]


def rng(seed=0):
    return np.random.default_rng(seed)


@pytest.fixture(scope="module")
def bpe():
    r = rng(1)
    text = "\n".join(passkey_training_text(r, 3) for _ in range(100))
    return BPETokenizer.train(text, vocab_size=1000, pattern=PASSKEY_PATTERN, special_tokens=())


def test_format_matches_the_landmark_attention_prompt():
    prompt, key = passkey_text(rng(), 2, 0.5)
    assert len(key) == 5 and key.isdigit() and key[0] != "0"
    assert prompt.startswith(INTRO + " The grass is green.")
    assert prompt.endswith("There and back again. " + QUESTION)
    assert f" The pass key is {key}. Remember it. {key} is the pass key. " in prompt
    assert prompt.count(FILLER[:20]) == 2 and prompt.count(key) == 2


@pytest.mark.parametrize("depth, before", [(0.0, 0), (0.5, 5), (1.0, 10), (0.24, 2), (0.26, 3)])
def test_depth_places_the_key_between_filler_sentences(depth, before):
    prompt, key = passkey_text(rng(), 2, depth)                     # 10 filler sentences
    head = prompt[len(INTRO):prompt.index(" The pass key is")]
    assert sum(head.count(s) for s in SENTENCES) == before


def test_keys_are_random_and_seeded():
    keys = [passkey_text(rng(s), 1, 0.5)[1] for s in range(50)]
    assert len(set(keys)) > 45
    assert passkey_text(rng(7), 3, 0.3) == passkey_text(rng(7), 3, 0.3)
    assert passkey_text(rng(), 1, 0.5, key="00042")[1] == "00042"


def test_pattern_gives_one_token_per_filler_sentence_and_single_digits(bpe):
    prompt, key = passkey_text(rng(), 3, 0.5)
    pieces = [bpe.decode([i]) for i in bpe.encode(prompt + " " + key)]
    assert pieces.count(" The sky is blue.") == 3
    assert pieces[-6:] == [" "] + list(key)
    assert pieces[-7] == " The pass key is"
    # the prompt alone ends with the same token, so generation continues where training did
    assert [bpe.decode([i]) for i in bpe.encode(prompt)] == pieces[:-6]


@pytest.mark.parametrize("n_tokens", [60, 129, 257, 1025])
def test_filler_for_length_is_the_longest_that_fits(bpe, n_tokens):
    n = filler_for_length(bpe, n_tokens)
    for depth in (0.0, 0.5, 1.0):
        prompt, key = passkey_text(rng(), n, depth)
        assert len(bpe.encode(prompt + " " + key)) <= n_tokens
    prompt, key = passkey_text(rng(), n + 1, 0.5)
    assert len(bpe.encode(prompt + " " + key)) > n_tokens


def test_filler_for_length_with_characters():
    prompt, key = passkey_text(rng(), 0, 0.5)
    tok = CharTokenizer.from_text(prompt + FILLER + "0123456789")
    n = filler_for_length(tok, 1000)
    assert len(prompt) + 6 + n * (len(FILLER) + 1) <= 1000 < len(prompt) + 6 + (n + 1) * (
        len(FILLER) + 1)


def test_training_texts_vary_in_length_and_depth():
    r = rng()
    texts = [passkey_training_text(r, 4, 1) for _ in range(200)]
    counts = {t.count("The sky is blue.") for t in texts}
    assert counts == {1, 2, 3, 4}
    depths = {t.index("The pass key is") for t in texts}
    assert len(depths) > 20
    assert all(t[-6] == " " and t[-5:] == t[t.index("key is ") + 7:][:5] for t in texts)


@pytest.mark.parametrize("answer_weight", [None, "answer"])
def test_batch_rows_are_shifted_texts_padded_at_the_end(bpe, answer_weight):
    t = 64
    max_filler = filler_for_length(bpe, t + 1)
    x, y = passkey_batch(rng(3), bpe, 8, t, max_filler, answer_weight=answer_weight)
    assert x.shape == y.shape == (8, t) and x.dtype == y.dtype == np.int64
    r = rng(3)
    for b in range(8):
        ids = bpe.encode(passkey_training_text(r, max_filler))
        n = len(ids) - 1
        np.testing.assert_array_equal(x[b, :n], ids[:-1])
        assert (x[b, n:] == 0).all() and (y[b, n:] == -100).all()
        if answer_weight is None:
            np.testing.assert_array_equal(y[b, :n], ids[1:])
        else:                                     # " " and 5 digits: the answer, nothing else
            np.testing.assert_array_equal(y[b, n - 6:n], ids[-6:])
            assert (y[b, :n - 6] == -100).all()
            assert bpe.decode(y[b, n - 5:n]).isdigit()


def test_score_reads_the_first_five_digits():
    assert key_matches(" 12345", "12345")
    assert key_matches(" 1 2 3 4 5 and more 9", "12345")
    assert not key_matches(" 1234", "12345")
    assert not key_matches(" 12354", "12345")
    assert passkey_accuracy([" 12345", " 54321", "x"], ["12345", "12345", "11111"]) == 1 / 3


def test_bad_input_names_the_argument(bpe):
    with pytest.raises(ValueError, match="depth"):
        passkey_text(rng(), 2, 1.5)
    with pytest.raises(ValueError, match="n_filler"):
        passkey_text(rng(), -1, 0.5)
    with pytest.raises(ValueError, match="n_filler"):
        passkey_text(rng(), 2.5, 0.5)
    with pytest.raises(ValueError, match="key"):
        passkey_text(rng(), 2, 0.5, key="1234")
    with pytest.raises(TypeError, match="rng"):
        passkey_text(0, 2, 0.5)
    with pytest.raises(ValueError, match="n_tokens=10"):
        filler_for_length(bpe, 10)
    with pytest.raises(ValueError, match="min_filler"):
        passkey_training_text(rng(), 2, 3)
    with pytest.raises(ValueError, match="max_filler=50"):
        passkey_batch(rng(), bpe, 2, 32, 50)
    with pytest.raises(ValueError, match="answer_weight"):
        passkey_batch(rng(), bpe, 2, 32, 1, answer_weight="key")
    with pytest.raises(ValueError, match="equal length"):
        passkey_accuracy([" 1"], [])
