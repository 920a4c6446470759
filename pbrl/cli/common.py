"""What several command groups share: where ``--out`` writes a dataset, the command line a card records, option types
that refuse nonsense numbers in one line, and the check of an output file before any work starts."""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

FORMATTER = argparse.RawDescriptionHelpFormatter
"""Keeps the line breaks of the descriptions and epilogs that hold examples."""


def dataset_out(out: str, suffix: str) -> tuple[Path, Path | None]:
    """``--out`` as a name (-> ``datasets/NAME<suffix>`` + a card) or a path to an .h5 file (no card)."""
    if out.endswith((".h5", ".hdf5")) or "/" in out:
        return Path(out), None
    return Path("datasets") / f"{out}{suffix}", Path("datasets") / f"{out}.toml"


def invoked_command(*, leave_out: tuple[str, ...] = ()) -> str:
    """The command line as the user typed it (``pbrl ...``, each argument shell-quoted) for a card's record;
    ``leave_out`` drops flags that must not be replayed (``--force``)."""
    return "pbrl " + " ".join(shlex.quote(a) for a in sys.argv[1:] if a not in leave_out)


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type`` for an integer option with a lower bound: ``--steps -5`` is refused by argparse in one
    line naming the option (``argument --steps: got -5, expected an integer >= 1``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"got {text!r}, expected an integer >= {low}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"got {value}, expected an integer >= {low}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def float_in(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type`` for a finite float in [low, high] (either end open on request)."""
    left, right = "(" if low_open else "[", ")" if high_open else "]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if (not math.isfinite(value) or value < low or value > high or (low_open and value == low)
                or (high_open and value == high)):
            raise argparse.ArgumentTypeError(f"got {text!r}, expected a number in {left}{low}, {high}{right}")
        return value

    parse.__name__ = f"number in {left}{low}, {high}{right}"
    return parse


def output_file(option: str, path: str | Path, *, suffixes: tuple[str, ...] = (), replace: bool = False,
                owned: Callable[[Path], bool] | None = None) -> Path:
    """A file a command is about to write, checked before any work starts: not a directory, in an existing folder
    this user can write to, with one of ``suffixes``. An existing file is refused unless ``replace`` (a report made to
    be regenerated) or ``owned(path)`` says it is this command's own output (then the caller resumes or replaces it);
    an unrelated file is never overwritten."""
    from pbrl.errors import ConfigError, describe

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
