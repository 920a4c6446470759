"""The models a labelling run trains: the regret teacher's value critic and the reward ensemble that picks
``disagreement`` pairs. ``pbrl.data`` declares what it needs (:data:`pbrl.data.teachers.ValueCritic`,
:data:`pbrl.data.pairing.EnsembleFit`) and never imports a network; ``pbrl data label`` passes these in."""

from __future__ import annotations

import numpy as np
import torch

from pbrl.core import logistic_link
from pbrl.data.store import TrajectoryDataset
from pbrl.data.teachers import Teacher, discounted_returns_to_go
from pbrl.nets.mlp import mlp


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


def behaviour_value_critic(trajectories: TrajectoryDataset, u: np.ndarray, teacher: Teacher
                           ) -> tuple[np.ndarray, np.ndarray]:
    """:data:`pbrl.data.teachers.ValueCritic` fitted to the behaviour's own returns of ``u``
    (:func:`fit_value_function` with the teacher's γ, ``value_steps`` and ``seed``)."""
    return fit_value_function(trajectories, gamma=teacher.gamma, steps=teacher.value_steps, seed=teacher.seed, u=u)


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

