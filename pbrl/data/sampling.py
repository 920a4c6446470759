"""What every batch sampler shares: a ``torch.Generator`` on the training device, uniform draws, and its state for
checkpoints (a resumed run draws exactly the batches an uninterrupted one would)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor


class Sampler:
    """Subclasses set ``self.device``, call ``_seed(seed)``, and define ``__len__`` and ``batch(index [B])``."""

    device: torch.device

    def _seed(self, seed: int) -> None:
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        raise NotImplementedError

    def batch(self, index: Tensor):
        raise NotImplementedError

    def sample(self, batch_size: int):
        """``batch_size`` items drawn uniformly with replacement."""
        return self.batch(torch.randint(len(self), (batch_size,), generator=self.generator, device=self.device))

    def state_dict(self) -> dict[str, Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator"].cpu())


def derived_seed(seed: int, index: int) -> int:
    """The seed of an agent's ``index``-th named batch: ``seed`` itself for the first (a one-batch agent draws what
    it always drew), an independent stream from ``(seed, index)`` for the others."""
    if index == 0:
        return seed
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class NamedSamplers:
    """Several named batches per step, each from its own sampler and of its own size (None: the step's
    ``batch_size``): ``sample(batch_size) -> {name: batch}``. Its state is every sampler's (exact resume)."""

    def __init__(self, samplers: dict[str, Sampler], sizes: dict[str, int | None]):
        self.samplers = samplers
        self.sizes = sizes

    def sample(self, batch_size: int) -> dict[str, Any]:
        return {name: s.sample(self.sizes.get(name) or batch_size) for name, s in self.samplers.items()}

    def state_dict(self) -> dict[str, Any]:
        return {name: s.state_dict() for name, s in self.samplers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, s in self.samplers.items():
            s.load_state_dict(state[name])
