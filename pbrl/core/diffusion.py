"""Diffusion and flow models as pure functions of tensors: the noise schedules, the forward process, the DDIM and
flow samplers (shared by the control diffusion policy, :mod:`pbrl.nets.diffusion`, and the image / video denoisers
of :mod:`pbrl.sequence.diffusion`), and the preference losses of denoising errors.

**The process.** ``x_t = a x₀ + s ε`` with, for the discrete-step parameterisations, ``a = √ᾱ_t``, ``s = √(1−ᾱ_t)``
at an integer step t of a schedule ᾱ ``[train_steps]``, the network predicting ε (``epsilon``, Ho et al., 2020) or
``v = √ᾱ ε − √(1−ᾱ) x₀`` (``v``, Salimans & Ho, 2022); for rectified flow (``flow``, Liu et al., 2023; SD3's
convention) ``a = 1 − t``, ``s = t`` at a time t ∈ [0, 1], the network predicting the velocity ``ε − x₀``.

**The losses.** ``e = ‖target − net(x_t, t, c)‖²`` is a sample's mean squared denoising error (mean over every
non-batch dimension), ``e_θ`` the policy's and ``e_ref`` the frozen reference's on the *same* noise and timestep.
The implicit reward of a sample is ``−(e_θ − e_ref)`` (Wallace et al., 2024, eq. 14: the per-step ELBO gap, up
to the step weight), so a diffusion preference loss is a link (:mod:`pbrl.core.links`) applied to it.
All error tensors are ``[B]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from pbrl.core.links import logistic_link

__all__ = ["PREDICTIONS", "abc_loss", "clipped_ratio_dpo_loss", "cosine_alpha_bar", "ddim_timesteps", "ddim_transition",
           "diffusion_dpo_loss", "diffusion_implicit_reward", "dro_loss", "forward_coefficients", "gaussian_step_logp",
           "gradspo_score", "lambda_harmonic_reward", "per_sample", "prediction_target", "rao_kupper_loss",
           "reward_weighted_loss", "rpo_loss", "sample_chain", "scaled_linear_alpha_bar", "split_prediction",
           "timestep_embedding"]

PREDICTIONS = ("epsilon", "v", "flow")

Guidance = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``guidance(x_t, t, x̂₀) -> Δ``, added to the network's prediction at every sampling step."""


# ---------------------------------------------------------------------------------------------------------
# noise schedules and time embeddings
# ---------------------------------------------------------------------------------------------------------

def cosine_alpha_bar(steps: int, s: float = 0.008) -> Tensor:
    """ᾱ_k for k = 1..steps of the cosine schedule (Nichol & Dhariwal, 2021, eq. 17), with β_k clipped to 0.999,
    float64 ``[steps]``."""
    k = torch.arange(steps + 1, dtype=torch.float64)
    f = torch.cos((k / steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, 0)


def scaled_linear_alpha_bar(steps: int, beta_start: float = 0.00085, beta_end: float = 0.012) -> Tensor:
    """ᾱ_k of Stable Diffusion's ``scaled_linear`` schedule (diffusers' DDPMScheduler as SD configures it: √β linear
    from √0.00085 to √0.012), float64 ``[steps]``; its last ᾱ is about 0.0047."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def timestep_embedding(k: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of diffusion steps (or of ``1000 t``) ``[B] -> [B, dim]`` (Vaswani et al., 2017)."""
    half = dim // 2
    freq = torch.exp(-math.log(10_000) * torch.arange(half, device=k.device, dtype=torch.float32) / max(half - 1, 1))
    angle = k.float()[:, None] * freq[None]
    return torch.cat([angle.sin(), angle.cos()], -1)


# ---------------------------------------------------------------------------------------------------------
# the forward process and what the network predicts
# ---------------------------------------------------------------------------------------------------------

def per_sample(value: Tensor, like: Tensor) -> Tensor:
    """A per-sample ``[B]`` coefficient as ``[B, 1, ...]`` in ``like``'s dtype, to broadcast over ``like [B, ...]``."""
    return value.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def forward_coefficients(alpha_bar: Tensor | None, t: Tensor, like: Tensor, prediction: str = "epsilon"
                         ) -> tuple[Tensor, Tensor]:
    """``(a, s)`` with ``x_t = a x₀ + s ε``, each ``[B, 1, ...]`` to broadcast over ``like [B, ...]``: ``(√ᾱ_t,
    √(1−ᾱ_t))`` at integer steps ``t [B]`` of ``alpha_bar [train_steps]``, or ``(1 − t, t)`` at flow times ``t [B]``
    (``alpha_bar`` unused)."""
    if prediction == "flow":
        return per_sample(1 - t, like), per_sample(t, like)
    ab = alpha_bar.to(like.device)[t]
    return per_sample(ab.sqrt(), like), per_sample((1 - ab).sqrt(), like)


def prediction_target(x0: Tensor, noise: Tensor, a: Tensor, s: Tensor, prediction: str) -> Tensor:
    """What the network is trained to output at ``x_t = a x₀ + s ε``: ε, ``v = a ε − s x₀``, or the velocity
    ``ε − x₀`` (flow). Shapes of ``x0``."""
    if prediction == "epsilon":
        return noise
    if prediction == "flow":
        return noise - x0
    return a * noise - s * x0


def split_prediction(out: Tensor, x: Tensor, a: Tensor, s: Tensor, prediction: str) -> tuple[Tensor, Tensor]:
    """``(x̂₀, ε̂)`` from the network's output ``out`` at ``x = x_t``, with ``(a, s)`` of :func:`forward_coefficients`
    at t. Shapes of ``x``."""
    if prediction == "epsilon":
        return (x - s * out) / a, out
    if prediction == "flow":  # out = ε − x₀ and x = (1 − t) x₀ + t ε
        return x - s * out, x + a * out
    return a * x - s * out, s * x + a * out  # v: x₀ = √ᾱ x − √(1−ᾱ) v, ε = √(1−ᾱ) x + √ᾱ v


# ---------------------------------------------------------------------------------------------------------
# samplers
# ---------------------------------------------------------------------------------------------------------

def ddim_timesteps(train_steps: int, steps: int, device: torch.device | None = None) -> Tensor:
    """The ``steps`` training steps a DDIM sampler visits, evenly spaced and descending, integers ``[steps]``."""
    return torch.linspace(train_steps - 1, 0, steps, device=device).round().long()


def sample_chain(predict: Callable[[Tensor, Tensor], Tensor], noise: Tensor, *, prediction: str,
                 alpha_bar: Tensor | None = None, steps: int, clip: float | None = 1.0, guidance: Guidance | None = None,
                 trajectory: list[tuple[Tensor, Tensor, Tensor]] | None = None) -> Tensor:
    """x₀ from ``x_T = noise [B, ...]``: DDIM (Song et al., 2021, eq. 12, η = 0) over ``steps`` evenly spaced
    training steps of ``alpha_bar``, or ``steps`` Euler steps of the flow ODE from t = 1 to 0.

    ``predict(x_t, t [B]) -> out`` is the network at step (or flow time) t; ``guidance(x_t, t, x̂₀) -> Δ`` is added
    to ``out`` at every step, computed with gradients enabled; ``clip`` bounds every x̂₀ and the result. A
    ``trajectory`` list receives ``(t [B], x_t, out)`` at every step. The only randomness is ``noise``."""
    b, x = noise.shape[0], noise
    flow = prediction == "flow"
    if flow:
        times = torch.linspace(1.0, 0.0, steps + 1, device=noise.device)
    else:
        times = ddim_timesteps(len(alpha_bar), steps, noise.device)
    for i in range(len(times) - (1 if flow else 0)):
        t = times[i].expand(b)
        out = predict(x, t)
        if guidance is not None:
            x0_hat, _ = split_prediction(out, x, *forward_coefficients(alpha_bar, t, x, prediction), prediction)
            with torch.enable_grad():
                out = out + guidance(x, t, x0_hat)
        if trajectory is not None:
            trajectory.append((t, x, out))
        if flow:
            x = x + (times[i + 1] - times[i]) * out
            continue
        x0, eps = split_prediction(out, x, *forward_coefficients(alpha_bar, t, x, prediction), prediction)
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
        if i + 1 < len(times):
            a, s = forward_coefficients(alpha_bar, times[i + 1].expand(b), x, prediction)
            x = a * x0 + s * eps
        else:
            x = x0
    return x.clamp(-clip, clip) if clip is not None else x


def ddim_transition(alpha_bar: Tensor, out: Tensor, x: Tensor, t: Tensor, t_prev: Tensor, prediction: str, *,
                    eta: float = 1.0, noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """One stochastic DDIM step (Song et al., 2021, eq. 12) from ``x_t`` to ``x_{t_prev}`` (``t_prev`` < 0: to x₀),
    for ``epsilon`` or ``v`` outputs ``out``:
    ``x_prev = √ᾱ_prev x̂₀ + √(1 − ᾱ_prev − σ²) ε̂ + σ z``, ``σ = η √((1 − ᾱ_prev)/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev)``.
    Returns ``(x_prev, mean, σ)`` with σ shaped to broadcast; ``noise`` is z (zeros when not given: the mean).
    SPO's per-step policy is this Gaussian (its log-density: :func:`gaussian_step_logp`)."""
    ab = alpha_bar.to(x.device)
    ab_t = per_sample(ab[t], x)
    ab_prev = per_sample(torch.where(t_prev >= 0, ab[t_prev.clamp(min=0)], torch.ones_like(ab[t])), x)
    sigma = eta * ((1 - ab_prev) / (1 - ab_t)).sqrt() * (1 - ab_t / ab_prev).clamp(min=0).sqrt()
    x0, eps = split_prediction(out, x, *forward_coefficients(alpha_bar, t, x, prediction), prediction)
    mean = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).clamp(min=0).sqrt() * eps
    return (mean if noise is None else mean + sigma * noise), mean, sigma


# ---------------------------------------------------------------------------------------------------------
# preference losses of denoising errors
# ---------------------------------------------------------------------------------------------------------

def diffusion_implicit_reward(err_policy: Tensor, err_ref: Tensor, *, beta: float) -> Tensor:
    """``−β/2 · (e_θ − e_ref)`` ``[B]``: the score Diffusion-DPO compares (the ½ of the official code's
    ``-0.5 * beta_dpo * (model_diff - ref_diff)``, split over the two items of a pair)."""
    return -0.5 * beta * (err_policy - err_ref)


def diffusion_dpo_loss(err_policy_w: Tensor, err_policy_l: Tensor, err_ref_w: Tensor, err_ref_l: Tensor, *,
                       beta: float) -> Tensor:
    """Diffusion-DPO (Wallace et al., CVPR 2024, "Diffusion Model Alignment Using Direct Preference Optimization",
    arXiv 2311.12908, eq. 14; official code ``SalesforceAIResearch/DiffusionDPO``, ``train.py``):

    ``ℓ = −log σ(−β/2 · ((e_θ^w − e_θ^l) − (e_ref^w − e_ref^l)))``,

    the ½ included as the official code has it (its ``beta_dpo`` folds the paper's ``T ω(λ_t)``; it uses 5000 for
    Stable Diffusion's mean-over-latent errors). Winner and loser must share their noise and timestep, and the
    reference errors carry no gradient. Flow-DPO (Liu et al., 2025, VideoAlign) is this loss on the
    rectified-flow velocity errors with a constant β. Inputs ``[B]``; returns ``[B]``.
    """
    margin = (diffusion_implicit_reward(err_policy_w, err_ref_w, beta=beta)
              - diffusion_implicit_reward(err_policy_l, err_ref_l, beta=beta))
    return logistic_link(margin, margin.new_ones(()).expand_as(margin))


def clipped_ratio_dpo_loss(logp_w: Tensor, logp_l: Tensor, ref_logp_w: Tensor, ref_logp_l: Tensor, *,
                           beta: float = 10.0, clip: float = 0.1) -> Tensor:
    """SPO's step loss (Liang et al., CVPR 2025, "Aesthetic Post-Training Diffusion Models from Generic Preferences
    with Step-by-step Preference Optimization", arXiv 2406.04314, eq. 9; official code ``RockeyCoss/SPO``,
    ``train_spo.py``), also GradSPO's (Tee et al., NeurIPS 2025, ``JoshuaTTJ/GradSPO``) with its score-matching term
    as ``logp``:

    ``ρ = clamp(exp(log p_θ − log p_ref), 1 − ε, 1 + ε)``, ``ℓ = −log σ(β log ρ_w − β log ρ_l)``.

    The clamp stops the gradient of a step whose ratio has left ``[1 − ε, 1 + ε]`` (PPO's trust region on one
    denoising step). Official defaults β = 10, ε = 0.1. Inputs ``[B]`` per-step log-densities (SPO averages its
    Gaussian step density over the latent's elements); returns ``[B]``.
    """
    low, high = math.log(1.0 - clip), math.log1p(clip)
    log_ratio_w = (logp_w - ref_logp_w).clamp(low, high)
    log_ratio_l = (logp_l - ref_logp_l).clamp(low, high)
    margin = beta * (log_ratio_w - log_ratio_l)
    return logistic_link(margin, margin.new_ones(()).expand_as(margin))


def gaussian_step_logp(x_prev: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``log N(x_prev; mean, std²)`` averaged over every non-batch element (SPO's ``ddim_step_with_logprob``
    reduction): ``[B, ...]`` (``std`` broadcastable) -> ``[B]``."""
    std = std.expand_as(mean)
    logp = -((x_prev - mean) ** 2) / (2 * std**2) - std.log() - 0.5 * math.log(2 * math.pi)
    return logp.flatten(1).mean(1)


def gradspo_score(eps_pred: Tensor, eps_ema: Tensor, step_noise: Tensor, noise_scale: Tensor, *,
                  guidance: float = 0.5) -> Tensor:
    """GradSPO's stand-in for a step's log-density (Tee et al., NeurIPS 2025, "A Gradient Guidance Perspective on
    Stepwise Preference Optimization for Diffusion Models"; official ``gradspo/custom_diffusers/loss.py``):

    ``ℓ = −‖ε_θ(x_t) − sg(ε_EMA(x_t) − g · √(1 − ᾱ_t) · z)‖²`` (mean over elements),

    with z the sampler's noise that produced the candidate x_{t−1} and g the guidance scale (official 0.5).
    ``eps_pred``, ``eps_ema``, ``step_noise`` ``[B, ...]``; ``noise_scale`` ``√(1 − ᾱ_t)`` broadcastable -> ``[B]``.
    """
    target = (eps_ema - guidance * noise_scale * step_noise).detach()
    return -((eps_pred - target) ** 2).flatten(1).mean(1)


def dro_loss(err_policy_expert: Tensor, err_ref_expert: Tensor, err_policy_own: Tensor, err_ref_own: Tensor, *,
             margin: float = 0.001) -> Tensor:
    """Diffusion-DRO (Wu et al., NeurIPS 2025, "Ranking-based Preference Optimization for Diffusion Models from
    Implicit User Feedback", arXiv 2510.18353; official code ``basiclab/DiffusionDRO``, ``train.py``):

    ``ℓ = max(0, (e_θ^exp − e_ref^exp) − (e_θ^own − e_ref^own) + m)``,

    a hinge ranking the expert (data) sample above the model's own sample, whose error is measured against the
    sampler's own prediction stored in a replay buffer. Official margin m = 0.001. Inputs ``[B]``; returns ``[B]``.
    """
    return (err_policy_expert - err_ref_expert - (err_policy_own - err_ref_own) + margin).clamp(min=0)


def abc_loss(err_policy: Tensor, err_ref: Tensor, label: Tensor, *, beta: float) -> Tensor:
    """Alignment by classification (ABC, the classification view of preference alignment against an *ideal*
    reference; only the abstract was available, OpenReview YvypxK4kut): each item, not each pair, is classified
    as better (label 1) or worse (label 0) than the reference by its implicit reward
    ``s = −β/2 (e_θ − e_ref)`` (:func:`diffusion_implicit_reward`):

    ``ℓ = y softplus(−s) + (1 − y) softplus(s)``.

    Pairs become labelled items (the winner 1, the loser 0), so items of different pairs can be mixed (pbrl's
    pair augmentation, :class:`pbrl.sequence.diffusion_train.DiffusionLearner`). Inputs ``[B]``; returns ``[B]``.
    """
    return logistic_link(diffusion_implicit_reward(err_policy, err_ref, beta=beta), label)


def rpo_loss(err_policy_a: Tensor, err_ref_a: Tensor, err_policy_b: Tensor, err_ref_b: Tensor, label: Tensor, *,
             beta: float = 1.0) -> Tensor:
    """RPO for subject-driven generation (Miao et al., 2024, "Subject-driven Text-to-Image Generation via
    Preference-based Reinforcement Learning", arXiv 2407.12164; official ``andrew-miao/RPO``, ``train.py``):

    ``h = (e_ref^a − e_θ^a) − (e_ref^b − e_θ^b)``,
    ``ℓ = e_θ^a − y log σ(β h) − (1 − y) log σ(−β h)``,

    with a the reference (subject) image, b a generated one, y ~ Bernoulli(σ(R_a − R_b)) from the λ-Harmonic
    reward (:func:`lambda_harmonic_reward`); the first term keeps the subject's denoising loss. The official SD
    script has β = 1. Inputs ``[B]``; returns ``[B]``.
    """
    h = (err_ref_a - err_policy_a) - (err_ref_b - err_policy_b)
    return err_policy_a + logistic_link(beta * h, label)


def lambda_harmonic_reward(image_similarity: Tensor, text_similarity: Tensor, *, lam: float = 0.5,
                           eps: float = 1e-8) -> Tensor:
    """RPO's λ-Harmonic reward (Miao et al., 2024, eq. 5): ``R = 1 / (λ / s_img + (1 − λ) / s_txt)`` with both
    similarities in [0, 1] (the official code maps cosine similarities by (s + 1)/2). ``[B]`` -> ``[B]``."""
    return 1.0 / (lam / (image_similarity + eps) + (1.0 - lam) / (text_similarity + eps))


def reward_weighted_loss(err_policy: Tensor, reward: Tensor, *, temperature: float = 1.0) -> Tensor:
    """Flow-RWR (Liu et al., 2025, "Improving Video Generation with Human Feedback", arXiv 2501.13918):
    reward-weighted flow matching ``ℓ_i = w_i e_θ,i`` with ``w = B · softmax(r / τ)`` over the batch, no gradient
    through w. The paper writes ``exp(r) ‖v − v_θ‖²``; pbrl normalises the weights over the batch (mean 1) so the
    step size does not follow the reward's offset, and τ sets how sharp the tilt is. ``[B]`` -> ``[B]``."""
    weight = torch.softmax(reward.detach().to(err_policy.dtype) / temperature, 0) * reward.shape[0]
    return weight * err_policy


def rao_kupper_loss(reward_a: Tensor, reward_b: Tensor, label: Tensor, *, theta: float = 5.0) -> Tensor:
    """Bradley-Terry with ties, the Rao-Kupper model (Rao & Kupper, 1967) as VideoReward trains it (Liu et al., 2025;
    official ``KwaiVGI/VideoAlign`` ``trainer.py``, ``btt``, θ = 5):

    ``P(a ≻ b) = σ(Δ − log θ)``, ``P(tie) = (θ² − 1) σ(Δ − log θ) σ(−Δ − log θ)``, ``Δ = r_a − r_b``;

    ``label`` 1 (a preferred), 0 (b preferred) or 0.5 (tie); the loss is the negative log-probability of the
    label. Inputs ``[...]`` (one entry per pair and quality dimension); returns the same shape.
    """
    log_theta = math.log(theta)
    d = reward_a - reward_b
    win_a, win_b = F.softplus(-(d - log_theta)), F.softplus(-(-d - log_theta))
    tie = win_a + win_b - math.log(theta**2 - 1)
    return torch.where(label == 0.5, tie, torch.where(label > 0.5, win_a, win_b))
