"""Character tokenizer: one id per Unicode character (code point), as in char-rnn (Karpathy, 2015)
and nanoGPT's shakespeare_char.

The vocabulary built from a corpus is its sorted set of characters, so ids follow code-point order
(tiny Shakespeare: 65 characters, "\\n" -> 0, " " -> 1, ...). An optional `unk` character takes the
ids of characters outside the vocabulary; from_text appends it after the sorted characters when the
corpus lacks it, so the corpus's own ids do not move. Without `unk`, an unknown character raises.

Encoding and decoding are vectorised: the text becomes an array of code points through UTF-32
(surrogatepass keeps lone surrogates, which Python strings may hold), and a binary search over the
sorted vocabulary maps code points to ids.
"""
import json
from pathlib import Path

import numpy as np

from ..data.files import atomic_write
from ._common import check_dict

__all__ = ["CharTokenizer"]

_TYPE = "char"
_VERSION = 1


def _code_points(text):
    """str -> (len(text),) uint32 code points."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


def _text(code_points):
    """(n,) code points -> str."""
    return np.asarray(code_points, dtype="<u4").tobytes().decode("utf-32-le", "surrogatepass")


class CharTokenizer:
    """Maps each character of a fixed vocabulary to its index.

    chars: the vocabulary in id order (a str, or an iterable of one-character strings), without
    repeats. unk: None (unknown characters raise ValueError) or a character of `chars` that
    unknown characters are encoded as.
    """

    def __init__(self, chars, unk=None):
        chars = list(chars)
        for i, c in enumerate(chars):
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"chars[{i}] must be a single character, got {c!r}")
        if not chars:
            raise ValueError("chars must hold at least one character, got none")
        seen = {}
        for i, c in enumerate(chars):
            if c in seen:
                raise ValueError(f"chars must not repeat: {c!r} is at {seen[c]} and {i}")
            seen[c] = i
        if unk is not None and unk not in seen:
            raise ValueError(f"unk={unk!r} must be one of the vocabulary's characters")
        self._chars = "".join(chars)
        self.unk = unk
        self.unk_id = None if unk is None else seen[unk]
        self._ids_to_points = _code_points(self._chars)                 # (V,) id -> code point
        self._by_point = np.argsort(self._ids_to_points, kind="stable")  # (V,) ids, points sorted
        self._sorted_points = self._ids_to_points[self._by_point]

    @classmethod
    def from_text(cls, text, unk=None):
        """The vocabulary of `text`: its sorted unique characters, then `unk` if it is absent."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        chars = sorted(set(text))
        if unk is not None and unk not in chars:
            chars.append(unk)
        return cls(chars, unk=unk)

    @property
    def vocab_size(self):
        return len(self._chars)

    @property
    def chars(self):
        """The vocabulary as one string: chars[i] is the character of id i."""
        return self._chars

    def encode(self, text):
        """str -> (len(text),) int64 ids."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        points = _code_points(text)
        where = np.searchsorted(self._sorted_points, points)
        where = np.minimum(where, self.vocab_size - 1)      # past the end: not found below
        known = self._sorted_points[where] == points
        ids = self._by_point[where].astype(np.int64)
        if not known.all():
            if self.unk is None:
                i = int(np.argmin(known))                   # the first unknown character
                raise ValueError(f"text[{i}] = {text[i]!r} (U+{ord(text[i]):04X}) is not in "
                                 f"the vocabulary of {self.vocab_size} characters; build the "
                                 f"tokenizer with unk=... to map unknown characters")
            ids[~known] = self.unk_id
        return ids

    def decode(self, ids):
        """1-D ints (array or list) -> str."""
        ids = np.asarray(ids)
        if ids.size == 0:
            return ""
        if ids.ndim > 1:
            raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
        if ids.dtype.kind not in "iu":
            raise TypeError(f"ids must be integers, got dtype {ids.dtype}")
        ids = ids.reshape(-1)
        bad = (ids < 0) | (ids >= self.vocab_size)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"ids[{i}] = {int(ids[i])} is outside the vocabulary "
                             f"[0, {self.vocab_size})")
        return _text(self._ids_to_points[ids])

    # ---- serialisation: a small JSON object, also embedded in checkpoints -------------------
    def to_dict(self):
        return {"type": _TYPE, "version": _VERSION, "chars": self._chars, "unk": self.unk}

    @classmethod
    def from_dict(cls, d):
        check_dict(d, _TYPE, _VERSION, "CharTokenizer")
        if not isinstance(d.get("chars"), str):
            raise ValueError(f"CharTokenizer dict: chars must be a str, got {d.get('chars')!r}")
        return cls(d["chars"], unk=d.get("unk"))

    def save(self, path):
        """Write the tokenizer as JSON, atomically (temporary file, fsync, rename)."""
        path = Path(path)
        # ensure_ascii escapes every non-ASCII character, lone surrogates included, so the file
        # is plain ASCII whatever the vocabulary holds
        text = json.dumps(self.to_dict())
        with atomic_write(path, "w", encoding="ascii") as f:
            f.write(text)
        return path

    @classmethod
    def load(cls, path):
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def __eq__(self, other):
        return (isinstance(other, CharTokenizer) and self._chars == other._chars
                and self.unk == other.unk)

    __hash__ = None

    def __repr__(self):
        return f"CharTokenizer(vocab_size={self.vocab_size}, unk={self.unk!r})"
