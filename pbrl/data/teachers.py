"""Scripted teachers: who prefers what, and how noisily.

A teacher scores each segment with a per-step *utility* and compares two scores:

- ``return``: the utility is the reward (or a user group's weighting of reward terms): Bradley-Terry on
  segment returns;
- ``regret``: the utility is an advantage ``A(s_t, a_t)``, so a segment scores ``Σ_t γ^t A_t``: CPL's regret
  model (Knox et al., 2022; Hejna et al., 2024, eq. 3), whose theory asks for the advantage of the *optimal*
  policy. The ``critic`` names where the advantage comes from (:mod:`pbrl.train.critics` computes each):

  - ``expert``: ``r + γV(s′) − V(s)`` under an expert's value (SAC: ``E_{a∼π} Q(s, a)``; PPO: its value
    head), as the CPL paper labels;
  - ``iql``: ``r + γV(s′) − V(s)`` under an in-sample optimal value, IQL's τ-expectile V (with its twin Q)
    fitted to the utility (any dataset, imported ones included);
  - ``behaviour``: ``r + γV^β(s′) − V^β(s)`` with V^β fitted to the dataset's own returns. Weak: along the
    behaviour's own trajectories these advantages average to zero, so within a segment they mostly measure luck.

Noise follows B-Pref (Lee et al., 2021), each a parameter, all combinable, applied in this order:
skip (no label when both segments score below ``skip_threshold``), equal (label 0.5 when the scores differ by
less than ``equal_margin``), myopic (step t of T weighted by ``myopic^(T−1−t)``; skip and equal look at the
unweighted scores, as in B-Pref), stochastic (label ~
Bernoulli(σ(β Δ)); β = None is the deterministic limit β → ∞), mistake (flip with probability ε).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tomllib

from pbrl.data.store import TrajectoryDataset
from pbrl.errors import ConfigError, DatasetError, describe

DERIVED_TERMS = ("reward", "action_smoothness", "action_magnitude")


# ---------------------------------------------------------------------------------------------------------
# per-step utilities and segment scores
# ---------------------------------------------------------------------------------------------------------

def utility_terms(trajectories: TrajectoryDataset) -> list[str]:
    """Names a utility may weight: ``reward``, the derived action terms, and every ``infos/<key>``."""
    return [*DERIVED_TERMS, *trajectories.info_keys]


def step_utilities(trajectories: TrajectoryDataset, weights: dict[str, float] | None = None) -> np.ndarray:
    """Per-step utility ``u_t = Σ_k w_k term_k(t)``, ``[N]`` float64; ``None`` is the reward itself.

    Derived terms: ``action_smoothness = −‖a_t − a_{t−1}‖²`` (0 at an episode's first step) and
    ``action_magnitude = −‖a_t‖²``.
    """
    if not weights:
        return trajectories.rewards.astype(np.float64)
    known = utility_terms(trajectories)
    u = np.zeros(trajectories.num_transitions)
    for name, w in weights.items():
        if name == "reward":
            term = trajectories.rewards.astype(np.float64)
        elif name == "action_magnitude":
            term = -(trajectories.actions.astype(np.float64) ** 2).sum(1)
        elif name == "action_smoothness":
            a = trajectories.actions.astype(np.float64)
            term = np.zeros(len(a))
            term[1:] = -((a[1:] - a[:-1]) ** 2).sum(1)
            term[trajectories.episode_offsets[:-1]] = 0.0
        elif name in trajectories.info_keys:
            term = trajectories.info(name).astype(np.float64)
        else:
            raise ConfigError(describe(str(trajectories.path), f"utility term {name!r}", "unknown", f"one of {known}"))
        u += float(w) * term
    return u


def discounted_returns_to_go(trajectories: TrajectoryDataset, gamma: float, u: np.ndarray | None = None) -> np.ndarray:
    """Monte-Carlo ``G_t = Σ_k γ^k u_{t+k}`` to the end of each episode (u: the rewards by default), ``[N]``."""
    u = trajectories.rewards.astype(np.float64) if u is None else u
    out = np.zeros_like(u, dtype=np.float64)
    offsets = trajectories.episode_offsets
    for e in range(len(offsets) - 1):
        g = 0.0
        for t in range(offsets[e + 1] - 1, offsets[e] - 1, -1):
            g = u[t] + gamma * g
            out[t] = g
    return out


AdvantageCritic = Callable[[TrajectoryDataset, np.ndarray, "Teacher"], np.ndarray]
"""The regret teacher's critic: ``(trajectories, utility u [N], teacher) -> A(s_t, a_t) [N]`` under the teacher's γ,
computed the way ``teacher.critic`` names. ``pbrl.train.critics.regret_advantages`` computes all three."""

CRITICS = ("iql", "expert", "behaviour")
DEFAULT_CRITIC = "iql"
CRITIC_STEPS = {"iql": 20_000, "behaviour": 3_000, "expert": 0}  # gradient steps of the fit (expert: none)


def advantages(trajectories: TrajectoryDataset, u: np.ndarray, values: tuple[np.ndarray, np.ndarray],
               gamma: float) -> np.ndarray:
    """Per-step advantage ``A_t = u_t + γ V(s_{t+1}) − V(s_t)`` with V = 0 after a terminal step, ``[N]``."""
    v_rows, v_final = values
    offsets = trajectories.episode_offsets
    v_next = np.empty_like(v_rows)
    v_next[:-1] = v_rows[1:]
    last = offsets[1:] - 1
    v_next[last] = v_final
    v_next[last[trajectories.terminations[last]]] = 0.0
    return u + gamma * v_next - v_rows


def segment_scores(trajectories: TrajectoryDataset, u: np.ndarray, segments: np.ndarray, *, discount: float = 1.0,
                   myopic: float = 1.0) -> np.ndarray:
    """``Σ_t myopic^(T−1−t) · discount^t · u_{start+t}`` for each segment ``[P, 3]`` -> ``[P]`` float64."""
    offsets = trajectories.episode_offsets
    length = segments[:, 2]
    steps = np.arange(int(length.max()))
    mask = steps[None] < length[:, None]
    idx = np.where(mask, offsets[segments[:, 0]][:, None] + segments[:, 1][:, None] + steps[None], 0)
    weights = discount ** steps[None] * myopic ** np.clip(length[:, None] - 1 - steps[None], 0, None)
    return (u[idx] * weights * mask).sum(1)


def segment_returns(trajectories: TrajectoryDataset, segments: np.ndarray, gamma: float = 1.0) -> np.ndarray:
    """True (discounted) return of each segment ``[P, 3]`` -> ``[P]`` float64."""
    return segment_scores(trajectories, trajectories.rewards.astype(np.float64), segments, discount=gamma)


# ---------------------------------------------------------------------------------------------------------
# the teacher
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Teacher:
    """A scripted teacher: a utility (``return`` or ``regret``, optionally a weighting of reward terms) and
    the B-Pref noise models. Defaults give the deterministic, noise-free teacher."""

    utility: str = "return"
    weights: dict[str, float] | None = None   # reward terms -> weights; None: the reward
    beta: float | None = None                  # stochastic: rationality β; None: deterministic
    mistake: float = 0.0                       # flip probability ε
    skip_threshold: float | None = None        # skip when both scores are below it
    equal_margin: float = 0.0                  # label 0.5 when |Δ| < margin
    myopic: float = 1.0                        # weight of step t of T: myopic^(T−1−t)
    discount: float | None = None              # γ inside a segment (return: 1, regret: 0.99)
    critic: str | None = None                  # regret: iql | expert | behaviour (None: DEFAULT_CRITIC)
    expert: str | None = None                  # regret, critic expert: the expert's run directory
    value_steps: int | None = None             # regret: gradient steps of the critic fit (None: CRITIC_STEPS)
    seed: int = 0                              # regret: seed of the critic fit

    def __post_init__(self) -> None:
        if self.utility not in ("return", "regret"):
            raise ConfigError(describe("--teacher", "teacher", repr(self.utility), "'return' (alias 'scripted') or 'regret'"))
        if self.beta is not None and not self.beta > 0:
            raise ConfigError(describe("--beta", "rationality", self.beta, "a positive float (omit for deterministic labels)"))
        if not 0.0 <= self.mistake <= 0.5:
            raise ConfigError(describe("--mistake", "flip probability", self.mistake, "a value in [0, 0.5]"))
        if self.equal_margin < 0:
            raise ConfigError(describe("--equal-margin", "margin", self.equal_margin, "a non-negative float"))
        if not 0.0 < self.myopic <= 1.0:
            raise ConfigError(describe("--myopic", "myopic weight", self.myopic, "a value in (0, 1]"))
        if self.critic is not None and self.critic not in CRITICS:
            raise ConfigError(describe("--critic", "critic", repr(self.critic), f"one of {list(CRITICS)}"))
        if self.critic is not None and self.utility != "regret":
            raise ConfigError(describe("--critic", "critic", repr(self.critic), "no critic: only the regret teacher has one"))
        if self.critic == "expert" and self.weights:
            raise ConfigError(describe("--critic expert", "utility weights", self.weights,
                                       "the reward itself (an expert's critic knows only the reward it was trained on)"))

    @property
    def critic_name(self) -> str:
        """The regret teacher's critic (``DEFAULT_CRITIC`` unless set)."""
        return self.critic or DEFAULT_CRITIC

    @property
    def fit_steps(self) -> int:
        """Gradient steps of the regret critic's fit."""
        return self.value_steps if self.value_steps is not None else CRITIC_STEPS[self.critic_name]

    @property
    def gamma(self) -> float:
        return self.discount if self.discount is not None else (0.99 if self.utility == "regret" else 1.0)

    def utilities(self, trajectories: TrajectoryDataset, critic: AdvantageCritic | None = None) -> np.ndarray:
        """Per-step utility of this teacher on ``trajectories``, ``[N]``; ``regret`` needs a ``critic``."""
        u = step_utilities(trajectories, self.weights)
        if self.utility == "regret":
            if critic is None:
                raise ConfigError(describe("teacher 'regret'", "critic", "none", "an advantage critic "
                                           "(pbrl.train.critics.regret_advantages; `pbrl data label` passes one)"))
            u = critic(trajectories, u, self)
        return u

    def scores(self, trajectories: TrajectoryDataset, segments: np.ndarray, u: np.ndarray | None = None) -> np.ndarray:
        u = self.utilities(trajectories) if u is None else u
        return segment_scores(trajectories, u, segments, discount=self.gamma, myopic=self.myopic)

    def probability(self, score_a: np.ndarray, score_b: np.ndarray, equal: np.ndarray | None = None) -> np.ndarray:
        """P(a ≻ b) before mistakes: 0.5 where ``equal`` (default: |Δ| < margin), else σ(β Δ) or the hard order."""
        diff = score_a - score_b
        if self.beta is None:
            p = np.where(diff > 0, 1.0, np.where(diff < 0, 0.0, 0.5))
        else:
            p = 0.5 * (1.0 + np.tanh(0.5 * self.beta * diff))  # σ(β Δ) without overflow
        return np.where(np.abs(diff) < self.equal_margin if equal is None else equal, 0.5, p)

    def label(self, trajectories: TrajectoryDataset, seg_a: np.ndarray, seg_b: np.ndarray, rng: np.random.Generator,
              u: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Labels ``[P]`` in {0, 0.5, 1} and a skip mask ``[P]`` for pairs of segments ``[P, 3]``. As in B-Pref,
        skip and equal look at the segments' unweighted sums; the myopic weights enter only the preference."""
        u = self.utilities(trajectories) if u is None else u
        sa, sb = self.scores(trajectories, seg_a, u), self.scores(trajectories, seg_b, u)
        if self.myopic == 1.0:
            raw_a, raw_b = sa, sb
        else:
            raw_a = segment_scores(trajectories, u, seg_a, discount=self.gamma)
            raw_b = segment_scores(trajectories, u, seg_b, discount=self.gamma)
        p = self.probability(sa, sb, equal=np.abs(raw_a - raw_b) < self.equal_margin)
        label = p if self.beta is None else np.where(p == 0.5, 0.5, (rng.random(len(p)) < p).astype(np.float64))
        if self.mistake > 0:
            flip = rng.random(len(label)) < self.mistake
            label = np.where(flip, 1.0 - label, label)
        skipped = np.zeros(len(label), bool) if self.skip_threshold is None else \
            (raw_a < self.skip_threshold) & (raw_b < self.skip_threshold)
        label = np.where(skipped, 0.5, label)  # a skipped query carries no answer; 0.5 is its placeholder
        return label.astype(np.float32), skipped

    def rank(self, trajectories: TrajectoryDataset, segments: np.ndarray, rng: np.random.Generator,
             u: np.ndarray | None = None) -> np.ndarray:
        """Order K segments per query, best first: ``segments`` [Q, K, 3] -> indices [Q, K].

        Deterministic: sort by score. Stochastic: a Plackett-Luce draw with scores β·s (Gumbel-max trick).
        Mistakes swap one random adjacent pair with probability ε.
        """
        u = self.utilities(trajectories) if u is None else u
        q, k = segments.shape[:2]
        s = self.scores(trajectories, segments.reshape(-1, 3), u).reshape(q, k)
        if self.beta is not None:
            s = self.beta * s + rng.gumbel(size=s.shape)
        order = np.argsort(-s, axis=1, kind="stable")
        if self.mistake > 0:
            swap = rng.random(q) < self.mistake
            pos = rng.integers(0, k - 1, q)
            rows = np.flatnonzero(swap)
            order[rows, pos[rows]], order[rows, pos[rows] + 1] = order[rows, pos[rows] + 1], order[rows, pos[rows]]
        return order

    def params(self) -> dict[str, Any]:
        """The fields that are set (``Teacher(**t.params()) == t``)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def as_dict(self) -> dict[str, Any]:
        """What a card records: the set fields, and for ``regret`` the critic and its fit steps as resolved."""
        out = {"name": self.utility, **{k: v for k, v in self.params().items() if k != "utility"}}
        if self.utility == "regret":
            out.update(critic=self.critic_name, value_steps=self.fit_steps)
        return out


# ---------------------------------------------------------------------------------------------------------
# user groups
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Group:
    """An annotator group: a name, its share of the labels, and its own teacher (utility + noise)."""

    name: str
    share: float
    teacher: Teacher = field(default_factory=Teacher)


def load_groups(path: str | Path, base: Teacher | None = None) -> list[Group]:
    """Read a groups file (TOML, one ``[[group]]`` table each)::

        [[group]]
        name = "fast"            # any label
        share = 0.5              # fraction of the pairs this group labels (normalised over groups)
        utility = "return"       # or "regret"
        weights = { x_velocity = 1.0, reward_ctrl = 1.0 }   # reward terms (see utility_terms)
        beta = 1.0               # and mistake, skip_threshold, equal_margin, myopic: as the CLI options
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(describe(str(path), "file", "missing", "a TOML groups file"))
    try:
        groups = tomllib.loads(path.read_text()).get("group", [])
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(describe(str(path), "groups file", f"invalid TOML ({exc})", "[[group]] tables")) from None
    if not groups:
        raise ConfigError(describe(str(path), "[[group]]", "none", "at least one [[group]] table"))
    base = base or Teacher()
    known = {f for f in Teacher.__dataclass_fields__}
    out = []
    for i, g in enumerate(groups):
        extra = set(g) - known - {"name", "share"}
        if extra:
            raise ConfigError(describe(str(path), f"group {i} field(s) {sorted(extra)}", "unknown",
                                       f"name, share or one of {sorted(known)}"))
        params = {**asdict(base), **{k: v for k, v in g.items() if k in known}}
        if params.get("utility") != "regret" and "critic" not in g:  # the CLI's critic is the regret groups' only
            params.update(critic=None, expert=None)
        if "weights" in params and params["weights"] is not None:
            params["weights"] = {str(k): float(v) for k, v in params["weights"].items()}
        out.append(Group(str(g.get("name", f"group{i}")), float(g.get("share", 1.0)), Teacher(**params)))
    total = sum(g.share for g in out)
    if total <= 0:
        raise ConfigError(describe(str(path), "share", total, "positive shares"))
    return [Group(g.name, g.share / total, g.teacher) for g in out]


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def source_quality(trajectories: TrajectoryDataset) -> np.ndarray | None:
    """Known order of the policies that produced each episode, ``[E]`` float (higher is better), or None when a
    source is not one ``pbrl data make`` writes. ``random`` < ``medium-*`` < ``expert-*``; within a learner's
    replay (``ALGO-replay@STEPS``) later checkpoints rank higher; scripted policies with less action noise
    (``scripted+noiseσ``) rank higher, and all of them above the reversed one (``reversed-scripted+noiseσ``)."""
    quality = []
    for source in trajectories.episode_sources:
        if source == "random":
            quality.append(0.0)
        elif source.startswith("expert-"):
            quality.append(3e12)
        elif source.startswith("medium-"):
            quality.append(2e12)
        elif "-replay@" in source and source.rsplit("@", 1)[1].isdigit():
            quality.append(1e12 + float(source.rsplit("@", 1)[1]))
        elif source.startswith("scripted+noise") and _is_float(source.removeprefix("scripted+noise")):
            quality.append(2e12 - float(source.removeprefix("scripted+noise")))
        elif source.startswith("reversed-scripted+noise"):
            quality.append(-1.0)
        else:
            return None
    return np.asarray(quality)


def agreement(label: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> float | None:
    """Fraction of decided labels (not 0.5) on pairs with different scores that follow the score order."""
    decided = (label != 0.5) & (score_a != score_b)
    if not decided.any():
        return None
    return float(((label[decided] > 0.5) == (score_a[decided] > score_b[decided])).mean())


def consistency_report(trajectories: TrajectoryDataset, seg_a: np.ndarray, seg_b: np.ndarray, label: np.ndarray,
                       group: np.ndarray, groups: list[Group], skipped: np.ndarray | None = None,
                       critic: AdvantageCritic | None = None) -> dict[str, Any]:
    """Per-group agreement with its own utility, and the cross-group matrix ``[i][j]``: how often group i's
    labels follow group j's (noise-free) utility."""
    if skipped is None:
        skipped = np.zeros(len(label), bool)
    scores = []
    for g in groups:
        clean = Teacher(utility=g.teacher.utility, weights=g.teacher.weights, myopic=g.teacher.myopic,
                        discount=g.teacher.discount, critic=g.teacher.critic, expert=g.teacher.expert,
                        value_steps=g.teacher.value_steps, seed=g.teacher.seed)
        u = clean.utilities(trajectories, critic)
        scores.append((clean.scores(trajectories, seg_a, u), clean.scores(trajectories, seg_b, u)))
    matrix = []
    for i in range(len(groups)):
        rows = (group == i) & ~skipped
        matrix.append([agreement(label[rows], sa[rows], sb[rows]) for sa, sb in scores])
    return {"groups": [g.name for g in groups], "labels": [int(((group == i) & ~skipped).sum()) for i in range(len(groups))],
            "self_agreement": [matrix[i][i] for i in range(len(groups))], "cross_agreement": matrix}


def check_terms(trajectories: TrajectoryDataset, teacher: Teacher, where: str) -> None:
    for name in teacher.weights or {}:
        if name not in utility_terms(trajectories):
            raise DatasetError(describe(where, f"utility term {name!r}", "not in the dataset",
                                        f"one of {utility_terms(trajectories)}"))
