"""Links: compare the scores of two items with a (soft) label and return a per-example loss.

Convention everywhere: ``margin = score_a − score_b`` (or a biased variant), ``label`` in [0, 1] is the
probability that item a is preferred (1: a, 0: b, 0.5: tie). All functions return per-example losses ``[B]``
and are finite with finite gradients for margins of any size (they use softplus / logsigmoid, never
``log(sigmoid(x))``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _smooth(label: Tensor, label_smoothing: float) -> Tensor:
    return label * (1.0 - label_smoothing) + (1.0 - label) * label_smoothing


def logistic_link(margin: Tensor, label: Tensor, *, label_smoothing: float = 0.0) -> Tensor:
    """Bradley-Terry / logistic loss with soft labels (Bradley & Terry, 1952; Christiano et al., 2017).

    ``ℓ = −y' log σ(m) − (1 − y') log σ(−m) = y' softplus(−m) + (1 − y') softplus(m)`` with the smoothed label
    ``y' = y (1 − ε) + (1 − y) ε``. With y = 1 this is conservative DPO / cDPO (Mitchell, 2023).
    ``margin``, ``label`` ``[B]`` -> ``[B]``.
    """
    y = _smooth(label.to(margin.dtype), label_smoothing)
    return y * F.softplus(-margin) + (1.0 - y) * F.softplus(margin)


def hinge_link(margin: Tensor, label: Tensor, *, delta: float = 1.0) -> Tensor:
    """Hinge loss of SLiC (Zhao et al., 2023, eq. 2): ``ℓ = y max(0, δ − m) + (1 − y) max(0, δ + m)``.

    ``margin``, ``label`` ``[B]`` -> ``[B]``.
    """
    y = label.to(margin.dtype)
    return y * F.relu(delta - margin) + (1.0 - y) * F.relu(delta + margin)


def squared_link(margin: Tensor, label: Tensor, *, target: float) -> Tensor:
    """Squared loss of IPO (Azar et al., 2023, eq. 17): ``ℓ = y (m − t)² + (1 − y) (m + t)²``, t = 1/(2τ).

    ``margin``, ``label`` ``[B]`` -> ``[B]``.
    """
    y = label.to(margin.dtype)
    return y * (margin - target) ** 2 + (1.0 - y) * (margin + target) ** 2


def robust_logistic_link(margin: Tensor, label: Tensor, *, flip_rate: float) -> Tensor:
    """Unbiased logistic loss under label flips with rate ε (robust DPO, Chowdhury et al., 2024, eq. 9).

    ``ℓ = ((1 − ε) ℓ_BT(m, y) − ε ℓ_BT(m, 1 − y)) / (1 − 2ε)``, ε < 1/2. ``[B]`` -> ``[B]``.
    """
    if not 0.0 <= flip_rate < 0.5:
        raise ValueError(f"robust link: flip_rate: got {flip_rate}, expected 0 <= flip_rate < 0.5")
    y = label.to(margin.dtype)
    return ((1.0 - flip_rate) * logistic_link(margin, y) - flip_rate * logistic_link(margin, 1.0 - y)) / (1.0 - 2.0 * flip_rate)


def biased_logistic_link(score_a: Tensor, score_b: Tensor, label: Tensor, *, bias: float = 1.0) -> Tensor:
    """CPL's conservative biased Bradley-Terry (Hejna et al., 2023, eq. 6 with the λ of section 4.1).

    ``ℓ = y softplus(−(A_a − λ A_b)) + (1 − y) softplus(−(A_b − λ A_a))``; λ = 1 is plain Bradley-Terry.
    ``score_a``, ``score_b``, ``label`` ``[B]`` -> ``[B]``.
    """
    y = label.to(score_a.dtype)
    return y * F.softplus(-(score_a - bias * score_b)) + (1.0 - y) * F.softplus(-(score_b - bias * score_a))


def triplet_link(anchor: Tensor, embedding_a: Tensor, embedding_b: Tensor, label: Tensor, *,
                 margin: float = 1.0) -> Tensor:
    """OPPO's preference link (Kang et al., 2023, the preference-modelling objective): a triplet margin loss (Schroff et al., 2015) in which the
    anchor (the optimal context z*) should lie nearer the preferred item's embedding than the other's by ``margin``,
    with Euclidean distances ``d_a = ‖z* − z_a‖``, ``d_b = ‖z* − z_b‖`` (the official code's
    ``nn.TripletMarginLoss(margin=1, p=2)``, without its 1e-6 offset):
    ``ℓ = y max(0, d_a − d_b + m) + (1 − y) max(0, d_b − d_a + m)``. A tie (y = 0.5) asks for equal distances
    (its floor is m / 2; the official code leaves ties out, and so does :class:`pbrl.agents.oppo.OPPO`).

    ``anchor`` ``[B, D]`` or ``[D]`` (broadcast), ``embedding_a``, ``embedding_b`` ``[B, D]``, ``label`` ``[B]`` ->
    ``[B]``."""
    d_a = torch.linalg.vector_norm(anchor - embedding_a, dim=-1)
    d_b = torch.linalg.vector_norm(anchor - embedding_b, dim=-1)
    y = label.to(d_a.dtype)
    return y * F.relu(d_a - d_b + margin) + (1.0 - y) * F.relu(d_b - d_a + margin)


def plackett_luce_link(scores: Tensor, ranking: Tensor) -> Tensor:
    """Plackett-Luce negative log-likelihood of a ranking of K items (Plackett, 1975).

    ``scores`` ``[B, K]``; ``ranking`` ``[B, K]`` item indices from best to worst. Returns ``[B]``:
    ``−Σ_k (s_{r_k} − logsumexp_{j ≥ k} s_{r_j})``. K = 2 equals the logistic link.
    """
    ordered = scores.gather(-1, ranking.long())
    tail_lse = torch.logcumsumexp(ordered.flip(-1), dim=-1).flip(-1)
    return -(ordered - tail_lse)[..., :-1].sum(-1)


def preference_accuracy(margin: Tensor, label: Tensor) -> Tensor:
    """Share of decided pairs (label ≠ 0.5) whose ``margin = score_a − score_b`` has the label's sign: a scalar.

    ``margin`` ``[B]``, or ``[K, B]`` for an ensemble (its mean over K is used); ``label`` ``[B]``."""
    m = margin.mean(0) if margin.dim() == 2 else margin
    decided = label != 0.5
    correct = ((m > 0) == (label > 0.5)) & decided
    return correct.sum() / decided.sum().clamp_min(1)


def ranked_accuracy(model_scores: Tensor, teacher_scores: Tensor) -> Tensor:
    """Share of the pairs of a batch that the teacher orders (different scores) which the model orders the same
    way: ``model_scores``, ``teacher_scores`` ``[B]`` -> a scalar (CPL's dense regime)."""
    ordered = teacher_scores[None, :] > teacher_scores[:, None]
    return ((model_scores[None, :] > model_scores[:, None]) & ordered).sum() / ordered.sum().clamp_min(1)
