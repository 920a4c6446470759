"""The models a labelling run trains or loads: the regret teacher's critics and the reward ensemble that picks
``disagreement`` pairs. ``pbrl.data`` declares what it needs (:data:`pbrl.data.teachers.AdvantageCritic`,
:data:`pbrl.data.pairing.EnsembleFit`) and never imports a network; ``pbrl data label`` passes these in.

The IQL critic and the reward ensemble are the agents' own models and losses (:class:`pbrl.agents.iql.IQLCritic`,
:class:`pbrl.agents.reward_model.RewardModel` on :class:`pbrl.nets.reward.RewardEnsemble`), trained by the shared
loop's steps in memory (:func:`pbrl.train.loop.fit_in_memory`): nothing of a labelling fit is written to disk.

The regret teacher's three critics (``Teacher.critic``), each giving ``A(s_t, a_t)`` for every row:

- ``iql`` (:func:`iql_advantages`): IQL's critic without its actor (Kostrikov et al., 2021, eqs. 5–6), fitted in
  sample to the utility: ``r + γV(s′) − V(s)`` with V the τ-expectile of Q, an estimate of the optimal value
  among the dataset's actions;
- ``expert`` (:func:`expert_advantages`): ``r + γV(s′) − V(s)`` under an expert's value, as the CPL paper
  labels (jhejna/cpl, ``scripts/add_pref_labels.py``, label ``rl_sum``): SAC's ``V(s) = mean_k Q(s, a_k)``,
  a_k ∼ π(·|s); PPO's value head;
- ``behaviour`` (:func:`behaviour_advantages`): ``r + γV^β(s′) − V^β(s)``, V^β fitted to the behaviour's returns.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from pbrl.agents.base import DataSpec
from pbrl.agents.iql import IQLConfig, IQLCritic
from pbrl.agents.reward_model import RewardModel, RewardModelConfig
from pbrl.data.preferences import PreferenceBatch, PreferenceDataset, PreferenceSampler
from pbrl.data.store import TrajectoryDataset
from pbrl.data.teachers import Teacher, advantages, discounted_returns_to_go
from pbrl.data.transitions import TransitionSampler, returns_scale
from pbrl.errors import ConfigError, DatasetError, describe
from pbrl.nets.mlp import mlp
from pbrl.train.loop import TrainConfig, fit_in_memory


def fit_value_function(trajectories: TrajectoryDataset, *, gamma: float = 0.99, steps: int = 3000,
                       batch_size: int = 512, hidden: int = 256, seed: int = 0, u: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Fitted value evaluation of the dataset's behaviour: an MLP V(s) regressed on Monte-Carlo returns-to-go
    of the utility ``u`` (the reward by default).

    Returns ``(V(s_t) for every row [N], V(final observation) for every episode [E])``.
    """
    gen = torch.Generator().manual_seed(seed)
    obs = torch.as_tensor(trajectories.observations)
    target = torch.as_tensor(discounted_returns_to_go(trajectories, gamma, u), dtype=torch.float32)
    mean, std = obs.mean(0), obs.std(0) + 1e-3
    t_mean, t_std = target.mean(), target.std() + 1e-6
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's RNG
        torch.manual_seed(seed)
        net = mlp(obs.shape[1], 1, [hidden, hidden])
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(steps):
        idx = torch.randint(len(obs), (batch_size,), generator=gen)
        loss = ((net((obs[idx] - mean) / std).squeeze(-1) - (target[idx] - t_mean) / t_std) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        def value(o: torch.Tensor) -> np.ndarray:
            return (net((o - mean) / std).squeeze(-1) * t_std + t_mean).double().numpy()

        return value(obs), value(torch.as_tensor(trajectories.final_observations))


def behaviour_advantages(trajectories: TrajectoryDataset, u: np.ndarray, teacher: Teacher) -> np.ndarray:
    """``u_t + γV^β(s_{t+1}) − V^β(s_t)`` ``[N]``, V^β fitted to the behaviour's own returns of ``u``
    (:func:`fit_value_function` with the teacher's γ, fit steps and seed)."""
    values = fit_value_function(trajectories, gamma=teacher.gamma, steps=teacher.fit_steps, seed=teacher.seed, u=u)
    return advantages(trajectories, u, values, teacher.gamma)


@torch.no_grad()
def _rows(fn, *arrays: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """``fn`` over row chunks of ``arrays`` (float32 tensors), concatenated as float64 ``[N]``."""
    n = len(arrays[0])
    return np.concatenate([fn(*(torch.as_tensor(a[i:i + chunk]) for a in arrays)).double().numpy()
                           for i in range(0, n, chunk)]) if n else np.zeros(0)


def observation_spec(trajectories: TrajectoryDataset) -> DataSpec:
    """The dimensions and observation statistics a labelling model normalises with (std floored at 1e-3)."""
    obs = torch.as_tensor(trajectories.observations)
    return DataSpec(trajectories.obs_dim, trajectories.act_dim, obs.mean(0), obs.std(0) + 1e-3)


def fit_iql_critic(trajectories: TrajectoryDataset, u: np.ndarray, *, gamma: float, steps: int, seed: int,
                   expectile: float = 0.7, batch_size: int = 256, hidden: tuple[int, ...] = (256, 256),
                   lr: float = 3e-4, target_update: float = 0.005) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IQL's critic without its actor (:class:`pbrl.agents.iql.IQLCritic`), fitted in sample to the utility ``u``:
    twin Q with a Polyak target (Kostrikov et al., 2021, eq. 6) and V the τ-expectile of the target Q (eq. 5);
    ``steps`` Adam steps (no weight decay, no clipping), seeded by ``seed`` without touching the global RNG. Trained
    on ``u`` × IQL's locomotion scale ``1000 / (max − min episode return)``. Returns, in the units of ``u``:
    ``(Q(s_t, a_t) [N], V(s_t) [N], V(final observation) [E])`` (Q: the smaller target critic)."""
    scale = returns_scale(trajectories, u)
    sampler = TransitionSampler(trajectories, rewards=u, scale=scale, seed=seed)
    cfg = IQLConfig(critic_layers=list(hidden), discount=gamma, expectile=expectile, target_update=target_update)
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's RNG
        torch.manual_seed(seed)
        critic = IQLCritic(cfg, observation_spec(trajectories))
    fit_in_memory(critic, lambda: sampler.sample(batch_size),
                  TrainConfig(steps=steps, batch_size=batch_size, lr=lr, weight_decay=0.0, grad_clip=0.0, seed=seed),
                  progress=True, desc="iql critic")
    q_rows = _rows(lambda o, a: critic.q_target(o, a).min(0).values, trajectories.observations, trajectories.actions)
    v_rows = _rows(critic.value, trajectories.observations)
    v_final = _rows(critic.value, trajectories.final_observations)
    return q_rows / scale, v_rows / scale, v_final / scale


def iql_advantages(trajectories: TrajectoryDataset, u: np.ndarray, teacher: Teacher) -> np.ndarray:
    """``u_t + γV(s_{t+1}) − V(s_t)`` ``[N]`` with V the in-sample optimal value of :func:`fit_iql_critic` (the
    teacher's γ, fit steps and seed). Not ``Q − V``: in sample, that compares an action only with the other
    actions seen in that state, which on locomotion data are the same policy's own, so it ranks luck again
    (measured on the shipped Hopper set, docs/benchmarks.md)."""
    _, v_rows, v_final = fit_iql_critic(trajectories, u, gamma=teacher.gamma, steps=teacher.fit_steps, seed=teacher.seed)
    return advantages(trajectories, u, (v_rows, v_final), teacher.gamma)


def dataset_expert(trajectories: TrajectoryDataset, behaviour_dir: str | Path = "runs/behaviour"
                   ) -> tuple[str, str, int, int, Path]:
    """The expert ``pbrl data make`` trained (or would train) for a dataset it made: ``(env preset, algo, steps,
    seed, run directory)``."""
    meta = trajectories.metadata
    if "expert_steps" not in meta:
        raise DatasetError(describe(str(trajectories.path), "metadata 'expert_steps'", "missing",
                                    "a dataset made by `pbrl data make` (or name an expert with --expert DIR)"))
    from pbrl.envs.registry import get_env_spec

    env, algo = get_env_spec(trajectories.env_id).name, meta.get("expert_algo") or meta.get("algo", "sac")
    steps, seed = int(meta["expert_steps"]), int(meta.get("seed", 0))
    return env, algo, steps, seed, Path(behaviour_dir) / f"{env}-{algo}-{steps}-s{seed}"


def expert_values(run: str | Path, observations: np.ndarray, *, samples: int = 16, seed: int = 0) -> np.ndarray:
    """``V(s)`` ``[N]`` of the expert in ``run`` (a stable-baselines3 run directory of
    :func:`pbrl.data.make.train_behaviour`), in reward units. SAC: ``mean_k mean_i Q_i(s, a_k)`` over ``samples``
    actions a_k ∼ π(·|s) from a generator seeded by ``seed`` (as jhejna/cpl's ``add_pref_labels.py``). PPO: its
    value head, with its observation normaliser applied and its reward normalisation undone."""
    from stable_baselines3 import PPO, SAC

    run = Path(run)
    if not (run / "model.zip").exists():
        raise ConfigError(describe("--expert", "expert run directory", str(run),
                                   "a directory with model.zip from `pbrl data make` (runs/behaviour/ENV-ALGO-STEPS-sSEED)"))
    norm_path = run / "vecnormalize.pkl"
    if not norm_path.exists():  # SAC (pbrl trains it without normalisers)
        policy = SAC.load(str(run / "model.zip"), device="cpu").policy
        policy.set_training_mode(False)
        gen = torch.Generator().manual_seed(seed)

        def value(o: torch.Tensor) -> torch.Tensor:
            mean, log_std, _ = policy.actor.get_action_dist_params(o)
            sampled = torch.tanh(mean + log_std.exp() * torch.randn((samples, *mean.shape), generator=gen))  # [K, B, da]
            o_rep = o.expand(samples, *o.shape).reshape(-1, o.shape[-1])
            q = torch.stack(policy.critic(o_rep, sampled.reshape(-1, sampled.shape[-1]))).mean(0)
            return q.view(samples, -1).mean(0)

        return _rows(value, observations, chunk=2048)
    import pickle

    model = PPO.load(str(run / "model.zip"), device="cpu")
    with open(norm_path, "rb") as f:
        stats = pickle.load(f)
    reward_std = float(np.sqrt(stats.ret_rms.var + stats.epsilon)) if stats.norm_reward else 1.0
    normed = np.clip((observations - stats.obs_rms.mean) / np.sqrt(stats.obs_rms.var + stats.epsilon),
                     -stats.clip_obs, stats.clip_obs).astype(np.float32)
    return _rows(lambda x: model.policy.predict_values(x).squeeze(-1), normed) * reward_std


def expert_advantages(trajectories: TrajectoryDataset, u: np.ndarray, teacher: Teacher, *, samples: int = 16
                      ) -> np.ndarray:
    """``u_t + γV(s_{t+1}) − V(s_t)`` ``[N]`` under the value of the expert in ``teacher.expert``
    (:func:`expert_values`): a segment then scores ``Σγ^t r_t + γ^T V(s_T) − V(s_0)``, the label the CPL paper
    trains on (``rl_sum`` in jhejna/cpl)."""
    v_rows = expert_values(teacher.expert or "", trajectories.observations, samples=samples, seed=teacher.seed)
    v_final = expert_values(teacher.expert or "", trajectories.final_observations, samples=samples, seed=teacher.seed + 1)
    return advantages(trajectories, u, (v_rows, v_final), teacher.gamma)


def regret_advantages(trajectories: TrajectoryDataset, u: np.ndarray, teacher: Teacher) -> np.ndarray:
    """:data:`pbrl.data.teachers.AdvantageCritic`: ``A(s_t, a_t)`` ``[N]`` of the utility ``u`` from the critic
    the teacher names (``iql``, ``expert`` or ``behaviour``)."""
    critic = {"iql": iql_advantages, "expert": expert_advantages, "behaviour": behaviour_advantages}
    return critic[teacher.critic_name](trajectories, u, teacher)


class BootstrappedPairs:
    """Batches of labelled pairs for an ensemble of ``members`` reward models, each fitted to its own bootstrap of
    the pairs (Christiano et al., 2017): a batch is drawn uniformly from all pairs and carries ``weight [K, B]``, how
    often each member's resample holds each pair, so each member's expected loss is that of its resample."""

    def __init__(self, sampler: PreferenceSampler, members: int, generator: torch.Generator):
        pairs = len(sampler)
        self.sampler = sampler
        self.counts = torch.stack([torch.bincount(torch.randint(pairs, (pairs,), generator=generator), minlength=pairs)
                                   for _ in range(members)]).float()                      # [K, P]

    def sample(self, batch_size: int) -> PreferenceBatch:
        index = torch.randint(len(self.sampler), (batch_size,), generator=self.sampler.generator)
        return dataclasses.replace(self.sampler.batch(index), weight=self.counts[:, index])


def fit_reward_ensemble(trajectories: TrajectoryDataset, seg_a: np.ndarray, seg_b: np.ndarray, label: np.ndarray,
                        seed: int, *, steps: int = 300, members: int = 3, hidden: int = 64, batch_size: int = 64,
                        lr: float = 1e-3) -> list[np.ndarray]:
    """:data:`pbrl.data.pairing.EnsembleFit`: ``members`` MLP reward models r_k(s, a) (the ``iql-mr`` reward model:
    :class:`pbrl.agents.reward_model.RewardModel`, Bradley-Terry on segment sums), each fitted to a bootstrap of the
    labelled pairs ``(seg_a [P, 3], seg_b [P, 3], label [P])`` for ``steps`` Adam steps; seeded by ``seed`` without
    touching the global RNG. Returns each member's reward for every row, ``[N]`` float64."""
    prefs = PreferenceDataset(np.asarray(seg_a), np.asarray(seg_b), np.asarray(label, np.float32),
                              np.zeros(len(label), np.int32))
    generator = torch.Generator().manual_seed(seed)
    pairs = BootstrappedPairs(PreferenceSampler(trajectories, prefs, seed=seed + 1), members, generator)
    cfg = RewardModelConfig(model="mlp", members=members, hidden_layers=[hidden, hidden])
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's RNG
        torch.manual_seed(seed)
        model = RewardModel(cfg, observation_spec(trajectories))
    fit_in_memory(model, lambda: pairs.sample(batch_size),
                  TrainConfig(steps=steps, batch_size=batch_size, lr=lr, weight_decay=0.0, grad_clip=0.0, seed=seed),
                  desc="reward ensemble")
    return member_rewards(model, trajectories)


@torch.no_grad()
def member_rewards(model: RewardModel, trajectories: TrajectoryDataset, chunk: int = 65536) -> list[np.ndarray]:
    """Each ensemble member's reward r_k(s_t, a_t) for every row: ``K`` arrays ``[N]`` float64."""
    obs, act = trajectories.observations, trajectories.actions
    rewards = [model.net(torch.as_tensor(obs[i:i + chunk]), torch.as_tensor(act[i:i + chunk])).double()
               for i in range(0, len(obs), chunk)]                                             # [K, rows] each
    return list(torch.cat(rewards, 1).numpy()) if rewards else [np.zeros(0)] * model.cfg.members
