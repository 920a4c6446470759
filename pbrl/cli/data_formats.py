"""``pbrl data import-*`` and ``export-*``: trajectories from and to D4RL's HDF5 layout and Minari, the Overcooked-AI
human trials, and human labels as JSON Lines or CSV (the conversions live in :mod:`pbrl.data.formats`)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from pbrl.cli.common import dataset_out, invoked_command, output_file


def writable_out(option: str, path: str | Path, *, suffixes: tuple[str, ...] = (), replace: bool = False,
                 owned: Callable[[Path], bool] | None = None, make_folders: bool = True) -> Path:
    """:func:`~pbrl.cli.common.output_file` for the data commands, which make the folders of their output as
    they write it (``--out runs/topbc/top0.1``): with ``make_folders``, a missing folder is fine where its nearest
    existing ancestor is a folder this user can write to. Checked before any work, so nothing is left behind."""
    from pbrl.errors import ConfigError, describe

    out = Path(path)
    parent = out.parent if str(out.parent) else Path(".")
    if make_folders and not parent.exists() and not parent.is_symlink():
        ancestor = next(p for p in (*parent.parents, Path(".")) if p.exists())
        if ancestor.is_dir():
            if suffixes and out.suffix.lower() not in suffixes:
                raise ConfigError(describe(option, "file", str(path), f"a {' or '.join(suffixes)} file"))
            if not os.access(ancestor, os.W_OK | os.X_OK):
                raise ConfigError(describe(option, "file", f"{path}, in {ancestor}, not writable by this user",
                                           "a place this user can write"))
            return out
    return output_file(option, out, suffixes=suffixes, replace=replace, owned=owned)


def writable_dataset_out(out: str, suffix: str, *, owned: Callable[[Path], bool] | None = None
                         ) -> tuple[Path, Path | None]:
    """:func:`~pbrl.cli.common.dataset_out` for ``--out``, both files checked before any work: the dataset file
    (an existing one only where ``owned`` says it is this command's to replace) and its card (rewritten with it)."""
    path, card = dataset_out(out, suffix)
    writable_out("--out", path, owned=owned)
    if card is not None:
        writable_out("--out", card, replace=True)
    return path, card


def write_imported(args: argparse.Namespace, write: Callable[[Path], object], description: str) -> int:
    """Run ``write(path)`` for ``--out`` (a name gets a card) and report; an existing file is never replaced."""
    from pbrl.data.registry import write_card
    from pbrl.data.store import TrajectoryDataset
    from pbrl.envs.registry import dataset_env

    path, card = writable_dataset_out(args.out, ".h5")
    write(path)
    if card is not None:
        with TrajectoryDataset(path) as ds:
            env = dataset_env(ds.env_id)
        write_card(card, {"name": args.out, "env": env, "trajectories": path.name, "description": description,
                          "made": {"command": invoked_command()}})
    print(f"wrote {path}" + (f" and {card}" if card else ""))
    return 0


def cmd_import_d4rl(args: argparse.Namespace) -> int:
    from pbrl.data.formats import import_d4rl
    from pbrl.envs.registry import get_env_spec

    env_id = get_env_spec(args.env).id
    return write_imported(args, lambda p: import_d4rl(args.file, p, env_id=env_id), f"imported from {args.file}")


def cmd_import_overcooked(args: argparse.Namespace) -> int:
    from pbrl.data.overcooked_trials import human_trials
    from pbrl.data.store import write_trajectories

    writable_dataset_out(args.out, ".h5")  # an unusable --out is refused before the conversion replays every step
    trials = human_trials(args.layout, args.split, args.pickle)

    def write(path: Path) -> Path:
        return write_trajectories(path, trials.episodes, env_id=trials.env_id, seed=0, metadata=trials.metadata,
                                  behaviour_policy=f"human-human trials of Carroll et al. 2019 ({args.split} split)")

    print(trials.summary())
    return write_imported(args, write, f"Overcooked-AI human-human trials ({args.split} split), {args.layout}, "
                          "one trajectory per game and player")


def cmd_import_minari(args: argparse.Namespace) -> int:
    from pbrl.data.formats import import_minari

    return write_imported(args, lambda p: import_minari(args.dataset_id, p, root=args.root, env_id=args.env),
                          f"imported from Minari dataset {args.dataset_id}")


def cmd_export_minari(args: argparse.Namespace) -> int:
    from pbrl.data.formats import export_minari
    from pbrl.data.registry import load_dataset

    data = load_dataset(args.dataset, preferences=False, option="dataset")
    print(f"wrote {export_minari(data.trajectories, args.dataset_id, root=args.root)}")
    return 0


def cmd_export_d4rl(args: argparse.Namespace) -> int:
    from pbrl.data.formats import export_d4rl
    from pbrl.data.registry import load_dataset

    out = writable_out("--out", args.out, make_folders=False)  # a second export to it is refused as it commits
    data = load_dataset(args.dataset, preferences=False, option="dataset")
    print(f"wrote {export_d4rl(data.trajectories, out)}")
    return 0


def cmd_import_labels(args: argparse.Namespace) -> int:
    from pbrl.data.formats import import_labels
    from pbrl.data.preferences import write_preferences
    from pbrl.data.registry import load_dataset, write_card
    from pbrl.errors import ConfigError, describe

    path, card = writable_dataset_out(args.out, ".prefs.h5")  # an existing file is never replaced
    data = load_dataset(args.dataset, preferences=False)
    if card is not None and path.parent.resolve() != data.trajectories.path.parent.resolve():
        raise ConfigError(describe("--out", "name", args.out, "a name for a dataset whose trajectories live in datasets/"))
    prefs = import_labels(args.file, data.trajectories)
    write_preferences(path, prefs, data.trajectories, teacher={"name": "human", "source": str(args.file)}, seed=0)
    if card is not None:
        write_card(card, {"name": args.out, "env": data.env, "trajectories": data.trajectories.path.name,
                          "preferences": path.name, "description": f"human labels from {Path(args.file).name}",
                          "made": {**data.card.get("made", {}), "label_command": invoked_command(),
                                   "teacher": {"name": "human"}}})
    print(f"imported {len(prefs)} labels: wrote {path}" + (f" and {card}" if card else ""))
    return 0


def cmd_export_labels(args: argparse.Namespace) -> int:
    from pbrl.data.formats import export_labels
    from pbrl.data.registry import load_dataset
    from pbrl.errors import DatasetError, describe

    out = writable_out("--out", args.out, suffixes=(".jsonl", ".csv"))  # an existing file is never replaced
    data = load_dataset(args.dataset, option="dataset")
    if data.preferences is None:
        raise DatasetError(describe(args.dataset, "preferences", "none", "a dataset with labels"))
    print(f"wrote {export_labels(data.preferences, out)}")
    return 0


def add_parsers(dsub: argparse._SubParsersAction) -> None:
    """The import and export subcommands of ``pbrl data``, in the order `pbrl data --help` lists them."""
    d4 = dsub.add_parser("import-d4rl", help="convert a D4RL-format HDF5 file (no d4rl package needed)")
    d4.add_argument("file", help="HDF5 file with observations, actions, rewards, terminals, timeouts[, infos/*]")
    d4.add_argument("--env", required=True, help="env preset or gymnasium id the data comes from, e.g. hopper")
    d4.add_argument("--out", required=True, help="dataset name (datasets/NAME.h5 + card) or .h5 path")
    d4.set_defaults(func=cmd_import_d4rl)
    mi = dsub.add_parser("import-minari", help="convert a local Minari dataset")
    mi.add_argument("dataset_id", help="e.g. pbrl/hopper-mr-v0")
    mi.add_argument("--root", default=None, help="Minari datasets folder (default: $MINARI_DATASETS_PATH or ~/.minari)")
    mi.add_argument("--env", default=None, help="env preset; checked against the dataset's spaces")
    mi.add_argument("--out", required=True, help="dataset name or .h5 path")
    mi.set_defaults(func=cmd_import_minari)
    oc = dsub.add_parser("import-overcooked", help="the Overcooked-AI human-human trials (Carroll et al. 2019) of one "
                         "layout and split: one trajectory per game and player, worker and round kept")
    oc.add_argument("--layout", required=True, help="cramped_room | asymmetric_advantages | coordination_ring | "
                    "random0 (forced coordination) | random3 (counter circuit)")
    oc.add_argument("--split", default="train", choices=["train", "test"])
    oc.add_argument("--pickle", default=None, help="a trials pickle (default: the one overcooked-ai 1.1.0 installed)")
    oc.add_argument("--out", required=True, help="dataset name (datasets/NAME.h5 + card) or .h5 path")
    oc.set_defaults(func=cmd_import_overcooked)
    me = dsub.add_parser("export-minari", help="write a dataset's trajectories as a local Minari dataset")
    me.add_argument("dataset", help="dataset name or .h5 path")
    me.add_argument("--dataset-id", required=True, help="Minari id, e.g. pbrl/hopper-mr-v0")
    me.add_argument("--root", default=None, help="Minari datasets folder")
    me.set_defaults(func=cmd_export_minari)
    il = dsub.add_parser("import-labels", help="import human labels (JSON Lines or CSV; see pbrl.data.formats)")
    il.add_argument("file", help=".jsonl or .csv with query_id, a_episode, a_start, a_length, b_…, choice, annotator, group, timestamp")
    il.add_argument("--dataset", required=True, help="the trajectory dataset the segments refer to")
    il.add_argument("--out", required=True, help="name (datasets/NAME.prefs.h5 + card) or .h5 path")
    il.set_defaults(func=cmd_import_labels)
    ed = dsub.add_parser("export-d4rl", help="write a dataset's trajectories in D4RL's HDF5 layout (d3rlpy, CORL)")
    ed.add_argument("dataset", help="dataset name or .h5 path")
    ed.add_argument("--out", required=True, help="a new .hdf5 path")
    ed.set_defaults(func=cmd_export_d4rl)
    el = dsub.add_parser("export-labels", help="export a dataset's labels as JSON Lines or CSV")
    el.add_argument("dataset", help="dataset name or preference .h5 path")
    el.add_argument("--out", required=True, help="a .jsonl or .csv path")
    el.set_defaults(func=cmd_export_labels)
