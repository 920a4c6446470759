"""Behaviour cloning: maximise log π(a|s) on every step of every segment, preferences ignored. With the diffusion
backbone: the DDPM objective on every action chunk of every segment, with EMA weights for acting. With
``agent.data=transitions``: on uniform steps of the whole trajectories instead (D4RL's BC), where the pairs' segments
rarely hold an episode's first steps."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor

from pbrl.agents.base import (
    Agent,
    BatchSpec,
    DataSpec,
    LossOutput,
    PolicyConfig,
    build_policy,
    masked_mean,
    steps_log_prob,
)
from pbrl.data.preferences import PreferenceBatch
from pbrl.data.transitions import TransitionBatch
from pbrl.errors import ConfigError, describe
from pbrl.fields import param
from pbrl.nets.diffusion import DENOISERS, PREDICTIONS, diffusion_windows

BACKBONES = ("mlp", "transformer", "diffusion")
BC_DATA = ("pairs", "transitions")


@dataclass
class BCConfig(PolicyConfig):
    # unset (None) fields are left out of config.toml, so runs made before these options read back the same
    backbone: str | None = param(None, choices=BACKBONES)  # mlp (None) | transformer: pbrl.nets.transformer
    context: int | None = param(None, ge=1, le=4096)       # transformer: steps of history at evaluation (64)
    seq_dim: int | None = param(None, ge=4, le=8192)       # transformer: width (128)
    seq_layers: int | None = param(None, ge=1, le=64)      # transformer: blocks (2)
    seq_heads: int | None = param(None, ge=1, le=64)       # transformer: attention heads (4)
    horizon: int | None = param(None, ge=1, le=1024)       # diffusion: actions per chunk (16)
    n_obs: int | None = param(None, ge=1, le=64)           # diffusion: observations of history (2)
    n_action: int | None = param(None, ge=1, le=1024)      # diffusion: actions run per chunk before resampling (8, at most the horizon)
    denoiser: str | None = param(None, choices=DENOISERS)  # diffusion: mlp (None) | unet1d
    channels: list[int] | None = param(None, ge=8, le=8192)  # diffusion unet1d: widths per level ([64, 128]), multiples of 8
    prediction: str | None = param(None, choices=PREDICTIONS)  # diffusion: epsilon (None) | v
    diffusion_steps: int | None = param(None, ge=2, le=10_000)  # diffusion: DDPM training steps (100)
    sample_steps: int | None = param(None, ge=1, le=10_000)     # diffusion: DDIM steps at sampling (10)
    ema: float | None = param(None, ge=0, lt=1)            # diffusion: EMA decay of the acting weights (0.995)
    # bc only: pairs (None; every step of both segments of each labelled pair, CPL's step-for-step baseline) |
    # transitions (every step of the trajectories, D4RL's BC: episode starts as often as any step)
    data: str | None = param(None, choices=BC_DATA)

    def check(self) -> tuple[str, str, str] | None:
        if (self.seq_dim or 128) % (self.seq_heads or 4):
            return "seq_heads", repr(self.seq_heads or 4), f"a divisor of seq_dim ({self.seq_dim or 128})"
        if self.n_action is not None and self.n_action > (self.horizon or 16):
            return "n_action", repr(self.n_action), f"at most the horizon ({self.horizon or 16})"
        levels = len(self.channels or (64, 128))
        if self.backbone == "diffusion" and self.denoiser == "unet1d" and (self.horizon or 16) % 2 ** (levels - 1):
            return "horizon", repr(self.horizon), f"a multiple of {2 ** (levels - 1)} for the unet1d denoiser"
        if self.channels is not None and (not self.channels or any(c % 8 for c in self.channels)):
            return "channels", repr(self.channels), "one or more widths, each a multiple of 8 (GroupNorm's 8 groups)"
        return super().check()


def bc_loss(logp: Tensor, mask: Tensor) -> Tensor:
    """Negative mean log-likelihood of the valid steps: ``logp``, ``mask`` [B, 2, T] (or any equal shapes) -> scalar."""
    return -masked_mean(logp, mask)


class BC(Agent):
    Config = BCConfig
    backbones: tuple[str, ...] = BACKBONES  # which of them this agent's loss can use

    def __init__(self, cfg: BCConfig, spec: DataSpec):
        super().__init__(cfg, spec)
        if (cfg.backbone or "mlp") not in self.backbones:
            raise ConfigError(describe("agent.backbone", "backbone", repr(cfg.backbone),
                                       f"one of {list(self.backbones)} for this agent"))
        if cfg.data == "transitions" and (type(self) is not BC or (cfg.backbone or "mlp") != "mlp"):
            raise ConfigError(describe("agent.data", "data", "'transitions'", "pairs for this agent and backbone "
                                       "(transitions: agent bc with an MLP policy only)"))
        self.policy = build_policy(cfg, spec)
        if getattr(self.policy, "is_chunked", False):
            self.freeze("ema", copy.deepcopy(self.policy))  # the acting weights (Diffusion Policy keeps an EMA)

    def after_step(self, step: int) -> None:
        if hasattr(self, "ema"):
            decay = self.cfg.ema if self.cfg.ema is not None else 0.995
            with torch.no_grad():
                torch._foreach_lerp_(list(self.ema.parameters()), list(self.policy.parameters()), 1.0 - decay)

    @classmethod
    def batch_specs(cls, cfg: BCConfig) -> dict[str, BatchSpec]:
        if cfg.data == "transitions":  # no reward: BC reads (s, a) only
            return {"main": BatchSpec("transitions", origin="agent.data=transitions")}
        return super().batch_specs(cfg)

    def loss(self, batch: PreferenceBatch | TransitionBatch, step: int) -> LossOutput:
        if isinstance(batch, TransitionBatch):  # agent.data=transitions: −log π(a|s) of uniform steps
            loss = -self.policy.log_prob(batch.obs, batch.act).mean()
            return LossOutput(loss, {"bc/nll": loss.detach()})
        if getattr(self.policy, "is_chunked", False):
            p = self.policy
            obs, chunk, valid = diffusion_windows(batch.obs, batch.act, batch.mask, p.n_obs, p.horizon)
            loss = masked_mean(p.loss(obs, chunk), valid)
            return LossOutput(loss, {"bc/denoising_error": loss.detach()})
        logp = steps_log_prob(self.policy, batch.obs, batch.act, batch.timestep, batch.mask)  # [B, 2, T]
        loss = bc_loss(logp, batch.mask)
        return LossOutput(loss, {"bc/nll": loss.detach()})
