"""Offline metrics of a policy where no simulator can run it (robot logs; ``train.eval_episodes = 0``).

- **Action error** on held-out episodes: the agent's actor replays each episode's observations in order (history
  and action-chunk actors see the logged past, as on the robot) and its action is compared with the logged one:
  ``action_mse`` (mean over steps and action dimensions of the squared error) and ``action_mae``. The yardstick
  beside it, ``action_mse_random``, is the expected squared error of a policy acting uniformly at random inside
  the training data's action box (computed in closed form, no sampling): a policy that learned nothing from the
  data does not beat it.
- **Preference accuracy** on held-out labels: the share of decided labels (not skipped, not ties) whose preferred
  segment has the larger ``Σ_t log π(a_t|s_t)``, CPL's implied score (Hejna et al. 2024, Eq. 5 up to α): for any
  agent with a per-step likelihood (the MLP policies of bc, sft, cpl); None for the others.

Held-out data is ``train.eval_dataset`` (a dataset with the same observation and action sizes, e.g. robomimic's
``valid`` split imported on its own); without it the metrics are computed on the training data and marked
in-sample (``offline_data = "training data (in-sample)"``), the action error then on at most 64 evenly spaced
training episodes. A run on a dataset with a simulator computes them only where ``train.eval_dataset`` is set.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pbrl.data.registry import LoadedDataset, load_dataset
from pbrl.data.store import TrajectoryDataset
from pbrl.errors import ConfigError, DatasetError, describe


def segment_sums(per_step: np.ndarray, offsets: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Σ over each (episode, start, length) segment of a per-step array ``[N]`` -> ``[P]``."""
    csum = np.concatenate([[0.0], np.cumsum(per_step, dtype=np.float64)])
    first = offsets[segments[:, 0]] + segments[:, 1]
    return csum[first + segments[:, 2]] - csum[first]


def step_log_probs(agent: Any, observations: np.ndarray, actions: np.ndarray, where: str) -> np.ndarray:
    """Per-step ``log π(a|s)`` in the score form (pre-tanh) of an agent's MLP policy, ``[N]``."""
    import inspect

    import torch

    policy = getattr(agent, "policy", None)
    score = getattr(policy, "score_log_prob", None)
    # a sequence policy (transformer) scores whole segments with timesteps and masks: not a per-step likelihood
    if score is None or len(inspect.signature(score).parameters) != 2:
        raise ConfigError(describe(where, "agent", repr(type(agent).__name__), "a run of an agent with an MLP policy "
                                   "(bc, sft, cpl)"))
    device = next(agent.parameters()).device
    with torch.no_grad():  # in chunks: a robot log's steps need not fit the device at once
        return np.concatenate([score(torch.as_tensor(observations[i:i + 65536], device=device),
                                     torch.as_tensor(actions[i:i + 65536], device=device)).float().cpu().numpy()
                               for i in range(0, len(observations), 65536)])


@torch.no_grad()
def replay_actions(actor: Any, trajectories: TrajectoryDataset, episodes: np.ndarray, device: torch.device
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The actor's action at every logged step of ``episodes`` [E'] (the actor built for E' environments): the
    episodes side by side, step by step (one that has ended keeps receiving its last observation, whose actions are
    dropped). Returns ``(rows [M], actions [M, act_dim])``, the steps' global indices and the actor's actions."""
    starts = trajectories.episode_offsets[episodes]
    lengths = trajectories.episode_offsets[episodes + 1] - starts
    obs = trajectories.observations
    rows = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths)])
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])  # where each episode's steps begin in ``rows``
    out = np.zeros((len(rows), trajectories.act_dim), np.float32)
    actor.reset(torch.ones(len(episodes), dtype=torch.bool, device=device))
    for t in range(int(lengths.max())):
        act = actor(torch.as_tensor(obs[starts + np.minimum(t, lengths - 1)], device=device)).float().cpu().numpy()
        live = t < lengths
        out[first[live] + t] = act[live]
    return rows, out


def random_policy_mse(low: np.ndarray, high: np.ndarray, actions: np.ndarray) -> float:
    """E[(u - a)^2] for u ~ Uniform[low, high] per dimension, averaged over the logged ``actions`` [N, A]:
    ``Var(u) + (E u - a)^2 = (high - low)^2 / 12 + ((low + high) / 2 - a)^2``."""
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    a = actions.astype(np.float64)
    return float(np.mean((high - low) ** 2 / 12 + ((low + high) / 2 - a) ** 2))


IN_SAMPLE_EPISODES = 64  # without a held-out set: the action error on at most this many training episodes


def held_out(cfg_eval_dataset: str, train_data: LoadedDataset) -> tuple[LoadedDataset, str]:
    """The data the offline metrics are computed on (``train_data`` itself without a held-out set), and how eval.json
    names it; a held-out set whose sizes differ from the training data's is refused in one line."""
    if not cfg_eval_dataset:
        return train_data, "training data (in-sample; set train.eval_dataset to a held-out dataset)"
    data = load_dataset(cfg_eval_dataset, option="train.eval_dataset")
    got, want = (data.trajectories.obs_dim, data.trajectories.act_dim), (train_data.trajectories.obs_dim,
                                                                          train_data.trajectories.act_dim)
    if got != want:
        raise DatasetError(describe("train.eval_dataset", "observation and action sizes", got,
                                    f"{want}, those of the training dataset {train_data.name}"))
    return data, f"{data.name} (held out)"


def preference_accuracy_of(agent: Any, data: LoadedDataset) -> float | None:
    """Share of ``data``'s decided labels the agent's ``Σ log π`` follows; None without labels or likelihood."""
    prefs = data.preferences
    if prefs is None:
        return None
    decided = np.flatnonzero(~prefs.skipped & (prefs.label != 0.5))
    if not len(decided):
        return None
    try:
        per_step = step_log_probs(agent, data.trajectories.observations, data.trajectories.actions, data.name)
    except ConfigError:  # a sequence or diffusion policy: no per-step likelihood
        return None
    offsets = data.trajectories.episode_offsets
    score_a = segment_sums(per_step, offsets, prefs.segments_a[decided])
    score_b = segment_sums(per_step, offsets, prefs.segments_b[decided])
    return float(np.mean((score_a > score_b) == (prefs.label[decided] > 0.5)))


def offline_metrics(agent: Any, train_data: LoadedDataset, evaluated: tuple[LoadedDataset, str],
                    device: torch.device, seed: int) -> dict[str, Any]:
    """eval.json's figures for a run without a simulator (see the module docstring) on ``evaluated``, what
    :func:`held_out` gave before training: the data and how eval.json names it."""
    data, named = evaluated
    traj = data.trajectories
    episodes = np.arange(traj.num_episodes)
    if data is train_data and len(episodes) > IN_SAMPLE_EPISODES:  # in-sample: evenly spaced episodes suffice
        episodes = np.unique(np.linspace(0, len(episodes) - 1, IN_SAMPLE_EPISODES).round().astype(np.int64))
    agent.eval()
    rows, predicted = replay_actions(agent.actor(len(episodes), seed=seed), traj, episodes, device)
    logged = traj.actions[rows].astype(np.float64)
    error = predicted.astype(np.float64) - logged
    box = train_data.trajectories.actions
    return {"normalized_score": None, "return_mean": None, "return_std": None, "episodes": 0,
            "offline_data": named, "offline_episodes": len(episodes), "offline_steps": len(rows),
            "action_mse": float(np.mean(error ** 2)), "action_mae": float(np.mean(np.abs(error))),
            "action_mse_random": random_policy_mse(box.min(0), box.max(0), logged),
            "preference_accuracy": preference_accuracy_of(agent, data),
            "preference_pairs": int(len(data.preferences.used)) if data.preferences is not None else 0}
