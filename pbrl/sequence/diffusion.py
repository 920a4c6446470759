"""Denoising errors of image and video diffusion / flow models, under a policy and a frozen reference, on shared
noise and timesteps: the scores the diffusion preference losses of :mod:`pbrl.core.diffusion` compare.

- Parameterisations (``prediction``):
  - ``epsilon``: DDPM (Ho et al., 2020), ``x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε``, the network predicts ε;
  - ``v``: the same forward process, the network predicts ``v = √ᾱ_t ε − √(1−ᾱ_t) x₀`` (Salimans & Ho, 2022);
  - ``flow``: rectified flow (Liu et al., 2023; SD3's convention), ``x_t = (1 − t) x₀ + t ε`` with t ∈ [0, 1],
    the network predicts the velocity ``v = ε − x₀`` and sees the time as ``1000 t``.
- Discrete steps use Stable Diffusion's ``scaled_linear`` ᾱ (the schedule Diffusion-DPO, SPO and DRO train on) or
  the cosine ᾱ (Nichol & Dhariwal, 2021) of ``train_steps`` steps, or any ``alpha_bar`` (a diffusers scheduler's
  ``alphas_cumprod``).
- Models are called as ``net(x_t, timestep, cond)``: pbrl's :class:`SmallUNet` (images ``[B, C, H, W]``, and video
  ``[B, C, T, H, W]`` frame by frame with the frame index in the condition) or a ``diffusers`` UNet / transformer
  wrapped in :class:`DiffusersDenoiser`.
- Sampling: DDIM (η = 0) for ``epsilon`` / ``v``, Euler steps of the ODE for ``flow``; an optional ``guidance``
  callable adds a term to each step's prediction (Flow-NRG's reward gradients).

The process and the samplers are :mod:`pbrl.core.diffusion`'s pure functions (the control diffusion policy uses
the same); :class:`NoiseSchedule` holds one parameterisation's ᾱ and hands them its fields.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pbrl.core.diffusion import (
    PREDICTIONS,
    Guidance,
    cosine_alpha_bar,
    ddim_timesteps,
    ddim_transition,
    forward_coefficients,
    prediction_target,
    sample_chain,
    scaled_linear_alpha_bar,
    split_prediction,
    timestep_embedding,
)
from pbrl.errors import ConfigError, describe
from pbrl.io import atomic_write_text, write_folder

__all__ = ["PREDICTIONS", "SCHEDULES", "DiffusersDenoiser", "NoiseSchedule", "PairErrors", "SmallUNet", "ddim_step",
           "denoising_error", "load_denoiser", "load_pbrl_module", "pair_denoising_errors", "read_model_config", "sample",
           "sampling_times", "save_denoiser", "save_module"]


SCHEDULES = {"scaled_linear": scaled_linear_alpha_bar, "cosine": cosine_alpha_bar}


class NoiseSchedule(nn.Module):
    """The forward process and training target of one parameterisation (see the module docstring)."""

    def __init__(self, prediction: str = "epsilon", train_steps: int = 1000, alpha_bar: Tensor | None = None,
                 schedule: str = "scaled_linear", t_range: tuple[float, float] = (0.0, 1.0)):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ConfigError(describe("schedule", "prediction", repr(prediction), f"one of {PREDICTIONS}"))
        if schedule not in SCHEDULES:
            raise ConfigError(describe("schedule", "schedule", repr(schedule), f"one of {list(SCHEDULES)}"))
        if not 0.0 <= t_range[0] < t_range[1] <= 1.0:
            raise ConfigError(describe("schedule", "t_range", list(t_range), "0 <= t_min < t_max <= 1"))
        self.prediction, self.t_range = prediction, t_range
        ab = alpha_bar if alpha_bar is not None else SCHEDULES[schedule](train_steps)
        self.train_steps = len(ab)
        self.register_buffer("alpha_bar", ab.float(), persistent=False)

    @property
    def is_flow(self) -> bool:
        return self.prediction == "flow"

    def sample_t(self, batch: int, *, device: torch.device | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """Training times ``[B]``: uniform integer steps, or uniform t ∈ (0, 1) for flow, within ``t_range`` (the
        fraction of the process trained on; the official Diffusion-DPO code restricts it for SDXL's refiner)."""
        lo, hi = self.t_range
        if self.is_flow:
            u = torch.rand(batch, device=device, generator=generator)
            return (lo + (hi - lo) * u).clamp(1e-4, 1 - 1e-4)
        return torch.randint(int(lo * self.train_steps), max(int(round(hi * self.train_steps)), int(lo * self.train_steps) + 1),
                             (batch,), device=device, generator=generator)

    def coefficients(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(a, s)`` with ``x_t = a x₀ + s ε``, shaped like ``x``."""
        return forward_coefficients(self.alpha_bar, t, x, self.prediction)

    def noisy(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        a, s = self.coefficients(t, x0)
        return a * x0 + s * noise

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        return prediction_target(x0, noise, *self.coefficients(t, x0), self.prediction)

    def model_time(self, t: Tensor) -> Tensor:
        """What the network is given as its timestep."""
        return t * 1000.0 if self.is_flow else t

    def to_x0_eps(self, out: Tensor, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(x̂₀, ε̂)`` from the network's output at ``x_t``."""
        return split_prediction(out, x, *self.coefficients(t, x), self.prediction)


def denoising_error(net: Callable[..., Tensor], schedule: NoiseSchedule, x0: Tensor, noise: Tensor, t: Tensor,
                    cond: Tensor) -> Tensor:
    """``‖target − net(x_t, t, c)‖²`` per sample ``[B]``, the mean over every other dimension. ``x0``, ``noise``
    ``[B, C, H, W]`` or ``[B, C, T, H, W]``; ``t`` ``[B]``; ``cond`` ``[B, D]`` (or what the net takes)."""
    out = net(schedule.noisy(x0, noise, t), schedule.model_time(t), cond)
    return ((out.float() - schedule.target(x0, noise, t).float()) ** 2).flatten(1).mean(1)


@dataclass
class PairErrors:
    """Denoising errors ``[B]`` of the winners and losers under the policy (with gradient) and the reference (without),
    on one noise ``[B, ...]`` and one time ``[B]`` per pair, shared by its winner and loser."""

    policy_w: Tensor
    policy_l: Tensor
    ref_w: Tensor
    ref_l: Tensor
    t: Tensor
    noise: Tensor


def pair_denoising_errors(policy: Callable[..., Tensor], reference: Callable[..., Tensor], schedule: NoiseSchedule,
                          chosen: Tensor, rejected: Tensor, cond: Tensor, *,
                          generator: torch.Generator | None = None) -> PairErrors:
    """The four errors of Diffusion-DPO's loss: one forward of ``[winners; losers]`` per model, the same ``t`` and
    ``ε`` for a pair's winner and loser (the official code repeats them over the two halves), the reference under
    ``no_grad``."""
    b = chosen.shape[0]
    t = schedule.sample_t(b, device=chosen.device, generator=generator)
    noise = torch.randn(chosen.shape, device=chosen.device, dtype=chosen.dtype, generator=generator)
    x0, nn2, t2, c2 = torch.cat([chosen, rejected]), torch.cat([noise, noise]), torch.cat([t, t]), torch.cat([cond, cond])
    err = denoising_error(policy, schedule, x0, nn2, t2, c2)
    with torch.no_grad():
        ref = denoising_error(reference, schedule, x0, nn2, t2, c2)
    return PairErrors(err[:b], err[b:], ref[:b], ref[b:], t, noise)


class ResBlock2d(nn.Module):
    """GroupNorm → SiLU → conv, twice, with FiLM (scale, shift) from the embedding between, and a residual path."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int = 8):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(min(groups, c_in), c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(min(groups, c_out), c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * c_out)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        scale, shift = self.film(emb)[..., None, None].chunk(2, 1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.conv2(nn.functional.silu(h)) + self.skip(x)


class SmallUNet(nn.Module):
    """A small conditional U-Net (pbrl's own denoiser for tests and CPU benchmarks): ``(x, timestep [B], cond [B, D])``
    -> a tensor shaped like ``x``. Images ``[B, C, H, W]``; video ``[B, C, T, H, W]`` is denoised frame by frame
    with a sinusoidal embedding of the frame index added to the condition. One residual block per level, a
    stride-2 conv down, a transposed conv up; ``H`` and ``W`` divisible by ``2^(len(widths) − 1)``. With ``coords``,
    two channels holding each pixel's row and column in [−1, 1] join the input (CoordConv, Liu et al., 2018): the
    condition's FiLM is the same at every pixel, and convolutions alone hardly know where a pixel is."""

    def __init__(self, channels: int = 1, cond_dim: int = 2, widths: tuple[int, ...] = (32, 64), emb_dim: int = 64,
                 coords: bool = True):
        super().__init__()
        self.config = {"channels": channels, "cond_dim": cond_dim, "widths": list(widths), "emb_dim": emb_dim,
                       "coords": coords}
        self.coords = coords
        self.emb_dim = emb_dim
        self.checkpointing = False  # recompute each block's activations in the backward pass
        self.embed = nn.Sequential(nn.Linear(2 * emb_dim + cond_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.inp = nn.Conv2d(channels + (2 if coords else 0), widths[0], 3, padding=1)
        self.down, self.up = nn.ModuleList(), nn.ModuleList()
        prev = widths[0]
        for i, w in enumerate(widths):
            self.down.append(nn.ModuleList([ResBlock2d(prev, w, emb_dim),
                                            nn.Conv2d(w, w, 3, stride=2, padding=1) if i < len(widths) - 1
                                            else nn.Identity()]))
            prev = w
        self.mid = ResBlock2d(prev, prev, emb_dim)
        for i, w_skip in enumerate(reversed(widths)):
            self.up.append(nn.ModuleList([ResBlock2d(prev + w_skip, w_skip, emb_dim),
                                          nn.ConvTranspose2d(w_skip, w_skip, 4, stride=2, padding=1)
                                          if i < len(widths) - 1 else nn.Identity()]))
            prev = w_skip
        self.out = nn.Sequential(nn.GroupNorm(min(8, prev), prev), nn.SiLU(), nn.Conv2d(prev, channels, 3, padding=1))

    def forward(self, x: Tensor, timestep: Tensor, cond: Tensor) -> Tensor:
        if x.dim() == 5:  # video: frames into the batch, the frame index into the condition
            b, c, frames, h, w = x.shape
            flat = x.permute(0, 2, 1, 3, 4).reshape(b * frames, c, h, w)
            index = torch.arange(frames, device=x.device).repeat(b)
            out = self._forward(flat, timestep.repeat_interleave(frames), cond.repeat_interleave(frames, 0), index)
            return out.view(b, frames, c, h, w).permute(0, 2, 1, 3, 4)
        return self._forward(x, timestep, cond, torch.zeros(x.shape[0], device=x.device))

    def _forward(self, x: Tensor, timestep: Tensor, cond: Tensor, frame: Tensor) -> Tensor:
        emb = self.embed(torch.cat([timestep_embedding(timestep.expand(x.shape[0]), self.emb_dim),
                                    timestep_embedding(frame, self.emb_dim), cond.to(x.dtype)], -1))
        if self.coords:
            rows = torch.linspace(-1, 1, x.shape[-2], device=x.device, dtype=x.dtype)
            cols = torch.linspace(-1, 1, x.shape[-1], device=x.device, dtype=x.dtype)
            grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij")).expand(x.shape[0], -1, -1, -1)
            x = torch.cat([x, grid], 1)
        h = self.inp(x)
        skips = []
        for block, down in self.down:
            h = self._block(block, h, emb)
            skips.append(h)
            h = down(h)
        h = self._block(self.mid, h, emb)
        for (block, up), skip in zip(self.up, reversed(skips)):
            h = up(self._block(block, torch.cat([h, skip], 1), emb))
        return self.out(h)

    def _block(self, block: nn.Module, h: Tensor, emb: Tensor) -> Tensor:
        if self.checkpointing and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(block, h, emb, use_reentrant=False)
        return block(h, emb)


class DiffusersDenoiser(nn.Module):
    """A ``diffusers`` UNet or transformer as ``net(x, timestep, cond)``: ``cond`` ``[B, D]`` becomes the one-token
    ``encoder_hidden_states`` ``[B, 1, D]`` (a ``[B, L, D]`` cond is passed as it is)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, timestep: Tensor, cond: Tensor) -> Tensor:
        states = cond[:, None, :] if cond.dim() == 2 else cond
        return self.model(x, timestep, encoder_hidden_states=states.to(x.dtype), return_dict=False)[0]


@torch.no_grad()
def sample(net: Callable[..., Tensor], schedule: NoiseSchedule, cond: Tensor, shape: tuple[int, ...], *,
           steps: int = 20, generator: torch.Generator | None = None, noise: Tensor | None = None,
           guidance: Guidance | None = None, clip: float | None = 1.0,
           trajectory: list[tuple[Tensor, Tensor, Tensor]] | None = None) -> Tensor:
    """Samples ``[B, *shape]`` from noise (``noise``, or drawn from ``generator``): DDIM η = 0 over ``steps`` evenly
    spaced training steps, or ``steps`` Euler steps from t = 1 to 0 for flow (:func:`pbrl.core.diffusion.sample_chain`).
    ``guidance(x_t, t, x̂₀) -> Δ`` is added to ε̂ (DDIM) or to v̂ (flow) at every step, computed with gradients
    enabled; ``clip`` bounds x̂₀. A ``trajectory`` list receives ``(t [B], x_t, prediction)`` at every step
    (Diffusion-DRO's replay)."""
    x = noise if noise is not None else torch.randn(cond.shape[0], *shape, device=cond.device, generator=generator)
    return sample_chain(lambda x_t, t: net(x_t, schedule.model_time(t), cond), x, prediction=schedule.prediction,
                        alpha_bar=schedule.alpha_bar, steps=steps, clip=clip, guidance=guidance, trajectory=trajectory)


def sampling_times(schedule: NoiseSchedule, steps: int, device: torch.device | None = None) -> Tensor:
    """The ``steps`` training steps a DDIM sampler visits, descending (integers)."""
    return ddim_timesteps(schedule.train_steps, steps, device)


def ddim_step(schedule: NoiseSchedule, out: Tensor, x: Tensor, t: Tensor, t_prev: Tensor, *, eta: float = 1.0,
              noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """One stochastic DDIM step of ``schedule`` from ``x_t`` to ``x_{t_prev}`` (``t_prev`` < 0: to x₀):
    :func:`pbrl.core.diffusion.ddim_transition`, ``(x_prev, mean, σ)``; ``noise`` is z (zeros when not given: the
    mean). SPO's per-step policy is this Gaussian (its log-density: :func:`pbrl.core.gaussian_step_logp`)."""
    if schedule.is_flow:
        raise ConfigError(describe("ddim_step", "prediction", "'flow'", "'epsilon' or 'v' (a stochastic DDIM step)"))
    return ddim_transition(schedule.alpha_bar, out, x, t, t_prev, schedule.prediction, eta=eta, noise=noise)


def save_module(net: nn.Module, config: dict[str, Any], path: str | os.PathLike) -> None:
    """``config.json`` + ``weights.pt`` (a pbrl model: :class:`SmallUNet`, an image reward model), or a diffusers
    model's ``save_pretrained``, written as a whole folder (:func:`pbrl.io.write_folder`)."""
    def write(tmp: Path) -> None:
        if isinstance(net, DiffusersDenoiser):
            net.model.save_pretrained(tmp)
            return
        atomic_write_text(tmp / "config.json", json.dumps(config, indent=2))
        torch.save(net.state_dict(), tmp / "weights.pt")
    write_folder(path, write)


def save_denoiser(net: nn.Module, path: str | os.PathLike) -> None:
    save_module(net, {"_class_name": type(net).__name__, **getattr(net, "config", {})}, path)


def read_model_config(path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """``(config file, its JSON)`` of a model folder or a config ``.json``; one-line errors otherwise."""
    path = Path(path)
    config_path = path / "config.json" if path.is_dir() else path
    if not config_path.is_file():
        raise ConfigError(describe(str(path), "model", "no config.json", "a model folder or a config .json"))
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(describe(str(config_path), "config", f"unreadable JSON ({e})", "a JSON object")) from e
    if not isinstance(config, dict):
        raise ConfigError(describe(str(config_path), "config", type(config).__name__, "a JSON object"))
    return config_path, config


def load_pbrl_module(path: str | os.PathLike, cls: type[nn.Module], *, seed: int = 0) -> tuple[nn.Module, dict]:
    """A pbrl model (``cls(**config)``) from a folder (with its weights) or a config ``.json`` (seeded new weights)."""
    config_path, config = read_model_config(path)
    if config.get("_class_name") != cls.__name__:
        raise ConfigError(describe(str(config_path), "_class_name", repr(config.get("_class_name")),
                                   repr(cls.__name__)))
    torch.manual_seed(seed)
    try:
        net = cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items() if k != "_class_name"})
    except (TypeError, ValueError) as exc:  # an unknown key, a width GroupNorm cannot split: one line, no traceback
        raise ConfigError(describe(str(config_path), "config", str(exc).strip().splitlines()[0][:160],
                                   f"the arguments of {cls.__name__}")) from None
    if Path(path).is_dir():
        net.load_state_dict(torch.load(Path(path) / "weights.pt", map_location="cpu", weights_only=True))
    return net, config


def load_denoiser(path: str | os.PathLike, *, seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """A denoiser from a folder (pbrl's ``SmallUNet``, or a diffusers model folder) or from a config ``.json``
    (built with seeded random weights; nothing is downloaded). Returns ``(net, config)``; diffusers models come
    wrapped in :class:`DiffusersDenoiser`."""
    config_path, config = read_model_config(path)
    kind = config.get("_class_name", "")
    if kind == "SmallUNet":
        return load_pbrl_module(path, SmallUNet, seed=seed)
    import diffusers

    cls = getattr(diffusers, kind, None) if isinstance(kind, str) else None
    if cls is None or not hasattr(cls, "from_config"):
        raise ConfigError(describe(str(config_path), "_class_name", repr(kind),
                                   "'SmallUNet' or a diffusers model class (e.g. 'UNet2DConditionModel')"))
    torch.manual_seed(seed)
    path = Path(path)
    model = cls.from_pretrained(path, local_files_only=True) if path.is_dir() else cls.from_config(config)
    return DiffusersDenoiser(model), config
