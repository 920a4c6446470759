"""OPPO, Offline Preference-guided Policy Optimization (Kang et al., ICML 2023, "Beyond Reward"): no reward model
and no RL. A contextual policy π(a | s, z) and a trajectory encoder z = I(τ), both causal transformers, learn
*hindsight information matching*: π(· | s, I(τ)) reproduces the actions of any offline trajectory window τ. A
learnable optimal context z* is then placed by the preferences: a triplet loss (:func:`pbrl.core.triplet_link`,
margin 1) asks z* to lie nearer the preferred segment's embedding than the rejected one's. The policy acts with z*.

As the official code (``bkkgbkjb/OPPO``, scripted-teacher variant) trains, one step draws two batches: windows of
the trajectories (HIM, the policy's only data) and labelled pairs (the preference batch). Three optimisers:
- ``policy``: the HIM loss (−log π of the window's actions; the deterministic head's is the squared error),
  with a linear learning-rate warm-up;
- ``encoder``: shaped by HIM (its gradient reaches I through z), by the triplet loss with z* held fixed
  (weight ``pref_weight``) and by ``norm_weight`` × ``(‖z‖ − 1)²`` on every embedding;
- ``z``: z* alone, by the same triplet loss with the embeddings held fixed (the official code's second update).
Ties (label 0.5) are left out of the triplet terms, as the official code drops them.

pbrl departs from the official code in two places, both documented in ``docs/algorithms.md``: z enters the policy
as a projection added to each step's token (the official GPT interleaves a z token with the state and action
tokens), and the encoder is the causal trunk read at the last real step (the official one is a bidirectional BERT
whose token outputs are summed). At evaluation every step of the context window sees z* (the official evaluation
pads older z slots with zeros)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from pbrl.agents.base import Agent, AgentConfig, BatchSpec, DataSpec, LossOutput, masked_mean
from pbrl.core import triplet_link, unit_norm_penalty
from pbrl.core.training import OptimizerSpec
from pbrl.data.preferences import PreferenceBatch
from pbrl.data.transitions import WindowBatch
from pbrl.fields import param
from pbrl.nets.mlp import BOUNDARIES, POLICY_HEADS
from pbrl.nets.transformer import CausalTransformer, TransformerPolicy


@dataclass
class OPPOConfig(AgentConfig):
    # deterministic (the official tanh head: −log π = ‖μ − a‖²) | gaussian | tanh_gaussian
    policy: str = param("deterministic", choices=tuple(POLICY_HEADS))
    context: int = param(20, ge=1, le=4096)          # K: steps per HIM window and at evaluation
    seq_dim: int = param(128, ge=4, le=8192)         # width of the policy and of the encoder
    seq_layers: int = param(3, ge=1, le=64)          # the policy's blocks
    seq_heads: int = param(1, ge=1, le=64)           # the policy's attention heads
    encoder_layers: int = param(3, ge=1, le=64)
    encoder_heads: int = param(2, ge=1, le=64)
    dropout: float = param(0.1, ge=0, lt=1)
    z_dim: int = param(8, ge=1, le=4096)             # the context z
    margin: float = param(1.0, gt=0)                 # the triplet margin
    pref_weight: float = param(0.1, ge=0)            # weight of the triplet loss in the encoder's objective
    norm_weight: float = param(0.1, ge=0)            # weight of (‖z‖ − 1)² on the embeddings
    encoder_lr: float | None = param(None, gt=0)     # None: train.lr
    z_lr: float = param(1e-3, gt=0)                  # z*'s own AdamW rate (official w_lr)
    z_init: float = param(2.0, ge=0)                 # z* starts at z_init · N(0, I) (official: randn · 2)
    warmup_steps: int = param(0, ge=0)               # the policy's linear learning-rate warm-up (official: 10k)
    pair_batch_size: int | None = param(None, ge=1)  # pairs per step (None: train.batch_size, the windows per step)
    log_std_min: float = param(-5.0, ge=-100, le=100)
    log_std_max: float = param(2.0, ge=-100, le=100)
    boundary: str | None = param(None, choices=BOUNDARIES)

    budget_phases: ClassVar[tuple[str, ...]] = ("warmup_steps",)

    def check(self) -> tuple[str, str, str] | None:
        for heads, name in ((self.seq_heads, "seq_heads"), (self.encoder_heads, "encoder_heads")):
            if self.seq_dim % heads:
                return name, repr(heads), f"a divisor of seq_dim ({self.seq_dim})"
        if self.log_std_min >= self.log_std_max:
            return "log_std_min", repr(self.log_std_min), f"less than log_std_max ({self.log_std_max!r})"
        return None


class ContextualPolicy(nn.Module):
    """π(a | s, z*): a contextual transformer policy with the optimal context z* ``[z_dim]`` as its parameter ``z``;
    acts like any window policy, ``(obs [N,K,do], act [N,K,da], timestep [N,K], mask [N,K]) -> [N, da]``, so the
    evaluation actor and ``pbrl export`` take it as they take :class:`~pbrl.nets.transformer.TransformerPolicy`."""

    is_sequence = True

    def __init__(self, net: TransformerPolicy, z: Tensor):
        super().__init__()
        self.net = net
        self.z = nn.Parameter(z)
        self.obs_dim, self.act_dim, self.context = net.obs_dim, net.act_dim, net.context

    def forward(self, obs: Tensor, act: Tensor, timestep: Tensor, mask: Tensor) -> Tensor:
        return self.net(obs, act, timestep, mask, self.z.expand(obs.shape[0], -1))


class OPPO(Agent):
    Config = OPPOConfig
    cfg: OPPOConfig

    def __init__(self, cfg: OPPOConfig, spec: DataSpec):
        super().__init__(cfg, spec)
        norm = {"obs_mean": spec.obs_mean, "obs_std": spec.obs_std}
        net = TransformerPolicy(spec.obs_dim, spec.act_dim, head=cfg.policy, dim=cfg.seq_dim, layers=cfg.seq_layers,
                                heads=cfg.seq_heads, context=cfg.context, dropout=cfg.dropout,
                                log_std_min=cfg.log_std_min, log_std_max=cfg.log_std_max,
                                boundary=cfg.boundary or "clamp", cond_dim=cfg.z_dim, **norm)
        self.policy = ContextualPolicy(net, cfg.z_init * torch.randn(cfg.z_dim))
        self.encoder = CausalTransformer(spec.obs_dim, spec.act_dim, dim=cfg.seq_dim, layers=cfg.encoder_layers,
                                         heads=cfg.encoder_heads, dropout=cfg.dropout, **norm)
        self.to_z = nn.Linear(cfg.seq_dim, cfg.z_dim)

    @classmethod
    def batch_specs(cls, cfg: OPPOConfig) -> dict[str, BatchSpec]:
        return {"windows": BatchSpec("windows", context=cfg.context),
                "pairs": BatchSpec("preferences", batch_size=cfg.pair_batch_size)}

    def optimizers(self) -> dict[str, OptimizerSpec]:
        return {"policy": OptimizerSpec(list(self.policy.net.parameters()), warmup_steps=self.cfg.warmup_steps),
                "encoder": OptimizerSpec([*self.encoder.parameters(), *self.to_z.parameters()], lr=self.cfg.encoder_lr),
                "z": OptimizerSpec([self.policy.z], lr=self.cfg.z_lr, grad_clip=0.0)}

    def embed(self, obs: Tensor, act: Tensor, timestep: Tensor, mask: Tensor) -> Tensor:
        """I(τ) of sequences ``[..., T, ·]`` (mask ``[..., T]``, one real step at least) -> ``[..., z_dim]``."""
        lead, t = obs.shape[:-2], obs.shape[-2]
        flat = lambda x: x.reshape(-1, t, *x.shape[len(lead) + 1:])  # noqa: E731
        h = self.encoder.encode(flat(obs), flat(act), flat(timestep), flat(mask))
        return self.to_z(h).view(*lead, -1)

    def loss(self, batch: dict[str, WindowBatch | PreferenceBatch], step: int) -> LossOutput:
        c = self.cfg
        w, p = batch["windows"], batch["pairs"]
        z_window = self.embed(w.obs, w.act, w.timestep, w.mask)                               # [Bw, z]
        logp = self.policy.net.log_prob(w.obs, w.act, w.timestep, w.mask, z_window)          # [Bw, K]
        him = -masked_mean(logp, w.mask)
        z_pair = self.embed(p.obs, p.act, p.timestep, p.mask)                                 # [Bp, 2, z]
        decided = p.label != 0.5
        z_star = self.policy.z
        shaping = masked_mean(triplet_link(z_star.detach(), z_pair[:, 0], z_pair[:, 1], p.label, margin=c.margin),
                              decided)
        norm = torch.cat([unit_norm_penalty(z_window), unit_norm_penalty(z_pair).flatten()]).mean()
        placing = masked_mean(triplet_link(z_star, z_pair[:, 0].detach(), z_pair[:, 1].detach(), p.label,
                                           margin=c.margin), decided)
        with torch.no_grad():
            distance = torch.linalg.vector_norm(z_star - z_pair, dim=-1)                      # [Bp, 2]
            preferred = (p.label < 0.5).long()                                               # 0: a, 1: b
            d_pref = distance.gather(1, preferred[:, None]).squeeze(1)
            d_rej = distance.gather(1, 1 - preferred[:, None]).squeeze(1)
            metrics = {"oppo/him": him.detach(), "oppo/triplet": placing.detach(), "oppo/norm": norm.detach(),
                       "oppo/z_star_norm": torch.linalg.vector_norm(z_star),
                       "oppo/nearer_preferred": masked_mean((d_pref < d_rej).float(), decided),
                       "oppo/distance_gap": masked_mean(d_rej - d_pref, decided)}
        return LossOutput({"policy": him, "encoder": c.pref_weight * shaping + c.norm_weight * norm,
                           "z": placing}, metrics)
