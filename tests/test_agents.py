"""The agent interface and the baselines: IQL (oracle), reward model + IQL (MLP, Preference Transformer), SFT;
the evaluation actor; the loop's independence; exact resume for every agent; errors before anything is written."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pbrl.agents import AGENTS
from pbrl.agents.actors import HistoryActor
from pbrl.data.pairing import make_preferences
from pbrl.data.preferences import write_preferences
from pbrl.data.registry import load_dataset
from pbrl.data.store import Episode, TrajectoryDataset, write_trajectories
from pbrl.data.teachers import Teacher
from pbrl.data.transitions import WindowSampler, next_observations
from pbrl.errors import ConfigError, DatasetError
from pbrl.nets.transformer import CausalTransformer, PreferenceTransformer
from pbrl.train.config import build_config
from pbrl.train.critics import fit_reward_ensemble, regret_advantages
from pbrl.train.loop import Checkpoints
from pbrl.train.trainer import build_agent, learn_reward, load_run, make_sampler, train
from tests.test_train import config, mean_action, two_behaviour_dataset

SMALL = {"iql-mr": ["agent.reward_steps=30", "agent.reward_hidden_layers=[32, 32]", "agent.reward_members=2"],
         "iql-pt": ["agent.reward_steps=20", "agent.reward_dim=16", "agent.reward_heads=2"],
         "diff-uapa": ["agent.horizon=4", "agent.diffusion_steps=20", "agent.bc_steps=5", "agent.round_steps=6",
                       "agent.prior_dim=16", "agent.prior_heads=2"],
         "oppo": ["agent.seq_dim=16", "agent.seq_layers=1", "agent.seq_heads=2", "agent.encoder_layers=1",
                  "agent.context=4", "agent.z_dim=3", "agent.warmup_steps=5", "agent.pair_batch_size=8"]}


def small(agent, data, steps, extra=()):
    width = [] if agent == "oppo" else ["agent.hidden_layers=[32, 32]"]  # OPPO's transformers: SMALL's widths
    return build_config(agent, data, scale="cpu", steps=steps, seed=0, overrides=[
        "train.eval_episodes=0", *width, "train.device=cpu", "train.log_every=10",
        "train.batch_size=32", *(["agent.critic_layers=[32, 32]"] if agent.startswith("iql") else []),
        *SMALL.get(agent, []), *extra])


def test_data_never_imports_networks_or_the_training_side():
    for path in (Path(__file__).parents[1] / "pbrl" / "data").glob("*.py"):
        tree = ast.parse(path.read_text())
        modules = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not {m for m in modules if m.startswith(("pbrl.agents", "pbrl.train", "pbrl.nets"))}, path.name


VARIANTS = {"cpl-dense": ["agent.regime=dense", "agent.bc_steps=5", "agent.warmup_steps=4", "agent.reset_optimizer=true"],
            "cpl-transformer": ["agent.backbone=transformer", "agent.seq_dim=16", "agent.seq_layers=1", "agent.seq_heads=2"],
            "bc-diffusion": ["agent.backbone=diffusion", "agent.horizon=4", "agent.diffusion_steps=20"],
            "bc-transitions": ["agent.data=transitions"],
            "diff-uapa-counting": ["agent.prior=counting", "agent.bias=0.5"],
            "cpl-diffusion": ["agent.backbone=diffusion", "agent.horizon=4", "agent.diffusion_steps=20", "agent.bc_steps=5",
                              "agent.bc_weight=0.5"]}


@pytest.mark.parametrize("agent", [*sorted(AGENTS), *VARIANTS])
def test_exact_resume_for_every_agent(tmp_path, agent):
    data = two_behaviour_dataset(tmp_path, episodes=10)
    cfg = small(agent.rsplit("-", 1)[0] if agent in VARIANTS else agent, data, steps=24,
                extra=["train.checkpoint_every=10", *VARIANTS.get(agent, [])])
    train(cfg, tmp_path / "straight", progress=False)
    assert train(cfg, tmp_path / "split", progress=False, stop_at=13) is None
    train(cfg, tmp_path / "split", progress=False)
    a = torch.load(Checkpoints(tmp_path / "straight" / "checkpoints", 1).latest(), weights_only=False)
    b = torch.load(Checkpoints(tmp_path / "split" / "checkpoints", 1).latest(), weights_only=False)
    assert a["step"] == b["step"] == 24
    for k in a["agent"]:
        assert torch.equal(a["agent"][k], b["agent"][k]), k
    assert a["optimizers"].keys() == b["optimizers"].keys()


@pytest.mark.learning
def test_iql_learns_the_rewarded_behaviour_where_bc_averages(tmp_path, learned, learning_seed):
    data = two_behaviour_dataset(tmp_path, seed=learning_seed)
    train(config("iql-oracle", data, steps=200, seed=learning_seed, lr=1e-3), tmp_path / "iql", progress=False)
    _, iql, _ = load_run(tmp_path / "iql", "cpu")
    # IQL with the true reward acts like the rewarded (+0.6) behaviour
    learned.check("oracle IQL mean action", mean_action(iql), ">", 0.4)
    state = torch.load(Checkpoints(tmp_path / "iql" / "checkpoints", 1).latest(), weights_only=False)
    assert set(state["optimizers"]) == {"value", "critic", "actor"}
    # the target critic moved towards the critic (Polyak) but is not equal to it
    q, qt = state["agent"]["q.out.weight"], state["agent"]["q_target.out.weight"]
    assert not torch.equal(q, qt) and (q - qt).abs().max() < 1.0


@pytest.mark.learning
def test_sft_learns_the_preferred_segments(tmp_path, learned, learning_seed):
    data = two_behaviour_dataset(tmp_path, seed=learning_seed)
    train(config("sft", data, steps=300, seed=learning_seed, dropout=0.0, lr=1e-3), tmp_path / "sft", progress=False)
    _, sft, _ = load_run(tmp_path / "sft", "cpu")
    learned.check("SFT mean action", mean_action(sft), ">", 0.4)  # it imitates only the preferred (+0.6) segments


@pytest.mark.learning
def test_iql_with_a_learned_reward_learns_the_preferred_behaviour(tmp_path, learned, learning_seed):
    data = two_behaviour_dataset(tmp_path, seed=learning_seed)
    cfg = config("iql-mr", data, steps=200, seed=learning_seed, lr=1e-3)
    for key, value in (("reward_steps", 100), ("reward_hidden_layers", [32, 32]), ("reward_members", 2)):
        setattr(cfg.agent_config, key, value)
    result = train(cfg, tmp_path / "mr", progress=False)
    learned.check("reward model held-out accuracy", result["reward_model"]["holdout_accuracy"], ">", 0.9)
    _, agent, _ = load_run(tmp_path / "mr", "cpu")
    learned.check("IQL+MR mean action", mean_action(agent), ">", 0.4)


def reward_accuracy(tmp_path, labels_fn, steps=600, seed=0):
    """Held-out accuracy of a small MLP reward model on return-teacher labels of the shipped Hopper trajectories."""
    ds = load_dataset("hopper-medium-replay-small", preferences=False).trajectories
    prefs = make_preferences(ds, pairs=3000, segment=32, teacher=Teacher(), seed=seed)
    prefs.label = labels_fn(prefs.label)
    path = write_preferences(tmp_path / "p.prefs.h5", prefs, ds, teacher={"name": "return"}, seed=seed)
    cfg = build_config("iql-mr", str(path), scale="cpu", seed=seed, overrides=[
        "train.device=cpu", f"agent.reward_steps={steps}", "agent.reward_hidden_layers=[64, 64]",
        "agent.reward_members=1", "agent.reward_lr=1e-3", "agent.reward_batch_size=32"])
    data = load_dataset(str(path))
    rewards, summary = learn_reward(cfg, data, tmp_path / "rm", torch.device("cpu"), progress=False)
    assert rewards.shape == (ds.num_transitions,) and 0.0 <= rewards.min() and rewards.max() <= 1.0
    return summary["holdout_accuracy"]


@pytest.mark.learning
def test_mlp_reward_model_is_above_90_percent_on_noiseless_labels(tmp_path, learned, learning_seed):
    learned.check("held-out accuracy", reward_accuracy(tmp_path, lambda y: y, seed=learning_seed), ">", 0.9)


@pytest.mark.learning
def test_reward_model_on_shuffled_labels_is_at_chance(tmp_path, learned, learning_seed):
    """The known-bad variant: labels that carry no signal cannot pass the accuracy check above."""
    rng = np.random.default_rng(learning_seed)
    accuracy = reward_accuracy(tmp_path, lambda y: rng.permutation(y), steps=300, seed=learning_seed)
    learned.check("held-out accuracy on shuffled labels", accuracy, "<", 0.65, bad=True)


def test_preference_transformer_is_causal_and_ignores_padding():
    torch.manual_seed(0)
    net = PreferenceTransformer(3, 2, dim=16, heads=2).eval()
    trunk: CausalTransformer = net.trunk
    obs, act = torch.randn(2, 6, 3), torch.randn(2, 6, 2)
    t = torch.arange(6).expand(2, 6)
    mask = torch.ones(2, 6, dtype=torch.bool)
    h = trunk(obs, act, t, mask)
    obs2 = obs.clone()
    obs2[:, 4] += 5.0  # change step 4: steps 0..3 must not see it, steps 4..5 must
    h2 = trunk(obs2, act, t, mask)
    torch.testing.assert_close(h[:, :4], h2[:, :4])
    assert (h[:, 4:] - h2[:, 4:]).abs().max() > 1e-3
    # padding: a segment of 4 real steps scores the same whatever sits in its 2 padded steps
    mask[:, 4:] = False
    s1, r1 = net(obs, act, t, mask)
    obs3 = obs.clone()
    obs3[:, 4:] = 100.0
    s2, r2 = net(obs3, act, t, mask)
    torch.testing.assert_close(s1, s2)
    torch.testing.assert_close(r1[:, :4], r2[:, :4])
    assert torch.isfinite(s1).all()


def test_history_actor_reset_clears_only_the_masked_environment():
    seen = {}

    def policy(obs, act, timestep, mask):
        seen["mask"], seen["timestep"], seen["obs"] = mask.clone(), timestep.clone(), obs.clone()
        return obs[:, -1, :2]

    actor = HistoryActor(policy, num_envs=3, obs_dim=2, act_dim=2, context=4)
    actor.reset()
    for k in range(3):
        actor(torch.full((3, 2), float(k)))
    assert seen["mask"].sum(1).tolist() == [3, 3, 3]
    actor.reset(torch.tensor([False, True, False]))
    actor(torch.full((3, 2), 9.0))
    assert seen["mask"].sum(1).tolist() == [4, 1, 4]
    assert seen["timestep"][:, -1].tolist() == [3, 0, 3]
    assert seen["obs"][1, :-1].abs().sum() == 0 and seen["obs"][0, 0, 0] == 0.0 and seen["obs"][0, -2, 0] == 2.0
    torch.testing.assert_close(actor.act[:, -1], torch.full((3, 2), 9.0))


def test_window_sampler_never_crosses_an_episode_start(tmp_path):
    from tests.conftest import write_episodes

    ds = write_episodes(tmp_path / "w.h5", [5, 3, 7])
    windows = WindowSampler(ds, context=4)
    b = windows.batch(torch.tensor([0, 2, 5, 6, 14]))
    assert b.mask.sum(1).tolist() == [1, 3, 1, 2, 4]
    assert b.timestep[:, -1].tolist() == [0, 2, 0, 1, 6]
    torch.testing.assert_close(b.obs[:, -1], torch.as_tensor(ds.observations[[0, 2, 5, 6, 14]]))
    nxt = next_observations(ds)
    np.testing.assert_array_equal(nxt[4], ds.final_observations[0])
    np.testing.assert_array_equal(nxt[3], ds.observations[4])


def test_every_paper_preset_builds_and_runs_two_steps(tmp_path):
    data = two_behaviour_dataset(tmp_path, episodes=6)
    for agent in sorted(AGENTS):
        cfg = build_config(agent, data, scale="paper", steps=2, seed=0, overrides=[
            "train.device=cpu", "train.eval_episodes=0", "train.batch_size=4",
            *(["agent.reward_steps=2", "agent.reward_batch_size=4"] if agent in ("iql-mr", "iql-pt") else [])])
        result = train(cfg, tmp_path / agent, progress=False)
        assert result["steps"] == 2, agent
    for scale in ("paper-locomotion", "cpu-locomotion"):  # CPL's D4RL recipe (cpl-human): dense, averaged scores
        cfg = build_config("cpl", data, scale=scale, steps=2, seed=0, overrides=[
            "train.device=cpu", "train.eval_episodes=0", "train.batch_size=4"])
        assert (cfg.agent_config.regime, cfg.agent_config.average, cfg.agent_config.bias) == ("dense", True, 0.7)
        assert train(cfg, tmp_path / scale, progress=False)["steps"] == 2
    with pytest.raises(ConfigError, match=r"agents/bc.toml: scale \[cpu-locomotion\]: got missing"):
        build_config("bc", data, scale="cpu-locomotion")


def rewardless_dataset(tmp_path):
    rng = np.random.default_rng(0)
    eps = [Episode(rng.standard_normal((20, 3)).astype(np.float32), rng.uniform(-1, 1, (20, 1)).astype(np.float32),
                   np.zeros(20, np.float32), False, np.zeros(3, np.float32)) for _ in range(4)]
    return str(write_trajectories(tmp_path / "norew.h5", eps, env_id="Hopper-v5", behaviour_policy="robot logs", seed=0))


def test_iql_oracle_refuses_a_dataset_without_rewards_and_writes_nothing(tmp_path):
    data = rewardless_dataset(tmp_path)
    with pytest.raises(DatasetError, match=r"norew.h5: rewards: got none .* expected a dataset with true rewards"):
        train(small("iql-oracle", data, 5), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_reward_scales_are_affine_maps_of_the_reward_and_a_bad_one_is_refused_first(tmp_path):
    data = load_dataset("hopper-medium-replay-small")
    true = data.trajectories.rewards.astype(np.float64)
    index = torch.arange(0, len(true), 97)
    got = {}
    for how in ("none", "returns", "minmax-returns"):
        cfg = small("iql-oracle", "hopper-medium-replay-small", 5, [f"agent.reward_scale={how}"])
        got[how] = make_sampler(cfg, build_agent(cfg, data), data, torch.device("cpu")).batch(index).reward.double().numpy()
    starts = np.r_[0, np.cumsum(data.trajectories.episode_lengths)[:-1]]
    episode_returns = np.add.reduceat(true, starts)
    np.testing.assert_allclose(got["none"], true[index.numpy()], rtol=1e-6)
    np.testing.assert_allclose(got["returns"], true[index.numpy()] * 1000 / np.ptp(episode_returns), rtol=1e-5)
    unit = (true - true.min()) / np.ptp(true)
    np.testing.assert_allclose(got["minmax-returns"], unit[index.numpy()] * 1000 / np.ptp(np.add.reduceat(unit, starts)),
                               rtol=1e-5)
    with pytest.raises(ConfigError, match=r"agent.reward_scale: got 'bogus', expected one of"):
        train(small("iql-oracle", "hopper-medium-replay-small", 5, ["agent.reward_scale=bogus"]), tmp_path / "run",
              progress=False)
    assert not (tmp_path / "run").exists()


def test_the_survival_control_sees_a_constant_reward_and_needs_no_reward_or_labels(tmp_path):
    data = rewardless_dataset(tmp_path)  # no rewards, no labels: the control must still train
    result = train(small("iql-constant", data, 5), tmp_path / "run", progress=False)
    assert result["steps"] == 5
    shipped = load_dataset("hopper-medium-replay-small")
    cfg = small("iql-constant", "hopper-medium-replay-small", 5)
    reward = make_sampler(cfg, build_agent(cfg, shipped), shipped, torch.device("cpu")).batch(torch.arange(50)).reward
    lengths = shipped.trajectories.episode_lengths
    torch.testing.assert_close(reward, torch.full((50,), 1000 / float(np.ptp(lengths))))


def test_a_preset_extends_another_and_a_cycle_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PBRL_HOME", str(tmp_path))
    (tmp_path / "agents").mkdir()
    (tmp_path / "agents" / "iql-mr.toml").write_text('extends = "iql-oracle"\n[cpu.agent]\nexpectile = 0.9\n')
    cfg = build_config("iql-mr", "d", scale="cpu")
    assert cfg.agent_config.expectile == 0.9 and cfg.train.steps == build_config("iql-oracle", "d", scale="cpu").train.steps
    (tmp_path / "agents" / "iql-oracle.toml").write_text('extends = "iql-mr"\n')
    with pytest.raises(ConfigError, match=r"iql-(mr|oracle).toml: extends: got 'iql-(mr|oracle)', expected another preset"):
        build_config("iql-mr", "d", scale="cpu")


@pytest.mark.parametrize("agent", ["iql-mr", "iql-pt", "cpl", "sft"])
def test_agents_that_need_labels_refuse_an_unlabelled_dataset(tmp_path, agent):
    data = rewardless_dataset(tmp_path)
    with pytest.raises(DatasetError, match=r"preferences: got none, expected preference labels"):
        train(small(agent, data, 5), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_config_takes_lists_and_checks_their_items():
    cfg = build_config("iql-oracle", "d", scale="cpu", overrides=["agent.hidden_layers=[64, 32, 16]"])
    assert cfg.agent_config.hidden_layers == [64, 32, 16]
    with pytest.raises(ConfigError, match=r"agent.hidden_layers: got \[64, 'x'\] \(list\), expected list\[int\]"):
        build_config("iql-oracle", "d", overrides=["agent.hidden_layers=[64, 'x']"])
    with pytest.raises(ConfigError, match=r"agent.critic_layers: got 3 \(int\), expected list\[int\]"):
        build_config("iql-oracle", "d", overrides=["agent.critic_layers=3"])


def test_library_code_does_not_reseed_the_global_rng(tmp_path):
    ds = TrajectoryDataset(write_trajectories(tmp_path / "t.h5", [Episode(
        np.random.default_rng(i).standard_normal((40, 3)).astype(np.float32), np.zeros((40, 1), np.float32),
        np.ones(40, np.float32), False, np.zeros(3, np.float32)) for i in range(4)], env_id="Hopper-v5",
        behaviour_policy="b", seed=0))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    for critic in ("iql", "behaviour"):
        make_preferences(ds, pairs=20, segment=8, teacher=Teacher(utility="regret", critic=critic, value_steps=5), seed=0,
                         critic=regret_advantages)
    make_preferences(ds, pairs=20, segment=8, pairing="disagreement", seed=0, ensemble=fit_reward_ensemble)
    assert torch.equal(before, torch.get_rng_state())


def test_a_checkpoint_that_does_not_fit_is_one_line(tmp_path):
    from pbrl.errors import CheckpointError

    data = two_behaviour_dataset(tmp_path, episodes=6)
    train(small("bc", data, 3), tmp_path / "run", progress=False)
    cfg_path = tmp_path / "run" / "config.toml"
    cfg_path.write_text(cfg_path.read_text().replace("hidden_layers = [\n    32,\n    32,\n]", "hidden_layers = [\n    8,\n]"))
    with pytest.raises(CheckpointError, match=r"step_00000003.pt: weights: got .*expected the parameters of this agent"):
        load_run(tmp_path / "run", "cpu")


@pytest.mark.parametrize("reset, adam_steps", [(True, 1), (False, 6)])
def test_cpl_phase_switch_can_restart_the_optimiser(tmp_path, reset, adam_steps):
    data = two_behaviour_dataset(tmp_path, episodes=6)
    cfg = small("cpl", data, 6, extra=["agent.bc_steps=5", f"agent.reset_optimizer={str(reset).lower()}"])
    train(cfg, tmp_path / "run", progress=False)
    state = torch.load(Checkpoints(tmp_path / "run" / "checkpoints", 1).latest(), weights_only=False)
    adam = state["optimizers"]["main"]["opt"]["state"][0]
    assert int(adam["step"]) == adam_steps


@pytest.mark.learning
def test_cpl_dense_regime_learns_the_preferred_behaviour_from_scored_segments(tmp_path, learned, learning_seed):
    data = two_behaviour_dataset(tmp_path, seed=learning_seed)
    cfg = config("cpl", data, steps=400, seed=learning_seed, bc_steps=100, dropout=0.0, lr=1e-3, regime="dense")
    sampler = make_sampler(cfg, build_agent(cfg, load_dataset(data)), load_dataset(data), torch.device("cpu"))
    batch = sampler.sample(16)
    assert batch.obs.shape == (16, 8, 3) and batch.score.shape == (16,)
    train(cfg, tmp_path / "cpl", progress=False)
    _, cpl, _ = load_run(tmp_path / "cpl", "cpu")
    learned.check("dense CPL mean action", mean_action(cpl), ">", 0.4)


def test_cpl_dense_regime_refuses_labels_without_scores_and_writes_nothing(tmp_path):
    from pbrl.data.preferences import read_preferences

    data = two_behaviour_dataset(tmp_path, episodes=6)
    prefs, ds = read_preferences(data)
    prefs.score_a = prefs.score_b = None  # as human labels: no teacher scores
    path = write_preferences(tmp_path / "human.prefs.h5", prefs, ds, teacher={"name": "human"}, seed=0)
    with pytest.raises(DatasetError, match=r"human.prefs.h5: 'score_a'/'score_b': got missing, expected the teacher's "
                                           r"segment scores for agent.regime=dense"):
        train(small("cpl", str(path), 5, extra=["agent.regime=dense"]), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match=r"agent.regime: got 'rank', expected one of \['sparse', 'dense'\]"):
        train(small("cpl", data, 5, extra=["agent.regime=rank"]), tmp_path / "run", progress=False)


def test_cpl_learning_rate_warms_up_again_from_the_switch(tmp_path):
    from pbrl.train.loop import Optimizers, TrainConfig

    data = two_behaviour_dataset(tmp_path, episodes=6)
    cfg = small("cpl", data, 12, extra=["agent.bc_steps=5", "agent.warmup_steps=4", "agent.reset_optimizer=true"])
    agent = build_agent(cfg, load_dataset(data))
    opts = Optimizers(agent.optimizers(), TrainConfig(steps=12, lr=1.0))
    rates = []
    for _ in range(12):
        rates.append(opts.opt["main"].param_groups[0]["lr"])
        opts.sched["main"].step()
    assert rates == [1.0] * 5 + [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0]  # BC at full rate, then 1/4, 2/4, ... (official)
    train(cfg, tmp_path / "run", progress=False)  # and in a run: the logged rate at the last step is the full one
    state = torch.load(Checkpoints(tmp_path / "run" / "checkpoints", 1).latest(), weights_only=False)
    assert state["optimizers"]["main"]["sched"]["last_epoch"] == 12


def test_cpl_scores_a_tanh_gaussian_head_without_its_parameter_free_jacobian():
    """CPL's segment score sums log π; the tanh Jacobian −Σ log(1 − a²) has no parameters, and on actions at
    the bound it would shift one side of a pair by several nats. The score is the pre-tanh Gaussian density."""
    from pbrl.agents.base import DataSpec
    from pbrl.agents.cpl import CPL, CPLConfig
    from pbrl.core import cpl_loss
    from pbrl.data.preferences import PreferenceBatch

    torch.manual_seed(0)
    agent = CPL(CPLConfig(policy="tanh_gaussian", hidden_layers=[16], dropout=0.0, alpha=0.1),
                DataSpec(3, 2, torch.zeros(3), torch.ones(3)))
    obs = torch.randn(4, 2, 5, 3)
    act = torch.rand(4, 2, 5, 2) * 2 - 1
    act[:, 1, :2] = 1.0  # segment b has actions on the bound
    mu, log_std = agent.policy.distribution_params(obs)
    eps = agent.policy.action_eps
    reference = torch.distributions.Normal(mu.double(), log_std.double().exp()).log_prob(
        torch.atanh(act.double().clamp(-1 + eps, 1 - eps))).sum(-1)                   # float64, no Jacobian
    score = agent.policy.score_log_prob(obs, act)
    torch.testing.assert_close(score.double(), reference, rtol=1e-5, atol=1e-4)
    jacobian = torch.log1p(-torch.tanh(torch.atanh(act.double().clamp(-1 + eps, 1 - eps))) ** 2).sum(-1)
    torch.testing.assert_close((agent.policy.log_prob(obs, act) - score).double(), -jacobian, rtol=1e-4, atol=1e-3)
    batch = PreferenceBatch(obs, act, torch.ones(4), torch.ones(4, 2, 5, dtype=torch.bool), torch.zeros(4, dtype=torch.long))
    expected = cpl_loss(reference[:, 0].float(), reference[:, 1].float(), torch.ones(4), alpha=0.1, gamma=1.0,
                        bias=0.5).mean()
    torch.testing.assert_close(agent.loss(batch, step=0).loss, expected, rtol=1e-4, atol=1e-4)


def test_the_censored_tanh_gaussian_scores_bound_actions_by_their_mass_beyond_the_bound():
    """``agent.boundary=censored``: an action entry on the bound scores log P(tanh(u) beyond ±(1 − ε)) = log Φ(·),
    an interior one its density, against scipy in float64; the MLP and transformer heads agree; a policy saturated
    at the bound pays nearly nothing for bound actions, where the clamped density charges it several nats."""
    from scipy import stats

    from pbrl.nets.mlp import PolicyHead, TanhGaussianPolicy, tanh_gaussian_log_prob

    torch.manual_seed(0)
    policy = TanhGaussianPolicy(3, 2, hidden_layers=[16], boundary="censored").double()
    obs = torch.randn(6, 5, 3, dtype=torch.float64)
    act = (torch.rand(6, 5, 2, dtype=torch.float64) * 2 - 1)
    act[:, :2, 0], act[:, 3, 1] = 1.0, -1.0
    mu, log_std = (x.detach().numpy() for x in policy.distribution_params(obs))
    a, eps = act.numpy(), policy.action_eps
    c = np.arctanh(1 - eps)
    u = np.arctanh(np.clip(a, -1 + eps, 1 - eps))
    density = stats.norm.logpdf(u, mu, np.exp(log_std))
    jacobian = np.log1p(-np.tanh(u) ** 2)
    tail = np.where(a >= 1 - eps, stats.norm.logsf(c, mu, np.exp(log_std)), stats.norm.logcdf(-c, mu, np.exp(log_std)))
    on_bound = np.abs(a) >= 1 - eps
    expected_score = np.where(on_bound, tail, density).sum(-1)
    expected = np.where(on_bound, tail, density - jacobian).sum(-1)
    np.testing.assert_allclose(policy.score_log_prob(obs, act).detach().numpy(), expected_score, rtol=1e-10)
    np.testing.assert_allclose(policy.log_prob(obs, act).detach().numpy(), expected, rtol=1e-10)
    head = PolicyHead(4, 2, "tanh_gaussian", boundary="censored").double()
    h = torch.randn(6, 5, 4, dtype=torch.float64)
    loc, hls = head.params(h)
    torch.testing.assert_close(head.score_log_prob(h, act),
                               tanh_gaussian_log_prob(loc, hls, act, eps, "censored", jacobian=False))
    # saturated at +1 (μ = 6, σ = 0.5): the censored score of a +1 action is ~0, the clamped density's ~ −10
    mu_sat, ls_sat, one = torch.full((1, 1), 6.0), torch.full((1, 1), math.log(0.5)), torch.ones(1, 1)
    assert tanh_gaussian_log_prob(mu_sat, ls_sat, one, eps, "censored", jacobian=False) > -0.01
    assert tanh_gaussian_log_prob(mu_sat, ls_sat, one, eps, "clamp", jacobian=False) < -5
    with pytest.raises(ValueError, match="boundary: got 'x'"):
        TanhGaussianPolicy(3, 2, boundary="x")


def test_cpl_with_a_bias_below_one_keeps_the_likelihood_of_both_segments_in_its_logit():
    """CPL's logit A_a − λ A_b. At λ = 1 a constant added to every step's log π cancels and an uninformative pair
    (the same segment on both sides, label ½) gives no gradient; at λ = ½ the constant shifts every logit by
    (1 − λ)·α·T·c (float64, against the formula), and that pair pulls a Gaussian head's learned log σ (whatever its
    label) by −(1 − λ)·α·Σ_t (1 − z²), z = (a − μ)/σ: actions at the mean sharpen σ."""
    from pbrl.core import cpl_loss
    from pbrl.nets.mlp import GaussianPolicy

    gen = torch.Generator().manual_seed(0)
    logp_a, logp_b = (-torch.rand(8, 12, generator=gen, dtype=torch.float64) * 3 for _ in range(2))
    label = torch.rand(8, generator=gen, dtype=torch.float64)
    c, alpha, t = -0.9189385332046727, 0.1, 12
    torch.testing.assert_close(cpl_loss(logp_a + c, logp_b + c, label, bias=1.0), cpl_loss(logp_a, logp_b, label, bias=1.0))
    lam = 0.5
    a, b = alpha * logp_a.sum(1), alpha * logp_b.sum(1)
    shift = (1 - lam) * alpha * t * c
    expected = label * F.softplus(-(a - lam * b + shift)) + (1 - label) * F.softplus(-(b - lam * a + shift))
    torch.testing.assert_close(cpl_loss(logp_a + c, logp_b + c, label, alpha=alpha, bias=lam), expected)

    torch.manual_seed(0)
    policy = GaussianPolicy(3, 2, hidden_layers=[8]).double()
    obs = torch.randn(4, 6, 3, dtype=torch.float64)
    with torch.no_grad():
        act = policy(obs)  # actions at the mean: z = 0
    grads = {}
    for bias in (1.0, 0.5):
        policy.zero_grad()
        logp = policy.score_log_prob(obs, act)
        cpl_loss(logp, logp, torch.full((4,), 0.5, dtype=torch.float64), alpha=alpha, bias=bias).mean().backward()
        grads[bias] = policy.log_std.grad.clone()
    assert grads[1.0].abs().max() < 1e-12
    assert (grads[0.5] > 0).all()  # descent lowers log σ on a pair that says nothing


def test_bc_on_transitions_scores_every_step_alike_and_is_refused_where_it_has_no_meaning(tmp_path):
    """``agent.data=transitions`` (D4RL's BC): uniform steps of the whole trajectories, −log π(a|s) of each (against
    the deterministic head's −‖tanh(f(s)) − a‖², float64); refused for CPL, SFT and a transformer in one line."""
    from pbrl.data.transitions import TransitionBatch

    data = two_behaviour_dataset(tmp_path, episodes=6)
    cfg = small("bc", data, 3, extra=["agent.data=transitions", "agent.policy=deterministic", "agent.dropout=0.0"])
    loaded = load_dataset(data)
    agent = build_agent(cfg, loaded).double()
    assert type(agent).batch_specs(cfg.agent_config)["main"].kind == "transitions"
    batch = make_sampler(cfg, agent, loaded, torch.device("cpu")).sample(64)
    assert isinstance(batch, TransitionBatch)
    obs, act = batch.obs.double(), batch.act.double()
    policy = agent.policy
    mu = torch.tanh(policy.net((obs - policy.normalizer.mean.double()) / policy.normalizer.std.double()))
    expected = ((mu - act) ** 2).sum(-1).mean()
    torch.testing.assert_close(agent.loss(TransitionBatch(obs, act, batch.reward, batch.next_obs, batch.done), 0).loss,
                               expected)
    for agent_name, extra in (("cpl", []), ("sft", []), ("bc", ["agent.backbone=transformer"])):
        with pytest.raises(ConfigError, match="agent.data: data: got 'transitions'"):
            build_agent(small(agent_name, data, 3, extra=["agent.data=transitions", *extra]), loaded)


def test_iql_reads_raw_observations_in_every_network_when_asked():
    """``agent.observations=raw`` (d3rlpy's default) gives the actor, twin Q and V the identity normaliser; the
    default standardises each with the dataset's statistics (CORL)."""
    from pbrl.agents.base import DataSpec
    from pbrl.agents.iql import IQL, IQLConfig

    spec = DataSpec(3, 2, torch.tensor([1.0, -2.0, 5.0]), torch.tensor([0.5, 2.0, 3.0]))
    obs = torch.randn(7, 3)
    for mode, mean, std in (("standardized", spec.obs_mean, spec.obs_std), ("raw", torch.zeros(3), torch.ones(3))):
        agent = IQL(IQLConfig(hidden_layers=[8], critic_layers=[8], observations=mode), spec)
        for net in (agent.policy, agent.q, agent.value, agent.q_target):
            normalizers = [m for m in net.modules() if type(m).__name__ == "ObsNormalizer"]
            assert normalizers, type(net).__name__
            for n in normalizers:
                torch.testing.assert_close(n(obs), (obs - mean) / std)


def test_an_agent_declaring_several_batches_draws_each_from_its_own_sampler(tmp_path):
    """``batch_specs`` with two names: one ``{name: batch}`` per step, each of its own size, from independent
    generators whose joint state restores the same draws (exact resume)."""
    import copy

    from pbrl.agents.base import BatchSpec
    from pbrl.agents.bc import BC
    from pbrl.train.trainer import data_spec

    class PairsAndWindows(BC):
        @classmethod
        def batch_specs(cls, cfg):
            return {"pairs": BatchSpec("preferences"), "windows": BatchSpec("windows", context=5, batch_size=7)}

    data = two_behaviour_dataset(tmp_path, episodes=6)
    cfg = small("bc", data, 3)
    loaded = load_dataset(data)
    sampler = make_sampler(cfg, PairsAndWindows(cfg.agent_config, data_spec(loaded.trajectories)), loaded,
                           torch.device("cpu"))
    state = copy.deepcopy(sampler.state_dict())
    first = sampler.sample(4)
    assert first["pairs"].obs.shape[:2] == (4, 2) and first["windows"].obs.shape[:2] == (7, 5)
    sampler.load_state_dict(state)
    again = sampler.sample(4)
    for name in first:
        assert torch.equal(first[name].obs, again[name].obs), name
    seeds = {name: s.generator.initial_seed() for name, s in sampler.samplers.items()}
    assert seeds["pairs"] == cfg.train.seed != seeds["windows"]


@pytest.mark.parametrize("agent", sorted(AGENTS))
def test_every_agent_runs_a_one_step_budget_from_its_cpu_preset(tmp_path, agent):
    """``--steps 1`` against the cpu preset: phases scaled to the budget (a phase that must last a step keeps one),
    one step trained, a checkpoint written."""
    data = two_behaviour_dataset(tmp_path, episodes=6)
    cfg = build_config(agent, data, scale="cpu", steps=1, seed=0, overrides=[
        "train.eval_episodes=0", "train.device=cpu", *SMALL.get(agent, [])])
    assert train(cfg, tmp_path / "run", progress=False)["steps"] == 1
