"""Corpora: tiny Shakespeare (Karpathy, 2015, the char-rnn data set), found on disk or
downloaded once into a cache and verified.

Where the text comes from, first match wins:
  1. the `path` argument: the file, or a directory holding `input.txt` or
     `tinyshakespeare/input.txt`;
  2. the environment variable TINYGRAD_LLM_DATA, read the same way;
  3. the cache: `<cache_dir>/tinyshakespeare/input.txt`, where cache_dir is the argument, else
     $TINYGRAD_LLM_CACHE, else ~/.cache/tinygrad_llm;
  4. a download from SHAKESPEARE_URL into that cache (urllib, no extra dependency), written
     atomically and accepted only if its size and sha256 match the constants below.
A named path that does not exist is an error, never a silent fall-through to the next source.
Files given by path or environment are taken as they are (any text can be trained on); the cached
copy is checked against the checksum on every read, so a wrong file placed there is reported.

Reading order: constants, locating, strict UTF-8 reading, the verified download, shakespeare().
"""
import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from .files import commit, temporary_beside

__all__ = ["shakespeare", "shakespeare_path", "download_file", "read_text", "sha256_file",
           "default_cache_dir", "SHAKESPEARE_URL", "SHAKESPEARE_SHA256", "SHAKESPEARE_SIZE",
           "DATA_ENV", "CACHE_ENV"]

SHAKESPEARE_URL = ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
                   "tinyshakespeare/input.txt")
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_SIZE = 1_115_394        # bytes; the text is ASCII, so also its length in characters
DATA_ENV = "TINYGRAD_LLM_DATA"
CACHE_ENV = "TINYGRAD_LLM_CACHE"
_IN_DIRECTORY = ("input.txt", "tinyshakespeare/input.txt")
_CACHED_NAME = "tinyshakespeare/input.txt"
# What a failed download raises: URLError (HTTPError, no route, DNS), a timeout, a dropped
# connection or a truncated HTTP body. A disk error while writing is a plain OSError and is not
# one of these, so it is not mistaken for being offline.
_NETWORK_ERRORS = (urllib.error.URLError, TimeoutError, ConnectionError,
                   http.client.HTTPException)


# ---- locating ----------------------------------------------------------------------------------
def default_cache_dir():
    """$TINYGRAD_LLM_CACHE if set, else ~/.cache/tinygrad_llm."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tinygrad_llm").expanduser()


def _find(path, source):
    """A file is itself; a directory must hold input.txt or tinyshakespeare/input.txt."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for name in _IN_DIRECTORY:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{source}={str(path)!r} is a directory without "
                                f"{' or '.join(_IN_DIRECTORY)}")
    raise FileNotFoundError(f"{source}={str(path)!r} does not exist")


def _how_to_provide(dest, problem):
    return (f"tiny Shakespeare is not available: {problem}. Provide it in one of these ways: "
            f"set {DATA_ENV} to the file (or to a directory holding input.txt or "
            f"tinyshakespeare/input.txt); pass its path as shakespeare(path=...); or fetch "
            f"{SHAKESPEARE_URL} by hand and save it as {dest}")


def sha256_file(path):
    """Hex sha256 of a file's bytes, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def shakespeare_path(path=None, cache_dir=None, download=True):
    """The path of the tiny Shakespeare text, found or downloaded (see the module docstring).

    path: a file or a directory (see above); cache_dir: where the download is kept;
    download: if False, a missing file raises FileNotFoundError instead of being fetched.
    """
    if path is not None:
        return _find(path, "path")
    if os.environ.get(DATA_ENV):
        return _find(os.environ[DATA_ENV], DATA_ENV)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cached = cache / _CACHED_NAME
    if cached.is_file():
        got = sha256_file(cached)
        if got != SHAKESPEARE_SHA256:
            raise ValueError(f"cached file {cached} has sha256 {got}, expected "
                             f"{SHAKESPEARE_SHA256}: delete it to download it again")
        return cached
    if not download:
        raise FileNotFoundError(_how_to_provide(cached, "not found and download=False"))
    return download_file(SHAKESPEARE_URL, cached, SHAKESPEARE_SHA256, SHAKESPEARE_SIZE)


# ---- reading -----------------------------------------------------------------------------------
def read_text(path):
    """A file's text, decoded as strict UTF-8 with its newlines untouched.

    A bad byte raises ValueError naming the file, the byte offset and the line, rather than
    a UnicodeDecodeError that names neither."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValueError(f"{path} is not valid UTF-8: byte 0x{data[err.start]:02x} at byte "
                         f"offset {err.start} (line {line}): {err.reason}") from err


# ---- downloading -------------------------------------------------------------------------------
def download_file(url, dest, sha256, size=None, timeout=60.0):
    """Fetch `url` into `dest` atomically, accepting it only if its sha256 (and byte count, if
    `size` is given) match; returns dest.

    The body streams into a temporary file beside dest while it is hashed; a mismatch deletes
    the temporary file and raises ValueError, so dest never holds an unverified file. A network
    failure raises FileNotFoundError saying how to provide the file by hand.
    """
    dest = Path(dest)
    tmp = temporary_beside(dest, suffix=".part")
    try:
        digest, n_bytes = hashlib.sha256(), 0
        with open(tmp, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    while chunk := response.read(1 << 16):
                        digest.update(chunk)
                        n_bytes += len(chunk)
                        out.write(chunk)
            except _NETWORK_ERRORS as err:
                raise FileNotFoundError(_how_to_provide(
                    dest, f"downloading {url} failed ({err})")) from err
        got = digest.hexdigest()
        if got != sha256 or (size is not None and n_bytes != size):
            raise ValueError(f"download of {url} failed verification: got {n_bytes} bytes with "
                             f"sha256 {got}, expected {size if size is not None else 'any'} "
                             f"bytes with sha256 {sha256}; nothing was written to {dest}")
        commit(tmp, dest)
        return dest
    finally:
        tmp.unlink(missing_ok=True)


def shakespeare(path=None, cache_dir=None, download=True):
    """The tiny Shakespeare text (1,115,394 characters) as a str.

    path: a file, or a directory holding input.txt or tinyshakespeare/input.txt; else
    $TINYGRAD_LLM_DATA; else the cache (cache_dir, $TINYGRAD_LLM_CACHE or ~/.cache/tinygrad_llm);
    else downloaded once from SHAKESPEARE_URL and verified by sha256 (unless download=False).
    """
    return read_text(shakespeare_path(path, cache_dir, download))
