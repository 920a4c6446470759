"""Noise schedules and time embeddings of diffusion models: pure tensor functions shared by the control diffusion
policy (:mod:`pbrl.nets.diffusion`) and the sequence-level image / video module (:mod:`pbrl.sequence.diffusion`)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["cosine_alpha_bar", "scaled_linear_alpha_bar", "timestep_embedding"]


def cosine_alpha_bar(steps: int, s: float = 0.008) -> Tensor:
    """ᾱ_k for k = 1..steps of the cosine schedule (Nichol & Dhariwal, 2021, eq. 17), with β_k clipped to 0.999,
    float64 ``[steps]``."""
    k = torch.arange(steps + 1, dtype=torch.float64)
    f = torch.cos((k / steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, 0)


def scaled_linear_alpha_bar(steps: int, beta_start: float = 0.00085, beta_end: float = 0.012) -> Tensor:
    """ᾱ_k of Stable Diffusion's ``scaled_linear`` schedule (diffusers' DDPMScheduler as SD configures it: √β linear
    from √0.00085 to √0.012), float64 ``[steps]``; its last ᾱ is about 0.0047."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def timestep_embedding(k: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of diffusion steps (or of ``1000 t``) ``[B] -> [B, dim]`` (Vaswani et al., 2017)."""
    half = dim // 2
    freq = torch.exp(-math.log(10_000) * torch.arange(half, device=k.device, dtype=torch.float32) / max(half - 1, 1))
    angle = k.float()[:, None] * freq[None]
    return torch.cat([angle.sin(), angle.cos()], -1)
