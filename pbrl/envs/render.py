"""Frames drawn from observations alone, and videos of them (the annotation page's segment videos).

Datasets keep observations, not simulator states, so each family rebuilds a drawable state from them
(:func:`observation_frames`; the annotation page cuts a dataset's segment and draws it: ``pbrl.annotate.queries``):

- ``mujoco`` (gymnasium locomotion): the observation is ``qpos[k:] ++ qvel`` (the first ``k`` root positions
  are left out). The state is set from it; the left-out root position is integrated from the root velocity
  over the segment, so the body travels across the floor as it did.
- ``metaworld`` and ``overcooked``: see :func:`metaworld_frames` and :func:`overcooked_frames`.

Headless rendering needs a GL backend: :func:`pbrl.envs.gl.choose_gl` picks EGL or OSMesa.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pbrl.envs.gl import choose_gl, rendering_env
from pbrl.envs.registry import get_env_spec
from pbrl.errors import ConfigError, DatasetError, describe
from pbrl.io import atomic_path, commit_atomic


def mujoco_frames(env_id: str, observations: np.ndarray, size: int) -> np.ndarray:
    """``[T, size, size, 3]`` uint8 frames of a gymnasium MuJoCo env set to each of ``observations`` [T, obs_dim]."""
    env = rendering_env(env_id, size)
    sim = env.unwrapped
    nq, nv = sim.model.nq, sim.model.nv
    hidden = nq + nv - observations.shape[1]
    if not 0 <= hidden <= 2:
        raise DatasetError(describe(env_id, "observation size", observations.shape[1],
                                    f"qpos[k:] ++ qvel, {nq + nv - 2} to {nq + nv} numbers, to be rendered"))
    env.reset(seed=0)
    root = np.zeros(hidden)
    frames = []
    for obs in observations.astype(np.float64):
        qpos = np.concatenate([root, obs[: nq - hidden]])
        qvel = obs[nq - hidden: nq - hidden + nv]
        sim.set_state(qpos, qvel)
        frames.append(env.render())
        root = root + qvel[:hidden] * sim.dt  # where the root goes next: the observation leaves it out
    return np.stack(frames).astype(np.uint8)


def metaworld_frames(env_id: str, observations: np.ndarray, size: int) -> np.ndarray:
    """``[T, size, size, 3]`` uint8 frames of a Meta-World task (hand and objects placed from each observation)."""
    from pbrl.envs.metaworld_render import frames

    return frames(env_id, observations, size)


def overcooked_frames(layout: str, observations: np.ndarray, size: int) -> np.ndarray:
    """``[T, size, size, 3]`` uint8 frames of an Overcooked game drawn from pbrl's features of each step."""
    from pbrl.envs.overcooked_render import frames

    return frames(layout, observations, size)


def observation_frames(env_id: str, observations: np.ndarray, *, size: int = 192) -> np.ndarray:
    """``[T, size, size, 3]`` uint8 frames of env ``env_id`` (a preset name or a gymnasium id) set to each of
    ``observations`` ``[T, obs_dim]``, drawn the way its family can (see the module docstring)."""
    spec = get_env_spec(env_id)
    draw: dict[str, Callable[[], np.ndarray]] = {
        "mujoco": lambda: mujoco_frames(spec.id, observations, size),
        "metaworld": lambda: metaworld_frames(spec.id, observations, size),
        "overcooked": lambda: overcooked_frames(spec.layout, observations, size),
    }
    if spec.family not in draw:
        raise ConfigError(describe(f"envs/{spec.name}.toml", "family", repr(spec.family), f"one of {sorted(draw)}"))
    if spec.family != "overcooked":
        choose_gl()
    return draw[spec.family]()


def write_video(frames: np.ndarray, path: str | os.PathLike, *, fps: int = 30) -> Path:
    """Encode ``frames`` [T, H, W, 3] uint8 as a VP8 WebM (every browser plays it), atomically."""
    import imageio.v2 as imageio

    path = Path(path)
    placeholder = atomic_path(path)
    tmp = placeholder.with_suffix(".webm")  # ffmpeg picks the container by the suffix
    placeholder.unlink()
    writer = imageio.get_writer(tmp, fps=fps, codec="libvpx", macro_block_size=1, ffmpeg_log_level="error",
                                output_params=["-b:v", "1M", "-auto-alt-ref", "0", "-deadline", "realtime", "-cpu-used", "8"])
    try:
        for frame in frames:
            writer.append_data(np.ascontiguousarray(frame))
        writer.close()
        commit_atomic(tmp, path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return path
