"""The human-human Overcooked trials of Carroll et al. (2019), read from the ``overcooked-ai`` 1.1.0 package files.

``overcooked-ai`` 1.1.0 ships ``overcooked_ai_py/data/human_data/clean_{train,test}_trials.pickle``: one pandas
DataFrame per split, one row per time step of a two-player game (``layout_name``, ``workerid_num``,
``round_num``, ``state``, ``joint_action``, ``reward``, ``score``, ...). That package does not import under
NumPy 2, so pbrl never imports it: it only locates the files (``importlib.util.find_spec`` does not run the
package) and unpickles them itself, mapping the pandas 1.x index classes the pickles name to today's.

Each game (a worker's round on a layout) becomes two trajectories, one per player. Its states (the 2019
format: ``objects`` keyed by position, soups as ``[ingredient, count, ticks]``) are converted to the
``overcooked`` package's ``OvercookedState`` and featurised by :func:`pbrl.envs.overcooked.featurize`; each
step is also replayed through the package's dynamics (old dynamics, as the trials were played) to read the
events (who potted, picked up a dish, delivered, ...) and to check that the log and the dynamics agree.
The trials paid 5 points per soup; pbrl stores the package's sparse reward, 20 per soup.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pbrl.envs.overcooked import N_ACTIONS, SOUP_REWARD, OvercookedGame
from pbrl.errors import ConfigError, DatasetError, describe

SPLITS = ("train", "test")
#: the trials' layouts (``random0`` is forced coordination, ``random3`` counter circuit)
HUMAN_LAYOUTS = ("cramped_room", "asymmetric_advantages", "coordination_ring", "random0", "random3")
TRIAL_POINTS_PER_SOUP = 5.0
_COLUMNS = ("layout_name", "workerid_num", "round_num", "state", "next_state", "joint_action", "reward", "score")
_DIRECTIONS = {(0, -1): 0, (0, 1): 1, (1, 0): 2, (-1, 0): 3, (0, 0): 4}


def trials_path(split: str) -> Path:
    """Where ``overcooked-ai`` 1.1.0 installed the ``split`` pickle; ConfigError if it is not installed."""
    if split not in SPLITS:
        raise ConfigError(describe("--split", "split", repr(split), f"one of {list(SPLITS)}"))
    spec = importlib.util.find_spec("overcooked_ai_py")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(describe("overcooked_ai_py", "package", "not installed",
                                   "overcooked-ai==1.1.0 installed with --no-deps (`make install` does it), or --pickle PATH"))
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "human_data" / f"clean_{split}_trials.pickle"


#: Every global (module, name) the trials pickles of overcooked-ai 1.1.0 name, and nothing else: unpickling calls
#: what a pickle names, so any other global (``os.system``, ``builtins.eval``, ``numpy.load``, ``pandas.read_pickle``,
#: ...) would let a ``--pickle`` file run code. Obtained by walking both files' opcodes with ``pickletools.genops``
#: (GLOBAL, and STACK_GLOBAL with its two strings followed through MEMOIZE / BINGET); ``clean_train_trials.pickle``
#: and ``clean_test_trials.pickle`` name the same eight.
TRIALS_GLOBALS = frozenset({
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("pandas.core.frame", "DataFrame"),
    ("pandas.core.indexes.base", "Index"),
    ("pandas.core.indexes.base", "_new_Index"),
    ("pandas.core.indexes.numeric", "Int64Index"),
    ("pandas.core.internals.managers", "BlockManager"),
})


class UnsafePickle(Exception):
    """A pickle names a global outside :data:`TRIALS_GLOBALS` (refused before it is looked up, so never called)."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.module, self.name = module, name


class _TrialsUnpickler(pickle.Unpickler):
    """Unpickles the trials DataFrames and nothing else: a global outside :data:`TRIALS_GLOBALS` raises
    :class:`UnsafePickle`. DataFrames written by pandas 1.x name ``pandas.core.indexes.numeric`` (Int64Index), which
    pandas 2 removed: it becomes today's ``Index``."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in TRIALS_GLOBALS:
            raise UnsafePickle(module, name)
        if module == "pandas.core.indexes.numeric":
            module, name = "pandas.core.indexes.base", "Index"
        return super().find_class(module, name)


def read_trials(path: str | Path):
    """The trials DataFrame in ``path``, or DatasetError naming the file and what is wrong with it (a pickle that
    names anything but the trials' own classes is refused unrun)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(describe(str(path), "file", "missing", "a human trials pickle (clean_train_trials.pickle)"))
    try:
        with open(path, "rb") as f:
            df = _TrialsUnpickler(f).load()
    except UnsafePickle as unsafe:
        allowed = ", ".join(f"{m}.{n}" for m, n in sorted(TRIALS_GLOBALS))
        raise DatasetError(describe(str(path), "pickle global", f"{unsafe} (module {unsafe.module!r}, name "
                                    f"{unsafe.name!r}; not loaded, since unpickling it could run code)",
                                    f"only the trials pickle's own: {allowed}")) from None
    except Exception as exc:  # a pickle of anything else fails in many ways
        raise DatasetError(describe(str(path), "file", f"unreadable as a pickle ({exc.__class__.__name__})",
                                    "a pandas DataFrame of human trials")) from None
    columns = getattr(df, "columns", None)
    if columns is None:
        raise DatasetError(describe(str(path), "contents", type(df).__name__, "a pandas DataFrame of human trials"))
    missing = [c for c in _COLUMNS if c not in columns]
    if missing:
        raise DatasetError(describe(str(path), "columns", f"missing {missing}", f"a DataFrame with {list(_COLUMNS)}"))
    return df


def parse_joint_action(text: str) -> tuple[int, int]:
    """``"[[0, -1], 'INTERACT']"`` -> action indices ``(0, 5)`` (north, interact)."""
    out = []
    for a in _parse(text):
        out.append(N_ACTIONS - 1 if isinstance(a, str) and a.upper() == "INTERACT" else _DIRECTIONS[tuple(a)])
    return out[0], out[1]


def _object(d: dict[str, Any]):
    from overcooked.mdp.overcooked_mdp import ObjectState, SoupState

    d = {**d, "position": tuple(d["position"])}
    if d["name"] == "soup":
        return SoupState.from_dict(d)  # the package reads the 2019 [ingredient, count, ticks] form itself
    return ObjectState(d["name"], d["position"])


def _parse(text: str) -> Any:
    """A Python-literal string of the trials; JSON after quote fixes is 10x faster than ``ast`` and gives the same."""
    try:
        return json.loads(text.replace("'", '"').replace("True", "true").replace("False", "false"))
    except ValueError:
        return ast.literal_eval(text)


def convert_state(text: str, timestep: int = 0):
    """A 2019-format state string of the trials -> the ``overcooked`` package's ``OvercookedState``."""
    from overcooked.mdp.overcooked_mdp import OvercookedState, PlayerState

    d = _parse(text)
    players = [PlayerState(tuple(p["position"]), tuple(p["orientation"]),
                           _object(p["held_object"]) if p.get("held_object") else None) for p in d["players"]]
    objects = {}
    for o in d["objects"].values():
        obj = _object(o)
        objects[obj.position] = obj
    return OvercookedState(players, objects, all_orders=[{"ingredients": ["onion"] * 3}], timestep=timestep)


def _same(a, b) -> bool:
    """States agree on players (position, orientation, held object) and objects; soups up to cooking ticks."""
    def key(s):
        def obj(o):
            return None if o is None else (o.name, o.position, tuple(sorted(o.ingredients)) if o.name == "soup" else ())
        return (tuple((p.position, p.orientation, obj(p.held_object)) for p in s.players),
                tuple(sorted((pos, obj(o)) for pos, o in s.objects.items())))
    return key(a) == key(b)


@dataclass
class HumanGame:
    """One game, converted. ``observations`` [2, T, F] (one row per player), ``actions`` [T, 2] indices,
    ``rewards`` [T] (20 per soup), ``events`` [T, 2, len(EVENTS)], ``x`` [T, 2] (each player's column, 0 at the
    left wall to 1 at the right), ``consistent`` [T] (the package's dynamics reproduce the logged next state),
    ``final_observations`` [2, F]."""

    layout: str
    worker: int
    round: int
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    events: np.ndarray
    x: np.ndarray
    consistent: np.ndarray
    final_observations: np.ndarray
    trial_points: float

    @property
    def source(self) -> str:
        return f"human:worker{self.worker}:round{self.round}"


def convert_games(df, layout: str, *, where: str = "trials") -> list[HumanGame]:
    """All games of ``layout`` in the trials DataFrame, in (worker, round) order."""
    layouts = sorted(set(df["layout_name"]))
    if layout not in layouts:
        raise ConfigError(describe("--layout", f"layout in {where}", repr(layout), f"one of {layouts}"))
    game = OvercookedGame(layout, horizon=10**9)
    out = []
    rows = df[df["layout_name"] == layout]
    for (worker, rnd), g in rows.groupby(["workerid_num", "round_num"], sort=True):
        g = g.sort_values("cur_gameloop") if "cur_gameloop" in g.columns else g
        n = len(g)
        feats, acts, rews, evs, xs, ok = [], [], [], [], [], []
        span = max(1, game.terrain.width - 1)
        cached, cached_text = None, None
        for t, (s, s_next, ja) in enumerate(zip(g["state"].values, g["next_state"].values, g["joint_action"].values)):
            state = cached if cached is not None and cached_text == s else convert_state(s, t)
            state.timestep = t
            feats.append(game.reset(state))
            xs.append([p.position[0] / span for p in state.players])
            joint = parse_joint_action(ja)
            _, r, _, info = game.step(joint, observe=False)
            logged_next = convert_state(s_next, t + 1)
            cached, cached_text = logged_next, s_next
            acts.append(joint)
            rews.append(r)
            evs.append(info["events"])
            ok.append(_same(game.state, logged_next))
        game.reset(convert_state(g["next_state"].values[-1], n))
        obs = np.stack(feats, 1)  # [2, T, F]
        trial_points = float(g["reward"].sum())
        out.append(HumanGame(layout, int(worker), int(rnd), obs, np.asarray(acts, np.int64),
                             np.asarray(rews, np.float32), np.asarray(evs, bool), np.asarray(xs, np.float32),
                             np.asarray(ok, bool),
                             game.observe(), trial_points))
    return out


def logged_soups(game: HumanGame) -> float:
    """Soups the trial's own reward column counts (5 points each)."""
    return game.trial_points / TRIAL_POINTS_PER_SOUP


def replayed_soups(game: HumanGame) -> float:
    return float(game.rewards.sum()) / SOUP_REWARD
