"""MLP backbones: policy heads (tanh-Gaussian, deterministic, Gaussian with a tanh mean), Q and V networks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def mlp(in_dim: int, out_dim: int, hidden_layers: Sequence[int], *, dropout: float = 0.0,
        activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """One hidden layer per entry of ``hidden_layers`` (each Linear -> activation -> Dropout), then a Linear."""
    mods: list[nn.Module] = []
    d = in_dim
    for hidden in hidden_layers:
        mods += [nn.Linear(d, hidden), activation()]
        if dropout > 0:
            mods.append(nn.Dropout(dropout))
        d = hidden
    mods.append(nn.Linear(d, out_dim))
    return nn.Sequential(*mods)


class ObsNormalizer(nn.Module):
    """Fixed affine observation normaliser ``(o − mean) / std``; a buffer, so it travels with checkpoints and exports."""

    def __init__(self, mean: Tensor, std: Tensor):
        super().__init__()
        self.register_buffer("mean", mean.clone().float())
        self.register_buffer("std", std.clone().float().clamp_min(1e-6))

    def forward(self, obs: Tensor) -> Tensor:
        return (obs - self.mean) / self.std


def squash_log_std(raw: Tensor, log_std_min: float, log_std_max: float) -> Tensor:
    """Map an unbounded output smoothly into [log_std_min, log_std_max]."""
    return log_std_min + 0.5 * (log_std_max - log_std_min) * (torch.tanh(raw) + 1.0)


def pre_tanh_log_prob(mu: Tensor, log_std: Tensor, act: Tensor, action_eps: float) -> tuple[Tensor, Tensor]:
    """(log N(atanh(a); μ, σ²) per dimension, atanh(a)), both ``[..., act_dim]``; actions clipped to ±(1 − eps)
    first, since actions on the bound have no finite pre-image."""
    u = torch.atanh(act.clamp(-1.0 + action_eps, 1.0 - action_eps))
    return -0.5 * ((u - mu) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi), u


def tanh_log_det(u: Tensor) -> Tensor:
    """log|d tanh(u)/du| = log(1 − tanh(u)²) = 2 (log 2 − u − softplus(−2u)), stable for large |u|."""
    return 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))


BOUNDARIES = ("clamp", "censored")


def tanh_gaussian_log_prob(mu: Tensor, log_std: Tensor, act: Tensor, action_eps: float, boundary: str = "clamp", *,
                           jacobian: bool = True) -> Tensor:
    """log π(a|s) of a tanh-Gaussian, summed over action dimensions: ``mu``, ``log_std``, ``act`` ``[..., act_dim]``
    -> ``[...]``. ``jacobian=False`` leaves out the parameter-free tanh Jacobian (a preference score's form).

    Actions on a bound (the simulator clipped them) have no finite pre-image under tanh. ``clamp`` moves them to
    ±(1 − ε) and scores the density there (u = atanh(1 − ε) ≈ 3.8 for ε = 1e-3: a policy whose mean sits near the
    bound, the one that produced them, still pays a large penalty). ``censored`` scores each such entry by the
    probability the policy puts beyond ±(1 − ε) instead, the Tobit likelihood of a clipped action:
    ``log Φ((μ − c)/σ)`` at +1 and ``log Φ((−c − μ)/σ)`` at −1, with ``c = atanh(1 − ε)``; it is at most 0, and near 0
    once the policy saturates. Interior entries are scored by their density either way."""
    normal_logp, u = pre_tanh_log_prob(mu, log_std, act, action_eps)
    per_dim = normal_logp - tanh_log_det(u) if jacobian else normal_logp
    if boundary == "censored":
        c, std = math.atanh(1.0 - action_eps), log_std.exp()
        per_dim = torch.where(act >= 1.0 - action_eps, torch.special.log_ndtr((mu - c) / std),
                              torch.where(act <= -1.0 + action_eps, torch.special.log_ndtr((-c - mu) / std), per_dim))
    elif boundary != "clamp":
        raise ValueError(f"boundary: got {boundary!r}, expected one of {BOUNDARIES}")
    return per_dim.sum(-1)


class TanhGaussianPolicy(nn.Module):
    """π(a|s) = tanh(N(μ(s), σ(s)²)): an MLP trunk, a state-dependent log-std clamped to [log_std_min, log_std_max].

    ``log_prob(obs [..., obs_dim], act [..., act_dim]) -> [...]`` includes the tanh Jacobian; dataset actions on
    the bound are clamped to ``±(1 − action_eps)`` (``boundary="clamp"``) or scored by the mass beyond it
    (``"censored"``): :func:`tanh_gaussian_log_prob`.
    """

    def __init__(self, obs_dim: int, act_dim: int, *, hidden_layers: Sequence[int] = (256, 256), dropout: float = 0.0,
                 log_std_min: float = -5.0, log_std_max: float = 2.0, action_eps: float = 1e-3,
                 boundary: str = "clamp", obs_mean: Tensor | None = None, obs_std: Tensor | None = None):
        super().__init__()
        self.normalizer = ObsNormalizer(obs_mean if obs_mean is not None else torch.zeros(obs_dim),
                                        obs_std if obs_std is not None else torch.ones(obs_dim))
        self.net = mlp(obs_dim, 2 * act_dim, hidden_layers, dropout=dropout)
        self.act_dim = act_dim
        self.log_std_min, self.log_std_max, self.action_eps = log_std_min, log_std_max, action_eps
        if boundary not in BOUNDARIES:
            raise ValueError(f"boundary: got {boundary!r}, expected one of {BOUNDARIES}")
        self.boundary = boundary

    def distribution_params(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_std = self.net(self.normalizer(obs)).chunk(2, dim=-1)
        return mu, squash_log_std(log_std, self.log_std_min, self.log_std_max)

    def log_prob(self, obs: Tensor, act: Tensor) -> Tensor:
        mu, log_std = self.distribution_params(obs)
        return tanh_gaussian_log_prob(mu, log_std, act, self.action_eps, self.boundary)

    def score_log_prob(self, obs: Tensor, act: Tensor) -> Tensor:
        """``log π`` without the tanh Jacobian ``−Σ log(1 − a²)``, which has no parameters: the pre-tanh Gaussian
        density ``[...]``, as a preference score sums it (cpl-human scores CPL this way). Summed over a segment, the
        Jacobian would add a parameter-free offset of several nats per action on the bound to one side of a pair."""
        mu, log_std = self.distribution_params(obs)
        return tanh_gaussian_log_prob(mu, log_std, act, self.action_eps, self.boundary, jacobian=False)

    def forward(self, obs: Tensor) -> Tensor:
        """Deterministic action ``tanh(μ(s))`` [..., act_dim]: what a robot runs and what is exported."""
        mu, _ = self.distribution_params(obs)
        return torch.tanh(mu)

    def sample(self, obs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        mu, log_std = self.distribution_params(obs)
        noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return torch.tanh(mu + log_std.exp() * noise)


class DeterministicTanhPolicy(nn.Module):
    """a = tanh(f(s)) with the log-likelihood of a unit-free Gaussian in action space:
    ``log π(a|s) = −‖tanh(f(s)) − a‖²`` (the ``ContinuousMLPActor`` form of CPL's official code).

    Bounded above by 0, so CPL's contrastive term cannot push a preferred segment's likelihood to infinity.
    """

    def __init__(self, obs_dim: int, act_dim: int, *, hidden_layers: Sequence[int] = (256, 256), dropout: float = 0.0,
                 obs_mean: Tensor | None = None, obs_std: Tensor | None = None, **_: float):
        super().__init__()
        self.normalizer = ObsNormalizer(obs_mean if obs_mean is not None else torch.zeros(obs_dim),
                                        obs_std if obs_std is not None else torch.ones(obs_dim))
        self.net = mlp(obs_dim, act_dim, hidden_layers, dropout=dropout)
        self.act_dim = act_dim

    def forward(self, obs: Tensor) -> Tensor:
        return torch.tanh(self.net(self.normalizer(obs)))

    def log_prob(self, obs: Tensor, act: Tensor) -> Tensor:
        return -((self(obs) - act) ** 2).sum(-1)

    score_log_prob = log_prob  # no parameter-free term to drop


class GaussianPolicy(nn.Module):
    """π(a|s) = N(tanh(f(s)), diag(σ²)) with a state-independent learned log σ (IQL's locomotion actor, as CORL
    builds it). ``log_prob(obs [..., obs_dim], act [..., act_dim]) -> [...]``; ``forward`` is the mean action."""

    def __init__(self, obs_dim: int, act_dim: int, *, hidden_layers: Sequence[int] = (256, 256), dropout: float = 0.0,
                 log_std_min: float = -20.0, log_std_max: float = 2.0, obs_mean: Tensor | None = None,
                 obs_std: Tensor | None = None, **_: float):
        super().__init__()
        self.normalizer = ObsNormalizer(obs_mean if obs_mean is not None else torch.zeros(obs_dim),
                                        obs_std if obs_std is not None else torch.ones(obs_dim))
        self.net = mlp(obs_dim, act_dim, hidden_layers, dropout=dropout)
        self.log_std = nn.Parameter(torch.zeros(act_dim))
        self.act_dim = act_dim
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def forward(self, obs: Tensor) -> Tensor:
        return torch.tanh(self.net(self.normalizer(obs)))

    def log_prob(self, obs: Tensor, act: Tensor) -> Tensor:
        log_std = self.log_std.clamp(self.log_std_min, self.log_std_max)
        z = (act - self(obs)) / log_std.exp()
        return (-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    # The score is the whole log π. Its constant −½ log 2π per dimension cancels in CPL's logit A_a − λ A_b only at
    # λ = 1. For λ ≠ 1 the logit keeps (1 − λ)·α·Σ_t log π of a segment: the conservative pull towards the data that
    # λ is for, which here holds −(1 − λ)·α·T·Σ_d (log σ_d + ½ log 2π): a fixed offset on every logit, and a pull on
    # log σ that a pair exerts whatever its label (tests/test_agents.py measures both).
    score_log_prob = log_prob

    def sample(self, obs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        mu = self(obs)
        noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return (mu + self.log_std.clamp(self.log_std_min, self.log_std_max).exp() * noise).clamp(-1.0, 1.0)


class ValueNet(nn.Module):
    """V(s) or, with ``act_dim``, Q(s, a): an MLP on normalised observations (and actions) -> ``[...]``."""

    def __init__(self, obs_dim: int, act_dim: int = 0, *, hidden_layers: Sequence[int] = (256, 256),
                 obs_mean: Tensor | None = None, obs_std: Tensor | None = None):
        super().__init__()
        self.normalizer = ObsNormalizer(obs_mean if obs_mean is not None else torch.zeros(obs_dim),
                                        obs_std if obs_std is not None else torch.ones(obs_dim))
        self.net = mlp(obs_dim + act_dim, 1, hidden_layers)

    def forward(self, obs: Tensor, act: Tensor | None = None) -> Tensor:
        x = self.normalizer(obs)
        if act is not None:
            x = torch.cat([x, act], -1)
        return self.net(x).squeeze(-1)


class EnsembleLinear(nn.Module):
    """``members`` independent linear layers applied in one batched matmul: ``[M, B, in] -> [M, B, out]``.
    Each member is initialised as ``nn.Linear`` would be (U(±1/√in) for weight and bias)."""

    def __init__(self, members: int, in_dim: int, out_dim: int):
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)
        self.weight = nn.Parameter(torch.empty(members, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, out_dim).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleQ(nn.Module):
    """``members`` Q(s, a) MLPs (IQL's twin critic) evaluated in one batched pass: ``(obs [B, do], act [B, da]) ->
    [M, B]``. The same networks as ``members`` separate :class:`ValueNet` critics, with fewer kernel launches."""

    def __init__(self, obs_dim: int, act_dim: int, *, members: int = 2, hidden_layers: Sequence[int] = (256, 256),
                 obs_mean: Tensor | None = None, obs_std: Tensor | None = None):
        super().__init__()
        self.normalizer = ObsNormalizer(obs_mean if obs_mean is not None else torch.zeros(obs_dim),
                                        obs_std if obs_std is not None else torch.ones(obs_dim))
        dims = [obs_dim + act_dim, *hidden_layers]
        self.layers = nn.ModuleList(EnsembleLinear(members, i, o) for i, o in zip(dims[:-1], dims[1:]))
        self.out = EnsembleLinear(members, dims[-1], 1)
        self.members = members

    def forward(self, obs: Tensor, act: Tensor) -> Tensor:
        x = torch.cat([self.normalizer(obs), act], -1).expand(self.members, -1, -1)
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.out(x).squeeze(-1)


class PolicyHead(nn.Module):
    """The three policy families of :data:`POLICY_HEADS` on top of any trunk: features ``[..., dim]`` -> an action
    distribution over ``[..., act_dim]``, with the same log-likelihoods as the MLP policies (``kind`` is fixed at
    construction, so the forward has no data-dependent control flow and traces)."""

    def __init__(self, dim: int, act_dim: int, kind: str, *, log_std_min: float = -5.0, log_std_max: float = 2.0,
                 action_eps: float = 1e-3, boundary: str = "clamp"):
        super().__init__()
        if kind not in POLICY_HEADS:
            raise ValueError(f"policy head: got {kind!r}, expected one of {sorted(POLICY_HEADS)}")
        self.kind, self.act_dim = kind, act_dim
        self.linear = nn.Linear(dim, 2 * act_dim if kind == "tanh_gaussian" else act_dim)
        if kind == "gaussian":
            self.log_std = nn.Parameter(torch.zeros(act_dim))
        self.log_std_min, self.log_std_max, self.action_eps = log_std_min, log_std_max, action_eps
        if boundary not in BOUNDARIES:
            raise ValueError(f"boundary: got {boundary!r}, expected one of {BOUNDARIES}")
        self.boundary = boundary

    def params(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """(location, log σ) of the action distribution: tanh-mean for the deterministic and Gaussian heads (σ 1
        and the learned state-independent σ), pre-tanh μ for the tanh-Gaussian."""
        out = self.linear(h)
        if self.kind == "tanh_gaussian":
            mu, raw = out.chunk(2, dim=-1)
            return mu, squash_log_std(raw, self.log_std_min, self.log_std_max)
        log_std = self.log_std.clamp(self.log_std_min, self.log_std_max) if self.kind == "gaussian" \
            else torch.zeros_like(out)
        return torch.tanh(out), log_std.expand_as(out)

    def mean(self, h: Tensor) -> Tensor:
        """The deterministic action ``[..., act_dim]``."""
        loc, _ = self.params(h)
        return torch.tanh(loc) if self.kind == "tanh_gaussian" else loc

    def log_prob(self, h: Tensor, act: Tensor) -> Tensor:
        loc, log_std = self.params(h)
        if self.kind == "deterministic":
            return -((loc - act) ** 2).sum(-1)
        if self.kind == "gaussian":
            z = (act - loc) / log_std.exp()
            return (-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        return tanh_gaussian_log_prob(loc, log_std, act, self.action_eps, self.boundary)

    def score_log_prob(self, h: Tensor, act: Tensor) -> Tensor:
        """``log_prob`` without the tanh-Gaussian's parameter-free Jacobian (see TanhGaussianPolicy)."""
        if self.kind != "tanh_gaussian":
            return self.log_prob(h, act)
        loc, log_std = self.params(h)
        return tanh_gaussian_log_prob(loc, log_std, act, self.action_eps, self.boundary, jacobian=False)

    def sample(self, h: Tensor, generator: torch.Generator | None = None) -> Tensor:
        loc, log_std = self.params(h)
        noise = torch.randn(loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
        if self.kind == "tanh_gaussian":
            return torch.tanh(loc + log_std.exp() * noise)
        if self.kind == "gaussian":
            return (loc + log_std.exp() * noise).clamp(-1.0, 1.0)
        return loc


POLICY_HEADS: dict[str, type[nn.Module]] = {"tanh_gaussian": TanhGaussianPolicy, "deterministic": DeterministicTanhPolicy,
                                            "gaussian": GaussianPolicy}
