"""Scores: one scalar per item (a segment, a sequence), computed from per-step quantities.

Every function here is a pure function of tensors. Padded steps are excluded by a mask: a masked step adds
exactly nothing to a score, whatever value it holds (even inf or NaN).
"""

from __future__ import annotations

import torch
from torch import Tensor


def discount_weights(length: int, gamma: float, *, device: torch.device | None = None,
                     dtype: torch.dtype = torch.float32) -> Tensor:
    """``[γ^0, γ^1, …, γ^(T-1)]`` as a ``[T]`` tensor."""
    return gamma ** torch.arange(length, device=device, dtype=dtype)


def masked_discounted_sum(x: Tensor, *, gamma: float = 1.0, mask: Tensor | None = None) -> Tensor:
    """``Σ_t γ^t m_t x_t`` over the last dimension.

    Args:
        x: ``[..., T]`` per-step values.
        gamma: discount γ in (0, 1].
        mask: ``[..., T]`` bool or {0, 1}; steps with mask 0 contribute nothing.
    Returns:
        ``[...]`` the discounted, masked sum.
    """
    if mask is not None:
        x = torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))
    if gamma != 1.0:
        x = x * discount_weights(x.shape[-1], gamma, device=x.device, dtype=x.dtype)
    return x.sum(-1)


def segment_return(rewards: Tensor, *, gamma: float = 1.0, mask: Tensor | None = None) -> Tensor:
    """Discounted segment return ``R(σ) = Σ_t γ^t r_t`` (reward learning, scripted teachers).

    ``rewards`` ``[..., T]`` -> ``[...]``.
    """
    return masked_discounted_sum(rewards, gamma=gamma, mask=mask)


def cpl_score(logp: Tensor, *, alpha: float = 0.1, gamma: float = 1.0, mask: Tensor | None = None,
              average: bool = False) -> Tensor:
    """CPL's regret score ``A(σ) = α Σ_t γ^t log π(a_t | s_t)`` (Hejna et al., 2023, eq. 5); with ``average``,
    divided by the number of valid steps (the D4RL recipe of jhejna/cpl-human, which averages per-step log-probs).

    ``logp`` ``[..., T]`` per-step log-probabilities of the dataset actions -> ``[...]``.
    """
    total = masked_discounted_sum(logp, gamma=gamma, mask=mask)
    if average:
        steps = logp.shape[-1] if mask is None else mask.to(logp.dtype).sum(-1).clamp(min=1)
        total = total / steps
    return alpha * total


def dpo_implicit_reward(policy_logps: Tensor, ref_logps: Tensor, *, beta: float = 0.1) -> Tensor:
    """DPO's implicit reward ``β (log π(y|x) − log π_ref(y|x))`` (Rafailov et al., 2023). Shapes ``[B]``."""
    return beta * (policy_logps - ref_logps)
