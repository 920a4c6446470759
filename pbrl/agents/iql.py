"""Implicit Q-Learning (Kostrikov, Nair & Levine, 2021): offline RL without querying out-of-dataset actions.
V(s) is the τ-expectile of the target Q(s, a) over dataset actions (eq. 5), twin Q(s, a) regresses
r + γ V(s′) (eq. 6) with a Polyak-averaged target, and the actor is advantage-weighted regression with clipped
exp(β A) weights (eq. 7) under a cosine learning-rate schedule. Losses: :mod:`pbrl.core.offline_rl`.

:class:`IQLCritic` is the critic alone (eqs. 5–6): IQL trains it beside its actor, and the regret teacher fits it by
itself for its in-sample optimal value (:func:`pbrl.train.critics.fit_iql_critic`).

``iql-oracle`` runs it on the simulator's true reward: the ceiling every preference agent is reported against.
``iql-constant`` runs it with every reward 1: the control of Li et al. (2023, "Survival Instinct in Offline
Reinforcement Learning"), which showed that pessimistic offline RL with a wrong reward can still learn a good
locomotion policy, because a positive reward teaches it to stay alive and inside the data. A preference agent's
score means something only above this control."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from pbrl.agents.base import Agent, BatchSpec, DataSpec, LossOutput, PolicyConfig, build_policy
from pbrl.core import awr_actor_loss, expectile_loss, td_target, twin_q_loss
from pbrl.core.training import OptimizerSpec
from pbrl.data.transitions import TransitionBatch
from pbrl.fields import param
from pbrl.nets.mlp import POLICY_HEADS, EnsembleQ, ValueNet

REWARD_SCALES = ("returns", "minmax-returns", "none")


@dataclass
class IQLConfig(PolicyConfig):
    policy: str = param("gaussian", choices=tuple(POLICY_HEADS))  # N(tanh(f(s)), σ²), state-independent σ (CORL)
    log_std_min: float = param(-20.0, ge=-100, le=100)
    critic_layers: list[int] = param([256, 256], ge=1, le=65536)  # Q and V hidden layers
    discount: float = param(0.99, ge=0, le=1)          # γ
    expectile: float = param(0.7, gt=0, lt=1)          # τ of the value expectile (locomotion 0.7, AntMaze 0.9)
    temperature: float = param(3.0, ge=0, le=1000)     # β of the actor's exp(β A) weights (locomotion 3, Adroit 0.5)
    max_weight: float = param(100.0, gt=0)             # clip of exp(β A)
    target_update: float = param(0.005, gt=0, le=1)    # Polyak rate of the target critics
    # returns: r · 1000 / (max − min episode return) (paper, locomotion) | none |
    # minmax-returns: r min-max normalised to [0, 1] first (Uni-RLHF)
    reward_scale: str = param("returns", choices=REWARD_SCALES)
    actor_schedule: str = param("cosine", choices=("cosine", "constant"))
    # standardized: (o − mean) / std over the dataset in every network (CORL) | raw: the observations as they come
    # (d3rlpy's IQL default, no observation scaler). The oracle's ceiling is measured at both (docs/benchmarks.md).
    observations: str = param("standardized", choices=("standardized", "raw"))


@dataclass(frozen=True)
class IQLCriticLosses:
    """The critic's two losses (scalars) on a batch of B transitions, and what the actor reuses (``[B]``)."""

    value: Tensor       # the τ-expectile loss of V against the target Q (eq. 5)
    critic: Tensor      # the twin Q's TD loss against r + γ V(s′) (eq. 6)
    v: Tensor           # V(s)
    advantage: Tensor   # min of the target Qs − V(s)


class IQLCritic(Agent):
    """IQL's critic without its actor: twin Q with a Polyak-averaged target, V the τ-expectile of the target Q.
    Configured by :class:`IQLConfig` (its policy fields unused); trains on transitions with optimisers ``value`` and
    ``critic``. :class:`IQL` is this plus the actor."""

    Config = IQLConfig
    cfg: IQLConfig
    reward_source: ClassVar[str] = "true"   # true | learned (a reward model first) | constant (every reward 1)

    @classmethod
    def batch_specs(cls, cfg: IQLConfig) -> dict[str, BatchSpec]:
        return {"main": BatchSpec("transitions", rewards=cls.reward_source, reward_scale=cfg.reward_scale)}

    def __init__(self, cfg: IQLConfig, spec: DataSpec):
        if cfg.observations == "raw":  # the identity normaliser: every network, the export included, reads raw o
            spec = dataclasses.replace(spec, obs_mean=torch.zeros_like(spec.obs_mean),
                                       obs_std=torch.ones_like(spec.obs_std))
        super().__init__(cfg, spec)
        self.build()

    def build(self) -> None:
        """Make the networks (a subclass adds its own around these, in the order its seeded initialisation needs)."""
        norm = {"obs_mean": self.spec.obs_mean, "obs_std": self.spec.obs_std}
        layers = self.cfg.critic_layers
        self.q = EnsembleQ(self.spec.obs_dim, self.spec.act_dim, members=2, hidden_layers=layers, **norm)  # twin Q
        self.value = ValueNet(self.spec.obs_dim, hidden_layers=layers, **norm)
        self.freeze("q_target", copy.deepcopy(self.q))

    def optimizers(self) -> dict[str, OptimizerSpec]:
        return {"value": OptimizerSpec(list(self.value.parameters())),
                "critic": OptimizerSpec(list(self.q.parameters()))}

    def critic_losses(self, batch: TransitionBatch) -> IQLCriticLosses:
        c = self.cfg
        with torch.no_grad():
            target_q = self.q_target(batch.obs, batch.act).min(0).values                    # [B]
            next_v = self.value(batch.next_obs)
        v = self.value(batch.obs)
        advantage = target_q - v                                                          # [B]
        value_loss = expectile_loss(advantage, c.expectile).mean()
        target = td_target(batch.reward, batch.done, next_v, c.discount)
        q1, q2 = self.q(batch.obs, batch.act)
        critic_loss = twin_q_loss(q1, q2, target).mean()
        return IQLCriticLosses(value_loss, critic_loss, v, advantage)

    def loss(self, batch: TransitionBatch, step: int) -> LossOutput:
        losses = self.critic_losses(batch)
        return LossOutput({"value": losses.value, "critic": losses.critic}, self.critic_metrics(losses))

    @staticmethod
    def critic_metrics(losses: IQLCriticLosses) -> dict[str, Tensor]:
        return {"iql/value_loss": losses.value.detach(), "iql/critic_loss": losses.critic.detach(),
                "iql/v_mean": losses.v.detach().mean(), "iql/advantage_mean": losses.advantage.detach().mean()}

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        torch._foreach_lerp_(list(self.q_target.parameters()), list(self.q.parameters()), self.cfg.target_update)


class IQL(IQLCritic):
    """The critic and the advantage-weighted actor (eq. 7) under a cosine learning-rate schedule."""

    cfg: IQLConfig

    def build(self) -> None:
        self.policy = build_policy(self.cfg, self.spec)  # before the critic: the seeded initialisation of every IQL run
        super().build()

    def optimizers(self) -> dict[str, OptimizerSpec]:
        return {**super().optimizers(),
                "actor": OptimizerSpec(list(self.policy.parameters()), schedule=self.cfg.actor_schedule)}

    def loss(self, batch: TransitionBatch, step: int) -> LossOutput:
        c = self.cfg
        critic = self.critic_losses(batch)
        log_prob = self.policy.log_prob(batch.obs, batch.act)
        actor_loss = awr_actor_loss(log_prob, critic.advantage, c.temperature, c.max_weight).mean()
        return LossOutput({"value": critic.value, "critic": critic.critic, "actor": actor_loss},
                          {**self.critic_metrics(critic), "iql/actor_loss": actor_loss.detach()})


class IQLConstant(IQL):
    """IQL with every reward 1: the survival-instinct control (Li et al., 2023), no information from rewards or labels."""

    reward_source = "constant"
