"""Crash-safe file writing shared by the corpus downloader and the token files.

A file is written under a temporary name in its destination's directory, flushed and fsync'ed,
then renamed over the destination: a rename within one filesystem is atomic (POSIX rename(2)),
so a reader sees the old file or the whole new one, never a torn one. The directory is fsync'ed
after the rename so that the new name itself survives a power cut. On any error the temporary
file is removed and nothing at the destination changes.
"""
import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "temporary_beside", "commit", "fsync_dir"]


def fsync_dir(directory):
    """Make a rename inside `directory` durable (a no-op where directories cannot be opened)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_beside(path, suffix=".tmp"):
    """Create an empty, uniquely named file next to `path`; returns its Path (the caller owns it).

    Unique names let two processes write the same destination at once: the last rename wins and
    both renames install a complete file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(name)


def commit(tmp, path):
    """fsync `tmp`, rename it over `path` and fsync the directory."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


@contextlib.contextmanager
def atomic_write(path, mode="wb", encoding=None):
    """Open a temporary file for writing; on a clean exit it replaces `path`, on an error it is
    deleted.

        with atomic_write("out.json", "w", encoding="utf-8") as f:
            f.write(text)
    """
    tmp = temporary_beside(path)
    try:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
        commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)     # after a successful commit the name no longer exists
