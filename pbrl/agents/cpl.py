"""Contrastive Preference Learning (Hejna et al., 2023): a policy learned from regret-based preferences with
no reward model and no RL. ``A(σ) = α Σ_t γ^t log π(a_t|s_t)`` is the score of a segment; the loss is the
conservative biased Bradley-Terry loss of :func:`pbrl.core.cpl_loss`. Following the paper's code, training
starts with ``bc_steps`` of BC only; at the switch the optimiser may restart and the learning rate warm up
again (``reset_optimizer``, ``warmup_steps``), and a BC term weighted by ``bc_weight`` can stay on afterwards.

The paper's two regimes: ``sparse``, a fixed table of labelled pairs (:class:`PreferenceBatch`); ``dense``, a
pool of scored segments where every batch compares all its segments with each other (:class:`SegmentBatch`,
:func:`pbrl.core.cpl_ranked_loss`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from pbrl.agents.base import BatchSpec, LossOutput, steps_log_prob
from pbrl.agents.bc import BC, BCConfig, bc_loss
from pbrl.core import cpl_loss, cpl_ranked_loss, cpl_score, preference_accuracy, ranked_accuracy
from pbrl.core.training import OptimizerSpec
from pbrl.data.preferences import PreferenceBatch, SegmentBatch
from pbrl.fields import param
from pbrl.nets.diffusion import chain_log_prob

REGIMES = ("sparse", "dense")


@dataclass
class CPLConfig(BCConfig):
    alpha: float = param(0.1, gt=0)          # temperature: A(σ) = α Σ γ^t log π(a_t|s_t)
    gamma: float = param(1.0, gt=0, le=1)    # discount inside a segment
    bias: float = param(0.5, gt=0, le=1)     # conservative bias λ on the rejected segment (1.0 = plain Bradley-Terry)
    bc_weight: float = param(0.0, ge=0)      # weight of the BC term on all segments after the warm start
    bc_steps: int = param(0, ge=0)           # BC-only warm start (paper: 200k of 500k steps)
    reset_optimizer: bool = False  # restart AdamW's moments when the CPL phase begins (official code: yes)
    warmup_steps: int = param(0, ge=0)       # linear learning-rate warm-up from the switch on (official code: 10k)
    regime: str = param("sparse", choices=REGIMES)  # sparse: labelled pairs | dense: scored segments, all pairs
    average: bool = False     # score with the mean log π over steps, not the sum (cpl-human's D4RL recipe)

    # both phases are parts of train.steps (the BC steps come first, the warm-up follows the switch): a shorter
    # --steps than the preset's shortens them in proportion, or a short run would be BC from start to end
    budget_phases: ClassVar[tuple[str, ...]] = ("bc_steps", "warmup_steps")
    warm_start: ClassVar[str | None] = "bc_steps"


class CPL(BC):
    Config = CPLConfig
    cfg: CPLConfig

    @classmethod
    def batch_specs(cls, cfg: CPLConfig) -> dict[str, BatchSpec]:
        if cfg.regime == "dense":
            return {"main": BatchSpec("segments", origin="agent.regime=dense")}
        return {"main": BatchSpec("preferences")}

    def optimizers(self) -> dict[str, OptimizerSpec]:
        return {"main": OptimizerSpec([p for p in self.parameters() if p.requires_grad],
                                      warmup_start=self.cfg.bc_steps, warmup_steps=self.cfg.warmup_steps)}

    def reset_optimizers(self, step: int) -> list[str]:
        return ["main"] if self.cfg.reset_optimizer and step == self.cfg.bc_steps > 0 else []

    def segment_log_prob(self, batch: PreferenceBatch | SegmentBatch) -> tuple[Tensor, Tensor]:
        """Per-step scores and their mask, ``[B, 2, T]`` (pairs) or ``[B, T]`` (dense): ``log π`` without
        parameter-free terms, or a diffusion policy's chain score (:func:`pbrl.nets.diffusion.chain_log_prob`:
        one ELBO term per chunk, a pair's segments on the same noise)."""
        if getattr(self.policy, "is_chunked", False):
            shared = (0,) if isinstance(batch, SegmentBatch) else (1,)
            return chain_log_prob(self.policy, batch.obs, batch.act, batch.mask, shared=shared)
        return steps_log_prob(self.policy, batch.obs, batch.act, batch.timestep, batch.mask, score=True), batch.mask

    def loss(self, batch: PreferenceBatch | SegmentBatch, step: int) -> LossOutput:
        c = self.cfg
        if getattr(self.policy, "is_chunked", False):  # the BC term is the DDPM objective on every chunk
            bc_name = "bc/denoising_error"
            bc = BC.loss(self, batch, step).loss if step < c.bc_steps or c.bc_weight > 0 else None
            if step < c.bc_steps:
                return LossOutput(bc, {bc_name: bc.detach()})
            logp, mask = self.segment_log_prob(batch)
        else:  # the BC term is the negative log-likelihood of the same forward pass
            bc_name = "bc/nll"
            logp, mask = self.segment_log_prob(batch)
            bc = bc_loss(logp, mask)
            if step < c.bc_steps:
                return LossOutput(bc, {bc_name: bc.detach()})
        if isinstance(batch, SegmentBatch):
            loss = cpl_ranked_loss(logp, batch.score, alpha=c.alpha, gamma=c.gamma, bias=c.bias, mask=mask,
                                   average=c.average)
            accuracy = ranked_accuracy(cpl_score(logp.detach(), gamma=c.gamma, mask=mask), batch.score)
        else:
            loss = cpl_loss(logp[:, 0], logp[:, 1], batch.label, alpha=c.alpha, gamma=c.gamma, bias=c.bias,
                            mask_a=mask[:, 0], mask_b=mask[:, 1], average=c.average).mean()
            with torch.no_grad():
                gap = (logp[:, 0] * mask[:, 0]).sum(-1) - (logp[:, 1] * mask[:, 1]).sum(-1)
                accuracy = preference_accuracy(gap, batch.label)
        metrics = {"cpl/loss": loss.detach(), "cpl/accuracy": accuracy}
        if bc is None:
            return LossOutput(loss, metrics)
        return LossOutput(loss + c.bc_weight * bc, {**metrics, bc_name: bc.detach()})
