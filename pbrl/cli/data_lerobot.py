"""``pbrl data import-lerobot`` and ``export-lerobot``: LeRobot datasets (format v3.0) in and out, without LeRobot
(the conversion and the format mapping live in :mod:`pbrl.data.lerobot`)."""

from __future__ import annotations

import argparse


def cmd_import_lerobot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pbrl.cli.data_formats import write_imported
    from pbrl.data.lerobot import import_lerobot

    folder = Path(args.folder)
    return write_imported(args, lambda p: import_lerobot(folder, p),
                          f"imported from LeRobot dataset {folder.resolve().name} (camera frames stay in its MP4 files)")


def cmd_export_lerobot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pbrl.cli.data_formats import writable_out
    from pbrl.data.lerobot import export_lerobot
    from pbrl.data.registry import load_dataset
    from pbrl.errors import ConfigError, describe

    out = Path(args.out)
    if out.exists() or out.is_symlink():
        raise ConfigError(describe("--out", "folder", f"{out} (exists)", "a new folder (an export never replaces one)"))
    writable_out("--out", out)  # its parent can be written (missing folders are made)
    if args.fps is not None and not args.fps > 0:
        raise ConfigError(describe("--fps", "frames per second", args.fps, "a positive whole number"))
    data = load_dataset(args.dataset, preferences=False, option="dataset")
    path = export_lerobot(data.trajectories, out, fps=args.fps, robot_type=args.robot_type, task=args.task,
                          crf=args.crf)
    ds = data.trajectories
    print(f"wrote {path} (LeRobot v3.0: {ds.num_episodes} episodes, {ds.num_transitions} frames"
          + (f", cameras {', '.join(ds.cameras)} as H.264 MP4" if ds.cameras else "") + ")")
    return 0


def add_lerobot_parsers(dsub: argparse._SubParsersAction) -> None:
    im = dsub.add_parser("import-lerobot", help="convert a local LeRobot dataset folder (format v3.0; camera videos "
                         "are referred to, not copied)")
    im.add_argument("folder", help="the dataset folder (meta/info.json, data/, videos/)")
    im.add_argument("--out", required=True, help="dataset name (datasets/NAME.h5 + card) or .h5 path")
    im.set_defaults(func=cmd_import_lerobot)
    ex = dsub.add_parser("export-lerobot", help="write a dataset as a LeRobot v3.0 folder (parquet + H.264 MP4 per "
                         "camera)")
    ex.add_argument("dataset", help="dataset name or .h5 path")
    ex.add_argument("--out", required=True, help="a new folder")
    ex.add_argument("--fps", type=int, default=None,
                    help="frames per second (default: the dataset's metadata 'fps', else 10)")
    ex.add_argument("--robot-type", default=None,
                    help="info.json robot_type (default: the imported one, else the dataset's env id)")
    ex.add_argument("--task", default=None, help="the one task string of every episode (default: 'pbrl export')")
    ex.add_argument("--crf", type=int, default=18, help="H.264 quality of the camera videos, 0 (best) to 51")
    ex.set_defaults(func=cmd_export_lerobot)
