"""Diff-UAPA (issue 36): the learning test (scores of held-out preferred and rejected segments, against diffusion SFT,
drift, the swapped labels) and the prior's damping of a group that contradicts the rest. The MAP term and the Beta
ELBO are tested in float64 in tests/test_core.py, the shared-draw chain score in tests/test_backbones.py, exact resume
in tests/test_agents.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pbrl.data.preferences import PreferenceSampler, read_preferences, write_preferences
from pbrl.data.registry import load_dataset
from pbrl.nets.diffusion import chain_log_prob, draw_chain
from pbrl.train.config import build_config
from pbrl.train.trainer import load_run, train
from tests.test_oppo import noisy_pairs
from tests.test_train import two_behaviour_dataset

DIFFUSION = ["agent.backbone=diffusion", "agent.hidden_layers=[64, 64]", "agent.horizon=4", "agent.n_obs=1",
             "agent.diffusion_steps=20", "agent.sample_steps=20", "agent.dropout=0.0"]
COMMON = ["train.eval_episodes=0", "train.device=cpu", "train.batch_size=16", "train.lr=1e-3", "train.log_every=50"]
UAPA = ["agent.bc_steps=150", "agent.beta=0.05", "agent.bias=0.5", "agent.prior_dim=16", "agent.prior_heads=2",
        "agent.round_steps=450", "train.lr=3e-3"]


def run(tmp_path, name, agent, data, steps, seed, sets):
    cfg = build_config(agent, data, scale="cpu", steps=steps, seed=seed, overrides=[*COMMON, *DIFFUSION, *sets])
    train(cfg, tmp_path / name, progress=False)
    return load_run(tmp_path / name, "cpu")[1]


def sampled_mean_action(agent, seed: int) -> float:
    obs = torch.randn(256, 1, 3, generator=torch.Generator().manual_seed(seed + 1))
    return agent.ema.sample(obs, generator=torch.Generator().manual_seed(seed + 2)).mean().item()


@torch.no_grad()
def held_out_scores(agent, tmp_path, seed: int) -> tuple[float, float]:
    """Mean chain score A(τ) = −(H·da) Σ (e_θ − e_ref) of held-out preferred and rejected segments (decided pairs of
    a fresh draw of the task), policy and reference on one draw, averaged over 4 draws."""
    (tmp_path / "held").mkdir(exist_ok=True)
    data = load_dataset(two_behaviour_dataset(tmp_path / "held", seed=seed + 7))
    sampler = PreferenceSampler(data.trajectories, data.preferences, seed=0)
    batch = sampler.batch(torch.arange(len(sampler)))
    decided = batch.label != 0.5
    preferred = (batch.label < 0.5).long()
    scores = []
    g = torch.Generator().manual_seed(seed)
    for _ in range(4):
        draw = draw_chain(agent.policy, tuple(batch.obs.shape[:2]), batch.obs.shape[2], generator=g)
        gap = (chain_log_prob(agent.policy, batch.obs, batch.act, batch.mask, draw=draw)[0]
               - chain_log_prob(agent.reference, batch.obs, batch.act, batch.mask, draw=draw)[0]).sum(-1)  # [B, 2]
        scores.append(gap)
    gap = torch.stack(scores).mean(0)
    pref = gap.gather(1, preferred[:, None]).squeeze(1)[decided]
    rej = gap.gather(1, 1 - preferred[:, None]).squeeze(1)[decided]
    return float(pref.mean()), float(rej.mean())


@pytest.mark.learning
def test_diff_uapa_raises_the_preferred_segments_and_beats_diffusion_sft(tmp_path, learned, learning_seed):
    """30 % of the decided labels reversed: after a BC warm start, alignment raises the held-out preferred segments'
    chain score and lowers the rejected ones', its samples act like the preferred behaviour (+0.6) above diffusion SFT
    on the preferred segments at equal steps (which clones the label noise), its drift from the reference stays
    small; with every label swapped it acts like the rejected behaviour."""
    true = noisy_pairs(tmp_path, learning_seed, flip=0.3)
    sets = [*UAPA, "agent.prior_update=once"]  # the Beta network fitted in the warm start (the paper's Diff-UAPA-C)
    uapa = run(tmp_path, "uapa", "diff-uapa", true, 600, learning_seed, sets)
    swapped = run(tmp_path, "swapped", "diff-uapa", noisy_pairs(tmp_path, learning_seed, flip=0.3, swap=True), 600,
                  learning_seed, sets)
    sft = run(tmp_path, "sft", "sft", true, 600, learning_seed, ["train.lr=3e-3"])
    pref, rej = held_out_scores(uapa, tmp_path, learning_seed)
    learned.check("held-out preferred segments' chain score", pref, ">", 0.0)
    learned.check("held-out rejected segments' chain score", rej, "<", 0.0)
    action = sampled_mean_action(uapa, learning_seed)
    learned.check("Diff-UAPA mean action (preferred +0.6)", action, ">", 0.1)
    learned.check("Diff-UAPA minus diffusion SFT mean action", action - sampled_mean_action(sft, learning_seed), ">",
                  0.0)
    learned.check("Diff-UAPA drift |A| per segment", max(abs(pref), abs(rej)), "<", 10.0)
    learned.check("Diff-UAPA, swapped labels, mean action", sampled_mean_action(swapped, learning_seed), "<", 0.0,
                  bad=True)


def two_groups(tmp_path, seed: int) -> str:
    """Group 0 labels the task truly; group 1, aligned on in the second round, reverses every decided label."""
    (tmp_path / "groups").mkdir(parents=True, exist_ok=True)
    data = two_behaviour_dataset(tmp_path / "groups", seed=seed)
    prefs, ds = read_preferences(data)
    n = len(prefs)
    prefs.group = (np.arange(n) >= n // 2).astype(np.int32)
    flip = (prefs.group == 1) & (prefs.label != 0.5)
    prefs.label = np.where(flip, 1.0 - prefs.label, prefs.label).astype(np.float32)
    return str(write_preferences(tmp_path / "groups.prefs.h5", prefs, ds, teacher={"name": "two groups"}, seed=seed))


@pytest.mark.learning
def test_the_prior_damps_a_group_that_contradicts_the_rest(tmp_path, learned, learning_seed):
    """Two rounds: a truthful group, then one that reverses every label. With the counting prior over the groups met
    so far, the second round pulls each segment toward the average instead of across it, so the policy keeps more of
    the preferred behaviour than the same alignment without a prior."""
    data = two_groups(tmp_path, learning_seed)
    sets = [*UAPA, "agent.prior=counting", "agent.prior_update=rounds", "agent.round_steps=150"]
    with_prior = run(tmp_path, "prior", "diff-uapa", data, 450, learning_seed, [*sets, "agent.prior_weight=3.0"])
    without = run(tmp_path, "none", "diff-uapa", data, 450, learning_seed, [*sets, "agent.prior=none"])
    learned.check("mean action with the prior minus without", sampled_mean_action(with_prior, learning_seed)
                  - sampled_mean_action(without, learning_seed), ">", 0.0)
