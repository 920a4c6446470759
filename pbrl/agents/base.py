"""What every agent declares; the trainer owns the rest (devices, logging, files, the loop).

An agent is an ``nn.Module`` with
- ``Config``: its config dataclass, and ``batch_specs(cfg)``: the named batches it trains on, each a
  :class:`BatchSpec` (a kind: ``preferences``, ``segments``, ``transitions`` or ``windows``, see
  :mod:`pbrl.data.preferences` and :mod:`pbrl.data.transitions`; where its rewards come from; its size). The
  trainer builds one sampler per name. One batch (the default: ``{"main": BatchSpec(cls.batches)}``) reaches
  ``loss`` as itself; several reach it as ``{name: batch}`` (OPPO: trajectory windows and labelled pairs in one
  step);
- ``optimizers()``: named parameter groups with their optimiser settings and schedules (default: one
  optimiser, ``main``, over every trainable parameter);
- ``loss(batch, step)``: a :class:`LossOutput`, one loss or one per optimiser;
- per-step hooks: ``after_step(step)`` (target networks, EMA) and ``reset_optimizers(step)`` (phase switches);
- frozen modules (``self.freeze(module)``: checkpointed, never optimised, always in eval mode);
- ``actor(num_envs, seed)``: the evaluation actor (:mod:`pbrl.agents.actors`).

What the dataset says beyond its batches (dimensions, observation statistics, per-trajectory label counts)
reaches an agent through :class:`DataSpec`, so agents import only data's batch types.
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

BATCH_KINDS = ("preferences", "segments", "transitions", "windows")
REWARD_SOURCES = ("true", "constant", "learned")


@dataclass(frozen=True)
class BatchSpec:
    """One named batch an agent trains on; the trainer draws it from a sampler of its own every step.

    ``kind``: ``preferences`` (labelled pairs, :class:`~pbrl.data.preferences.PreferenceBatch`), ``segments``
    (scored segments, :class:`~pbrl.data.preferences.SegmentBatch`), ``transitions``
    (:class:`~pbrl.data.transitions.TransitionBatch`) or ``windows`` (:class:`~pbrl.data.transitions.WindowBatch`).
    ``rewards`` (transitions): ``true`` (the dataset's), ``constant`` (every reward 1), ``learned`` (a reward model
    fitted to the labels first) or None (no reward used). ``reward_scale`` (transitions): ``returns`` |
    ``minmax-returns`` | ``none``. ``context`` (windows): steps per window. ``batch_size``: items per step (None:
    ``train.batch_size``). ``origin``: the config option that asked for this batch, named when the data cannot
    serve it. ``rounds`` (preferences): ``(start, round_steps)``, one annotator group per round of ``round_steps``
    steps from step ``start`` on, every group before (:class:`~pbrl.data.preferences.GroupRounds`)."""

    kind: str
    rewards: str | None = None
    reward_scale: str = "none"
    context: int | None = None
    batch_size: int | None = None
    origin: str = ""
    rounds: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.kind not in BATCH_KINDS:
            raise ConfigError(describe("batch spec", "kind", repr(self.kind), f"one of {list(BATCH_KINDS)}"))
        if self.rewards is not None and self.rewards not in REWARD_SOURCES:
            raise ConfigError(describe("batch spec", "rewards", repr(self.rewards), f"one of {list(REWARD_SOURCES)}"))
        if self.kind == "windows" and not self.context:
            raise ConfigError(describe("batch spec", "context", repr(self.context), "a window length for windows"))

    @property
    def needs_labels(self) -> bool:
        """Whether this batch cannot be drawn without preference labels."""
        return self.kind in ("preferences", "segments") or self.rewards == "learned"


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
    stages: ClassVar[tuple[str, ...]] = ()
    """Step counts of stages trained before the budget, on their own steps (the reward model's ``reward_steps``)."""

    def shrink_for_dry_run(self) -> None:
        """Every phase and stage that is on to one step, so that a two-step dry run crosses each switch."""
        for name in (*self.budget_phases, *self.stages):
            if getattr(self, name):
                setattr(self, name, 1)


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
    """What an agent may know of its data: dimensions, observation statistics ``[obs_dim]``, the range of the
    actions ``[act_dim]``, and the labels' statistics (None where the run reads no labels): ``label_groups`` ``[G]``
    the annotator groups in ascending order, and per group and episode ``[G, E]`` (float64) ``episode_wins``, the
    summed chance of the episode to be preferred over that group's labelled pairs it takes part in (a tie gives each
    side 0.5), and ``episode_comparisons``, the number of those pairs (a Beta prior's α = wins, β = comparisons −
    wins)."""

    obs_dim: int
    act_dim: int
    obs_mean: Tensor
    obs_std: Tensor
    act_low: Tensor | None = None
    act_high: Tensor | None = None
    label_groups: Tensor | None = None
    episode_wins: Tensor | None = None
    episode_comparisons: Tensor | None = None


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

    @classmethod
    def batch_specs(cls, cfg: AgentConfig) -> dict[str, BatchSpec]:
        """The named batches ``cfg`` trains on (one, ``main``, of kind ``batches``, unless the agent says more);
        a classmethod, so that the trainer knows what data to load before it builds the agent."""
        return {"main": BatchSpec(cls.batches)}

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
