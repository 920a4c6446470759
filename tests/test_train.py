"""The shared trainer and the agents: configs, exact resume, determinism, and that each agent learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pbrl.data.pairing import make_preferences
from pbrl.data.preferences import write_preferences
from pbrl.data.store import Episode, TrajectoryDataset, write_trajectories
from pbrl.data.synthetic import two_behaviour_dataset  # noqa: F401  (other test modules import it from here)
from pbrl.errors import ConfigError
from pbrl.train.config import RunConfig, build_config, parse_override
from pbrl.train.trainer import Checkpoints, load_run, train


def config(agent, dataset, steps=300, seed=0, **overrides):
    sets = [f"train.{k}={v}" if k in ("lr", "batch_size", "checkpoint_every", "log_every", "eval_episodes")
            else f"agent.{k}={v}" for k, v in overrides.items()]
    return build_config(agent, dataset, scale="cpu", overrides=["train.eval_episodes=0", "agent.hidden_layers=[64, 64]", "train.device=cpu",
                                                                  "train.log_every=50", *sets], steps=steps, seed=seed)


def mean_action(agent, n=256):
    obs = torch.randn(n, 3, generator=torch.Generator().manual_seed(1))
    return agent.act(obs).mean().item()


@pytest.mark.learning
def test_cpl_learns_the_preferred_behaviour_and_bc_does_not(tmp_path, learned, learning_seed):
    data = two_behaviour_dataset(tmp_path, seed=learning_seed)
    train(config("cpl", data, steps=400, seed=learning_seed, bc_steps=100, dropout=0.0, lr=1e-3), tmp_path / "cpl",
          progress=False)
    train(config("bc", data, steps=400, seed=learning_seed, dropout=0.0, lr=1e-3), tmp_path / "bc", progress=False)
    _, cpl, _ = load_run(tmp_path / "cpl", "cpu")
    _, bc, _ = load_run(tmp_path / "bc", "cpu")
    # CPL acts like the preferred (+0.6) behaviour; BC on all data averages the two (the known-bad variant)
    learned.check("CPL mean action", mean_action(cpl), ">", 0.3)
    learned.check("BC |mean action|", abs(mean_action(bc)), "<", 0.3, bad=True)


@pytest.mark.learning
def test_bc_imitates_a_deterministic_expert(tmp_path, learned, learning_seed):
    rng = np.random.default_rng(learning_seed)
    w = np.array([[0.8], [-0.5], [0.3]], np.float32)
    eps = []
    for _ in range(20):
        obs = rng.standard_normal((30, 3)).astype(np.float32)
        eps.append(Episode(obs, np.tanh(obs @ w).astype(np.float32), rng.standard_normal(30).astype(np.float32),
                           False, obs[-1], "expert"))
    ds = TrajectoryDataset(write_trajectories(tmp_path / "e.h5", eps, env_id="Hopper-v5", behaviour_policy="e", seed=0))
    prefs = make_preferences(ds, pairs=200, segment=10, seed=learning_seed)
    data = str(write_preferences(tmp_path / "e.prefs.h5", prefs, ds, teacher={}, seed=learning_seed))
    train(config("bc", data, steps=600, seed=learning_seed, dropout=0.0, lr=1e-3), tmp_path / "bc", progress=False)
    _, bc, _ = load_run(tmp_path / "bc", "cpu")
    obs = torch.randn(500, 3, generator=torch.Generator().manual_seed(learning_seed))
    err = (bc.act(obs) - torch.tanh(obs @ torch.as_tensor(w))).abs().mean().item()
    learned.check("BC mean absolute action error", err, "<", 0.08)


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path):
    data = two_behaviour_dataset(tmp_path, episodes=10)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        cfg = config("cpl", data, steps=20)
        cfg.train.seed = seed
        train(cfg, tmp_path / name, progress=False)
    w = {n: torch.load(Checkpoints(tmp_path / n / "checkpoints", 1).latest(), weights_only=False)["agent"]
         for n in "abc"}
    key = "policy.net.0.weight"
    assert torch.equal(w["a"][key], w["b"][key]) and not torch.equal(w["a"][key], w["c"][key])


def test_run_dir_contents_and_config_mismatch(tmp_path):
    data = two_behaviour_dataset(tmp_path, episodes=10)
    cfg = config("bc", data, steps=20)
    result = train(cfg, tmp_path / "run", progress=False)
    assert {"agent", "dataset", "normalized_score", "return_mean", "return_std", "episodes", "seed"} <= set(result)
    run = tmp_path / "run"
    assert (run / "config.toml").exists() and (run / "eval.json").exists()
    assert list(run.glob("events.out.tfevents.*"))
    assert RunConfig.load(run / "config.toml").to_dict() == cfg.to_dict()
    other = config("bc", data, steps=20, lr=0.5)
    with pytest.raises(ConfigError, match=r"config.toml: config: got train.lr: stored 0.0003, asked 0.5"):
        train(other, run, progress=False)


def test_tensorboard_events_hold_training_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = two_behaviour_dataset(tmp_path, episodes=10)
    train(config("cpl", data, steps=100, bc_steps=20), tmp_path / "run", progress=False)
    acc = EventAccumulator(str(tmp_path / "run"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "cpl/accuracy", "time/sample_fraction", "train/grad_norm"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == [50, 100]


def test_config_overrides_and_errors():
    section, key, value = parse_override("agent.alpha=0.25")
    assert (section, key, value) == ("agent", "alpha", 0.25)
    assert parse_override("train.device=cpu")[2] == "cpu"
    cfg = build_config("cpl", "d", scale="cpu", overrides=["agent.alpha=0.25", "train.amp=false"], steps=7)
    assert cfg.agent_config.alpha == 0.25 and cfg.train.steps == 7 and cfg.train.amp is False
    assert cfg.agent_config.bias == 0.5  # from agents/cpl.toml
    paper = build_config("cpl", "d", scale="paper")
    assert (paper.agent_config.hidden_layers, paper.train.batch_size, paper.agent_config.bc_steps) == ([512, 512], 96, 200_000)
    with pytest.raises(ConfigError, match=r"--agent: agent: got 'nope', expected one of \['bc', 'cpl', 'diff-uapa', 'iql-constant', 'iql-mr', 'iql-oracle', 'iql-pt', 'oppo', 'sft'\]"):
        build_config("nope", "d")
    with pytest.raises(ConfigError, match=r"agent.alhpa: got unknown field"):
        build_config("cpl", "d", overrides=["agent.alhpa=1"])
    with pytest.raises(ConfigError, match=r"train.steps: got 'many' \(str\), expected int"):
        build_config("cpl", "d", overrides=["train.steps=many"])
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("alpha")


def test_finished_run_is_not_trained_again(tmp_path):
    data = two_behaviour_dataset(tmp_path, episodes=10)
    cfg = config("bc", data, steps=10)
    first = train(cfg, tmp_path / "run", progress=False)
    ckpt = Checkpoints(tmp_path / "run" / "checkpoints", 1).latest()
    mtime = ckpt.stat().st_mtime_ns
    assert train(cfg, tmp_path / "run", progress=False) == first
    assert ckpt.stat().st_mtime_ns == mtime


def test_one_backward_through_the_sum_of_the_losses_reaches_every_parameter_its_graph_touches():
    """The loop's contract (``pbrl.train.loop``): each optimiser steps its own parameters with the whole gradient
    of the summed losses, so a loss named for one optimiser moves another's parameters where its graph reaches
    them (OPPO's triplet loss reaches the encoder and z*), and a detached input keeps it out."""
    from pbrl.core.training import LossOutput, OptimizerSpec
    from pbrl.train.loop import Optimizers, TrainConfig, train_step

    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
            self.b = torch.nn.Parameter(torch.tensor([3.0, -1.0]))

        def optimizers(self):
            return {"first": OptimizerSpec([self.a]), "second": OptimizerSpec([self.b])}

        def loss(self, detach, step):
            b = self.b.detach() if detach else self.b
            return LossOutput({"first": (self.a * b).sum(), "second": (self.b ** 2).sum()})

    for detach in (False, True):
        learner = Two()
        a, b = learner.a.detach().clone(), learner.b.detach().clone()
        optimizers = Optimizers(learner.optimizers(), TrainConfig(lr=1e-3, weight_decay=0.0, grad_clip=0.0))
        train_step(learner, learner.loss, detach, optimizers, 0, amp=False, norms_wanted=False)
        torch.testing.assert_close(learner.a.grad, b)
        torch.testing.assert_close(learner.b.grad, 2 * b if detach else a + 2 * b)
