"""Reward models on a causal LM's hidden states: a single Bradley-Terry head, or MiCRo's mixture of K heads with a
router that reads the context (:func:`pbrl.core.alignment.micro_mixture_loss`).

The backbone's last hidden state at the last token of ``prompt + completion`` feeds the heads; the router reads the
hidden state at the last token of the row's context text (its ``group``), so the heads never see who is judging and
only the router can tell users apart. The backbone is frozen (MiCRo's setting: a fixed base reward model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from pbrl.core import logistic_link
from pbrl.core.alignment import micro_mixture_loss
from pbrl.core.training import LossOutput, OptimizerSpec
from pbrl.fields import param
from pbrl.sequence.data import PairBatch

__all__ = ["MixtureRewardConfig", "MixtureRewardModel"]


@dataclass
class MixtureRewardConfig:
    heads: int = param(2, ge=1)            # K Bradley-Terry heads (1 and no router: a single BT reward)
    balance: float = param(0.5, ge=0)      # λ of the load-balancing regulariser (MiCRo's default 0.5)
    routed: bool = True                    # route on the context; False: uniform weights
    pool: str = param("last", choices=("last", "mean"))  # features: the last token's state (MiCRo) or the mean


def pooled_hidden(backbone: nn.Module, input_ids: Tensor, attention_mask: Tensor, pool: str = "last") -> Tensor:
    """``[N, d]`` the final layer's hidden state at each row's last non-pad token (right padding), or its mean over
    the non-pad tokens (``pool="mean"``)."""
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                      use_cache=False).hidden_states[-1]
    if pool == "mean":
        weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
    last = attention_mask.sum(-1).clamp(min=1) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class MixtureRewardModel(nn.Module):
    """K linear reward heads and a linear router over a frozen LM's hidden states.

    ``loss(batch)`` needs ``context_ids`` / ``context_mask`` ``[B, C]`` on the batch (see :meth:`with_context`).
    """

    def __init__(self, backbone: nn.Module, width: int, cfg: MixtureRewardConfig):
        super().__init__()
        self.cfg = cfg
        self.frozen = {"backbone": backbone.eval()}   # not registered: not trained, not checkpointed
        for p in backbone.parameters():
            p.requires_grad_(False)
        self.heads = nn.Linear(width, cfg.heads, bias=False)
        self.router = nn.Linear(width, cfg.heads)

    def optimizers(self) -> dict[str, OptimizerSpec]:
        return {"reward": OptimizerSpec(list(self.parameters()))}

    @torch.no_grad()
    def features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return pooled_hidden(self.frozen["backbone"], input_ids, attention_mask, self.cfg.pool)

    def rewards(self, batch: PairBatch) -> tuple[Tensor, Tensor]:
        """``[B, K]`` head rewards of the chosen and of the rejected completions."""
        r = self.heads(self.features(batch.input_ids, batch.attention_mask))
        return r.chunk(2)

    def router_logits(self, context_ids: Tensor, context_mask: Tensor) -> Tensor:
        if not self.cfg.routed:
            return torch.zeros(context_ids.shape[0], self.cfg.heads, device=context_ids.device)
        return self.router(self.features(context_ids, context_mask))

    def preference_probability(self, batch: PairBatch, context_ids: Tensor, context_mask: Tensor) -> Tensor:
        """``[B]`` P(chosen ≻ rejected | context) = Σ_k w_k σ(r_k(y_w) − r_k(y_l))."""
        rc, rr = self.rewards(batch)
        w = torch.softmax(self.router_logits(context_ids, context_mask), -1)
        return (w * torch.sigmoid(rc - rr)).sum(-1)

    def loss(self, batch: Any, step: int) -> LossOutput:
        pairs, context_ids, context_mask = batch
        rc, rr = self.rewards(pairs)
        if self.cfg.heads == 1:
            losses = logistic_link(rc[:, 0] - rr[:, 0], torch.ones_like(rc[:, 0]))
            regulariser = losses.new_zeros(())
        else:
            losses, regulariser = micro_mixture_loss(rc, rr, self.router_logits(context_ids, context_mask),
                                                     balance=self.cfg.balance)
        with torch.no_grad():
            p = self.preference_probability(pairs, context_ids, context_mask)
        return LossOutput(losses.mean() + regulariser, {"reward/accuracy": (p > 0.5).float().mean(),
                                                        "reward/balance": regulariser.detach()})
