"""SFT, the CPL paper's baseline (Hejna et al., 2023, §6): behaviour cloning on the *preferred* segment of each
labelled pair only. Ties carry no preferred segment and are left out."""

from __future__ import annotations

from dataclasses import dataclass

from pbrl.agents.base import LossOutput, steps_log_prob
from pbrl.agents.bc import BC, BCConfig, bc_loss
from pbrl.data.preferences import PreferenceBatch


@dataclass
class SFTConfig(BCConfig):
    pass


class SFT(BC):
    backbones = ("mlp", "transformer")
    Config = SFTConfig

    def loss(self, batch: PreferenceBatch, step: int) -> LossOutput:
        logp = steps_log_prob(self.policy, batch.obs, batch.act, batch.timestep, batch.mask)  # [B, 2, T]
        chosen = (batch.label < 0.5).long()                                      # 0: segment a, 1: segment b
        pick = lambda x: x.gather(1, chosen.view(-1, 1, 1).expand(-1, 1, x.shape[-1])).squeeze(1)  # noqa: E731
        mask = pick(batch.mask) & (batch.label != 0.5)[:, None]                 # [B, T]
        loss = bc_loss(pick(logp), mask)
        return LossOutput(loss, {"sft/nll": loss.detach()})
