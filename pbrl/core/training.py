"""What a learner hands the training loop (:mod:`pbrl.train.loop`): its losses and its optimiser declarations.
Plain containers over tensors, here so that agents and sequence-level objectives share them without importing the
loop or each other."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class LossOutput:
    """What a learner's ``loss`` returns: a scalar ``loss`` (one optimiser) or ``{optimiser name: scalar}``,
    and detached diagnostics logged as TensorBoard scalars."""

    loss: Tensor | dict[str, Tensor]
    metrics: dict[str, Tensor] = field(default_factory=dict)

    def per_optimizer(self, names: list[str]) -> dict[str, Tensor]:
        if isinstance(self.loss, Tensor):
            if len(names) != 1:
                raise ValueError(f"loss: got one scalar, expected one loss per optimiser {names}")
            return {names[0]: self.loss}
        return self.loss

    def total(self) -> Tensor:
        return self.loss if isinstance(self.loss, Tensor) else sum(self.loss.values())


@dataclass
class OptimizerSpec:
    """One AdamW over ``params``. ``None`` fields take the run's ``train.lr`` / ``weight_decay`` / ``grad_clip``;
    ``schedule``: ``constant`` or ``cosine`` (the learning rate decays to 0 over the run's steps). With
    ``warmup_steps``, the rate is multiplied by ``min(1, (k − warmup_start + 1) / warmup_steps)`` from step
    ``warmup_start`` on (before it: 1), a linear warm-up that starts at a phase switch."""

    params: list[nn.Parameter]
    lr: float | None = None
    weight_decay: float | None = None
    grad_clip: float | None = None
    schedule: str = "constant"
    warmup_start: int = 0
    warmup_steps: int = 0
