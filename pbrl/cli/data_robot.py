"""``pbrl data import-robomimic``, ``import-rosbag``, ``import-lerobot`` and ``export-lerobot``: robot logs in and
out (the conversions live in :mod:`pbrl.data.robomimic`, :mod:`pbrl.data.rosbag` and :mod:`pbrl.data.lerobot`)."""

from __future__ import annotations

import argparse

from pbrl.cli.data_formats import write_imported


def comma_list(text: str) -> list[str]:
    """``--obs-keys a,b`` -> ``["a", "b"]``; empty names are refused by argparse in one line."""
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"got {text!r}, expected names separated by commas (K1,K2,...)")
    return items


def cmd_import_robomimic(args: argparse.Namespace) -> int:
    from pbrl.data.robomimic import import_robomimic

    return write_imported(args, lambda p: import_robomimic(args.file, p, obs_keys=args.obs_keys, split=args.split),
                          f"robomimic demonstrations from {args.file}" + (f" ({args.split} split)" if args.split else ""))


def add_parsers(dsub: argparse._SubParsersAction) -> None:
    """The robot-log subcommands of ``pbrl data``."""
    from pbrl.cli.data_lerobot import add_lerobot_parsers
    from pbrl.cli.data_rosbag import add_rosbag_parser

    rm = dsub.add_parser("import-robomimic", help="convert a robomimic HDF5 file (data/demo_N, mask/<split>); camera "
                         "images stay in the file, referenced frame by frame")
    rm.add_argument("file", help="robomimic .hdf5 (data/demo_N/{obs,next_obs,actions,rewards,dones}, mask/<split>)")
    rm.add_argument("--out", required=True, help="dataset name (datasets/NAME.h5 + card) or .h5 path")
    rm.add_argument("--obs-keys", type=comma_list, default=None,
                    help="low-dimensional obs keys, in this order (default: every one, sorted)")
    rm.add_argument("--split", default=None, help="import only this mask's demos (e.g. train, valid)")
    rm.set_defaults(func=cmd_import_robomimic)
    add_rosbag_parser(dsub)
    add_lerobot_parsers(dsub)
