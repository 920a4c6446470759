"""Evaluation actors: what acts in N environments at once. An actor has ``reset(env_mask)`` (a new episode in the
environments where ``env_mask`` [N] is true) and ``__call__(obs [N, obs_dim]) -> actions [N, act_dim]``, and its
own ``torch.Generator`` (sampling never touches the training RNG, so resume stays exact)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor


class Actor:
    def __init__(self, num_envs: int, *, seed: int = 0, device: torch.device | str = "cpu"):
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def _mask(self, env_mask: Tensor | None) -> Tensor:
        if env_mask is None:
            return torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        return torch.as_tensor(env_mask, dtype=torch.bool, device=self.device)

    def reset(self, env_mask: Tensor | None = None) -> None:
        """Start new episodes where ``env_mask`` [N] is true (all when None)."""

    def __call__(self, obs: Tensor) -> Tensor:
        raise NotImplementedError


class PolicyActor(Actor):
    """A memoryless policy ``act(obs [N, obs_dim]) -> [N, act_dim]``: reset has nothing to clear."""

    def __init__(self, act: Callable[[Tensor], Tensor], num_envs: int, *, seed: int = 0,
                 device: torch.device | str = "cpu"):
        super().__init__(num_envs, seed=seed, device=device)
        self.act = act

    @torch.no_grad()
    def __call__(self, obs: Tensor) -> Tensor:
        return self.act(obs)


WindowPolicy = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


class HistoryActor(Actor):
    """Keeps each environment's last ``context`` observations, actions and timesteps, and acts with
    ``policy(obs [N,K,do], act [N,K,da], timestep [N,K], mask [N,K]) -> [N, da]`` on that window (the newest step
    last; its action slot holds zeros until the action is taken). ``reset`` clears only the masked envs."""

    def __init__(self, policy: WindowPolicy, num_envs: int, obs_dim: int, act_dim: int, context: int, *,
                 seed: int = 0, device: torch.device | str = "cpu"):
        super().__init__(num_envs, seed=seed, device=device)
        self.policy, self.context = policy, context
        self.obs = torch.zeros(num_envs, context, obs_dim, device=self.device)
        self.act = torch.zeros(num_envs, context, act_dim, device=self.device)
        self.timestep = torch.zeros(num_envs, context, dtype=torch.long, device=self.device)
        self.mask = torch.zeros(num_envs, context, dtype=torch.bool, device=self.device)
        self.t = torch.zeros(num_envs, dtype=torch.long, device=self.device)

    def reset(self, env_mask: Tensor | None = None) -> None:
        m = self._mask(env_mask)
        for buf in (self.obs, self.act, self.timestep, self.mask):
            buf[m] = 0
        self.t[m] = 0

    @torch.no_grad()
    def __call__(self, obs: Tensor) -> Tensor:
        roll = lambda x, new: torch.cat([x[:, 1:], new[:, None]], 1)  # noqa: E731
        self.obs = roll(self.obs, obs.to(self.obs.dtype))
        self.act = roll(self.act, torch.zeros_like(self.act[:, 0]))
        self.timestep = roll(self.timestep, self.t)
        self.mask = roll(self.mask, torch.ones_like(self.mask[:, 0]))
        action = self.policy(self.obs, self.act, self.timestep, self.mask)
        self.act[:, -1] = action
        self.t += 1
        return action


ChunkSampler = Callable[[Tensor, Tensor], Tensor]


class ChunkActor(Actor):
    """Receding-horizon execution of an action-chunk policy (Diffusion Policy): keeps each environment's last
    ``n_obs`` observations, samples a chunk ``sample(obs [M, n_obs, do], noise [M, H, da]) -> [M, H, da]`` for the
    environments whose queue is spent, and executes its first ``n_action`` actions before sampling again. A new
    episode's history is its first observation repeated. ``reset`` clears only the masked environments.

    The noise comes from one numpy stream per (seed, environment), ``numpy.random.default_rng([seed, env])``, a chunk
    its next ``standard_normal([horizon, act_dim], float32)``: the streams the exported policy's runtime draws from
    (:mod:`pbrl.deploy.noise`, which may import nothing of this side), so an export evaluates as its run does on the
    same seed (tests/test_export.py holds the two to 1e-5 over whole episodes).

    Between chunks a call costs one copy of the observation and a Python index into the chunk: positions and
    pending resets live on the host (no device synchronisation), and the queue is replaced, never written in place,
    so the actions handed out are views that stay valid."""

    def __init__(self, sample: ChunkSampler, num_envs: int, obs_dim: int, act_dim: int, *, n_obs: int, horizon: int,
                 n_action: int, seed: int = 0, device: torch.device | str = "cpu"):
        super().__init__(num_envs, seed=seed, device=device)
        if not 1 <= n_action <= horizon:
            raise ValueError(f"n_action: got {n_action}, expected 1 to the horizon ({horizon})")
        self.sample, self.n_obs, self.n_action = sample, n_obs, n_action
        self.history: deque[Tensor] = deque(maxlen=n_obs)  # the last n_obs observations [N, obs_dim], oldest first
        self.queue = torch.zeros(num_envs, horizon, act_dim, device=self.device)
        self.actions = self.queue.unbind(1)
        self.pos = [n_action] * num_envs  # next action's index in each queue; n_action: spent, sample first
        self.fresh = set(range(num_envs))  # environments whose history restarts at the next observation
        self.noise_seed, self.streams = seed, {}  # env -> its numpy noise stream

    @property
    def obs(self) -> Tensor:
        """Each environment's last ``n_obs`` observations, oldest first: ``[N, n_obs, obs_dim]``."""
        return torch.stack(tuple(self.history), 1)

    def reset(self, env_mask: Tensor | None = None) -> None:
        for i in torch.nonzero(self._mask(env_mask)).flatten().tolist():
            self.pos[i] = self.n_action
            self.fresh.add(i)

    def _restart_history(self, obs: Tensor) -> None:
        while len(self.history) < self.n_obs:
            self.history.appendleft(obs.clone())
        rows = torch.tensor(sorted(self.fresh), device=self.device)
        for past in tuple(self.history)[:-1]:
            past[rows] = obs[rows]
        self.fresh.clear()

    def _noise(self, envs: list[int]) -> np.ndarray:
        """The next initial noise of each listed environment's stream: ``[len(envs), horizon, act_dim]`` float32."""
        shape = tuple(self.queue.shape[1:])
        out = np.empty((len(envs), *shape), np.float32)
        for row, env in enumerate(envs):
            if env not in self.streams:
                self.streams[env] = np.random.default_rng([self.noise_seed, env])
            out[row] = self.streams[env].standard_normal(shape, dtype=np.float32)
        return out

    def _sample(self, need: list[int]) -> None:
        with torch.no_grad():
            rows = torch.tensor(need, device=self.device)
            noise = torch.from_numpy(self._noise(need)).to(self.device, self.queue.dtype)
            chunk = self.sample(self.obs[rows], noise).to(self.queue.dtype)
        if len(need) == self.num_envs:
            self.queue = chunk
        else:
            self.queue = self.queue.clone()
            self.queue[rows] = chunk
        self.actions = self.queue.unbind(1)
        for i in need:
            self.pos[i] = 0

    def __call__(self, obs: Tensor) -> Tensor:
        obs = obs.clone() if obs.dtype == self.queue.dtype else obs.to(self.queue.dtype)
        self.history.append(obs)
        if self.fresh:
            self._restart_history(obs)
        need = [i for i, p in enumerate(self.pos) if p >= self.n_action]
        if need:
            self._sample(need)
        first = self.pos[0]
        if all(p == first for p in self.pos):
            action = self.actions[first]
        else:
            action = self.queue[torch.arange(self.num_envs, device=self.device), torch.tensor(self.pos, device=self.device)]
        self.pos = [p + 1 for p in self.pos]
        return action
