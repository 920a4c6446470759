"""Atomic file writes: readers see the old file or the whole new one, never a part. Imports nothing of pbrl."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_path(path: Path) -> Path:
    """A temporary sibling of ``path`` (same directory, so ``os.replace`` is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def commit_atomic(tmp: Path, path: Path) -> None:
    """Move a finished temporary file into place in one step (mode 0644 less the umask, like a normal file)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def atomic_write_text(path: str | os.PathLike, text: str | bytes) -> Path:
    """Write a text (or bytes) file atomically: readers see the old file or the whole new one, never a part."""
    path = Path(path)
    tmp = atomic_path(path)
    try:
        if isinstance(text, bytes):
            tmp.write_bytes(text)
        else:
            tmp.write_text(text)
        commit_atomic(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
