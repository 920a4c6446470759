"""Entry points with fixed signatures: the preference losses users and later modules call directly."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from pbrl.core.links import biased_logistic_link, hinge_link, logistic_link, robust_logistic_link, squared_link
from pbrl.core.scores import cpl_score

DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "robust", "sigmoid_norm", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "apo_zero",
                  "apo_down", "discopop")


def cpl_loss(logp_a: Tensor, logp_b: Tensor, label: Tensor, *, alpha: float = 0.1, gamma: float = 1.0,
             bias: float = 0.5, mask_a: Tensor | None = None, mask_b: Tensor | None = None,
             average: bool = False) -> Tensor:
    """Contrastive Preference Learning loss (Hejna et al., 2023, "Contrastive Preference Learning", eq. 6).

    With the regret score ``A(σ) = α Σ_t γ^t log π(a_t|s_t)`` (masked steps add nothing),

    ``ℓ = y · softplus(−(A_a − λ A_b)) + (1 − y) · softplus(−(A_b − λ A_a))``,

    where λ = ``bias`` is CPL's conservative bias on the rejected segment (λ = 1: plain Bradley-Terry).

    Args:
        logp_a, logp_b: ``[B, T]`` per-step log-probabilities of the actions of segments a and b.
        label: ``[B]`` in [0, 1]; 1 means segment a is preferred, 0.5 a tie.
        mask_a, mask_b: optional ``[B, T]`` masks of valid (unpadded) steps.
        average: score with the mean instead of the sum over steps (:func:`pbrl.core.cpl_score`).
    Returns:
        ``[B]`` per-example losses.
    """
    score_a = cpl_score(logp_a, alpha=alpha, gamma=gamma, mask=mask_a, average=average)
    score_b = cpl_score(logp_b, alpha=alpha, gamma=gamma, mask=mask_b, average=average)
    return biased_logistic_link(score_a, score_b, label, bias=bias)


def cpl_ranked_loss(logp: Tensor, scores: Tensor, *, alpha: float = 0.1, gamma: float = 1.0, bias: float = 0.5,
                    mask: Tensor | None = None, average: bool = False) -> Tensor:
    """CPL's dense regime: every pair of a batch of scored segments (Hejna et al., 2023, section 5: "dense"
    comparisons; jhejna/cpl's ``biased_bce_with_scores``). For each pair (i, j) whose teacher scores order j
    above i, the biased Bradley-Terry loss ``softplus(−(A_j − λ A_i))`` on the regret scores
    ``A = α Σ_t γ^t log π``; pairs of equal score carry no comparison.

    Args:
        logp: ``[B, T]`` per-step log-probabilities of the actions of B segments.
        scores: ``[B]`` the teacher's scores of the segments (higher is preferred).
        mask: optional ``[B, T]`` mask of valid steps.
        average: score with the mean instead of the sum over steps (jhejna/cpl-human's D4RL recipe).
    Returns:
        the mean over the ordered pairs (a scalar; 0 when all scores are equal).
    """
    adv = cpl_score(logp, alpha=alpha, gamma=gamma, mask=mask, average=average)       # [B]
    better = scores[None, :] > scores[:, None]                                    # [i, j]: j preferred to i
    pair_loss = biased_logistic_link(adv[None, :].expand_as(better), adv[:, None].expand_as(better),
                                     torch.ones_like(better, dtype=adv.dtype), bias=bias)
    return (pair_loss * better).sum() / better.sum().clamp(min=1)


def dpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, *, beta: float = 0.1, label_smoothing: float = 0.0,
             loss_type: str = "sigmoid", discopop_tau: float = 0.05,
             bco_delta: float | Tensor = 0.0, chosen_lengths: Tensor | None = None,
             rejected_lengths: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Direct Preference Optimization losses (the TRL ``DPOTrainer`` loss types).

    With ``h = (log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))`` and ε = ``label_smoothing``:

    - ``sigmoid`` (DPO, Rafailov et al., 2023, eq. 7; ε > 0: conservative DPO, Mitchell 2023):
      ``−(1 − ε) log σ(β h) − ε log σ(−β h)``
    - ``hinge`` (SLiC, Zhao et al., 2023): ``max(0, 1 − β h)``
    - ``ipo`` (IPO, Azar et al., 2023, eq. 17): ``(h − 1/(2β))²``; with ``chosen_lengths`` / ``rejected_lengths``
      (completion tokens, ``[B]``) each log-ratio is first divided by its length, the IPO paper's token averaging
      as TRL applies it; without them, on the log-probabilities as given
    - ``sigmoid_norm`` (length-normalised DPO, TRL; SimPO's averaging, Meng et al., 2024, eq. 4, with the
      reference kept): ``−log σ(β (r_w / |y_w| − r_l / |y_l|))``; needs the lengths (clamped to >= 1)
    - ``robust`` (robust DPO, Chowdhury et al., 2024, eq. 9): ``((1 − ε)(−log σ(β h)) + ε log σ(−β h)) / (1 − 2ε)``,
      an unbiased estimate of the clean loss when labels flip with rate ε < 1/2.

    The pairwise types below are defined as TRL 1.16's ``DPOTrainer`` defines them, with ``r_w = log π(y_w|x) −
    log π_ref(y_w|x)`` and ``r_l`` likewise (so ``h = r_w − r_l``):

    - ``exo_pair`` (EXO, Ji et al., 2024, eq. 16): ``σ(βh)(log σ(βh) − log(1 − ε)) + σ(−βh)(log σ(−βh) − log ε)``,
      the reverse KL to the smoothed label; needs ε > 0 (the paper suggests 1e-3), as TRL does;
    - ``nca_pair`` (NCA, Chen et al., 2024): ``−log σ(β r_w) − ½ log σ(−β r_w) − ½ log σ(−β r_l)``;
    - ``bco_pair`` (BCO, Jung et al., 2024): ``−log σ(β r_w − δ) − log σ(−(β r_l − δ))``; TRL 1.16 uses δ = 0 (the
      default of ``bco_delta``); the BCO paper's δ is a running mean of the rewards, which a caller passes;
    - ``sppo_hard`` (SPPO, Wu et al., 2024, eq. 4.7 with hard probabilities): ``(r_w − 1/(2β))² + (r_l + 1/(2β))²``;
    - ``apo_zero`` (APO, D'Oosterlinck et al., 2024, eq. 7): ``1 − σ(β r_w) + σ(β r_l)``;
    - ``apo_down`` (APO, eq. 8): ``σ(β r_w) + 1 − σ(β h)``;
    - ``discopop`` (DiscoPOP, Lu et al., 2024, eq. 5): with ``z = β h`` and ``m = σ(z / τ)`` (τ = ``discopop_tau``),
      ``(1 − m)(−log σ(z)) + m·exp(−z)``.

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: ``[B]`` summed
            sequence log-probabilities under the policy and the frozen reference.
    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each ``[B]``; rewards are ``β (log π − log π_ref)``,
        detached (diagnostics, as in TRL).
    """
    logits = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    if chosen_lengths is not None or rejected_lengths is not None or loss_type == "sigmoid_norm":
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError(f"dpo_loss: loss_type {loss_type!r}: got lengths for "
                             f"{'neither' if chosen_lengths is None and rejected_lengths is None else 'one side'}, "
                             "expected chosen_lengths and rejected_lengths ([B] completion tokens)")
        if loss_type not in ("ipo", "sigmoid_norm"):
            raise ValueError(f"dpo_loss: lengths: got them for loss_type {loss_type!r}, expected 'ipo' or 'sigmoid_norm'")
        logits = ((policy_chosen_logps - ref_chosen_logps) / chosen_lengths.clamp(min=1)
                  - (policy_rejected_logps - ref_rejected_logps) / rejected_lengths.clamp(min=1))
    ones = logits.new_ones(())
    if loss_type in ("sigmoid", "sigmoid_norm"):
        losses = logistic_link(beta * logits, ones, label_smoothing=label_smoothing if loss_type == "sigmoid" else 0.0)
    elif loss_type == "hinge":
        losses = hinge_link(beta * logits, ones, delta=1.0)
    elif loss_type == "ipo":
        losses = squared_link(logits, ones, target=1.0 / (2.0 * beta))
    elif loss_type == "robust":
        losses = robust_logistic_link(beta * logits, ones, flip_rate=label_smoothing)
    elif loss_type in ("exo_pair", "nca_pair", "bco_pair", "sppo_hard", "apo_zero", "apo_down", "discopop"):
        losses = _pairwise_dpo_variant(loss_type, policy_chosen_logps - ref_chosen_logps,
                                       policy_rejected_logps - ref_rejected_logps, beta=beta,
                                       label_smoothing=label_smoothing, discopop_tau=discopop_tau, bco_delta=bco_delta)
    else:
        raise ValueError(f"dpo_loss: loss_type: got {loss_type!r}, expected one of {list(DPO_LOSS_TYPES)}")
    chosen_rewards = (beta * (policy_chosen_logps - ref_chosen_logps)).detach()
    rejected_rewards = (beta * (policy_rejected_logps - ref_rejected_logps)).detach()
    return losses, chosen_rewards, rejected_rewards


def _pairwise_dpo_variant(loss_type: str, r_w: Tensor, r_l: Tensor, *, beta: float, label_smoothing: float,
                          discopop_tau: float, bco_delta: float | Tensor) -> Tensor:
    """The pairwise TRL loss types of :func:`dpo_loss` on the log-ratios ``r_w``, ``r_l`` ``[B]``."""
    logsig = torch.nn.functional.logsigmoid
    z = beta * (r_w - r_l)
    if loss_type == "exo_pair":
        if not 0 < label_smoothing < 1:
            raise ValueError(f"dpo_loss: exo_pair: label_smoothing: got {label_smoothing!r}, expected a value in (0, 1) "
                             "(the EXO paper suggests 1e-3)")
        eps = label_smoothing
        return torch.sigmoid(z) * (logsig(z) - math.log(1 - eps)) + torch.sigmoid(-z) * (logsig(-z) - math.log(eps))
    if loss_type == "nca_pair":
        return -logsig(beta * r_w) - 0.5 * logsig(-beta * r_w) - 0.5 * logsig(-beta * r_l)
    if loss_type == "bco_pair":
        return -logsig(beta * r_w - bco_delta) - logsig(-(beta * r_l - bco_delta))
    if loss_type == "sppo_hard":
        return (r_w - 0.5 / beta) ** 2 + (r_l + 0.5 / beta) ** 2
    if loss_type == "apo_zero":
        return 1 - torch.sigmoid(beta * r_w) + torch.sigmoid(beta * r_l)
    if loss_type == "apo_down":
        return torch.sigmoid(beta * r_w) + 1 - torch.sigmoid(z)
    mix = torch.sigmoid(z / discopop_tau)  # discopop
    return (1 - mix) * -logsig(z) + mix * torch.exp(-z)


def unit_norm_penalty(embedding: Tensor) -> Tensor:
    """OPPO's regulariser on the trajectory encoder's embeddings (official code: ``MSE(‖z‖₂, 1)``): keeps them near
    the unit sphere, where the triplet margin of 1 has a fixed meaning. ``[..., D]`` -> ``[...]``: ``(‖z‖ − 1)²``."""
    return (torch.linalg.vector_norm(embedding, dim=-1) - 1.0) ** 2


def beta_prior_nll(score: Tensor, reference: Tensor | float, alpha: Tensor, beta: Tensor, *,
                   eps: float = 1e-4) -> Tensor:
    """The prior term of Diff-UAPA's maximum a posteriori objective (Diff-UAPA, NeurIPS 2025, after UA-PbRL, Xu et
    al., ICLR 2025): each trajectory's chance to be preferred, ``p = σ(score − reference)`` against a reference
    score (the official code: the batch's), has an informative prior ``Beta(α, β)``; the term is its negative log
    density ``−log Beta(p; α, β) = −(α − 1) log p − (β − 1) log(1 − p) + log B(α, β)``, with p kept in
    ``[eps, 1 − eps]`` (the official code's clamp: no gradient beyond it). A trajectory compared often, with
    consistent labels, has a sharp prior that holds its p where its record puts it; one rarely compared has
    ``α ≈ β ≈ 1``, a flat prior that leaves it to the likelihood.

    ``score`` ``[B]``, ``reference`` ``[B]`` or a scalar, ``alpha``, ``beta`` ``[B]`` (> 0) -> ``[B]``."""
    bound = math.log(1.0 / eps - 1.0)                       # logit(1 − eps)
    x = (score - reference).clamp(-bound, bound)
    log_beta_fn = torch.lgamma(alpha) + torch.lgamma(beta) - torch.lgamma(alpha + beta)
    return -((alpha - 1.0) * F.logsigmoid(x) + (beta - 1.0) * F.logsigmoid(-x)) + log_beta_fn


def beta_kl(alpha: Tensor, beta: Tensor, prior_alpha: float = 1.0, prior_beta: float = 1.0) -> Tensor:
    """``KL(Beta(α, β) ‖ Beta(α₀, β₀))`` in closed form, elementwise:
    ``log B(α₀, β₀) − log B(α, β) + (α − α₀) ψ(α) + (β − β₀) ψ(β) + (α₀ − α + β₀ − β) ψ(α + β)``."""
    a0 = torch.as_tensor(prior_alpha, dtype=alpha.dtype, device=alpha.device)
    b0 = torch.as_tensor(prior_beta, dtype=alpha.dtype, device=alpha.device)
    log_b = lambda a, b: torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)  # noqa: E731
    return (log_b(a0, b0) - log_b(alpha, beta) + (alpha - a0) * torch.digamma(alpha) + (beta - b0) * torch.digamma(beta)
            + (a0 - alpha + b0 - beta) * torch.digamma(alpha + beta))


def beta_elbo_loss(alpha_a: Tensor, beta_a: Tensor, alpha_b: Tensor, beta_b: Tensor, label: Tensor, *,
                   prior_alpha: float = 1.0, prior_beta: float = 1.0) -> Tensor:
    """The variational fit of Diff-UAPA's Beta prior (its eq. 18): each segment's chance to be preferred φ has the
    posterior ``q(φ | τ) = Beta(α_τ, β_τ)`` (a network's output); per pair, the negative ELBO
    ``−[y (E_q log φ_a + E_q log(1 − φ_b)) + (1 − y) (E_q log φ_b + E_q log(1 − φ_a))] + KL(q_a ‖ p₀) + KL(q_b ‖ p₀)``
    with ``E log φ = ψ(α) − ψ(α + β)``, ``E log(1 − φ) = ψ(β) − ψ(α + β)`` and the base ``p₀ = Beta(α₀, β₀)``
    (the paper: Beta(1, 1)). A segment often preferred gets a large α, one often rejected a large β, one seldom
    compared stays near the base.

    ``alpha_a``, ``beta_a``, ``alpha_b``, ``beta_b``, ``label`` ``[B]`` (label: P(a preferred)) -> ``[B]``."""
    y = label.to(alpha_a.dtype)
    log_phi = lambda a, b: torch.digamma(a) - torch.digamma(a + b)  # noqa: E731
    log_one_minus = lambda a, b: torch.digamma(b) - torch.digamma(a + b)  # noqa: E731
    likelihood = (y * (log_phi(alpha_a, beta_a) + log_one_minus(alpha_b, beta_b))
                  + (1.0 - y) * (log_phi(alpha_b, beta_b) + log_one_minus(alpha_a, beta_a)))
    return (-likelihood + beta_kl(alpha_a, beta_a, prior_alpha, prior_beta)
            + beta_kl(alpha_b, beta_b, prior_alpha, prior_beta))

