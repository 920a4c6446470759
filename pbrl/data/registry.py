"""Named datasets. ``datasets/NAME.toml`` (the card) says how the dataset was made and which files hold it.

Card fields::

    name = "hopper-medium-replay-small"
    env = "hopper"                                  # a preset in envs/
    trajectories = "hopper-medium-replay-small.h5"  # relative to the card
    preferences = "hopper-medium-replay-small.prefs.h5"   # optional
    description = "..."
    [made]          # exact commands, seeds, behaviour policy, teacher
    [checksums]     # sha256 of each file, checked on load
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w
import tomllib

from pbrl.data.preferences import PreferenceDataset, read_preferences, sha256_file
from pbrl.data.store import TrajectoryDataset, atomic_write_text, open_h5
from pbrl.errors import DatasetError, describe
from pbrl.paths import find_resource, list_resources


@dataclass
class LoadedDataset:
    name: str
    trajectories: TrajectoryDataset
    preferences: PreferenceDataset | None
    env: str
    card: dict[str, Any] = field(default_factory=dict)
    preferences_path: Path | None = None   # the file the preferences came from (None: no preferences loaded)

    def files(self) -> dict[str, tuple[Path, str]]:
        """``{"trajectories": (path, sha256), "preferences": (path, sha256)}`` of what was loaded (a card's recorded
        sums, checked on load, else the files' own)."""
        sums = self.card.get("checksums", {})
        out = {"trajectories": self.trajectories.path}
        if self.preferences is not None and self.preferences_path is not None:
            out["preferences"] = self.preferences_path
        return {k: (Path(v), sums.get(Path(v).name) or sha256_file(Path(v))) for k, v in out.items()}


def _d4rl_layout(path: Path) -> bool:
    with open_h5(path, "an existing .h5 dataset file") as f:
        return all(k in f for k in ("observations", "actions", "rewards", "terminals"))


def _file_format(path: Path) -> str | None:
    with open_h5(path, "an existing .h5 dataset file") as f:
        fmt = f.attrs.get("format")
    return fmt.decode() if isinstance(fmt, bytes) else fmt


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def is_hdf5(path: Path) -> bool:
    """An existing file that starts with the HDF5 signature, whatever its suffix."""
    try:
        with open(path, "rb") as f:
            return f.read(8) == HDF5_SIGNATURE
    except OSError:
        return False


def pbrl_format(path: Path) -> str | None:
    """The ``format`` attribute of the HDF5 file ``path`` (``pbrl.trajectories``, ``pbrl.preferences``, ...); None
    for a file that is not HDF5 or has none. Tells a command's own earlier output from an unrelated file."""
    if not is_hdf5(path):
        return None
    try:
        return _file_format(path)
    except DatasetError:
        return None


def load_dataset(name_or_path: str | os.PathLike, *, preferences: bool = True,
                 option: str = "--dataset") -> LoadedDataset:
    """Load a dataset by card name (``datasets/NAME.toml``), card path, or HDF5 file path (``.h5``, ``.hdf5`` or
    any name: an HDF5 file is recognised by its content).

    A preference file brings its trajectory file; a trajectory file alone has no preferences.
    ``preferences=False`` opens (and checks) only the trajectories, e.g. to label them anew. ``option`` is how the
    user gave the name (``--dataset``, or a command's positional ``dataset``): an unknown name is refused naming it.
    """
    s = str(name_or_path)
    path = Path(s)
    if path.suffix in (".h5", ".hdf5") or (path.suffix != ".toml" and path.is_file() and is_hdf5(path)):
        if not path.exists():
            raise DatasetError(describe(s, "file", "missing", "an existing .h5 dataset file"))
        fmt = _file_format(path)
        if fmt == "pbrl.preferences":
            prefs, traj = read_preferences(path)
            prefs = prefs if preferences else None
        elif fmt == "pbrl.trajectories":
            prefs, traj = None, TrajectoryDataset(path)
        elif _d4rl_layout(path):
            raise DatasetError(describe(s, "layout", "D4RL's (observations, actions, rewards, terminals)",
                                        f"a pbrl dataset: convert it once with `pbrl data import-d4rl {s} --env ENV "
                                        "--out NAME`"))
        else:
            raise DatasetError(describe(s, "attribute 'format'", repr(fmt), "'pbrl.trajectories' or 'pbrl.preferences'"))
        from pbrl.envs.registry import dataset_env

        name = path.name.removesuffix(path.suffix).removesuffix(".prefs")  # x.prefs.h5 -> x
        return LoadedDataset(name, traj, prefs, dataset_env(traj.env_id),
                             preferences_path=path if prefs is not None else None)
    card_path = path if path.suffix == ".toml" else find_resource("datasets", f"{s}.toml")
    if card_path is None or not card_path.exists():
        raise DatasetError(describe(option, "dataset", repr(s),
                                    f"a card name in datasets/ ({', '.join(list_resources('datasets')) or 'none found'}) "
                                    "or a path to a .h5 file"))
    return load_card(card_path, preferences=preferences)


def load_card(card_path: Path, *, preferences: bool = True) -> LoadedDataset:
    try:
        with open(card_path, "rb") as f:
            card = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise DatasetError(describe(str(card_path), "card", f"invalid TOML ({exc})", "a dataset card")) from None
    for key in ("trajectories", "env"):
        if key not in card:
            raise DatasetError(describe(str(card_path), f"field '{key}'", "missing", "present in every dataset card"))
    root = card_path.parent
    checksums = card.get("checksums", {})
    for fname, expected in checksums.items():
        if not preferences and fname == card.get("preferences"):
            continue
        fpath = root / fname
        if not fpath.exists():
            raise DatasetError(describe(str(fpath), "file", "missing", f"listed in {card_path.name}"))
        got = sha256_file(fpath)
        if got != expected:
            raise DatasetError(describe(str(fpath), "sha256", got[:16] + "…", f"{expected[:16]}… as recorded in {card_path.name}"))
    traj = TrajectoryDataset(root / card["trajectories"])
    prefs = None
    if preferences and card.get("preferences"):
        prefs, _ = read_preferences(root / card["preferences"], traj)
    return LoadedDataset(card.get("name", card_path.stem), traj, prefs, card["env"], card,
                         preferences_path=root / card["preferences"] if prefs is not None else None)


def write_card(card_path: Path, card: dict[str, Any]) -> Path:
    """Write a card atomically, filling ``[checksums]`` from the files it names and the media (videos, source HDF5
    files of camera frames) its trajectories refer to, by their paths relative to the card."""
    from pbrl.data.media import media_files

    root = card_path.parent
    card = dict(card)
    card["checksums"] = {card[k]: sha256_file(root / card[k]) for k in ("trajectories", "preferences") if card.get(k)}
    for file in media_files(root / card["trajectories"]) if card.get("trajectories") else []:
        card["checksums"][file] = sha256_file(root / file)
    return atomic_write_text(card_path, tomli_w.dumps(card))
