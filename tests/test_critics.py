"""The regret teacher's critics (pbrl.train.critics): which ones rank a known-better policy first, and the expert
critic's value and advantage against their definitions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pbrl.data.pairing import make_preferences
from pbrl.data.store import Episode, TrajectoryDataset, write_trajectories
from pbrl.data.teachers import Teacher, agreement, source_quality
from pbrl.errors import ConfigError
from pbrl.train.critics import expert_advantages, regret_advantages


def corridor(path, episodes: int = 20, length: int = 200, seed: int = 0) -> TrajectoryDataset:
    """Two policies on a 1-D corridor, reward = the step's progress ``a``. The good one walks right; the bad one
    walks left but takes the good one's step 30 % of the time, so the better action is in the data at the bad
    policy's states, which reveal the policy (x > 0 or x < 0)."""
    rng = np.random.default_rng(seed)
    eps = []
    for i in range(episodes):
        good = i % 2 == 0
        x, obs, act = 0.0, [], []
        for _ in range(length):
            right = good or rng.random() < 0.3
            a = float(np.clip((0.7 if right else -0.7) + 0.4 * rng.standard_normal(), -1, 1))
            obs.append([x])
            act.append([a])
            x += 0.1 * a
        act = np.array(act, np.float32)
        eps.append(Episode(np.array(obs, np.float32), act, act[:, 0].copy(), False, np.array([x], np.float32),
                           source="expert-walker" if good else "medium-walker"))
    return TrajectoryDataset(write_trajectories(path, eps, env_id="Hopper-v5", behaviour_policy="corridor", seed=0))


@pytest.mark.learning
def test_optimal_value_critic_ranks_the_better_policy_first_and_the_behaviour_critic_does_not(tmp_path, learned,
                                                                                               learning_seed):
    ds = corridor(tmp_path / "c.h5", seed=learning_seed)
    quality = source_quality(ds)
    agree = {}
    for critic, steps in (("iql", 500), ("behaviour", 400)):  # iql: 1.0 at 500 steps as at 2,000 (seed 0)
        prefs = make_preferences(ds, pairs=400, segment=10, seed=learning_seed, critic=regret_advantages,
                                 teacher=Teacher(utility="regret", critic=critic, value_steps=steps, discount=0.9))
        agree[critic] = agreement(prefs.label, quality[prefs.segments_a[:, 0]], quality[prefs.segments_b[:, 0]])
    learned.check("IQL critic's agreement with the better policy", agree["iql"], ">", 0.9)
    # the known-bad variant: the behaviour's own value cancels each policy's return, its advantages average to zero
    learned.check("behaviour critic's agreement with the better policy", agree["behaviour"], "<", 0.8, bad=True)


@pytest.mark.slow
@pytest.mark.learning
def test_an_expert_critic_ranks_the_better_policy_first(tmp_path, learned, learning_seed):
    """The expert path end to end with a real stable-baselines3 SAC trained on the corridor (reward = the step ``a``):
    its critic's advantages rank the good walker's segments first, where the behaviour critic ranks luck (above)."""
    import gymnasium as gym
    from stable_baselines3 import SAC

    class Corridor(gym.Env):
        observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
        action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.x, self.t = 0.0, 0
            return np.array([self.x], np.float32), {}

        def step(self, action):
            a = float(np.clip(action[0], -1, 1))
            self.x, self.t = self.x + 0.1 * a, self.t + 1
            return np.array([self.x], np.float32), a, False, self.t >= 50, {}

    model = SAC("MlpPolicy", Corridor(), seed=learning_seed, device="cpu", learning_starts=100, batch_size=64,
                policy_kwargs={"net_arch": [32, 32]})
    model.learn(600)  # enough for Q to prefer a > 0; the test is the path: r + γV(s′) − V(s) under its critic
    model.save(tmp_path / "expert" / "model.zip")
    ds = corridor(tmp_path / "c.h5", length=50, seed=learning_seed)
    quality = source_quality(ds)
    prefs = make_preferences(ds, pairs=400, segment=10, seed=learning_seed, critic=regret_advantages,
                             teacher=Teacher(utility="regret", critic="expert", expert=str(tmp_path / "expert"),
                                             discount=0.9))
    learned.check("expert critic's agreement with the better policy",
                  agreement(prefs.label, quality[prefs.segments_a[:, 0]], quality[prefs.segments_b[:, 0]]), ">", 0.9)


def test_critic_choice_is_checked_and_recorded():
    assert Teacher(utility="regret").as_dict()["critic"] == "iql"
    assert Teacher(utility="regret", critic="behaviour").as_dict()["value_steps"] == 3000
    assert "critic" not in Teacher().as_dict()
    with pytest.raises(ConfigError, match=r"--critic: critic: got 'optimal', expected one of"):
        Teacher(utility="regret", critic="optimal")
    with pytest.raises(ConfigError, match=r"only the regret teacher has one"):
        Teacher(critic="iql")
    with pytest.raises(ConfigError, match=r"--critic expert: utility weights"):
        Teacher(utility="regret", critic="expert", weights={"reward": 1.0})


@pytest.mark.slow
def test_sac_expert_value_is_the_policy_average_of_q_and_labels_use_its_td_error(tmp_path):
    """V(s) = E_{a∼π} Q(s, a), estimated with K sampled actions: against SB3's own sampling of π with many
    actions, and A = u + γV(s′) − V(s) on a dataset."""
    from stable_baselines3 import SAC

    from pbrl.data.make import train_behaviour
    from pbrl.train.critics import expert_values

    run = train_behaviour("hopper", algo="sac", steps=256, seed=0, directory=tmp_path / "sac", chunk=256)
    policy = SAC.load(str(run.directory / "model.zip"), device="cpu").policy
    obs = np.random.default_rng(0).standard_normal((16, 11)).astype(np.float32) * 0.1
    torch.manual_seed(0)
    with torch.no_grad():  # SB3's own sampling, 2048 actions per state
        o = torch.as_tensor(obs).repeat(2048, 1)
        actions, _ = policy.actor.action_log_prob(o)
        q = torch.stack(policy.critic(o, actions)).mean(0).view(2048, 16).double()
    reference, standard_error = q.mean(0).numpy(), (q.std(0) * np.sqrt(1 / 2048 + 1 / 64)).numpy()
    v = expert_values(run.directory, obs, samples=64, seed=0)
    assert (np.abs(v - reference) < 4.5 * standard_error + 1e-6).all()
    np.testing.assert_array_equal(v, expert_values(run.directory, obs, samples=64, seed=0))  # seeded
    eps = run.episodes()[:3]
    ds = TrajectoryDataset(write_trajectories(tmp_path / "s.h5", eps, env_id="Hopper-v5", behaviour_policy="sac", seed=0))
    teacher = Teacher(utility="regret", critic="expert", expert=str(run.directory), seed=3)
    adv = expert_advantages(ds, ds.rewards.astype(np.float64), teacher)
    v_rows = expert_values(run.directory, ds.observations, seed=3)
    v_final = expert_values(run.directory, ds.final_observations, seed=4)
    for e, ep in enumerate(eps):
        rows = slice(ds.episode_offsets[e], ds.episode_offsets[e + 1])
        v_next = np.append(v_rows[rows][1:], 0.0 if ep.terminated else v_final[e])
        np.testing.assert_allclose(adv[rows], ep.rewards + 0.99 * v_next - v_rows[rows], rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_ppo_expert_advantage_is_the_td_error_of_its_value_in_reward_units(tmp_path):
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from pbrl.data.make import train_behaviour
    from pbrl.envs.registry import make_env

    run = train_behaviour("hopper", algo="ppo", steps=1024, seed=0, directory=tmp_path / "ppo", chunk=1024)
    eps = run.episodes()[:5]
    ds = TrajectoryDataset(write_trajectories(tmp_path / "p.h5", eps, env_id="Hopper-v5", behaviour_policy="ppo", seed=0))
    teacher = Teacher(utility="regret", critic="expert", expert=str(run.directory))
    adv = expert_advantages(ds, ds.rewards.astype(np.float64), teacher)
    stats = VecNormalize.load(str(run.directory / "vecnormalize.pkl"), DummyVecEnv([lambda: make_env("hopper")]))
    model = PPO.load(str(run.directory / "model.zip"), device="cpu")
    scale = np.sqrt(stats.ret_rms.var + stats.epsilon)
    for e, ep in enumerate(eps):
        with torch.no_grad():
            v = model.policy.predict_values(torch.as_tensor(stats.normalize_obs(
                np.concatenate([ep.observations, ep.final_observation[None]])))).squeeze(-1).double().numpy() * scale
        if ep.terminated:
            v[-1] = 0.0
        expected = ep.rewards + 0.99 * v[1:] - v[:-1]
        rows = slice(ds.episode_offsets[e], ds.episode_offsets[e + 1])
        np.testing.assert_allclose(adv[rows], expected, rtol=1e-4, atol=1e-3)


def test_expert_critic_without_a_run_is_a_one_line_error(tmp_path):
    ds = corridor(tmp_path / "c.h5", episodes=2, length=20)
    teacher = Teacher(utility="regret", critic="expert", expert=str(tmp_path / "nothing"))
    with pytest.raises(ConfigError, match=r"--expert: expert run directory: got .*nothing, expected a directory with "
                                          r"model.zip"):
        regret_advantages(ds, ds.rewards.astype(np.float64), teacher)


def test_a_made_dataset_names_its_own_expert_and_an_imported_one_is_told_to_name_one(tmp_path):
    from pbrl.errors import DatasetError
    from pbrl.train.critics import dataset_expert

    eps = [Episode(np.zeros((5, 11), np.float32), np.zeros((5, 3), np.float32), np.ones(5, np.float32), False,
                   np.zeros(11, np.float32))]
    made = TrajectoryDataset(write_trajectories(tmp_path / "m.h5", eps, env_id="Hopper-v5", behaviour_policy="x", seed=3,
                                                metadata={"expert_steps": 300000, "algo": "ppo", "expert_algo": "sac"}))
    assert dataset_expert(made, "runs/behaviour") == ("hopper", "sac", 300000, 3, Path("runs/behaviour/hopper-sac-300000-s3"))
    imported = TrajectoryDataset(write_trajectories(tmp_path / "i.h5", eps, env_id="Hopper-v5", behaviour_policy="x", seed=0))
    with pytest.raises(DatasetError, match=r"metadata 'expert_steps': got missing, expected a dataset made by"):
        dataset_expert(imported)
