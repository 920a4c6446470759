"""Reward models for images and video, and what uses them at sampling time.

- :class:`ImageRewardModel`: a small CNN with one head per quality dimension (VideoReward's VQ / MQ / TA heads,
  Liu et al., 2025), trained on pairs with Bradley-Terry with ties (:func:`pbrl.core.rao_kupper_loss`). Video
  ``[B, C, T, H, W]`` is scored per frame and averaged. With ``noisy = True`` it is *step-aware*: trained on
  ``x_t`` at random times (winner and loser on the same noise and time) and told the time, as SPO's step-aware
  preference model and Flow-NRG's noisy-latent reward are; ``t = 0`` scores clean images.
- :func:`reward_guidance`: Flow-NRG (noisy reward guidance): at each sampling step the gradient of a weighted sum
  of several reward models' (weighted) heads at ``x_t`` is added to the prediction.

The model is a learner of the shared loop (:func:`pbrl.train.loop.run_loop`): :func:`train_reward_model`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from pbrl.core.diffusion import rao_kupper_loss, timestep_embedding
from pbrl.core.training import LossOutput, OptimizerSpec
from pbrl.sequence.data import IndexSampler
from pbrl.sequence.diffusion import NoiseSchedule, load_pbrl_module, save_module
from pbrl.train.loop import LoopResult, TrainConfig, run_loop

__all__ = ["ImageRewardModel", "load_reward_model", "reward_guidance", "reward_scores", "save_reward_model",
           "train_reward_model"]


class ImageRewardModel(nn.Module):
    """``(x [B, C, H, W] or [B, C, T, H, W], t [B], cond [B, D]) -> rewards [B, heads]``: convolutions with a
    coordinate grid (the prompt says *where*), global average pooling, then an MLP on the features, the condition
    and (``noisy``) an embedding of the time. ``schedule`` (default: 1,000 cosine steps of ``prediction``'s
    process) is the forward process noisy training draws from; it must match the sampler's the model guides."""

    def __init__(self, channels: int = 1, cond_dim: int = 2, heads: int = 1, width: int = 32, *, noisy: bool = False,
                 theta: float = 5.0, prediction: str = "epsilon", schedule: NoiseSchedule | None = None):
        super().__init__()
        self.noisy, self.theta, self.heads = noisy, theta, heads
        self.schedule = schedule or NoiseSchedule(prediction)
        self.config = {"channels": channels, "cond_dim": cond_dim, "heads": heads, "width": width, "noisy": noisy,
                       "theta": theta, "prediction": self.schedule.prediction}
        self.features = nn.Sequential(
            nn.Conv2d(channels + 2, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1, stride=2), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.SiLU())
        self.emb_dim = 32
        self.head = nn.Sequential(nn.Linear(2 * width * 2 + cond_dim + self.emb_dim, 64), nn.SiLU(),
                                  nn.Linear(64, heads))

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        if x.dim() == 5:  # video: score every frame, average
            b, c, frames, h, w = x.shape
            flat = x.permute(0, 2, 1, 3, 4).reshape(b * frames, c, h, w)
            return self(flat, t.repeat_interleave(frames), cond.repeat_interleave(frames, 0)).view(b, frames, -1).mean(1)
        rows = torch.linspace(-1, 1, x.shape[-2], device=x.device, dtype=x.dtype)
        cols = torch.linspace(-1, 1, x.shape[-1], device=x.device, dtype=x.dtype)
        grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij")).expand(x.shape[0], -1, -1, -1)
        f = self.features(torch.cat([x, grid], 1))
        pooled = torch.cat([f.mean((-2, -1)), f.amax((-2, -1))], 1)
        time = self.schedule.model_time(t) if self.noisy else torch.zeros_like(t, dtype=torch.float32)
        return self.head(torch.cat([pooled, cond.to(x.dtype), timestep_embedding(time, self.emb_dim).to(x.dtype)], 1))

    def optimizers(self) -> dict[str, OptimizerSpec]:
        return {"reward": OptimizerSpec(list(self.parameters()))}

    def loss(self, batch: dict[str, Tensor], step: int) -> LossOutput:
        """Rao-Kupper negative log-likelihood of the labels ``[B, heads]`` (1: a better, 0: b better, 0.5: tie; NaN:
        no label for that head); noisy models see both images at one random time and noise."""
        a, b, cond, label = batch["a"], batch["b"], batch["cond"], batch["label"]
        n = len(a)
        if self.noisy:
            t = self.schedule.sample_t(n, device=a.device)
            noise = torch.randn_like(a)
            a, b = self.schedule.noisy(a, noise, t), self.schedule.noisy(b, noise, t)
        else:
            t = torch.zeros(n, dtype=torch.long, device=a.device)
        ra, rb = self(a, t, cond), self(b, t, cond)
        known = ~torch.isnan(label)
        losses = rao_kupper_loss(ra, rb, torch.nan_to_num(label, nan=1.0), theta=self.theta)
        loss = (losses * known).sum() / known.sum().clamp(min=1)
        decided = known & (label != 0.5)
        correct = ((ra > rb) == (label > 0.5)) & decided
        return LossOutput(loss, {"reward/accuracy": correct.sum() / decided.sum().clamp(min=1)})


class _PairRows(IndexSampler):
    def __init__(self, fields: dict[str, Tensor], batch_size: int, seed: int, device: torch.device):
        super().__init__(len(fields["a"]), batch_size, seed=seed)
        self.fields, self.device = fields, device

    def sample(self) -> dict[str, Tensor]:
        index = self.next_indices()
        return {k: v[index].to(self.device) for k, v in self.fields.items()}


def train_reward_model(model: ImageRewardModel, cond: Tensor, a: Tensor, b: Tensor, label: Tensor,
                       out: str | os.PathLike, cfg: TrainConfig, *, progress: bool = False,
                       device: torch.device | None = None) -> LoopResult:
    """Fit ``model`` on pairs ``(a, b)`` with labels ``[N]`` or ``[N, heads]`` on the shared loop (checkpoints and
    TensorBoard in ``out``; an unfinished run resumes)."""
    device = device or torch.device("cpu")
    label = label[:, None] if label.dim() == 1 else label
    if label.shape != (len(a), model.heads):
        raise ValueError(f"reward labels: got shape {list(label.shape)}, expected [{len(a)}, {model.heads}]")
    sampler = _PairRows({"a": a, "b": b, "cond": cond, "label": label.float()}, cfg.batch_size, cfg.seed, device)
    model.to(device)
    return run_loop(model, sampler.sample, cfg, Path(out), device=device, stateful={"sampler": sampler},
                    progress=progress, desc="reward model")


def reward_guidance(models: Sequence[ImageRewardModel], cond: Tensor, *, weights: Sequence[float] | None = None,
                    head_weights: Sequence[Sequence[float]] | None = None, scale: float = 1.0,
                    schedule: NoiseSchedule) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """Flow-NRG's guidance (Liu et al., 2025, noisy reward guidance; pbrl's form): with
    ``R(x_t) = Σ_i w_i Σ_k u_ik r_ik(x_t, t, c)`` from reward models trained on noisy latents, return the term
    :func:`pbrl.sequence.diffusion.sample` adds to each prediction: ``−scale · ∇_x R`` for a flow's velocity (the
    Euler step then moves ``x`` up the reward), ``−scale · √(1 − ᾱ_t) · ∇_x R`` for ε (classifier guidance,
    Dhariwal & Nichol, 2021). For a v-model the same ε-space push is mapped through ``v = ε / √ᾱ_t`` at fixed x."""
    weights = list(weights or [1.0] * len(models))
    head_weights = [list(h) for h in (head_weights or [[1.0] * m.heads for m in models])]

    def guidance(x: Tensor, t: Tensor, x0_hat: Tensor) -> Tensor:
        x = x.detach().requires_grad_(True)
        total = sum(w * (m(x, t, cond) * torch.tensor(u, device=x.device)).sum()
                    for m, w, u in zip(models, weights, head_weights))
        (grad,) = torch.autograd.grad(total, x)
        if schedule.is_flow:
            return -scale * grad
        a, s = schedule.coefficients(t, x)
        push = -scale * s * grad
        return push if schedule.prediction == "epsilon" else push / a
    return guidance


def save_reward_model(model: ImageRewardModel, path: str | os.PathLike) -> None:
    save_module(model, {"_class_name": "ImageRewardModel", **model.config}, path)


def load_reward_model(path: str | os.PathLike) -> ImageRewardModel:
    model, _ = load_pbrl_module(path, ImageRewardModel)
    return model.eval().requires_grad_(False)


def reward_scores(model: ImageRewardModel, images: Tensor, cond: Tensor, batch: int = 256) -> Tensor:
    """Clean-image rewards ``[N, heads]`` (t = 0), without gradient, in batches."""
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = images[i:i + batch]
            out.append(model(x, torch.zeros(len(x), dtype=torch.long, device=x.device), cond[i:i + batch]))
    return torch.cat(out)

