"""Diff-UAPA, uncertainty-aware preference alignment of diffusion policies (NeurIPS 2025; official code
``mr20010112/Diff_UAPA``), built on UA-PbRL's Beta prior (Xu et al., ICLR 2025).

A diffusion policy is pre-trained by BC (``bc_steps``, the DDPM objective on the pairs' segments); its weights at the
switch become the frozen reference. Alignment then scores each segment through the diffusion chain against the
reference on a shared draw (:func:`pbrl.nets.diffusion.draw_chain`: the same steps and noise for both models),
``A(τ) = β Σ_chunks γ^t · (−(H·da)) (e_θ − e_ref)`` (Diffusion-DPO's implicit reward on CPL's regret score, the
paper's eq. 12), and maximises the posterior of the labels:

- the likelihood: the core's (biased) logistic link on ``A(τ_a)`` and ``A(τ_b)`` (``bias`` 1: the paper's
  Bradley-Terry; the official code's 0.25 keeps more of the rejected segment's score);
- the prior (the paper's eqs. 14-17): each segment's chance to beat the average, ``φ = σ(A(τ) − Ā)`` (Ā: the batch's
  mean score, held fixed), has the density ``Beta(φ; α + 1, β + 1)`` (:func:`pbrl.core.beta_prior_nll`), so a
  trajectory with a consistent record is held near it and a rarely compared one is left to the likelihood. α, β:
  ``variational`` (the paper's eq. 18: a Beta network ``q(φ | τ)`` fitted by :func:`pbrl.core.beta_elbo_loss` on the
  labelled pairs during the warm start, and on each round's pairs where ``prior_update=rounds``), ``counting`` (the
  released code's estimate: α = Σ P(win), β = Σ (1 − P) of the segment's episode over the labels, from
  :class:`~pbrl.agents.base.DataSpec`, processed as that code does: :func:`counted_beta_parameters`), or ``none``.

**Iterative alignment over user groups** (``rounds=groups``): after the warm start, one annotator group per round of
``round_steps`` steps, in ascending group id, the optimiser's moments reset at each round (the paper resets the
learning rate); ``prior_update=rounds`` lets the prior see only the groups met so far (the paper's Diff-UAPA-I),
``once`` every group from the start (Diff-UAPA-C). ``rounds=all`` aligns on every group at once. A dataset without
group ids is one group."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from pbrl.agents.base import BatchSpec, DataSpec, LossOutput, masked_mean
from pbrl.agents.bc import BC, BCConfig
from pbrl.core import beta_elbo_loss, beta_prior_nll, biased_logistic_link, masked_discounted_sum, preference_accuracy
from pbrl.core.training import OptimizerSpec
from pbrl.data.preferences import PreferenceBatch
from pbrl.errors import ConfigError, describe
from pbrl.fields import param
from pbrl.nets.diffusion import chain_log_prob, diffusion_windows, draw_chain
from pbrl.nets.transformer import CausalTransformer

PRIORS = ("variational", "counting", "none")
ROUND_MODES = ("groups", "all")
PRIOR_UPDATES = ("rounds", "once")


@dataclass
class DiffUAPAConfig(BCConfig):
    beta: float = param(1.0, gt=0)                # β of the chain score
    gamma: float = param(1.0, gt=0, le=1)         # discount over a segment's steps
    bias: float = param(1.0, gt=0, le=1)          # λ on the rejected segment's score (1: logistic; official 0.25)
    bc_steps: int = param(0, ge=0)                # BC warm start; its last weights become the reference
    bc_weight: float = param(0.0, ge=0)           # BC term kept after the warm start (official code: 1 + 2·0.25)
    prior: str = param("variational", choices=PRIORS)
    prior_weight: float = param(1.0, ge=0)        # the paper: 1; the official code: 0.25
    prior_update: str = param("rounds", choices=PRIOR_UPDATES)
    rounds: str = param("groups", choices=ROUND_MODES)
    round_steps: int = param(1, ge=1)             # steps per group round (rounds=groups)
    reset_each_round: bool = True                 # fresh AdamW moments at each round's start
    prior_dim: int = param(64, ge=4, le=4096)     # the Beta network: a causal trunk of this width
    prior_layers: int = param(1, ge=1, le=64)
    prior_heads: int = param(2, ge=1, le=64)
    prior_lr: float | None = param(None, gt=0)    # None: train.lr

    budget_phases: ClassVar[tuple[str, ...]] = ("bc_steps", "round_steps")
    warm_start: ClassVar[str | None] = "bc_steps"

    def check(self) -> tuple[str, str, str] | None:
        if (self.backbone or "mlp") != "diffusion":
            return "backbone", repr(self.backbone), "'diffusion' (Diff-UAPA aligns a diffusion policy)"
        if self.prior_dim % self.prior_heads:
            return "prior_heads", repr(self.prior_heads), f"a divisor of prior_dim ({self.prior_dim})"
        return super().check()


class BetaNetwork(nn.Module):
    """``q(φ | τ) = Beta(α_τ, β_τ)`` of a segment (the paper's transformer f_ξ): the causal trunk read at the last real
    step, then softplus heads. ``(obs [..., T, do], act [..., T, da], timestep [..., T], mask [..., T]) -> (α, β)``,
    each ``[...]`` and above 1e-3."""

    def __init__(self, obs_dim: int, act_dim: int, *, dim: int, layers: int, heads: int, obs_mean: Tensor,
                 obs_std: Tensor):
        super().__init__()
        self.trunk = CausalTransformer(obs_dim, act_dim, dim=dim, layers=layers, heads=heads, obs_mean=obs_mean,
                                       obs_std=obs_std)
        self.head = nn.Linear(dim, 2)

    def forward(self, obs: Tensor, act: Tensor, timestep: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        lead, t = obs.shape[:-2], obs.shape[-2]
        flat = lambda x: x.reshape(-1, t, *x.shape[len(lead) + 1:])  # noqa: E731
        h = self.trunk.encode(flat(obs), flat(act), flat(timestep), flat(mask))
        ab = nn.functional.softplus(self.head(h)) + 1e-3
        return ab[:, 0].view(lead), ab[:, 1].view(lead)


def counted_beta_parameters(wins: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
    """The released code's counting estimate of each episode's Beta prior (``update_beta_priori``): α = Σ P(win) + 1,
    β = Σ (1 − P) + 1 over the labels, each clipped at its mean + 3 std over the episodes, then both mapped by one
    affine map onto [1, 3], which keeps every prior broad (raw counts of a few dozen comparisons give a density
    sharp enough to outweigh the likelihood: measured in docs/benchmarks.md). ``[E]`` float64 -> ``[E]`` each."""
    alpha, beta = wins + 1.0, losses + 1.0
    alpha = torch.minimum(alpha, alpha.mean() + 3 * alpha.std(unbiased=False))
    beta = torch.minimum(beta, beta.mean() + 3 * beta.std(unbiased=False))
    both = torch.cat([alpha, beta])
    low, high = both.min(), both.max()
    scale = 2.0 / (high - low) if high > low else torch.zeros_like(high)
    return 1.0 + (alpha - low) * scale, 1.0 + (beta - low) * scale


class DiffUAPA(BC):
    Config = DiffUAPAConfig
    backbones = ("diffusion",)
    cfg: DiffUAPAConfig

    def __init__(self, cfg: DiffUAPAConfig, spec: DataSpec):
        super().__init__(cfg, spec)
        if cfg.prior == "counting" and spec.episode_wins is None:
            raise ConfigError(describe("agent.prior", "prior", "'counting'", "labels whose counts reach the agent"))
        self.freeze("reference", copy.deepcopy(self.policy))   # the warm start's last weights, from the switch on
        if cfg.prior == "variational":
            self.beta_net = BetaNetwork(spec.obs_dim, spec.act_dim, dim=cfg.prior_dim, layers=cfg.prior_layers,
                                        heads=cfg.prior_heads, obs_mean=spec.obs_mean, obs_std=spec.obs_std)
        groups = spec.label_groups
        self.num_groups = 1 if groups is None else len(groups)
        if cfg.prior == "counting":  # α, β [G, E] per number of groups met, computed once (not per step)
            wins, total = spec.episode_wins.cumsum(0), spec.episode_comparisons.cumsum(0)
            counted = [counted_beta_parameters(wins[g], total[g] - wins[g]) for g in range(len(wins))]
            self.register_buffer("counted_alpha", torch.stack([a for a, _ in counted]).float(), persistent=False)
            self.register_buffer("counted_beta", torch.stack([b for _, b in counted]).float(), persistent=False)

    @classmethod
    def batch_specs(cls, cfg: DiffUAPAConfig) -> dict[str, BatchSpec]:
        rounds = (cfg.bc_steps, cfg.round_steps) if cfg.rounds == "groups" else None
        return {"main": BatchSpec("preferences", rounds=rounds)}

    def optimizers(self) -> dict[str, OptimizerSpec]:
        specs = {"main": OptimizerSpec(list(self.policy.parameters()))}
        if hasattr(self, "beta_net"):
            specs["prior"] = OptimizerSpec(list(self.beta_net.parameters()), lr=self.cfg.prior_lr)
        return specs

    def round_at(self, step: int) -> int:
        """The alignment round of ``step`` (−1 in the warm start; the group index with ``rounds=groups``)."""
        c = self.cfg
        if step < c.bc_steps:
            return -1
        if c.rounds == "all":
            return self.num_groups - 1
        return min((step - c.bc_steps) // c.round_steps, self.num_groups - 1)

    def reset_optimizers(self, step: int) -> list[str]:
        c = self.cfg
        if step == c.bc_steps > 0:
            return ["main"]
        if c.rounds == "groups" and c.reset_each_round and step > c.bc_steps:
            since = step - c.bc_steps
            if since % c.round_steps == 0 and since // c.round_steps < self.num_groups:
                return ["main"]
        return []

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        super().after_step(step)
        if step == self.cfg.bc_steps - 1:  # the end of the warm start: the pre-trained policy is the reference
            self.reference.load_state_dict(self.policy.state_dict())

    def prior_parameters(self, batch: PreferenceBatch, step: int) -> tuple[Tensor, Tensor]:
        """The Beta prior's parameters ``[B, 2]`` for each segment: the variational posterior's α + 1, β + 1 (the
        paper's Prop. 4.1), or the released code's processed counts (:func:`counted_beta_parameters`)."""
        if self.cfg.prior == "variational":
            with torch.no_grad():
                alpha, beta = self.beta_net(batch.obs, batch.act, batch.timestep, batch.mask)
            return alpha + 1.0, beta + 1.0
        seen = self.round_at(step) + 1 if self.cfg.prior_update == "rounds" else self.num_groups
        row = max(seen, 1) - 1                                                            # groups 0..row met
        return self.counted_alpha[row][batch.episode], self.counted_beta[row][batch.episode]

    def loss(self, batch: PreferenceBatch, step: int) -> LossOutput:
        c = self.cfg
        losses: dict[str, Tensor] = {}
        metrics: dict[str, Tensor] = {}
        fit_prior = hasattr(self, "beta_net") and (step < c.bc_steps or c.prior_update == "rounds")
        if fit_prior:
            alpha, beta = self.beta_net(batch.obs, batch.act, batch.timestep, batch.mask)          # [B, 2]
            elbo = beta_elbo_loss(alpha[:, 0], beta[:, 0], alpha[:, 1], beta[:, 1], batch.label).mean()
            losses["prior"] = elbo
            metrics["uapa/prior_elbo"] = elbo.detach()
        p = self.policy
        if step < c.bc_steps or c.bc_weight > 0:
            obs, chunk, valid = diffusion_windows(batch.obs, batch.act, batch.mask, p.n_obs, p.horizon)
            bc = masked_mean(p.loss(obs, chunk), valid)
            metrics["bc/denoising_error"] = bc.detach()
            if step < c.bc_steps:
                return LossOutput({"main": bc, **losses}, metrics)
        draw = draw_chain(p, tuple(batch.obs.shape[:2]), batch.obs.shape[2], device=batch.obs.device,
                          dtype=batch.obs.dtype)
        policy_score, mask = chain_log_prob(p, batch.obs, batch.act, batch.mask, draw=draw)      # [B, 2, T]
        with torch.no_grad():
            reference_score, _ = chain_log_prob(self.reference, batch.obs, batch.act, batch.mask, draw=draw)
        gap = policy_score - reference_score                       # −(H·da)(e_θ − e_ref) at each chunk's first step
        score = c.beta * masked_discounted_sum(gap, gamma=c.gamma, mask=mask)                   # A(τ) [B, 2]
        likelihood = biased_logistic_link(score[:, 0], score[:, 1], batch.label, bias=c.bias).mean()
        total = likelihood
        if c.prior != "none" and c.prior_weight > 0:
            alpha, beta = self.prior_parameters(batch, step)
            prior = beta_prior_nll(score, score.detach().mean(), alpha, beta).mean()
            total = total + c.prior_weight * prior
            metrics["uapa/prior_nll"] = prior.detach()
        if c.bc_weight > 0:
            total = total + c.bc_weight * bc
        with torch.no_grad():
            chunks = mask.sum().clamp_min(1)
            metrics.update({"uapa/likelihood": likelihood.detach(),
                            "uapa/accuracy": preference_accuracy(score[:, 0] - score[:, 1], batch.label),
                            "uapa/drift": (gap.abs() * mask).sum() / chunks / (p.horizon * p.act_dim),
                            "uapa/round": torch.tensor(float(self.round_at(step)))})
        return LossOutput({"main": total, **losses}, metrics)
