"""WordPieceTokenizer: pre-tokenization, the trainer's merge order (by hand, and against a
brute-force trainer with exact fractions), greedy longest-match encoding, [UNK], special tokens,
the round trip up to normalisation, JSON and vocab.txt files, bad input, Hugging Face's
`tokenizers` as an oracle when installed, and the MLM example end to end."""
import json
import os
import random
import subprocess
import sys
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygrad_llm.data import shakespeare_path
from tinygrad_llm.tokenizers.wordpiece import (SPECIAL_TOKENS, WordPieceTokenizer, clean_text,
                                               normalize, pre_tokenize, strip_accent_marks)

ROOT = Path(__file__).resolve().parents[2]
SHARED_FILE = Path("/work/shared/data/tinyshakespeare/input.txt")
# A training text whose alphabet covers accents, CJK, punctuation, ASCII symbols, an apostrophe,
# a zero-width space (format, Cf: removed), NUL (removed) and assorted whitespace.
ODD_CORPUS = ("Héllo Wörld, 世界! Don't stop: it's 3 o'clock; (really?) ÉCOLE naïve café "
              "a+b=c $5 ~x~ [tag] über\u200bsee\x00 tab\there\nnew line  résumé ÀÉÎÕÜ")
HF_COURSE = "hug " * 10 + "pug " * 5 + "pun " * 12 + "bun " * 4 + "hugs " * 5


def corpus_path():
    """tiny Shakespeare from /work/shared, $TINYGRAD_LLM_DATA or the cache; skip if absent."""
    if SHARED_FILE.is_file():
        return SHARED_FILE
    try:
        return shakespeare_path(download=False)
    except (FileNotFoundError, ValueError) as err:
        pytest.skip(f"tiny Shakespeare is unavailable: {err}")


def hand_tokenizer(tokens, **kw):
    return WordPieceTokenizer(list(SPECIAL_TOKENS) + tokens, **kw)


# ---- pre-tokenization ----------------------------------------------------------------------------
@pytest.mark.parametrize("text,lowercase,strip,words", [
    ("Hello, World!", True, True, ["hello", ",", "world", "!"]),
    ("Hello, World!", False, False, ["Hello", ",", "World", "!"]),
    ("Héllo naïve", True, True, ["hello", "naive"]),
    ("Héllo", True, False, ["héllo"]),
    ("ÉCOLE", False, True, ["ECOLE"]),
    ("don't", True, True, ["don", "'", "t"]),
    ("a+b=c $5 x~y `q` a^b <i> |", True, True,           # ASCII symbols count as punctuation
     ["a", "+", "b", "=", "c", "$", "5", "x", "~", "y", "`", "q", "`", "a", "^", "b", "<", "i",
      ">", "|"]),
    ("中文abc世界", True, True, ["中", "文", "abc", "世", "界"]),
    ("über\u200bsee\x00 x\ufffdy", True, True, ["ubersee", "xy"]),   # Cf, NUL, U+FFFD removed
    ("  a\tb\r\nc\u00a0d\u3000e  ", True, True, ["a", "b", "c", "d", "e"]),
    ("«quoted»—dash", True, True, ["«", "quoted", "»", "—", "dash"]),  # unicode P*
    ("x\u037ey", True, True, ["x", ";", "y"]),     # Greek question mark: ";" after NFD
    ("", True, True, []),
])
def test_pre_tokenize(text, lowercase, strip, words):
    assert pre_tokenize(text, lowercase, strip) == words


def test_clean_text_and_strip_accent_marks():
    assert clean_text("a\x00b\x07c\td\u200be\nf") == "abc de f"      # U+200B is Cf
    assert strip_accent_marks("café naïve ÀÉÎÕÜ") == "cafe naive AEIOU"


def test_normalize_is_the_documented_text():
    assert normalize("Héllo,  WORLD!\n Don't  stop ; now") == "hello, world! don't stop; now"
    assert normalize("a[MASK]B", lowercase=True) == "a [MASK] b"
    assert normalize("  ") == ""


# ---- training ------------------------------------------------------------------------------------
def test_first_merges_by_hand():
    # Words (count): hug 10, pug 5, pun 12, bun 4, hugs 5.
    # Symbol counts: h 15, p 17, b 4, ##u 36, ##g 20, ##n 16, ##s 5.
    # Step 1: every pair with ##u scores 1/36 (e.g. h,##u: 15 / (15 * 36)); ##g,##s scores
    #         5 / (20 * 5) = 1/20, the best -> "##gs" (BPE's count would pick ##u,##g: 20).
    # Step 2: ##g 15, ##gs 5; every remaining pair scores exactly 1/36 (h,##u 15/(15*36),
    #         ##u,##g 15/(36*15), p,##u 17/(17*36), ...): the tie goes to the largest count,
    #         p,##u (17) -> "pu".
    # Step 3: ##u 19, pu 17; h,##u 15/(15*19) = b,##u 4/(4*19) = ##u,##gs 5/(19*5) = 1/19 lead
    #         (pu,##n 12/(17*16) = 0.044 is next); the largest count, h,##u (15) -> "hu".
    tok = WordPieceTokenizer.train(HF_COURSE, vocab_size=22)
    alphabet = ["b", "g", "h", "n", "p", "s", "u"]
    assert tok.vocab[:5] == list(SPECIAL_TOKENS)
    assert tok.vocab[5:19] == alphabet + ["##" + c for c in alphabet]
    assert tok.vocab[19:] == ["##gs", "pu", "hu"]
    assert [tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id] == [0, 1, 2, 3, 4]


def test_ties_go_to_the_larger_count_and_min_frequency_stops_training():
    # ab x3, ac x1: a 4, ##b 3, ##c 1. a,##b 3/(4*3) = a,##c 1/(4*1) = 1/4: the count decides.
    tok = WordPieceTokenizer.train("ab ab ab ac", vocab_size=100, min_frequency=1)
    assert tok.vocab[-2:] == ["ab", "ac"]                 # then a,##c: 1/(1*1)
    tok = WordPieceTokenizer.train("ab ab ab ac", vocab_size=100, min_frequency=2)
    assert tok.vocab[-1] == "ab" and tok.vocab_size == 5 + 6 + 1   # no pair is seen twice


def test_ties_of_equal_count_go_to_the_first_strings():
    # xa, ya, xb, yb once each: every pair scores 1/(2*2) with count 1 -> (x, ##a) first.
    tok = WordPieceTokenizer.train("yb xb ya xa", vocab_size=100, min_frequency=1)
    assert tok.vocab[5 + 8] == "xa"


def reference_train(text, vocab_size, min_frequency):
    """Brute force: recount everything at every step; scores as exact fractions."""
    counts = Counter(pre_tokenize(text))
    chars = sorted({c for w in counts for c in w})
    vocab = list(SPECIAL_TOKENS) + chars + ["##" + c for c in chars
                                            if c.isalnum()]   # the test corpora: no CJK
    words = {w: [w[0]] + ["##" + c for c in w[1:]] for w in counts}
    while len(vocab) < vocab_size:
        symbols, pairs = Counter(), Counter()
        for w, seq in words.items():
            for s in seq:
                symbols[s] += counts[w]
            for pair in zip(seq, seq[1:]):
                pairs[pair] += counts[w]
        allowed = [(p, c) for p, c in pairs.items() if c >= min_frequency]
        if not allowed:
            break
        (a, b), _ = min(allowed, key=lambda pc: (-Fraction(pc[1], symbols[pc[0][0]]
                                                            * symbols[pc[0][1]]),
                                                 -pc[1], pc[0]))
        token = a + b[2:]
        if token not in vocab:
            vocab.append(token)
        for w, seq in words.items():
            out, i = [], 0
            while i < len(seq):
                if seq[i:i + 2] == [a, b]:
                    out.append(token)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            words[w] = out
    return vocab


@pytest.mark.parametrize("seed", range(6))
def test_incremental_trainer_matches_brute_force(seed):
    # Few letters and short words force repeated symbols ("##a" "##a"), stale pairs, and merges
    # that give an existing token ("##a" + "##ab" and "##aa" + "##b" are both "##aab").
    rng = random.Random(seed)
    words = ["".join(rng.choice("aab" if seed % 2 else "abc") for _ in range(rng.randint(1, 7)))
             for _ in range(300)]
    text = " ".join(w + rng.choice(["", "", ",", "."]) for w in words)
    min_frequency = 1 + seed % 3
    tok = WordPieceTokenizer.train(text, vocab_size=80, min_frequency=min_frequency)
    assert tok.vocab == reference_train(text, 80, min_frequency)


def test_train_on_tiny_shakespeare():
    text = corpus_path().read_text(encoding="utf-8")
    tok = WordPieceTokenizer.train(text, vocab_size=3000)
    assert tok.vocab_size == 3000 and tok.vocab[:5] == list(SPECIAL_TOKENS)
    assert len(set(tok.vocab)) == 3000
    ids = tok.encode(text)
    assert tok.unk_id not in ids                        # the alphabet covers every word
    assert len(ids) < 0.7 * len(text)                   # merges shorten the text
    assert tok.decode(ids) == tok.normalize(text)
    # a larger min_frequency keeps frequent words whole
    tok50 = WordPieceTokenizer.train(text, vocab_size=2000, min_frequency=50)
    assert tok50.tokenize("First Citizen: hear me speak.") == [
        "first", "citizen", ":", "hear", "me", "speak", "."]


# ---- encoding ------------------------------------------------------------------------------------
def test_greedy_longest_match_first():
    tok = hand_tokenizer(["un", "##aff", "##able", "##a", "##ff", "##ab", "##le", "u", "##n",
                          "aff", "able", ","])
    assert tok.tokenize("unaffable") == ["un", "##aff", "##able"]
    assert tok.tokenize("Unaffable, able") == ["un", "##aff", "##able", ",", "able"]
    ids = tok.encode("unaffable")
    assert ids == [tok.token_to_id[t] for t in ["un", "##aff", "##able"]]
    assert all(isinstance(i, int) for i in ids)


def test_unknown_words_become_one_unk():
    tok = hand_tokenizer(["a", "ab", "##c", "##bcd", "x", "##x"], max_chars_per_word=5)
    # greedy takes "ab", then neither "##cd" nor "##c" + "##d" exists: no backtracking to
    # a + ##bcd, so the whole word is [UNK], as in BERT
    assert tok.tokenize("abcd") == ["[UNK]"]
    assert tok.tokenize("x zzz xxxxx xxxxxx x") == ["x", "[UNK]", "x", "##x", "##x", "##x", "##x",
                                                     "[UNK]", "x"]
    assert tok.encode("zzz") == [tok.unk_id]
    assert tok.decode(tok.encode("x zzz x")) == "x [UNK] x"         # [UNK] is kept


def test_special_tokens_inside_text():
    tok = WordPieceTokenizer.train(ODD_CORPUS, vocab_size=200, min_frequency=1)
    ids = tok.encode("Héllo[MASK]wörld [SEP][CLS]")
    assert tok.tokenize("Héllo[MASK]wörld [SEP][CLS]")[-2:] == ["[SEP]", "[CLS]"]
    assert ids[-2:] == [tok.sep_id, tok.cls_id] and tok.mask_id in ids
    assert ids == tok.encode("hello") + [tok.mask_id] + tok.encode("world") + [3, 2]
    assert tok.mask_id not in tok.encode("[mask]")       # case-sensitive: "[" "mask" "]"
    assert tok.encode("a", add_special_tokens=True) == [tok.cls_id] + tok.encode("a") + [3]
    assert tok.encode_pair("a", "b c") == [2] + tok.encode("a") + [3] + tok.encode("b c") + [3]
    both = tok.encode("héllo [MASK] wörld", add_special_tokens=True)
    assert tok.decode(both) == "hello world"
    assert tok.decode(both, skip_special_tokens=False) == "[CLS] hello [MASK] world [SEP]"


def test_decode_glues_pieces_and_applies_the_spacing_rule():
    tok = hand_tokenizer(["un", "##aff", "##able", "don", "'", "t", ",", ".", "!", "?", "a", "##b"])
    ids = [tok.token_to_id[t] for t in ["un", "##aff", "##able", ",", "don", "'", "t", "!", "a",
                                        ".", "?"]]
    assert tok.decode(ids) == "unaffable, don't! a.?"
    assert tok.decode([tok.token_to_id["##b"], tok.token_to_id["a"]]) == "b a"   # leading ##
    assert tok.decode(np.array(ids[:3], dtype=np.int32)) == "unaffable"
    assert tok.decode([]) == ""


# ---- round trip ----------------------------------------------------------------------------------
ODD_TOKENIZER = WordPieceTokenizer.train(ODD_CORPUS, vocab_size=150, min_frequency=1)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(sorted(set(ODD_CORPUS))), max_size=80))
def test_round_trip_up_to_normalisation(text):
    ids = ODD_TOKENIZER.encode(text)
    assert ODD_TOKENIZER.unk_id not in ids
    assert ODD_TOKENIZER.decode(ids) == ODD_TOKENIZER.normalize(text)
    with_specials = ODD_TOKENIZER.encode(text, add_special_tokens=True)
    assert ODD_TOKENIZER.decode(with_specials) == ODD_TOKENIZER.normalize(text)


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.sampled_from(sorted(set(ODD_CORPUS))), max_size=80))
def test_round_trip_without_lowercasing(text):
    tok = WordPieceTokenizer.train(ODD_CORPUS, vocab_size=150, min_frequency=1, lowercase=False,
                                   strip_accents=False)
    assert tok.decode(tok.encode(text)) == normalize(text, lowercase=False, strip_accents=False)


# ---- files ---------------------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    tok = WordPieceTokenizer.train(ODD_CORPUS, vocab_size=150, min_frequency=1,
                                   strip_accents=False, max_chars_per_word=7)
    path = tok.save(tmp_path / "wp.json")
    back = WordPieceTokenizer.load(path)
    assert back == tok and back.vocab == tok.vocab and back.max_chars_per_word == 7
    assert back.strip_accents is False and back.lowercase is True
    assert back.encode(ODD_CORPUS) == tok.encode(ODD_CORPUS)
    saved = json.loads(path.read_text())
    assert saved["type"] == "wordpiece" and saved["version"] == 1
    assert path.read_bytes().isascii()
    assert [p.name for p in tmp_path.iterdir()] == ["wp.json"]        # no temporary left
    assert back != WordPieceTokenizer.train(ODD_CORPUS, vocab_size=150, min_frequency=1)


def test_vocab_txt_in_bert_layout(tmp_path):
    # BERT's uncased vocab.txt: [PAD] 0, [unused..], [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103
    lines = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able",
             ".", "é"]
    path = tmp_path / "vocab.txt"
    path.write_text("".join(t + "\n" for t in lines), encoding="utf-8")
    tok = WordPieceTokenizer.from_vocab_file(path)
    assert tok.vocab == lines
    assert [tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id] == [0, 2, 3, 4, 5]
    assert tok.encode("Unaffable.", add_special_tokens=True) == [3, 6, 7, 8, 9, 4]
    assert tok.encode("éé") == [2]                     # é is stripped to e: not in the vocab
    kept = WordPieceTokenizer.from_vocab_file(path, strip_accents=False)
    assert kept.encode("é") == [10]
    # CRLF and no final newline read the same; save_vocab_file writes what it reads
    path.write_bytes("\r\n".join(lines).encode("utf-8"))
    assert WordPieceTokenizer.from_vocab_file(path).vocab == lines
    out = tok.save_vocab_file(tmp_path / "out.txt")
    assert WordPieceTokenizer.from_vocab_file(out) == tok


def test_vocab_txt_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope" / "vocab.txt"
    with pytest.raises(FileNotFoundError, match=f"vocab file '{missing}' not found"):
        WordPieceTokenizer.from_vocab_file(missing)
    bad = tmp_path / "vocab.txt"
    bad.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\na\n")
    with pytest.raises(ValueError, match=f"vocab file '{bad}'.*'a' is at 5 and 6"):
        WordPieceTokenizer.from_vocab_file(bad)
    bad.write_text("[PAD]\n[UNK]\na\n")
    with pytest.raises(ValueError, match=r"missing \['\[CLS\]', '\[SEP\]', '\[MASK\]'\]"):
        WordPieceTokenizer.from_vocab_file(bad)


# ---- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,error,match", [
    (dict(vocab_size=10), ValueError,
     r"vocab_size=10 is smaller than the 5 special tokens plus the corpus alphabet of 14 "
     r"characters \(19\); expected vocab_size >= 19"),
    (dict(vocab_size=0), ValueError, "vocab_size must be a positive int, got 0"),
    (dict(vocab_size=50.0), ValueError, "vocab_size must be a positive int, got 50.0"),
    (dict(min_frequency=0), ValueError, "min_frequency must be a positive int, got 0"),
    (dict(max_chars_per_word=True), ValueError, "max_chars_per_word must be a positive int"),
    (dict(lowercase="yes"), TypeError, "lowercase must be a bool, got 'yes'"),
])
def test_train_rejects_bad_arguments(kw, error, match):
    with pytest.raises(error, match=match):
        WordPieceTokenizer.train(HF_COURSE, **{"vocab_size": 50, **kw})


def test_train_and_encode_reject_non_text():
    with pytest.raises(TypeError, match="text must be a str or a list of str, got bytes"):
        WordPieceTokenizer.train(b"abc", vocab_size=50)
    with pytest.raises(TypeError, match="text must be a str, got int"):
        ODD_TOKENIZER.encode(3)
    # a list of texts counts words as one text with the pieces separated by whitespace
    assert (WordPieceTokenizer.train(["hug pug", "pun hug"], vocab_size=30, min_frequency=1)
            == WordPieceTokenizer.train("hug pug pun hug", vocab_size=30, min_frequency=1))


@pytest.mark.parametrize("ids,error,match", [
    ([0, 1000], ValueError,
     rf"ids\[1\] = 1000 is outside the vocabulary \[0, {ODD_TOKENIZER.vocab_size}\)"),
    ([-1], ValueError, r"ids\[0\] = -1 is outside"),
    ([1.0], TypeError, "integers, got dtype float64"),
    ([[1, 2]], ValueError, r"1-D, got shape \(1, 2\)"),
])
def test_decode_rejects_bad_ids(ids, error, match):
    with pytest.raises(error, match=match):
        ODD_TOKENIZER.decode(ids)


@pytest.mark.parametrize("vocab,match", [
    (list(SPECIAL_TOKENS) + ["a", "a"], "'a' is at 5 and 6"),
    (list(SPECIAL_TOKENS) + ["a b"], r"vocab\[5\] must be a non-empty str without whitespace"),
    (list(SPECIAL_TOKENS) + [""], r"vocab\[5\] must be a non-empty str"),
    (["[PAD]", "a"], r"missing \['\[UNK\]', '\[CLS\]', '\[SEP\]', '\[MASK\]'\]"),
])
def test_constructor_rejects_bad_vocabularies(vocab, match):
    with pytest.raises(ValueError, match=match):
        WordPieceTokenizer(vocab)


@pytest.mark.parametrize("d", [{"type": "bpe", "version": 1, "vocab": []},
                               {"type": "wordpiece", "version": 2, "vocab": []},
                               {"type": "wordpiece", "version": 1, "vocab": "abc"}, "wordpiece"])
def test_from_dict_rejects_other_objects(d):
    with pytest.raises(ValueError):
        WordPieceTokenizer.from_dict(d)


# ---- Hugging Face `tokenizers` as an oracle (skipped when it is not installed) -------------------
def test_encoding_matches_hugging_face_wordpiece():
    hf = pytest.importorskip("tokenizers")
    if not hasattr(hf, "Tokenizer"):      # tests/tokenizers itself, seen as a namespace package
        pytest.skip("Hugging Face tokenizers is not installed")
    text = corpus_path().read_text(encoding="utf-8")[:200_000] + "\n" + ODD_CORPUS + " ¿qué?"
    ours = WordPieceTokenizer.train(text, vocab_size=1500, min_frequency=3,
                                    max_chars_per_word=12)
    ref = hf.Tokenizer(hf.models.WordPiece(vocab=ours.token_to_id, unk_token="[UNK]",
                                           max_input_chars_per_word=12))
    ref.normalizer = hf.normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                   strip_accents=True, lowercase=True)
    ref.pre_tokenizer = hf.pre_tokenizers.BertPreTokenizer()
    for line in text.split("\n") + ["Unknown ✓ words: ЖЖЖ, supercalifragilistic!"]:
        assert ours.encode(line) == ref.encode(line, add_special_tokens=False).ids, line


# ---- the example ---------------------------------------------------------------------------------
def test_mlm_example_runs(tmp_path):
    env = {**os.environ, "TINYGRAD_LLM_DATA": str(corpus_path())}
    cmd = [sys.executable, str(ROOT / "examples" / "train_mlm.py"), "--max_iters=3",
           "--vocab_size=300", "--text_chars=60000", "--n_layer=1", "--n_embd=32", "--n_head=2",
           "--block_size=32", "--batch_size=4", "--eval_batches=2", "--min_frequency=5"]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["steps"] == 3 and result["vocab_size"] == 300
    for key in ("mlm_loss_start", "mlm_loss_end", "masked_acc_start", "masked_acc", "wall_s"):
        assert np.isfinite(result[key]), key
    assert 0.0 <= result["masked_acc"] <= 1.0
    assert result["mlm_loss_start"] == pytest.approx(np.log(300), rel=0.2)   # near uniform
    bad = subprocess.run(cmd + ["--no_such_option=1"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    assert bad.returncode != 0 and "no_such_option" in bad.stderr
