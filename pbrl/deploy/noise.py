"""The initial noise of an action-chunk (diffusion) policy in the torch-free runtime (:class:`pbrl.deploy.Policy`):
one numpy stream per (seed, environment index), the streams the training-time evaluation's
:class:`pbrl.agents.actors.ChunkActor` draws from too (each side keeps its own few lines, since the runtime imports
nothing of pbrl but :mod:`pbrl.errors`; tests/test_export.py holds the two to 1e-5 over whole episodes), so that an
export and its run, on the same seed, sample the same chunks.

Numpy only (the runtime's rule): the stream is ``numpy.random.default_rng([seed, env])`` and each chunk is its next
``standard_normal(shape, float32)``. A stream does not restart at a new episode: the same seed gives the same
sequence of chunks whatever batch the environment is evaluated in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["ChunkNoise"]


class ChunkNoise:
    """``draw(envs) -> [len(envs), *shape]`` float32: the next noise of each listed environment's own stream."""

    def __init__(self, seed: int, shape: Sequence[int]):
        self.seed, self.shape = int(seed), tuple(int(s) for s in shape)
        self.streams: dict[int, np.random.Generator] = {}

    def stream(self, env: int) -> np.random.Generator:
        if env not in self.streams:
            self.streams[env] = np.random.default_rng([self.seed, int(env)])
        return self.streams[env]

    def draw(self, envs: Sequence[int]) -> np.ndarray:
        out = np.empty((len(envs), *self.shape), np.float32)
        for row, env in enumerate(envs):
            out[row] = self.stream(env).standard_normal(self.shape, dtype=np.float32)
        return out
