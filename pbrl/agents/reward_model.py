"""Reward models learned from preferences, and IQL on the rewards they relabel the dataset with (the Uni-RLHF
pipeline: Yuan et al., 2024). Bradley-Terry on segment scores through :func:`pbrl.core.logistic_link`:

- ``mlp``: an ensemble of MLPs r_k(s, a); a segment scores ``Σ_t r_k(s_t, a_t)``, each member its own loss;
- ``transformer``: the Preference Transformer (Kim et al., 2023) with its preference-attention weighted sum.

``iql-mr`` / ``iql-pt``: the trainer first fits the reward model (``DIR/reward_model/``, held-out pair accuracy
logged), relabels every transition with it (the ensemble mean; the PT's r̂ of the last step of the window that
ends there), min-max normalises the learned rewards to [0, 1] (Uni-RLHF), then runs IQL as ``iql-oracle`` does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from pbrl.agents.base import Agent, AgentConfig, DataSpec, LossOutput
from pbrl.agents.iql import IQL, IQLConfig
from pbrl.core import logistic_link, preference_accuracy
from pbrl.data.preferences import PreferenceBatch
from pbrl.errors import ConfigError, describe
from pbrl.fields import param
from pbrl.nets.reward import RewardEnsemble
from pbrl.nets.transformer import PreferenceTransformer

REWARD_MODELS = ("mlp", "transformer")


@dataclass
class RewardModelConfig(AgentConfig):
    model: str = param("mlp", choices=REWARD_MODELS)    # mlp | transformer
    members: int = param(3, ge=1, le=1024)              # mlp: ensemble size
    hidden_layers: list[int] = param([256, 256, 256], ge=1, le=65536)  # mlp: hidden layers
    dim: int = param(256, ge=1, le=65536)               # transformer: width (PT: 256)
    layers: int = param(1, ge=1, le=1024)               # transformer: blocks (PT: 1)
    heads: int = param(4, ge=1, le=1024)                # transformer: attention heads (PT: 4)
    dropout: float = param(0.1, ge=0, lt=1)             # transformer: dropout (PT: 0.1)
    context: int = param(64, ge=1)                      # transformer: relabelling window (the segment length)

    def check(self) -> tuple[str, str, str] | None:
        if self.dim % self.heads:
            return "heads", repr(self.heads), f"a divisor of dim ({self.dim})"
        return None


class RewardModel(Agent):
    Config = RewardModelConfig
    cfg: RewardModelConfig

    def __init__(self, cfg: RewardModelConfig, spec: DataSpec):
        super().__init__(cfg, spec)
        if cfg.model not in REWARD_MODELS:
            raise ConfigError(describe("agent.reward_model", "reward model", repr(cfg.model), f"one of {list(REWARD_MODELS)}"))
        if cfg.model == "mlp":
            self.net = RewardEnsemble(spec.obs_dim, spec.act_dim, members=cfg.members, hidden_layers=cfg.hidden_layers,
                                      obs_mean=spec.obs_mean, obs_std=spec.obs_std)
        else:
            self.net = PreferenceTransformer(spec.obs_dim, spec.act_dim, dim=cfg.dim, layers=cfg.layers, heads=cfg.heads,
                                             dropout=cfg.dropout, obs_mean=spec.obs_mean, obs_std=spec.obs_std)

    @property
    def relabel_context(self) -> int:
        """Steps of history the reward of one transition depends on (1: r(s, a) only)."""
        return 1 if self.cfg.model == "mlp" else self.cfg.context

    def margins(self, batch: PreferenceBatch) -> Tensor:
        """``score(a) − score(b)`` per member, ``[K, B]`` (K = 1 for the transformer)."""
        if self.cfg.model == "mlp":
            r = self.net(batch.obs, batch.act) * batch.mask                   # [K, B, 2, T]
            s = r.sum(-1)
        else:
            b, _, t = batch.mask.shape
            flat = lambda x: x.reshape(b * 2, t, *x.shape[3:])  # noqa: E731
            s, _ = self.net(flat(batch.obs), flat(batch.act), flat(batch.timestep), flat(batch.mask))
            s = s.view(1, b, 2)
        return s[..., 0] - s[..., 1]

    def loss(self, batch: PreferenceBatch, step: int) -> LossOutput:
        margin = self.margins(batch)                                              # [K, B]
        losses = logistic_link(margin, batch.label.expand_as(margin))
        if batch.weight is not None:  # a bootstrap per member (the labelling ensemble: pbrl.train.critics)
            losses = losses * batch.weight
        return LossOutput(losses.mean(), {"reward/accuracy": preference_accuracy(margin.detach(), batch.label)})

    @torch.no_grad()
    def window_reward(self, obs: Tensor, act: Tensor, timestep: Tensor, mask: Tensor) -> Tensor:
        """Reward of the last step of each window ``[B, K, ...] -> [B]`` (the ensemble mean for the MLP)."""
        if self.cfg.model == "mlp":
            return self.net(obs[:, -1], act[:, -1]).mean(0)
        return self.net(obs, act, timestep, mask)[1][:, -1]


@dataclass
class IQLMRConfig(IQLConfig):
    reward_model: str = param("mlp", choices=REWARD_MODELS)  # mlp | transformer
    # gradient steps of the reward model: a stage of its own before IQL's train.steps, so not one of the
    # budget_phases (--steps sets IQL's budget; the reward model is fitted to its labels whatever that budget is)
    reward_steps: int = param(3000, ge=1)
    reward_batch_size: int = param(64, ge=1)         # pairs per reward-model step
    reward_lr: float = param(3e-4, gt=0)
    reward_holdout: float = param(0.1, gt=0, lt=1)   # share of labelled pairs held out for the accuracy check
    reward_members: int = param(3, ge=1, le=1024)
    reward_hidden_layers: list[int] = param([256, 256, 256], ge=1, le=65536)
    reward_dim: int = param(256, ge=1, le=65536)
    reward_layers: int = param(1, ge=1, le=1024)
    reward_heads: int = param(4, ge=1, le=1024)
    reward_dropout: float = param(0.1, ge=0, lt=1)
    stages: ClassVar[tuple[str, ...]] = ("reward_steps",)  # the reward model's fit, one step in a dry run

    def check(self) -> tuple[str, str, str] | None:
        if self.reward_dim % self.reward_heads:
            return "reward_heads", repr(self.reward_heads), f"a divisor of reward_dim ({self.reward_dim})"
        return super().check()

    def reward_config(self, segment: int) -> RewardModelConfig:
        return RewardModelConfig(model=self.reward_model, members=self.reward_members,
                                 hidden_layers=list(self.reward_hidden_layers), dim=self.reward_dim,
                                 layers=self.reward_layers, heads=self.reward_heads, dropout=self.reward_dropout,
                                 context=segment)


@dataclass
class IQLPTConfig(IQLMRConfig):
    reward_model: str = param("transformer", choices=REWARD_MODELS)


class IQLMR(IQL):
    """IQL on rewards relabelled by a reward model fitted to the preferences (the trainer runs that stage)."""

    Config = IQLMRConfig
    reward_source = "learned"


class IQLPT(IQLMR):
    Config = IQLPTConfig
