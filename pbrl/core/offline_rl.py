"""Implicit Q-Learning's losses (Kostrikov, Nair & Levine, 2021, "Offline RL with Implicit Q-Learning") as pure
functions of tensors. Every function returns per-example values ``[B]``; callers take the mean."""

from __future__ import annotations

import torch
from torch import Tensor


def expectile_loss(diff: Tensor, expectile: float) -> Tensor:
    """Asymmetric squared loss ``L₂^τ(u) = |τ − 1(u < 0)| u²`` (IQL eq. 5) of ``u = Q(s, a) − V(s)``, ``[B] -> [B]``.

    Minimising ``E[L₂^τ(y − v)]`` over v gives the τ-expectile of y: τ = 0.5 is the mean, τ → 1 the maximum.
    """
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return weight * diff**2


def td_target(reward: Tensor, done: Tensor, next_value: Tensor, discount: float) -> Tensor:
    """``r + γ (1 − done) V(s′)`` (IQL eq. 6), ``[B]``; ``done`` is 1.0 at terminal steps."""
    return reward + discount * (1.0 - done) * next_value


def twin_q_loss(q1: Tensor, q2: Tensor, target: Tensor) -> Tensor:
    """Mean of the two critics' squared TD errors, ``[B]`` (IQL eq. 6 for a twin critic)."""
    return 0.5 * ((q1 - target) ** 2 + (q2 - target) ** 2)


def advantage_weights(advantage: Tensor, temperature: float, max_weight: float = 100.0) -> Tensor:
    """``min(exp(β A), max_weight)``: the advantage-weighted regression weights of IQL eq. 7, ``[B]``."""
    return torch.exp(temperature * advantage).clamp(max=max_weight)


def awr_actor_loss(log_prob: Tensor, advantage: Tensor, temperature: float, max_weight: float = 100.0) -> Tensor:
    """``−exp(β A(s, a)) log π(a|s)`` with clipped weights and no gradient through A (IQL eq. 7), ``[B]``."""
    return -advantage_weights(advantage.detach(), temperature, max_weight) * log_prob
