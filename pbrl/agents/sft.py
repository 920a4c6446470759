"""SFT, the CPL paper's baseline (Hejna et al., 2023, §6): behaviour cloning on the *preferred* segment of each
labelled pair only. Ties carry no preferred segment and are left out. With the diffusion backbone: the DDPM objective
on the preferred segment's action chunks (the diffusion baseline of Diff-UAPA)."""

from __future__ import annotations

from dataclasses import dataclass

from pbrl.agents.base import LossOutput, masked_mean, steps_log_prob
from pbrl.agents.bc import BC, BCConfig, bc_loss
from pbrl.data.preferences import PreferenceBatch
from pbrl.nets.diffusion import diffusion_windows


@dataclass
class SFTConfig(BCConfig):
    pass


class SFT(BC):
    Config = SFTConfig

    def loss(self, batch: PreferenceBatch, step: int) -> LossOutput:
        chosen = (batch.label < 0.5).long()                                      # 0: segment a, 1: segment b
        pick = lambda x: x.gather(1, chosen.view(-1, 1, *[1] * (x.dim() - 2)).expand(-1, 1, *x.shape[2:])).squeeze(1)  # noqa: E731
        mask = pick(batch.mask) & (batch.label != 0.5)[:, None]                 # [B, T]
        if getattr(self.policy, "is_chunked", False):  # the DDPM objective on the preferred segments' chunks
            p = self.policy
            obs, chunk, valid = diffusion_windows(pick(batch.obs), pick(batch.act), mask, p.n_obs, p.horizon)
            loss = masked_mean(p.loss(obs, chunk), valid)
            return LossOutput(loss, {"sft/denoising_error": loss.detach()})
        logp = steps_log_prob(self.policy, batch.obs, batch.act, batch.timestep, batch.mask)  # [B, 2, T]
        loss = bc_loss(pick(logp), mask)
        return LossOutput(loss, {"sft/nll": loss.detach()})
