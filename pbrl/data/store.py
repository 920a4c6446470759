"""Trajectory datasets on disk: one HDF5 file per dataset, written atomically, read lazily.

Schema (format ``pbrl.trajectories``, version 1); N transitions, E episodes:

====================  ==============  ==========================================================
key                   shape / dtype   meaning
====================  ==============  ==========================================================
observations          [N, obs_dim] f4  observation before each action
actions               [N, act_dim] f4  action taken
rewards               [N] f4           reward received
terminations          [N] bool         episode ended in a terminal state at this step
truncations           [N] bool         episode was cut (time limit, end of logging) at this step
episode_offsets       [E + 1] i8       episode e spans rows ``offsets[e]:offsets[e+1]``
final_observations    [E, obs_dim] f4  observation after the last step of each episode
episode_sources       [E] str          which behaviour produced the episode (e.g. ``medium@200k``)
infos/<key>           [N] f4           optional per-step extras (reward terms, success flags)
splits/<name>         [K] i8           optional named episode subsets (robomimic's ``mask/train``, ``mask/valid``)
media/<camera>/...                     optional camera frames, as references (:mod:`pbrl.data.media`)
====================  ==============  ==========================================================

File attributes: ``format``, ``format_version``, ``env_id``, ``behaviour_policy``, ``seed``,
``pbrl_version``, ``created`` and any extra metadata given at write time (stored as JSON strings).
The next observation of row i is row i+1 inside an episode, and ``final_observations[e]`` at its end.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

import pbrl
from pbrl.errors import DatasetError, describe
from pbrl.fields import short_repr
from pbrl.io import atomic_path, atomic_write_text, commit_atomic  # noqa: F401  (re-exported)

FORMAT = "pbrl.trajectories"
FORMAT_VERSION = 1
_STEP_KEYS = ("observations", "actions", "rewards", "terminations", "truncations")


@dataclass
class Episode:
    """One episode as numpy arrays. ``observations`` [T, obs_dim], ``actions`` [T, act_dim], ``rewards`` [T]."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: bool
    final_observation: np.ndarray
    source: str = ""
    infos: dict[str, np.ndarray] = field(default_factory=dict)
    media: dict[str, Any] = field(default_factory=dict)   # camera -> pbrl.data.media.FrameRef (robot logs)

    def __len__(self) -> int:
        return len(self.rewards)


def open_h5(path: Path, expected: str) -> h5py.File:
    """Open an HDF5 file for reading, or raise DatasetError naming it (missing, or not HDF5)."""
    if not path.exists():
        raise DatasetError(describe(str(path), "file", "missing", expected))
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(describe(str(path), "file", f"unreadable ({exc.__class__.__name__}: {exc})",
                                    "a valid HDF5 file")) from None


def commit_new(tmp: Path, path: Path) -> None:
    """Put a finished temporary file in place of ``path`` only if no file is there: a hard link is created or
    fails at once, so of two processes writing one path the second gets FileExistsError instead of silently
    replacing the first one's file (a check before the work cannot see a file written meanwhile)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: the check and the move are then two steps
        if path.exists():
            raise FileExistsError(17, "File exists", str(path)) from None
        os.replace(tmp, path)
        return
    tmp.unlink()


@contextlib.contextmanager
def atomic_h5(path: Path, fmt: str, version: int, *, replace: bool = True) -> Iterator[h5py.File]:
    """An HDF5 file opened for writing at a temporary sibling of ``path``, moved into place only if the block
    finishes; stamps ``format``, ``format_version``, ``pbrl_version`` and ``created``. ``replace=False`` never
    replaces an existing ``path`` (FileExistsError, see :func:`commit_new`)."""
    tmp = atomic_path(path)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = fmt
            f.attrs["format_version"] = version
            f.attrs["pbrl_version"] = pbrl.__version__
            f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            yield f
        if replace:
            commit_atomic(tmp, path)
        else:
            commit_new(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _json_attr(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool, np.integer, np.floating)):
        return value
    return json.dumps(value, sort_keys=True)


def write_trajectories(
    path: str | os.PathLike,
    episodes: Sequence[Episode],
    *,
    env_id: str,
    behaviour_policy: str,
    seed: int,
    metadata: Mapping[str, Any] | None = None,
    compression: str | None = "gzip",
    splits: Mapping[str, Sequence[int]] | None = None,
) -> Path:
    """Write ``episodes`` to ``path`` atomically (temp file + rename) and return the path. ``splits``: named
    episode subsets (episode indices); episodes' ``media`` become frame references (:mod:`pbrl.data.media`).

    Raises DatasetError before anything is written if the episodes are inconsistent.
    """
    path = Path(path)
    if not episodes:
        raise DatasetError(describe(str(path), "episodes", 0, "at least one episode"))
    obs_dim = episodes[0].observations.shape[1:]
    act_dim = episodes[0].actions.shape[1:]
    info_keys = sorted(episodes[0].infos)
    for i, ep in enumerate(episodes):
        n = len(ep.rewards)
        where = f"{path} (episode {i})"
        if n == 0:
            raise DatasetError(describe(where, "length", 0, "at least one step"))
        if ep.observations.shape != (n, *obs_dim) or ep.actions.shape != (n, *act_dim):
            raise DatasetError(describe(where, "observations/actions shape",
                                        f"{ep.observations.shape}/{ep.actions.shape}",
                                        f"({n}, {obs_dim})/({n}, {act_dim})"))
        if sorted(ep.infos) != info_keys:
            raise DatasetError(describe(where, "infos keys", sorted(ep.infos), info_keys))
        if not np.all(np.isfinite(ep.rewards)):
            raise DatasetError(describe(where, "rewards", "non-finite values", "finite floats"))
    for name, members in (splits or {}).items():
        members = np.asarray(members, np.int64)
        if members.ndim != 1 or (len(members) and (members.min() < 0 or members.max() >= len(episodes))):
            raise DatasetError(describe(f"{path} (split {name!r})", "episodes", short_repr(members.tolist()),
                                        f"episode indices from 0 to {len(episodes) - 1}"))
    offsets = np.zeros(len(episodes) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(ep) for ep in episodes])
    terminations = np.zeros(offsets[-1], dtype=bool)
    truncations = np.zeros(offsets[-1], dtype=bool)
    for e, ep in enumerate(episodes):
        last = offsets[e + 1] - 1
        terminations[last] = ep.terminated
        truncations[last] = not ep.terminated
    kw = {"compression": compression} if compression else {}
    with atomic_h5(path, FORMAT, FORMAT_VERSION) as f:
        f.attrs["env_id"] = env_id
        f.attrs["behaviour_policy"] = behaviour_policy
        f.attrs["seed"] = int(seed)
        for k, v in (metadata or {}).items():
            f.attrs[k] = _json_attr(v)
        f.create_dataset("observations", data=np.concatenate([e.observations for e in episodes]).astype(np.float32), **kw)
        f.create_dataset("actions", data=np.concatenate([e.actions for e in episodes]).astype(np.float32), **kw)
        f.create_dataset("rewards", data=np.concatenate([e.rewards for e in episodes]).astype(np.float32), **kw)
        f.create_dataset("terminations", data=terminations, **kw)
        f.create_dataset("truncations", data=truncations, **kw)
        f.create_dataset("episode_offsets", data=offsets)
        f.create_dataset("final_observations", data=np.stack([e.final_observation for e in episodes]).astype(np.float32), **kw)
        f.create_dataset("episode_sources", data=np.array([e.source for e in episodes], dtype=h5py.string_dtype()))
        for k in info_keys:
            f.create_dataset(f"infos/{k}", data=np.concatenate([e.infos[k] for e in episodes]).astype(np.float32), **kw)
        for name, members in (splits or {}).items():
            f.create_dataset(f"splits/{name}", data=np.asarray(members, np.int64))
        if any(ep.media for ep in episodes):
            from pbrl.data.media import write_media

            write_media(f, episodes, path.parent)
    return path


class TrajectoryDataset:
    """A read-only, lazily loaded view of a trajectory HDF5 file.

    Opening validates the schema (keys, shapes, offsets, finite rewards) and raises DatasetError with the
    file, field, found and expected values. Arrays are read from disk on first access and cached.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._cache: dict[str, np.ndarray] = {}
        self._file = open_h5(self.path, "an existing pbrl trajectory HDF5 file")
        try:
            self._validate()
        except Exception:
            self._file.close()
            raise

    # -- validation ----------------------------------------------------------------------------------
    def _fail(self, field_: str, got: object, expected: str) -> None:
        raise DatasetError(describe(str(self.path), field_, got, expected))

    def _validate(self) -> None:
        f = self._file
        fmt = f.attrs.get("format")
        if fmt != FORMAT:
            self._fail("attribute 'format'", repr(fmt), repr(FORMAT))
        version = int(f.attrs.get("format_version", -1))
        if version != FORMAT_VERSION:
            self._fail("attribute 'format_version'", version, str(FORMAT_VERSION))
        for key in (*_STEP_KEYS, "episode_offsets", "final_observations"):
            if key not in f:
                self._fail(f"key '{key}'", "missing", "present (see pbrl.data.store schema)")
        n = f["rewards"].shape[0]
        for key in _STEP_KEYS:
            if f[key].shape[0] != n:
                self._fail(f"'{key}' length", f[key].shape[0], f"{n} (the length of 'rewards')")
        if f["observations"].ndim != 2 or f["actions"].ndim != 2:
            self._fail("'observations'/'actions' rank", f"{f['observations'].ndim}/{f['actions'].ndim}", "2/2")
        offsets = f["episode_offsets"][()]
        if offsets.ndim != 1 or len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != n or np.any(np.diff(offsets) <= 0):
            self._fail("'episode_offsets'", f"{offsets[:3]}...{offsets[-2:]} (len {len(offsets)})",
                       f"strictly increasing from 0 to {n}")
        e = len(offsets) - 1
        if f["final_observations"].shape != (e, f["observations"].shape[1]):
            self._fail("'final_observations' shape", f["final_observations"].shape, f"({e}, {f['observations'].shape[1]})")
        if "episode_sources" in f and f["episode_sources"].shape[0] != e:
            self._fail("'episode_sources' length", f["episode_sources"].shape[0], str(e))
        for key in f.get("infos", {}):
            if f[f"infos/{key}"].shape[0] != n:
                self._fail(f"'infos/{key}' length", f[f"infos/{key}"].shape[0], str(n))
        for cam in f.get("media", {}):
            for key in ("clip", "frame"):
                if f"media/{cam}/{key}" not in f or f[f"media/{cam}/{key}"].shape != (n,):
                    self._fail(f"'media/{cam}/{key}'", "missing or of another length", f"[{n}] (one per step)")
        rewards = self.rewards
        if not np.all(np.isfinite(rewards)):
            bad = int(np.flatnonzero(~np.isfinite(rewards))[0])
            self._fail("'rewards'", f"non-finite value {rewards[bad]} at row {bad}", "finite floats")
        ends = self.terminations | self.truncations
        if not np.all(ends[offsets[1:] - 1]):
            bad = int(np.flatnonzero(~ends[offsets[1:] - 1])[0])
            self._fail("'terminations'/'truncations'", f"episode {bad} ends with neither flag set",
                       "the last step of each episode terminated or truncated")

    # -- access --------------------------------------------------------------------------------------
    def _array(self, key: str) -> np.ndarray:
        if key not in self._cache:
            self._cache[key] = self._file[key][()]
        return self._cache[key]

    @property
    def observations(self) -> np.ndarray:
        return self._array("observations")

    @property
    def actions(self) -> np.ndarray:
        return self._array("actions")

    @property
    def rewards(self) -> np.ndarray:
        return self._array("rewards")

    @property
    def terminations(self) -> np.ndarray:
        return self._array("terminations")

    @property
    def truncations(self) -> np.ndarray:
        return self._array("truncations")

    @property
    def episode_offsets(self) -> np.ndarray:
        return self._array("episode_offsets")

    @property
    def final_observations(self) -> np.ndarray:
        return self._array("final_observations")

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(self.episode_offsets)

    @property
    def episode_sources(self) -> list[str]:
        if "episode_sources" not in self._file:
            return [""] * self.num_episodes
        return [s.decode() if isinstance(s, bytes) else str(s) for s in self._array("episode_sources")]

    @property
    def info_keys(self) -> list[str]:
        return sorted(self._file.get("infos", {}))

    def info(self, key: str) -> np.ndarray:
        if key not in self.info_keys:
            self._fail(f"'infos/{key}'", "missing", f"one of {self.info_keys}")
        return self._array(f"infos/{key}")

    @property
    def splits(self) -> dict[str, np.ndarray]:
        """Named episode subsets, ``{name: [K] episode indices}`` (empty where the file has none)."""
        return {k: self._file[f"splits/{k}"][()] for k in self._file.get("splits", {})}

    @property
    def cameras(self) -> list[str]:
        """The cameras whose frames the file refers to (:mod:`pbrl.data.media`); empty for simulator rollouts."""
        return sorted(self._file.get("media", {}))

    def frame_reader(self):
        """A :class:`pbrl.data.media.FrameReader` of this file's camera frames (decoded on demand)."""
        from pbrl.data.media import FrameReader

        return FrameReader(self.path)

    @property
    def num_transitions(self) -> int:
        return int(self._file["rewards"].shape[0])

    @property
    def num_episodes(self) -> int:
        return int(self._file["episode_offsets"].shape[0] - 1)

    @property
    def obs_dim(self) -> int:
        return int(self._file["observations"].shape[1])

    @property
    def act_dim(self) -> int:
        return int(self._file["actions"].shape[1])

    @property
    def metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in self._file.attrs.items():
            if isinstance(v, bytes):
                v = v.decode()
            if isinstance(v, str) and v[:1] in "[{":
                try:
                    v = json.loads(v)
                except json.JSONDecodeError:
                    pass
            out[k] = v.item() if isinstance(v, np.generic) else v
        return out

    @property
    def env_id(self) -> str:
        return str(self.metadata["env_id"])

    def episode_returns(self) -> np.ndarray:
        """Undiscounted return of each episode, [E]."""
        return np.add.reduceat(self.rewards.astype(np.float64), self.episode_offsets[:-1])

    def episode(self, e: int) -> Episode:
        if not 0 <= e < self.num_episodes:
            self._fail("episode index", e, f"0 <= index < {self.num_episodes}")
        lo, hi = self.episode_offsets[e], self.episode_offsets[e + 1]
        return Episode(self.observations[lo:hi], self.actions[lo:hi], self.rewards[lo:hi],
                       bool(self.terminations[hi - 1]), self.final_observations[e], self.episode_sources[e],
                       {k: self.info(k)[lo:hi] for k in self.info_keys})

    def __iter__(self) -> Iterator[Episode]:
        for e in range(self.num_episodes):
            yield self.episode(e)

    def __len__(self) -> int:
        return self.num_episodes

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> TrajectoryDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"TrajectoryDataset({self.path.name}: env={self.env_id}, episodes={self.num_episodes}, "
                f"transitions={self.num_transitions})")
