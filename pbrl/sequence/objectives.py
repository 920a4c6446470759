"""Sequence-level objectives on the loss core: each method is a composition of :mod:`pbrl.core` functions on the
completion log-probabilities of :mod:`pbrl.sequence.lm`. :class:`SequenceLearner` is what the shared loop
(:func:`pbrl.train.loop.run_loop`) trains.

Methods trained from a pair dataset (``pbrl seq train --method NAME``):

- ``dpo``: :func:`pbrl.core.dpo_loss` with any TRL loss type (``loss_type``: sigmoid, hinge, ipo, robust, …);
- ``ipo``: ``dpo`` with ``loss_type = "ipo"`` (Azar et al., 2023);
- ``rso``: the RSO losses (Liu et al., 2024, eqs. 8 and 10) on pairs from :func:`pbrl.core.rso_accept`:
  ``sigmoid-norm`` is DPO's sigmoid, ``hinge-norm`` is TRL's ``hinge`` (``loss_type`` sigmoid | hinge);
- ``is_daa``: :func:`pbrl.core.alignment.is_daa_loss`, a DAA loss (``is_loss``: IPO, the official code's, by
  default) weighted by the clipped importance ratio against the policy that generated the pairs (the rows'
  ``chosen_logps`` / ``rejected_logps``, else the reference);
- ``tgdpo``: :func:`pbrl.core.tgdpo_loss` with a DPO-trained ``guide`` model;
- ``tvkd``: with a DPO-trained ``teacher`` model, the official recipe's form (``tvkd_form = "qadapter"``:
  :func:`pbrl.core.alignment.tvkd_qadapter_return` and ``_loss``, the student's distribution over the teacher's
  top-k tokens) or the potential-shaped DPO pbrl tested first (``"shaping"``: :func:`pbrl.core.tvkd_loss`);
- ``irepo``: :func:`pbrl.core.irepo_loss` on the rows' ``preference``;
- ``sft``: maximum likelihood on the chosen completions (the baseline every method is compared with);
- ``isq``: :func:`pbrl.core.inverse_soft_q_loss` on the chosen completions (imitation, no reference).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from pbrl.core import dpo_loss
from pbrl.core.alignment import (
    inverse_soft_q_loss,
    irepo_loss,
    is_daa_loss,
    soft_value,
    tgdpo_loss,
    tvkd_loss,
    tvkd_qadapter_loss,
    tvkd_qadapter_return,
)
from pbrl.core.losses import DPO_LOSS_TYPES
from pbrl.core.training import LossOutput, OptimizerSpec
from pbrl.errors import ConfigError, describe
from pbrl.fields import param
from pbrl.sequence.data import PairBatch
from pbrl.sequence.lm import Reference, SequenceLogps, completion_logps
from pbrl.train.loop import global_mean

METHODS = ("dpo", "ipo", "rso", "is_daa", "tgdpo", "tvkd", "irepo", "sft", "isq")
REFERENCE_FREE = ("sft", "isq")

__all__ = ["METHODS", "MethodConfig", "SequenceLearner"]


@dataclass
class MethodConfig:
    """The objective's settings (``--set method.KEY=VALUE``); fields a method does not read are ignored by it."""

    name: str = param("dpo", choices=METHODS)
    beta: float = param(0.1, gt=0)                      # β of the implicit reward β log π/π_ref (RSO's γ)
    loss_type: str = param("sigmoid", choices=DPO_LOSS_TYPES)  # dpo, is_daa: TRL's loss types; rso: sigmoid | hinge
    label_smoothing: float = param(0.0, ge=0, lt=0.5)   # cDPO / robust flip rate / EXO's ε
    discopop_tau: float = param(0.05, gt=0)
    length_normalize: bool = False                      # ipo: token-averaged log-ratios (TRL's ipo)
    is_epsilon: float = param(1.0, gt=0)                # is_daa: weights clipped at e^{2ε} (1.0: the official launch)
    # is_daa: the DAA loss the weights multiply: ipo (the official code's trained loss, on summed log-ratios) or
    # sigmoid (the DPO form pbrl tested first; the official code's commented-out line), or any other TRL type
    is_loss: str = param("ipo", choices=DPO_LOSS_TYPES)
    tg_alpha: float = param(0.5, ge=0)                  # tgdpo: α of the token-reward guidance
    tg_clip: float = param(0.0, ge=0)                   # tgdpo: > 0 clamps the multipliers 1 ± α r̂ to [1 − c, 1 + c] ∩ [0, ∞); 0: as the paper
    guide: str = ""                                     # tgdpo: the DPO-trained guide model (folder)
    teacher: str = ""                                   # tvkd: the DPO-trained teacher model (folder)
    # tvkd: qadapter, the official recipe (TVKD.yaml): −log σ(R_w − R_l), R = Σ_t log p̃(y_t) − γ_H H(p̃(·|s_{t+1})),
    # p̃ the student's distribution over the teacher's top-k tokens and a rest bucket; shaping: DPO plus a detached
    # potential from the teacher's soft value (pbrl's first reading; the fields tvkd_alpha / _gamma / _tau / _value)
    tvkd_form: str = param("qadapter", choices=("qadapter", "shaping"))
    tvkd_top_k: int = param(50, ge=1)                   # tvkd qadapter: the teacher's top-k tokens (the official 50)
    tvkd_entropy_gamma: float = param(1.0, ge=0)        # tvkd qadapter: γ_H of the next state's entropy (official 1)
    tvkd_alpha: float = param(1.0, ge=0)                # tvkd: weight of the shaping term
    tvkd_gamma: float = param(0.7, ge=0, le=1)          # tvkd: γ of the shaping (γ = 1 telescopes away)
    tvkd_tau: float = param(1.0, gt=0)                  # tvkd: temperature of the teacher's soft value
    # tvkd: the soft value of the teacher's raw logits (its log-partition), or of its log-probabilities as the
    # official code's tpkd branches read it (τ log Σ p^{1/τ}: 0 at τ = 1, a Rényi entropy of the teacher otherwise)
    tvkd_value: str = param("logits", choices=("logits", "log_probs"))
    isq_td_weight: float = param(0.1, ge=0)             # isq: λ of the TD regulariser (0: MLE)
    isq_gamma: float = param(1.0, ge=0, le=1)           # isq: γ

    def check(self, where: str = "method") -> None:
        if self.name == "rso" and self.loss_type not in ("sigmoid", "hinge"):
            raise ConfigError(describe(where, "method.loss_type", repr(self.loss_type),
                                       "'sigmoid' (RSO's sigmoid-norm) or 'hinge' (hinge-norm) for rso"))
        if self.name == "tgdpo" and not self.guide:
            raise ConfigError(describe(where, "method.guide", "empty", "a DPO-trained model folder for tgdpo"))
        if self.name == "tvkd" and not self.teacher:
            raise ConfigError(describe(where, "method.teacher", "empty", "a DPO-trained teacher model folder for tvkd"))
        if self.length_normalize and self.loss_type != "ipo" or (self.name == "ipo" and self.loss_type not in
                                                                   ("sigmoid", "ipo")):
            raise ConfigError(describe(where, "method.length_normalize / loss_type",
                                       f"{self.length_normalize} / {self.loss_type}", "length_normalize only with ipo"))

    @property
    def needs_token_reference(self) -> bool:
        """Whether the loss reads per-token reference log-probs (tgdpo, tvkd's shaping form)."""
        return self.name == "tgdpo" or (self.name == "tvkd" and self.tvkd_form == "shaping")

    @property
    def uses_reference(self) -> bool:
        return self.name not in REFERENCE_FREE

    @property
    def dpo_type(self) -> str:
        return "ipo" if self.name == "ipo" else self.loss_type


class SequenceLearner(nn.Module):
    """A causal LM trained by one objective of :data:`METHODS` on :class:`PairBatch` batches.

    ``reference`` gives the reference log-probabilities; ``frozen`` holds the extra frozen models a method reads
    (``guide`` for tgdpo, ``teacher`` for tvkd). Only the policy's trainable parameters are in ``state_dict``'s
    optimiser; the reference and frozen models are rebuilt on resume from the run's config.
    """

    def __init__(self, policy: nn.Module, method: MethodConfig, reference: Reference,
                 frozen: dict[str, nn.Module] | None = None):
        super().__init__()
        self.policy = policy
        self.method = method
        self.reference = reference
        self.frozen = dict(frozen or {})  # a plain dict: not registered, not in checkpoints
        self._forward: list[nn.Module] = []  # the policy under DDP (pbrl.train.loop.ddp_wrap); not registered

    def distribute(self, wrapped: nn.Module) -> None:
        """Run the policy's forward through ``wrapped`` (DDP) while training; state dicts keep the bare policy."""
        self._forward = [wrapped] if wrapped is not self.policy else []

    @property
    def forward_policy(self) -> nn.Module:
        return self._forward[0] if self._forward and self.training else self.policy

    def _mean(self, total: Tensor, count: Tensor) -> Tensor:
        """``total / count`` over the global batch: across DDP ranks while training (:func:`global_mean`)."""
        return global_mean(total, count) if self._forward and self.training else total / count

    def optimizers(self) -> dict[str, OptimizerSpec]:
        return {"policy": OptimizerSpec([p for p in self.policy.parameters() if p.requires_grad])}

    def loss(self, batch: PairBatch, step: int) -> LossOutput:
        m = self.method
        if m.name in REFERENCE_FREE:
            return self._imitation_loss(batch)
        qadapter = m.name == "tvkd" and m.tvkd_form == "qadapter"
        logps = completion_logps(self.forward_policy, batch.input_ids, batch.attention_mask, batch.completion_mask,
                                 keep_logits=qadapter)
        chosen, rejected = logps.halves()
        if m.needs_token_reference:
            ref_tokens = self.reference.token_logps(batch.input_ids, batch.attention_mask, batch.completion_mask)
            ref_c, ref_r = ref_tokens.halves()
            ref_total = ref_tokens.total
        else:
            ref_total = self.reference.sequence_logps(batch)
        ref_chosen, ref_rejected = ref_total.chunk(2)
        weight = batch.weight.to(chosen.total.dtype)
        extra: dict[str, Tensor] = {}
        if m.name in ("dpo", "ipo", "rso"):
            lengths = (chosen.lengths, rejected.lengths) if (m.dpo_type == "sigmoid_norm" or m.length_normalize) \
                else (None, None)
            losses, _, _ = dpo_loss(chosen.total, rejected.total, ref_chosen, ref_rejected, beta=m.beta,
                                    label_smoothing=m.label_smoothing, loss_type=m.dpo_type,
                                    discopop_tau=m.discopop_tau, chosen_lengths=lengths[0], rejected_lengths=lengths[1])
        elif m.name == "is_daa":
            # the data policy's stored log-probs where the rows carry them, else the reference's (the official code)
            data_chosen = torch.where(batch.chosen_logps.isnan(), ref_chosen, batch.chosen_logps.to(ref_chosen.dtype))
            data_rejected = torch.where(batch.rejected_logps.isnan(), ref_rejected,
                                        batch.rejected_logps.to(ref_rejected.dtype))
            losses = is_daa_loss(chosen.total, rejected.total, ref_chosen, ref_rejected, data_chosen, data_rejected,
                                 beta=m.beta, epsilon=m.is_epsilon, loss_type=m.is_loss)
            with torch.no_grad():
                log_ratio = chosen.total - data_chosen + rejected.total - data_rejected
                extra["is_daa/log_weight_mean"] = log_ratio.clamp(max=2.0 * m.is_epsilon).mean()
                extra["is_daa/clipped_share"] = (log_ratio > 2.0 * m.is_epsilon).float().mean()
        elif m.name == "irepo":  # train_sequence has checked every row carries its preference
            losses = irepo_loss(chosen.total, rejected.total, ref_chosen, ref_rejected, batch.preference, beta=m.beta)
        elif m.name == "tgdpo":
            guide = self._frozen_logps("guide", batch)
            g_c, g_r = guide.halves()
            losses = tgdpo_loss(chosen.per_token, rejected.per_token, ref_c.per_token, ref_r.per_token,
                                g_c.per_token, g_r.per_token, chosen.mask, rejected.mask, beta=m.beta, alpha=m.tg_alpha,
                                weight_clip=m.tg_clip or None)
        elif qadapter:
            teacher = self._frozen_logps("teacher", batch, keep_logits=True).logits
            top_k = teacher.topk(min(m.tvkd_top_k, teacher.shape[-1]), dim=-1).indices
            returns = tvkd_qadapter_return(logps.logits, batch.input_ids[:, 1:], top_k, logps.mask,
                                           gamma=m.tvkd_entropy_gamma)
            return_chosen, return_rejected = returns.chunk(2)
            losses = tvkd_qadapter_loss(return_chosen, return_rejected)
            extra["tvkd/return_margin"] = (return_chosen - return_rejected).mean().detach()
        elif m.name == "tvkd":
            teacher = self._frozen_logps("teacher", batch, keep_logits=True)
            logits = teacher.logits if m.tvkd_value == "logits" else teacher.logits.float().log_softmax(-1)
            values = soft_value(logits, tau=m.tvkd_tau)
            v_c, v_r = values.chunk(2)
            losses = tvkd_loss(chosen.per_token, rejected.per_token, ref_c.per_token, ref_r.per_token, v_c, v_r,
                               chosen.mask, rejected.mask, beta=m.beta, alpha=m.tvkd_alpha, gamma=m.tvkd_gamma)
        else:  # pragma: no cover - MethodConfig's choices rule this out
            raise ConfigError(describe("method", "name", m.name, f"one of {list(METHODS)}"))
        loss = self._mean((losses * weight).sum(), weight.sum().clamp(min=1e-12))
        return LossOutput(loss, {**self._metrics(chosen, rejected, ref_chosen, ref_rejected), **extra})

    def _imitation_loss(self, batch: PairBatch) -> LossOutput:
        """SFT / inverse soft-Q on the chosen completions only (the first half of the batch)."""
        b = batch.pairs
        ids, attn, comp = batch.input_ids[:b], batch.attention_mask[:b], batch.completion_mask[:b]
        isq = self.method.name == "isq"
        logps = completion_logps(self.forward_policy, ids, attn, comp, keep_logits=isq)
        if isq:
            loss = inverse_soft_q_loss(logps.logits, ids[:, 1:], logps.mask, td_weight=self.method.isq_td_weight,
                                       gamma=self.method.isq_gamma)
        else:
            loss = self._mean(-logps.total.sum(), logps.lengths.sum().clamp(min=1).to(logps.total.dtype))  # token-averaged NLL
        return LossOutput(loss, {"logps/chosen": logps.total.mean().detach()})

    @torch.no_grad()
    def _frozen_logps(self, name: str, batch: PairBatch, keep_logits: bool = False) -> SequenceLogps:
        model = self.frozen[name]
        return completion_logps(model, batch.input_ids, batch.attention_mask, batch.completion_mask,
                                keep_logits=keep_logits)

    def _metrics(self, chosen: SequenceLogps, rejected: SequenceLogps, ref_chosen: Tensor,
                 ref_rejected: Tensor) -> dict[str, Any]:
        with torch.no_grad():
            rc = self.method.beta * (chosen.total - ref_chosen)
            rr = self.method.beta * (rejected.total - ref_rejected)
            return {"rewards/chosen": rc.mean(), "rewards/rejected": rr.mean(), "rewards/margins": (rc - rr).mean(),
                    "rewards/accuracies": (rc > rr).float().mean(),
                    "logps/chosen": chosen.total.mean(), "logps/rejected": rejected.total.mean(),
                    # log π − log π_ref on the data's completions: a drift signal, not the KL of the policy's samples
                    "kl/chosen_logratio": (chosen.total - ref_chosen).mean()}
