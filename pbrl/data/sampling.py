"""What every batch sampler shares: a ``torch.Generator`` on the training device, uniform draws, and its state for
checkpoints (a resumed run draws exactly the batches an uninterrupted one would)."""

from __future__ import annotations

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
