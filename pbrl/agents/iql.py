"""Implicit Q-Learning (Kostrikov, Nair & Levine, 2021): offline RL without querying out-of-dataset actions.
V(s) is the τ-expectile of the target Q(s, a) over dataset actions (eq. 5), twin Q(s, a) regresses
r + γ V(s′) (eq. 6) with a Polyak-averaged target, and the actor is advantage-weighted regression with clipped
exp(β A) weights (eq. 7) under a cosine learning-rate schedule. Losses: :mod:`pbrl.core.offline_rl`.

``iql-oracle`` runs it on the simulator's true reward: the ceiling every preference agent is reported against.
``iql-constant`` runs it with every reward 1: the control of Li et al. (2023, "Survival Instinct in Offline
Reinforcement Learning"), which showed that pessimistic offline RL with a wrong reward can still learn a good
locomotion policy, because a positive reward teaches it to stay alive and inside the data. A preference agent's
score means something only above this control."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch

from pbrl.agents.base import Agent, DataSpec, LossOutput, PolicyConfig, build_policy
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


class IQL(Agent):
    Config = IQLConfig
    batches = "transitions"
    reward_source: ClassVar[str] = "true"   # true | learned (a reward model first) | constant (every reward 1)
    cfg: IQLConfig

    def __init__(self, cfg: IQLConfig, spec: DataSpec):
        super().__init__(cfg, spec)
        self.policy = build_policy(cfg, spec)
        norm = {"obs_mean": spec.obs_mean, "obs_std": spec.obs_std}
        self.q = EnsembleQ(spec.obs_dim, spec.act_dim, members=2, hidden_layers=cfg.critic_layers, **norm)  # twin Q
        self.value = ValueNet(spec.obs_dim, hidden_layers=cfg.critic_layers, **norm)
        self.freeze("q_target", copy.deepcopy(self.q))

    def optimizers(self) -> dict[str, OptimizerSpec]:
        return {"value": OptimizerSpec(list(self.value.parameters())),
                "critic": OptimizerSpec(list(self.q.parameters())),
                "actor": OptimizerSpec(list(self.policy.parameters()), schedule=self.cfg.actor_schedule)}

    def loss(self, batch: TransitionBatch, step: int) -> LossOutput:
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
        log_prob = self.policy.log_prob(batch.obs, batch.act)
        actor_loss = awr_actor_loss(log_prob, advantage, c.temperature, c.max_weight).mean()
        return LossOutput({"value": value_loss, "critic": critic_loss, "actor": actor_loss},
                          {"iql/value_loss": value_loss.detach(), "iql/critic_loss": critic_loss.detach(),
                           "iql/actor_loss": actor_loss.detach(), "iql/v_mean": v.detach().mean(),
                           "iql/advantage_mean": advantage.detach().mean()})

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        torch._foreach_lerp_(list(self.q_target.parameters()), list(self.q.parameters()), self.cfg.target_update)


class IQLConstant(IQL):
    """IQL with every reward 1: the survival-instinct control (Li et al., 2023), no information from rewards or labels."""

    reward_source = "constant"
