"""Transition and window batches, for agents that need more than preference pairs.

- :class:`TransitionSampler` -> :class:`TransitionBatch` ``(obs, act, reward, next_obs, done)``: IQL and the
  reward-model baselines (the reward is the true one or a learned relabelling);
- :class:`WindowSampler` -> :class:`WindowBatch` ``(obs [B,K,do], act [B,K,da], timestep [B,K], mask [B,K])``:
  sequence models (Decision-Transformer-style policies, OPPO).

Both hold the dataset in tensors on the training device and gather a batch in one indexing step, with a
``torch.Generator`` whose state goes into checkpoints (exact resume).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from pbrl.data.sampling import Sampler
from pbrl.data.store import TrajectoryDataset
from pbrl.errors import DatasetError, describe


def next_observations(trajectories: TrajectoryDataset) -> np.ndarray:
    """``s'`` of every row ``[N, obs_dim]``: the next row inside an episode, the final observation at its end."""
    obs = trajectories.observations
    nxt = np.empty_like(obs)
    nxt[:-1] = obs[1:]
    nxt[trajectories.episode_offsets[1:] - 1] = trajectories.final_observations
    return nxt


def returns_scale(trajectories: TrajectoryDataset, rewards: np.ndarray | None = None) -> float:
    """IQL's locomotion reward scale ``1000 / (max episode return − min episode return)`` (Kostrikov et al.,
    2021, appendix B; CORL's ``modify_reward``), computed over the dataset's episodes."""
    r = trajectories.rewards.astype(np.float64) if rewards is None else np.asarray(rewards, np.float64)
    returns = np.add.reduceat(r, trajectories.episode_offsets[:-1])
    spread = float(returns.max() - returns.min())
    return 1000.0 / spread if spread > 0 else 1.0


def check_rewards(trajectories: TrajectoryDataset, rewards: np.ndarray, where: str) -> None:
    if rewards.shape != (trajectories.num_transitions,):
        raise DatasetError(describe(where, "rewards shape", rewards.shape, f"({trajectories.num_transitions},)"))
    if not np.isfinite(rewards).all():
        i = int(np.flatnonzero(~np.isfinite(rewards))[0])
        raise DatasetError(describe(where, f"reward at row {i}", rewards[i], "a finite value"))
    if trajectories.metadata.get("rewards") == "none" or not np.any(rewards):
        raise DatasetError(describe(where, "rewards", "none (all zero or marked absent)",
                                    "a dataset with true rewards (learn one with iql-mr / iql-pt from labels)"))


@dataclass
class TransitionBatch:
    """``obs`` [B, obs_dim], ``act`` [B, act_dim], ``reward`` [B], ``next_obs`` [B, obs_dim], ``done`` [B] (1.0 at a
    terminal step: no bootstrapping; a time-limit truncation is not done)."""

    obs: Tensor
    act: Tensor
    reward: Tensor
    next_obs: Tensor
    done: Tensor


class TransitionSampler(Sampler):
    """Uniform transitions of a trajectory dataset, with ``rewards`` (the true ones by default) times ``scale``."""

    def __init__(self, trajectories: TrajectoryDataset, *, rewards: np.ndarray | None = None, scale: float = 1.0,
                 device: str | torch.device = "cpu", seed: int = 0):
        self.device = torch.device(device)
        r = trajectories.rewards if rewards is None else rewards
        self.obs = torch.as_tensor(trajectories.observations, device=self.device)
        self.act = torch.as_tensor(trajectories.actions, device=self.device)
        self.next_obs = torch.as_tensor(next_observations(trajectories), device=self.device)
        self.reward = torch.as_tensor(np.asarray(r, np.float64) * scale, dtype=torch.float32, device=self.device)
        self.done = torch.as_tensor(trajectories.terminations, dtype=torch.float32, device=self.device)
        self._seed(seed)

    def __len__(self) -> int:
        return len(self.reward)

    def batch(self, index: Tensor) -> TransitionBatch:
        return TransitionBatch(self.obs[index], self.act[index], self.reward[index], self.next_obs[index], self.done[index])



@dataclass
class WindowBatch:
    """``obs`` [B, K, obs_dim], ``act`` [B, K, act_dim], ``reward`` [B, K], ``timestep`` [B, K] (step within the
    episode), ``mask`` [B, K] (True on real steps; windows near an episode's start are left-padded)."""

    obs: Tensor
    act: Tensor
    reward: Tensor
    timestep: Tensor
    mask: Tensor


class WindowSampler(Sampler):
    """Windows of the ``context`` steps ending at a uniformly drawn step, never crossing an episode start."""

    def __init__(self, trajectories: TrajectoryDataset, *, context: int, device: str | torch.device = "cpu",
                 seed: int = 0):
        if context < 1:
            raise DatasetError(describe(str(trajectories.path), "window context", context, "a positive integer"))
        self.device = torch.device(device)
        self.context = context
        self.obs = torch.as_tensor(trajectories.observations, device=self.device)
        self.act = torch.as_tensor(trajectories.actions, device=self.device)
        self.reward = torch.as_tensor(trajectories.rewards, device=self.device)
        offsets = trajectories.episode_offsets
        start = np.repeat(offsets[:-1], np.diff(offsets))
        self.episode_start = torch.as_tensor(start, device=self.device)                # [N] first row of the episode
        self.timestep = torch.arange(len(start), device=self.device) - self.episode_start  # [N]
        self.offsets = torch.arange(-context + 1, 1, device=self.device)             # [K]
        self._seed(seed)

    def __len__(self) -> int:
        return len(self.timestep)

    def batch(self, last: Tensor) -> WindowBatch:
        """Windows ending at rows ``last`` [B]."""
        rows = last[:, None] + self.offsets                                   # [B, K]
        mask = rows >= self.episode_start[last][:, None]
        rows = torch.where(mask, rows, last[:, None])
        return WindowBatch(self.obs[rows], self.act[rows], self.reward[rows] * mask,
                           torch.where(mask, self.timestep[rows], 0), mask)
