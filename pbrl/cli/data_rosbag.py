"""``pbrl data import-rosbag BAG --map MAPPING.toml --out NAME|PATH``: a ROS 2 bag as a trajectory dataset (the
conversion, the mapping format and the alignment rule are in :mod:`pbrl.data.rosbag`)."""

from __future__ import annotations

import argparse
from pathlib import Path

MAP_HELP = """\
mapping file (TOML), e.g.:
  rate_hz = 10                          # one step every 1 / rate_hz s (zero-order hold of every topic)
  episode_gap_s = 1.0                   # optional: an action gap longer than this starts a new episode
  [observation]
  "/joint_states" = ["position", "velocity"]
  [action]
  "/cmd_vel" = ["linear.x", "angular.z"]
  [camera]                              # optional: frames go to <out>.media.h5
  front = "/camera/image_raw"
"""


def cmd_import_rosbag(args: argparse.Namespace) -> int:
    from pbrl.cli.data_formats import write_imported
    from pbrl.data.rosbag import import_rosbag, read_mapping

    mapping = read_mapping(args.map)  # a bad mapping is refused before --out is looked at or the bag is read
    bag = Path(args.bag)
    return write_imported(args, lambda p: import_rosbag(bag, mapping, p),
                          f"imported from ROS 2 bag {bag.name} with mapping {Path(args.map).name} "
                          f"at {mapping.rate_hz:g} Hz")


def add_rosbag_parser(dsub: argparse._SubParsersAction) -> None:
    """``pbrl data import-rosbag``."""
    from pbrl.cli.common import FORMATTER

    rb = dsub.add_parser("import-rosbag", help="convert a ROS 2 bag (rosbag2 folder, MCAP or sqlite3) by a "
                         "topic mapping; camera frames go to a sidecar <out>.media.h5", epilog=MAP_HELP,
                         formatter_class=FORMATTER)
    rb.add_argument("bag", help="rosbag2 folder (metadata.yaml + .mcap or .db3 files)")
    rb.add_argument("--map", required=True, help="mapping TOML: rate_hz, [observation], [action], optional [camera], "
                    "[reward], episode_gap_s, max_staleness_s, stamp, env (see pbrl.data.rosbag)")
    rb.add_argument("--out", required=True, help="dataset name (datasets/NAME.h5 + card) or .h5 path")
    rb.set_defaults(func=cmd_import_rosbag)
