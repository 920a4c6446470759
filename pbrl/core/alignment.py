"""Sequence-level objectives built on DPO's implicit reward: weights, token-level guidance, shaping, regression,
mixtures, Pareto weights, rejection sampling and the PPO pieces of RTO. Pure tensor functions.

Notation: ``u_t = log π(y_t|x, y_<t) − log π_ref(y_t|x, y_<t)`` is a token's log-ratio, ``r = Σ_t u_t`` a sequence's,
``h = r_w − r_l`` the pair's margin; per-token tensors are ``[B, T]`` with a ``[B, T]`` mask (1 on completion tokens).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pbrl.core.losses import dpo_loss

__all__ = ["gae_advantages", "inverse_soft_q_loss", "irepo_loss", "is_daa_loss", "is_daa_weights", "micro_mixture_loss",
           "pama_advantage", "potential_shaping", "ppo_clip_loss", "rso_accept", "rto_token_rewards", "soft_value",
           "teacher_bucket_log_probs", "tgdpo_loss", "tvkd_loss", "tvkd_qadapter_loss",
           "tvkd_qadapter_return"]


def is_daa_weights(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, data_chosen_logps: Tensor,
                   data_rejected_logps: Tensor, *, epsilon: float = 1.0) -> Tensor:
    """IS-DAA's clipped importance weights (Nguyen et al., 2025, "Mitigating Reward Over-Optimization in Direct
    Alignment Algorithms with Importance Sampling", arXiv 2506.08681; official code ``mail-research/AIS-Sampling4DAAs``,
    ``cli/train_is_dpo.py``).

    ``w = exp(min(log π(y_w|x) − log π_D(y_w|x) + log π(y_l|x) − log π_D(y_l|x), 2ε))``, without gradient, with π_D
    the policy that generated the pairs: the official code reads its stored log-probs (the dataset's
    ``chosen_logps`` / ``rejected_logps``) and falls back to the reference's when a dataset has none, as in its
    launched run. Pairs the policy has made likelier than π_D did count more, up to the clip; pairs it has moved
    away from count less. Clipped above only, no normalisation over the batch. Default ε = 1.0 (the official
    launch script; its config's default is 0.25). All inputs ``[B]`` summed log-probabilities; returns ``[B]``.
    """
    with torch.no_grad():
        log_ratio = (policy_chosen_logps - data_chosen_logps) + (policy_rejected_logps - data_rejected_logps)
        return torch.exp(torch.clamp(log_ratio, max=2.0 * epsilon))


def is_daa_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
                ref_rejected_logps: Tensor, data_chosen_logps: Tensor, data_rejected_logps: Tensor, *,
                beta: float = 0.05, epsilon: float = 1.0, loss_type: str = "ipo") -> Tensor:
    """IS-DAA's trained loss: a DAA's per-pair loss times :func:`is_daa_weights` (the paper's eq. 9 with the weight of
    eq. 8). The official code trains ``loss_type = "ipo"`` on summed log-ratios, ``w (h − 1/(2β))²`` with
    ``h = (log π − log π_ref)(y_w) − (log π − log π_ref)(y_l)`` (``cli/train_is_dpo.py``: its DPO line is commented
    out), at β 0.05 and ε 1.0 (``scripts/train_IS/train_is_dpo.sh``); ``"sigmoid"`` gives the DPO form
    ``−w log σ(β h)``, and any other :func:`pbrl.core.dpo_loss` type is weighted the same way. Inputs ``[B]``
    (``data_*``: the log-probs of the policy that generated the pairs, or the reference's); returns ``[B]``.
    """
    losses, _, _ = dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                            beta=beta, loss_type=loss_type)
    return losses * is_daa_weights(policy_chosen_logps, policy_rejected_logps, data_chosen_logps, data_rejected_logps,
                                   epsilon=epsilon)


def tgdpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
               guide_chosen: Tensor, guide_rejected: Tensor, mask_chosen: Tensor, mask_rejected: Tensor, *,
               beta: float = 0.1, alpha: float = 0.5, weight_clip: float | None = None) -> Tensor:
    """TGDPO (Zhu et al., ICML 2025, "Harnessing Token-Level Reward Guidance for Enhancing DPO", arXiv 2506.14574;
    official code ``dvlab-research/TGDPO``).

    A guide policy π_g (DPO-trained) gives token rewards ``r̂_t = β (log π_g(y_t) − log π_ref(y_t))`` (no gradient),
    which scale each token's β: chosen tokens by ``1 + α r̂_t``, rejected ones by ``1 − α r̂_t``:

    ``ℓ = −log σ(Σ_t β (1 + α r̂^w_t) u^w_t − Σ_t β (1 − α r̂^l_t) u^l_t)``.

    With α = 0 this is DPO. ``weight_clip`` = c (an option; the paper's code and the default do not clamp) clamps
    each token's multiplier ``1 ± α r̂_t`` to ``[max(0, 1 − c), 1 + c]``, so that a guide whose token rewards fall
    below −1/α cannot turn a multiplier negative. It does not cure what TGDPO does on pbrl's grammar: the margin is
    DPO's plus ``β α Σ_t r̂_t u_t`` over both completions, linear and unbounded in u, and the policy degenerates
    even with multipliers in [0.68, 1.32] (docs/benchmarks.md, issue 16).
    Inputs: per-token log-probabilities ``[B, T]`` of the policy, reference and guide on the chosen and rejected
    completions, and their masks. Returns ``[B]``.
    """
    def weighted(policy: Tensor, ref: Tensor, guide: Tensor, mask: Tensor, sign: float) -> Tensor:
        multiplier = 1.0 + sign * alpha * (beta * (guide - ref)).detach()
        if weight_clip is not None:
            multiplier = multiplier.clamp(min=max(0.0, 1.0 - weight_clip), max=1.0 + weight_clip)
        return (beta * multiplier * (policy - ref) * mask).sum(-1)

    margin = (weighted(policy_chosen, ref_chosen, guide_chosen, mask_chosen, 1.0)
              - weighted(policy_rejected, ref_rejected, guide_rejected, mask_rejected, -1.0))
    return F.softplus(-margin)


def soft_value(logits: Tensor, *, tau: float = 1.0) -> Tensor:
    """The soft value of a state whose action values are ``logits`` ``[..., V]``: ``τ log Σ_a exp(Q(s, a)/τ)``
    (the logits of an LM read as soft Q-values, as in inverse soft-Q learning). Returns ``[...]``."""
    return tau * torch.logsumexp(logits / tau, dim=-1)


def potential_shaping(potential: Tensor, mask: Tensor, *, gamma: float = 1.0) -> Tensor:
    """Potential-based shaping (Ng et al., 1999), summed over a completion: ``Σ_t (γ Φ(s_{t+1}) − Φ(s_t))``, with
    ``Φ(s_t)`` the potential of the state before token t (``potential`` ``[B, T]``, read where ``mask`` is 1) and
    Φ = 0 after the last token (terminal). Returns ``[B]``."""
    phi = potential * mask
    following = torch.cat([phi[:, 1:], torch.zeros_like(phi[:, :1])], dim=1) * mask
    return ((gamma * following - phi) * mask).sum(-1)


def tvkd_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
              teacher_value_chosen: Tensor, teacher_value_rejected: Tensor, mask_chosen: Tensor, mask_rejected: Tensor,
              *, beta: float = 0.1, alpha: float = 1.0, gamma: float = 0.7) -> Tensor:
    """TVKD (Kwon et al., NeurIPS 2025, "Preference Distillation via Value-based Reward Shaping", arXiv 2509.16965).

    DPO whose implicit sequence reward gains a potential-based shaping term from a teacher's soft value
    ``V_T(s_t)`` (see :func:`soft_value`; the teacher is a larger DPO-trained model):

    ``R(y) = β Σ_t u_t + α Σ_t (γ V_T(s_{t+1}) − V_T(s_t))``,  ``ℓ = −log σ(R(y_w) − R(y_l))``.

    Shaping keeps the optimal policy of the shaped problem (Ng et al., 1999) while giving each token the teacher's
    judgement of where it leads. With γ = 1 the sum telescopes to ``−V_T(s_0)``, equal for both completions of a
    pair, so the term needs γ < 1 to act; default γ = 0.7 (the official code's ``tpkd`` branch). The paper's own
    equation could not be read here: this is pbrl's reading of its abstract and code.

    Inputs ``[B, T]`` (values of the state before each completion token, no gradient). Returns ``[B]``.
    """
    def shaped(policy: Tensor, ref: Tensor, value: Tensor, mask: Tensor) -> Tensor:
        return beta * ((policy - ref) * mask).sum(-1) + alpha * potential_shaping(value.detach(), mask, gamma=gamma)

    return F.softplus(-(shaped(policy_chosen, ref_chosen, teacher_value_chosen, mask_chosen)
                        - shaped(policy_rejected, ref_rejected, teacher_value_rejected, mask_rejected)))


def teacher_bucket_log_probs(student_logits: Tensor, teacher_top_k: Tensor, *, floor: float = 1e-8) -> Tensor:
    """The student's next-token distribution coarsened onto a teacher's top-k tokens: its probabilities at the
    teacher's ``K`` indices and one more bucket for the rest of the vocabulary (``1 − Σ``), clamped to
    ``[floor, 1 − floor]``, as logs (TVKD's official ``load_input_and_target_probs_fast``; it stores the teacher's
    top 50). ``student_logits`` ``[B, T, V]`` (with gradient), ``teacher_top_k`` ``[B, T, K]`` token ids; returns
    ``[B, T, K + 1]``."""
    probs = torch.softmax(student_logits, dim=-1)
    top = probs.gather(-1, teacher_top_k)
    buckets = torch.cat([top, 1.0 - top.sum(-1, keepdim=True)], dim=-1)
    return torch.log(buckets.clamp(min=floor, max=1.0 - floor))


def tvkd_qadapter_return(student_logits: Tensor, labels: Tensor, teacher_top_k: Tensor, mask: Tensor, *,
                         gamma: float = 1.0) -> Tensor:
    """TVKD's trained sequence score (Kwon et al., NeurIPS 2025, arXiv 2509.16965; the official ``qadapter`` branch
    of ``scripts/run_distill_dpo.py`` with ``qadapter_softvalue_type: entropy``, which ``TVKD.yaml`` trains).

    With ``q_t = log p̃_θ(·|s_t)`` the student's bucketed log-probabilities (:func:`teacher_bucket_log_probs`), a
    token's reward is its bucket's log-probability less γ times the entropy of the next state's buckets:

    ``R(y) = Σ_t [q_t(b(y_t)) − γ H(p̃_θ(·|s_{t+1}))]``, H = 0 after the last token,

    where ``b(y_t)`` is ``y_t``'s bucket (the rest bucket when the teacher's top-k lacks it). Both terms depend on θ:
    the teacher enters only through which tokens are bucketed. No reference model, no β. Default γ = 1
    (``qadapter_gamma``'s default; the recipe does not set it). Inputs: logits ``[B, T, V]``, ``labels`` ``[B, T]``
    (the token predicted at each position), ``teacher_top_k`` ``[B, T, K]``, ``mask`` ``[B, T]``; returns ``[B]``.
    """
    q = teacher_bucket_log_probs(student_logits, teacher_top_k)
    k = teacher_top_k.shape[-1]
    match = teacher_top_k == labels.unsqueeze(-1)
    bucket = torch.where(match.any(-1), match.float().argmax(-1), torch.full_like(labels, k))
    q_label = q.gather(-1, bucket.unsqueeze(-1)).squeeze(-1)
    entropy = -(q.exp() * q).sum(-1) * mask
    next_entropy = torch.cat([entropy[:, 1:], torch.zeros_like(entropy[:, :1])], dim=1)
    return ((q_label - gamma * next_entropy) * mask).sum(-1)


def tvkd_qadapter_loss(return_chosen: Tensor, return_rejected: Tensor) -> Tensor:
    """TVKD's official pairwise loss on :func:`tvkd_qadapter_return` scores: ``−log σ(R(y_w) − R(y_l))`` (the branch's
    two-way cross-entropy with the chosen completion as the target). Inputs ``[B]``; returns ``[B]``."""
    return F.softplus(-(return_chosen - return_rejected))


def irepo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
               ref_rejected_logps: Tensor, preference: Tensor, *, beta: float = 0.1) -> Tensor:
    """iREPO (Le et al., 2024, "implicit Reward pairwise difference regression for Empirical Preference
    Optimization", arXiv 2405.15230): regress the implicit reward gap on the logit of the empirical preference
    ``p̂`` (the share of annotators who prefer ``y_w``; in (0, 1), e.g. smoothed as (k + ½)/(n + 1)):

    ``ℓ = (β h − log(p̂ / (1 − p̂)))²``.

    Under Bradley-Terry, logit p̂ estimates the true reward gap, so the implicit reward matches it in scale, not only
    in sign. Inputs ``[B]``; returns ``[B]``.
    """
    margin = beta * ((policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps))
    target = torch.logit(preference.to(margin.dtype))
    return (margin - target) ** 2


def micro_mixture_loss(rewards_chosen: Tensor, rewards_rejected: Tensor, router_logits: Tensor, *,
                       balance: float = 0.5) -> tuple[Tensor, Tensor]:
    """MiCRo (Shen et al., 2025, "Mixture Modeling and Context-aware Routing for Personalized Preference Learning",
    arXiv 2505.24846; official code ``MaxwellJryao/MiCRo``): a mixture of K Bradley-Terry reward heads whose
    weights a router computes from the context (the prompt):

    ``ℓ = −log Σ_k w_k(x) σ(r_k(x, y_w) − r_k(x, y_l))``, ``w(x) = softmax(router_logits)``,

    plus a load-balancing regulariser ``λ Σ_k w̄_k log w̄_k`` on the batch's mean routing ``w̄`` (it keeps every head
    in use; its minimum is the uniform use of the heads). Inputs ``[B, K]``; returns (``[B]`` mixture losses, the
    scalar regulariser, to be added once per batch).
    """
    log_w = torch.log_softmax(router_logits, dim=-1)
    mixture = -torch.logsumexp(log_w + F.logsigmoid(rewards_chosen - rewards_rejected), dim=-1)
    mean_w = log_w.exp().mean(0)
    regulariser = balance * (mean_w * torch.log(mean_w.clamp(min=1e-12))).sum()
    return mixture, regulariser


def pama_advantage(advantages: Tensor) -> Tensor:
    """PAMA's closed-form multi-objective advantage (He & Maghsudi, ECML-PKDD 2025, "Pareto Multi-Objective
    Alignment for Language Models", arXiv 2508.07768, Theorem 1).

    MGDA's min-norm problem over the simplex, ``min_c ‖Σ_i c_i A_i‖²`` on the objectives' advantages, has the
    O(n) solution ``s* = Σ_i c_i A_i`` = 0 projected on ``[min_i A_i, max_i A_i]``: 0 when the objectives disagree
    in sign (no common ascent direction: Pareto-stationary), otherwise the advantage of the objective nearest zero.
    ``advantages`` ``[n, ...]``; returns ``[...]``.
    """
    low = advantages.min(dim=0).values
    high = advantages.max(dim=0).values
    return torch.clamp(torch.zeros_like(low), min=low, max=high)


def rso_accept(rewards: Tensor, *, beta: float, accept: int, generator: torch.Generator | None = None,
               reward_bound: float | None = None) -> Tensor:
    """RSO's statistical rejection sampling (Liu et al., ICLR 2024, arXiv 2309.06657, Algorithm 1).

    Candidates drawn from π_SFT with rewards ``rewards`` ``[N]`` are accepted so that accepted ones follow the
    optimal policy ``π_r(y) ∝ π_SFT(y) exp(r(y)/β)``: in passes over the remaining candidates, each is accepted
    with probability ``exp((r − r_max)/β)``; accepted ones leave the pool, until ``accept`` are taken (or none
    remain). Returns the accepted indices in acceptance order.

    ``r_max`` is the paper's: the highest reward among the remaining candidates, which makes the result exact only
    as N grows (with few candidates the best outcome may be missing and the next best is over-accepted; measured
    in ``tests/test_sequence.py``). Where an upper bound of the reward is known, ``reward_bound`` uses it instead
    and the first pass is textbook rejection sampling, exact for any N.
    """
    remaining = torch.arange(rewards.numel())
    taken: list[Tensor] = []
    count = 0
    while count < accept and remaining.numel():
        r = rewards[remaining].double()
        top = r.max() if reward_bound is None else torch.as_tensor(reward_bound, dtype=torch.float64)
        u = torch.rand(remaining.numel(), generator=generator, dtype=torch.float64)
        ok = u < torch.exp((r - top) / beta)
        picked = remaining[ok][: accept - count]
        taken.append(picked)
        count += picked.numel()
        keep = torch.ones_like(remaining, dtype=torch.bool)
        keep[torch.nonzero(ok).flatten()[: picked.numel()]] = False
        remaining = remaining[keep]
        if reward_bound is not None:
            break
    return torch.cat(taken) if taken else torch.zeros(0, dtype=torch.long)


def inverse_soft_q_loss(logits: Tensor, tokens: Tensor, mask: Tensor, *, td_weight: float = 0.1,
                        gamma: float = 1.0) -> Tensor:
    """Inverse soft-Q imitation for LMs (Wulfmeier et al., NeurIPS 2024, "Imitating Language via Scalable Inverse
    Reinforcement Learning", eq. 14: offline IQ-Learn with the logits as Q).

    With ``Q(s_t, ·)`` = the logits before token t, ``V(s) = logsumexp_a Q(s, a)``, ``log π = Q − V`` and V = 0
    after the last token (terminal):

    ``J = mean_t [λ (Q(s_t, y_t) − γ V(s_{t+1}))² − log π(y_t|s_t)]``;

    the squared term is the implicit reward ``V(s_t) + log π(y_t|s_t) − γ V(s_{t+1})``, kept near 0 (the χ²
    regulariser of IQ-Learn). λ = 0 is MLE. ``logits`` ``[B, T, V]``, ``tokens``, ``mask`` ``[B, T]``; returns the
    scalar mean over completion tokens.
    """
    mask = mask.to(logits.dtype)
    q = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    v = torch.logsumexp(logits, dim=-1)
    v_next = torch.cat([v[:, 1:], torch.zeros_like(v[:, :1])], dim=1) * torch.cat(
        [mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)
    per_token = td_weight * (q - gamma * v_next) ** 2 - (q - v)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def rto_token_rewards(dpo_log_ratio: Tensor, policy_log_ratio: Tensor, sequence_reward: Tensor, mask: Tensor, *,
                      beta_dpo: float = 0.05, beta_kl: float = 0.01, clip: float = 0.0) -> Tensor:
    """RTO's token rewards (Zhong et al., ICML 2025, "DPO Meets PPO: Reinforced Token Optimization for RLHF",
    arXiv 2404.18922; official code ``zkshan2002/RTO``):

    ``r_t = clip(β₁ (log π_dpo(y_t) − log π_ref(y_t)), ±c) − β₂ (log π(y_t) − log π_ref(y_t)) + [t = last] r(x, y)``

    (c = 0: no clip). Inputs ``[B, T]`` log-ratios and mask, ``[B]`` sequence rewards; returns ``[B, T]`` (0 off mask).
    """
    dpo = beta_dpo * dpo_log_ratio
    if clip > 0:
        dpo = dpo.clamp(-clip, clip)
    last = F.one_hot((mask.cumsum(-1) * mask).argmax(-1), mask.shape[-1]).to(dpo.dtype)
    return (dpo - beta_kl * policy_log_ratio + last * sequence_reward.unsqueeze(-1)) * mask


def gae_advantages(rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float = 1.0,
                   lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al., 2016) over token positions, right-padded: after the last
    masked-in token the value is 0 (the episode ends). ``[B, T]`` -> (advantages, returns), each ``[B, T]``."""
    mask = mask.to(rewards.dtype)
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] * mask[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def ppo_clip_loss(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, *, clip: float = 0.2) -> Tensor:
    """PPO's clipped surrogate (Schulman et al., 2017, eq. 7), per token, averaged over masked-in tokens:
    ``−min(ρ A, clip(ρ, 1 − ε, 1 + ε) A)``, ``ρ = exp(log π − log π_old)``. ``[B, T]`` -> scalar."""
    ratio = torch.exp(logps - old_logps)
    surrogate = torch.minimum(ratio * advantages, torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * advantages)
    mask = mask.to(logps.dtype)
    return -(surrogate * mask).sum() / mask.sum().clamp(min=1)

