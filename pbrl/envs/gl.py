"""Headless rendering's shared state: the GL backend MuJoCo draws with, and the ``rgb_array`` envs kept open for the
next segment. Both renderers use it (:mod:`pbrl.envs.render` for gymnasium MuJoCo, :mod:`pbrl.envs.metaworld_render`
for Meta-World), so it sits below them and imports neither.

:func:`choose_gl` tries ``MUJOCO_GL=egl`` and then ``osmesa`` (Debian's ``libosmesa6``) in a child process and keeps
the first that draws, unless ``MUJOCO_GL`` is already set.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys

from pbrl.envs.registry import make_env
from pbrl.errors import ConfigError, describe

GL_BACKENDS = ("egl", "osmesa")
_PROBE = "import mujoco; c = mujoco.GLContext(8, 8); c.make_current(); c.free()"

__all__ = ["GL_BACKENDS", "choose_gl", "close_rendering_envs", "rendering_env"]


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


def size_shadow_map(env, frame_size: int) -> None:
    """Size a MuJoCo env's shadow map to its frames; call before the first render (the GL context allocates it).

    MuJoCo draws the shadow map at its own resolution whatever the frame's (4096 x 4096 by default); four texels per
    pixel keep the shadows as sharp at a fraction of the cost under software GL (Hopper, 64-px frames: 0.074 ->
    0.038 s a frame, the same image). Other envs are left as they are."""
    vis = getattr(getattr(env.unwrapped, "model", None), "vis", None)
    if vis is not None:
        vis.quality.shadowsize = min(int(vis.quality.shadowsize), max(1024, 4 * int(frame_size)))


def rendering_env(env_id: str, size: int):
    """One ``rgb_array`` env per (env, frame size), kept: making a GL context costs more than a segment's frames.
    They are closed at exit, while the GL library is still loaded."""
    if (env_id, size) not in _ENVS:
        env = make_env(env_id, render_mode="rgb_array", render_size=size)
        size_shadow_map(env, size)
        env.reset(seed=0)
        env.render()  # the GL context exists now, and so does the GL library's own exit handler
        if not _ENVS:  # exit handlers run last-registered first: this one before the GL library shuts down
            atexit.register(close_rendering_envs)
        _ENVS[env_id, size] = env
    return _ENVS[env_id, size]


def close_rendering_envs() -> None:
    while _ENVS:
        _ENVS.popitem()[1].close()
