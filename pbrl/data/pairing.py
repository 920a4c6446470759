"""Choosing what to ask: segment sampling and pairing strategies, then labelling by teachers or user groups.

Pairing strategies (``--pairing``):

- ``uniform``: both segments uniform over every valid (episode, start) position;
- ``stratified``: candidate segments are binned by true return into equal-width strata over the return
  range; each pair takes two strata uniformly and a segment uniformly from each, so every return *level*
  is queried equally often (rare high- or low-return segments are not drowned by the common ones);
- ``disagreement``: a first tenth of the pairs is uniform and labelled; an ensemble of reward models
  (MLP r(s, a), Bradley-Terry on segment sums, bootstrapped) is fitted to it, and the rest are the candidate
  pairs on which the ensemble's P(a ≻ b) varies most (Christiano et al., 2017; Lee et al., 2021).

Modes (``--mode``): ``segments`` (any number of labels per episode) and ``episodes`` (one label per pair of
trajectories: each episode appears in at most one pair). These are not the CPL paper's "dense" and "sparse",
which are regimes of training (``agent.regime``: all pairs of a pool of scored segments, or a fixed table of
pairs). ``rank=K`` asks for K-way rankings instead, stored as their
K(K−1)/2 pairs sharing a query id.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from itertools import combinations

import numpy as np

from pbrl.data.preferences import PreferenceDataset
from pbrl.data.store import TrajectoryDataset
from pbrl.data.teachers import AdvantageCritic, Group, Teacher, check_terms, segment_returns, segment_scores
from pbrl.errors import ConfigError, DatasetError, describe

PAIRINGS = ("uniform", "stratified", "disagreement")
MODES = ("segments", "episodes")


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


def episode_pairs(trajectories: TrajectoryDataset, pairs: int, length: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """One pair per two distinct episodes (each episode used at most once), one random window in each."""
    eligible = np.flatnonzero(trajectories.episode_lengths >= length)
    if len(eligible) < 2 * pairs:
        raise DatasetError(describe(str(trajectories.path), "episodes of at least the segment length",
                                    len(eligible), f"at least {2 * pairs} for {pairs} pairs of episodes"))
    eps = rng.permutation(eligible)[: 2 * pairs]
    starts = rng.integers(0, trajectories.episode_lengths[eps] - length + 1)
    seg = np.stack([eps, starts, np.full(len(eps), length)], 1).astype(np.int64)
    return seg[:pairs], seg[pairs:]


def stratified_pairs(trajectories: TrajectoryDataset, pairs: int, length: int, rng: np.random.Generator,
                     strata: int = 5, candidates: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Pairs whose segments are spread evenly over ``strata`` equal-width return levels."""
    pool = sample_segments(trajectories, candidates * 2 * pairs, length, rng)
    ret = segment_returns(trajectories, pool)
    edges = np.linspace(ret.min(), ret.max(), strata + 1)[1:-1]
    bins = np.searchsorted(edges, ret, side="right")
    members = [np.flatnonzero(bins == b) for b in range(strata)]
    members = [m for m in members if len(m)]
    pick = lambda: pool[[m[rng.integers(len(m))] for m in (members[i] for i in rng.integers(len(members), size=pairs))]]  # noqa: E731
    return pick(), pick()


EnsembleFit = Callable[[TrajectoryDataset, np.ndarray, np.ndarray, np.ndarray, int], list[np.ndarray]]
"""``(trajectories, seg_a [P, 3], seg_b [P, 3], label [P], seed) -> [each member's reward for every row, [N]]``: the
reward-model ensemble of ``disagreement`` pairing (``pbrl.train.critics.fit_reward_ensemble``)."""


def preference_spread(trajectories: TrajectoryDataset, member_rewards: list[np.ndarray], seg_a: np.ndarray,
                      seg_b: np.ndarray) -> np.ndarray:
    """``[N]``: the standard deviation over ensemble members of P(a ≻ b), Bradley-Terry on each member's segment
    sums (``member_rewards``: one ``[rows]`` reward per member; ``seg_a``, ``seg_b``: ``[N, 3]``)."""
    probs = np.stack([1 / (1 + np.exp(-np.clip(segment_scores(trajectories, r, seg_a) - segment_scores(trajectories, r, seg_b),
                                                -50, 50))) for r in member_rewards])
    return probs.std(0)


def disagreement_pairs(trajectories: TrajectoryDataset, pairs: int, length: int, rng: np.random.Generator,
                       teacher: Teacher, u: np.ndarray, ensemble: EnsembleFit, candidates: int = 10, seed: int = 0
                       ) -> tuple[np.ndarray, np.ndarray]:
    """A uniform tenth labelled first; the rest chosen where a reward-model ensemble disagrees most."""
    first = max(1, pairs // 10)
    a0, b0 = sample_segments(trajectories, first, length, rng), sample_segments(trajectories, first, length, rng)
    y0, skip0 = teacher.label(trajectories, a0, b0, rng, u)
    member_rewards = ensemble(trajectories, a0[~skip0], b0[~skip0], y0[~skip0], seed)
    m = candidates * (pairs - first)
    ca, cb = sample_segments(trajectories, m, length, rng), sample_segments(trajectories, m, length, rng)
    top = np.argsort(-preference_spread(trajectories, member_rewards, ca, cb), kind="stable")[: pairs - first]
    return np.concatenate([a0, ca[top]]), np.concatenate([b0, cb[top]])


def make_preferences(trajectories: TrajectoryDataset, *, pairs: int, segment: int, teacher: Teacher | None = None,
                     groups: list[Group] | None = None, pairing: str = "uniform", mode: str = "segments",
                     rank: int = 0, seed: int = 0, critic: AdvantageCritic | None = None,
                     ensemble: EnsembleFit | None = None) -> PreferenceDataset:
    """Choose ``pairs`` queries and label them: by one ``teacher``, or by ``groups`` (each labelling its share
    of the queries with its own teacher; every label carries its group id). ``rank=K`` asks K-way rankings
    (``pairs`` is then the number of rankings). A ``regret`` teacher needs a ``critic``, ``disagreement``
    pairing an ``ensemble`` (:mod:`pbrl.train.critics` has both)."""
    if pairing not in PAIRINGS:
        raise ConfigError(describe("--pairing", "pairing", repr(pairing), f"one of {list(PAIRINGS)}"))
    if mode not in MODES:
        raise ConfigError(describe("--mode", "mode", repr(mode), f"one of {list(MODES)}"))
    if rank == 1 or rank < 0:
        raise ConfigError(describe("--rank", "K", rank, "0 (pairs) or K >= 2"))
    if pairing == "disagreement" and ensemble is None:
        raise ConfigError(describe("--pairing disagreement", "ensemble", "none", "a reward-ensemble fit "
                                   "(pbrl.train.critics.fit_reward_ensemble; `pbrl data label` passes one)"))
    rng = np.random.default_rng(seed)
    groups = groups or [Group("all", 1.0, teacher or Teacher())]
    for g in groups:
        check_terms(trajectories, g.teacher, str(trajectories.path))
    utilities = [g.teacher.utilities(trajectories, critic) for g in groups]
    queries = pairs

    def assign() -> np.ndarray:  # drawn after the segments, so one-group datasets do not depend on it
        if len(groups) == 1:
            return np.zeros(queries, np.int64)
        return rng.choice(len(groups), size=queries, p=[g.share for g in groups])

    if rank >= 2:
        segs = sample_segments(trajectories, queries * rank, segment, rng).reshape(queries, rank, 3)
        for _ in range(REDRAWS):  # a ranking must not hold one segment twice: redraw those rankings
            repeated = np.flatnonzero([len(np.unique(q, axis=0)) < rank for q in segs])
            if not len(repeated):
                break
            segs[repeated] = sample_segments(trajectories, len(repeated) * rank, segment, rng).reshape(-1, rank, 3)
        who = assign()
        order = np.zeros((queries, rank), np.int64)
        for gi, g in enumerate(groups):
            rows = np.flatnonzero(who == gi)
            if len(rows):
                order[rows] = g.teacher.rank(trajectories, segs[rows], rng, utilities[gi])
        ranked = np.take_along_axis(segs, order[..., None], 1)  # best first
        ij = np.array(list(combinations(range(rank), 2)))
        seg_a = ranked[:, ij[:, 0]].reshape(-1, 3)
        seg_b = ranked[:, ij[:, 1]].reshape(-1, 3)
        n = len(ij)
        flip = rng.random(len(seg_a)) < 0.5  # randomise which side the better segment is on
        seg_a, seg_b = np.where(flip[:, None], seg_b, seg_a), np.where(flip[:, None], seg_a, seg_b)
        group = np.repeat(who, n)
        return without_self_pairs(PreferenceDataset(
            seg_a, seg_b, np.where(flip, 0.0, 1.0).astype(np.float32), group.astype(np.int32),
            query=np.repeat(np.arange(queries), n), **teacher_scores(trajectories, seg_a, seg_b, group, groups, utilities)),
            trajectories, segment)
    if mode == "episodes":
        seg_a, seg_b = episode_pairs(trajectories, queries, segment, rng)
    elif pairing == "stratified":
        seg_a, seg_b = stratified_pairs(trajectories, queries, segment, rng)
    elif pairing == "disagreement":
        seg_a, seg_b = disagreement_pairs(trajectories, queries, segment, rng, groups[0].teacher, utilities[0],
                                            ensemble, seed=seed)
    else:
        seg_a = sample_segments(trajectories, queries, segment, rng)
        seg_b = sample_segments(trajectories, queries, segment, rng)
        for _ in range(REDRAWS):  # a pair of a segment with itself teaches nothing: draw its partner again
            same = np.flatnonzero((seg_a == seg_b).all(1))
            if not len(same):
                break
            seg_b[same] = sample_segments(trajectories, len(same), segment, rng)
    who = assign()
    label = np.zeros(queries, np.float32)
    skipped = np.zeros(queries, bool)
    for gi, g in enumerate(groups):
        rows = np.flatnonzero(who == gi)
        if len(rows):
            label[rows], skipped[rows] = g.teacher.label(trajectories, seg_a[rows], seg_b[rows], rng, utilities[gi])
    return without_self_pairs(PreferenceDataset(seg_a, seg_b, label, who.astype(np.int32), skipped=skipped,
                                                **teacher_scores(trajectories, seg_a, seg_b, who, groups, utilities)),
                              trajectories, segment)


REDRAWS = 20  # tries before pairs of a segment with itself are left out (few distinct windows exist)


def without_self_pairs(prefs: PreferenceDataset, trajectories: TrajectoryDataset, segment: int) -> PreferenceDataset:
    """Drop pairs of a segment with itself (a tie that teaches nothing: few distinct windows exist when the
    segment is nearly as long as the episodes), saying how many on stderr; refuse when none would be left."""
    same = (prefs.segments_a == prefs.segments_b).all(1)
    if not same.any():
        return prefs
    if same.all():
        raise DatasetError(describe(str(trajectories.path), "distinct segments", "none: every pair compares a segment "
                                    "with itself", f"a --segment shorter than {segment} (episodes of "
                                    f"{int(trajectories.episode_lengths.max())} steps or fewer)"))
    print(f"pbrl: warning: {trajectories.path}: left out {int(same.sum())} of {len(same)} pairs of a segment with "
          f"itself (segment {segment} steps: few distinct windows; a shorter --segment avoids them)", file=sys.stderr)
    return prefs.subset(np.flatnonzero(~same))


def teacher_scores(trajectories: TrajectoryDataset, seg_a: np.ndarray, seg_b: np.ndarray, who: np.ndarray,
                   groups: list[Group], utilities: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Each pair's noise-free scores under its group's teacher: ``score_a``, ``score_b`` ``[P]``."""
    score_a, score_b = np.zeros(len(seg_a)), np.zeros(len(seg_a))
    for gi, g in enumerate(groups):
        rows = np.flatnonzero(who == gi)
        if len(rows):
            score_a[rows] = g.teacher.scores(trajectories, seg_a[rows], utilities[gi])
            score_b[rows] = g.teacher.scores(trajectories, seg_b[rows], utilities[gi])
    return {"score_a": score_a, "score_b": score_b}


def reversal_rounds(prefs: PreferenceDataset, rounds: int, *, share: float, rate: float, seed: int
                    ) -> PreferenceDataset:
    """Diff-UAPA's noise protocol: the same pairs labelled by ``rounds`` user groups (group r = round r), where the
    ``share`` of the decided pairs whose teacher scores lie closest (the most uncertain) are chosen once, and each
    group reverses each chosen pair's label with probability ``rate`` on its own draw. The official code moves a
    chosen pair's votes by a truncated-normal amount with mean ``rate``; here a label flips whole (a hard label
    either way). Needs the teacher's scores (``score_a``/``score_b``); skipped pairs stay skipped in every round.
    Returns ``rounds × P`` pairs, round by round."""
    if prefs.score_a is None or prefs.score_b is None:
        raise DatasetError(describe("--rounds", "teacher scores", "missing", "a scripted teacher's labels"))
    rng = np.random.default_rng([seed, 7919])
    decided = np.flatnonzero(~prefs.skipped & (prefs.label != 0.5))
    gap = np.abs(prefs.score_a[decided] - prefs.score_b[decided])
    chosen = decided[np.argsort(gap, kind="stable")[:int(round(share * len(decided)))]]
    copies = []
    for r in range(rounds):
        copy = prefs.subset(np.arange(len(prefs)))
        flip = chosen[rng.random(len(chosen)) < rate]
        copy.label = copy.label.copy()
        copy.label[flip] = 1.0 - copy.label[flip]
        copy.group = np.full(len(prefs), r, dtype=np.int32)
        copy.query = copy.query + r * len(prefs)
        copies.append(copy)
    cat = lambda name: None if getattr(prefs, name) is None else np.concatenate([getattr(c, name) for c in copies])  # noqa: E731
    return PreferenceDataset(cat("segments_a"), cat("segments_b"), cat("label"), cat("group"), skipped=cat("skipped"),
                             query=cat("query"), annotator=cat("annotator"), timestamp=cat("timestamp"),
                             score_a=cat("score_a"), score_b=cat("score_b"), attrs=dict(prefs.attrs))
