"""Overcooked frames rebuilt from pbrl's per-player features (:func:`pbrl.envs.overcooked.featurize`).

A trajectory row is one player's egocentric view, ``[FEATURE_DIM]``: own position (normalised by the layout's
width and height), orientation and held item, offsets to the closest loose onion, dish and soup, each pot's
onions and cooking state, and the partner's offset, orientation and held item. :func:`rebuild_state` turns a
row into the package's ``OvercookedState`` and :func:`frames` draws it with the package's own
``StateVisualizer`` (pygame, headless through ``SDL_VIDEODRIVER=dummy``), padded to a square and resized.

What a row cannot say is filled in plainly: only the *closest* loose onion, dish and soup are known, so each
kind shows at most one loose object (the others that were on the counters are not drawn); a held or loose soup
is drawn as a finished three-onion soup; the row's own player is always player 0 (blue hat) and the partner
player 1 (green hat), whichever seat the row came from.
"""

from __future__ import annotations

import math
import os

import numpy as np

from pbrl.envs.overcooked import _COOK_TIME, _HELD, _MAX_POTS, _ORIENT, FEATURE_DIM, FEATURES, _Terrain, make_mdp
from pbrl.errors import DatasetError, describe

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

_STARTS = np.cumsum([0] + [width for _, width in FEATURES])
#: column of each feature block in a row: name -> slice
COLUMNS = {name: slice(int(at), int(at) + width) for (name, width), at in zip(FEATURES, _STARTS)}

_UNSCALED_TILE = 15  # the package's sprites are 15 px tiles
#: the margin around a layout that is not square (the package's background is the counters' brown)
PAD_COLOUR = (32, 32, 32)


def _cell(origin: tuple[int, int], offset: np.ndarray) -> tuple[int, int]:
    return origin[0] + int(round(float(offset[0]))), origin[1] + int(round(float(offset[1])))


def _orientation(onehot: np.ndarray) -> tuple[int, int]:
    return _ORIENT[int(np.argmax(onehot))] if np.any(onehot > 0.5) else _ORIENT[1]  # none marked: face south


def _finished_soup(position: tuple[int, int]):
    """A soup of three onions whose cooking is over (how a carried or counter soup is drawn)."""
    return _soup(position, 3, "ready", 0.0)


def _soup(position: tuple[int, int], onions: int, status: str, left: float):
    """``SoupState`` at ``position`` with ``onions`` onions; ``status`` idle, cooking (``left``: the remaining
    fraction of :data:`_COOK_TIME`) or ready."""
    from overcooked.mdp.overcooked_mdp import ObjectState, SoupState

    ingredients = [ObjectState("onion", position) for _ in range(onions)]
    if status == "idle":
        return SoupState(position, ingredients, cooking_tick=-1)
    cook_time = SoupState(position, list(ingredients), cooking_tick=0).cook_time  # the layout's recipe time
    tick = cook_time if status == "ready" else min(cook_time - 1, cook_time - int(round(left * _COOK_TIME)))
    return SoupState(position, ingredients, cooking_tick=max(tick, 0))


def _held(onehot: np.ndarray, position: tuple[int, int]):
    from overcooked.mdp.overcooked_mdp import ObjectState

    if not np.any(onehot > 0.5):
        return None
    name = _HELD[int(np.argmax(onehot))]
    return _finished_soup(position) if name == "soup" else ObjectState(name, position)


def rebuild_state(row: np.ndarray, terrain: _Terrain):
    """The ``OvercookedState`` of one feature row ``[FEATURE_DIM]``: both players with their held items, the pots'
    soups and the closest loose onion, dish and soup; ``featurize(state, terrain, 0)`` gives the row back."""
    from overcooked.mdp.overcooked_mdp import ObjectState, OvercookedState, PlayerState

    row = np.asarray(row, dtype=np.float64)
    pos = row[COLUMNS["position"]]
    me = (int(round(pos[0] * terrain.width)), int(round(pos[1] * terrain.height)))
    partner = _cell(me, row[COLUMNS["partner_offset"]])
    players = [PlayerState(me, _orientation(row[COLUMNS["orientation"]]), _held(row[COLUMNS["held"]], me)),
               PlayerState(partner, _orientation(row[COLUMNS["partner_orientation"]]),
                           _held(row[COLUMNS["partner_held"]], partner))]
    objects = {}
    for k in range(min(_MAX_POTS, len(terrain.pots))):
        exists, _, _, onions, cooking, ready, left, _ = row[COLUMNS[f"pot{k}"]]
        n = int(round(onions * 3))
        if exists < 0.5 or n == 0:
            continue
        where = terrain.pots[k]
        status = "ready" if ready > 0.5 else "cooking" if cooking > 0.5 else "idle"
        objects[where] = _soup(where, n, status, float(left))
    for name in ("onion", "dish", "soup"):
        dx, dy, seen = row[COLUMNS[f"loose_{name}"]]
        where = _cell(me, (dx, dy))
        if seen < 0.5 or where in objects or where in terrain.pots:
            continue
        objects[where] = _finished_soup(where) if name == "soup" else ObjectState(name, where)
    return OvercookedState(players, objects)


def _to_square(surface, size: int, background: tuple[int, int, int]) -> np.ndarray:
    """``[size, size, 3]`` uint8: ``surface`` centred on a square of ``background``, resized smoothly."""
    import pygame

    w, h = surface.get_size()
    side = max(w, h)
    square = pygame.Surface((side, side))
    square.fill(background)
    square.blit(surface, ((side - w) // 2, (side - h) // 2))
    scaled = pygame.transform.smoothscale(square, (size, size))
    return np.ascontiguousarray(pygame.surfarray.array3d(scaled).transpose(1, 0, 2), dtype=np.uint8)


def frames(layout: str, observations: np.ndarray, size: int) -> np.ndarray:
    """``[T, size, size, 3]`` uint8 frames of ``layout`` drawn from feature rows ``observations`` [T, FEATURE_DIM]
    (the row's player is the blue hat)."""
    observations = np.asarray(observations, dtype=np.float64)
    if observations.ndim != 2 or observations.shape[1] != FEATURE_DIM or len(observations) == 0:
        raise DatasetError(describe(layout, "observations", observations.shape,
                                    f"[T, {FEATURE_DIM}] rows of pbrl's Overcooked features"))
    from overcooked.visualization.state_visualizer import StateVisualizer

    mdp = make_mdp(layout)
    terrain = _Terrain(mdp)
    grid = mdp.terrain_mtx
    # whole multiples of the sprites' 15 px keep them crisp before the one smooth resize
    tile = _UNSCALED_TILE * max(1, math.ceil(size / (_UNSCALED_TILE * max(terrain.width, terrain.height))))
    painter = StateVisualizer(tile_size=tile, is_rendering_hud=False, cooking_timer_font_size=max(8, tile * 4 // 15))
    out = np.empty((len(observations), size, size, 3), dtype=np.uint8)
    for t, row in enumerate(observations):
        surface = painter.render_state(rebuild_state(row, terrain), grid)
        out[t] = _to_square(surface, size, PAD_COLOUR)
    return out
