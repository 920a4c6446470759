"""What every agent shares: a config dataclass, ``loss(batch, step)`` and ``act(obs)``. The trainer owns the rest."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from pbrl.data.preferences import PreferenceBatch
from pbrl.errors import ConfigError, describe
from pbrl.nets.mlp import DeterministicTanhPolicy, TanhGaussianPolicy

POLICY_HEADS = {"tanh_gaussian": TanhGaussianPolicy, "deterministic": DeterministicTanhPolicy}


@dataclass
class AgentConfig:
    """Policy network fields shared by the MLP-policy agents."""

    policy: str = "tanh_gaussian"  # tanh_gaussian | deterministic (log π = −‖μ(s) − a‖², CPL's official actor)
    hidden: int = 256          # width of each hidden layer
    layers: int = 2            # number of hidden layers
    dropout: float = 0.0       # dropout after each hidden layer (CPL's paper: 0.25)
    log_std_min: float = -5.0
    log_std_max: float = 2.0


@dataclass(frozen=True)
class LossOutput:
    """A scalar loss to minimise and detached diagnostics (logged as TensorBoard scalars)."""

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over positions where ``mask`` is true; same shapes."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


class Agent(nn.Module):
    """Base agent with a tanh-Gaussian MLP policy, built from the dataset's dimensions and observation statistics."""

    Config = AgentConfig

    def __init__(self, cfg: AgentConfig, obs_dim: int, act_dim: int, obs_mean: Tensor | None = None,
                 obs_std: Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        if cfg.policy not in POLICY_HEADS:
            raise ConfigError(describe("agent.policy", "policy head", repr(cfg.policy), f"one of {sorted(POLICY_HEADS)}"))
        self.policy = POLICY_HEADS[cfg.policy](obs_dim, act_dim, hidden=cfg.hidden, layers=cfg.layers, dropout=cfg.dropout,
                                         log_std_min=cfg.log_std_min, log_std_max=cfg.log_std_max,
                                         obs_mean=obs_mean, obs_std=obs_std)

    def loss(self, batch: PreferenceBatch, step: int) -> LossOutput:
        raise NotImplementedError

    @torch.no_grad()
    def act(self, obs: Tensor) -> Tensor:
        """Deterministic action for a batch of observations ``[N, obs_dim] -> [N, act_dim]``."""
        return self.policy(obs)
