"""data/passkey.py: the landmark-attention passkey texts, their lengths in tokens, the training
batches and the score; and examples/passkey.py end to end on a tiny model."""
import json

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


@pytest.mark.parametrize("targets", ["all", "answer"])
def test_batch_rows_are_shifted_texts_padded_at_the_end(bpe, targets):
    t = 64
    max_filler = filler_for_length(bpe, t + 1)
    x, y = passkey_batch(rng(3), bpe, 8, t, max_filler, targets=targets)
    assert x.shape == y.shape == (8, t) and x.dtype == y.dtype == np.int64
    r = rng(3)
    for b in range(8):
        ids = bpe.encode(passkey_training_text(r, max_filler))
        n = len(ids) - 1
        np.testing.assert_array_equal(x[b, :n], ids[:-1])
        assert (x[b, n:] == 0).all() and (y[b, n:] == -100).all()
        if targets == "all":
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
    with pytest.raises(ValueError, match="targets"):
        passkey_batch(rng(), bpe, 2, 32, 1, targets="key")
    with pytest.raises(ValueError, match="equal length"):
        passkey_accuracy([" 1"], [])


# ---- examples/passkey.py end to end, on a tiny model ---------------------------------------
TINY = ["--max_iters=3", "--n_layer=1", "--n_embd=32", "--n_head=2", "--block_size=48",
        "--lengths=1,2", "--depths=0,1", "--samples=1", "--finetune_iters=2", "--xl_iters=2",
        "--finetune_factor=2", "--window=16", "--eval_batch=2"]


@pytest.fixture
def example(load_example):
    return load_example("passkey")


def test_example_xl_holds_the_gpts_function(example):
    from tinygrad_llm.models import GPT, GPTConfig
    model = GPT(GPTConfig.preset("llama", vocab_size=50, block_size=16, n_layer=2, n_head=4,
                                 n_kv_head=2, n_embd=32))
    xl = example.xl_from_gpt(model, mem_len=8)
    ids = rng().integers(0, 50, (2, 16))
    np.testing.assert_allclose(xl(ids)[0].numpy(), model(ids).numpy(), atol=1e-5)
    _, mems = xl(ids[:, :8])                  # the second half over the first as memory
    np.testing.assert_allclose(xl(ids[:, 8:], mems=mems)[0].numpy(), model(ids).numpy()[:, 8:],
                               atol=1e-5)


def test_example_runs_every_method_and_reloads_its_model(example, tmp_path, capsys):
    result = example.main(TINY + [f"--out_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == result
    assert set(result["accuracy"]) == set(example.ALL_METHODS)
    for row in result["accuracy"].values():
        assert set(row) == {"1T", "2T"} and all(0 <= a <= 1 for a in row.values())
    written = json.loads((tmp_path / "passkey.json").read_text())
    memory = {r["method"]: r for r in written["memory"]}
    per_token = {m: r["bytes/token held"] for m, r in memory.items()}
    assert per_token["int2"] < per_token["int4"] < per_token["dense"]
    assert memory["window"]["tokens held"] == 16 and memory["sinks"]["tokens held"] == 16
    assert memory["h2o_10"]["tokens held"] < memory["h2o_50"]["tokens held"] < \
        memory["dense"]["tokens held"]
    assert len(written["rows"]) == len(example.ALL_METHODS) * 2 * 2      # lengths x depths
    assert (tmp_path / "passkey_model.safetensors").exists()
    example.main(TINY + [f"--out_dir={tmp_path}", "--methods=dense"])
    assert "loaded" in capsys.readouterr().out


def test_example_rejects_bad_options(example, tmp_path):
    from tinygrad_llm.train import OptionError
    for bad, name in (("--methods=dense,beam", "methods"), ("--window=200", "window"),
                      ("--depths=0,2", "depths"), ("--finetune_factor=1", "finetune_factor")):
        with pytest.raises(OptionError, match=name):
            example.main(TINY + [f"--out_dir={tmp_path}", bad])
