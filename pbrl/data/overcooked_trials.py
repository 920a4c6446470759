"""The Overcooked-AI human-human trials (Carroll et al. 2019) of one layout and split as trajectory episodes:
one per game and player, the worker and round kept (``pbrl data import-overcooked``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pbrl.errors import ConfigError, describe

if TYPE_CHECKING:
    from pbrl.data.store import Episode

SOUP_REWARD = 20  # the package's sparse reward per soup (the trials paid 5 points per soup)


@dataclass
class HumanTrials:
    """The converted trials: what :func:`pbrl.data.store.write_trajectories` needs, and a summary."""

    env_id: str
    episodes: list[Episode]
    metadata: dict[str, Any]
    games: int
    steps: int
    soups: float
    dynamics_agreement: float  # share of the logged steps the package's dynamics reproduce

    def summary(self) -> str:
        """One line: games, steps, soups and how faithfully the package's dynamics replay them."""
        layout, split = self.metadata["layout"], self.metadata["split"]
        return (f"{layout} ({split}): {self.games} games, {self.steps} steps, {self.soups:.0f} soups; the package's "
                f"dynamics reproduce {self.dynamics_agreement:.1%} of the logged steps")


def human_trials(layout: str, split: str = "train", pickle: str | Path | None = None) -> HumanTrials:
    """Convert the trials of ``layout`` (the package's layout name) from ``pickle`` (default: the file overcooked-ai
    1.1.0 installed for ``split``); every step's action is one-hot, observations are the package's features."""
    import numpy as np

    from pbrl.data.store import Episode
    from pbrl.envs.overcooked import ACTION_NAMES, FEATURES, N_ACTIONS, step_infos
    from pbrl.envs.overcooked_human import convert_games, read_trials, trials_path
    from pbrl.envs.registry import all_env_specs

    spec = next((s for s in all_env_specs().values() if s.family == "overcooked" and s.layout == layout), None)
    if spec is None:
        known = sorted(s.layout for s in all_env_specs().values() if s.family == "overcooked")
        raise ConfigError(describe("--layout", "layout", repr(layout), f"one of the trials' layouts {known}"))
    source = Path(pickle) if pickle else trials_path(split)
    games = convert_games(read_trials(source), layout, where=str(source))
    one_hot = np.eye(N_ACTIONS, dtype=np.float32)
    episodes = []
    for g in games:
        for player in (0, 1):
            infos = step_infos(g.events, g.x, player)
            episodes.append(Episode(g.observations[player], one_hot[g.actions[:, player]], g.rewards, False,
                                    g.final_observations[player], f"{g.source}:player{player}", infos))
    games_meta = [{"worker": g.worker, "round": g.round, "steps": len(g.rewards),
                   "soups": float(g.rewards.sum() / SOUP_REWARD)} for g in games]
    consistent = float(np.mean(np.concatenate([g.consistent for g in games])))
    metadata = {"layout": layout, "split": split, "source": str(source), "games": games_meta,
                "action_space": {"type": "discrete", "n": N_ACTIONS, "names": list(ACTION_NAMES), "encoding": "one-hot"},
                "observation_features": [list(f) for f in FEATURES], "dynamics_agreement": consistent,
                "reward": "the package's sparse reward, 20 per soup (the trials paid 5 points per soup)"}
    return HumanTrials(spec.id, episodes, metadata, games=len(games), steps=sum(m["steps"] for m in games_meta),
                       soups=sum(m["soups"] for m in games_meta), dynamics_agreement=consistent)
