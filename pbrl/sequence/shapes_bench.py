"""The shapes benchmark's protocol (``scripts/bench/diffusion.py`` and the diagnostics that compare against it):
the task folder, the SFT references, training a run once (finished runs are reused), the pair sets, and the
measure every stage reports on the held-out prompts.

Run folders are laid out under one ``out`` folder (``runs/diff-bench`` by default), so that a diagnostic reuses
the benchmark's references and pair sets instead of training its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pbrl.sequence.diffusion import NoiseSchedule, load_denoiser, sample, sampling_times
from pbrl.sequence.diffusion_train import DiffusionRunConfig, train_diffusion, write_image_pairs
from pbrl.sequence.shapes import (
    NO_SHAPE,
    PREFERRED,
    classify_shapes,
    heldout_prompts,
    image_diversity,
    make_shape_pairs,
    prompt_condition,
    train_prompts,
    write_shapes_task,
)

SFT_STEPS, SFT_LR, SFT_BATCH = 3000, 1e-3, 64  # the references' SFT
LR, BATCH = 1e-4, 16                            # every method's run from a reference, unless a stage says otherwise
SAMPLES = 16                                    # samples per held-out prompt in the measure
SAMPLE_STEPS = 20                               # sampler steps of the measure (DDIM or Euler)


def make_task(out: Path) -> dict[str, Path]:
    """The shapes task (shared by seeds): SFT images, noisy pairs, held-out prompts, the U-Net config."""
    task = out / "task"
    if not (task / "unet.json").is_file():
        write_shapes_task(task, seed=0)
    return {"sft": task / "sft.h5", "pairs": task / "pairs.h5", "unet": task / "unet.json"}


def train(model: Path, data: Path, out: Path, method: str, *, prediction: str, steps: int, seed: int,
          lr: float = LR, batch: int = BATCH, noise_schedule: str = "scaled_linear", t_min: float = 0.0,
          ema_decay: float = 0.0, **method_fields: Any) -> tuple[Path, float]:
    """Train ``method`` from ``model`` on ``data`` into ``out`` unless a finished run is there: ``(model folder,
    training seconds)`` (0 when the run's speed was not recorded)."""
    cfg = DiffusionRunConfig(model=str(model), data=str(data), prediction=prediction, noise_schedule=noise_schedule,
                             t_min=t_min, ema_decay=ema_decay)
    cfg.method.name = method
    for key, value in method_fields.items():
        setattr(cfg.method, key, value)
    cfg.train.steps, cfg.train.batch_size, cfg.train.lr, cfg.train.seed = steps, batch, lr, seed
    cfg.train.log_every, cfg.train.checkpoint_every = 50, steps
    if not (out / "metrics.json").is_file():
        train_diffusion(cfg, out, progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    return out / "model", steps / metrics["steps_per_s"] if metrics.get("steps_per_s") else 0.0


def measure(model_dir: Path, prediction: str, seed: int, noise_schedule: str = "scaled_linear") -> dict[str, Any]:
    """:func:`measure_net` of the model saved in ``model_dir``."""
    net, _ = load_denoiser(model_dir)
    return measure_net(net, prediction, seed, noise_schedule)


def heldout_samples(net: torch.nn.Module, prediction: str, seed: int, noise_schedule: str = "scaled_linear"
                    ) -> tuple[torch.Tensor, list]:
    """``SAMPLES`` samples of each held-out prompt (prompt-major, 20 sampler steps, the seed's fixed noise) and
    their prompts: what every stage judges."""
    net.eval()
    prompts = [p for p in heldout_prompts() for _ in range(SAMPLES)]
    g = torch.Generator().manual_seed(10_000 + seed)
    images = sample(net, NoiseSchedule(prediction, schedule=noise_schedule), prompt_condition(prompts), (1, 16, 16),
                    steps=SAMPLE_STEPS, generator=g)
    return images, prompts


def measure_net(net: torch.nn.Module, prediction: str, seed: int, noise_schedule: str = "scaled_linear"
                ) -> dict[str, Any]:
    """What the judge makes of :func:`heldout_samples`, each a share of all samples: ``cross`` and ``square`` (valid
    shapes of each kind), ``invalid`` (the rest: no shape, the wrong brightness or place); ``preferred`` (samples the
    judge calls a cross, valid or not), ``valid``, ``preferred_valid`` (= ``cross``), ``preferred_among_valid``
    (cross / valid: the class among the samples that follow the prompt, the retest's learning check) and
    ``diversity`` (mean pairwise RMS distance among a prompt's samples)."""
    images, prompts = heldout_samples(net, prediction, seed, noise_schedule)
    kinds, valid, _ = classify_shapes(images, prompts)
    preferred = torch.tensor([k == PREFERRED for k in kinds])
    square = torch.tensor([k not in (PREFERRED, NO_SHAPE) for k in kinds])
    share = lambda mask: float(mask.float().mean())  # noqa: E731
    return {"preferred": share(preferred), "valid": share(valid), "preferred_valid": share(preferred & valid),
            "cross": share(preferred & valid), "square": share(square & valid), "invalid": share(~valid),
            "preferred_among_valid": float((preferred & valid).sum() / valid.sum().clamp(min=1)),
            "diversity": image_diversity(images, len(heldout_prompts()))}


@torch.no_grad()
def x0_drift(net: torch.nn.Module, reference: torch.nn.Module, prediction: str, seed: int, *,
             noise_schedule: str = "scaled_linear") -> float:
    """How far ``net``'s prediction of the clean image x̂₀ has moved from ``reference``'s at the sampler's first step,
    where the class is decided: RMS of x̂₀(θ) − x̂₀(ref) over the held-out prompts (``SAMPLES`` each), both given
    the same pure noise at the first time :func:`heldout_samples` visits (t = 999 for DDIM's 20 steps; the flow's
    t = 1). The yardstick issue 37 compares objectives at: an ε-model's error is magnified by √(1 − ᾱ) / √ᾱ in x̂₀
    there (about 14.6× at t = 999 with Stable Diffusion's schedule)."""
    schedule = NoiseSchedule(prediction, schedule=noise_schedule)
    prompts = [p for p in heldout_prompts() for _ in range(SAMPLES)]
    cond = prompt_condition(prompts)
    noise = torch.randn(len(prompts), 1, 16, 16, generator=torch.Generator().manual_seed(20_000 + seed))
    if schedule.is_flow:
        t = torch.ones(len(prompts))
    else:
        t = sampling_times(schedule, SAMPLE_STEPS)[0].expand(len(prompts))
    x0 = []
    for model in (net, reference):
        model.eval()
        x0.append(schedule.to_x0_eps(model(noise, schedule.model_time(t), cond), noise, t)[0])
    return float((x0[0] - x0[1]).pow(2).mean().sqrt())


def reference(out: Path, task: dict[str, Path], prediction: str) -> Path:
    """The SFT reference of one parameterisation (seed 0, shared by every seed of every stage; trained on first use)."""
    return train(task["unet"], task["sft"], out / "reference" / prediction, "diffusion_sft", prediction=prediction,
                 steps=SFT_STEPS, seed=0, lr=SFT_LR, batch=SFT_BATCH)[0]


def references(out: Path, task: dict[str, Path]) -> dict[str, Path]:
    """The references most stages compare: an ε-model and a rectified flow."""
    return {p: reference(out, task, p) for p in ("epsilon", "flow")}


def pair_set(out: Path, per_prompt: int, flip: float, same_position: bool = False) -> Path:
    """The file of a pair set (written on first use): ``per_prompt`` pairs per training prompt, ``flip`` of the labels
    reversed, cross and square at one position or not; seed 1, as the task's own pairs."""
    data = out / "task" / f"pairs-{per_prompt}-flip{flip:g}{'-samepos' if same_position else ''}.h5"
    if not data.is_file():
        p = make_shape_pairs(train_prompts(), per_prompt, flip_rate=flip, seed=1, same_position=same_position)
        write_image_pairs(data, cond=p.cond, chosen=p.chosen, rejected=p.rejected)
    return data
