"""The preference loss core against independent float64 computations written with the math module."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pbrl.core import (
    DPO_LOSS_TYPES,
    cpl_loss,
    cpl_ranked_loss,
    cpl_score,
    dpo_loss,
    hinge_link,
    logistic_link,
    plackett_luce_link,
    ranked_accuracy,
    robust_logistic_link,
    segment_return,
    squared_link,
)


def log_sigmoid(x: float) -> float:
    """log σ(x) in plain Python, stable for any x."""
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def ref_cpl(lp_a, lp_b, y, alpha, gamma, bias, m_a=None, m_b=None) -> float:
    def score(lp, m):
        return alpha * sum(gamma**t * v for t, v in enumerate(lp) if (m is None or m[t]))

    a, b = score(lp_a, m_a), score(lp_b, m_b)
    return -y * log_sigmoid(a - bias * b) - (1 - y) * log_sigmoid(b - bias * a)


def test_cpl_loss_matches_float64_reference_with_masks_and_discount():
    g = torch.Generator().manual_seed(0)
    lp_a = -torch.rand(5, 7, generator=g, dtype=torch.float64) * 3
    lp_b = -torch.rand(5, 7, generator=g, dtype=torch.float64) * 3
    y = torch.tensor([1.0, 0.0, 0.5, 0.3, 1.0], dtype=torch.float64)
    m_a = torch.ones(5, 7, dtype=torch.bool)
    m_b = torch.ones(5, 7, dtype=torch.bool)
    m_a[1, 4:] = False
    m_b[3, 2:] = False
    got = cpl_loss(lp_a, lp_b, y, alpha=0.3, gamma=0.9, bias=0.5, mask_a=m_a, mask_b=m_b)
    for i in range(5):
        want = ref_cpl(lp_a[i].tolist(), lp_b[i].tolist(), y[i].item(), 0.3, 0.9, 0.5, m_a[i].tolist(), m_b[i].tolist())
        assert got[i].item() == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_cpl_ranked_loss_matches_the_official_sorted_all_pairs_form_in_float64():
    """jhejna/cpl's biased_bce_with_scores: sort segments by score, every pair (i < j in that order) compares
    j (preferred) with i; here written as a plain double loop in float64 with masks and discount."""
    g = torch.Generator().manual_seed(0)
    lp = -torch.rand(6, 5, generator=g, dtype=torch.float64) * 3
    mask = torch.ones(6, 5, dtype=torch.bool)
    mask[2, 3:] = False
    scores = torch.tensor([0.3, -1.0, 2.0, 0.7, 0.3, 5.0], dtype=torch.float64)  # one tie: no comparison
    got = cpl_ranked_loss(lp, scores, alpha=0.3, gamma=0.9, bias=0.5, mask=mask)
    adv = [0.3 * sum(0.9**t * lp[i, t].item() for t in range(5) if mask[i, t]) for i in range(6)]
    terms = [math.log1p(math.exp(-(adv[j] - 0.5 * adv[i]))) for i in range(6) for j in range(6)
             if scores[j] > scores[i]]
    assert len(terms) == 14 and got.item() == pytest.approx(sum(terms) / len(terms), rel=1e-12)
    assert cpl_ranked_loss(lp, torch.zeros(6, dtype=torch.float64)).item() == 0.0  # all tied: nothing to learn
    # cpl-human's D4RL recipe: the mean of the valid steps' log π instead of their sum
    steps = [int(mask[i].sum()) for i in range(6)]
    mean_adv = [adv[i] / steps[i] for i in range(6)]
    terms = [math.log1p(math.exp(-(mean_adv[j] - 0.5 * mean_adv[i]))) for i in range(6) for j in range(6)
             if scores[j] > scores[i]]
    got = cpl_ranked_loss(lp, scores, alpha=0.3, gamma=0.9, bias=0.5, mask=mask, average=True)
    assert got.item() == pytest.approx(sum(terms) / len(terms), rel=1e-12)


def test_cpl_loss_hand_derived_value():
    # A_a = 0.1 * (-1 - 1) = -0.2, A_b = 0.1 * (-2 - 2) = -0.4; y = 1, λ = 0.5:
    # ℓ = softplus(-(A_a - 0.5 A_b)) = softplus(0.2 - 0.2) = log 2
    lp_a = torch.tensor([[-1.0, -1.0]], dtype=torch.float64)
    lp_b = torch.tensor([[-2.0, -2.0]], dtype=torch.float64)
    got = cpl_loss(lp_a, lp_b, torch.tensor([1.0], dtype=torch.float64))
    assert got.item() == pytest.approx(math.log(2.0), rel=1e-14)


def test_cpl_bias_one_is_plain_bradley_terry_and_symmetric():
    lp_a, lp_b = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    y = torch.rand(4, dtype=torch.float64)
    plain = cpl_loss(lp_a, lp_b, y, bias=1.0)
    margin = cpl_score(lp_a) - cpl_score(lp_b)
    torch.testing.assert_close(plain, logistic_link(margin, y))
    torch.testing.assert_close(plain, cpl_loss(lp_b, lp_a, 1 - y, bias=1.0))


def test_masked_steps_add_nothing_even_if_infinite():
    lp = torch.tensor([[-1.0, -2.0, float("-inf"), float("nan")]])
    mask = torch.tensor([[True, True, False, False]])
    assert cpl_score(lp, alpha=1.0, mask=mask).item() == pytest.approx(-3.0)
    assert segment_return(torch.tensor([[1.0, 2.0, 1e30]]), gamma=0.5, mask=torch.tensor([[1, 1, 0]])).item() == 2.0
    loss = cpl_loss(lp, torch.zeros(1, 4), torch.ones(1), mask_a=mask, mask_b=mask)
    assert torch.isfinite(loss).all()


@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_cpl_extreme_margins_are_finite_with_finite_gradients(scale):
    lp_a = torch.full((3, 8), scale / 8, dtype=torch.float32, requires_grad=True)
    lp_b = torch.zeros(3, 8, requires_grad=True)
    loss = cpl_loss(lp_a, lp_b, torch.tensor([1.0, 0.0, 0.5]), alpha=1.0)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(lp_a.grad).all() and torch.isfinite(lp_b.grad).all()
    # float64 reference: softplus(-m) ≈ max(-m, 0) for |m| = 1e4
    m = scale
    want = [max(-m, 0.0), max(m, 0.0), 0.5 * max(-m, 0.0) + 0.5 * max(m * 0.5, 0.0) + 0.5 * math.log1p(math.exp(-abs(m)))]
    assert loss[0].item() == pytest.approx(want[0], rel=1e-6, abs=1e-3)
    assert loss[1].item() == pytest.approx(ref_cpl([m / 8] * 8, [0.0] * 8, 0.0, 1.0, 1.0, 0.5), rel=1e-6, abs=1e-3)


def ref_dpo(pc, pr, rc, rr, beta, eps, loss_type, delta=0.0, tau=0.05, len_w=None, len_l=None) -> float:
    h = (pc - rc) - (pr - rr)
    rw, rl = pc - rc, pr - rr
    if len_w is not None:  # token-averaged log-ratios (sigmoid_norm, length-normalised ipo)
        h = rw / max(len_w, 1) - rl / max(len_l, 1)
    if loss_type == "sigmoid_norm":
        return -log_sigmoid(beta * h)
    sig = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
    if loss_type == "exo_pair":
        e = eps
        z = beta * h
        return sig(z) * (log_sigmoid(z) - math.log(1 - e)) + sig(-z) * (log_sigmoid(-z) - math.log(e))
    if loss_type == "nca_pair":
        return -log_sigmoid(beta * rw) - 0.5 * log_sigmoid(-beta * rw) - 0.5 * log_sigmoid(-beta * rl)
    if loss_type == "bco_pair":
        return -log_sigmoid(beta * rw - delta) - log_sigmoid(delta - beta * rl)
    if loss_type == "sppo_hard":
        return (rw - 1 / (2 * beta)) ** 2 + (rl + 1 / (2 * beta)) ** 2
    if loss_type == "apo_zero":
        return (1 - sig(beta * rw)) + sig(beta * rl)
    if loss_type == "apo_down":
        return sig(beta * rw) + (1 - sig(beta * (rw - rl)))
    if loss_type == "discopop":
        z = beta * h
        m = sig(z / tau)
        return (1 - m) * -log_sigmoid(z) + m * math.exp(-z)
    if loss_type == "sigmoid":
        return -(1 - eps) * log_sigmoid(beta * h) - eps * log_sigmoid(-beta * h)
    if loss_type == "hinge":
        return max(0.0, 1 - beta * h)
    if loss_type == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    if loss_type == "robust":
        return (-(1 - eps) * log_sigmoid(beta * h) + eps * log_sigmoid(-beta * h)) / (1 - 2 * eps)
    raise AssertionError


@pytest.mark.parametrize("loss_type", list(DPO_LOSS_TYPES))
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_dpo_loss_types_match_float64_reference(loss_type, eps):
    if loss_type == "exo_pair" and eps == 0.0:
        eps = 1e-3  # exo_pair needs label smoothing > 0 (tested below)
    """Every TRL loss type against scalar float64 math written from the papers' equations (TRL's definitions)."""
    g = torch.Generator().manual_seed(1)
    pc, pr, rc, rr = (-torch.rand(6, generator=g, dtype=torch.float64) * 50 for _ in range(4))
    lengths = {}
    if loss_type == "sigmoid_norm":
        lengths = {"chosen_lengths": torch.tensor([3.0, 7, 1, 12, 0, 5], dtype=torch.float64),
                   "rejected_lengths": torch.tensor([9.0, 2, 4, 1, 6, 0], dtype=torch.float64)}
    losses, cr, rj = dpo_loss(pc, pr, rc, rr, beta=0.2, label_smoothing=eps, loss_type=loss_type, discopop_tau=0.07,
                              **lengths)
    delta = 0.0  # bco_pair: TRL 1.16's delta
    for i in range(6):
        lw, ll = (lengths["chosen_lengths"][i].item(), lengths["rejected_lengths"][i].item()) if lengths else (None, None)
        want = ref_dpo(pc[i].item(), pr[i].item(), rc[i].item(), rr[i].item(), 0.2, eps, loss_type, delta, 0.07, lw, ll)
        assert losses[i].item() == pytest.approx(want, rel=1e-12, abs=1e-12)
        assert cr[i].item() == pytest.approx(0.2 * (pc[i] - rc[i]).item(), rel=1e-12)
        assert rj[i].item() == pytest.approx(0.2 * (pr[i] - rr[i]).item(), rel=1e-12)
    assert not cr.requires_grad


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo", "robust"])
@pytest.mark.parametrize("gap", [1e4, -1e4])
def test_dpo_extreme_margins_finite(loss_type, gap):
    pc = torch.tensor([gap], requires_grad=True)
    zeros = torch.zeros(1)
    losses, _, _ = dpo_loss(pc, zeros, zeros, zeros, beta=1.0, label_smoothing=0.1, loss_type=loss_type)
    losses.sum().backward()
    assert torch.isfinite(losses).all() and torch.isfinite(pc.grad).all()


def test_dpo_sigmoid_at_zero_margin_is_log2_and_unknown_type_raises():
    z = torch.zeros(2)
    losses, _, _ = dpo_loss(z, z, z, z)
    torch.testing.assert_close(losses, torch.full((2,), math.log(2.0)))
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(z, z, z, z, loss_type="nope")
    with pytest.raises(ValueError, match="flip_rate"):
        dpo_loss(z, z, z, z, loss_type="robust", label_smoothing=0.5)


def test_links_soft_labels_and_smoothing():
    m = torch.tensor([0.7, -1.3], dtype=torch.float64)
    y = torch.tensor([0.8, 0.25], dtype=torch.float64)
    got = logistic_link(m, y, label_smoothing=0.1)
    for i in range(2):
        ys = y[i].item() * 0.9 + (1 - y[i].item()) * 0.1
        want = -ys * log_sigmoid(m[i].item()) - (1 - ys) * log_sigmoid(-m[i].item())
        assert got[i].item() == pytest.approx(want, rel=1e-13)
    assert hinge_link(m, torch.ones(2, dtype=torch.float64)).tolist() == pytest.approx([0.3, 2.3])
    assert squared_link(m, torch.zeros(2, dtype=torch.float64), target=0.5).tolist() == pytest.approx([1.44, 0.64])
    clean = robust_logistic_link(m, torch.ones(2, dtype=torch.float64), flip_rate=0.0)
    torch.testing.assert_close(clean, logistic_link(m, torch.ones(2, dtype=torch.float64)))


def test_robust_link_is_unbiased_under_flips():
    # E over flips of the robust loss equals the clean loss (Chowdhury et al., 2024, Lemma 3.1).
    m, eps = torch.tensor([0.9], dtype=torch.float64), 0.2
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    expected = (1 - eps) * robust_logistic_link(m, one, flip_rate=eps) + eps * robust_logistic_link(m, zero, flip_rate=eps)
    torch.testing.assert_close(expected, logistic_link(m, one))


def test_plackett_luce_two_items_is_bradley_terry_and_three_items_by_hand():
    s = torch.tensor([[0.3, -0.4]], dtype=torch.float64)
    pl = plackett_luce_link(s, torch.tensor([[0, 1]]))
    torch.testing.assert_close(pl, logistic_link(s[:, 0] - s[:, 1], torch.ones(1, dtype=torch.float64)))
    s3 = [1.0, 2.0, -0.5]
    order = [1, 0, 2]
    want = -(s3[1] - math.log(sum(math.exp(v) for v in s3)) + s3[0] - math.log(math.exp(s3[0]) + math.exp(s3[2])))
    got = plackett_luce_link(torch.tensor([s3], dtype=torch.float64), torch.tensor([order]))
    assert got.item() == pytest.approx(want, rel=1e-13)


def test_preference_accuracy_counts_decided_pairs_and_averages_an_ensemble():
    from pbrl.core import preference_accuracy

    margin = torch.tensor([1.0, -2.0, 0.5, 3.0])
    label = torch.tensor([1.0, 1.0, 0.5, 0.0])  # right, wrong, tie (ignored), wrong
    assert preference_accuracy(margin, label).item() == pytest.approx(1 / 3)
    ensemble = torch.tensor([[1.0, 1.0], [-3.0, 1.0]])  # member means: -1 and +1
    assert preference_accuracy(ensemble, torch.tensor([0.0, 1.0])).item() == 1.0


def test_ranked_accuracy_counts_the_teacher_ordered_pairs_the_model_orders_alike():
    model = torch.tensor([0.1, 0.5, -0.2, 0.5])
    teacher = torch.tensor([1.0, 3.0, 0.0, 1.0])   # pairs (0,3) tied: not counted
    ordered = [(i, j) for i in range(4) for j in range(4) if teacher[j] > teacher[i]]
    want = sum(float(model[j] > model[i]) for i, j in ordered) / len(ordered)
    assert ranked_accuracy(model, teacher).item() == pytest.approx(want) and len(ordered) == 5


def test_dpo_bco_pair_takes_a_running_mean_and_exo_needs_smoothing():
    g = torch.Generator().manual_seed(2)
    pc, pr, rc, rr = (-torch.rand(4, generator=g, dtype=torch.float64) * 20 for _ in range(4))
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type="bco_pair", bco_delta=0.3)
    for i in range(4):
        want = ref_dpo(pc[i].item(), pr[i].item(), rc[i].item(), rr[i].item(), 0.5, 0.0, "bco_pair", 0.3)
        assert losses[i].item() == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError, match="exo_pair: label_smoothing"):
        dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type="exo_pair", label_smoothing=0.0)


def test_dpo_length_normalised_ipo_and_length_errors():
    g = torch.Generator().manual_seed(3)
    pc, pr, rc, rr = (-torch.rand(5, generator=g, dtype=torch.float64) * 30 for _ in range(4))
    lw, ll = torch.tensor([4.0, 1, 9, 2, 0], dtype=torch.float64), torch.tensor([2.0, 8, 1, 3, 5], dtype=torch.float64)
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.3, loss_type="ipo", chosen_lengths=lw, rejected_lengths=ll)
    for i in range(5):
        h = (pc[i] - rc[i]).item() / max(lw[i].item(), 1) - (pr[i] - rr[i]).item() / max(ll[i].item(), 1)
        assert losses[i].item() == pytest.approx((h - 1 / 0.6) ** 2, rel=1e-12)
    with pytest.raises(ValueError, match="lengths"):
        dpo_loss(pc, pr, rc, rr, loss_type="sigmoid_norm")
    with pytest.raises(ValueError, match="one side"):
        dpo_loss(pc, pr, rc, rr, loss_type="ipo", chosen_lengths=lw)
    with pytest.raises(ValueError, match="'ipo' or 'sigmoid_norm'"):
        dpo_loss(pc, pr, rc, rr, loss_type="hinge", chosen_lengths=lw, rejected_lengths=ll)


def test_triplet_link_and_the_norm_penalty_against_float64_and_torchs_triplet_loss():
    """OPPO's link against a numpy float64 computation on random inputs (soft labels, a broadcast anchor), against
    ``torch.nn.functional.triplet_margin_loss`` on hard labels (which adds 1e-6 inside its distances), and its
    gradient direction: the anchor moves toward the preferred embedding."""
    from pbrl.core import triplet_link, unit_norm_penalty

    rng = np.random.default_rng(0)
    anchor, za, zb = (rng.standard_normal(s) for s in ((8,), (64, 8), (64, 8)))
    label = rng.choice([0.0, 1.0, 0.5, 0.3], 64)
    d_a, d_b = np.linalg.norm(anchor - za, axis=-1), np.linalg.norm(anchor - zb, axis=-1)
    want = label * np.maximum(d_a - d_b + 1.0, 0) + (1 - label) * np.maximum(d_b - d_a + 1.0, 0)
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    got = triplet_link(t(anchor), t(za), t(zb), t(label), margin=1.0)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
    hard = label.round() == label
    hard &= label != 0.5
    pos = np.where(label[:, None] == 1.0, za, zb)[hard]
    neg = np.where(label[:, None] == 1.0, zb, za)[hard]
    peer = torch.nn.functional.triplet_margin_loss(t(np.broadcast_to(anchor, pos.shape).copy()), t(pos), t(neg),
                                                   margin=1.0, reduction="none")
    torch.testing.assert_close(got[torch.as_tensor(hard)], peer, rtol=0, atol=1e-5)
    a = t(anchor).requires_grad_()
    triplet_link(a, t(za[:1]), t(zb[:1]), t([1.0]), margin=100.0).sum().backward()
    step = -a.grad
    assert float(step @ t(za[0] - anchor)) > 0          # toward the preferred
    z = rng.standard_normal((5, 3))
    np.testing.assert_allclose(unit_norm_penalty(t(z)).numpy(), (np.linalg.norm(z, axis=-1) - 1) ** 2, rtol=1e-12)


def test_beta_prior_term_against_scipys_beta_density_in_float64():
    """Diff-UAPA's MAP prior term is −log Beta(σ(s − s̄); α, β) (scipy.stats.beta.logpdf), clamped at eps; its
    gradient pulls σ(s − s̄) toward the prior's mode (α − 1) / (α + β − 2)."""
    from scipy.stats import beta as beta_dist

    from pbrl.core import beta_prior_nll

    rng = np.random.default_rng(1)
    score, ref = rng.normal(0, 2, 50), rng.normal(0, 1, 50)
    a, b = rng.uniform(0.5, 8, 50), rng.uniform(0.5, 8, 50)
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    got = beta_prior_nll(t(score), t(ref), t(a), t(b), eps=1e-4)
    p = np.clip(1 / (1 + np.exp(-(score - ref))), 1e-4, 1 - 1e-4)
    np.testing.assert_allclose(got.numpy(), -beta_dist.logpdf(p, a, b), rtol=1e-10)
    s = t([0.0]).requires_grad_()
    beta_prior_nll(s, 0.0, t([6.0]), t([2.0])).sum().backward()   # mode 5/6 > 0.5: raise the score
    assert s.grad.item() < 0
    flat = beta_prior_nll(t([3.0, -3.0]), 0.0, t([1.0, 1.0]), t([1.0, 1.0]))
    torch.testing.assert_close(flat, torch.zeros(2, dtype=torch.float64))   # Beta(1, 1): no pull at all


def test_beta_elbo_and_kl_against_scipy_integrals_in_float64():
    """Diff-UAPA's variational fit: the Beta KL against numerical integration of the two densities, and the negative
    ELBO against E_q[log φ] and E_q[log(1 − φ)] integrated numerically (scipy.integrate.quad)."""
    from scipy.integrate import quad
    from scipy.stats import beta as beta_dist

    from pbrl.core import beta_elbo_loss, beta_kl

    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    for a, b, a0, b0 in ((2.5, 1.3, 1.0, 1.0), (0.7, 4.0, 2.0, 3.0), (9.0, 9.0, 1.0, 1.0)):
        kl = quad(lambda x, a=a, b=b, a0=a0, b0=b0: beta_dist.pdf(x, a, b) * (beta_dist.logpdf(x, a, b)
                                                                      - beta_dist.logpdf(x, a0, b0)), 0, 1, limit=200)[0]
        assert beta_kl(t(a), t(b), a0, b0).item() == pytest.approx(kl, rel=1e-6, abs=1e-9)
    expect = lambda f, a, b: quad(lambda x: beta_dist.pdf(x, a, b) * f(x), 0, 1, limit=200)[0]  # noqa: E731
    aa, ba, ab, bb, y = 3.0, 1.5, 0.8, 2.2, 0.7
    want = (-(y * (expect(np.log, aa, ba) + expect(lambda x: np.log1p(-x), ab, bb))
              + (1 - y) * (expect(np.log, ab, bb) + expect(lambda x: np.log1p(-x), aa, ba)))
            + beta_kl(t(aa), t(ba)).item() + beta_kl(t(ab), t(bb)).item())
    got = beta_elbo_loss(t([aa]), t([ba]), t([ab]), t([bb]), t([y]))
    assert got.item() == pytest.approx(want, rel=1e-6)
    # descent on a pair that prefers a: α_a rises against β_a
    params = t([1.0, 1.0]).requires_grad_()
    beta_elbo_loss(params[:1], params[1:], t([1.0]), t([1.0]), t([1.0])).sum().backward()
    assert params.grad[0] < 0 < params.grad[1]
