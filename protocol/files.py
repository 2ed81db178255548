"""File helpers both sides use: atomic writes, directory fsync, the sha256 of a file.

Atomic means a crash leaves either the old file or the new one, never half of one: the data goes
to a temporary file in the same folder, is fsynced, renamed over the target, and the folder is
fsynced so the rename itself survives a power cut. Standard library only (``protocol`` imports
nothing else of ours).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

#: bytes read at a time when hashing a file
HASH_BLOCK = 1 << 20


def fsync_dir(directory: str | os.PathLike[str], *, strict: bool = False) -> None:
    """Make renames in ``directory`` durable (POSIX). Errors are ignored unless ``strict``."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        if strict:
            raise
        return
    try:
        os.fsync(fd)
    except OSError:
        if strict:
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_writer(path: str | os.PathLike[str], *, mode: int | None = None) -> Iterator[BinaryIO]:
    """A binary file handle whose content replaces ``path`` atomically when the block ends.

    ``mode`` sets the new file's permission bits (e.g. ``0o600`` for what describes a site's
    data); None keeps the temporary file's default (0600 from ``mkstemp``) widened by nothing.
    If the block raises, the target is untouched and the temporary file removed.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
        tmp = None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    fsync_dir(directory)


def atomic_write(path: str | os.PathLike[str], data: bytes | str, *, mode: int | None = None) -> None:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically; see :func:`atomic_writer`."""
    with atomic_writer(path, mode=mode) as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file, read in blocks (a manifest records it; both sides compute it so)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(HASH_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


class HashingReader:
    """A read-only file wrapper that hashes what passes through it (one pass: check and digest)."""

    def __init__(self, fh: BinaryIO):
        self.fh = fh
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.sha.update(data)
        return data

    def drain(self) -> bytes:
        """Read (and hash) the rest; returns the digest of everything."""
        for block in iter(lambda: self.read(HASH_BLOCK), b""):
            pass
        return self.sha.digest()
