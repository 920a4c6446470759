"""The ``pbrl`` command: ``pbrl data make|label|info|...``, ``pbrl train``, ``pbrl eval``, ``pbrl seq ...``, ...

Run ``pbrl COMMAND --help`` for the options of each; every error is one line naming the option or file. One module
per command group builds its parser beside its handlers (:mod:`pbrl.cli.data`, :mod:`pbrl.cli.data_formats`,
:mod:`pbrl.cli.train`, :mod:`pbrl.cli.seq`, :mod:`pbrl.cli.overcooked`, :mod:`pbrl.cli.annotate`); this module
assembles them. Heavy libraries are imported inside the handlers, so ``pbrl --help`` stays quick.
"""

from __future__ import annotations

import argparse
import sys

from pbrl.cli import annotate, data, deploy, overcooked, seq, train
from pbrl.cli.common import FORMATTER, Parser
from pbrl.cli.data import dataset_info

__all__ = ["build_parser", "dataset_info", "main"]

EXAMPLES = """\
examples:
  pbrl data info hopper-medium-replay-small            # what is in the shipped dataset
  pbrl train --agent cpl --dataset hopper-medium-replay-small --steps 2000 --seed 0 --out runs/cpl
  pbrl eval runs/cpl --episodes 10                     # re-evaluate the trained policy in MuJoCo
  pbrl data make --env hopper --mixture medium-replay --algo ppo --medium-steps 400000 \\
      --transitions 100000 --seed 0 --out my-hopper     # a new dataset from the simulator
  pbrl data label my-hopper --pairs 5000 --segment 64 --seed 0 --out my-hopper-prefs
  pbrl data label my-hopper --pairs 5000 --beta 0.1 --mistake 0.1 --groups groups.toml --seed 0 --out my-hopper-noisy
  pbrl data import-labels answers.jsonl --dataset my-hopper --out my-hopper-human
"""


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, its groups in the order `pbrl --help` lists them."""
    p = Parser(prog="pbrl", description="Offline preference-based RL: make datasets, train agents "
                                "from preferences, evaluate them in simulators.", epilog=EXAMPLES,
                                formatter_class=FORMATTER)
    from pbrl import __version__

    p.add_argument("--version", action="version", version=f"pbrl {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    data.add_parser(sub)
    train.add_train_parser(sub)
    seq.add_parser(sub)
    train.add_bench_parser(sub)
    overcooked.add_parser(sub)
    annotate.add_parser(sub)
    train.add_eval_parser(sub)
    train.add_curves_parser(sub)
    train.add_likelihood_parser(sub)
    deploy.add_export_parser(sub)
    deploy.add_deploy_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one ``pbrl`` command; a :class:`~pbrl.errors.PbrlError` (or an OS error no check foresaw) becomes one line
    on stderr and exit code 2, Ctrl-C one line and exit code 130."""
    from pbrl.errors import PbrlError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PbrlError as exc:
        print(f"pbrl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # runs checkpoint as they go and resume from the newest checkpoint; nothing half-written is left (atomic writes)
        print(f"pbrl: interrupted: {args.command} stopped; files are as they were at the last complete write (a "
              "training run resumes from its newest checkpoint with the same command)", file=sys.stderr)
        return 130
    except OSError as exc:  # a disk-level failure no check foresaw (full disk, a path gone mid-run): one line too
        where = exc.filename or args.command
        print(f"pbrl: error: {where}: {exc.strerror or type(exc).__name__}", file=sys.stderr)
        return 2
