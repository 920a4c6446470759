"""Reward models learned from preferences: an ensemble of MLPs r(s, a) (Christiano et al., 2017; Lee et al.,
2021), scored on a segment by the sum of its step rewards."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pbrl.nets.mlp import ObsNormalizer, mlp


class RewardEnsemble(nn.Module):
    """``members`` MLPs r_k(s, a) on normalised observations. ``forward(obs [..., do], act [..., da]) -> [K, ...]``."""

    def __init__(self, obs_dim: int, act_dim: int, *, members: int = 3, hidden_layers: Sequence[int] = (256, 256, 256),
                 obs_mean: Tensor | None = None, obs_std: Tensor | None = None):
        super().__init__()
        self.normalizer = ObsNormalizer(obs_mean if obs_mean is not None else torch.zeros(obs_dim),
                                        obs_std if obs_std is not None else torch.ones(obs_dim))
        self.members = nn.ModuleList(mlp(obs_dim + act_dim, 1, hidden_layers) for _ in range(members))

    def forward(self, obs: Tensor, act: Tensor) -> Tensor:
        x = torch.cat([self.normalizer(obs), act], -1)
        return torch.stack([m(x).squeeze(-1) for m in self.members])
