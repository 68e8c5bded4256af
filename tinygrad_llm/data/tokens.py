"""Token files: a corpus of token ids on disk, read back as a memory map so that a corpus larger
than memory is never loaded whole (nanoGPT's train.bin / val.bin, with the metadata made explicit).

Format (version 1), two files:
  <name>.bin       the ids, little-endian, uint16 when every id fits (< 65536), else uint32;
                   no header, so `np.memmap(path, "<u2")` or any other reader can map it.
  <name>.bin.json  the sidecar: {"format": "tinygrad_llm.tokens", "version": 1,
                   "dtype": "uint16" | "uint32", "byteorder": "little", "count": N,
                   "vocab_size": V or null}.
The dtype is the narrower of the two that holds max(max id + 1, vocab_size) values: knowing the
vocabulary, a train and a val file of one corpus get the same dtype even if only one of them
holds a high id. Both files are written atomically (temporary file, fsync, rename; see files.py),
the .bin first; the reader checks the .bin's size against the sidecar's count, so a mismatched
pair is reported instead of read as garbage.

TokenWriter streams chunks into the .bin (a corpus tokenised piece by piece); write_tokens is the
same writer given one chunk, so the two produce identical files.
"""
import json
from pathlib import Path

import numpy as np

from .files import atomic_write, commit, temporary_beside

__all__ = ["TokenWriter", "write_tokens", "read_tokens", "token_file_info", "sidecar_path"]

FORMAT = "tinygrad_llm.tokens"
VERSION = 1
_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
_UINT16_VALUES = 1 << 16
_UINT32_VALUES = 1 << 32
_COPY_CHUNK = 1 << 22                   # ids per piece when widening a partial file


def sidecar_path(path):
    """The JSON sidecar of a token file: "train.bin" -> "train.bin.json"."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def _dtype_name(n_values):
    """The narrowest storage type for ids in [0, n_values)."""
    if n_values > _UINT32_VALUES:
        raise ValueError(f"token ids must be < 2**32 to be stored, got a vocabulary of "
                         f"{n_values} values")
    return "uint16" if n_values <= _UINT16_VALUES else "uint32"


def _check_ids(ids, vocab_size):
    """ids as a 1-D integer array, each in [0, vocab_size) (or >= 0 without a vocabulary)."""
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
    if ids.size and ids.dtype.kind not in "iu":
        raise TypeError(f"ids must be integers, got dtype {ids.dtype}")
    if ids.size:
        low, high = int(ids.min()), int(ids.max())
        if low < 0:
            raise ValueError(f"ids must be >= 0, got {low} at index {int(ids.argmin())}")
        if vocab_size is not None and high >= vocab_size:
            raise ValueError(f"ids must be < vocab_size={vocab_size}, got {high} at index "
                             f"{int(ids.argmax())}")
    return ids


class TokenWriter:
    """Append chunks of token ids to a token file; the file appears at `path` only when the
    context exits cleanly (an exception leaves any previous file untouched).

        with TokenWriter("train.bin", vocab_size=tok.vocab_size) as w:
            for piece in pieces:
                w.write(tok.encode(piece))

    vocab_size: fixes the dtype up front and checks every id against it. Without it the file
    starts as uint16 and is widened once to uint32 (copied in pieces, never loaded whole) when
    an id >= 65536 arrives, so the result equals write_tokens on the concatenated ids.
    """

    def __init__(self, path, vocab_size=None):
        if vocab_size is not None and (isinstance(vocab_size, bool)
                                       or not isinstance(vocab_size, (int, np.integer))
                                       or vocab_size < 1):
            raise ValueError(f"vocab_size must be a positive int or None, got {vocab_size!r}")
        self.path = Path(path)
        self.vocab_size = None if vocab_size is None else int(vocab_size)
        self.dtype = _dtype_name(self.vocab_size or 1)
        self.count = 0
        self._tmp = self._file = None

    def __enter__(self):
        self._tmp = temporary_beside(self.path)
        self._file = open(self._tmp, "wb")
        return self

    def write(self, ids):
        """Append a chunk of ids (1-D ints)."""
        if self._file is None:
            raise ValueError("TokenWriter.write called outside its `with` block")
        ids = _check_ids(ids, self.vocab_size)
        if ids.size and self.vocab_size is None:
            needed = _dtype_name(int(ids.max()) + 1)         # raises for ids >= 2**32
            if needed == "uint32" and self.dtype == "uint16":
                self._widen()
        self._file.write(np.ascontiguousarray(ids, dtype=_DTYPES[self.dtype]).data)
        self.count += ids.size

    def _widen(self):
        """Rewrite the uint16 ids written so far as uint32, piece by piece, into a new file."""
        self._file.close()
        old, self._tmp = self._tmp, temporary_beside(self.path)
        with open(self._tmp, "wb") as out:
            if self.count:
                ids = np.memmap(old, dtype=_DTYPES["uint16"], mode="r", shape=(self.count,))
                for start in range(0, self.count, _COPY_CHUNK):
                    out.write(ids[start:start + _COPY_CHUNK].astype(_DTYPES["uint32"]).tobytes())
                del ids
        old.unlink()
        self.dtype = "uint32"
        self._file = open(self._tmp, "ab")

    def __exit__(self, exc_type, exc, tb):
        try:
            self._file.close()
            if exc_type is None:
                commit(self._tmp, self.path)
                info = {"format": FORMAT, "version": VERSION, "dtype": self.dtype,
                        "byteorder": "little", "count": self.count, "vocab_size": self.vocab_size}
                with atomic_write(sidecar_path(self.path), "w", encoding="utf-8") as f:
                    json.dump(info, f, indent=1)
        finally:
            self._tmp.unlink(missing_ok=True)
            self._file = None
        return False


def write_tokens(ids, path, vocab_size=None):
    """Write 1-D integer ids to `path` (+ its .json sidecar); returns the path.

    The dtype is uint16 when max(max id + 1, vocab_size) <= 65536, else uint32."""
    with TokenWriter(path, vocab_size) as writer:
        writer.write(ids)
    return Path(path)


def token_file_info(path):
    """The sidecar of a token file as a dict (format, version, dtype, byteorder, count,
    vocab_size), checked against the .bin's size."""
    path = Path(path)
    meta = sidecar_path(path)
    if not meta.is_file():
        raise FileNotFoundError(f"token file {path} has no sidecar {meta}: write it with "
                                f"write_tokens or TokenWriter")
    info = json.loads(meta.read_text(encoding="utf-8"))
    if info.get("format") != FORMAT or info.get("version") != VERSION:
        raise ValueError(f"{meta} is not a version-{VERSION} {FORMAT} sidecar, got format "
                         f"{info.get('format')!r} version {info.get('version')!r}")
    if info.get("dtype") not in _DTYPES:
        raise ValueError(f"{meta}: dtype must be one of {sorted(_DTYPES)}, got "
                         f"{info.get('dtype')!r}")
    expected = info["count"] * _DTYPES[info["dtype"]].itemsize
    size = path.stat().st_size
    if size != expected:
        raise ValueError(f"token file {path} has {size} bytes, but its sidecar says "
                         f"{info['count']} {info['dtype']} ids ({expected} bytes): the pair is "
                         f"mismatched")
    return info


def read_tokens(path):
    """The ids of a token file as a read-only np.memmap of shape (count,), uint16 or uint32.

    Only the pages that are touched are read. An empty file cannot be mapped, so zero ids come
    back as an empty read-only ndarray of the file's dtype."""
    info = token_file_info(path)
    dtype = _DTYPES[info["dtype"]]
    if info["count"] == 0:
        empty = np.empty(0, dtype=dtype)
        empty.flags.writeable = False
        return empty
    return np.memmap(path, dtype=dtype, mode="r", shape=(info["count"],))
