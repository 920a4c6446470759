"""The models a labelling run trains or loads: the regret teacher's critics and the reward ensemble that picks
``disagreement`` pairs. ``pbrl.data`` declares what it needs (:data:`pbrl.data.teachers.AdvantageCritic`,
:data:`pbrl.data.pairing.EnsembleFit`) and never imports a network; ``pbrl data label`` passes these in.

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

import copy
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import trange

from pbrl.core import expectile_loss, logistic_link, td_target, twin_q_loss
from pbrl.data.store import TrajectoryDataset
from pbrl.data.teachers import Teacher, advantages, discounted_returns_to_go
from pbrl.data.transitions import TransitionSampler, returns_scale
from pbrl.errors import ConfigError, DatasetError, describe
from pbrl.nets.mlp import EnsembleQ, ValueNet, mlp


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


def fit_iql_critic(trajectories: TrajectoryDataset, u: np.ndarray, *, gamma: float, steps: int, seed: int,
                   expectile: float = 0.7, batch_size: int = 256, hidden: tuple[int, ...] = (256, 256),
                   lr: float = 3e-4, target_update: float = 0.005) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IQL's critic without its actor, fitted in sample to the utility ``u``: twin Q with a Polyak target
    (Kostrikov et al., 2021, eq. 6) and V the τ-expectile of the target Q (eq. 5); ``steps`` Adam steps, seeded
    by ``seed`` without touching the global RNG. Trained on ``u`` × IQL's locomotion scale
    ``1000 / (max − min episode return)``. Returns, in the units of ``u``: ``(Q(s_t, a_t) [N], V(s_t) [N],
    V(final observation) [E])`` (Q: the smaller target critic)."""
    scale = returns_scale(trajectories, u)
    sampler = TransitionSampler(trajectories, rewards=u, scale=scale, seed=seed)
    obs = torch.as_tensor(trajectories.observations)
    norm = {"obs_mean": obs.mean(0), "obs_std": obs.std(0) + 1e-3}
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's RNG
        torch.manual_seed(seed)
        q = EnsembleQ(trajectories.obs_dim, trajectories.act_dim, hidden_layers=hidden, **norm)
        value = ValueNet(trajectories.obs_dim, hidden_layers=hidden, **norm)
    q_target = copy.deepcopy(q).requires_grad_(False)
    opt_q, opt_v = torch.optim.Adam(q.parameters(), lr=lr), torch.optim.Adam(value.parameters(), lr=lr)
    for _ in trange(steps, desc="iql critic", leave=False, disable=None):
        b = sampler.sample(batch_size)
        with torch.no_grad():
            target_q = q_target(b.obs, b.act).min(0).values
            next_v = value(b.next_obs)
        value_loss = expectile_loss(target_q - value(b.obs), expectile).mean()
        q1, q2 = q(b.obs, b.act)
        critic_loss = twin_q_loss(q1, q2, td_target(b.reward, b.done, next_v, gamma)).mean()
        opt_v.zero_grad()
        value_loss.backward()
        opt_v.step()
        opt_q.zero_grad()
        critic_loss.backward()
        opt_q.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(q_target.parameters()), list(q.parameters()), target_update)
    q_rows = _rows(lambda o, a: q_target(o, a).min(0).values, trajectories.observations, trajectories.actions)
    v_rows = _rows(value, trajectories.observations)
    v_final = _rows(value, trajectories.final_observations)
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


class RewardEnsemble:
    """K MLP reward models r_k(s, a), each fitted by Bradley-Terry on segment sums to a bootstrap of the labels."""

    def __init__(self, trajectories: TrajectoryDataset, members: int = 3, hidden: int = 64, seed: int = 0):
        self.gen = torch.Generator().manual_seed(seed)
        x = np.concatenate([trajectories.observations, trajectories.actions], 1)
        self.x = torch.as_tensor(x)
        self.mean, self.std = self.x.mean(0), self.x.std(0) + 1e-3
        self.offsets = torch.as_tensor(trajectories.episode_offsets)
        with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's RNG
            torch.manual_seed(seed)
            self.models = [mlp(x.shape[1], 1, [hidden, hidden]) for _ in range(members)]

    def _rows(self, seg: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        seg = torch.as_tensor(seg)
        steps = torch.arange(int(seg[:, 2].max()))
        mask = steps[None] < seg[:, 2:3]
        rows = torch.where(mask, self.offsets[seg[:, 0]][:, None] + seg[:, 1:2] + steps[None], 0)
        return rows, mask

    def _segment_sum(self, model: torch.nn.Module, rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (model((self.x[rows] - self.mean) / self.std).squeeze(-1) * mask).sum(-1)

    def fit(self, seg_a: np.ndarray, seg_b: np.ndarray, label: np.ndarray, steps: int = 300, batch: int = 64) -> None:
        ra, ma = self._rows(seg_a)
        rb, mb = self._rows(seg_b)
        y = torch.as_tensor(label, dtype=torch.float32)
        for model in self.models:
            boot = torch.randint(len(y), (len(y),), generator=self.gen)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            for _ in range(steps):
                i = boot[torch.randint(len(boot), (min(batch, len(boot)),), generator=self.gen)]
                margin = self._segment_sum(model, ra[i], ma[i]) - self._segment_sum(model, rb[i], mb[i])
                loss = logistic_link(margin, y[i]).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()

    @torch.no_grad()
    def step_rewards(self) -> list[np.ndarray]:
        return [m((self.x - self.mean) / self.std).squeeze(-1).double().numpy() for m in self.models]


def fit_reward_ensemble(trajectories: TrajectoryDataset, seg_a: np.ndarray, seg_b: np.ndarray, label: np.ndarray,
                        seed: int) -> list[np.ndarray]:
    """:data:`pbrl.data.pairing.EnsembleFit`: each member's reward for every row ``[N]`` after fitting to the labels."""
    ensemble = RewardEnsemble(trajectories, seed=seed)
    ensemble.fit(seg_a, seg_b, label)
    return ensemble.step_rewards()

