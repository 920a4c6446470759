"""The project's causal transformer (GPT-style, pre-norm, ``scaled_dot_product_attention`` so fused / flash kernels
run on GPU) over state-action sequences with timestep embeddings, the Preference Transformer reward model built on
it (Kim et al., 2023), and the transformer policy built on it. The forwards have no data-dependent Python control
flow (traceable)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pbrl.nets.mlp import ObsNormalizer, PolicyHead


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, key_mask: Tensor | None = None, causal: bool = True) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # [B, H, T, d/H]
        attn_mask = None
        if key_mask is not None or causal:
            # the masks as comparisons of positions (not ones / tril / eye of bools): the same values, and an ONNX
            # graph every runtime runs (ONNX Runtime has no bool EyeLike)
            position = torch.arange(t, device=x.device)
            allowed = position[None, :] <= position[:, None] if causal else torch.ones(t, t, dtype=torch.bool,
                                                                                          device=x.device)
            allowed = allowed[None, None]
            if key_mask is not None:
                # a query always sees itself, so padded rows stay finite (they are masked out downstream)
                allowed = (allowed & key_mask[:, None, None, :]) | (position[:, None] == position[None, :])
            attn_mask = allowed
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout))

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.ln1(x), key_mask)
        return x + self.mlp(self.ln2(x))


class CausalTransformer(nn.Module):
    """Token t is (s_t, a_t) embedded plus a learned embedding of the episode timestep; returns one feature
    per step, ``[B, T, dim]``, each a function of steps ≤ t only. ``mask`` [B, T] marks real steps.

    With ``cond_dim`` > 0 every sequence also takes a conditioning vector ``cond`` [B, cond_dim] (OPPO's latent
    z), projected and added to each of its tokens, so every step's feature depends on it."""

    def __init__(self, obs_dim: int, act_dim: int, *, dim: int = 128, layers: int = 1, heads: int = 4,
                 max_timestep: int = 1000, dropout: float = 0.0, obs_mean: Tensor | None = None,
                 obs_std: Tensor | None = None, cond_dim: int = 0):
        super().__init__()
        self.normalizer = ObsNormalizer(obs_mean if obs_mean is not None else torch.zeros(obs_dim),
                                        obs_std if obs_std is not None else torch.ones(obs_dim))
        self.embed = nn.Linear(obs_dim + act_dim, dim)
        self.time = nn.Embedding(max_timestep + 1, dim)
        self.max_timestep = max_timestep
        self.cond_dim = cond_dim
        if cond_dim > 0:
            self.cond = nn.Linear(cond_dim, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)

    def forward(self, obs: Tensor, act: Tensor, timestep: Tensor, mask: Tensor | None = None,
                cond: Tensor | None = None) -> Tensor:
        x = self.embed(torch.cat([self.normalizer(obs), act], -1)) + self.time(timestep.clamp(0, self.max_timestep))
        if (cond is None) != (self.cond_dim == 0):
            raise ValueError(f"cond: got {'none' if cond is None else tuple(cond.shape)}, expected "
                             f"{'none (cond_dim 0)' if self.cond_dim == 0 else f'[B, {self.cond_dim}]'}")
        if cond is not None:
            x = x + self.cond(cond)[:, None, :]
        for block in self.blocks:
            x = block(x, mask)
        return self.ln(x)

    def encode(self, obs: Tensor, act: Tensor, timestep: Tensor, mask: Tensor) -> Tensor:
        """A whole trajectory as one vector (OPPO's hindsight encoding I(τ)): the feature of each sequence's last real
        step, which by causality has attended to every step before it. ``[B, T, ·]`` with ``mask`` [B, T] (padding on
        either side, at least one real step per row) -> ``[B, dim]``."""
        last = mask.long().cumsum(-1).argmax(-1)  # the last real step: where the count of real steps first peaks
        return self.forward(obs, act, timestep, mask)[torch.arange(obs.shape[0], device=obs.device), last]


class PreferenceTransformer(nn.Module):
    """Preference Transformer (Kim et al., 2023): a causal transformer, then a *preference attention* layer:
    per step a reward r̂_t, a query q_t and a key k_t; ``z_i = Σ_j softmax_j(q_i·k_j / √d) r̂_j`` over the segment,
    and the segment score is the mean of z (the weighted sum).

    ``forward(obs [B,T,do], act [B,T,da], timestep [B,T], mask [B,T]) -> (score [B], step_reward [B,T])``."""

    def __init__(self, obs_dim: int, act_dim: int, *, dim: int = 128, layers: int = 1, heads: int = 4,
                 max_timestep: int = 1000, dropout: float = 0.0, obs_mean: Tensor | None = None,
                 obs_std: Tensor | None = None):
        super().__init__()
        self.trunk = CausalTransformer(obs_dim, act_dim, dim=dim, layers=layers, heads=heads,
                                       max_timestep=max_timestep, dropout=dropout, obs_mean=obs_mean, obs_std=obs_std)
        self.head = nn.Linear(dim, 2 * dim + 1)  # query, key, reward
        self.dim = dim

    def forward(self, obs: Tensor, act: Tensor, timestep: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        h = self.trunk(obs, act, timestep, mask)
        q, k, r = self.head(h).split([self.dim, self.dim, 1], -1)
        r = r.squeeze(-1)                                                          # [B, T]
        logits = (q @ k.transpose(1, 2)) / self.dim**0.5                           # [B, T, T]
        logits = logits.masked_fill(~mask[:, None, :], float("-inf"))
        z = (logits.softmax(-1) * r[:, None, :]).sum(-1)                           # [B, T]
        m = mask.to(z.dtype)
        return (z * m).sum(-1) / m.sum(-1).clamp_min(1.0), r


class TransformerPolicy(nn.Module):
    """π(a_t | s_≤t, a_<t): the causal trunk reads one token per step made of (s_t, a_{t−1}) and the episode
    timestep (the first step of a window sees a zero previous action), so the distribution of a_t never depends on
    a_t or on later steps. A :class:`~pbrl.nets.mlp.PolicyHead` turns each step's feature into one of the policy
    families of the MLP policies, with the same log-likelihoods.

    Windows: ``obs [..., T, do]``, ``act [..., T, da]``, ``timestep [..., T]``, ``mask [..., T]`` (True on real
    steps); any leading dims (a pair's ``[B, 2]``) are flattened for the trunk. ``forward`` returns the action of
    the *last* step of each window ``[N, da]``: what :class:`~pbrl.agents.actors.HistoryActor` asks at evaluation,
    on each environment's last ``context`` steps."""

    is_sequence = True

    def __init__(self, obs_dim: int, act_dim: int, *, head: str = "deterministic", dim: int = 128, layers: int = 2,
                 heads: int = 4, context: int = 64, dropout: float = 0.0, max_timestep: int = 1000,
                 log_std_min: float = -5.0, log_std_max: float = 2.0, boundary: str = "clamp",
                 obs_mean: Tensor | None = None, obs_std: Tensor | None = None, cond_dim: int = 0):
        super().__init__()
        self.trunk = CausalTransformer(obs_dim, act_dim, dim=dim, layers=layers, heads=heads, max_timestep=max_timestep,
                                       dropout=dropout, obs_mean=obs_mean, obs_std=obs_std, cond_dim=cond_dim)
        self.head = PolicyHead(dim, act_dim, head, log_std_min=log_std_min, log_std_max=log_std_max, boundary=boundary)
        self.obs_dim, self.act_dim, self.context, self.cond_dim = obs_dim, act_dim, context, cond_dim

    def features(self, obs: Tensor, act: Tensor, timestep: Tensor, mask: Tensor, cond: Tensor | None = None) -> Tensor:
        """One feature per step ``[..., T, dim]``, each a function of that step's state and earlier steps only (and of
        the sequence's ``cond`` ``[..., cond_dim]`` where the policy is contextual: π(a | s, z))."""
        lead, t = obs.shape[:-2], obs.shape[-2]
        flat = lambda x, *tail: x.reshape(-1, t, *tail)  # noqa: E731
        a = flat(act, self.act_dim)
        previous = torch.cat([torch.zeros_like(a[:, :1]), a[:, :-1]], 1)
        z = cond if cond is None or not self.cond_dim else cond.expand(*lead, self.cond_dim).reshape(-1, self.cond_dim)
        h = self.trunk(flat(obs, self.obs_dim), previous, flat(timestep), flat(mask), z)
        return h.reshape(*lead, t, h.shape[-1])

    def log_prob(self, obs: Tensor, act: Tensor, timestep: Tensor, mask: Tensor, cond: Tensor | None = None) -> Tensor:
        """``log π(a_t | s_≤t, a_<t[, z])`` per step ``[..., T]`` (padded steps give finite values to be masked out)."""
        return self.head.log_prob(self.features(obs, act, timestep, mask, cond), act)

    def score_log_prob(self, obs: Tensor, act: Tensor, timestep: Tensor, mask: Tensor,
                       cond: Tensor | None = None) -> Tensor:
        return self.head.score_log_prob(self.features(obs, act, timestep, mask, cond), act)

    def forward(self, obs: Tensor, act: Tensor, timestep: Tensor, mask: Tensor, cond: Tensor | None = None) -> Tensor:
        """The deterministic action of the last step of each window: ``[N, K, ...] -> [N, da]``."""
        return self.head.mean(self.features(obs, act, timestep, mask, cond)[..., -1, :])
