"""Preference datasets: pairs of segments of a trajectory dataset, a label per pair, a group per label.
Teachers live in :mod:`pbrl.data.teachers`, pairing strategies in :mod:`pbrl.data.pairing`.

On-disk schema (format ``pbrl.preferences``, version 1), P pairs:

==============  ==========  ===================================================================
key             shape/dtype meaning
==============  ==========  ===================================================================
segments_a      [P, 3] i8   (episode, start, length) of the first segment of each pair
segments_b      [P, 3] i8   (episode, start, length) of the second segment
label           [P] f4      probability that segment a is preferred: 1 a, 0 b, 0.5 equal
group           [P] i4      annotator group of the label (0 when there is one group)
skipped         [P] bool    the annotator skipped the query: no label, never trained on
query           [P] i8      query id: the pairs of one K-way ranking share it (else 0..P-1)
annotator       [P] str     annotator id ("" for scripted teachers)
timestamp       [P] str     ISO 8601 time of the answer ("" when unknown)
score_a         [P] f8      optional: the scripted teacher's noise-free score of segment a (its utility)
score_b         [P] f8      optional: the same for segment b
==============  ==========  ===================================================================

Attributes: ``format``, ``format_version``, ``trajectories`` (file name, resolved next to this file),
``trajectories_sha256``, ``teacher`` (JSON), ``seed``, ``pbrl_version``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor

from pbrl.data.sampling import Sampler
from pbrl.data.store import TrajectoryDataset, atomic_h5, open_h5
from pbrl.errors import DatasetError, describe
from pbrl.io import sha256_file

FORMAT = "pbrl.preferences"
FORMAT_VERSION = 1


@dataclass
class PreferenceDataset:
    """Pairs of segments + labels, in memory. ``segments_a``/``segments_b`` [P, 3] (episode, start, length)."""

    segments_a: np.ndarray
    segments_b: np.ndarray
    label: np.ndarray
    group: np.ndarray
    skipped: np.ndarray | None = None     # [P] bool: the annotator declined to answer (no label)
    query: np.ndarray | None = None       # [P] i8: pairs from one K-way ranking share a query id
    annotator: np.ndarray | None = None   # [P] str: who answered ("" for scripted teachers)
    timestamp: np.ndarray | None = None   # [P] str: when (ISO 8601, "" when unknown)
    score_a: np.ndarray | None = None     # [P] f8: a scripted teacher's noise-free score of segment a (else None)
    score_b: np.ndarray | None = None     # [P] f8: the same for segment b
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        p = len(self.label)
        if self.skipped is None:
            self.skipped = np.zeros(p, bool)
        if self.query is None:
            self.query = np.arange(p, dtype=np.int64)
        if self.annotator is None:
            self.annotator = np.array([""] * p, dtype=object)
        if self.timestamp is None:
            self.timestamp = np.array([""] * p, dtype=object)

    def __len__(self) -> int:
        return len(self.label)

    def subset(self, index: np.ndarray) -> PreferenceDataset:
        """The pairs at ``index`` (integer indices or a boolean mask), every per-pair field kept."""
        pick = lambda x: None if x is None else x[index]  # noqa: E731
        return PreferenceDataset(self.segments_a[index], self.segments_b[index], self.label[index], self.group[index],
                                 skipped=pick(self.skipped), query=pick(self.query), annotator=pick(self.annotator),
                                 timestamp=pick(self.timestamp), score_a=pick(self.score_a), score_b=pick(self.score_b),
                                 attrs=dict(self.attrs))

    @property
    def used(self) -> np.ndarray:
        """Indices of the pairs that carry a label (not skipped)."""
        return np.flatnonzero(~self.skipped)

    def validate(self, trajectories: TrajectoryDataset, where: str) -> None:
        """Check shapes, label range and that every segment lies inside its episode."""
        p = len(self.label)
        for name in ("segments_a", "segments_b"):
            arr = getattr(self, name)
            if arr.shape != (p, 3):
                raise DatasetError(describe(where, f"'{name}' shape", arr.shape, f"({p}, 3) (episode, start, length)"))
        for name in ("group", "skipped", "query", "annotator", "timestamp", "score_a", "score_b"):
            if getattr(self, name) is not None and getattr(self, name).shape != (p,):
                raise DatasetError(describe(where, f"'{name}' shape", getattr(self, name).shape, f"({p},)"))
        bad = (~np.isfinite(self.label) | (self.label < 0) | (self.label > 1)) & ~self.skipped
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
        f.create_dataset("skipped", data=prefs.skipped.astype(bool))
        f.create_dataset("query", data=prefs.query.astype(np.int64))
        f.create_dataset("annotator", data=np.asarray(prefs.annotator, dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("timestamp", data=np.asarray(prefs.timestamp, dtype=object), dtype=h5py.string_dtype())
        for name in ("score_a", "score_b"):
            if getattr(prefs, name) is not None:
                f.create_dataset(name, data=np.asarray(getattr(prefs, name), np.float64))
    return path


def read_preferences(path: str | os.PathLike, trajectories: TrajectoryDataset | None = None
                     ) -> tuple[PreferenceDataset, TrajectoryDataset]:
    """Read and validate a preference file; opens its trajectory file unless one is given."""
    path = Path(path)
    with open_h5(path, "an existing pbrl preference HDF5 file") as f:
        if f.attrs.get("format") != FORMAT:
            raise DatasetError(describe(str(path), "attribute 'format'", repr(f.attrs.get("format")), repr(FORMAT)))
        for key in ("segments_a", "segments_b", "label"):
            if key not in f:
                raise DatasetError(describe(str(path), f"key '{key}'", "missing", "present (see pbrl.data.preferences)"))
        label = f["label"][()].astype(np.float32)
        strings = lambda key: np.array([x.decode() if isinstance(x, bytes) else str(x) for x in f[key][()]],  # noqa: E731
                                       dtype=object) if key in f else None
        prefs = PreferenceDataset(
            f["segments_a"][()].astype(np.int64), f["segments_b"][()].astype(np.int64), label,
            f["group"][()].astype(np.int32) if "group" in f else np.zeros(len(label), np.int32),
            skipped=f["skipped"][()].astype(bool) if "skipped" in f else None,
            query=f["query"][()].astype(np.int64) if "query" in f else None,
            annotator=strings("annotator"), timestamp=strings("timestamp"),
            score_a=f["score_a"][()].astype(np.float64) if "score_a" in f else None,
            score_b=f["score_b"][()].astype(np.float64) if "score_b" in f else None,
            attrs={k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()},
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


def label_groups(prefs: PreferenceDataset) -> np.ndarray:
    """The distinct annotator groups of the labelled pairs, ascending ``[G]`` (one group, 0, where none are named)."""
    groups = np.unique(prefs.group[prefs.used])
    return groups if len(groups) else np.zeros(1, prefs.group.dtype)


def episode_win_counts(prefs: PreferenceDataset, num_episodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per group (:func:`label_groups`' order) and episode, ``[G, E]`` float64: the summed chance of the episode's
    segments to be preferred over the labelled pairs of that group they take part in (a label of 0.5 gives each side
    0.5), and the number of those pairs. A pair of two segments of one episode counts twice for it (once per side).
    Skipped pairs count for nothing."""
    groups = label_groups(prefs)
    used = prefs.used
    label = prefs.label[used].astype(np.float64)
    episodes = np.concatenate([prefs.segments_a[used, 0], prefs.segments_b[used, 0]])
    row = np.tile(np.searchsorted(groups, prefs.group[used]), 2)
    flat = row * num_episodes + episodes
    size = len(groups) * num_episodes
    wins = np.bincount(flat, np.concatenate([label, 1.0 - label]), minlength=size).reshape(len(groups), num_episodes)
    comparisons = np.bincount(flat, minlength=size).astype(np.float64).reshape(len(groups), num_episodes)
    return wins, comparisons


# ---------------------------------------------------------------------------------------------------------
# batches for training
# ---------------------------------------------------------------------------------------------------------

@dataclass
class PreferenceBatch:
    """A batch of B pairs of segments of length T.

    ``obs`` [B, 2, T, obs_dim], ``act`` [B, 2, T, act_dim], ``label`` [B] (1: segment 0 preferred),
    ``mask`` [B, 2, T] (True on real steps), ``group`` [B], ``timestep`` [B, 2, T] (step within the episode),
    ``weight`` [B] or [K, B] (each pair's weight in the loss, per ensemble member where K of them: a bootstrap's
    counts; None: 1), ``pair`` [B] (each pair's row in the preference file), ``episode`` [B, 2] (the episode of
    each segment: the index of the statistics in :class:`~pbrl.agents.base.DataSpec`).
    """

    obs: Tensor
    act: Tensor
    label: Tensor
    mask: Tensor
    group: Tensor
    timestep: Tensor | None = None
    weight: Tensor | None = None
    pair: Tensor | None = None
    episode: Tensor | None = None

    def to(self, device: torch.device | str) -> PreferenceBatch:
        return PreferenceBatch(*(None if getattr(self, k) is None else getattr(self, k).to(device, non_blocking=True)
                                 for k in ("obs", "act", "label", "mask", "group", "timestep", "weight", "pair",
                                           "episode")))


class PreferenceSampler(Sampler):
    """Vectorised batch sampler: one gather per batch, no per-item Python loop; lives on any device.

    The whole trajectory dataset (obs, act) and the pair table sit in tensors on ``device``; a batch is
    drawn with a ``torch.Generator`` whose state is part of a training checkpoint (exact resume).
    """

    def __init__(self, trajectories: TrajectoryDataset, prefs: PreferenceDataset, *, device: str | torch.device = "cpu",
                 seed: int = 0, rows: np.ndarray | None = None):
        """``rows`` [P]: each pair's row in the preference file, where ``prefs`` is a subset of it (default: its own
        rows), so that a batch's ``pair`` names the file's row."""
        self.device = torch.device(device)
        self.obs = torch.as_tensor(trajectories.observations, device=self.device)
        self.act = torch.as_tensor(trajectories.actions, device=self.device)
        offsets = torch.as_tensor(trajectories.episode_offsets, device=self.device)
        used = prefs.used
        if len(used) == 0:
            raise DatasetError(describe(str(trajectories.path), "labelled pairs", 0, "at least one pair that is not skipped"))
        seg = torch.stack([torch.as_tensor(prefs.segments_a[used]), torch.as_tensor(prefs.segments_b[used])], 1).to(self.device)
        self.start = offsets[seg[..., 0]] + seg[..., 1]           # [P, 2] global row of each segment's first step
        self.episode = seg[..., 0]                                 # [P, 2] episode of each segment
        self.pair = torch.as_tensor(used if rows is None else rows[used], device=self.device)  # [P] row in the file
        self.first_timestep = seg[..., 1]                          # [P, 2] its step within the episode
        self.length = seg[..., 2]                                  # [P, 2]
        self.label = torch.as_tensor(prefs.label[used], device=self.device)
        self.group = torch.as_tensor(prefs.group[used], device=self.device).long()
        self.segment_length = int(self.length.max())
        self.steps = torch.arange(self.segment_length, device=self.device)
        self._seed(seed)

    def __len__(self) -> int:
        return len(self.label)

    def batch(self, index: Tensor) -> PreferenceBatch:
        """The pairs at ``index`` [B] as a PreferenceBatch."""
        mask = self.steps < self.length[index][..., None]                       # [B, 2, T]
        rows = torch.where(mask, self.start[index][..., None] + self.steps, 0)  # [B, 2, T]
        timestep = torch.where(mask, self.first_timestep[index][..., None] + self.steps, 0)
        return PreferenceBatch(self.obs[rows], self.act[rows], self.label[index], mask, self.group[index], timestep,
                               pair=self.pair[index], episode=self.episode[index])


class GroupRounds:
    """Labelled pairs one annotator group at a time (the iterative alignment of Diff-UAPA): draws for steps before
    ``start`` come from every group; from ``start`` on, round r (``round_steps`` steps) draws from the r-th group in
    ascending id order (:func:`label_groups`), and after the last round from the last group. The step is counted from
    the draws (``draws_per_step`` per step: the loop's gradient-accumulation micro-batches); the count and every
    generator are the state (exact resume). ``sample(batch_size) -> PreferenceBatch``."""

    def __init__(self, trajectories: TrajectoryDataset, prefs: PreferenceDataset, *, start: int, round_steps: int,
                 draws_per_step: int = 1, device: str | torch.device = "cpu", seed: int = 0):
        from pbrl.data.sampling import derived_seed

        if round_steps < 1:
            raise DatasetError(describe("rounds", "steps per round", round_steps, "at least 1"))
        self.start, self.round_steps, self.draws_per_step = start, round_steps, draws_per_step
        self.groups = label_groups(prefs)
        self.every = PreferenceSampler(trajectories, prefs, device=device, seed=seed)
        self.by_group = []
        for r, g in enumerate(self.groups):
            rows = np.flatnonzero((prefs.group == g) & ~prefs.skipped)
            self.by_group.append(PreferenceSampler(trajectories, prefs.subset(rows), device=device,
                                                   seed=derived_seed(seed, 1 + r), rows=rows))
        self.draws = 0
        self.device = self.every.device

    def round_at(self, step: int) -> int:
        """The round of ``step``: −1 before ``start``, else the group's index (the last once every round is done)."""
        return -1 if step < self.start else min((step - self.start) // self.round_steps, len(self.groups) - 1)

    def __len__(self) -> int:
        return len(self.every)

    def sample(self, batch_size: int) -> PreferenceBatch:
        r = self.round_at(self.draws // self.draws_per_step)
        self.draws += 1
        return (self.every if r < 0 else self.by_group[r]).sample(batch_size)

    def state_dict(self) -> dict[str, Any]:
        return {"draws": self.draws, "every": self.every.state_dict(),
                "by_group": [s.state_dict() for s in self.by_group]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.draws = int(state["draws"])
        self.every.load_state_dict(state["every"])
        for s, st in zip(self.by_group, state["by_group"], strict=True):
            s.load_state_dict(st)


@dataclass
class SegmentBatch:
    """B scored segments of length T: ``obs`` [B, T, obs_dim], ``act`` [B, T, act_dim], ``mask`` [B, T] (True on
    real steps), ``score`` [B] (the teacher's score: higher is preferred), ``timestep`` [B, T]."""

    obs: Tensor
    act: Tensor
    mask: Tensor
    score: Tensor
    timestep: Tensor

    def to(self, device: torch.device | str) -> SegmentBatch:
        return SegmentBatch(*(getattr(self, k).to(device, non_blocking=True)
                              for k in ("obs", "act", "mask", "score", "timestep")))


class ScoredSegmentSampler(Sampler):
    """CPL's dense regime (the official ``mw_state_dense`` configs): a pool of scored segments, each batch B of
    them drawn uniformly, so every segment meets fresh partners in every batch (B(B−1)/2 comparisons). The pool is
    the distinct segments of a preference file that stores its teacher's scores (``score_a``, ``score_b``)."""

    def __init__(self, trajectories: TrajectoryDataset, prefs: PreferenceDataset, *, device: str | torch.device = "cpu",
                 seed: int = 0, where: str = "preferences"):
        if prefs.score_a is None or prefs.score_b is None:
            raise DatasetError(describe(where, "'score_a'/'score_b'", "missing", "the teacher's segment scores, which "
                                        "`pbrl data label` stores (the dense regime needs scored segments; human "
                                        "labels have none: use agent.regime=sparse)"))
        self.device = torch.device(device)
        used = prefs.used
        seg = np.concatenate([prefs.segments_a[used], prefs.segments_b[used]])
        score = np.concatenate([prefs.score_a[used], prefs.score_b[used]])
        seg, first = np.unique(seg, axis=0, return_index=True)                     # sorted, hence deterministic
        self.obs = torch.as_tensor(trajectories.observations, device=self.device)
        self.act = torch.as_tensor(trajectories.actions, device=self.device)
        offsets = torch.as_tensor(trajectories.episode_offsets, device=self.device)
        seg_t = torch.as_tensor(seg, device=self.device)
        self.start = offsets[seg_t[:, 0]] + seg_t[:, 1]
        self.first_timestep = seg_t[:, 1]
        self.length = seg_t[:, 2]
        self.score = torch.as_tensor(score[first], dtype=torch.float32, device=self.device)
        self.steps = torch.arange(int(self.length.max()), device=self.device)
        self._seed(seed)

    def __len__(self) -> int:
        return len(self.score)

    def batch(self, index: Tensor) -> SegmentBatch:
        mask = self.steps < self.length[index][:, None]                        # [B, T]
        rows = torch.where(mask, self.start[index][:, None] + self.steps, 0)
        timestep = torch.where(mask, self.first_timestep[index][:, None] + self.steps, 0)
        return SegmentBatch(self.obs[rows], self.act[rows], mask, self.score[index], timestep)
