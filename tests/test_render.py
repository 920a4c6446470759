"""Frames of stored segments rebuilt from their observations: MuJoCo, Meta-World and Overcooked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pbrl.data.store import Episode, TrajectoryDataset, write_trajectories
from pbrl.envs.overcooked import FEATURE_DIM, N_ACTIONS, RandomPolicy, _Terrain, featurize, make_mdp, play
from pbrl.errors import ConfigError, DatasetError

DATASETS = Path(__file__).resolve().parents[1] / "datasets"


@pytest.fixture(scope="module")
def gl():
    """The headless GL backend; the rendering envs kept by ``segment_frames`` are closed after this module's
    tests, while the GL library is still set up."""
    from pbrl.envs.gl import choose_gl, close_rendering_envs

    try:
        backend = choose_gl()
    except ConfigError as err:
        pytest.skip(f"no headless GL backend for MuJoCo / Meta-World frames here: {err}")
    yield backend
    close_rendering_envs()


def _changed(frames: np.ndarray) -> np.ndarray:
    """[T-1] bool: frame t+1 differs from frame t."""
    return np.any(frames[1:] != frames[:-1], axis=(1, 2, 3))


# ---------------------------------------------------------------------------------------------------------
# MuJoCo
# ---------------------------------------------------------------------------------------------------------

def test_mujoco_segment_frames_move_and_a_bad_segment_raises(gl):
    from pbrl.annotate.queries import segment_frames

    ds = TrajectoryDataset(DATASETS / "hopper-medium-replay-small.h5")
    frames = segment_frames(ds, (0, 10, 5), size=48)
    assert frames.shape == (5, 48, 48, 3) and frames.dtype == np.uint8
    assert _changed(frames).all()
    n_episodes = len(ds.episode_offsets) - 1
    first_len = int(ds.episode_offsets[1] - ds.episode_offsets[0])
    for bad in [(0, first_len - 2, 5), (n_episodes, 0, 5), (-1, 0, 5), (0, -1, 5), (0, 0, 0)]:
        with pytest.raises(DatasetError):
            segment_frames(ds, bad, size=48)


# ---------------------------------------------------------------------------------------------------------
# Meta-World
# ---------------------------------------------------------------------------------------------------------

def test_metaworld_frames_follow_the_stored_hand_and_button(gl):
    """The shipped button-press set: frames change as the hand moves, and the rebuilt state gives back the
    observation (hand within 1 cm, gripper opening, button position and quaternion)."""
    from pbrl.annotate.queries import segment_frames
    from pbrl.envs.metaworld_render import Reconstruction

    ds = TrajectoryDataset(DATASETS / "button-press-noisy.h5")
    episode, start, length = 0, 60, 6
    frames = segment_frames(ds, (episode, start, length), size=64)
    assert frames.shape == (length, 64, 64, 3) and frames.dtype == np.uint8
    lo = int(ds.episode_offsets[episode]) + start
    obs = np.asarray(ds.observations[lo: lo + length], dtype=np.float64)
    moved = np.linalg.norm(np.diff(obs[:, :3], axis=0), axis=1) > 3e-3
    assert moved.sum() >= 3 and _changed(frames)[moved].all()

    scene = Reconstruction(ds.env_id, 32)
    try:
        assert scene.fit_task(obs) < 1e-3
        for o in obs:
            scene.place(o)
            assert np.linalg.norm(scene.sim.get_endeff_pos() - o[:3]) < 0.01
            rebuilt = scene.sim._get_curr_obs_combined_no_goal()
            assert np.abs(rebuilt - o[:18]).max() < 0.01
    finally:
        scene.close()


def test_metaworld_placement_is_found_from_the_goal(gl):
    """A live episode of an MT1 env with other tasks: the button's box is put where that episode had it (from
    the observed goal), though no task of the rendering env has it there."""
    from pbrl.envs.metaworld_render import Reconstruction
    from pbrl.envs.registry import make_env

    env = make_env("button-press", seed=123)
    obs, _ = env.reset(seed=123)
    rng = np.random.default_rng(0)
    seen = [obs.copy()]
    for _ in range(5):
        obs, *_ = env.step(np.r_[0.0, 1.0, -0.3, rng.uniform(-1, 1)])
        seen.append(obs.copy())
    truth = np.array(env.unwrapped._last_rand_vec)
    env.close()
    scene = Reconstruction("button-press-v3", 32)
    try:
        scene.fit_task(np.array(seen))
        assert np.abs(np.asarray(scene.sim._last_rand_vec) - truth).max() < 1e-3
        for o in seen:
            errors = scene.place(o)
            assert errors["hand"] < 0.01 and errors["objects"] < 1e-3
    finally:
        scene.close()


# ---------------------------------------------------------------------------------------------------------
# Overcooked
# ---------------------------------------------------------------------------------------------------------

def _kitchen_state():
    """Asymmetric advantages with everything the features describe: a cooking pot and a pot of two onions, a
    loose onion, dish and soup on counters, a player with a dish and one with a soup."""
    from overcooked.mdp.overcooked_mdp import ObjectState, OvercookedState, PlayerState, SoupState

    def onions(pos, n):
        return [ObjectState("onion", pos) for _ in range(n)]

    cooking = SoupState((4, 2), onions((4, 2), 3), cooking_tick=7)
    waiting = SoupState((4, 3), onions((4, 3), 2), cooking_tick=-1)
    carried = SoupState((6, 2), onions((6, 2), 3), cooking_tick=20)
    loose = SoupState((2, 1), onions((2, 1), 3), cooking_tick=20)
    players = [PlayerState((1, 3), (0, -1), ObjectState("dish", (1, 3))), PlayerState((6, 2), (1, 0), carried)]
    objects = {(4, 2): cooking, (4, 3): waiting, (2, 1): loose,
               (0, 2): ObjectState("onion", (0, 2)), (3, 4): ObjectState("dish", (3, 4))}
    return OvercookedState(players, objects)


def test_overcooked_features_round_trip():
    """featurize(rebuild_state(row)) gives the row back: both seats of a hand-made kitchen with soups, and every
    row of a random game."""
    from pbrl.envs.overcooked_render import COLUMNS, rebuild_state

    terrain = _Terrain(make_mdp("asymmetric_advantages"))
    state = _kitchen_state()
    for seat in (0, 1):
        row = featurize(state, terrain, seat)
        rebuilt = rebuild_state(row, terrain)
        np.testing.assert_array_equal(featurize(rebuilt, terrain, 0), row)
        assert rebuilt.players[1].position == state.players[1 - seat].position
    pots = rebuild_state(featurize(state, terrain, 0), terrain).objects
    assert pots[(4, 2)].is_cooking and pots[(4, 2)]._cooking_tick == 7 and len(pots[(4, 3)].ingredients) == 2
    assert featurize(state, terrain, 1)[COLUMNS["held"]][2] == 1  # seat 1 holds the soup

    game = play("cramped_room", RandomPolicy(0), RandomPolicy(1), episodes=1, horizon=150, record=True)
    rows = game.steps["obs"].reshape(-1, FEATURE_DIM)
    terrain = _Terrain(make_mdp("cramped_room"))
    for row in rows:
        np.testing.assert_array_equal(featurize(rebuild_state(row, terrain), terrain, 0), row)


def test_overcooked_frames_change_exactly_when_the_rows_do(tmp_path):
    from pbrl.annotate.queries import segment_frames
    from pbrl.envs.overcooked_render import frames

    game = play("coordination_ring", RandomPolicy(2), RandomPolicy(3), episodes=1, horizon=40, record=True)
    rows = game.steps["obs"][0, :, 0]  # [T, FEATURE_DIM], seat 0
    out = frames("coordination_ring", rows, 40)
    assert out.shape == (40, 40, 40, 3) and out.dtype == np.uint8
    rows_changed = np.any(rows[1:] != rows[:-1], axis=1)
    assert rows_changed.any() and (~rows_changed).any()
    np.testing.assert_array_equal(_changed(out), rows_changed)

    actions = np.eye(N_ACTIONS, dtype=np.float32)[game.steps["actions"][0, :, 0]]
    episode = Episode(rows, actions, game.steps["rewards"][0], False, game.steps["final_obs"][0, 0], "random")
    path = tmp_path / "oc.h5"
    write_trajectories(path, [episode], env_id="Overcooked-coordination_ring", behaviour_policy="random", seed=0)
    via_dataset = segment_frames(TrajectoryDataset(path), (0, 5, 10), size=40)
    np.testing.assert_array_equal(via_dataset, out[5:15])
    with pytest.raises(DatasetError):
        frames("coordination_ring", rows[:, :10], 40)
