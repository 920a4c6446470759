"""Atomic file writes (readers see the old file or the whole new one, never a part) and an exclusive directory
lock. Imports nothing of pbrl."""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


def write_folder(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Fill a temporary folder beside ``path`` with ``write(tmp)``, then put it in place of ``path`` (a reader sees
    the old folder, no folder, or the whole new one; never a part)."""
    import shutil

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


class LockHeld(Exception):
    """Raised by :func:`exclusive_lock` when another process holds the lock; ``holder`` is what it wrote."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path}: held by {holder}")
        self.path, self.holder = path, holder


@contextmanager
def exclusive_lock(directory: Path, name: str = ".lock") -> Iterator[Path]:
    """Hold ``directory/name`` with ``fcntl.flock`` (released by the kernel if the process dies, so a killed
    run never leaves a stale lock); the holder's pid and host are written into it for the refusal message."""
    path = Path(directory) / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise LockHeld(path, holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock
