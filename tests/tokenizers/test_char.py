"""CharTokenizer: the vocabulary of a corpus, vectorised encode / decode against a dict-lookup
oracle, unknown characters (error or unk), and JSON round trips."""
import json
from pathlib import Path

import numpy as np
import pytest

from tinygrad_llm.tokenizers.char import CharTokenizer

REAL_FILE = Path("/work/shared/data/tinyshakespeare/input.txt")
# Non-ASCII, an astral-plane emoji (two UTF-16 units, one code point) and a lone surrogate,
# which a Python str may hold and UTF-8 cannot encode.
ODD_TEXT = "héllo wörld, 世界 \U0001F600 \ud800 \x00\n\t"


def oracle_encode(chars, text):
    table = {c: i for i, c in enumerate(chars)}
    return [table[c] for c in text]


def test_vocabulary_is_sorted_unique_characters():
    tok = CharTokenizer.from_text("hello world")
    assert tok.chars == " dehlorw" and tok.vocab_size == 8 and tok.unk is None


@pytest.mark.parametrize("text", ["hello world", ODD_TEXT, "a"])
def test_encode_matches_oracle_and_decode_inverts(text):
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    assert isinstance(ids, np.ndarray) and ids.dtype == np.int64 and ids.shape == (len(text),)
    assert ids.tolist() == oracle_encode(sorted(set(text)), text)
    assert tok.decode(ids) == text
    assert tok.decode(ids.tolist()) == text
    assert tok.decode(ids.astype(np.uint16)) == text


def test_encode_random_text_against_oracle():
    rng = np.random.default_rng(0)
    alphabet = sorted(set(ODD_TEXT + "abcdefghijklmnopqrstuvwxyz"))
    text = "".join(rng.choice(alphabet, size=3000))
    tok = CharTokenizer(alphabet[::-1])                  # ids not in code-point order
    assert tok.encode(text).tolist() == oracle_encode(alphabet[::-1], text)
    assert tok.decode(tok.encode(text)) == text


def test_unknown_character_raises_naming_it_and_its_position():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"text\[3\] = 'z' \(U\+007A\) is not in the vocabulary"):
        tok.encode("abcz ")
    with pytest.raises(ValueError, match=r"text\[0\] = '\\x00'"):     # below the first point
        tok.encode("\x00")


def test_unk_maps_unknown_characters():
    tok = CharTokenizer.from_text("cab", unk="\ufffd")
    assert tok.chars == "abc\ufffd" and tok.unk_id == 3       # appended after the sorted chars
    assert tok.encode("axb\U0001F600c").tolist() == [0, 3, 1, 3, 2]
    assert tok.decode([0, 3, 1]) == "a\ufffdb"
    tok = CharTokenizer.from_text("a?b", unk="?")             # already in the text: not added
    assert tok.chars == "?ab" and tok.unk_id == 0
    assert tok.encode("azb").tolist() == [1, 0, 2]


def test_empty_inputs():
    tok = CharTokenizer.from_text("ab")
    assert tok.encode("").shape == (0,)
    assert tok.decode([]) == "" and tok.decode(np.array([], dtype=np.int64)) == ""


@pytest.mark.parametrize("ids,error,match", [
    ([0, 1, 2], ValueError, r"ids\[2\] = 2 is outside the vocabulary \[0, 2\)"),
    ([-1], ValueError, r"ids\[0\] = -1 is outside"),
    ([0.0, 1.0], TypeError, "integers, got dtype float64"),
    ([[0, 1]], ValueError, r"1-D, got shape \(1, 2\)"),
])
def test_decode_rejects_bad_ids(ids, error, match):
    with pytest.raises(error, match=match):
        CharTokenizer.from_text("ab").decode(ids)


@pytest.mark.parametrize("chars,unk,match", [
    ("aba", None, "chars must not repeat: 'a' is at 0 and 2"),
    (["a", "bc"], None, r"chars\[1\] must be a single character, got 'bc'"),
    ("", None, "at least one character"),
    ("ab", "z", "unk='z' must be one of the vocabulary's characters"),
])
def test_constructor_rejects_bad_vocabularies(chars, unk, match):
    with pytest.raises(ValueError, match=match):
        CharTokenizer(chars, unk=unk)


def test_encode_rejects_non_strings():
    with pytest.raises(TypeError, match="text must be a str, got bytes"):
        CharTokenizer.from_text("ab").encode(b"ab")


@pytest.mark.parametrize("unk", [None, "\ufffd"])
def test_save_load_and_dict_round_trips(tmp_path, unk):
    tok = CharTokenizer.from_text(ODD_TEXT, unk=unk)
    path = tok.save(tmp_path / "tok.json")
    assert CharTokenizer.load(path) == tok
    saved = json.loads(path.read_text())
    assert saved["type"] == "char" and saved["version"] == 1 and saved["unk"] == unk
    assert path.read_bytes().isascii()
    embedded = json.loads(json.dumps({"tokenizer": tok.to_dict()}))    # inside a checkpoint
    back = CharTokenizer.from_dict(embedded["tokenizer"])
    assert back == tok and back.encode(ODD_TEXT).tolist() == tok.encode(ODD_TEXT).tolist()
    assert [p.name for p in tmp_path.iterdir()] == ["tok.json"]      # no temporary left


def test_equality_sees_vocabulary_and_unk():
    assert CharTokenizer("ab") != CharTokenizer("ba")
    assert CharTokenizer("ab") != CharTokenizer("ab", unk="a")
    assert CharTokenizer("ab") == CharTokenizer(["a", "b"])


@pytest.mark.parametrize("d", [{"type": "bpe", "version": 1, "chars": "ab", "unk": None},
                               {"type": "char", "version": 2, "chars": "ab", "unk": None},
                               {"type": "char", "version": 1, "chars": ["a"], "unk": None},
                               "char"])
def test_from_dict_rejects_other_objects(d):
    with pytest.raises(ValueError):
        CharTokenizer.from_dict(d)


@pytest.mark.skipif(not REAL_FILE.is_file(), reason=f"{REAL_FILE} is absent")
def test_tiny_shakespeare_matches_nanogpt():
    text = REAL_FILE.read_text(encoding="utf-8")
    tok = CharTokenizer.from_text(text)
    assert tok.vocab_size == 65
    assert tok.chars[:13] == "\n !$&',-.3:;?"
    ids = tok.encode(text)
    assert ids[:10].tolist() == [18, 47, 56, 57, 58, 1, 15, 47, 58, 47]     # "First Citi"
    assert tok.decode(ids) == text
