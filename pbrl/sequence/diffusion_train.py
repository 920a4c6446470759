"""``pbrl seq train --method diffusion_dpo|flow_dpo|...``: preference objectives for image / video diffusion and flow
models, on the shared loop (:func:`pbrl.train.loop.run_loop`: bf16 autocast on CUDA, gradient accumulation,
TensorBoard, progress bar, checkpoints that resume bit-exactly).

Methods (each a composition of :mod:`pbrl.core.diffusion` on :mod:`pbrl.sequence.diffusion`'s errors):

- ``diffusion_dpo``: :func:`pbrl.core.diffusion_dpo_loss` on winner / loser errors with shared noise and t;
- ``flow_dpo``: the same loss on rectified-flow velocity errors (``run.prediction = flow``), constant β;
- ``diffusion_sft``: the denoising loss on the winners (the baseline every method is compared with);
- ``sudo``: self-supervised DPO, no labelled pairs: the loser is made on the fly, another image of the batch
  under this prompt (``sudo_loser = shuffle``, SUDO's ``good[randperm]``) or a transformed winner
  (``transform``: flipped and shifted); ``ℓ = (1 − w) DPO + w e_θ^win`` with w = 0.5 as SUDO's code;
- ``abc``: :func:`pbrl.core.abc_loss`, winners and losers classified one by one against the reference;
- ``dro``: :func:`pbrl.core.dro_loss`, the data image (expert) against the model's own samples, replayed from a
  buffer of rollouts of a policy copy refreshed every ``dro_refresh`` steps;
- ``rpo``: :func:`pbrl.core.rpo_loss`, ``chosen`` the subject images, ``rejected`` generated ones, ``label`` the
  Bernoulli labels of the λ-Harmonic reward (1 where the file has none);
- ``flow_rwr``: :func:`pbrl.core.reward_weighted_loss` on the ``chosen`` images' ``reward`` (``[N]``, or ``[N, K]``
  combined by ``method.reward_weights``);
- ``spo`` / ``gradspo``: step-wise preference on the model's own stochastic DDIM chains, judged by a step-aware
  reward model (``method.preference_model``), :func:`pbrl.core.clipped_ratio_dpo_loss` on the steps' Gaussian
  log-densities (SPO) or on GradSPO's score-matching terms against the EMA.

Data: an HDF5 file with ``cond`` ``[N, D]`` (prompt embeddings), ``chosen`` ``[N, C, H, W]`` or ``[N, C, T, H, W]``
in [−1, 1], and, as the method needs, ``rejected`` (same shape), ``weight`` ``[N]``, ``label`` ``[N]``, ``reward``
``[N]`` / ``[N, K]``. Every field is checked before anything is written.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pbrl.core.diffusion import (
    abc_loss,
    clipped_ratio_dpo_loss,
    diffusion_dpo_loss,
    dro_loss,
    gaussian_step_logp,
    gradspo_score,
    reward_weighted_loss,
    rpo_loss,
)
from pbrl.core.training import LossOutput, OptimizerSpec
from pbrl.errors import ConfigError, DatasetError, describe
from pbrl.fields import check_fields, param
from pbrl.io import atomic_write_text
from pbrl.sequence.data import IndexSampler, data_file
from pbrl.sequence.diffusion import (
    PREDICTIONS,
    SCHEDULES,
    NoiseSchedule,
    SmallUNet,
    ddim_step,
    denoising_error,
    load_denoiser,
    pair_denoising_errors,
    sample,
    sampling_times,
    save_denoiser,
)
from pbrl.sequence.diffusion_reward import load_reward_model
from pbrl.sequence.train import SectionedRunConfig, evaluation_indices, final_metrics
from pbrl.train.loop import LoopResult, TrainConfig, prepare_run_dir, resolve_device, run_directory, run_loop

DIFFUSION_METHODS = ("diffusion_dpo", "flow_dpo", "diffusion_sft", "sudo", "abc", "dro", "rpo", "flow_rwr", "spo",
                     "gradspo")
NEEDS_LOSER = ("diffusion_dpo", "flow_dpo", "abc", "rpo")
ONLINE = ("spo", "gradspo")  # train on the model's own samples: the file's images are not read
# β when method.beta is 0: the official codes' (Diffusion-DPO 5000, flow_grpo's Flow-DPO 100, SUDO 5000, RPO 1,
# SPO / GradSPO 10); ABC has no public code: Diffusion-DPO's
PAPER_BETA = {"diffusion_dpo": 5000.0, "flow_dpo": 100.0, "sudo": 5000.0, "abc": 5000.0, "rpo": 1.0, "spo": 10.0,
              "gradspo": 10.0}

__all__ = ["DIFFUSION_METHODS", "DiffusionLearner", "DiffusionMethodConfig", "DiffusionRunConfig", "ImagePairs",
           "load_image_pairs", "train_diffusion"]


@dataclass
class DiffusionMethodConfig:
    """The objective's settings (``--set method.KEY=VALUE``); a method ignores the fields it does not read."""

    name: str = param("diffusion_dpo", choices=DIFFUSION_METHODS)
    beta: float = param(0.0, ge=0)                    # β; 0: the method's official value (PAPER_BETA)
    sudo_loser: str = param("shuffle", choices=("shuffle", "transform"))
    sudo_sft_weight: float = param(0.5, ge=0, le=1)   # sudo: weight of the winners' denoising loss
    sft_weight: float = param(0.0, ge=0)              # diffusion_dpo, flow_dpo: + λ · winners' error (an SFT anchor)
    dro_margin: float = param(0.001, ge=0)            # dro: hinge margin m (official 0.001)
    dro_refresh: int = param(16, ge=1)                # dro: steps between refreshes of the sampling copy
    dro_buffer: int = param(4, ge=1)                  # dro: rollouts kept for replay (official 4)
    sample_steps: int = param(10, ge=1)               # dro rollouts, TensorBoard samples: sampler steps
    rwr_temperature: float = param(1.0, gt=0)         # flow_rwr: τ of the batch-normalised exp(r / τ) weights
    reward_weights: list[float] = field(default_factory=list)  # flow_rwr, spo: weights of the reward columns / heads
    preference_model: str = ""                        # spo, gradspo: a step-aware ImageRewardModel folder
    spo_candidates: int = param(4, ge=2)              # spo: candidates x_{t-1} drawn from one x_t (official 4)
    spo_eta: float = param(1.0, gt=0, le=1)           # spo: DDIM η of the sampling steps (official 1)
    spo_clip: float = param(0.1, gt=0, lt=1)          # spo: ε of the clipped step ratio (official 0.1)
    spo_threshold: float = param(0.3, ge=0, lt=1)     # spo: keep a step's pair only if p_win − p_lose exceeds it
    spo_start: int = param(0, ge=0)                   # spo: first sampling step trained on (official 4 of 20)
    gradspo_guidance: float = param(0.5, ge=0)        # gradspo: g of the score-matching target (official 0.5)

    @property
    def beta_value(self) -> float:
        return self.beta or PAPER_BETA.get(self.name, 5000.0)

    def check_prediction(self, where: str, prediction: str, ema_decay: float) -> None:
        if self.name == "flow_dpo" and prediction != "flow":
            raise ConfigError(describe(where, "run.prediction", repr(prediction), "'flow' for flow_dpo (use "
                                       "diffusion_dpo for epsilon / v models)"))
        if self.name in ONLINE:
            if prediction == "flow":
                raise ConfigError(describe(where, "run.prediction", "'flow'", f"'epsilon' or 'v' for {self.name} "
                                           "(its steps are stochastic DDIM steps)"))
            if not self.preference_model:
                raise ConfigError(describe(where, "method.preference_model", "empty", f"a step-aware reward model "
                                           f"folder for {self.name}"))
            if self.spo_start > self.sample_steps - 2:
                raise ConfigError(describe(where, "method.spo_start", self.spo_start,
                                           f"at most sample_steps − 2 = {self.sample_steps - 2}"))
        if self.name == "gradspo" and ema_decay <= 0:
            raise ConfigError(describe(where, "run.ema_decay", ema_decay, "> 0 for gradspo (it samples with the EMA "
                                       "and guides towards it; official 0.9)"))


@dataclass
class DiffusionRunConfig(SectionedRunConfig):
    """Everything a diffusion run depends on; ``config.toml`` holds it (sections ``run``, ``method``, ``train``)."""

    model: str                                    # a model folder or a config .json (SmallUNet or a diffusers class)
    data: str                                     # an HDF5 file of conditions and images
    prediction: str = param("epsilon", choices=PREDICTIONS)
    train_steps: int = param(1000, ge=2)          # discrete steps of the noise schedule (epsilon, v)
    noise_schedule: str = param("scaled_linear", choices=tuple(SCHEDULES))  # epsilon, v: Stable Diffusion's or cosine
    t_min: float = param(0.0, ge=0, lt=1)         # train on times in [t_min, t_max] of the process (fractions)
    t_max: float = param(1.0, gt=0, le=1)
    ema_decay: float = param(0.0, ge=0, lt=1)     # > 0: keep an EMA of the policy; it becomes the final model
    warmup_steps: int = param(0, ge=0)            # linear learning-rate warm-up (official Diffusion-DPO: 500)
    gradient_checkpointing: bool = False          # recompute activations in the backward pass (less memory)
    sample_every: int = param(0, ge=0)            # TensorBoard image grid of samples every N steps (0: never)
    image_shape: list[int] = field(default_factory=list)  # [C, H, W] or [C, T, H, W]; empty: the data's images'
    method: DiffusionMethodConfig = field(default_factory=DiffusionMethodConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=200, batch_size=16, lr=1e-4,
                                                                   weight_decay=0.0, log_every=10,
                                                                   checkpoint_every=100))

    def validate(self, where: str = "config") -> DiffusionRunConfig:
        check_fields(self, "run", where)
        check_fields(self.method, "method", where)
        check_fields(self.train, "train", where)
        self.method.check_prediction(where, self.prediction, self.ema_decay)
        if self.t_min >= self.t_max:
            raise ConfigError(describe(where, "run.t_min / t_max", f"{self.t_min} / {self.t_max}", "t_min < t_max"))
        return self


# -- data -------------------------------------------------------------------------------------------------------
@dataclass
class ImagePairs:
    """Rows of a diffusion preference file (float32 tensors; absent fields are ``None``)."""

    cond: Tensor                    # [N, D]
    chosen: Tensor | None           # [N, C, H, W] or [N, C, T, H, W] (online methods need none)
    rejected: Tensor | None = None  # like chosen
    weight: Tensor | None = None    # [N]
    label: Tensor | None = None     # [N] in [0, 1]
    reward: Tensor | None = None    # [N, K]

    def __len__(self) -> int:
        return self.cond.shape[0]

    def rows(self, index: Tensor, device: torch.device) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name)[index].to(device) for f in dataclasses.fields(self)
                if getattr(self, f.name) is not None}


def load_image_pairs(path: str | os.PathLike, method: str) -> ImagePairs:
    """Read and check every field of ``path`` (HDF5) for ``method``; a problem raises one line naming the file,
    the field, what was found and what was expected."""
    import h5py
    import numpy as np

    where = str(path)
    if not Path(path).is_file():
        raise DatasetError(describe(where, "file", "missing", "an HDF5 file of cond / chosen / rejected"))
    try:
        handle = h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(describe(where, "file", f"unreadable ({e})", "an HDF5 file")) from e
    with handle as f:
        def read(name: str, required: bool) -> Tensor | None:
            if name not in f:
                if required:
                    why = {"rejected": f"{method} compares a winner with a loser", "reward": "flow_rwr weighs images "
                           "by their reward"}.get(name, "every method reads it")
                    raise DatasetError(describe(where, f"field '{name}'", "missing", f"a dataset ({why})"))
                return None
            array = np.asarray(f[name][()])
            if not np.issubdtype(array.dtype, np.number):
                raise DatasetError(describe(where, f"field '{name}'", f"dtype {array.dtype}", "numbers"))
            bad = np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(1)) if array.ndim and array.size else []
            if len(bad):
                raise DatasetError(describe(where, f"field '{name}'", f"non-finite values in rows {bad[:5].tolist()}",
                                            "finite values"))
            return torch.from_numpy(array.astype(np.float32))

        data = ImagePairs(cond=read("cond", True), chosen=read("chosen", method not in ONLINE),
                          rejected=read("rejected", method in NEEDS_LOSER), weight=read("weight", False),
                          label=read("label", False), reward=read("reward", method == "flow_rwr"))
    n = len(data.cond)
    if n == 0:
        raise DatasetError(describe(where, "field 'cond'", "0 rows", "at least one row"))
    if data.cond.dim() != 2:
        raise DatasetError(describe(where, "field 'cond'", f"shape {list(data.cond.shape)}", "[N, D]"))
    if data.chosen is None:
        return data
    if data.chosen.dim() not in (4, 5) or len(data.chosen) != n:
        raise DatasetError(describe(where, "field 'chosen'", f"shape {list(data.chosen.shape)}",
                                    f"[{n}, C, H, W] or [{n}, C, T, H, W] (one image per cond row)"))
    if data.rejected is not None and data.rejected.shape != data.chosen.shape:
        raise DatasetError(describe(where, "field 'rejected'", f"shape {list(data.rejected.shape)}",
                                    f"{list(data.chosen.shape)}, the shape of 'chosen'"))
    for name, lo, hi in (("weight", 0.0, float("inf")), ("label", 0.0, 1.0)):
        value = getattr(data, name)
        if value is not None and (value.shape != (n,) or (value < lo).any() or (value > hi).any()):
            raise DatasetError(describe(where, f"field '{name}'", f"shape {list(value.shape)}, range "
                                        f"[{value.min():g}, {value.max():g}]", f"[{n}] values in [{lo:g}, {hi:g}]"))
    if data.reward is not None:
        if data.reward.dim() == 1:
            data.reward = data.reward[:, None]
        if data.reward.dim() != 2 or len(data.reward) != n:
            raise DatasetError(describe(where, "field 'reward'", f"shape {list(data.reward.shape)}", f"[{n}] or [{n}, K]"))
    return data


def write_image_pairs(path: str | os.PathLike, **fields: Tensor) -> Path:
    """Write fields (``cond``, ``chosen``, ``rejected``, …) to an HDF5 file: a temporary file renamed onto ``path``."""
    import h5py

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with h5py.File(tmp, "w") as f:
        for name, value in fields.items():
            f.create_dataset(name, data=value.detach().cpu().float().numpy())
    os.replace(tmp, path)
    return path


def check_model_fits(config: dict[str, Any], data: ImagePairs, image: tuple[int, ...], where: str) -> None:
    """Refuse data whose channels, size or condition width the model cannot take."""
    channels = config.get("channels", config.get("in_channels"))
    cond_dim = config.get("cond_dim", config.get("cross_attention_dim"))
    if channels is not None and image[0] != channels:
        raise DatasetError(describe(where, "field 'chosen'", f"{image[0]} channels", f"{channels} (the model's)"))
    size = config.get("sample_size")
    if size is not None and tuple(image[-2:]) != ((size, size) if isinstance(size, int) else tuple(size)):
        raise DatasetError(describe(where, "field 'chosen'", f"size {list(image[-2:])}", f"{size} (the model's)"))
    levels = len(config.get("widths", config.get("block_out_channels", [1])))
    if any(s % 2 ** (levels - 1) for s in image[-2:]):
        raise DatasetError(describe(where, "field 'chosen'", f"size {list(image[-2:])}",
                                    f"height and width divisible by {2 ** (levels - 1)}"))
    if cond_dim is not None and data.cond.shape[1] != cond_dim:
        raise DatasetError(describe(where, "field 'cond'", f"width {data.cond.shape[1]}", f"{cond_dim} (the model's)"))


# -- the learner ----------------------------------------------------------------------------------------------
def transform_loser(images: Tensor) -> Tensor:
    """SUDO-style self-supervised loser: the image flipped on both axes and shifted by a quarter of its size."""
    h, w = images.shape[-2:]
    return images.flip(-1, -2).roll((h // 4, w // 4), (-2, -1))


class DiffusionLearner(nn.Module):
    """A denoiser trained by one objective of :data:`DIFFUSION_METHODS` on batches ``{cond, chosen, …}``.

    ``reference`` is a frozen copy of the starting model (not in the optimiser; rebuilt on resume). ``ema`` (when
    ``ema_decay`` > 0) is a registered copy, so it is checkpointed. Diffusion-DRO's sampling copy and replay buffer
    are state too (``sampler_copy`` is registered; ``replay`` is loop state)."""

    def __init__(self, policy: nn.Module, reference: nn.Module, schedule: NoiseSchedule, method: DiffusionMethodConfig,
                 *, ema_decay: float = 0.0, image_shape: tuple[int, ...] = (), preference: nn.Module | None = None,
                 warmup_steps: int = 0):
        super().__init__()
        self.policy, self.schedule, self.method, self.ema_decay = policy, schedule, method, ema_decay
        self.warmup_steps = warmup_steps
        self.image_shape = image_shape
        self.frozen = {"reference": reference}  # a plain dict: not registered, not checkpointed
        if preference is not None:
            self.frozen["preference"] = preference.requires_grad_(False)
        for p in reference.parameters():
            p.requires_grad_(False)
        self.ema = copy.deepcopy(policy).requires_grad_(False) if ema_decay > 0 else None
        self.sampler_copy = copy.deepcopy(policy).requires_grad_(False) if method.name == "dro" else None
        self.replay = RolloutBuffer(method.dro_buffer)

    @property
    def reference(self) -> nn.Module:
        return self.frozen["reference"]

    def optimizers(self) -> dict[str, OptimizerSpec]:
        return {"policy": OptimizerSpec([p for p in self.policy.parameters() if p.requires_grad],
                                        warmup_steps=self.warmup_steps)}

    def after_step(self, step: int) -> None:
        if self.ema is not None:
            with torch.no_grad():
                for e, p in zip(self.ema.parameters(), self.policy.parameters()):
                    e.lerp_(p, 1.0 - self.ema_decay)
        if self.sampler_copy is not None and (step + 1) % self.method.dro_refresh == 0:
            self.sampler_copy.load_state_dict(self.policy.state_dict())

    def loss(self, batch: dict[str, Tensor], step: int) -> LossOutput:
        m, s = self.method, self.schedule
        cond, chosen = batch["cond"], batch["chosen"]
        weight = batch.get("weight", torch.ones(len(cond), device=cond.device))
        metrics: dict[str, Tensor] = {}
        if m.name in ("diffusion_dpo", "flow_dpo", "sudo", "abc"):
            if m.name == "sudo":
                rejected = (chosen[torch.randperm(len(chosen), device=chosen.device)] if m.sudo_loser == "shuffle"
                            else transform_loser(chosen))
            else:
                rejected = batch["rejected"]
            e = pair_denoising_errors(self.policy, self.reference, s, chosen, rejected, cond)
            if m.name == "abc":
                ones = torch.ones_like(e.policy_w)
                losses = 0.5 * (abc_loss(e.policy_w, e.ref_w, ones, beta=m.beta_value)
                                + abc_loss(e.policy_l, e.ref_l, 0 * ones, beta=m.beta_value))
            else:
                losses = diffusion_dpo_loss(e.policy_w, e.policy_l, e.ref_w, e.ref_l, beta=m.beta_value)
                if m.name == "sudo":
                    losses = (1 - m.sudo_sft_weight) * losses + m.sudo_sft_weight * e.policy_w
                elif m.sft_weight > 0:
                    losses = losses + m.sft_weight * e.policy_w
            metrics.update(self._pair_metrics(e.policy_w, e.policy_l, e.ref_w, e.ref_l))
        elif m.name == "rpo":
            a = self._errors(chosen, cond)
            b = self._errors(batch["rejected"], cond)
            label = batch.get("label", torch.ones_like(weight))
            losses = rpo_loss(a[0], a[1], b[0], b[1], label, beta=m.beta_value)
            metrics.update(self._pair_metrics(a[0], b[0], a[1], b[1]))
        elif m.name == "dro":
            own = self._replay(cond, chosen, batch.get("weight"))
            cond, chosen, t = own["cond"], own["chosen"], own["t"]
            noise = torch.randn_like(chosen)
            err_expert = denoising_error(self.policy, s, chosen, noise, t, cond)
            err_own = self._own_error(self.policy, own)
            with torch.no_grad():
                ref_expert = denoising_error(self.reference, s, chosen, noise, t, cond)
                ref_own = self._own_error(self.reference, own)
            losses = dro_loss(err_expert, ref_expert, err_own, ref_own, margin=m.dro_margin)
            weight = own["weight"]
            metrics["dro/active"] = (losses > 0).float().mean().detach()
        elif m.name in ONLINE:
            losses, keep, spo_metrics = self._step_preference_loss(cond)
            weight = weight * keep
            metrics.update(spo_metrics)
        else:  # diffusion_sft, flow_rwr
            t = s.sample_t(len(cond), device=cond.device)
            err = denoising_error(self.policy, s, chosen, torch.randn_like(chosen), t, cond)
            if m.name == "flow_rwr":
                reward = batch["reward"]
                mix = torch.tensor(m.reward_weights or [1.0] * reward.shape[1], device=reward.device)
                losses = reward_weighted_loss(err, reward @ mix, temperature=m.rwr_temperature)
            else:
                losses = err
            metrics["denoise/chosen"] = err.mean().detach()
        loss = (losses * weight).sum() / weight.sum().clamp(min=1e-12)
        return LossOutput(loss, metrics)

    def _step_preference_loss(self, cond: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """SPO / GradSPO on one denoising step: roll the sampler (the policy; GradSPO: the EMA) to a random step i of
        ``sample_steps`` stochastic DDIM steps, draw ``spo_candidates`` candidates x_{t−1} from that x_t, let the
        step-aware preference model pick the best and the worst (a pair kept only if their softmax probabilities
        differ by more than ``spo_threshold``), and compare their step log-densities (SPO) or score-matching terms
        (GradSPO) under the policy and the reference with the clipped ratio. Returns (losses, kept, metrics)."""
        m, s = self.method, self.schedule
        b, k, shape = len(cond), m.spo_candidates, self.image_shape
        times = sampling_times(s, m.sample_steps, cond.device)
        i = int(torch.randint(m.spo_start, m.sample_steps - 1, ()))
        sampler = self.ema if m.name == "gradspo" else self.policy
        preference = self.frozen["preference"]
        heads = torch.tensor(m.reward_weights or [1.0] * preference.heads, device=cond.device)
        with torch.no_grad():
            x = torch.randn(b, *shape, device=cond.device)
            for j in range(i):
                t = times[j].expand(b)
                x, _, _ = ddim_step(s, sampler(x, s.model_time(t), cond), x, t, times[j + 1].expand(b), eta=m.spo_eta,
                                    noise=torch.randn_like(x))
            t, t_prev = times[i].expand(b), times[i + 1].expand(b)
            out_sampler = sampler(x, s.model_time(t), cond)
            _, mean, sigma = ddim_step(s, out_sampler, x, t, t_prev, eta=m.spo_eta)
            z = torch.randn(b, k, *shape, device=cond.device)
            candidates = mean[:, None] + sigma[:, None] * z
            scores = preference(candidates.flatten(0, 1), t_prev.repeat_interleave(k),
                                cond.repeat_interleave(k, 0)).view(b, k, -1) @ heads
            win, lose = scores.argmax(1), scores.argmin(1)
            rows = torch.arange(b, device=cond.device)
            p = torch.softmax(torch.stack([scores[rows, win], scores[rows, lose]], 1), 1)
            keep = (p[:, 0] - p[:, 1] > m.spo_threshold).to(cond.dtype)
            out_ref = self.reference(x, s.model_time(t), cond)
        out = self.policy(x, s.model_time(t), cond)
        if m.name == "spo":
            _, mean_policy, _ = ddim_step(s, out, x, t, t_prev, eta=m.spo_eta)
            _, mean_ref, _ = ddim_step(s, out_ref, x, t, t_prev, eta=m.spo_eta)
            logp = [gaussian_step_logp(candidates[rows, pick], mu, sigma) for pick in (win, lose)
                    for mu in (mean_policy, mean_ref)]
        else:
            eps = s.to_x0_eps(out, x, t)[1]
            eps_ema, eps_ref = s.to_x0_eps(out_sampler, x, t)[1], s.to_x0_eps(out_ref, x, t)[1]
            noise_scale = s.coefficients(t, x)[1]
            logp = [gradspo_score(e, eps_ema, z[rows, pick], noise_scale, guidance=m.gradspo_guidance)
                    for pick in (win, lose) for e in (eps, eps_ref)]
        losses = clipped_ratio_dpo_loss(logp[0], logp[2], logp[1], logp[3], beta=m.beta_value, clip=m.spo_clip)
        return losses, keep, {"spo/kept": keep.mean(), "spo/score_gap": (scores.amax(1) - scores.amin(1)).mean(),
                              "spo/step": torch.tensor(float(i))}

    def _errors(self, images: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        """(policy, reference) errors on fresh noise and times (RPO does not share them across its two halves)."""
        t = self.schedule.sample_t(len(images), device=images.device)
        noise = torch.randn_like(images)
        err = denoising_error(self.policy, self.schedule, images, noise, t, cond)
        with torch.no_grad():
            ref = denoising_error(self.reference, self.schedule, images, noise, t, cond)
        return err, ref

    @torch.no_grad()
    def _replay(self, cond: Tensor, chosen: Tensor, weight: Tensor | None = None) -> dict[str, Tensor]:
        """Roll the sampling copy out on this batch's conditions and keep the rollout (with the batch's expert
        images) in the buffer; then replay a random entry of the buffer, one recorded step per item:
        ``{cond, chosen, weight, t, x_t, target}``, the target being the sampler's own prediction at ``x_t``."""
        trajectory: list[tuple[Tensor, Tensor, Tensor]] = []
        sample(self.sampler_copy, self.schedule, cond, self.image_shape, steps=self.method.sample_steps,
               trajectory=trajectory)
        entry = self.replay.add_and_draw({
            "cond": cond, "chosen": chosen,
            "weight": weight if weight is not None else torch.ones(len(cond), device=cond.device),
            "t": torch.stack([t for t, _, _ in trajectory], 1), "x_t": torch.stack([x for _, x, _ in trajectory], 1),
            "target": torch.stack([o for _, _, o in trajectory], 1)})
        b = len(entry["cond"])
        step = torch.randint(entry["t"].shape[1], (b,), device=cond.device)
        rows = torch.arange(b, device=cond.device)
        return {"cond": entry["cond"], "chosen": entry["chosen"], "weight": entry["weight"],
                **{k: entry[k][rows, step] for k in ("t", "x_t", "target")}}

    def _own_error(self, net: nn.Module, own: dict[str, Tensor]) -> Tensor:
        """``‖net(x_t) − the sampler's own prediction‖²`` per replayed item ``[B]``."""
        out = net(own["x_t"], self.schedule.model_time(own["t"]), own["cond"])
        return ((out.float() - own["target"].float()) ** 2).flatten(1).mean(1)

    def _pair_metrics(self, pw: Tensor, pl: Tensor, rw: Tensor, rl: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            margin = -0.5 * self.method.beta_value * ((pw - pl) - (rw - rl))
            return {"rewards/margins": margin.mean(), "rewards/accuracies": (margin > 0).float().mean(),
                    "denoise/chosen": pw.mean(), "denoise/rejected": pl.mean(),
                    "kl/chosen_error_gap": (pw - rw).mean()}

class RolloutBuffer:
    """Diffusion-DRO's replay: the last ``capacity`` rollouts (dicts of tensors), checkpointed as loop state."""

    def __init__(self, capacity: int):
        self.capacity, self.entries, self.device = capacity, [], torch.device("cpu")

    def add_and_draw(self, entry: dict[str, Tensor]) -> dict[str, Tensor]:
        """Keep ``entry`` (dropping the oldest beyond capacity) and return a random kept one (global RNG)."""
        self.entries = [*self.entries, entry][-self.capacity:]
        self.device = entry["cond"].device
        return self.entries[int(torch.randint(len(self.entries), ()))]

    def state_dict(self) -> dict[str, Any]:
        return {"entries": [{k: v.cpu() for k, v in e.items()} for e in self.entries]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.entries = [{k: v.to(self.device) for k, v in e.items()} for e in state["entries"]]


class ImageBatches(IndexSampler):
    """:class:`IndexSampler` over :class:`ImagePairs`, returning batches on ``device``."""

    def __init__(self, data: ImagePairs, batch_size: int, *, seed: int, device: torch.device):
        super().__init__(len(data), batch_size, seed=seed)
        self.data, self.device = data, device

    def sample(self) -> dict[str, Tensor]:
        return self.data.rows(self.next_indices(), self.device)


# -- the run ------------------------------------------------------------------------------------------------------
def train_diffusion(cfg: DiffusionRunConfig, out: str | os.PathLike, *, progress: bool = True,
                    stop_at: int | None = None) -> LoopResult:
    """Train ``cfg`` into ``out`` (resuming an unfinished run there); the data are checked before anything is
    written, their sha256 recorded (a resume on changed data is refused) and a failed start leaves ``out`` as it
    was; the final model (the EMA when kept) lands in ``out/model``, the final loss and reward accuracy of the
    trained policy in ``out/metrics.json``."""
    cfg.validate()
    out = Path(out)
    data = load_image_pairs(cfg.data, cfg.method.name)
    policy, config = load_denoiser(cfg.model, seed=cfg.train.seed)
    if cfg.image_shape:
        image_shape = tuple(cfg.image_shape)
        if data.chosen is not None and tuple(data.chosen.shape[1:]) != image_shape:
            raise DatasetError(describe(cfg.data, "field 'chosen'", f"images {list(data.chosen.shape[1:])}",
                                        f"{list(image_shape)} (run.image_shape)"))
    elif data.chosen is not None:
        image_shape = tuple(data.chosen.shape[1:])
    else:
        raise ConfigError(describe("config", "run.image_shape", "empty", f"[C, H, W] ({cfg.data} holds no images "
                                   "to take the shape from)"))
    check_model_fits(config, data, image_shape, cfg.data)
    preference = load_reward_model(cfg.method.preference_model) if cfg.method.name in ONLINE else None
    with run_directory(out, data_file("pairs", cfg.data)):  # a failed start leaves out as it was
        prepare_run_dir(out, cfg.to_dict())
        torch.manual_seed(cfg.train.seed)
        torch.set_num_threads(cfg.train.threads)
        device = resolve_device(cfg.train.device)
        if cfg.gradient_checkpointing:
            _enable_checkpointing(policy)
        policy.to(device)
        reference = copy.deepcopy(policy).eval()
        schedule = NoiseSchedule(cfg.prediction, cfg.train_steps, schedule=cfg.noise_schedule,
                                 t_range=(cfg.t_min, cfg.t_max)).to(device)
        learner = DiffusionLearner(policy, reference, schedule, cfg.method, ema_decay=cfg.ema_decay,
                                   image_shape=image_shape, preference=preference.to(device) if preference else None,
                                   warmup_steps=cfg.warmup_steps)
        batches = ImageBatches(data, cfg.train.batch_size, seed=cfg.train.seed, device=device)
        stateful: dict[str, Any] = {"sampler": batches}
        if cfg.method.name == "dro":
            learner.replay.device = device
            stateful["dro"] = learner.replay
        evaluate, loop_cfg = None, cfg.train
        if cfg.sample_every:  # the image grid rides on the loop's evaluation hook
            loop_cfg = dataclasses.replace(cfg.train, eval_every=cfg.sample_every)
            evaluate = _image_grid(learner, data.cond[:16].to(device), cfg.method.sample_steps)
        result = run_loop(learner, batches.sample, loop_cfg, out, device=device, stateful=stateful,
                          evaluate=evaluate, progress=progress, stop_at=stop_at, desc=f"seq {cfg.method.name}")
        already_done = result.step == result.start_step and (out / "metrics.json").is_file()
        if result.finished and not already_done:
            final = learner.ema if learner.ema is not None else policy
            save_denoiser(final, out / "model")
            atomic_write_text(out / "metrics.json", json.dumps({
                "method": cfg.method.name, "steps": result.step, "pairs": len(data),
                "steps_per_s": result.steps_per_s, **_final_metrics(learner, data, cfg, result.step, device)},
                indent=2))
        return result


NOT_EVALUATED = ("dro", *ONLINE)
"""Objectives whose loss does not read the file's pairs (they train on the model's own samples): ``metrics.json``
has no final loss or reward accuracy for them."""


def _final_metrics(learner: DiffusionLearner, data: ImagePairs, cfg: DiffusionRunConfig, step: int,
                   device: torch.device) -> dict[str, Any]:
    """:func:`pbrl.sequence.train.final_metrics` on the first training pairs (seeded noise and times)."""
    if cfg.method.name in NOT_EVALUATED:
        return final_metrics(learner, [], pairs=len(data), step=step, seed=cfg.train.seed, device=device)
    batches = (data.rows(index, device) for index in evaluation_indices(len(data), max(cfg.train.batch_size, 16)))
    return final_metrics(learner, batches, pairs=len(data), step=step, seed=cfg.train.seed, device=device)


def _enable_checkpointing(net: nn.Module) -> None:
    inner = getattr(net, "model", net)
    if hasattr(inner, "enable_gradient_checkpointing"):
        inner.enable_gradient_checkpointing()
    elif isinstance(net, SmallUNet):
        net.checkpointing = True


def image_grid(images: Tensor, columns: int = 4) -> Tensor:
    """``[N, C, H, W]`` in [−1, 1] -> one ``[C, rows · (H + 1), columns · (W + 1)]`` image in [0, 1] (a 1-pixel
    gap between tiles), for TensorBoard."""
    n, c, h, w = images.shape
    rows = -(-n // columns)
    grid = torch.ones(c, rows * (h + 1), columns * (w + 1))
    for i, image in enumerate(images.float().cpu().clamp(-1, 1)):
        r, k = divmod(i, columns)
        grid[:, r * (h + 1):r * (h + 1) + h, k * (w + 1):k * (w + 1) + w] = (image + 1) / 2
    return grid


def _image_grid(learner: DiffusionLearner, cond: Tensor, steps: int):
    def evaluate(step: int, writer: Any) -> None:
        net = learner.ema if learner.ema is not None else learner.policy
        g = torch.Generator(device=cond.device).manual_seed(0)
        images = sample(net, learner.schedule, cond, learner.image_shape, steps=steps, generator=g)
        writer.add_image("samples", image_grid(images[:, :, 0] if images.dim() == 5 else images), step)
    return evaluate
