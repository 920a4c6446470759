"""Environment presets (``envs/*.toml``), construction of real simulators, and normalized scores."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import tomllib

from pbrl.errors import ConfigError, describe
from pbrl.paths import list_resources, search_roots


@dataclass(frozen=True)
class EnvSpec:
    """One environment preset: id, family (``mujoco``, ``metaworld`` or ``overcooked``), score references, and
    for Overcooked the package's layout name."""

    name: str
    id: str
    family: str
    max_episode_steps: int
    score_random: float
    score_expert: float
    score_source: str = ""
    layout: str = ""

    def normalized_score(self, ret: float) -> float:
        """D4RL-style normalized score: ``100 * (R - R_random) / (R_expert - R_random)``."""
        return 100.0 * (ret - self.score_random) / (self.score_expert - self.score_random)


def _load(path: Path) -> EnvSpec:
    with open(path, "rb") as f:
        d = tomllib.load(f)
    score = d.get("score", {})
    return EnvSpec(name=path.stem, id=d["id"], family=d.get("family", "mujoco"),
                   max_episode_steps=int(d.get("max_episode_steps", 1000)),
                   score_random=float(score.get("random", 0.0)), score_expert=float(score.get("expert", 1.0)),
                   score_source=str(score.get("source", "")), layout=str(d.get("layout", "")))


def all_env_specs() -> dict[str, EnvSpec]:
    specs = {}
    for root in reversed(search_roots()):
        d = root / "envs"
        if d.is_dir():
            for p in d.glob("*.toml"):
                specs[p.stem] = _load(p)
    return specs


def find_env_spec(name_or_id: str) -> EnvSpec | None:
    """The preset of a file name (``hopper``) or gymnasium id (``Hopper-v5``), or None."""
    specs = all_env_specs()
    if name_or_id in specs:
        return specs[name_or_id]
    return next((spec for spec in specs.values() if spec.id == name_or_id), None)


def dataset_env(env_id: str) -> str:
    """What a dataset's card calls its environment: the preset's name, or for data no simulator in pbrl replays
    (robot logs: ``robomimic/Lift``, ``rosbag/<name>``, ``lerobot/<robot>``) the recorded id itself."""
    spec = find_env_spec(env_id)
    return spec.name if spec is not None else env_id


def has_simulator(env: str) -> bool:
    return find_env_spec(env) is not None


def get_env_spec(name_or_id: str) -> EnvSpec:
    """Find a preset by file name (``hopper``) or gymnasium id (``Hopper-v5``)."""
    spec = find_env_spec(name_or_id)
    if spec is not None:
        return spec
    specs = all_env_specs()
    known = sorted({s.id for s in specs.values()})
    raise ConfigError(describe("--env", "environment", repr(name_or_id),
                               f"one of {known} or a preset name in envs/ ({', '.join(list_resources('envs'))})"))


def make_env(name_or_id: str, *, seed: int | None = None, render_mode: str | None = None,
             render_size: int | None = None) -> gym.Env:
    """Create the real simulator for a preset. Meta-World tasks use MT1 (goal re-drawn at each reset).
    ``render_size`` sets the width and height of ``rgb_array`` frames (default: the env's own)."""
    spec = get_env_spec(name_or_id)
    size = {"width": int(render_size), "height": int(render_size)} if render_size else {}
    if spec.family == "metaworld":
        import metaworld  # noqa: F401  (registers the Meta-World/* ids)

        # the passive checker warns on every step that Meta-World observations leave their declared box
        env = gym.make("Meta-World/MT1", env_name=spec.id, seed=seed, render_mode=render_mode, disable_env_checker=True,
                       **size)
    elif spec.family == "mujoco":
        env = gym.make(spec.id, render_mode=render_mode, **size)
    elif spec.family == "overcooked":
        raise ConfigError(describe(f"envs/{spec.name}.toml", "family", "'overcooked' (a two-player game)",
                                   "a single-agent env: play Overcooked with pbrl.envs.overcooked (play, OvercookedVecEnv)"))
    else:
        raise ConfigError(describe(f"envs/{spec.name}.toml", "family", repr(spec.family), "'mujoco', 'metaworld' or 'overcooked'"))
    return env
