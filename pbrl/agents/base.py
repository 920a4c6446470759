"""What every agent declares; the trainer owns the rest (devices, logging, files, the loop).

An agent is an ``nn.Module`` with
- ``Config``: its config dataclass, and ``batches``: the batch kind it trains on (``preferences``,
  ``transitions`` or ``windows``: see :mod:`pbrl.data.preferences` and :mod:`pbrl.data.transitions`;
  ``batch_kind()`` may pick another from the config, e.g. CPL's dense regime trains on scored ``segments``);
- ``optimizers()``: named parameter groups with their optimiser settings and schedules (default: one
  optimiser, ``main``, over every trainable parameter);
- ``loss(batch, step)``: a :class:`LossOutput`, one loss or one per optimiser;
- per-step hooks: ``after_step(step)`` (target networks, EMA) and ``reset_optimizers(step)`` (phase switches);
- frozen modules (``self.freeze(module)``: checkpointed, never optimised, always in eval mode);
- ``actor(num_envs, seed)``: the evaluation actor (:mod:`pbrl.agents.actors`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from pbrl.agents.actors import Actor, ChunkActor, HistoryActor, PolicyActor
from pbrl.core.training import LossOutput, OptimizerSpec
from pbrl.errors import ConfigError, describe
from pbrl.fields import param
from pbrl.nets.diffusion import DiffusionPolicy
from pbrl.nets.mlp import BOUNDARIES, POLICY_HEADS
from pbrl.nets.transformer import TransformerPolicy


@dataclass
class AgentConfig:
    """Fields every agent has (none yet); agents subclass it."""

    budget_phases: ClassVar[tuple[str, ...]] = ()
    """Fields counted in steps *of the main budget* (``train.steps``), such as CPL's BC warm start: where ``--steps``
    shortens the preset's budget, :func:`pbrl.train.config.build_config` scales them with it, so each phase keeps its
    share. A stage trained before the budget, on its own steps (the reward model of ``iql-mr``), is not one."""
    warm_start: ClassVar[str | None] = None
    """The phase that trains something other than the agent's own objective (CPL: BC): a budget no longer than it
    never reaches the objective, and the commands say so."""


@dataclass
class PolicyConfig(AgentConfig):
    """An MLP policy head (BC, SFT, CPL, IQL's actor)."""

    # tanh_gaussian | deterministic (log π = −‖μ(s) − a‖², CPL's official actor) | gaussian
    policy: str = param("tanh_gaussian", choices=tuple(POLICY_HEADS))
    hidden_layers: list[int] = param([256, 256], ge=1, le=65536)  # width of each hidden layer
    dropout: float = param(0.0, ge=0, lt=1)  # dropout after each hidden layer (CPL's paper: 0.25)
    log_std_min: float = param(-5.0, ge=-100, le=100)
    log_std_max: float = param(2.0, ge=-100, le=100)
    # tanh_gaussian: how an action on the bound is scored: clamp (None; to ±0.999, its density) | censored (the
    # probability mass beyond the bound: pbrl.nets.mlp.tanh_gaussian_log_prob)
    boundary: str | None = param(None, choices=BOUNDARIES)

    def check(self) -> tuple[str, str, str] | None:
        if self.log_std_min >= self.log_std_max:
            return "log_std_min", repr(self.log_std_min), f"less than log_std_max ({self.log_std_max!r})"
        return None


@dataclass(frozen=True)
class DataSpec:
    """What an agent may know of its data: dimensions, observation statistics ``[obs_dim]`` and the range of the
    actions ``[act_dim]`` (None where unknown)."""

    obs_dim: int
    act_dim: int
    obs_mean: Tensor
    obs_std: Tensor
    act_low: Tensor | None = None
    act_high: Tensor | None = None


def build_policy(cfg: PolicyConfig, spec: DataSpec) -> nn.Module:
    if cfg.policy not in POLICY_HEADS:
        raise ConfigError(describe("agent.policy", "policy head", repr(cfg.policy), f"one of {sorted(POLICY_HEADS)}"))
    if getattr(cfg, "backbone", None) == "diffusion":
        return DiffusionPolicy(spec.obs_dim, spec.act_dim, horizon=cfg.horizon or 16, n_obs=cfg.n_obs or 2,
                               denoiser=cfg.denoiser or "mlp", prediction=cfg.prediction or "epsilon",
                               train_steps=cfg.diffusion_steps or 100, sample_steps=cfg.sample_steps or 10,
                               hidden_layers=cfg.hidden_layers, channels=tuple(cfg.channels or (64, 128)),
                               obs_mean=spec.obs_mean, obs_std=spec.obs_std, act_low=spec.act_low,
                               act_high=spec.act_high)
    if getattr(cfg, "backbone", None) == "transformer":
        return TransformerPolicy(spec.obs_dim, spec.act_dim, head=cfg.policy, dim=cfg.seq_dim or 128,
                                 layers=cfg.seq_layers or 2, heads=cfg.seq_heads or 4, context=cfg.context or 64,
                                 dropout=cfg.dropout, log_std_min=cfg.log_std_min, log_std_max=cfg.log_std_max,
                                 boundary=cfg.boundary or "clamp", obs_mean=spec.obs_mean, obs_std=spec.obs_std)
    return POLICY_HEADS[cfg.policy](spec.obs_dim, spec.act_dim, hidden_layers=cfg.hidden_layers, dropout=cfg.dropout,
                                    log_std_min=cfg.log_std_min, log_std_max=cfg.log_std_max,
                                    **({"boundary": cfg.boundary} if cfg.boundary else {}),
                                    obs_mean=spec.obs_mean, obs_std=spec.obs_std)


def steps_log_prob(policy: nn.Module, obs: Tensor, act: Tensor, timestep: Tensor | None, mask: Tensor, *,
                   score: bool = False) -> Tensor:
    """``log π`` per step of segments ``[..., T]`` for any backbone: an MLP reads each step alone, a sequence
    policy (``is_sequence``) the window up to it. ``score`` drops parameter-free terms (``score_log_prob``)."""
    fn = policy.score_log_prob if score else policy.log_prob
    if getattr(policy, "is_sequence", False):
        return fn(obs, act, timestep, mask)
    return fn(obs, act)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over positions where ``mask`` is true; same shapes."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


class Agent(nn.Module):
    Config: ClassVar[type[AgentConfig]] = AgentConfig
    batches: ClassVar[str] = "preferences"

    def __init__(self, cfg: AgentConfig, spec: DataSpec):
        super().__init__()
        self.cfg = cfg
        self.spec = spec
        self._frozen: list[str] = []

    def batch_kind(self) -> str:
        """The sampler this agent's config needs (``batches`` unless a config option changes it)."""
        return type(self).batches

    # -- what the loop asks -------------------------------------------------------------------------------
    def optimizers(self) -> dict[str, OptimizerSpec]:
        return {"main": OptimizerSpec([p for p in self.parameters() if p.requires_grad])}

    def loss(self, batch, step: int) -> LossOutput:
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        """Called after every optimiser step (``step`` counts from 0)."""

    def reset_optimizers(self, step: int) -> list[str]:
        """Names of optimisers whose state is reset before ``step`` (a phase switch); none by default."""
        return []

    # -- frozen modules -----------------------------------------------------------------------------------
    def freeze(self, name: str, module: nn.Module) -> nn.Module:
        """Register ``module`` as ``self.<name>``: in the checkpoint, never optimised, always in eval mode."""
        module.requires_grad_(False)
        module.eval()
        setattr(self, name, module)
        self._frozen.append(name)
        return module

    def train(self, mode: bool = True) -> Agent:
        super().train(mode)
        for name in self._frozen:
            getattr(self, name).eval()
        return self

    # -- acting -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: Tensor) -> Tensor:
        """Deterministic action for a batch of observations ``[N, obs_dim] -> [N, act_dim]`` (an MLP policy)."""
        return self.policy(obs)

    def chunk_acting(self) -> tuple[nn.Module, int]:
        """An action-chunk policy's acting module (the EMA copy where the agent keeps one) and how many of each
        chunk's actions run before the next is sampled (``n_action``, default min(8, horizon))."""
        policy = self.policy
        return getattr(self, "ema", policy), getattr(self.cfg, "n_action", None) or min(8, policy.horizon)

    def actor(self, num_envs: int, seed: int = 0) -> Actor:
        """The evaluation actor for ``num_envs`` environments (its own generator, seeded with ``seed``): a sequence
        policy gets a :class:`HistoryActor` holding each environment's last ``context`` steps."""
        device = next(self.parameters()).device
        policy = getattr(self, "policy", None)
        if getattr(policy, "is_sequence", False):
            return HistoryActor(policy, num_envs, self.spec.obs_dim, self.spec.act_dim, policy.context, seed=seed,
                                device=device)
        if getattr(policy, "is_chunked", False):
            acting, n_action = self.chunk_acting()
            return ChunkActor(lambda obs, noise: acting.sample(obs, noise=noise), num_envs, self.spec.obs_dim,
                              self.spec.act_dim, n_obs=policy.n_obs, horizon=policy.horizon, n_action=n_action,
                              seed=seed, device=device)
        return PolicyActor(self.act, num_envs, seed=seed, device=device)
