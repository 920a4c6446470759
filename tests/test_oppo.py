"""OPPO (issue 35): the learning test on a task whose preferred behaviour is known, beside SFT and the swapped-label
variant, and where z* ends among the embeddings. Its link is tested in tests/test_core.py, its exact resume in
tests/test_agents.py, its export in tests/test_export.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pbrl.data.preferences import read_preferences, write_preferences
from pbrl.data.registry import load_dataset
from pbrl.data.transitions import WindowSampler
from pbrl.train.config import build_config
from pbrl.train.trainer import load_run, train
from tests.test_train import two_behaviour_dataset

OPPO_SMALL = ["agent.seq_dim=32", "agent.seq_layers=1", "agent.seq_heads=2", "agent.encoder_layers=1",
              "agent.encoder_heads=2", "agent.context=8", "agent.z_dim=4", "agent.dropout=0.0",
              "agent.warmup_steps=0", "agent.pair_batch_size=32", "agent.pref_weight=1.0"]


def noisy_pairs(tmp_path, seed: int, *, flip: float, swap: bool = False) -> str:
    """The two-behaviour task (preferred: a ≈ +0.6) with a share ``flip`` of its decided labels reversed (or all of
    them, ``swap``): SFT then clones a mixture, while the majority still places z*."""
    folder = tmp_path / f"noisy-{flip}-{'swap' if swap else 'true'}"   # its own trajectories file, checksummed
    folder.mkdir(parents=True, exist_ok=True)
    data = two_behaviour_dataset(folder, seed=seed)
    prefs, ds = read_preferences(data)
    rng = np.random.default_rng(seed + 100)
    decided = prefs.label != 0.5
    flipped = decided & (rng.random(len(prefs)) < flip)
    prefs.label = np.where(flipped ^ (decided & swap), 1.0 - prefs.label, prefs.label).astype(np.float32)
    return str(write_preferences(folder / "noisy.prefs.h5", prefs, ds, teacher={"name": "scripted", "flip": flip},
                                 seed=seed))


def rollout_mean_action(agent, seed: int, envs: int = 64, steps: int = 12) -> float:
    """The evaluation actor on fresh observation streams (the task's observations are noise): its mean action."""
    actor = agent.actor(envs, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        return float(torch.stack([actor(torch.randn(envs, 3, generator=g)) for _ in range(steps)]).mean())


@pytest.mark.learning
def test_oppo_acts_like_the_preferred_trajectories_where_sft_clones_the_label_noise(tmp_path, learned, learning_seed):
    """20 % of the decided labels reversed: OPPO's z* still lies nearer the preferred windows' embeddings and its
    policy acts like them (+0.6), above SFT, which clones the preferred segments, noise included (≈ 0.36); with every
    label swapped the same OPPO acts like the rejected behaviour."""
    runs = {}
    for name, data, agent, sets in (
            ("oppo", noisy_pairs(tmp_path, learning_seed, flip=0.2), "oppo", OPPO_SMALL),
            ("swapped", noisy_pairs(tmp_path, learning_seed, flip=0.2, swap=True), "oppo", OPPO_SMALL),
            ("sft", noisy_pairs(tmp_path, learning_seed, flip=0.2), "sft", ["agent.hidden_layers=[64, 64]",
                                                                            "agent.dropout=0.0"])):
        cfg = build_config(agent, data, scale="cpu", steps=200, seed=learning_seed, overrides=[
            "train.eval_episodes=0", "train.device=cpu", "train.batch_size=32", "train.lr=1e-3", "train.log_every=50",
            *sets])
        train(cfg, tmp_path / name, progress=False)
        runs[name] = load_run(tmp_path / name, "cpu")[1]
    oppo_action = rollout_mean_action(runs["oppo"], learning_seed)
    sft_obs = torch.randn(768, 3, generator=torch.Generator().manual_seed(learning_seed + 1))
    sft_action = float(runs["sft"].act(sft_obs).mean())
    learned.check("OPPO mean action (preferred +0.6)", oppo_action, ">", 0.45)
    learned.check("OPPO minus SFT mean action", oppo_action - sft_action, ">", 0.1)
    learned.check("OPPO, swapped labels, mean action", rollout_mean_action(runs["swapped"], learning_seed), "<", 0.0,
                  bad=True)
    # where z* sits: nearer the embeddings of held-out preferred windows than of rejected ones
    held = load_dataset(two_behaviour_dataset(tmp_path / "held", seed=learning_seed + 7)).trajectories
    windows = WindowSampler(held, context=8, seed=0)
    batch = windows.batch(torch.arange(len(windows)))
    good = torch.as_tensor(np.repeat(np.arange(held.num_episodes) % 2 == 0, np.diff(held.episode_offsets)))
    agent = runs["oppo"]
    with torch.no_grad():
        distance = torch.linalg.vector_norm(agent.embed(batch.obs, batch.act, batch.timestep, batch.mask)
                                            - agent.policy.z, dim=-1)
    learned.check("z* distance gap (rejected − preferred windows)", float(distance[~good].mean() - distance[good].mean()),
                  ">", 0.5)
