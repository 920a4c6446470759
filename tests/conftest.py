from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from pbrl.data.store import Episode, write_trajectories  # noqa: E402

torch.set_num_threads(1)


def make_episodes(lengths, obs_dim=3, act_dim=2, seed=0, terminated_every=2):
    rng = np.random.default_rng(seed)
    eps = []
    for i, n in enumerate(lengths):
        eps.append(Episode(
            observations=rng.standard_normal((n, obs_dim)).astype(np.float32),
            actions=rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
            rewards=rng.standard_normal(n).astype(np.float32),
            terminated=(i % terminated_every == 0),
            final_observation=rng.standard_normal(obs_dim).astype(np.float32),
            source=f"synthetic-{i}",
            infos={"reward_ctrl": rng.standard_normal(n).astype(np.float32)},
        ))
    return eps


@pytest.fixture
def traj_file(tmp_path):
    """A small synthetic trajectory file (episodes of 30, 5, 50 and 12 steps) for Hopper-v5's id."""
    path = tmp_path / "traj.h5"
    write_trajectories(path, make_episodes([30, 5, 50, 12]), env_id="Hopper-v5", behaviour_policy="synthetic", seed=0)
    return path


def write_episodes(path, lengths, seed=0):
    """A synthetic trajectory file with episodes of the given lengths, opened for reading."""
    from pbrl.data.store import TrajectoryDataset

    write_trajectories(path, make_episodes(lengths, seed=seed), env_id="Hopper-v5", behaviour_policy="b", seed=0)
    return TrajectoryDataset(path)
