"""Vectorised evaluation in the real simulators: returns, D4RL-style normalized scores, Meta-World success."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from pbrl.envs.gl import size_shadow_map
from pbrl.envs.registry import get_env_spec, make_env
from pbrl.errors import ConfigError, describe

BatchPolicy = Callable[[np.ndarray], np.ndarray]  # obs [N, obs_dim] -> actions [N, act_dim]; optional .reset(mask [N])


def evaluate(policy: BatchPolicy, env_name: str, *, episodes: int = 10, seed: int = 0,
             video_dir: str | os.PathLike | None = None, video_episodes: int = 0, video_size: int | None = None,
             dims: tuple[int, int] | None = None) -> dict[str, Any]:
    """Run ``episodes`` episodes at once in a SyncVectorEnv (one env per episode, env i seeded ``seed + i``).

    Returns ``return_mean``, ``return_std``, ``returns``, ``normalized_score`` (of the mean return),
    ``normalized_score_std``, ``length_mean``, ``episodes``, and ``success_rate`` for Meta-World tasks.
    ``dims`` (observation, action sizes the policy was trained on) are checked against the environment's.
    ``video_episodes`` more episodes are rendered to ``video_dir`` at ``video_size`` pixels square (None: the env's
    own size).
    """
    spec = get_env_spec(env_name)
    envs = gym.vector.SyncVectorEnv([lambda i=i: make_env(spec.name, seed=seed + i) for i in range(episodes)])
    if dims is not None:
        env_dims = (envs.single_observation_space.shape[0], envs.single_action_space.shape[0])
        if tuple(dims) != env_dims:
            envs.close()
            raise ConfigError(describe(f"env {spec.id}", "observation and action sizes", f"{env_dims}",
                                       f"{tuple(dims)}, the sizes the policy was trained on (evaluate it on its own "
                                       "environment, or --env another one with these sizes)"))
    obs, _ = envs.reset(seed=[seed + i for i in range(episodes)])
    reset = getattr(policy, "reset", None)  # a stateful actor (history, action chunks) starts its episodes
    if reset is not None:
        reset(np.ones(episodes, dtype=bool))
    returns = np.zeros(episodes)
    lengths = np.zeros(episodes, dtype=np.int64)
    success = np.zeros(episodes, dtype=bool)
    running = np.ones(episodes, dtype=bool)
    while running.any():
        action = np.asarray(policy(obs.astype(np.float32)), dtype=np.float32)
        obs, reward, term, trunc, info = envs.step(action)
        returns += reward * running
        lengths += running
        if "success" in info:
            success |= running & (np.asarray(info["success"]) > 0)
        running &= ~(term | trunc)
    envs.close()
    result: dict[str, Any] = {
        "env_id": spec.id,
        "episodes": episodes,
        "seed": seed,
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "returns": returns.tolist(),
        "normalized_score": spec.normalized_score(float(returns.mean())),
        "normalized_score_std": float(np.std([spec.normalized_score(r) for r in returns])),
        "length_mean": float(lengths.mean()),
    }
    if spec.family == "metaworld":
        result["success_rate"] = float(success.mean())
    if video_dir and video_episodes > 0:
        result["videos"] = record_videos(policy, spec.name, Path(video_dir), video_episodes, seed, size=video_size)
    return result


def record_videos(policy: BatchPolicy, env_name: str, out_dir: Path, episodes: int, seed: int, *,
                  size: int | None = None) -> list[str]:
    """Render ``episodes`` episodes to ``out_dir/episode_<i>.mp4``, ``size`` pixels square (None: the env's own; needs
    imageio[ffmpeg] and a GL backend:
    on a headless machine :func:`pbrl.envs.gl.choose_gl` picks EGL or OSMesa, as `pbrl eval --video` does)."""
    import imageio.v2 as imageio

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(episodes):
        env = make_env(env_name, seed=seed + i, render_mode="rgb_array", render_size=size)
        size_shadow_map(env, max(getattr(env.unwrapped, "width", 0) or 0, getattr(env.unwrapped, "height", 0) or 0, 1))
        obs, _ = env.reset(seed=seed + i)
        if getattr(policy, "reset", None) is not None:
            policy.reset(np.ones(1, dtype=bool))
        frames = [env.render()]
        done = False
        while not done:
            obs, _, term, trunc, _ = env.step(np.asarray(policy(obs[None].astype(np.float32)))[0])
            frames.append(env.render())
            done = term or trunc
        env.close()
        path = out_dir / f"episode_{i}.mp4"
        imageio.mimsave(path, frames, fps=int(env.metadata.get("render_fps", 30)))
        paths.append(str(path))
    return paths
