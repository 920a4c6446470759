"""A small labelled control dataset whose right answer is known, for tests and the scale-out benchmarks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pbrl.data.pairing import make_preferences
from pbrl.data.preferences import write_preferences
from pbrl.data.store import Episode, TrajectoryDataset, write_trajectories


def two_behaviour_dataset(folder: str | os.PathLike, episodes: int = 40, length: int = 24, seed: int = 0,
                          pairs: int = 400) -> str:
    """``folder/two.h5`` and its labels ``folder/two.prefs.h5`` (returned): half the episodes act a ≈ +0.6 (reward 1
    per step), half a ≈ −0.6 (reward 0), on random 3-D observations; ``pairs`` pairs of 8-step segments labelled by
    their returns. The preferred behaviour is known, a > 0: BC on everything learns the average (≈ 0), a preference
    learner must learn a > 0."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    eps = []
    for i in range(episodes):
        good = i % 2 == 0
        obs = rng.standard_normal((length, 3)).astype(np.float32)
        act = np.clip((0.6 if good else -0.6) + 0.1 * rng.standard_normal((length, 1)), -1, 1).astype(np.float32)
        eps.append(Episode(obs, act, np.full(length, 1.0 if good else 0.0, np.float32), False,
                           rng.standard_normal(3).astype(np.float32), "good" if good else "bad"))
    traj_path = write_trajectories(folder / "two.h5", eps, env_id="Hopper-v5", behaviour_policy="two", seed=seed)
    ds = TrajectoryDataset(traj_path)
    prefs = make_preferences(ds, pairs=pairs, segment=8, seed=seed)
    return str(write_preferences(folder / "two.prefs.h5", prefs, ds, teacher={"name": "scripted"}, seed=seed))
