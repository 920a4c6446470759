"""A synthetic image task whose preferred class is known exactly: 16×16 one-channel images of one shape, a filled
**square** or a **cross**, of the size and brightness the prompt asks for, anywhere in the image.

- A prompt is ``(half_size, brightness)``: half-size in {3, 4, 5} (the shape fills a box of side 2h + 1; the cross
  is that box's two arms of width 3), brightness in {0.3, 0.4, …, 1.0} (shape pixels ``2 b − 1``, background −1).
  Its condition vector is both scaled to [−1, 1]. Of the 24 prompts, the 6 with ``(i_size + i_brightness) % 4 == 0``
  are held out, never seen in training: a held-out prompt is a new combination of seen attributes.
- The position is free (uniform over the centres that keep the shape inside): the diversity a preference method
  should keep.
- :func:`classify_shapes` is the exact judge: it binarises a sample at −0.5 and finds the template (kind × every
  centre, at the prompt's size) of highest IoU. Its ``kind`` is that template's where the IoU is at least 0.8, else
  ``"none"`` (a blank, noise or a smear is no shape: before issue 37 the tie-break named it a square, so the
  preferred share fell whenever validity fell). A sample is ``valid`` when it has a kind and its shape's mean pixel
  is within 0.1 of the prompt's brightness (the prompt is followed).
- Preference: the cross is preferred; :func:`make_shape_pairs` reverses a share of the labels (annotator noise).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from pbrl.io import atomic_write_text

SIZE = 16
KINDS = ("square", "cross")
PREFERRED = "cross"
NO_SHAPE = "none"  # the judge's kind for a sample that matches no template
HALF_SIZES = (3, 4, 5)
BRIGHTNESS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
VALID_IOU = 0.8
BRIGHTNESS_TOLERANCE = 0.1

Prompt = tuple[int, float]

__all__ = ["KINDS", "NO_SHAPE", "PREFERRED", "ShapePairs", "classify_shapes", "heldout_prompts", "image_diversity",
           "condition_prompts", "make_shape_pairs", "prompt_condition", "render_shapes", "shape_reward", "shape_row", "train_prompts",
           "write_shapes_task"]


def _split(heldout: bool) -> list[Prompt]:
    return [(h, b) for (i, h), (j, b) in itertools.product(enumerate(HALF_SIZES), enumerate(BRIGHTNESS))
            if ((i + j) % 4 == 0) == heldout]


def train_prompts() -> list[Prompt]:
    return _split(False)


def heldout_prompts() -> list[Prompt]:
    return _split(True)


def prompt_condition(prompts: list[Prompt]) -> Tensor:
    """Prompts -> condition vectors ``[N, 2]`` in [−1, 1]."""
    p = torch.as_tensor(prompts, dtype=torch.float32).view(-1, 2)
    h = (p[:, 0] - HALF_SIZES[0]) / (HALF_SIZES[-1] - HALF_SIZES[0]) * 2 - 1
    b = (p[:, 1] - BRIGHTNESS[0]) / (BRIGHTNESS[-1] - BRIGHTNESS[0]) * 2 - 1
    return torch.stack([h, b], 1)


def _masks(kind: str, centres: Tensor, half: Tensor) -> Tensor:
    """Boolean shape masks ``[N, 16, 16]`` for centres ``[N, 2]`` and half-sizes ``[N]``."""
    grid = torch.arange(SIZE, device=centres.device)
    dr = (grid[None, :, None] - centres[:, 0, None, None]).abs()
    dc = (grid[None, None, :] - centres[:, 1, None, None]).abs()
    h = half[:, None, None]
    square = (dr <= h) & (dc <= h)
    if kind == "square":
        return square
    return square & ((dr <= 1) | (dc <= 1))  # a cross of arm width 3 inside the same box


def render_shapes(kinds: list[str], prompts: list[Prompt], *, generator: torch.Generator) -> Tensor:
    """Images ``[N, 1, 16, 16]`` in [−1, 1], one shape each, of the prompt's size and brightness, at a random
    position."""
    half = torch.tensor([p[0] for p in prompts])
    bright = torch.tensor([float(p[1]) for p in prompts])
    span = SIZE - 2 * half                                          # centres h .. 15 − h
    centres = half[:, None] + (torch.rand(len(prompts), 2, generator=generator) * span[:, None]).long()
    images = -torch.ones(len(prompts), SIZE, SIZE)
    for kind in KINDS:
        rows = torch.tensor([k == kind for k in kinds])
        if rows.any():
            mask = _masks(kind, centres[rows], half[rows])
            images[rows] = torch.where(mask, (2 * bright[rows] - 1)[:, None, None], images[rows])
    return images[:, None]


def classify_shapes(images: Tensor, prompts: list[Prompt]) -> tuple[list[str], Tensor, Tensor]:
    """The exact judge: ``(kinds, valid [N] bool, best IoU [N])`` for images ``[N, 1, 16, 16]`` and their prompts;
    a kind is one of :data:`KINDS`, or ``"none"`` where no template reaches an IoU of ``VALID_IOU`` (at that IoU a
    cross and a square never tie: a cross covers at most 0.67 of its box)."""
    on = images[:, 0] > -0.5
    half = torch.tensor([p[0] for p in prompts])
    bright = torch.tensor([float(p[1]) for p in prompts])
    n = len(images)
    best = torch.full((n,), -1.0)
    best_kind = torch.zeros(n, dtype=torch.long)
    for k, kind in enumerate(KINDS):
        for r, c in itertools.product(range(SIZE), range(SIZE)):
            mask = _masks(kind, torch.tensor([[r, c]]).expand(n, 2), half)
            inside = (torch.tensor([r, c])[None] >= half[:, None]).all(1) & (torch.tensor([r, c])[None]
                                                                              <= SIZE - 1 - half[:, None]).all(1)
            inter = (on & mask).flatten(1).sum(1).float()
            iou = torch.where(inside, inter / (on | mask).flatten(1).sum(1).float().clamp(min=1), -1.0)
            better = iou > best
            best, best_kind = torch.where(better, iou, best), torch.where(better, k, best_kind)
    shape_mean = (images[:, 0] * on).flatten(1).sum(1) / on.flatten(1).sum(1).clamp(min=1)
    bright_ok = (shape_mean - (2 * bright - 1)).abs() <= 2 * BRIGHTNESS_TOLERANCE
    shaped = best >= VALID_IOU
    kinds = [KINDS[k] if ok else NO_SHAPE for k, ok in zip(best_kind.tolist(), shaped.tolist())]
    return kinds, shaped & bright_ok, best


def image_diversity(images: Tensor, groups: int) -> float:
    """Mean pairwise RMS distance between the samples of each prompt: images ``[G · S, ...]`` in prompt-major order
    (``groups`` prompts × S samples each) -> a float, averaged over prompts."""
    per = images.flatten(1).view(groups, -1, images[0].numel())
    d = torch.cdist(per, per) / images[0].numel() ** 0.5
    s = per.shape[1]
    return float(d.sum((1, 2)).mean() / (s * (s - 1)))


@dataclass
class ShapePairs:
    """Preference pairs: conditions ``[N, 2]``, chosen and rejected images ``[N, 1, 16, 16]``, their prompts, and
    which pairs had their label reversed (``flipped`` ``[N]`` bool)."""

    cond: Tensor
    chosen: Tensor
    rejected: Tensor
    prompts: list[Prompt]
    flipped: Tensor


def make_shape_pairs(prompts: list[Prompt], pairs_per_prompt: int, *, flip_rate: float = 0.2,
                     seed: int = 0, same_position: bool = False) -> ShapePairs:
    """One cross and one square per pair at the pair's prompt, the cross chosen except in a ``flip_rate`` share of
    pairs, where the labels are reversed. Positions are independent, or with ``same_position`` shared, so that the
    two images differ only in the square's four corners."""
    g = torch.Generator().manual_seed(seed)
    expanded = [p for p in prompts for _ in range(pairs_per_prompt)]
    n = len(expanded)
    positions = g.get_state()
    cross = render_shapes(["cross"] * n, expanded, generator=g)
    if same_position:
        g.set_state(positions)
    square = render_shapes(["square"] * n, expanded, generator=g)
    flipped = torch.rand(n, generator=g) < flip_rate
    chosen = torch.where(flipped[:, None, None, None], square, cross)
    rejected = torch.where(flipped[:, None, None, None], cross, square)
    return ShapePairs(prompt_condition(expanded), chosen, rejected, expanded, flipped)


def write_shapes_task(out: str | Path, *, seed: int = 0, images_per_prompt: int = 100, pairs_per_prompt: int = 50,
                      flip_rate: float = 0.2, widths: tuple[int, ...] = (16, 32)) -> dict[str, Path]:
    """The task on disk: ``sft.h5`` (both shapes, half each, at the training prompts: the reference's data),
    ``pairs.h5`` (noisy pairs), ``heldout.json`` (the held-out prompts) and ``unet.json`` (a SmallUNet config)."""
    from pbrl.sequence.diffusion_train import write_image_pairs

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    prompts = [p for p in train_prompts() for _ in range(images_per_prompt)]
    kinds = [KINDS[i % 2] for i in range(len(prompts))]
    paths = {"sft": out / "sft.h5", "pairs": out / "pairs.h5", "heldout": out / "heldout.json",
             "unet": out / "unet.json"}
    write_image_pairs(paths["sft"], cond=prompt_condition(prompts), chosen=render_shapes(kinds, prompts, generator=g))
    pairs = make_shape_pairs(train_prompts(), pairs_per_prompt, flip_rate=flip_rate, seed=seed + 1)
    write_image_pairs(paths["pairs"], cond=pairs.cond, chosen=pairs.chosen, rejected=pairs.rejected)
    atomic_write_text(paths["heldout"], json.dumps(heldout_prompts()))
    atomic_write_text(paths["unet"], json.dumps({"_class_name": "SmallUNet", "channels": 1, "cond_dim": 2,
                                                 "widths": list(widths), "emb_dim": 64}, indent=2))
    return paths


def condition_prompts(cond: Tensor) -> list[Prompt]:
    """The inverse of :func:`prompt_condition`: ``[N, 2]`` -> the nearest prompts."""
    h = (cond[:, 0] + 1) / 2 * (HALF_SIZES[-1] - HALF_SIZES[0]) + HALF_SIZES[0]
    b = (cond[:, 1] + 1) / 2 * (BRIGHTNESS[-1] - BRIGHTNESS[0]) + BRIGHTNESS[0]
    return [(int(round(float(x))), round(float(y), 1)) for x, y in zip(h, b)]


def shape_reward(images: Tensor, cond: Tensor) -> Tensor:
    """The judge as a reward (for self-play): 1 for a valid shape, 2 for a valid cross, 0 otherwise. ``[N]``."""
    kinds, valid, _ = classify_shapes(images.cpu(), condition_prompts(cond.cpu()))
    cross = torch.tensor([k == PREFERRED for k in kinds])
    return (valid.float() * (1 + cross.float())).to(images.device)


def shape_row(images: Tensor) -> Tensor:
    """The mean row of a sample's lit pixels (> −0.5) ``[N]`` (8 where none is lit): where the shape sits."""
    on = (images[:, 0] > -0.5).float()
    rows = torch.arange(SIZE, dtype=torch.float32)[None, :, None]
    return torch.where(on.sum((1, 2)) > 0, (on * rows).sum((1, 2)) / on.sum((1, 2)).clamp(min=1), 8.0)
