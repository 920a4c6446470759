"""The top fraction of a dataset's episodes by true return, written as its own labelled dataset, so that BC on it
measures what imitation of the best data alone reaches (the "%BC" baseline of Chen et al., 2021;
``pbrl data topk``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pbrl.errors import ConfigError, describe


@dataclass
class TopDataset:
    """What :func:`write_top_dataset` wrote."""

    trajectories: Path
    preferences: Path
    episodes: int
    steps: int
    return_min: float
    return_max: float


def top_episodes(returns: np.ndarray, fraction: float) -> np.ndarray:
    """Indices (ascending) of the ``fraction`` of episodes with the highest return; at least two, so that pairs
    can come from different episodes."""
    keep = max(2, int(round(fraction * len(returns))))
    return np.sort(np.argsort(-returns)[:keep])


def top_dataset_paths(out: str | Path) -> tuple[Path, Path]:
    """The trajectory and preference files of the prefix ``out``: ``OUT.h5`` and ``OUT.prefs.h5``."""
    return Path(f"{out}.h5"), Path(f"{out}.prefs.h5")


def write_top_dataset(dataset: str, *, fraction: float, pairs: int, segment: int, out: str | Path) -> TopDataset:
    """Keep the ``fraction`` best episodes of ``dataset`` (a name in datasets/ or an .h5 path) by return and write
    them to ``OUT.h5``, with ``pairs`` return-teacher pairs of ``segment``-step segments in ``OUT.prefs.h5`` (BC
    samples segments from the pair table and ignores the labels). Nothing is written when an argument is refused,
    and neither file may exist yet."""
    from pbrl.data.pairing import make_preferences
    from pbrl.data.preferences import write_preferences
    from pbrl.data.registry import load_dataset
    from pbrl.data.store import TrajectoryDataset, write_trajectories

    if not 0.0 < fraction <= 1.0:
        raise ConfigError(describe("--fraction", "fraction", fraction, "a value in (0, 1]"))
    if pairs < 1 or segment < 1:
        raise ConfigError(describe("--pairs/--segment", "value", f"{pairs}/{segment}", "positive integers"))
    if str(out).endswith((".h5", ".hdf5")):
        raise ConfigError(describe("--out", "path prefix", str(out), "a prefix without a suffix (writes OUT.h5 and "
                                   "OUT.prefs.h5)"))
    traj_path, prefs_path = top_dataset_paths(out)
    for path in (traj_path, prefs_path):
        if path.exists():
            raise ConfigError(describe("--out", "file", f"{path} (exists)", "a new prefix (nothing is replaced)"))
    traj = load_dataset(dataset, preferences=False, option="dataset").trajectories
    returns = traj.episode_returns()
    keep = top_episodes(returns, fraction)
    longest = int(traj.episode_lengths[keep].max())
    if segment > longest:  # refused before anything is written: make_preferences would fail after the episodes
        raise ConfigError(describe("--segment", "segment length", segment, f"at most the longest kept episode "
                                   f"({longest} steps)"))
    episodes = [traj.episode(int(e)) for e in keep]
    traj_path.parent.mkdir(parents=True, exist_ok=True)
    write_trajectories(traj_path, episodes, env_id=traj.env_id, seed=0,
                       behaviour_policy=f"top {fraction:g} of {dataset}'s episodes by return")
    with TrajectoryDataset(traj_path) as top:
        prefs = make_preferences(top, pairs=pairs, segment=segment, seed=0)
        write_preferences(prefs_path, prefs, top, teacher={"name": "return"}, seed=0)
    return TopDataset(traj_path, prefs_path, episodes=len(episodes), steps=sum(len(e.actions) for e in episodes),
                      return_min=float(returns[keep].min()), return_max=float(returns[keep].max()))
