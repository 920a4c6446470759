"""Loops around ``train_diffusion`` that use the model's own samples.

- :func:`self_play`: SPRO-style self-play (Jha et al., NeurIPS 2025, "SPRO: Improving Image Generation via
  Self-Play"; its pairing rule and loss are not public, pbrl's loop is this one): each round **generates**
  ``samples`` images per prompt with the current model, **scores** them with a pluggable reward function,
  **pairs** the i-th best with the i-th worst of each prompt (i < samples / 2, equal rewards make no pair), and
  **trains** Diffusion-DPO / Flow-DPO from the current model
  (which is also that round's reference) on those pairs. Every round is a resumable run folder. With
  ``diffusion_sft`` the same loop trains on the pairs' winners alone (reward-ranked fine-tuning, RAFT-style): the
  baseline that sees the same samples and the same ranking without the loser term.
- :func:`select_checkpoint`: RPO's early stop (Miao et al., 2024): score the samples of every kept checkpoint
  with a reward (the λ-Harmonic reward, :func:`pbrl.core.lambda_harmonic_reward`) and keep the best.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pbrl.errors import ConfigError, describe
from pbrl.io import Progress, atomic_write_text
from pbrl.sequence.data import data_file
from pbrl.sequence.diffusion import NoiseSchedule, load_denoiser, sample
from pbrl.sequence.diffusion_train import DiffusionRunConfig, load_image_pairs, train_diffusion, write_image_pairs
from pbrl.train.loop import prepare_run_dir, run_directory

RewardFn = Callable[[Tensor, Tensor], Tensor]  # (images [N, ...], cond [N, D]) -> rewards [N]
# diffusion_sft: the winners only (RAFT-style); abc: each image classified against the reference (both of a pair)
SELF_PLAY_METHODS = ("diffusion_dpo", "flow_dpo", "diffusion_sft", "abc")
SELF_PLAY_LABELS = ("reward", "swapped", "random")  # the controls: every pair reversed, or each with probability 0.5

__all__ = ["SELF_PLAY_LABELS", "SELF_PLAY_METHODS", "RoundResult", "check_reward", "load_reward_fn", "score_samples",
           "select_checkpoint", "self_play"]


@dataclass
class RoundResult:
    round: int
    reward_mean: float          # mean reward of the samples the round generated (before its training)
    pairs: int
    model: str                  # the model the round sampled from and trained
    result: str                 # the model after the round (the same one when no pair was made)
    steps: int = 0              # the round's training steps (0 when no pair was made)


def self_play(cfg: DiffusionRunConfig, reward: RewardFn, out: str | os.PathLike, *, rounds: int = 3,
              samples: int = 8, sample_steps: int = 20, flip_rate: float = 0.0, labels: str = "reward",
              epochs: float | None = None, progress: bool = False, stop_without_pairs: bool = False
              ) -> list[RoundResult]:
    """Run ``rounds`` rounds from ``cfg.model`` on the prompts (unique ``cond`` rows) of ``cfg.data``; round r lives in
    ``out/round_r`` (its pairs, its training run). ``cfg.method.name`` is one of :data:`SELF_PLAY_METHODS`.
    ``flip_rate``: a noisy annotator's share of reversed pairs (each decided pair swapped with that probability,
    drawn from the round's seeded generator). ``labels``: ``reward`` (the reward's order), or a control that keeps
    the samples and the pairing and breaks the signal: ``swapped`` (every pair reversed: the objective must move the
    other way) or ``random`` (each pair reversed with probability 0.5: it must not move). ``epochs``: each round
    trains ``ceil(epochs · pairs / batch_size)`` steps on its own pairs (the official Diffusion-DPO recipe runs about
    5 passes), instead of ``cfg.train.steps`` whatever the number of pairs.

    Everything is checked before ``out`` is touched: the settings, the data, and ``reward`` by a call on two of the
    file's images. ``out`` records the settings (``config.toml``: a resume asking for others is refused, more rounds
    may be asked for) and the data's sha256 (``data.json``); a failed start leaves it as it was. A round whose
    samples all score alike makes no pair: it hands its model on, or with ``stop_without_pairs`` (the CLI) stops
    the loop with one :class:`ConfigError` line naming ``--reward`` (``rounds.json`` keeps the rounds done)."""
    if cfg.method.name not in SELF_PLAY_METHODS:
        raise ConfigError(describe("self_play", "method.name", repr(cfg.method.name),
                                   f"one of {list(SELF_PLAY_METHODS)}"))
    if not 0.0 <= flip_rate < 0.5:
        raise ConfigError(describe("self_play", "flip_rate", flip_rate, "in [0, 0.5)"))
    if labels not in SELF_PLAY_LABELS:
        raise ConfigError(describe("self_play", "labels", repr(labels), f"one of {list(SELF_PLAY_LABELS)}"))
    if epochs is not None and not (math.isfinite(epochs) and epochs > 0):
        raise ConfigError(describe("self_play", "epochs", epochs, "a number > 0 (passes over each round's pairs)"))
    for name, value, low in (("rounds", rounds, 1), ("samples", samples, 2), ("sample_steps", sample_steps, 1)):
        if value < low:  # the CLI's argparse types refuse these first; library callers get the same line
            raise ConfigError(describe("self_play", name, value, f"an integer >= {low}"))
    cfg.validate()
    out = Path(out)
    data = load_image_pairs(cfg.data, "diffusion_sft")
    check_reward(reward, data.chosen[:2], data.cond[:2])
    prompts = torch.unique(data.cond, dim=0)
    shape = tuple(cfg.image_shape) or tuple(data.chosen.shape[1:])
    settings = {"self_play": {"samples": samples, "sample_steps": sample_steps, "flip_rate": flip_rate,
                              "labels": labels, **({"epochs": epochs} if epochs is not None else {})}}
    with run_directory(out, data_file("prompts", cfg.data), resumable=("step_*.pt", "rounds.json")):
        # a resumed loop must make its pairs as the finished rounds did (more rounds may be asked for)
        prepare_run_dir(out, {**settings, **cfg.to_dict()})
        bar = Progress(rounds, desc="self-play", unit="round", enabled=progress)
        model, results = cfg.model, []
        for r in range(rounds):
            if progress:  # sampling and scoring have no bar of their own: say what is under way
                bar.write(f"self-play round {r + 1}/{rounds}: sampling {samples} images for each of "
                          f"{len(prompts)} prompts ({sample_steps} steps) from {model}")
            result = _play_round(cfg, reward, out, r, model, prompts, shape, samples=samples,
                                 sample_steps=sample_steps, flip_rate=flip_rate, labels=labels, epochs=epochs,
                                 progress=progress)
            if result.pairs == 0:
                if stop_without_pairs:
                    kept = f" ({out / 'rounds.json'} keeps the {r} round(s) done)" if r else ""
                    raise ConfigError(describe("--reward", f"round {r}", f"the same reward for all {samples} "
                                               f"samples of each of the {len(prompts)} prompts (no pair to train on)",
                                               f"a reward that tells samples apart{kept}"))
                if progress:
                    bar.write(f"self-play round {r + 1}/{rounds}: every prompt's samples scored alike: no pair, "
                              "the model is handed on untrained")
            results.append(result)
            model = result.result
            atomic_write_text(out / "rounds.json", json.dumps([vars(x) for x in results], indent=2))
            bar.set_postfix_str(f"reward={result.reward_mean:.3g} pairs={result.pairs}")
            bar.update(1)
        bar.close(final_line=True)
    return results


def _play_round(cfg: DiffusionRunConfig, reward: RewardFn, out: Path, r: int, model: str, prompts: Tensor,
                shape: tuple[int, ...], *, samples: int, sample_steps: int, flip_rate: float, labels: str,
                epochs: float | None, progress: bool) -> RoundResult:
    """Round ``r``: sample from ``model``, score, pair the i-th best with the i-th worst of each prompt, and train
    on the pairs in ``out/round_r/run`` (skipped where that run has finished). ``out/round_r/pairs.h5`` is written
    once: a resumed round trains on the pairs its run started on (its ``data.json`` holds their sha256)."""
    folder = out / f"round_{r}"
    folder.mkdir(parents=True, exist_ok=True)
    net, _ = load_denoiser(model)
    net.eval()
    repeated = prompts.repeat_interleave(samples, 0)
    g = torch.Generator().manual_seed((cfg.train.seed * 1000 + r) % 2**63)  # train.seed may be up to 2**63 − 1
    with torch.no_grad():
        images = sample(net, NoiseSchedule(cfg.prediction, cfg.train_steps, schedule=cfg.noise_schedule),
                        repeated, shape, steps=sample_steps, generator=g)
        scores = score_samples(reward, images, repeated).view(len(prompts), samples)
    per_prompt = images.view(len(prompts), samples, *shape)
    order = scores.argsort(1, descending=True)                      # [P, S], best first
    k = samples // 2
    top, bottom = order[:, :k], order[:, samples - k:].flip(1)       # the i-th best with the i-th worst
    rows = torch.arange(len(prompts))[:, None].expand(-1, k)
    decided = scores[rows, top] > scores[rows, bottom]               # equal rewards make no pair
    rate = {"reward": flip_rate, "swapped": 1.0, "random": 0.5}[labels]
    if rate > 0:
        flipped = torch.rand(top.shape, generator=g) < rate
        top, bottom = torch.where(flipped, bottom, top), torch.where(flipped, top, bottom)
    result = RoundResult(r, float(scores.mean()), int(decided.sum()), str(model), str(model))
    if not decided.any():  # every prompt's samples scored alike: nothing to learn from this round
        return result
    pairs_path = folder / "pairs.h5"
    if not pairs_path.is_file():
        write_image_pairs(pairs_path, cond=prompts[rows[decided]], chosen=per_prompt[rows[decided], top[decided]],
                          rejected=per_prompt[rows[decided], bottom[decided]])
    round_cfg = copy.deepcopy(cfg)
    round_cfg.model, round_cfg.data = str(model), str(pairs_path)
    round_cfg.train.seed = cfg.train.seed + r
    if epochs is not None:
        round_cfg.train.steps = max(1, math.ceil(epochs * int(decided.sum()) / cfg.train.batch_size))
    result.steps = round_cfg.train.steps
    run = folder / "run"
    if not (run / "metrics.json").is_file():
        train_diffusion(round_cfg, run, progress=progress)
    result.result = str(run / "model")
    return result


REWARD_SIGNATURE = "a function f(images [N, C, H, W] in [-1, 1], cond [N, D]) -> rewards [N] (a tensor)"


def check_reward(reward: RewardFn, images: Tensor, cond: Tensor) -> None:
    """Refuse, in one line naming ``--reward`` and the expected signature, a reward that cannot take
    ``(images, cond)`` or does not give one finite number per image on them (two of the data's images)."""
    name = getattr(reward, "__qualname__", None) or type(reward).__name__
    if not callable(reward):
        raise ConfigError(describe("--reward", "reward", f"{name} (not callable)", REWARD_SIGNATURE))
    try:
        signature = inspect.signature(reward)
    except (TypeError, ValueError):  # some builtins and C extensions have none: the call below decides
        signature = None
    if signature is not None:
        try:
            signature.bind(images, cond)
        except TypeError:
            raise ConfigError(describe("--reward", "signature", f"{name}{signature}", REWARD_SIGNATURE)) from None
    score_samples(reward, images, cond, name=name)


def score_samples(reward: RewardFn, images: Tensor, cond: Tensor, *, name: str | None = None) -> Tensor:
    """``reward(images, cond)`` as a float32 ``[N]`` tensor, or one line naming ``--reward`` where the call fails or
    gives something else (a wrong shape, a non-number, NaN)."""
    name = name or getattr(reward, "__qualname__", None) or type(reward).__name__
    n = len(images)
    try:
        scores = torch.as_tensor(reward(images, cond), dtype=torch.float32)
    except Exception as exc:  # the user's code: any failure is reported in one line, not a traceback
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise ConfigError(describe("--reward", f"{name} on {n} images", f"{type(exc).__name__}: {detail}",
                                   REWARD_SIGNATURE)) from None
    if scores.numel() != n:
        raise ConfigError(describe("--reward", f"{name} on {n} images", f"shape {list(scores.shape)}",
                                   f"{n} rewards, {REWARD_SIGNATURE}"))
    scores = scores.reshape(n).cpu()
    if not torch.isfinite(scores).all():
        raise ConfigError(describe("--reward", f"{name} on {n} images", f"{scores[~torch.isfinite(scores)][:3].tolist()}",
                                   "finite rewards"))
    return scores


def select_checkpoint(run_dir: str | os.PathLike, start_model: str | os.PathLike, score: Callable[[nn.Module], float]
                      ) -> tuple[int, dict[int, float]]:
    """RPO's early stop: ``score(policy)`` for the policy weights of every checkpoint kept in ``run_dir`` (built on
    ``start_model``'s architecture) -> ``(best step, {step: score})``."""
    checkpoints = sorted(Path(run_dir, "checkpoints").glob("step_*.pt"))
    if not checkpoints:
        raise ConfigError(describe(str(run_dir), "checkpoints", "none", "at least one checkpoint"))
    net, _ = load_denoiser(start_model)
    scores: dict[int, float] = {}
    for path in checkpoints:
        state = torch.load(path, map_location="cpu", weights_only=False)["agent"]
        net.load_state_dict({k[len("policy."):]: v for k, v in state.items() if k.startswith("policy.")})
        net.eval()
        scores[int(path.stem.split("_")[1])] = float(score(net))
    return max(scores, key=scores.get), scores


def load_reward_fn(spec: str) -> RewardFn:
    """A reward function from ``module:function`` (called as ``f(images, cond) -> [N]``) or from a reward-model
    folder (:func:`pbrl.sequence.diffusion_reward.load_reward_model`; the sum of its heads at t = 0)."""
    if Path(spec).is_dir():
        from pbrl.sequence.diffusion_reward import load_reward_model, reward_scores

        model = load_reward_model(spec)
        return lambda images, cond: reward_scores(model, images, cond).sum(1)
    module, _, name = spec.partition(":")
    if not name:
        raise ConfigError(describe("--reward", "reward", repr(spec), "a reward-model folder or module:function"))
    import importlib

    try:
        fn: Any = getattr(importlib.import_module(module), name)
    except Exception as e:  # ImportError, AttributeError, or any error the module raises on import: one line
        raise ConfigError(describe("--reward", "reward", repr(spec),
                                   f"an importable module:function ({type(e).__name__}: {e})")) from None
    return fn
