"""Every `pbrl` command keeps its options: the parser, walked through all its subcommands, must list exactly the
option strings and positional names stored in ``tests/cli_options.json``.

The stored file was written from the parser before the CLI became a package; it may only gain new commands. After
adding a command on purpose, regenerate it (and review the diff: nothing may disappear):

    OMP_NUM_THREADS=1 .venv/bin/python -m tests.test_cli_options --write
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SNAPSHOT = Path(__file__).with_name("cli_options.json")


def option_names(parser: argparse.ArgumentParser) -> list[str]:
    """The sorted option strings (``--out``, ``-h``) and positional names (``dataset``) of one parser, its
    subcommand selector left out (the walk covers the subcommands themselves)."""
    names: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        names.extend(action.option_strings or [action.dest])
    return sorted(names)


def command_options(parser: argparse.ArgumentParser, path: str = "") -> dict[str, list[str]]:
    """``{command path: option names}`` for ``parser`` and, recursively, every subcommand (``""`` is `pbrl`
    itself, then e.g. ``"data make"``, ``"overcooked ppo"``)."""
    table = {path: option_names(parser)}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                table.update(command_options(sub, f"{path} {name}".strip()))
    return table


def current_options() -> dict[str, list[str]]:
    from pbrl.cli import build_parser

    return dict(sorted(command_options(build_parser()).items()))


def write_snapshot() -> None:
    """Store the current parser's table (run after adding a command on purpose)."""
    SNAPSHOT.write_text(json.dumps(current_options(), indent=1) + "\n")
    print(f"wrote {SNAPSHOT}")


def test_every_command_keeps_its_options():
    stored = json.loads(SNAPSHOT.read_text())
    current = current_options()
    lost = {cmd: sorted(set(opts) - set(current.get(cmd, []))) for cmd, opts in stored.items()}
    lost = {cmd: opts for cmd, opts in lost.items() if opts or cmd not in current}
    assert not lost, f"commands or options lost or renamed: {lost}"
    assert current == stored, "the parser gained commands or options: regenerate tests/cli_options.json (see above)"


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python -m tests.test_cli_options --write")
    write_snapshot()


def test_the_parsers_names_are_the_packages():
    """The choices the parser writes out (so that `pbrl --help` imports no torch) are the package's own."""
    from pbrl.agents import AGENTS
    from pbrl.cli import seq, train
    from pbrl.core.losses import DPO_LOSS_TYPES
    from pbrl.sequence.diffusion_train import DIFFUSION_METHODS
    from pbrl.sequence.lm import REFERENCE_MODES
    from pbrl.sequence.objectives import METHODS

    assert sorted(train.AGENT_NAMES) == sorted(AGENTS)
    assert (seq.LM_METHODS, seq.DIFFUSION_METHODS) == (tuple(METHODS), tuple(DIFFUSION_METHODS))
    assert (seq.DPO_LOSS_TYPES, seq.REFERENCE_MODES) == (tuple(DPO_LOSS_TYPES), tuple(REFERENCE_MODES))


def test_pbrl_help_imports_no_torch():
    """`pbrl --help` (and every group's) answers without importing torch: building the parser stays light."""
    import subprocess
    import sys

    code = ("import sys; from pbrl.cli import build_parser; build_parser(); "
            "sys.exit(sorted(m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules) or 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
