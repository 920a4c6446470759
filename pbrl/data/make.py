"""Dataset generation from real simulators.

MuJoCo locomotion: behaviour policies trained with stable-baselines3 (SAC or PPO), D4RL-style mixtures:

- ``random``: uniform random actions;
- ``medium``: rollouts of the policy at the end of a (short) training budget;
- ``medium-replay``: every episode the learner saw while it was trained up to that budget (its replay);
- ``expert``: rollouts of a policy trained for the expert budget;
- ``medium-expert``: ``medium`` and ``expert`` concatenated;
- ``medium-noisy``: the ``medium`` policy's deterministic action plus Gaussian noise N(0, σ²) (clipped to the
  bounds), an equal share of the transitions at each σ of ``noise``: one suboptimal policy with action noise, the
  way CPL's official code builds its datasets (``scripts/create_dataset.py --checkpoint … --noise σ`` of
  jhejna/cpl), where ``medium-replay`` replays a learner whose own exploration shrinks as it improves.

Meta-World: the benchmark's own scripted policies with Gaussian action noise at several scales, which
gives a mixture of successful, slow and failed attempts.

Behaviour training checkpoints every ``chunk`` steps (model, normaliser, recorded episodes) and resumes.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np

from pbrl.data.store import Episode, atomic_path, atomic_write_text, write_trajectories
from pbrl.envs.registry import EnvSpec, get_env_spec, make_env
from pbrl.errors import ConfigError, describe
from pbrl.io import Progress

MIXTURES = ("random", "medium", "medium-replay", "medium-expert", "expert", "medium-noisy")
PolicyFn = Callable[[np.ndarray], np.ndarray]


class RecordingWrapper(gym.Wrapper):
    """Records every finished episode (raw observations, executed actions, rewards, scalar infos)."""

    def __init__(self, env: gym.Env, source: str = ""):
        super().__init__(env)
        self.episodes: list[Episode] = []
        self.source = source
        self._reset_buffers(None)

    def _reset_buffers(self, obs: np.ndarray | None) -> None:
        self._obs: list[np.ndarray] = [] if obs is None else [np.asarray(obs, np.float32)]
        self._act: list[np.ndarray] = []
        self._rew: list[float] = []
        self._infos: dict[str, list[float]] = {}

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._reset_buffers(obs)  # a partial episode (e.g. cut by a resume) is dropped, never stored
        return obs, info

    def step(self, action):
        action = np.clip(np.asarray(action, np.float32), self.action_space.low, self.action_space.high)
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._act.append(action)
        self._rew.append(float(reward))
        for k, v in info.items():
            if np.isscalar(v) and isinstance(v, (int, float, np.number, bool, np.bool_)):
                self._infos.setdefault(k, []).append(float(v))
        if terminated or truncated:
            n = len(self._rew)
            infos = {k: np.asarray(v, np.float32) for k, v in self._infos.items() if len(v) == n}
            self.episodes.append(Episode(np.stack(self._obs[:n]), np.stack(self._act), np.asarray(self._rew, np.float32),
                                         bool(terminated), np.asarray(obs, np.float32), self.source, infos))
            self._reset_buffers(None)
        else:
            self._obs.append(np.asarray(obs, np.float32))
        return obs, reward, terminated, truncated, info


def rollout(env_name: str, policy: PolicyFn, transitions: int, *, seed: int, source: str,
            desc: str | None = None) -> list[Episode]:
    """Roll out ``policy`` (obs [obs_dim] -> action [act_dim]) for whole episodes until ``transitions`` steps."""
    env = RecordingWrapper(make_env(env_name, seed=seed), source)
    obs, _ = env.reset(seed=seed)
    steps = 0
    with Progress(transitions, desc=desc or f"rollout {source}") as bar:
        while steps < transitions or len(env._rew) > 0:
            obs, _, term, trunc, _ = env.step(policy(obs))
            steps += 1
            bar.update(1)
            if term or trunc:
                obs, _ = env.reset()
    env.close()
    return env.episodes


def random_policy(env_name: str, seed: int) -> PolicyFn:
    space = make_env(env_name).action_space
    rng = np.random.default_rng(seed)
    return lambda obs: rng.uniform(space.low, space.high).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# stable-baselines3 behaviour policies
# ---------------------------------------------------------------------------------------------------------

# Behaviour trainers. `ppo`: PPO settings for MuJoCo locomotion (the shipped medium-replay set was made with them);
# on Hopper-v5 they plateau near D4RL's 'medium' level (about 900 return after 1M steps, seed 0), so an expert needs
# `sac` (SB3's defaults). RL Zoo's tuned Hopper PPO was tried for experts and settled on standing still (return
# ~1,040 for 1,000 steps from 250k steps on, seed 0).
ALGOS = ("sac", "ppo")
PPO_SETTINGS = {
    "ppo": dict(kwargs=dict(n_steps=512, batch_size=64, gamma=0.99, learning_rate=3e-4, ent_coef=0.0, clip_range=0.2,
                            n_epochs=10, gae_lambda=0.95, max_grad_norm=0.5, vf_coef=0.5),
                policy_kwargs=dict(log_std_init=-1.0, net_arch=dict(pi=[256, 256], vf=[256, 256])), gamma=0.99),
}


@dataclass
class BehaviourRun:
    """A behaviour policy in training or trained: where it lives, how far it got, what it recorded."""

    directory: Path
    algo: str
    env_name: str
    seed: int

    @property
    def progress_file(self) -> Path:
        return self.directory / "progress.json"

    def steps_done(self) -> int:
        if not self.progress_file.exists():
            return 0
        return int(json.loads(self.progress_file.read_text())["steps"])

    def episodes(self) -> list[Episode]:
        p = self.directory / "episodes.pkl"
        if not p.exists():
            return []
        with open(p, "rb") as f:
            return pickle.load(f)


def _build_vec_env(env_name: str, seed: int, source: str):
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    recorder: dict[str, RecordingWrapper] = {}

    def factory():
        rec = RecordingWrapper(make_env(env_name, seed=seed), source)
        recorder["env"] = rec
        return Monitor(rec)

    venv = DummyVecEnv([factory])
    venv.seed(seed)
    return venv, recorder["env"]


def train_behaviour(env_name: str, *, algo: str = "sac", steps: int, seed: int, directory: str | os.PathLike,
                    chunk: int = 25_000) -> BehaviourRun:
    """Train (or resume training) a stable-baselines3 policy for ``steps`` env steps, recording every episode.

    Saves ``model.zip``, ``vecnormalize.pkl`` (PPO), ``episodes.pkl`` and ``progress.json`` atomically after
    each ``chunk`` steps; a second call with the same directory continues where the first stopped.
    """
    import torch
    from stable_baselines3 import PPO, SAC
    from stable_baselines3.common.vec_env import VecNormalize

    if algo not in ALGOS:
        raise ConfigError(describe("--algo", "behaviour trainer", repr(algo), f"one of {list(ALGOS)}"))
    torch.set_num_threads(1)
    run = BehaviourRun(Path(directory), algo, env_name, seed)
    run.directory.mkdir(parents=True, exist_ok=True)
    done = run.steps_done()
    if done >= steps:
        return run
    venv, recorder = _build_vec_env(env_name, seed, source=f"{algo}-replay")
    recorder.episodes = run.episodes()
    model_path = run.directory / "model.zip"
    norm_path = run.directory / "vecnormalize.pkl"
    ppo = PPO_SETTINGS.get(algo)
    if ppo is not None:
        venv = VecNormalize.load(str(norm_path), venv) if norm_path.exists() else VecNormalize(venv, gamma=ppo["gamma"])
    if model_path.exists():
        model = (SAC if ppo is None else PPO).load(str(model_path), env=venv, seed=seed, device="cpu")
    elif ppo is not None:
        model = PPO("MlpPolicy", venv, seed=seed, device="cpu", verbose=0, policy_kwargs=ppo["policy_kwargs"],
                    **ppo["kwargs"])
    else:
        model = SAC("MlpPolicy", venv, seed=seed, device="cpu", verbose=0, learning_starts=5_000)
    with Progress(steps, initial=done, desc=f"train {algo} on {env_name}") as bar:
        while done < steps:
            n = min(chunk, steps - done)
            model.learn(n, reset_num_timesteps=False, progress_bar=False)
            done += n
            for ep in recorder.episodes:
                if "@" not in ep.source:
                    ep.source = f"{algo}-replay@{done}"
            tmp_model = run.directory / ".model.tmp.zip"  # SB3 insists on a .zip suffix
            model.save(str(tmp_model))
            os.replace(tmp_model, model_path)
            if ppo is not None:
                tmp = atomic_path(norm_path)
                venv.save(str(tmp))
                os.replace(tmp, norm_path)
            atomic_write_text(run.directory / "episodes.pkl", pickle.dumps(recorder.episodes))
            recent = [float(e.rewards.sum()) for e in recorder.episodes[-20:]]
            atomic_write_text(run.progress_file, json.dumps(
                {"steps": done, "episodes": len(recorder.episodes), "recent_return": float(np.mean(recent)) if recent else None}))
            bar.update(n)
            bar.set_postfix_str(f"recent_return={np.mean(recent):.0f}" if recent else "recent_return=-")
    venv.close()
    return run


def load_behaviour_policy(run: BehaviourRun, *, deterministic: bool = False) -> PolicyFn:
    """The trained policy as a function obs -> action (applies PPO's observation normaliser)."""
    from stable_baselines3 import PPO, SAC
    from stable_baselines3.common.vec_env import VecNormalize

    model = (PPO if run.algo in PPO_SETTINGS else SAC).load(str(run.directory / "model.zip"), device="cpu")
    normalise: Callable[[np.ndarray], np.ndarray] = lambda o: o  # noqa: E731
    norm_path = run.directory / "vecnormalize.pkl"
    if norm_path.exists():
        venv, _ = _build_vec_env(run.env_name, 0, "")
        stats = VecNormalize.load(str(norm_path), venv)
        stats.training = False
        normalise = stats.normalize_obs

    def policy(obs: np.ndarray) -> np.ndarray:
        action, _ = model.predict(normalise(obs[None].astype(np.float32)), deterministic=deterministic)
        return action[0]

    return policy


def subsample_episodes(episodes: list[Episode], transitions: int | None, seed: int) -> list[Episode]:
    """Keep a uniformly spread, order-preserving subset of whole episodes with about ``transitions`` steps."""
    total = sum(len(e) for e in episodes)
    if transitions is None or total <= transitions:
        return episodes
    rng = np.random.default_rng(seed)
    keep = rng.random(len(episodes)) < transitions / total
    return [e for e, k in zip(episodes, keep) if k]


def make_mujoco_dataset(env_name: str, mixture: str, *, out: str | os.PathLike, seed: int, algo: str,
                        medium_steps: int, expert_steps: int, transitions: int, behaviour_dir: str | os.PathLike,
                        command: str = "", expert_algo: str | None = None,
                        noise: tuple[float, ...] = (0.1, 0.3, 0.5)) -> Path:
    """Build one D4RL-style mixture for a MuJoCo task and write it to ``out`` (``noise``: the σ of ``medium-noisy``)."""
    spec = get_env_spec(env_name)
    if mixture not in MIXTURES:
        raise ConfigError(describe("--mixture", "mixture", repr(mixture), f"one of {list(MIXTURES)}"))
    bdir = Path(behaviour_dir)
    episodes: list[Episode] = []
    policy_desc = ""
    if mixture == "random":
        episodes = rollout(spec.name, random_policy(spec.name, seed), transitions, seed=seed, source="random")
        policy_desc = "uniform random actions"
    if mixture in ("medium", "medium-replay", "medium-expert", "medium-noisy"):
        run = train_behaviour(spec.name, algo=algo, steps=medium_steps, seed=seed,
                              directory=bdir / f"{spec.name}-{algo}-{medium_steps}-s{seed}")
        if mixture == "medium-noisy":
            episodes = noisy_rollouts(spec.name, load_behaviour_policy(run, deterministic=True), noise, transitions,
                                      seed=seed, source=f"medium-{algo}")
            policy_desc = (f"stable-baselines3 {algo.upper()} after {medium_steps} steps, deterministic action + "
                           f"N(0, sigma^2) noise, sigma in {list(noise)}")
        elif mixture == "medium-replay":
            episodes = subsample_episodes(run.episodes(), transitions, seed)
            policy_desc = f"replay of stable-baselines3 {algo.upper()} trained for {medium_steps} steps"
        else:
            episodes = rollout(spec.name, load_behaviour_policy(run), transitions, seed=seed, source=f"medium-{algo}")
            policy_desc = f"stable-baselines3 {algo.upper()} after {medium_steps} steps (stochastic actions)"
    if mixture in ("expert", "medium-expert"):
        ealgo = expert_algo or algo
        run = train_behaviour(spec.name, algo=ealgo, steps=expert_steps, seed=seed,
                              directory=bdir / f"{spec.name}-{ealgo}-{expert_steps}-s{seed}")
        episodes += rollout(spec.name, load_behaviour_policy(run), transitions, seed=seed + 1, source=f"expert-{ealgo}")
        policy_desc = (policy_desc + " + " if policy_desc else "") + f"stable-baselines3 {ealgo.upper()} after {expert_steps} steps"
    return write_trajectories(out, episodes, env_id=spec.id, behaviour_policy=policy_desc, seed=seed,
                              metadata={"mixture": mixture, "algo": algo, "expert_algo": expert_algo or algo,
                                        "medium_steps": medium_steps, "expert_steps": expert_steps,
                                        **({"noise": list(noise)} if mixture == "medium-noisy" else {}),
                                        "command": command})


def noisy_rollouts(env_name: str, policy: PolicyFn, noise: tuple[float, ...], transitions: int, *, seed: int,
                   source: str) -> list[Episode]:
    """``policy(obs) + N(0, σ²)`` clipped to [−1, 1], ``transitions / len(noise)`` steps at each σ of ``noise`` (env
    seed ``seed + 1000 i`` for the i-th σ; the noise from one stream seeded ``seed``); each episode's source is
    ``{source}+noise{σ}``."""
    rng = np.random.default_rng(seed)
    episodes: list[Episode] = []
    for i, sigma in enumerate(noise):
        def act(obs: np.ndarray, sigma: float = sigma) -> np.ndarray:
            a = np.asarray(policy(obs), np.float32)
            return np.clip(a + sigma * rng.standard_normal(a.shape), -1, 1).astype(np.float32)

        episodes += rollout(env_name, act, transitions // len(noise), seed=seed + 1000 * i,
                            source=f"{source}+noise{sigma:g}")
    return episodes


def metaworld_scripted_policy(spec: EnvSpec) -> PolicyFn:
    """Meta-World's own hand-written policy for a task (``button-press-v3`` -> SawyerButtonPressV3Policy)."""
    import metaworld.policies as policies

    name = "Sawyer" + "".join(part.capitalize() for part in spec.id.replace("-v3", "").split("-")) + "V3Policy"
    if not hasattr(policies, name):
        raise ConfigError(describe("--env", "Meta-World scripted policy", name, "a task with a policy in metaworld.policies"))
    pol = getattr(policies, name)()
    return lambda obs: np.asarray(pol.get_action(obs), np.float32)


def make_metaworld_dataset(env_name: str, *, out: str | os.PathLike, seed: int, noise: tuple[float, ...],
                           transitions: int, command: str = "", reversed_fraction: float = 0.0) -> Path:
    """Scripted policy + Gaussian action noise, an equal share of transitions at each noise scale. With
    ``reversed_fraction`` f, that share of the transitions comes instead from the *reversed* scripted policy
    (−π_scripted + noise, at the same noise scales): a deliberately bad operator whose actions BC averages in, so
    BC on the mixture falls short and what the labels say about good and bad behaviour decides the score."""
    spec = get_env_spec(env_name)
    if spec.family != "metaworld":
        raise ConfigError(describe("--env", "environment family", spec.family, "'metaworld' for scripted policies"))
    if not 0.0 <= reversed_fraction < 1.0:
        raise ConfigError(describe("--reversed", "fraction", reversed_fraction, "a value in [0, 1)"))
    scripted = metaworld_scripted_policy(spec)
    rng = np.random.default_rng(seed)
    episodes: list[Episode] = []
    shares = [(1.0, 1.0 - reversed_fraction)] + ([(-1.0, reversed_fraction)] if reversed_fraction > 0 else [])
    for sign, share in shares:
        for i, sigma in enumerate(noise):
            def policy(obs: np.ndarray, sigma: float = sigma, sign: float = sign) -> np.ndarray:
                return np.clip(sign * scripted(obs) + sigma * rng.standard_normal(4), -1, 1).astype(np.float32)

            episodes += rollout(spec.name, policy, int(transitions * share) // len(noise),
                                seed=seed + 1000 * i + (0 if sign > 0 else 500),
                                source=f"{'reversed-' if sign < 0 else ''}scripted+noise{sigma:g}")
    what = f"Meta-World scripted policy + N(0, sigma^2) noise, sigma in {list(noise)}" + (
        f"; {reversed_fraction:g} of the steps from the reversed policy (-scripted + noise)" if reversed_fraction else "")
    return write_trajectories(out, episodes, env_id=spec.id, behaviour_policy=what, seed=seed,
                              metadata={"mixture": "scripted-noise" + ("-reversed" if reversed_fraction else ""),
                                        "noise": list(noise), "command": command,
                                        **({"reversed_fraction": reversed_fraction} if reversed_fraction else {})})
