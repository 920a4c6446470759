"""Preference datasets: pairs of segments of a trajectory dataset, a label per pair, a group per label.

On-disk schema (format ``pbrl.preferences``, version 1), P pairs:

==============  ==========  ===================================================================
key             shape/dtype meaning
==============  ==========  ===================================================================
segments_a      [P, 3] i8   (episode, start, length) of the first segment of each pair
segments_b      [P, 3] i8   (episode, start, length) of the second segment
label           [P] f4      probability that segment a is preferred: 1 a, 0 b, 0.5 equal
group           [P] i4      annotator group of the label (0 when there is one group)
==============  ==========  ===================================================================

Attributes: ``format``, ``format_version``, ``trajectories`` (file name, resolved next to this file),
``trajectories_sha256``, ``teacher`` (JSON), ``seed``, ``pbrl_version``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor

from pbrl.data.store import TrajectoryDataset, atomic_h5
from pbrl.errors import DatasetError, describe

FORMAT = "pbrl.preferences"
FORMAT_VERSION = 1


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class PreferenceDataset:
    """Pairs of segments + labels, in memory. ``segments_a``/``segments_b`` [P, 3] (episode, start, length)."""

    segments_a: np.ndarray
    segments_b: np.ndarray
    label: np.ndarray
    group: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.label)

    def validate(self, trajectories: TrajectoryDataset, where: str) -> None:
        """Check shapes, label range and that every segment lies inside its episode."""
        p = len(self.label)
        for name in ("segments_a", "segments_b"):
            arr = getattr(self, name)
            if arr.shape != (p, 3):
                raise DatasetError(describe(where, f"'{name}' shape", arr.shape, f"({p}, 3) (episode, start, length)"))
        if self.group.shape != (p,):
            raise DatasetError(describe(where, "'group' shape", self.group.shape, f"({p},)"))
        bad = ~np.isfinite(self.label) | (self.label < 0) | (self.label > 1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DatasetError(describe(where, f"'label' at pair {i}", self.label[i], "a value in [0, 1]"))
        lengths = trajectories.episode_lengths
        for name in ("segments_a", "segments_b"):
            seg = getattr(self, name)
            ep, start, length = seg[:, 0], seg[:, 1], seg[:, 2]
            out = (ep < 0) | (ep >= len(lengths))
            if out.any():
                i = int(np.flatnonzero(out)[0])
                raise DatasetError(describe(where, f"'{name}' episode at pair {i}", int(ep[i]),
                                            f"an episode index in [0, {len(lengths)}) of {trajectories.path.name}"))
            over = (start < 0) | (length < 1) | (start + length > lengths[ep])
            if over.any():
                i = int(np.flatnonzero(over)[0])
                raise DatasetError(describe(where, f"'{name}' at pair {i}",
                                            f"segment start {int(start[i])} length {int(length[i])} in episode {int(ep[i])}",
                                            f"a segment inside the episode's {int(lengths[ep[i]])} steps"))


def write_preferences(path: str | os.PathLike, prefs: PreferenceDataset, trajectories: TrajectoryDataset, *,
                      teacher: dict[str, Any], seed: int) -> Path:
    """Validate ``prefs`` against ``trajectories`` and write it atomically next to (or pointing at) them."""
    path = Path(path)
    prefs.validate(trajectories, str(path))
    rel = os.path.relpath(trajectories.path.resolve(), path.resolve().parent)
    with atomic_h5(path, FORMAT, FORMAT_VERSION) as f:
        f.attrs["trajectories"] = rel
        f.attrs["trajectories_sha256"] = sha256_file(trajectories.path)
        f.attrs["teacher"] = json.dumps(teacher, sort_keys=True)
        f.attrs["seed"] = int(seed)
        f.create_dataset("segments_a", data=prefs.segments_a.astype(np.int64))
        f.create_dataset("segments_b", data=prefs.segments_b.astype(np.int64))
        f.create_dataset("label", data=prefs.label.astype(np.float32))
        f.create_dataset("group", data=prefs.group.astype(np.int32))
    return path


def read_preferences(path: str | os.PathLike, trajectories: TrajectoryDataset | None = None
                     ) -> tuple[PreferenceDataset, TrajectoryDataset]:
    """Read and validate a preference file; opens its trajectory file unless one is given."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(describe(str(path), "file", "missing", "an existing pbrl preference HDF5 file"))
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(describe(str(path), "file", f"unreadable ({exc})", "a valid HDF5 file")) from None
    with f:
        if f.attrs.get("format") != FORMAT:
            raise DatasetError(describe(str(path), "attribute 'format'", repr(f.attrs.get("format")), repr(FORMAT)))
        for key in ("segments_a", "segments_b", "label"):
            if key not in f:
                raise DatasetError(describe(str(path), f"key '{key}'", "missing", "present (see pbrl.data.preferences)"))
        label = f["label"][()].astype(np.float32)
        prefs = PreferenceDataset(
            f["segments_a"][()].astype(np.int64), f["segments_b"][()].astype(np.int64), label,
            f["group"][()].astype(np.int32) if "group" in f else np.zeros(len(label), np.int32),
            {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()},
        )
    if trajectories is None:
        traj_path = path.parent / str(prefs.attrs.get("trajectories", ""))
        trajectories = TrajectoryDataset(traj_path)
        expected = prefs.attrs.get("trajectories_sha256")
        if expected and sha256_file(traj_path) != expected:
            raise DatasetError(describe(str(path), "attribute 'trajectories_sha256'",
                                        f"{traj_path.name} hashes differently", "the checksum recorded when labelled"))
    prefs.validate(trajectories, str(path))
    return prefs, trajectories


# ---------------------------------------------------------------------------------------------------------
# segment sampling and scripted teachers
# ---------------------------------------------------------------------------------------------------------

def sample_segments(trajectories: TrajectoryDataset, count: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` segments of exactly ``length`` steps, uniform over every valid (episode, start) position.

    Returns ``[count, 3]`` (episode, start, length). Segments never cross an episode end.
    """
    lengths = trajectories.episode_lengths
    starts_per_episode = np.clip(lengths - length + 1, 0, None)
    total = int(starts_per_episode.sum())
    if total == 0:
        raise DatasetError(describe(str(trajectories.path), "segment length", length,
                                    f"at most the longest episode ({int(lengths.max())} steps)"))
    flat = rng.integers(0, total, size=count)
    cum = np.cumsum(starts_per_episode)
    ep = np.searchsorted(cum, flat, side="right")
    start = flat - (cum[ep] - starts_per_episode[ep])
    return np.stack([ep, start, np.full(count, length)], axis=1).astype(np.int64)


def segment_returns(trajectories: TrajectoryDataset, segments: np.ndarray, gamma: float = 1.0) -> np.ndarray:
    """True (discounted) return of each segment ``[P, 3]`` -> ``[P]`` float64."""
    offsets = trajectories.episode_offsets
    rewards = trajectories.rewards.astype(np.float64)
    steps = np.arange(int(segments[:, 2].max()))
    idx = offsets[segments[:, 0]][:, None] + segments[:, 1][:, None] + steps[None]
    mask = steps[None] < segments[:, 2][:, None]
    r = rewards[np.where(mask, idx, 0)] * mask
    return (r * gamma ** steps[None]).sum(1)


@dataclass(frozen=True)
class ScriptedTeacher:
    """Labels a pair by the Bradley-Terry probability of the true segment returns.

    ``beta=None`` (deterministic): label 1 if R_a > R_b, 0 if R_a < R_b, 0.5 if equal.
    ``beta`` > 0 (stochastic, rationality β): label ~ Bernoulli(σ(β (R_a − R_b))).
    ``gamma`` discounts rewards inside the segment (1 = undiscounted).
    """

    beta: float | None = None
    gamma: float = 1.0

    def probability(self, return_a: np.ndarray, return_b: np.ndarray) -> np.ndarray:
        diff = return_a - return_b
        if self.beta is None:
            return np.where(diff > 0, 1.0, np.where(diff < 0, 0.0, 0.5))
        return 0.5 * (1.0 + np.tanh(0.5 * self.beta * diff))  # σ(β·diff), overflow-free

    def label(self, trajectories: TrajectoryDataset, seg_a: np.ndarray, seg_b: np.ndarray,
              rng: np.random.Generator) -> np.ndarray:
        p = self.probability(segment_returns(trajectories, seg_a, self.gamma), segment_returns(trajectories, seg_b, self.gamma))
        if self.beta is None:
            return p.astype(np.float32)
        return (rng.random(len(p)) < p).astype(np.float32)

    def as_dict(self) -> dict[str, Any]:
        return {"name": "scripted", "beta": self.beta, "gamma": self.gamma}


def discounted_returns_to_go(trajectories: TrajectoryDataset, gamma: float) -> np.ndarray:
    """Monte-Carlo ``G_t = Σ_k γ^k r_{t+k}`` to the end of each episode, ``[N]`` float64."""
    rewards = trajectories.rewards.astype(np.float64)
    out = np.zeros_like(rewards)
    offsets = trajectories.episode_offsets
    for e in range(len(offsets) - 1):
        g = 0.0
        for t in range(offsets[e + 1] - 1, offsets[e] - 1, -1):
            g = rewards[t] + gamma * g
            out[t] = g
    return out


def fit_value_function(trajectories: TrajectoryDataset, *, gamma: float = 0.99, steps: int = 3000,
                       batch_size: int = 512, hidden: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fitted value evaluation of the dataset's behaviour: an MLP V(s) regressed on Monte-Carlo returns-to-go.

    Returns ``(V(s_t) for every row [N], V(final observation) for every episode [E])``.
    """
    from pbrl.nets.mlp import mlp

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    obs = torch.as_tensor(trajectories.observations)
    target = torch.as_tensor(discounted_returns_to_go(trajectories, gamma), dtype=torch.float32)
    mean, std = obs.mean(0), obs.std(0) + 1e-3
    t_mean, t_std = target.mean(), target.std() + 1e-6
    net = mlp(obs.shape[1], 1, hidden, 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(steps):
        idx = torch.randint(len(obs), (batch_size,), generator=gen)
        loss = ((net((obs[idx] - mean) / std).squeeze(-1) - (target[idx] - t_mean) / t_std) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        def value(o: Tensor) -> np.ndarray:
            return (net((o - mean) / std).squeeze(-1) * t_std + t_mean).double().numpy()

        return value(obs), value(torch.as_tensor(trajectories.final_observations))


@dataclass(frozen=True)
class RegretTeacher:
    """Labels by the (negated) regret of each segment, as CPL assumes (Hejna et al., 2023, section 3):
    the discounted sum of advantages ``Σ_t γ^t A(s_t, a_t) = Σ_t γ^t r_t + γ^T V(s_T) − V(s_0)``, with V a
    fitted value evaluation of the dataset's behaviour (:func:`fit_value_function`); V = 0 after a terminal
    state. Removes the confound of segment returns, which mostly tell which *states* a segment visited.
    ``beta=None`` deterministic, else Bernoulli(σ(β Δ)).
    """

    beta: float | None = None
    gamma: float = 0.99
    value_steps: int = 3000
    seed: int = 0

    def scores(self, trajectories: TrajectoryDataset, segments: np.ndarray,
               values: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        v_rows, v_final = values
        offsets = trajectories.episode_offsets
        ep, start, length = segments[:, 0], segments[:, 1], segments[:, 2]
        first = offsets[ep] + start
        after = first + length                       # row of s_T, or one past the episode's end
        at_end = after >= offsets[ep + 1]
        terminal = at_end & trajectories.terminations[np.minimum(after, len(v_rows)) - 1]
        v_end = np.where(at_end, v_final[ep], v_rows[np.minimum(after, len(v_rows) - 1)])
        v_end = np.where(terminal, 0.0, v_end)
        return segment_returns(trajectories, segments, self.gamma) + self.gamma ** length * v_end - v_rows[first]

    def label(self, trajectories: TrajectoryDataset, seg_a: np.ndarray, seg_b: np.ndarray,
              rng: np.random.Generator) -> np.ndarray:
        values = fit_value_function(trajectories, gamma=self.gamma, steps=self.value_steps, seed=self.seed)
        p = ScriptedTeacher(self.beta).probability(self.scores(trajectories, seg_a, values),
                                                   self.scores(trajectories, seg_b, values))
        if self.beta is None:
            return p.astype(np.float32)
        return (rng.random(len(p)) < p).astype(np.float32)

    def as_dict(self) -> dict[str, Any]:
        return {"name": "regret", "beta": self.beta, "gamma": self.gamma, "value": "fitted MC value evaluation",
                "value_steps": self.value_steps, "seed": self.seed}


def label_pairs(trajectories: TrajectoryDataset, *, pairs: int, segment: int, teacher: ScriptedTeacher | RegretTeacher,
                seed: int) -> PreferenceDataset:
    """Sample ``pairs`` pairs of length-``segment`` segments uniformly and label them with ``teacher``."""
    rng = np.random.default_rng(seed)
    seg_a = sample_segments(trajectories, pairs, segment, rng)
    seg_b = sample_segments(trajectories, pairs, segment, rng)
    label = teacher.label(trajectories, seg_a, seg_b, rng)
    return PreferenceDataset(seg_a, seg_b, label, np.zeros(pairs, np.int32), {"teacher": teacher.as_dict()})


# ---------------------------------------------------------------------------------------------------------
# batches for training
# ---------------------------------------------------------------------------------------------------------

@dataclass
class PreferenceBatch:
    """A batch of B pairs of segments of length T.

    ``obs`` [B, 2, T, obs_dim], ``act`` [B, 2, T, act_dim], ``label`` [B] (1: segment 0 preferred),
    ``mask`` [B, 2, T] (True on real steps), ``group`` [B].
    """

    obs: Tensor
    act: Tensor
    label: Tensor
    mask: Tensor
    group: Tensor

    def to(self, device: torch.device | str) -> PreferenceBatch:
        return PreferenceBatch(*(getattr(self, k).to(device, non_blocking=True)
                                 for k in ("obs", "act", "label", "mask", "group")))


class PreferenceSampler:
    """Vectorised batch sampler: one gather per batch, no per-item Python loop; lives on any device.

    The whole trajectory dataset (obs, act) and the pair table sit in tensors on ``device``; a batch is
    drawn with a ``torch.Generator`` whose state is part of a training checkpoint (exact resume).
    """

    def __init__(self, trajectories: TrajectoryDataset, prefs: PreferenceDataset, *, device: str | torch.device = "cpu",
                 seed: int = 0):
        self.device = torch.device(device)
        self.obs = torch.as_tensor(trajectories.observations, device=self.device)
        self.act = torch.as_tensor(trajectories.actions, device=self.device)
        offsets = torch.as_tensor(trajectories.episode_offsets, device=self.device)
        seg = torch.stack([torch.as_tensor(prefs.segments_a), torch.as_tensor(prefs.segments_b)], 1).to(self.device)
        self.start = offsets[seg[..., 0]] + seg[..., 1]           # [P, 2] global row of each segment's first step
        self.length = seg[..., 2]                                  # [P, 2]
        self.label = torch.as_tensor(prefs.label, device=self.device)
        self.group = torch.as_tensor(prefs.group, device=self.device).long()
        self.segment_length = int(self.length.max())
        self.steps = torch.arange(self.segment_length, device=self.device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        return len(self.label)

    def batch(self, index: Tensor) -> PreferenceBatch:
        """The pairs at ``index`` [B] as a PreferenceBatch."""
        mask = self.steps < self.length[index][..., None]                       # [B, 2, T]
        rows = torch.where(mask, self.start[index][..., None] + self.steps, 0)  # [B, 2, T]
        return PreferenceBatch(self.obs[rows], self.act[rows], self.label[index], mask, self.group[index])

    def sample(self, batch_size: int) -> PreferenceBatch:
        index = torch.randint(len(self), (batch_size,), generator=self.generator, device=self.device)
        return self.batch(index)

    def state_dict(self) -> dict[str, Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator"].cpu())
