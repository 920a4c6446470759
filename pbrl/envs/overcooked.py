"""Overcooked-AI (Carroll et al., 2019) as pbrl's two-player environment.

The dynamics are the real package's: ``overcooked`` 0.2.1 (the maintained fork of HumanCompatibleAI's
``overcooked_ai``, which runs on NumPy 2 and gymnasium). pbrl steps its ``OvercookedGridworld`` directly and
adds what the package lacks or gets wrong:

- **observations per player**: :func:`featurize` (pbrl's own egocentric vector, ``FEATURE_DIM`` floats; the
  fork's ``featurize_state`` is broken, and it needs motion planners that the package caches inside its own
  install folder) and :meth:`OvercookedGame.lossless` (the package's lossless grid encoding, ``[2, C, H, W]``);
- **events in ``info``**: which player picked an onion, potted, picked a dish, picked up or delivered a soup,
  ... at each step (``EVENTS``), the package's shaped reward per player, and the sparse reward (20 per soup);
- **a gymnasium/SB3 vector view** (:class:`OvercookedVecEnv`): self-play (both seats learn) or one learner
  seat against a partner drawn from a pool, with a reward made of the sparse reward, the shaping and any
  event-weighted utility (:class:`Utility`, the hidden-utility human proxies);
- **vectorised evaluation** with any partner (:func:`play`).

pbrl's own code builds no motion planner. The package's code that does (``OvercookedEnv.step``, its planners)
caches them in its install folder; :func:`make_mdp` points that cache at ``planner_cache_dir()`` (under
``$PBRL_CACHE``, default ``~/.cache/pbrl``) first, so nothing is written into the package. Layouts are the package's
files (``cramped_room``, ``coordination_ring``, ``asymmetric_advantages``, ``random0`` = forced coordination,
``random3`` = counter circuit, ...). The human trials of 2019 were played with the old dynamics (a pot
starts cooking by itself at three onions, 20 ticks), so ``old_dynamics=True`` is the default.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from pbrl.errors import ConfigError, describe

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

HORIZON = 400
SOUP_REWARD = 20
N_ACTIONS = 6
#: the fork's action order: north, south, east, west, stay, interact
ACTION_NAMES = ("north", "south", "east", "west", "stay", "interact")
#: events tracked per player and step (the package's event names; tomato events left out: no layout here has tomatoes)
EVENTS = ("onion_pickup", "useful_onion_pickup", "onion_drop", "useful_onion_drop", "potting_onion",
          "optimal_onion_potting", "viable_onion_potting", "catastrophic_onion_potting", "useless_onion_potting",
          "dish_pickup", "useful_dish_pickup", "dish_drop", "useful_dish_drop",
          "soup_pickup", "soup_delivery", "soup_drop")
EVENT_INDEX = {e: i for i, e in enumerate(EVENTS)}
_HELD = ("onion", "dish", "soup", "tomato")
_ORIENT = ((0, -1), (0, 1), (1, 0), (-1, 0))
_MAX_POTS = 2
_COOK_TIME = 20.0
#: feature layout of :func:`featurize` (name, width); the names document the vector
FEATURES = (("position", 2), ("orientation", 4), ("held", 4), ("to_onion_dispenser", 2), ("to_dish_dispenser", 2),
            ("to_serving", 2), ("loose_onion", 3), ("loose_dish", 3), ("loose_soup", 3),
            *((f"pot{k}", 8) for k in range(_MAX_POTS)), ("free_neighbours", 4),
            ("partner_offset", 2), ("partner_orientation", 4), ("partner_held", 4))
FEATURE_DIM = sum(w for _, w in FEATURES)


def layout_names() -> list[str]:
    """Layout names the package ships."""
    import overcooked.static as static

    return sorted(p.stem for p in Path(static.LAYOUTS_DIR).glob("*.layout"))


def planner_cache_dir() -> Path:
    """Where the package's motion-planner caches go: ``$PBRL_CACHE/overcooked/planners`` (default ``~/.cache/pbrl``)."""
    return Path(os.environ.get("PBRL_CACHE", Path.home() / ".cache" / "pbrl")) / "overcooked" / "planners"


def redirect_planner_cache() -> Path:
    """Point the package's planner cache (``PLANNERS_DIR``, imported by name in two modules) at pbrl's cache."""
    import overcooked.data.planners as saved
    import overcooked.planning.planners as planners
    import overcooked.static as static

    target = planner_cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    for module in (static, planners, saved):
        module.PLANNERS_DIR = str(target)
    return target


def make_mdp(layout: str, *, old_dynamics: bool = True):
    """The package's ``OvercookedGridworld`` for ``layout``, or ConfigError naming the known layouts."""
    from overcooked.mdp import OvercookedGridworld

    redirect_planner_cache()
    check_layout(layout)
    return OvercookedGridworld.from_layout_name(layout, old_dynamics=old_dynamics)


def check_layout(layout: str) -> None:
    """ConfigError naming ``--layout`` and the known layouts unless the package ships ``layout`` (cheap: a command
    checks it before it makes a run folder)."""
    known = layout_names()
    if layout not in known:
        raise ConfigError(describe("--layout", "Overcooked layout", repr(layout), f"one of {known}"))


class _Terrain:
    """Fixed positions of a layout (dispensers, pots, serving, walkable cells) as arrays, computed once."""

    def __init__(self, mdp) -> None:
        grid = mdp.terrain_mtx
        self.height, self.width = len(grid), len(grid[0])
        pos = {k: [tuple(int(c) for c in p) for p in v] for k, v in mdp.terrain_pos_dict.items()}
        self.onion, self.dish, self.serving = pos.get("O", []), pos.get("D", []), pos.get("S", [])
        self.pots = pos.get("P", [])[:_MAX_POTS]
        self.walkable = np.array([[c == " " for c in row] for row in grid], dtype=bool)  # [H, W]


def _closest(origin: tuple[int, int], targets: Sequence[tuple[int, int]]) -> tuple[float, float]:
    """(dx, dy) from ``origin`` to the Manhattan-closest of ``targets`` (first on ties); zeros if none."""
    best, out = None, (0.0, 0.0)
    for tx, ty in targets:
        dx, dy = tx - origin[0], ty - origin[1]
        d = abs(dx) + abs(dy)
        if best is None or d < best:
            best, out = d, (float(dx), float(dy))
    return out


def _held_onehot(player) -> list[float]:
    obj = player.held_object
    return [float(obj is not None and obj.name == n) for n in _HELD]


def featurize(state, terrain: _Terrain, player: int) -> np.ndarray:
    """pbrl's egocentric features of ``state`` for ``player`` (0 or 1): ``[FEATURE_DIM]`` float32.

    Offsets are grid cells (dx, dy) to the Manhattan-closest target; pots are in layout order with
    (exists, dx, dy, onions/3, cooking, ready, cook time left/20, empty); "free_neighbours" marks the four
    neighbouring cells (north, south, east, west) that are walkable and not occupied by the partner.
    """
    me, other = state.players[player], state.players[1 - player]
    p = tuple(me.position)
    out: list[float] = [p[0] / terrain.width, p[1] / terrain.height]
    out += [float(me.orientation == o) for o in _ORIENT]
    out += _held_onehot(me)
    for targets in (terrain.onion, terrain.dish, terrain.serving):
        out += list(_closest(p, targets))
    loose = {n: [] for n in ("onion", "dish", "soup")}
    for pos, obj in state.objects.items():
        if obj.name in loose and pos not in terrain.pots:
            loose[obj.name].append(pos)
    for name in ("onion", "dish", "soup"):
        if loose[name]:
            out += [*_closest(p, loose[name]), 1.0]
        else:
            out += [0.0, 0.0, 0.0]
    for k in range(_MAX_POTS):
        if k >= len(terrain.pots):
            out += [0.0] * 8
            continue
        pot = terrain.pots[k]
        soup = state.objects.get(pot)
        n = len(soup.ingredients) if soup is not None else 0
        cooking = soup is not None and soup.is_cooking
        ready = soup is not None and soup.is_ready
        left = soup.cook_time_remaining / _COOK_TIME if cooking else 0.0
        out += [1.0, pot[0] - p[0], pot[1] - p[1], n / 3.0, float(cooking), float(ready), left, float(n == 0)]
    other_pos = tuple(other.position)
    for dx, dy in _ORIENT:
        x, y = p[0] + dx, p[1] + dy
        inside = 0 <= x < terrain.width and 0 <= y < terrain.height
        out.append(float(inside and terrain.walkable[y, x] and (x, y) != other_pos))
    out += [other_pos[0] - p[0], other_pos[1] - p[1]]
    out += [float(other.orientation == o) for o in _ORIENT]
    out += _held_onehot(other)
    return np.asarray(out, dtype=np.float32)


class OvercookedGame:
    """One two-player game on a layout: ``reset() -> obs [2, FEATURE_DIM]``, ``step(joint) -> obs, r, done, info``.

    ``info`` holds ``events`` ([2, len(EVENTS)] bool, which player did what this step), ``shaped`` ([2], the
    package's shaped reward per player: 3 per useful potting and dish pickup, 5 per soup pickup) and
    ``sparse`` ([2], 20 to the player who delivered). The reward returned is the team's sparse reward.
    """

    def __init__(self, layout: str, *, horizon: int = HORIZON, old_dynamics: bool = True) -> None:
        from overcooked.mdp import Action

        self.layout, self.horizon = layout, int(horizon)
        self.mdp = make_mdp(layout, old_dynamics=old_dynamics)
        self.terrain = _Terrain(self.mdp)
        self._actions = Action.INDEX_TO_ACTION
        self.state = None
        self.t = 0

    def reset(self, state=None) -> np.ndarray:
        """Start from the layout's standard start (or from ``state``, an ``OvercookedState``)."""
        self.state = self.mdp.get_standard_start_state() if state is None else state
        self.t = 0
        return self.observe()

    def observe(self) -> np.ndarray:
        """``[2, FEATURE_DIM]`` features, one row per player."""
        return np.stack([featurize(self.state, self.terrain, i) for i in range(2)])

    def lossless(self) -> np.ndarray:
        """The package's lossless encoding, ``[2, C, H, W]`` float32 (C = 26 masks)."""
        layers = self.mdp.lossless_state_encoding(self.state, horizon=self.horizon)
        return np.transpose(np.asarray(layers, dtype=np.float32), (0, 3, 2, 1))

    def step(self, joint_action: Sequence[int], *, observe: bool = True) -> tuple[np.ndarray | None, float, bool, dict[str, Any]]:
        """Apply ``joint_action`` (two indices into ``ACTION_NAMES``); ``observe=False`` skips the features."""
        if self.state is None:
            raise RuntimeError("OvercookedGame.step() before reset()")
        joint = [self._actions[int(a)] for a in joint_action]
        self.state, infos = self.mdp.get_state_transition(self.state, joint)
        self.t += 1
        ev = infos["event_infos"]
        events = np.array([[ev[e][i] for e in EVENTS] for i in range(2)], dtype=bool)
        sparse = np.asarray(infos["sparse_reward_by_agent"], dtype=np.float32)
        info = {"events": events, "shaped": np.asarray(infos["shaped_reward_by_agent"], dtype=np.float32),
                "sparse": sparse}
        return self.observe() if observe else None, float(sparse.sum()), self.t >= self.horizon, info


# ---------------------------------------------------------------------------------------------------------
# Rewards: sparse, shaping, and event-weighted utilities (the hidden-utility human proxies)
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Utility:
    """A reward for one seat: ``sparse_weight · team sparse + shaping · own shaped reward + Σ_e w_e · own event e
    + Σ_e v_e · partner's event e + x_weight · x`` (x: the seat's column, 0 at the left wall, 1 at the right).

    The default is Carroll et al.'s training reward (its shaping annealed by the trainer). A *style* (a
    hidden-utility human proxy) adds event weights: what this person likes to do, or likes to see done. The
    same names are the ``infos`` keys of pbrl's Overcooked trajectory datasets (``EVENTS``,
    ``partner_<event>``, ``x``), so a style is also a labelling utility (:meth:`label_weights`).
    """

    name: str = "task"
    sparse_weight: float = 1.0
    shaping: float = 1.0
    events: dict[str, float] = field(default_factory=dict)
    partner_events: dict[str, float] = field(default_factory=dict)
    x_weight: float = 0.0

    def __post_init__(self) -> None:
        for where, weights in (("events", self.events), ("partner_events", self.partner_events)):
            for e in weights:
                if e not in EVENT_INDEX:
                    raise ConfigError(describe(f"utility {self.name!r}", f"{where} key", repr(e), f"one of {list(EVENTS)}"))

    @cached_property
    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        """Event weights ``(own [E], partner [E])``."""
        own, partner = np.zeros(len(EVENTS)), np.zeros(len(EVENTS))
        for e, w in self.events.items():
            own[EVENT_INDEX[e]] = w
        for e, w in self.partner_events.items():
            partner[EVENT_INDEX[e]] = w
        return own, partner

    def reward(self, seat: int, team_sparse: float, info: dict[str, Any], x: float, shaping_scale: float = 1.0) -> float:
        own, partner = self.weights
        r = self.sparse_weight * team_sparse + shaping_scale * self.shaping * float(info["shaped"][seat])
        r += float(info["events"][seat] @ own) + float(info["events"][1 - seat] @ partner)
        return r + self.x_weight * x

    def label_weights(self, *, seat: str = "own") -> dict[str, float]:
        """The style as utility weights over a dataset's reward and ``infos`` terms (``pbrl data label --groups``).

        ``seat="own"``: the trajectories are this person's own; ``seat="partner"``: they are the other player's
        (e.g. an AI's trajectories labelled by the human who played with it), so this person's events are the
        ``partner_<event>`` terms and the player's are the person's partner events."""
        mine, theirs = ("", "partner_") if seat == "own" else ("partner_", "")
        out = {"reward": self.sparse_weight} if self.sparse_weight else {}
        out.update({f"{mine}{e}": w for e, w in self.events.items()})
        out.update({f"{theirs}{e}": w for e, w in self.partner_events.items()})
        if self.x_weight:
            out[f"{mine}x"] = self.x_weight
        return out

    def preference_score(self, own_counts: np.ndarray, partner_counts: np.ndarray) -> float:
        """How much of this style's favoured events the pair produced the way the style likes, in [0, 1]:
        ``(Σ w_e n_e^own + Σ v_e n_e^partner) / Σ max(w_e, v_e)(n_e^own + n_e^partner)`` over events with a
        positive weight; NaN when the pair produced none of them. ``own`` is the proxy's seat."""
        own, partner = (np.clip(w, 0, None) for w in self.weights)
        denominator = float(np.maximum(own, partner) @ (own_counts + partner_counts))
        if denominator == 0:
            return float("nan")
        return float(own @ own_counts + partner @ partner_counts) / denominator


def step_infos(events: np.ndarray, x: np.ndarray, seat: int) -> dict[str, np.ndarray]:
    """Per-step ``infos`` of one player's trajectory: its own events (``EVENTS``), its partner's
    (``partner_<event>``) and both columns (``x``, ``partner_x``). ``events`` [T, 2, len(EVENTS)], ``x`` [T, 2]."""
    infos = {e: events[:, seat, k].astype(np.float32) for k, e in enumerate(EVENTS)}
    infos.update({f"partner_{e}": events[:, 1 - seat, k].astype(np.float32) for k, e in enumerate(EVENTS)})
    infos["x"], infos["partner_x"] = x[:, seat].astype(np.float32), x[:, 1 - seat].astype(np.float32)
    return infos


def groups_toml(styles: Sequence[Utility], *, seat: str = "partner") -> str:
    """A ``pbrl data label --groups`` file with one group per style (equal shares), each labelling by the
    style's :meth:`Utility.label_weights` from ``seat``."""
    out = []
    for u in styles:
        weights = ", ".join(f"{k} = {v!r}" for k, v in u.label_weights(seat=seat).items())
        out.append(f'[[group]]\nname = "{u.name}"\nshare = 1.0\nutility = "return"\nweights = {{ {weights} }}\n')
    return "\n".join(out)


TASK = Utility()
#: the hidden-utility human proxies (styles): what each person likes to do in the kitchen
STYLES = {
    "cook": Utility("cook", events={"potting_onion": 3.0, "useful_onion_pickup": 1.0}),
    # no shaping: the package's shaping pays 3 per potting, which pulled a first deliverer proxy into cooking;
    # soup_drop -10: without it a coordination_ring proxy farmed 27 soup pickups per game by dropping and re-picking
    "deliverer": Utility("deliverer", shaping=0.0, events={"useful_dish_pickup": 5.0, "soup_pickup": 10.0,
                                                           "soup_delivery": 10.0, "soup_drop": -10.0}),
}

# ---------------------------------------------------------------------------------------------------------
# Policies and vectorised play
# ---------------------------------------------------------------------------------------------------------

#: a batched policy: observations [N, FEATURE_DIM] -> actions [N] (ints in [0, 6))
Policy = Callable[[np.ndarray], np.ndarray]


class RandomPolicy:
    """Uniform random actions from its own generator (``rng``, checkpointed by :class:`OvercookedVecEnv`)."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self.rng.integers(0, N_ACTIONS, size=len(obs))


random_policy = RandomPolicy


@dataclass
class PlayResult:
    """Per-episode outcomes of :func:`play`: ``returns`` [E] team sparse return, ``events`` [E, 2, len(EVENTS)]
    counts per seat (seat 0 = the first policy). With ``record``, ``steps`` holds per-step arrays by seat:
    ``obs`` [E, T, 2, F], ``actions`` [E, T, 2], ``events`` [E, T, 2, len(EVENTS)], ``x`` [E, T, 2] (column, 0 at
    the left wall), ``rewards`` [E, T], and ``final_obs`` [E, 2, F]."""

    returns: np.ndarray
    events: np.ndarray
    steps: dict[str, np.ndarray] | None = None

    @property
    def soups(self) -> np.ndarray:
        return self.returns / SOUP_REWARD


def play(layout: str, first: Policy, second: Policy, *, episodes: int, swap_sides: bool = True,
         horizon: int = HORIZON, old_dynamics: bool = True, record: bool = False) -> PlayResult:
    """Play ``episodes`` games of ``first`` with ``second``, all at once (one batched policy call per step).

    With ``swap_sides``, ``first`` sits at player index 1 in every other game (layouts are asymmetric); the
    result's seat 0 is always ``first``.
    """
    games = [OvercookedGame(layout, horizon=horizon, old_dynamics=old_dynamics) for _ in range(episodes)]
    seat = np.array([(k % 2 if swap_sides else 0) for k in range(episodes)])  # player index of `first`
    obs = np.stack([g.reset() for g in games])  # [E, 2, F] by player index
    ar = np.arange(episodes)
    order = np.stack([seat, 1 - seat], 1)  # [E, 2]: player index of seat 0 and seat 1
    returns = np.zeros(episodes)
    events = np.zeros((episodes, 2, len(EVENTS)))
    rec = None
    if record:
        rec = {"obs": np.zeros((episodes, horizon, 2, FEATURE_DIM), np.float32),
               "actions": np.zeros((episodes, horizon, 2), np.int64),
               "events": np.zeros((episodes, horizon, 2, len(EVENTS)), bool),
               "x": np.zeros((episodes, horizon, 2), np.float32), "rewards": np.zeros((episodes, horizon), np.float32)}
    span = max(1, games[0].terrain.width - 1)
    for t in range(horizon):
        by_seat = obs[ar[:, None], order]  # [E, 2, F]
        a_first = np.asarray(first(by_seat[:, 0]))
        a_second = np.asarray(second(by_seat[:, 1]))
        if rec is not None:
            rec["obs"][:, t] = by_seat
            rec["actions"][:, t] = np.stack([a_first, a_second], 1)
        for k, g in enumerate(games):
            if rec is not None:
                rec["x"][k, t] = [g.state.players[p].position[0] / span for p in order[k]]
            joint = (a_first[k], a_second[k]) if seat[k] == 0 else (a_second[k], a_first[k])
            o, r, _, info = g.step(joint)
            obs[k] = o
            returns[k] += r
            ev = info["events"][order[k]]
            events[k] += ev
            if rec is not None:
                rec["events"][k, t] = ev
                rec["rewards"][k, t] = r
    if rec is not None:
        rec["final_obs"] = obs[ar[:, None], order]
    return PlayResult(returns=returns, events=events, steps=rec)


# ---------------------------------------------------------------------------------------------------------
# The stable-baselines3 view: self-play, or one learner seat against a partner pool
# ---------------------------------------------------------------------------------------------------------

def _vec_env_base():
    from stable_baselines3.common.vec_env import VecEnv

    return VecEnv


class OvercookedVecEnv(_vec_env_base()):
    """An SB3 ``VecEnv`` over ``n_games`` games of one layout.

    - ``partners=None``: **self-play**. Every game gives two slots (players 0 and 1), both driven by the
      learner, ``num_envs = 2 · n_games``; each slot is rewarded by ``utility`` from its own seat.
    - ``partners=[policy, ...]``: **one learner seat per game** (``num_envs = n_games``); at each reset the
      learner's player index and the partner (from the pool) are drawn from a generator seeded by
      ``(seed, game, episode)``, so a run resumed from a checkpoint (:meth:`state_dict`) draws the same.

    ``shaping_scale`` multiplies the utility's shaping term (anneal it with :meth:`set_shaping_scale`).
    Episodes end at the horizon (truncation); ``info["episode"]`` carries ``r`` (team sparse return),
    ``l`` and ``events`` (the learner seat's event counts) as SB3's Monitor would.
    """

    render_mode = None

    def __init__(self, layout: str, n_games: int, *, partners: Sequence[Policy] | None = None,
                 utility: Utility = TASK, horizon: int = HORIZON, seed: int = 0, old_dynamics: bool = True) -> None:
        self.games = [OvercookedGame(layout, horizon=horizon, old_dynamics=old_dynamics) for _ in range(n_games)]
        self.partners = list(partners) if partners is not None else None
        self.self_play = self.partners is None
        self.utility, self.shaping_scale = utility, 1.0
        self.seed_value = int(seed)
        obs_space = gym.spaces.Box(-np.inf, np.inf, shape=(FEATURE_DIM,), dtype=np.float32)
        n = 2 * n_games if self.self_play else n_games
        super().__init__(n, obs_space, gym.spaces.Discrete(N_ACTIONS))
        self._actions = np.zeros(n, dtype=np.int64)
        self._seat = np.zeros(n_games, dtype=np.int64)
        self._partner = np.zeros(n_games, dtype=np.int64)
        self._obs = np.zeros((n_games, 2, FEATURE_DIM), dtype=np.float32)
        self._ret = np.zeros(n_games)
        self._len = np.zeros(n_games, dtype=np.int64)
        self._events = np.zeros((n_games, 2, len(EVENTS)))
        self._episode = np.zeros(n_games, dtype=np.int64)  # episodes started per game (the draws' key)

    def state_dict(self) -> dict[str, Any]:
        """The episode counters and the partners' sampling generators (those with an ``rng``)."""
        rngs = [p.rng.bit_generator.state if hasattr(p, "rng") else None for p in self.partners or ()]
        return {"episode": self._episode.tolist(), "seed": self.seed_value, "partner_rngs": rngs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._episode = np.asarray(state["episode"], dtype=np.int64)
        self.seed_value = int(state["seed"])
        for p, rng_state in zip(self.partners or (), state.get("partner_rngs", ())):
            if rng_state is not None:
                p.rng.bit_generator.state = rng_state

    def set_shaping_scale(self, scale: float) -> None:
        self.shaping_scale = float(scale)

    def _reset_game(self, k: int) -> None:
        self._obs[k] = self.games[k].reset()
        self._ret[k], self._len[k] = 0.0, 0
        self._events[k] = 0.0
        if not self.self_play:
            rng = np.random.default_rng([self.seed_value, k, int(self._episode[k])])
            self._seat[k] = rng.integers(2)
            self._partner[k] = rng.integers(len(self.partners))

    def _learner_obs(self) -> np.ndarray:
        if self.self_play:
            return self._obs.reshape(-1, FEATURE_DIM).copy()
        return self._obs[np.arange(len(self.games)), self._seat].copy()

    def reset(self) -> np.ndarray:
        for k in range(len(self.games)):
            self._reset_game(k)
        return self._learner_obs()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions).reshape(-1)

    def _partner_actions(self) -> np.ndarray:
        out = np.zeros(len(self.games), dtype=np.int64)
        for j, policy in enumerate(self.partners):
            ks = np.flatnonzero(self._partner == j)
            if len(ks):
                out[ks] = policy(self._obs[ks, 1 - self._seat[ks]])
        return out

    def step_wait(self):
        n_games = len(self.games)
        if self.self_play:
            joint = self._actions.reshape(n_games, 2)
        else:
            partner = self._partner_actions()
            joint = np.where(self._seat[:, None] == 0, np.stack([self._actions, partner], 1),
                             np.stack([partner, self._actions], 1))
        rewards = np.zeros(self.num_envs, dtype=np.float32)
        dones = np.zeros(self.num_envs, dtype=bool)
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for k, g in enumerate(self.games):
            if self.utility.x_weight:
                span = max(1, g.terrain.width - 1)
                xs = [p.position[0] / span for p in g.state.players]
            else:
                xs = (0.0, 0.0)
            obs, r, done, info = g.step(joint[k])
            self._obs[k] = obs
            self._ret[k] += r
            self._len[k] += 1
            self._events[k] += info["events"]
            seats = (0, 1) if self.self_play else (int(self._seat[k]),)
            slots = (2 * k, 2 * k + 1) if self.self_play else (k,)
            for seat, slot in zip(seats, slots):
                rewards[slot] = self.utility.reward(seat, r, info, xs[seat], self.shaping_scale)
            if done:
                for seat, slot in zip(seats, slots):
                    dones[slot] = True
                    infos[slot]["terminal_observation"] = obs[seat].copy()
                    infos[slot]["TimeLimit.truncated"] = True
                    infos[slot]["episode"] = {"r": float(self._ret[k]), "l": int(self._len[k]),
                                              "events": self._events[k, seat].copy()}
                self._episode[k] += 1
                self._reset_game(k)
        return self._learner_obs(), rewards, dones, infos

    def close(self) -> None:
        pass

    def get_attr(self, attr_name, indices=None):
        return [getattr(self, attr_name) for _ in self._indices(indices)]

    def set_attr(self, attr_name, value, indices=None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name, *args, indices=None, **kwargs):
        return [getattr(self, method_name)(*args, **kwargs) for _ in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class, indices=None):
        return [False for _ in self._indices(indices)]

    def _indices(self, indices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        return [indices] if isinstance(indices, int) else list(indices)

    def seed(self, seed: int | None = None):
        self.seed_value = int(seed or 0)
        return [seed] * self.num_envs
