"""IQL's losses (pbrl.core.offline_rl) against float64 references written with the math module, and the
expectile loss's defining property on a known distribution."""

from __future__ import annotations

import math

import pytest
import torch

from pbrl.core import advantage_weights, awr_actor_loss, expectile_loss, td_target, twin_q_loss


def ref_expectile(u: float, tau: float) -> float:
    return (tau if u >= 0 else 1.0 - tau) * u * u


def test_iql_losses_match_float64_references():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(64, generator=g, dtype=torch.float64) * 3
    for tau in (0.5, 0.7, 0.9):
        got = expectile_loss(u.float(), tau)
        want = torch.tensor([ref_expectile(x, tau) for x in u.tolist()], dtype=torch.float64)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    r, d, nv = torch.randn(16, generator=g), (torch.rand(16, generator=g) < 0.3).float(), torch.randn(16, generator=g)
    want = [ri + 0.99 * (1 - di) * vi for ri, di, vi in zip(r.tolist(), d.tolist(), nv.tolist())]
    torch.testing.assert_close(td_target(r, d, nv, 0.99).double(), torch.tensor(want, dtype=torch.float64))
    q1, q2, t = (torch.randn(16, generator=g) for _ in range(3))
    want = [0.5 * ((a - c) ** 2 + (b - c) ** 2) for a, b, c in zip(q1.tolist(), q2.tolist(), t.tolist())]
    torch.testing.assert_close(twin_q_loss(q1, q2, t).double(), torch.tensor(want, dtype=torch.float64))
    adv, logp = torch.randn(16, generator=g) * 3, torch.randn(16, generator=g)
    want = [-min(math.exp(3.0 * a), 100.0) * lp for a, lp in zip(adv.tolist(), logp.tolist())]
    torch.testing.assert_close(awr_actor_loss(logp, adv, 3.0, 100.0).double(), torch.tensor(want, dtype=torch.float64),
                               rtol=1e-5, atol=1e-5)
    assert advantage_weights(torch.tensor([10.0]), 3.0, 100.0).item() == 100.0  # clipped


def test_actor_loss_sends_no_gradient_into_the_advantage():
    adv = torch.tensor([0.5, -1.0], requires_grad=True)
    logp = torch.tensor([-1.0, -2.0], requires_grad=True)
    awr_actor_loss(logp, adv, 3.0).sum().backward()
    assert adv.grad is None and logp.grad is not None


def float64_expectile(samples: list[float], tau: float) -> float:
    """The τ-expectile by bisection on its first-order condition τ E[(y − v)+] = (1 − τ) E[(v − y)+]."""
    lo, hi = min(samples), max(samples)
    for _ in range(200):
        v = 0.5 * (lo + hi)
        above = sum(y - v for y in samples if y > v)
        below = sum(v - y for y in samples if y < v)
        lo, hi = (v, hi) if tau * above > (1 - tau) * below else (lo, v)
    return 0.5 * (lo + hi)


def fit_scalar(samples: torch.Tensor, tau: float, loss=expectile_loss) -> float:
    v = torch.zeros((), requires_grad=True)
    opt = torch.optim.Adam([v], lr=0.05)
    for _ in range(2000):
        opt.zero_grad()
        loss(samples - v, tau).mean().backward()
        opt.step()
    return v.item()


@pytest.mark.parametrize("tau", [0.5, 0.7, 0.9])
def test_minimising_the_expectile_loss_finds_the_expectile(tau):
    # exponential(1) samples: skewed, so the expectiles differ from the mean and from each other
    samples = -torch.log(torch.rand(4000, generator=torch.Generator().manual_seed(1)))
    want = float64_expectile(samples.double().tolist(), tau)
    assert fit_scalar(samples, tau) == pytest.approx(want, abs=0.02)
    if tau == 0.5:
        assert want == pytest.approx(samples.double().mean().item(), abs=1e-6)
    if tau == 0.9:
        assert want > float64_expectile(samples.double().tolist(), 0.7) > samples.mean().item()


def test_a_flipped_expectile_weight_fails_the_check():
    """The known-bad variant (weights swapped) finds the (1 − τ)-expectile: the test above would catch it."""
    samples = -torch.log(torch.rand(4000, generator=torch.Generator().manual_seed(1)))
    flipped = lambda u, tau: torch.where(u < 0, tau, 1.0 - tau) * u**2  # noqa: E731
    want = float64_expectile(samples.double().tolist(), 0.9)
    assert abs(fit_scalar(samples, 0.9, flipped) - want) > 0.5
