"""What several command groups share: where ``--out`` writes a dataset, the command line a card records, option types
that refuse nonsense numbers in one line, and the check of an output file before any work starts."""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from pbrl.io import output_file  # noqa: F401  (the commands' check of a file they will write; here for the CLI)

FORMATTER = argparse.RawDescriptionHelpFormatter
"""Keeps the line breaks of the descriptions and epilogs that hold examples."""


class Parser(argparse.ArgumentParser):
    """argparse with every refusal on one line (argparse's own prints the usage block first): ``pbrl eval: error:
    argument --episodes: got 0, expected an integer >= 1 (`pbrl eval --help` lists the options)``. Every subcommand's
    parser is of this class too (argparse makes subparsers of the parent's class)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")


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
