"""Behaviour cloning: maximise log π(a|s) on every step of every segment, preferences ignored."""

from __future__ import annotations

from dataclasses import dataclass

from pbrl.agents.base import Agent, AgentConfig, LossOutput, masked_mean
from pbrl.data.preferences import PreferenceBatch


@dataclass
class BCConfig(AgentConfig):
    pass


def bc_loss(logp, mask):
    """Negative mean log-likelihood of the valid steps: ``logp``, ``mask`` [B, 2, T] -> scalar."""
    return -masked_mean(logp, mask)


class BC(Agent):
    Config = BCConfig

    def loss(self, batch: PreferenceBatch, step: int) -> LossOutput:
        logp = self.policy.log_prob(batch.obs, batch.act)  # [B, 2, T]
        loss = bc_loss(logp, batch.mask)
        return LossOutput(loss, {"bc/nll": loss.detach()})
