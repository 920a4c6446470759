"""Hybrid offline-online preference learning for cooperative AI ("Learning Preferences without Interaction for
Cooperative AI: A Hybrid Offline-Online Approach", NeurIPS 2025; no public code).

One categorical policy network (the actor of a stable-baselines3 PPO policy: Overcooked's 6 actions) and two
phases that update it in turn:

- **online** (:func:`pbrl.train.overcooked.train_hybrid`): PPO against a pool of partner policies, first to
  pre-train the ego agent, then as "generalisation recovery" after each offline epoch, until the pool return
  is back near the pre-trained level;
- **offline** (this file): one epoch over the human's labelled trajectory pairs, with no human interaction.
  ``link = "cpl"`` scores each segment by the policy's own log-likelihood, ``A(σ) = α Σ_t log π(a_t|s_t)``,
  and feeds the pair to :func:`pbrl.core.cpl_loss` (the core's biased Bradley-Terry link); ``link = "sft"``
  clones the preferred segment only (learning "on the preferred trajectories").

:class:`PolicyCloning` is the same network trained by cross-entropy: Carroll et al.'s behaviour-cloned human
model, and BC on any Overcooked trajectory dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pbrl.core import cpl_loss, preference_accuracy
from pbrl.core.training import LossOutput, OptimizerSpec
from pbrl.data.preferences import PreferenceBatch
from pbrl.data.transitions import TransitionBatch
from pbrl.fields import param

LINKS = ("cpl", "sft")


@dataclass
class HybridConfig:
    pretrain_steps: int = param(500_000, ge=0)     # game steps of PPO against the pool before any preference
    rounds: int = param(4, ge=1)                   # offline epoch + online recovery, repeated
    offline_epochs: float = param(1.0, gt=0)       # passes over the labelled pairs per round
    batch_size: int = param(32, ge=1)              # pairs per offline step
    lr: float = param(1e-3, gt=0)                  # the offline step's Adam learning rate (1e-4 left roles unchanged)
    link: str = param("cpl", choices=LINKS)        # cpl: the core's preference link | sft: clone the preferred
    alpha: float = param(1.0, gt=0)                # temperature of A(σ) = α Σ log π (categorical: log π ≥ −log 6)
    bias: float = param(0.5, gt=0, le=1)           # conservative bias λ on the rejected segment
    bc_weight: float = param(0.0, ge=0)            # a BC term on both segments (keeps the policy near the data)
    recovery_steps: int = param(50_000, ge=1)      # game steps of PPO per recovery chunk
    recovery_target: float = param(0.9, gt=0, le=2)  # recover until the pool return is this share of pre-training's
    max_recovery_chunks: int = param(4, ge=1)      # give up recovering after this many chunks in one round


def categorical_log_prob(policy: nn.Module, obs: Tensor, act_onehot: Tensor) -> Tensor:
    """``log π(a|s)`` of an SB3 actor-critic policy for one-hot actions: ``obs`` [..., F], ``act_onehot`` [..., A]
    -> ``[...]``."""
    shape = obs.shape[:-1]
    dist = policy.get_distribution(obs.reshape(-1, obs.shape[-1]))
    return dist.log_prob(act_onehot.reshape(-1, act_onehot.shape[-1]).argmax(-1)).reshape(shape)


def actor_parameters(policy: nn.Module) -> list[nn.Parameter]:
    """The parameters that shape π (SB3: the shared/pi extractor and the action head), not the value net's."""
    skip = {id(p) for m in (getattr(policy, "value_net", None), getattr(getattr(policy, "mlp_extractor", None), "value_net", None))
            if m is not None for p in m.parameters()}
    return [p for p in policy.parameters() if p.requires_grad and id(p) not in skip]


class PolicyCloning(nn.Module):
    """Behaviour cloning of a categorical policy: ``−mean log π(a|s)`` over transitions [B]."""

    def __init__(self, policy: nn.Module, lr: float | None = None) -> None:
        super().__init__()
        self.policy, self.lr = policy, lr

    def optimizers(self) -> dict[str, OptimizerSpec]:
        return {"main": OptimizerSpec(actor_parameters(self.policy), lr=self.lr)}

    def loss(self, batch: TransitionBatch, step: int) -> LossOutput:
        dist = self.policy.get_distribution(batch.obs)
        target = batch.act.argmax(-1)
        nll = -dist.log_prob(target).mean()
        accuracy = (dist.distribution.probs.argmax(-1) == target).float().mean()
        return LossOutput(nll, {"bc/nll": nll.detach(), "bc/accuracy": accuracy.detach()})


class HybridOffline(nn.Module):
    """The hybrid agent's offline epoch on pairs ``[B, 2, T]`` of the ego's segments, labelled by the human."""

    def __init__(self, policy: nn.Module, cfg: HybridConfig) -> None:
        super().__init__()
        self.policy, self.cfg = policy, cfg

    def optimizers(self) -> dict[str, OptimizerSpec]:
        return {"main": OptimizerSpec(actor_parameters(self.policy), lr=self.cfg.lr)}

    def loss(self, batch: PreferenceBatch, step: int) -> LossOutput:
        c = self.cfg
        logp = categorical_log_prob(self.policy, batch.obs, batch.act) * batch.mask      # [B, 2, T]
        steps = batch.mask.sum((1, 2)).clamp(min=1)
        bc = -(logp.sum((1, 2)) / steps).mean()
        if c.link == "sft":
            chosen = (batch.label < 0.5).long()
            pick = logp.gather(1, chosen.view(-1, 1, 1).expand(-1, 1, logp.shape[-1])).squeeze(1)  # [B, T]
            decided = (batch.label != 0.5).float()
            mask = batch.mask.gather(1, chosen.view(-1, 1, 1).expand(-1, 1, logp.shape[-1])).squeeze(1)
            loss = -(pick.sum(-1) * decided).sum() / (mask.sum(-1) * decided).sum().clamp(min=1)
            return LossOutput(loss, {"sft/nll": loss.detach()})
        loss = cpl_loss(logp[:, 0], logp[:, 1], batch.label, alpha=c.alpha, bias=c.bias,
                        mask_a=batch.mask[:, 0], mask_b=batch.mask[:, 1]).mean()
        with torch.no_grad():
            accuracy = preference_accuracy(logp[:, 0].sum(-1) - logp[:, 1].sum(-1), batch.label)
        metrics = {"hybrid/cpl_loss": loss.detach(), "hybrid/accuracy": accuracy, "bc/nll": bc.detach()}
        return LossOutput(loss + c.bc_weight * bc if c.bc_weight else loss, metrics)
