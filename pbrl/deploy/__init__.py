"""The runtime of an exported policy (``pbrl export``): numpy and ONNX Runtime only, no torch, so it runs on a robot's
computer, in a ROS 2 node or a plain control loop.

    from pbrl.deploy import Policy

    policy = Policy.load("exports/cpl")      # checks each model file's sha256 against metadata.json
    policy.reset()                           # at the start of every episode
    action = policy.act(observation)         # [obs_dim] -> [act_dim] (or [N, obs_dim] -> [N, act_dim])

Every observation is checked (shape, a real dtype, finite values) with a one-line error; ONNX Runtime runs on one
intra-op thread unless asked otherwise (a control loop wants a steady latency, not a shared pool). Of pbrl this
imports only :mod:`pbrl.errors` (and its own modules). A diffusion policy draws its initial noise from seeded numpy
streams that the training-time evaluation draws from too (:mod:`pbrl.deploy.noise`), or takes it from the caller.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from pbrl.deploy.noise import ChunkNoise
from pbrl.errors import ConfigError, DatasetError, describe

__all__ = ["KINDS", "ChunkNoise", "Policy"]

KINDS = ("mlp", "transformer", "diffusion", "categorical")  # what `pbrl export` writes (metadata.json's "kind")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Policy:
    """An exported policy on ONNX Runtime. ``metadata`` is the export's ``metadata.json``. A transformer policy keeps
    its window between calls and a diffusion policy its observation ring and action chunk: call :meth:`reset` at
    each episode's start, and pass the same batch size every step."""

    def __init__(self, session: Any, metadata: dict[str, Any], path: Path, *, seed: int = 0,
                 deterministic: bool = False):
        self.session, self.metadata, self.path = session, metadata, path
        self.categorical = metadata["kind"] == "categorical"
        self.obs_dim = int(metadata["obs_dim"])
        self.act_dim = 1 if self.categorical else int(metadata["act_dim"])
        self.low = None if self.categorical else np.asarray(metadata["action_low"], dtype=np.float32)
        self.high = None if self.categorical else np.asarray(metadata["action_high"], dtype=np.float32)
        # a discrete policy samples its action, as PolicyPartner does: u ~ U[0, 1) from this stream, the first
        # action whose cumulative probability reaches u (deterministic: the most probable)
        self.rng, self.deterministic = np.random.default_rng(seed), deterministic
        self.context = int(metadata.get("context") or 0)  # a transformer's window; 0: no state between steps
        self._window: dict[str, np.ndarray] | None = None
        # an action-chunk (diffusion) policy: the last n_obs observations, the current chunk and the next action's
        # index in it, per environment, kept as the evaluation's ChunkActor keeps them, and its noise streams
        self.chunked = metadata["kind"] == "diffusion"
        if self.chunked:
            self.n_obs, self.horizon = int(metadata["n_obs"]), int(metadata["horizon"])
            self.n_action = int(metadata["n_action"])
            self.noise = ChunkNoise(seed, (self.horizon, self.act_dim))
        self._chunks: dict[str, np.ndarray] | None = None

    @classmethod
    def load(cls, folder: str | Path, *, threads: int = 1, seed: int = 0, deterministic: bool = False) -> Policy:
        """The export in ``folder``: ``metadata.json`` and ``policy.onnx``, whose sha256 must be the one recorded.
        ``seed``: the stream of a discrete (Overcooked) policy's choices and of a diffusion policy's noise (env i of a
        batch draws from ``(seed, i)``, as the evaluation's ``ChunkActor`` does); ``deterministic``: a discrete
        policy takes its most probable action."""
        import onnxruntime as ort

        folder = Path(folder)
        meta_path, model_path = folder / "metadata.json", folder / "policy.onnx"
        for path in (meta_path, model_path):
            if not path.is_file():
                raise ConfigError(describe(str(path), "file", "missing", "an export written by `pbrl export` "
                                           "(--format onnx or both)"))
        try:
            metadata = json.loads(meta_path.read_text())
            expected = metadata["model_sha256"]["policy.onnx"]
            if metadata.get("kind") not in KINDS:
                raise ConfigError(describe(str(meta_path), "kind", repr(metadata.get("kind")),
                                           f"one of {list(KINDS)}"))
        except (ValueError, KeyError, TypeError) as exc:
            raise DatasetError(describe(str(meta_path), "metadata", f"unreadable ({type(exc).__name__}: {exc})",
                                        "the metadata.json `pbrl export` wrote")) from None
        found = _sha256(model_path)
        if found != expected:
            raise DatasetError(describe(str(model_path), "sha256", found[:16] + "…", f"{expected[:16]}…, the model "
                                        "this metadata.json describes (a changed or damaged file, or metadata "
                                        "of another export)"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])
        return cls(session, metadata, folder, seed=seed, deterministic=deterministic)

    def reset(self, env_mask: Any = None) -> None:
        """Start an episode, in every environment of the batch or where ``env_mask`` [N] is true: a transformer's
        window is emptied; a diffusion policy's history restarts at the next observation and a new chunk is sampled
        (its noise streams go on). An MLP policy keeps no state between steps."""
        mask = slice(None) if env_mask is None else np.asarray(env_mask, dtype=bool)
        if self._window is not None:
            for name in ("obs", "act", "timestep", "mask", "t"):
                self._window[name][mask] = 0
        if self._chunks is not None:
            self._chunks["pos"][mask] = self.n_action
            self._chunks["fresh"][mask] = True

    def _window_for(self, n: int) -> dict[str, np.ndarray]:
        """Each environment's last ``context`` observations, actions, timesteps and mask, as the evaluation's
        ``HistoryActor`` keeps them (newest last; the newest action slot holds zeros until the action is taken)."""
        if self._window is None or self._window["obs"].shape[0] != n:
            k = self.context
            self._window = {"obs": np.zeros((n, k, self.obs_dim), np.float32),
                            "act": np.zeros((n, k, self.act_dim), np.float32),
                            "timestep": np.zeros((n, k), np.int64), "mask": np.zeros((n, k), bool),
                            "t": np.zeros(n, np.int64)}
        return self._window

    def act(self, obs: Any, noise: Any = None) -> np.ndarray:
        """``obs [obs_dim]`` (or a batch ``[N, obs_dim]``) -> the action ``[act_dim]`` (``[N, act_dim]``), float32,
        within the exported bounds; a discrete policy's action index (``[N]`` for a batch). ``noise`` (a diffusion
        policy only): ``[horizon, act_dim]`` (``[N, horizon, act_dim]``), the initial noise of the chunks sampled at
        this call, instead of the seeded streams'."""
        array = np.asarray(obs)
        if array.dtype.kind not in "fiu":
            raise ConfigError(describe("obs", "dtype", str(array.dtype), "real numbers"))
        single = array.ndim == 1
        batch = array[None] if single else array
        if batch.ndim != 2 or batch.shape[1] != self.obs_dim:
            raise ConfigError(describe("obs", "shape", tuple(array.shape), f"({self.obs_dim},) or (N, {self.obs_dim})"))
        batch = batch.astype(np.float32, copy=False)
        if not np.isfinite(batch).all():
            raise ConfigError(describe("obs", "values", "non-finite (NaN or inf)", "finite numbers"))
        if self.categorical:
            probs = self.session.run(None, {"obs": batch})[0].astype(np.float64)
            if self.deterministic:
                action = probs.argmax(1)
            else:
                u = self.rng.random((len(probs), 1))
                action = np.minimum((np.cumsum(probs, 1) < u).sum(1), probs.shape[1] - 1)
            return action[0] if single else action
        if self.chunked:
            action = self._act_chunked(batch, noise)
            return action[0] if single else action
        if not self.context:
            action = self.session.run(None, {"obs": batch})[0]
            return action[0] if single else action
        w = self._window_for(len(batch))
        for name, new in (("obs", batch), ("act", np.zeros((len(batch), self.act_dim), np.float32)),
                          ("timestep", w["t"]), ("mask", np.ones(len(batch), bool))):
            w[name] = np.concatenate([w[name][:, 1:], new[:, None].astype(w[name].dtype)], axis=1)
        action, raw = self.session.run(None, {k: w[k] for k in ("obs", "act", "timestep", "mask")})
        w["act"][:, -1] = raw  # the policy's own action goes back into the window, as HistoryActor's does
        w["t"] = w["t"] + 1
        return action[0] if single else action

    def _act_chunked(self, batch: np.ndarray, noise: Any) -> np.ndarray:
        """Receding-horizon execution, as ``ChunkActor``: the ring of the last ``n_obs`` observations (a new
        episode's first one repeated), a chunk sampled for each environment whose queue is spent, its next action."""
        n, shape = len(batch), (self.horizon, self.act_dim)
        if noise is not None:  # checked before any state changes
            given = np.asarray(noise, dtype=np.float32)
            if given.shape not in ((n, *shape), *((shape,) if n == 1 else ())) or not np.isfinite(given).all():
                raise ConfigError(describe("noise", "array", f"shape {given.shape}" + (
                    "" if np.isfinite(given).all() else " with non-finite values"),
                    f"finite numbers of shape ({n}, {shape[0]}, {shape[1]})"))
            noise = given.reshape(n, *shape)
        c = self._chunks
        if c is None or c["history"].shape[0] != n:
            c = self._chunks = {"history": np.zeros((n, self.n_obs, self.obs_dim), np.float32),
                                "queue": np.zeros((n, *shape), np.float32),
                                "pos": np.full(n, self.n_action), "fresh": np.ones(n, bool)}
        c["history"] = np.concatenate([c["history"][:, 1:], batch[:, None]], axis=1)
        if c["fresh"].any():
            c["history"][c["fresh"]] = batch[c["fresh"], None]
            c["fresh"][:] = False
        need = np.flatnonzero(c["pos"] >= self.n_action)
        if need.size:
            draw = self.noise.draw(need.tolist()) if noise is None else noise[need]
            chunk = self.session.run(None, {"obs": c["history"][need], "noise": draw})[0]
            c["queue"][need] = chunk
            c["pos"][need] = 0
        action = c["queue"][np.arange(n), c["pos"]]
        c["pos"] += 1
        return action


from pbrl.deploy.loop import SAFE_ACTIONS, CadenceReport, ControlLoop  # noqa: E402  (the loop uses Policy's interface)

__all__ += ["SAFE_ACTIONS", "CadenceReport", "ControlLoop"]
