"""Diffusion policy (in the spirit of Chi et al., 2023, "Diffusion Policy"): an action *chunk* of ``horizon`` steps
denoised from Gaussian noise, conditioned on the last ``n_obs`` observations.

- Training: DDPM (Ho et al., 2020) with a cosine noise schedule (Nichol & Dhariwal, 2021, eq. 17), predicting the
  noise ε (``prediction="epsilon"``) or the velocity v = √ᾱ ε − √(1−ᾱ) x₀ (``"v"``, Salimans & Ho, 2022).
- Sampling: DDIM (Song et al., 2021, eq. 12 with η = 0) over a user-set number of steps of the training schedule.
  Its only randomness is the initial noise, which the caller may pass in (``noise``), else the caller's generator
  fills it: sampling never touches the global RNG, and an exported sampler can take the noise as an input.
- Denoisers: an MLP, or a 1-D convolutional U-Net over the chunk's time axis with FiLM conditioning (the layout of
  the Diffusion Policy paper's CNN backbone; its widths are ``channels``).
- What preference objectives need: :meth:`DiffusionPolicy.denoising_error`, the per-sample error of a given action
  chunk at a given noise and diffusion step, so a policy and a frozen reference can be scored on the *same* noise
  (the Diffusion-DPO score, Wallace et al., 2024, eq. 14), and :meth:`DiffusionPolicy.elbo_log_prob`, the negative
  mean error over draws: the surrogate for log π that CPL's chain score uses.

Shapes: ``obs [B, n_obs, obs_dim]``, chunks ``[B, horizon, act_dim]``. Forwards hold no data-dependent Python
control flow (the step loop of DDIM has a fixed length). The schedule, the forward process and the sampler are
:mod:`pbrl.core.diffusion`'s pure functions, shared with the image / video denoisers of :mod:`pbrl.sequence`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pbrl.core.diffusion import (
    cosine_alpha_bar,
    forward_coefficients,
    prediction_target,
    sample_chain,
    timestep_embedding,
)
from pbrl.nets.mlp import ObsNormalizer, mlp

PREDICTIONS = ("epsilon", "v")
DENOISERS = ("mlp", "unet1d")


class MLPDenoiser(nn.Module):
    """ε̂ or v̂ of a chunk: ``(x [B, H, da], k [B], obs_cond [B, C]) -> [B, H, da]``, an MLP on the flattened noisy
    chunk, the observation condition and a sinusoidal embedding of the diffusion step."""

    def __init__(self, horizon: int, act_dim: int, obs_cond_dim: int, *,
                 hidden_layers: list[int] | tuple[int, ...] = (256, 256), time_dim: int = 32):
        super().__init__()
        self.horizon, self.act_dim, self.time_dim = horizon, act_dim, time_dim
        self.net = mlp(horizon * act_dim + obs_cond_dim + time_dim, horizon * act_dim, hidden_layers, activation=nn.Mish)

    def forward(self, x: Tensor, k: Tensor, obs_cond: Tensor) -> Tensor:
        h = torch.cat([x.flatten(1), obs_cond, timestep_embedding(k, self.time_dim)], -1)
        return self.net(h).view(-1, self.horizon, self.act_dim)


class Conv1dBlock(nn.Sequential):
    """Conv1d → GroupNorm → Mish, length-preserving."""

    def __init__(self, c_in: int, c_out: int, kernel: int, groups: int):
        super().__init__(nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2), nn.GroupNorm(groups, c_out), nn.Mish())


class ResidualConv1d(nn.Module):
    """Two :class:`Conv1dBlock` with FiLM (scale, shift) from the condition between them, plus a residual path
    (a 1×1 conv where the width changes)."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel: int = 5, groups: int = 8):
        super().__init__()
        self.conv1, self.conv2 = Conv1dBlock(c_in, c_out, kernel, groups), Conv1dBlock(c_out, c_out, kernel, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out))
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        scale, shift = self.film(cond)[..., None].chunk(2, 1)
        return self.conv2(self.conv1(x) * (1 + scale) + shift) + self.skip(x)


class UNet1dDenoiser(nn.Module):
    """A 1-D U-Net over the chunk's time axis, the layout of Diffusion Policy's CNN backbone (Chi et al., 2023):
    the diffusion step is embedded (sinusoidal, then Linear → Mish → Linear) and joined to the observation
    condition; every level down holds ``blocks`` residual FiLM blocks and a stride-2 conv (not after the last),
    the middle ``blocks`` more at the coarsest resolution, and each level up joins the skip of its own resolution,
    refines with ``blocks`` more and upsamples with a transposed conv (the finest level's skip is not used, as in
    the reference layout); a final conv block and a 1×1 conv. ``(x [B, H, da], k [B], obs_cond [B, C]) -> [B, H, da]``; ``horizon`` must be
    divisible by 2^(levels − 1)."""

    def __init__(self, horizon: int, act_dim: int, obs_cond_dim: int, *, channels: tuple[int, ...] = (64, 128),
                 kernel: int = 5, groups: int = 8, time_dim: int = 64, blocks: int = 2):
        super().__init__()
        if horizon % 2 ** (len(channels) - 1):
            raise ValueError(f"unet1d: horizon {horizon} must be divisible by {2 ** (len(channels) - 1)}")
        self.time_dim = time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, 4 * time_dim), nn.Mish(), nn.Linear(4 * time_dim, time_dim))
        cond = time_dim + obs_cond_dim
        res = lambda a, b: ResidualConv1d(a, b, cond, kernel, groups)  # noqa: E731
        self.down = nn.ModuleList()
        c_prev = act_dim
        for i, c in enumerate(channels):
            last = i == len(channels) - 1
            self.down.append(nn.ModuleList([res(c_prev, c), *(res(c, c) for _ in range(blocks - 1)),
                                            nn.Identity() if last else nn.Conv1d(c, c, 3, stride=2, padding=1)]))
            c_prev = c
        self.mid = nn.ModuleList(res(c_prev, c_prev) for _ in range(blocks))
        self.up = nn.ModuleList()
        for c_skip, c in zip(reversed(channels[1:]), reversed(channels[:-1])):
            # at the current (coarse) resolution: join the same-resolution skip, refine, then upsample
            self.up.append(nn.ModuleList([res(c_prev + c_skip, c), *(res(c, c) for _ in range(blocks - 1)),
                                          nn.ConvTranspose1d(c, c, 4, stride=2, padding=1)]))
            c_prev = c
        self.out = nn.Sequential(Conv1dBlock(c_prev, c_prev, kernel, groups), nn.Conv1d(c_prev, act_dim, 1))

    def forward(self, x: Tensor, k: Tensor, obs_cond: Tensor) -> Tensor:
        cond = torch.cat([self.time_mlp(timestep_embedding(k, self.time_dim)), obs_cond], -1)
        h = x.transpose(1, 2)                                    # [B, da, H]
        skips = []
        for *blocks, down in self.down:
            for block in blocks:
                h = block(h, cond)
            skips.append(h)
            h = down(h)
        for block in self.mid:
            h = block(h, cond)
        for (*blocks, up), skip in zip(self.up, reversed(skips[1:])):
            h = torch.cat([h, skip], 1)
            for block in blocks:
                h = block(h, cond)
            h = up(h)
        return self.out(h).transpose(1, 2)


class DiffusionPolicy(nn.Module):
    """π(chunk | last ``n_obs`` observations) by denoising; see the module docstring.

    ``loss(obs, chunk) -> [B]`` (the training objective per sample), ``denoising_error(obs, chunk, noise, k)``,
    ``elbo_log_prob(obs, chunk, draws, generator)``, ``sample(obs, steps, generator | noise) -> [B, H, da]``."""

    is_chunked = True

    def __init__(self, obs_dim: int, act_dim: int, *, horizon: int = 16, n_obs: int = 2, denoiser: str = "mlp",
                 prediction: str = "epsilon", train_steps: int = 100, sample_steps: int = 10,
                 hidden_layers: list[int] | tuple[int, ...] = (256, 256), channels: tuple[int, ...] = (64, 128),
                 time_dim: int = 64, obs_mean: Tensor | None = None, obs_std: Tensor | None = None,
                 act_low: Tensor | None = None, act_high: Tensor | None = None):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction: got {prediction!r}, expected one of {PREDICTIONS}")
        if denoiser not in DENOISERS:
            raise ValueError(f"denoiser: got {denoiser!r}, expected one of {DENOISERS}")
        self.normalizer = ObsNormalizer(obs_mean if obs_mean is not None else torch.zeros(obs_dim),
                                        obs_std if obs_std is not None else torch.ones(obs_dim))
        obs_cond = n_obs * obs_dim
        self.denoiser = (MLPDenoiser(horizon, act_dim, obs_cond, hidden_layers=hidden_layers, time_dim=time_dim)
                         if denoiser == "mlp" else UNet1dDenoiser(horizon, act_dim, obs_cond, channels=tuple(channels),
                                                                  time_dim=time_dim))
        self.register_buffer("alpha_bar", cosine_alpha_bar(train_steps).float())
        # chunks are diffused in [−1, 1] per action dimension (Diffusion Policy's min-max normalisation): data
        # actions of small range would otherwise drown in unit noise
        low = act_low if act_low is not None else -torch.ones(act_dim)
        high = act_high if act_high is not None else torch.ones(act_dim)
        self.register_buffer("act_center", ((high + low) / 2).float())
        self.register_buffer("act_half_range", ((high - low) / 2).float().clamp_min(1e-3))
        self.obs_dim, self.act_dim, self.horizon, self.n_obs = obs_dim, act_dim, horizon, n_obs
        self.prediction, self.train_steps, self.sample_steps, self.time_dim = prediction, train_steps, sample_steps, time_dim

    # -- the network ------------------------------------------------------------------------------------
    def predict(self, x: Tensor, k: Tensor, obs: Tensor) -> Tensor:
        """The denoiser's output (ε̂ or v̂) for noisy chunks ``x`` [B, H, da] at steps ``k`` [B] (0-based)."""
        return self.denoiser(x, k, self.normalizer(obs).flatten(1))

    def to_unit(self, chunk: Tensor) -> Tensor:
        """Actions -> the [−1, 1] range the diffusion runs in (per dimension, from the data's min and max)."""
        return (chunk - self.act_center) / self.act_half_range

    def from_unit(self, x: Tensor) -> Tensor:
        return x * self.act_half_range + self.act_center

    # -- training and scoring -----------------------------------------------------------------------------
    def denoising_error(self, obs: Tensor, chunk: Tensor, noise: Tensor, k: Tensor) -> Tensor:
        """‖target − network(x_k)‖² per sample ``[B]`` (mean over the chunk) at the given ``noise`` [B, H, da] and
        steps ``k`` [B]: call it on a policy and a frozen reference with the same noise and steps to compare them."""
        chunk = self.to_unit(chunk)
        a, s = forward_coefficients(self.alpha_bar, k, chunk, self.prediction)
        x = a * chunk + s * noise
        return ((self.predict(x, k, obs) - prediction_target(chunk, noise, a, s, self.prediction)) ** 2).mean((-2, -1))

    def loss(self, obs: Tensor, chunk: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The DDPM objective per sample ``[B]``: a uniform step and fresh noise for each sample."""
        b = chunk.shape[0]
        k = torch.randint(0, self.train_steps, (b,), device=chunk.device, generator=generator)
        noise = torch.randn(chunk.shape, device=chunk.device, dtype=chunk.dtype, generator=generator)
        return self.denoising_error(obs, chunk, noise, k)

    def elbo_log_prob(self, obs: Tensor, chunk: Tensor, draws: int = 1, generator: torch.Generator | None = None) -> Tensor:
        """A surrogate for log π(chunk | obs) ``[B]``: minus the denoising error averaged over ``draws`` (step,
        noise) draws, i.e. the ELBO up to constants and step weights (Ho et al., 2020, eq. 14)."""
        return -torch.stack([self.loss(obs, chunk, generator) for _ in range(draws)]).mean(0)

    # -- sampling ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, obs: Tensor, steps: int | None = None, generator: torch.Generator | None = None,
               noise: Tensor | None = None) -> Tensor:
        """DDIM (η = 0) over ``steps`` (default ``sample_steps``) evenly spaced steps of the training schedule, from
        ``noise`` [B, H, da] (drawn from ``generator`` when not given) -> action chunks within the data's range."""
        x = noise if noise is not None else torch.randn(obs.shape[0], self.horizon, self.act_dim, device=obs.device,
                                                        generator=generator)
        x = sample_chain(lambda x_k, k: self.predict(x_k, k, obs), x, prediction=self.prediction,
                         alpha_bar=self.alpha_bar, steps=steps or self.sample_steps, clip=1.0)
        return self.from_unit(x)

    def forward(self, obs: Tensor, noise: Tensor) -> Tensor:
        """Export form: ``(obs [B, n_obs, do], noise [B, H, da]) -> chunk``; the noise is an explicit input."""
        return self.sample(obs, noise=noise)


def diffusion_windows(obs: Tensor, act: Tensor, mask: Tensor, n_obs: int, horizon: int) -> tuple[Tensor, Tensor, Tensor]:
    """Training samples from segments: for every step t of each segment, the observations t−n_obs+1..t (the first
    repeated before the segment starts) and the actions t..t+horizon−1. ``obs [..., T, do]``, ``act [..., T, da]``,
    ``mask [..., T]`` -> ``(obs [N, n_obs, do], chunk [N, horizon, da], valid [N])``, valid where the whole chunk
    lies on real steps."""
    do, da, t = obs.shape[-1], act.shape[-1], obs.shape[-2]
    obs, act, mask = obs.reshape(-1, t, do), act.reshape(-1, t, da), mask.reshape(-1, t)
    padded_obs = torch.cat([obs[:, :1].expand(-1, n_obs - 1, -1), obs], 1)                   # [B, T+n_obs−1, do]
    hist = padded_obs.unfold(1, n_obs, 1).permute(0, 1, 3, 2)                                 # [B, T, n_obs, do]
    tail = torch.zeros(act.shape[0], horizon - 1, da, device=act.device, dtype=act.dtype)
    chunks = torch.cat([act, tail], 1).unfold(1, horizon, 1).permute(0, 1, 3, 2)             # [B, T, H, da]
    tail_mask = torch.zeros(mask.shape[0], horizon - 1, dtype=torch.bool, device=mask.device)
    valid = torch.cat([mask, tail_mask], 1).unfold(1, horizon, 1).all(-1)                     # [B, T]
    return hist.reshape(-1, n_obs, do), chunks.reshape(-1, horizon, da), valid.reshape(-1)


@dataclass(frozen=True)
class ChainDraw:
    """One draw per chunk for :func:`chain_log_prob`: the diffusion step ``k`` ``[..., n]`` and the noise
    ``[..., n, H, da]``, over the segments' leading dims (size 1 on dims that share a draw) and the ``n`` chunks."""

    k: Tensor
    noise: Tensor


def chunk_starts(t: int, horizon: int, device: torch.device | str) -> Tensor:
    """``[T]`` bool: the first step of each consecutive chunk of ``horizon`` steps."""
    starts = torch.zeros(t, dtype=torch.bool, device=device)
    starts[::horizon] = True
    return starts


def draw_chain(policy: DiffusionPolicy, lead: tuple[int, ...], t: int, *, shared: tuple[int, ...] = (),
               generator: torch.Generator | None = None, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> ChainDraw:
    """The (step, noise) draw of segments with leading dims ``lead`` and ``t`` steps; dims in ``shared`` draw once.
    Pass it to :func:`chain_log_prob` for a policy and a frozen reference alike, so that their scores differ by
    the models, not the draws (Diffusion-DPO; Diff-UAPA)."""
    n = int(chunk_starts(t, policy.horizon, device).sum())
    shape = tuple(1 if i in shared else d for i, d in enumerate(lead))
    k = torch.randint(0, policy.train_steps, (*shape, n), device=device, generator=generator)
    noise = torch.randn(*shape, n, policy.horizon, policy.act_dim, device=device, dtype=dtype, generator=generator)
    return ChainDraw(k, noise)


def chain_log_prob(policy: DiffusionPolicy, obs: Tensor, act: Tensor, mask: Tensor, *, shared: tuple[int, ...] = (),
                   generator: torch.Generator | None = None, draw: ChainDraw | None = None) -> tuple[Tensor, Tensor]:
    """The chain score of segments under a diffusion policy: the segment is cut into consecutive chunks of
    ``policy.horizon`` steps (starting at step 0), and each chunk scores ``−(H · act_dim) × denoising error`` at one
    (step, noise) draw: the ELBO surrogate of its log-likelihood, summed over the chunk's elements so that it is
    on the scale of ``Σ_t log π(a_t|s_t)`` over its steps. The score sits at each chunk's first step.

    ``obs [..., T, do]``, ``act [..., T, da]``, ``mask [..., T]`` -> ``(score [..., T], chunk_mask [..., T])``: feed
    them to the CPL losses as per-step log-probabilities and mask. ``draw`` (:func:`draw_chain`) fixes the steps and
    the noise; without it they are drawn here, once per leading dim, except that dims named in ``shared`` draw the
    same (a pair's two segments, ``shared=(1,)``: their margin then compares the segments, not the draws)."""
    lead, t = obs.shape[:-2], obs.shape[-2]
    hist, chunk, valid = diffusion_windows(obs, act, mask, policy.n_obs, policy.horizon)
    starts = chunk_starts(t, policy.horizon, obs.device)
    chunk_mask = valid.view(*lead, t) & starts
    n = int(starts.sum())
    if draw is None:
        draw = draw_chain(policy, tuple(lead), t, shared=shared, generator=generator, device=obs.device,
                          dtype=obs.dtype)
    take = lambda x: x.view(-1, t, *x.shape[1:])[:, starts].reshape(*lead, n, *x.shape[1:])  # noqa: E731
    h, c = take(hist), take(chunk)                                                    # [..., n, n_obs, do], [..., n, H, da]
    k = draw.k.expand(*lead, n)
    noise = draw.noise.expand(*lead, n, policy.horizon, policy.act_dim)
    flat = lambda x: x.reshape(-1, *x.shape[len(lead) + 1:])  # noqa: E731
    err = policy.denoising_error(flat(h), flat(c), flat(noise), k.reshape(-1)).view(*lead, n)
    score = torch.zeros(*lead, t, dtype=err.dtype, device=obs.device)
    score[..., starts] = -(policy.horizon * policy.act_dim) * err
    return score * chunk_mask, chunk_mask


__all__ = ["DENOISERS", "PREDICTIONS", "ChainDraw", "DiffusionPolicy", "MLPDenoiser", "UNet1dDenoiser",
           "chain_log_prob", "chunk_starts", "cosine_alpha_bar", "diffusion_windows", "draw_chain", "timestep_embedding"]
