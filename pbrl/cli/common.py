"""What several command groups share: where ``--out`` writes a dataset, and the command line a card records."""

from __future__ import annotations

import argparse
import shlex
import sys
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
