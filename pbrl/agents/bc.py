"""Behaviour cloning: maximise log π(a|s) on every step of every segment, preferences ignored."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from pbrl.agents.base import Agent, DataSpec, LossOutput, PolicyConfig, build_policy, masked_mean
from pbrl.data.preferences import PreferenceBatch


@dataclass
class BCConfig(PolicyConfig):
    pass


def bc_loss(logp: Tensor, mask: Tensor) -> Tensor:
    """Negative mean log-likelihood of the valid steps: ``logp``, ``mask`` [B, 2, T] (or any equal shapes) -> scalar."""
    return -masked_mean(logp, mask)


class BC(Agent):
    Config = BCConfig

    def __init__(self, cfg: BCConfig, spec: DataSpec):
        super().__init__(cfg, spec)
        self.policy = build_policy(cfg, spec)

    def loss(self, batch: PreferenceBatch, step: int) -> LossOutput:
        logp = self.policy.log_prob(batch.obs, batch.act)  # [B, 2, T]
        loss = bc_loss(logp, batch.mask)
        return LossOutput(loss, {"bc/nll": loss.detach()})
