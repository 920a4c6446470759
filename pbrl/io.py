"""Atomic file writes (readers see the old file or the whole new one, never a part), an exclusive directory
lock, the check of a file a command is about to write (:func:`output_file`), and the progress report of long work
(:class:`Progress`). Imports of pbrl only :mod:`pbrl.errors`."""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes (hex), read in 16 MiB chunks: what a run records of its data files to refuse
    resuming on changed ones, and what a dataset card records of its files."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


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


class Progress:
    """Progress of long work: a tqdm bar on a terminal; off one (a log file, nohup, CI) a plain line at least every
    ``every`` seconds, ``desc: step/total (pct), rate/s, ETA``, so a run never sits silent until it ends. Disabled
    entirely (``enabled=False``, the commands' ``--quiet``): nothing is printed.

    Use like a bar: ``update(n)``, ``set_postfix_str(text)``, ``write(line)`` (a message that does not break the
    bar), ``close()``; or as a context manager."""

    def __init__(self, total: int | None, *, desc: str, initial: int = 0, enabled: bool = True, unit: str = "step",
                 every: float = 30.0, stream=None) -> None:
        import sys
        import time

        self.total, self.desc, self.n, self.unit, self.every = total, desc, initial, unit, every
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.postfix = ""
        self._clock = time.monotonic
        self._start, self._start_n = self._clock(), initial
        self._last_line = self._start
        self.bar = None
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, file=self.stream)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and self._clock() - self._last_line >= self.every:
            self._line()

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def write(self, line: str) -> None:
        """A message on the progress stream (above the bar on a terminal); printed even with ``enabled=False``."""
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self, final_line: bool = False) -> None:
        """Close the bar; off a terminal, ``final_line`` prints where the work ended (a line for short work too)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and final_line:
            self._line()

    def status(self) -> str:
        elapsed = self._clock() - self._start
        rate = (self.n - self._start_n) / elapsed if elapsed > 0 else 0.0
        done = f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else f"{self.n}"
        eta = ""
        if self.total and rate > 0:
            left = (self.total - self.n) / rate
            eta = f", ETA {int(left // 3600)}:{int(left % 3600 // 60):02d}:{int(left % 60):02d}"
        extra = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {done} {self.unit}s, {rate:.3g} {self.unit}s/s{eta}{extra}"

    def _line(self) -> None:
        self._last_line = self._clock()
        print(self.status(), file=self.stream, flush=True)


def output_file(option: str, path: str | Path, *, suffixes: tuple[str, ...] = (), replace: bool = False,
                owned: Callable[[Path], bool] | None = None) -> Path:
    """A file a command is about to write, checked before any work starts: not a directory, in an existing folder
    this user can write to, with one of ``suffixes``. An existing file is refused unless ``replace`` (a report made to
    be regenerated) or ``owned(path)`` says it is this command's own output (then the caller resumes or replaces it);
    an unrelated file is never overwritten."""
    from pbrl.errors import ConfigError, describe  # a base module: io stays free of the rest of pbrl

    out = Path(path)
    if suffixes and out.suffix.lower() not in suffixes:
        raise ConfigError(describe(option, "file", str(path), f"a {' or '.join(suffixes)} file"))
    if out.is_dir():
        raise ConfigError(describe(option, "file", f"{path}, an existing directory", "a file path"))
    parent = out.parent if str(out.parent) else Path(".")
    blocking = next((p for p in (parent, *parent.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ConfigError(describe(option, "file", f"{path}, under the file {blocking}", "a path in a folder"))
    if not parent.is_dir():
        raise ConfigError(describe(option, "folder", str(parent), "an existing folder"))
    if not os.access(parent, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ConfigError(describe(option, "file", f"{path}, not writable by this user", "a place this user can write"))
    if out.exists() and not replace and not (owned is not None and owned(out)):
        raise ConfigError(describe(option, "file", f"{path}, which exists", "a new file (remove it, or choose another "
                                   "name)"))
    return out
