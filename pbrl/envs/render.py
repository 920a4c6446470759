"""Frames of a stored segment, rendered from its observations alone, and segment videos for the annotation page.

Datasets keep observations, not simulator states, so each family rebuilds a drawable state from them:

- ``mujoco`` (gymnasium locomotion): the observation is ``qpos[k:] ++ qvel`` (the first ``k`` root positions
  are left out). The state is set from it; the left-out root position is integrated from the root velocity
  over the segment, so the body travels across the floor as it did.
- ``metaworld`` and ``overcooked``: see :func:`metaworld_frames` and :func:`overcooked_frames`.

Headless rendering needs a GL backend: :func:`choose_gl` tries ``MUJOCO_GL=egl`` and then ``osmesa`` (Debian's
``libosmesa6``) in a child process and keeps the first that draws, unless ``MUJOCO_GL`` is already set.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pbrl.data.store import TrajectoryDataset
from pbrl.envs.registry import get_env_spec, make_env
from pbrl.errors import ConfigError, DatasetError, describe
from pbrl.io import atomic_path, commit_atomic

GL_BACKENDS = ("egl", "osmesa")
_PROBE = "import mujoco; c = mujoco.GLContext(8, 8); c.make_current(); c.free()"


def choose_gl() -> str:
    """Set ``MUJOCO_GL`` to the first backend in :data:`GL_BACKENDS` that makes a context here (tried in a
    child process, since a failed backend can leave this one unusable); keep a value the user set."""
    if os.environ.get("MUJOCO_GL"):
        return os.environ["MUJOCO_GL"]
    for backend in GL_BACKENDS:
        env = {**os.environ, "MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend}
        probe = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, timeout=120)
        if probe.returncode == 0:
            os.environ["MUJOCO_GL"] = backend
            os.environ.setdefault("PYOPENGL_PLATFORM", backend)
            return backend
    raise ConfigError(describe("MUJOCO_GL", "headless GL backend", f"none of {list(GL_BACKENDS)} works here",
                               "EGL (a GPU driver) or OSMesa (apt-get install libosmesa6)"))


_ENVS: dict[tuple[str, int], object] = {}


def rendering_env(env_id: str, size: int):
    """One ``rgb_array`` env per (env, frame size), kept: making a GL context costs more than a segment's frames.
    They are closed at exit, while the GL library is still loaded."""
    if (env_id, size) not in _ENVS:
        env = make_env(env_id, render_mode="rgb_array", render_size=size)
        env.reset(seed=0)
        env.render()  # the GL context exists now, and so does the GL library's own exit handler
        if not _ENVS:  # exit handlers run last-registered first: this one before the GL library shuts down
            atexit.register(close_rendering_envs)
        _ENVS[env_id, size] = env
    return _ENVS[env_id, size]


def close_rendering_envs() -> None:
    while _ENVS:
        _ENVS.popitem()[1].close()


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


def segment_frames(trajectories: TrajectoryDataset, segment: tuple[int, int, int] | np.ndarray, *,
                   size: int = 192) -> np.ndarray:
    """``[T, size, size, 3]`` uint8 frames of segment ``(episode, start, length)`` of ``trajectories``."""
    episode, start, length = (int(v) for v in segment)
    offsets = trajectories.episode_offsets
    if not 0 <= episode < len(offsets) - 1 or start < 0 or length < 1 or start + length > offsets[episode + 1] - offsets[episode]:
        raise DatasetError(describe(str(trajectories.path), "segment", (episode, start, length),
                                    "an (episode, start, length) inside the dataset's episodes"))
    lo = int(offsets[episode]) + start
    observations = np.asarray(trajectories.observations[lo: lo + length])
    spec = get_env_spec(trajectories.env_id)
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
