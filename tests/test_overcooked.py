"""Overcooked-AI: the wrapper against the package's dynamics, the human trials, PPO resume, BC, the hybrid agent."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("overcooked")

from pbrl.cli import main as pbrl  # noqa: E402
from pbrl.envs.overcooked import (  # noqa: E402
    EVENT_INDEX,
    EVENTS,
    FEATURE_DIM,
    STYLES,
    OvercookedGame,
    OvercookedVecEnv,
    RandomPolicy,
    Utility,
    groups_toml,
    make_mdp,
    play,
)
from pbrl.errors import ConfigError  # noqa: E402

N, S, E, W, STAY, INTERACT = range(6)
# player 0 on cramped_room: three onions into the pot, a dish, wait for the soup, serve it (player 1 stays)
SOUP_SCRIPT = ([N, W, INTERACT, E, N, INTERACT, W, INTERACT, E, N, INTERACT, W, INTERACT, E, N, INTERACT, W, S, S, INTERACT]
               + [STAY] * 14 + [N, E, N, INTERACT, S, E, S, INTERACT])


def _trials_or_skip():
    from pbrl.envs.overcooked_human import trials_path

    try:
        path = trials_path("train")
    except ConfigError:
        pytest.skip("overcooked-ai 1.1.0 (the human trials) is not installed")
    return path


def test_scripted_soup_matches_the_package_env():
    """A scripted sequence of joint actions delivers one soup: 20 in pbrl's wrapper and in the package's own env,
    with the same states at every step and the events of who did what."""
    from overcooked.mdp import Action, OvercookedEnv

    game = OvercookedGame("cramped_room")
    obs = game.reset()
    assert obs.shape == (2, FEATURE_DIM) and np.isfinite(obs).all()
    env = OvercookedEnv.from_mdp(make_mdp("cramped_room"), horizon=400, info_level=0)
    env.reset()
    total, raw_total, events = 0.0, 0.0, np.zeros((2, len(EVENTS)))
    for a in SOUP_SCRIPT:
        _, r, done, info = game.step((a, STAY))
        _, raw_r, _, _ = env.step([Action.INDEX_TO_ACTION[a], Action.STAY])
        total, raw_total = total + r, raw_total + raw_r
        events += info["events"]
        assert game.state == env.state
        assert not done
    assert total == raw_total == 20.0
    assert events[0, EVENT_INDEX["potting_onion"]] == 3 and events[0, EVENT_INDEX["soup_delivery"]] == 1
    assert events[1].sum() == 0
    assert game.lossless().shape == (2, 26, 4, 5)


def test_features_see_the_soup():
    game = OvercookedGame("cramped_room")
    game.reset()
    for a in SOUP_SCRIPT[:16]:  # three onions in: the pot starts cooking (old dynamics)
        obs, *_ = game.step((a, STAY))
    from pbrl.envs.overcooked import FEATURES

    start = sum(w for name, w in FEATURES[: [n for n, _ in FEATURES].index("pot0")])
    pot = obs[0, start:start + 8]  # exists, dx, dy, onions/3, cooking, ready, time left, empty
    assert pot[0] == 1 and pot[3] == 1 and pot[4] == 1 and pot[5] == 0 and 0 < pot[6] <= 1 and pot[7] == 0


def test_unknown_layout_is_one_clear_line():
    with pytest.raises(ConfigError) as err:
        OvercookedGame("cramped_kitchen")
    assert "cramped_kitchen" in str(err.value) and "cramped_room" in str(err.value) and "\n" not in str(err.value)


def test_nothing_is_written_into_the_package(tmp_path, monkeypatch):
    """pbrl's play builds no planner; the package's own env step does, and its cache lands in pbrl's cache."""
    import overcooked.static as static
    from overcooked.mdp import Action, OvercookedEnv

    monkeypatch.setenv("PBRL_CACHE", str(tmp_path))
    package = Path(static.DATA_DIR)
    before = sorted(package.rglob("*"))
    play("cramped_room", RandomPolicy(0), RandomPolicy(1), episodes=2, horizon=50)
    env = OvercookedEnv.from_mdp(make_mdp("coordination_ring"), horizon=10, info_level=0)
    env.reset()
    env.step([Action.STAY, Action.STAY])  # builds a MotionPlanner and pickles it
    assert sorted(package.rglob("*")) == before
    assert list((tmp_path / "overcooked" / "planners").glob("coordination_ring*"))


def test_play_records_both_seats_and_swaps_sides():
    result = play("cramped_room", RandomPolicy(0), RandomPolicy(1), episodes=4, horizon=30, record=True)
    assert result.steps["obs"].shape == (4, 30, 2, FEATURE_DIM)
    assert result.steps["actions"].shape == (4, 30, 2)
    np.testing.assert_array_equal(result.steps["events"].sum(1), result.events)
    # seat 0 is player 0 in even games and player 1 in odd ones: the start features differ accordingly
    start = OvercookedGame("cramped_room").reset()
    np.testing.assert_array_equal(result.steps["obs"][0, 0, 0], start[0])
    np.testing.assert_array_equal(result.steps["obs"][1, 0, 0], start[1])


def test_utility_reward_weights_and_preference_score(tmp_path):
    u = Utility("t", sparse_weight=1.0, shaping=0.5, events={"potting_onion": 2.0}, partner_events={"soup_delivery": 4.0},
                x_weight=-1.0)
    info = {"shaped": np.array([3.0, 5.0]), "events": np.zeros((2, len(EVENTS)), bool)}
    info["events"][0, EVENT_INDEX["potting_onion"]] = True
    info["events"][1, EVENT_INDEX["soup_delivery"]] = True
    assert u.reward(0, 20.0, info, x=0.25, shaping_scale=0.5) == pytest.approx(20 + 0.25 * 3 + 2 + 4 - 0.25)
    assert u.reward(1, 20.0, info, x=1.0) == pytest.approx(20 + 0.5 * 5 - 1.0)  # seat 1's own: no potting
    assert u.label_weights(seat="own") == {"reward": 1.0, "potting_onion": 2.0, "partner_soup_delivery": 4.0, "x": -1.0}
    assert u.label_weights(seat="partner") == {"reward": 1.0, "partner_potting_onion": 2.0, "soup_delivery": 4.0,
                                               "partner_x": -1.0}
    from pbrl.data.teachers import load_groups

    path = tmp_path / "groups.toml"
    path.write_text(groups_toml([u, STYLES["cook"]], seat="partner"))
    groups = load_groups(path)
    assert [g.name for g in groups] == ["t", "cook"] and groups[0].share == 0.5
    assert groups[0].teacher.weights == u.label_weights(seat="partner")
    cook = STYLES["cook"]
    own, other = np.zeros(len(EVENTS)), np.zeros(len(EVENTS))
    own[EVENT_INDEX["potting_onion"]], other[EVENT_INDEX["potting_onion"]] = 3, 9
    assert cook.preference_score(own, other) == pytest.approx(3 / 12)
    assert np.isnan(cook.preference_score(np.zeros(len(EVENTS)), np.zeros(len(EVENTS))))
    with pytest.raises(ConfigError, match="onion_throw"):
        Utility("bad", events={"onion_throw": 1.0})


def test_vec_env_self_play_and_pool():
    sp = OvercookedVecEnv("cramped_room", 2, horizon=20)
    assert sp.num_envs == 4
    obs = sp.reset()
    assert obs.shape == (4, FEATURE_DIM)
    for _ in range(20):
        sp.step_async(np.full(4, STAY))
        obs, rew, done, infos = sp.step_wait()
    assert done.all() and infos[0]["episode"]["l"] == 20 and "terminal_observation" in infos[3]
    pool = OvercookedVecEnv("cramped_room", 3, partners=[RandomPolicy(0), RandomPolicy(1)], seed=5, horizon=10)
    assert pool.num_envs == 3 and pool.reset().shape == (3, FEATURE_DIM)
    seats = []
    for _ in range(40):
        pool.step_async(np.zeros(3, int))
        pool.step_wait()
        seats.append(pool._seat.copy())
    assert len({tuple(s) for s in seats}) > 1  # seats are redrawn at every episode


# --------------------------------------------------------------------------------------------------------
# the human trials
# --------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trials():
    from pbrl.envs.overcooked_human import SPLITS, read_trials, trials_path

    _trials_or_skip()
    return {s: read_trials(trials_path(s)) for s in SPLITS}


GAMES_PER_LAYOUT = 1
"""Games converted per layout and split in the suite (the first by worker and round). Converting all of them replays
every logged step through the package (about 35 s of the suite's 2-core budget); `pbrl data import-overcooked` does
that for every game it imports and records the share that agrees in the dataset (`dynamics_agreement`, 1.0 on every
layout and split when last run in full)."""


@pytest.mark.parametrize("split", ["train", "test"])
def test_human_conversion_counts_equal_the_dataframe(trials, split):
    """Per layout and split, on the first GAMES_PER_LAYOUT game(s): games, steps and soups equal the DataFrame's, and
    the package's dynamics reproduce every logged step of them."""
    from pbrl.envs.overcooked_human import HUMAN_LAYOUTS, convert_games, logged_soups, replayed_soups

    for layout in HUMAN_LAYOUTS:
        every = trials[split][trials[split]["layout_name"] == layout]
        keys = sorted(every.groupby(["workerid_num", "round_num"]).groups)[:GAMES_PER_LAYOUT]
        rows = every[every.set_index(["workerid_num", "round_num"]).index.isin(keys)]
        games = convert_games(rows, layout)
        assert len(keys) == GAMES_PER_LAYOUT
        assert len(games) == rows.groupby(["workerid_num", "round_num"]).ngroups
        assert sum(len(g.rewards) for g in games) == len(rows)
        assert sum(replayed_soups(g) for g in games) == rows["reward"].sum() / 5 == sum(logged_soups(g) for g in games)
        assert all(g.consistent.all() for g in games), layout
        assert all(g.observations.shape == (2, len(g.rewards), FEATURE_DIM) for g in games)


@pytest.fixture(scope="module")
def cramped_room(trials, tmp_path_factory) -> dict[str, Path]:
    """cramped_room's human trials imported through the CLI, both splits (each import replays every step)."""
    folder = tmp_path_factory.mktemp("cramped_room")
    paths = {split: folder / f"{split}.h5" for split in ("train", "test")}
    for split, path in paths.items():
        assert pbrl(["data", "import-overcooked", "--layout", "cramped_room", "--split", split, "--out", str(path)]) == 0
    return paths


def test_import_overcooked_cli(cramped_room, trials):
    from pbrl.data.store import TrajectoryDataset

    out = cramped_room["test"]
    rows = trials["test"][trials["test"]["layout_name"] == "cramped_room"]
    with TrajectoryDataset(out) as ds:
        games = rows.groupby(["workerid_num", "round_num"]).ngroups
        assert ds.num_episodes == 2 * games and ds.num_transitions == 2 * len(rows)
        assert ds.rewards.sum() / 2 == rows["reward"].sum() / 5 * 20  # each game twice, 20 per soup
        assert ds.act_dim == 6 and (ds.actions.sum(1) == 1).all()
        meta = ds.metadata
        assert meta["action_space"]["type"] == "discrete" and meta["dynamics_agreement"] == 1.0
        sources = ds.episode_sources
        assert sources[0].startswith("human:worker") and sources[0].endswith(":player0")
        assert {"potting_onion", "partner_potting_onion", "x", "partner_x"} <= set(ds.info_keys)
        # episodes 0 and 1 are the two players of the first game: each sees the other's events as its partner's
        o = ds.episode_offsets
        for key in ("potting_onion", "soup_delivery", "x"):
            np.testing.assert_array_equal(ds.info(key)[o[0]:o[1]], ds.info(f"partner_{key}")[o[1]:o[2]])
    assert pbrl(["data", "import-overcooked", "--layout", "cramped_room", "--split", "test", "--out", str(out)]) == 2


def test_import_overcooked_bad_input(tmp_path, capsys):
    import pandas as pd

    _trials_or_skip()
    assert pbrl(["data", "import-overcooked", "--layout", "kitchen", "--out", str(tmp_path / "a.h5")]) == 2
    err = capsys.readouterr().err.strip()
    assert "kitchen" in err and "cramped_room" in err and len(err.splitlines()) == 1
    for name, payload in (("dict.pickle", pickle.dumps({"a": 1})),
                          ("frame.pickle", pickle.dumps(pd.DataFrame({"layout_name": ["cramped_room"], "state": ["{}"]}))),
                          ("text.pickle", b"not a pickle at all")):
        path = tmp_path / name
        path.write_bytes(payload)
        assert pbrl(["data", "import-overcooked", "--layout", "cramped_room", "--pickle", str(path),
                     "--out", str(tmp_path / f"{name}.h5")]) == 2
        err = capsys.readouterr().err.strip()
        assert str(path) in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / f"{name}.h5").exists()


# --------------------------------------------------------------------------------------------------------
# PPO, BC, the hybrid agent
# --------------------------------------------------------------------------------------------------------

def test_ppo_resume_is_exact(tmp_path):
    """A PPO run against a pool, interrupted at a checkpoint and resumed, ends with the same weights."""
    from pbrl.train.overcooked import PolicyPartner, PPOConfig, train_ppo

    cfg = PPOConfig(n_games=2, n_epochs=2, checkpoint_every=800)
    pool = lambda: [RandomPolicy(1), RandomPolicy(2)]  # noqa: E731
    a = train_ppo(tmp_path / "a", "cramped_room", 2400, cfg=cfg, partners=pool(), progress=False)
    assert train_ppo(tmp_path / "b", "cramped_room", 2400, cfg=cfg, partners=pool(), progress=False, stop_after=800) is None
    b = train_ppo(tmp_path / "b", "cramped_room", 2400, cfg=cfg, partners=pool(), progress=False)
    pa, pb = PolicyPartner.load(a).policy.state_dict(), PolicyPartner.load(b).policy.state_dict()
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    curve = json.loads((tmp_path / "b" / "curve.json").read_text())
    assert curve["game_steps"] == [800, 1600, 2400]
    with pytest.raises(ConfigError, match=r"\['seed'\]"):  # a finished run is not handed out for other settings
        train_ppo(tmp_path / "b", "cramped_room", 2400, cfg=cfg, partners=pool(), seed=1, progress=False)
    assert list((tmp_path / "b").glob("events.out.tfevents*"))


@pytest.mark.learning
def test_bc_human_model_beats_the_action_frequencies(tmp_path, cramped_room, learned, learning_seed):
    """BC on the train split predicts held-out (test split) human actions better than the train split's action
    frequencies (71 % of human steps are "stay", so accuracy says little: held-out log-likelihood)."""
    from pbrl.data.store import TrajectoryDataset
    from pbrl.train.overcooked import PolicyPartner, train_bc

    policy = PolicyPartner.load(train_bc(tmp_path / "bc", cramped_room["train"], steps=600, seed=learning_seed,
                                           progress=False)).policy
    with TrajectoryDataset(cramped_room["train"]) as ds:
        freq = ds.actions.mean(0)
    with TrajectoryDataset(cramped_room["test"]) as ds:
        target = ds.actions.argmax(1)
        with torch.no_grad():
            probs = policy.get_distribution(torch.as_tensor(ds.observations)).distribution.probs.numpy()
    nll_bc = -np.log(probs[np.arange(len(target)), target]).mean()
    nll_freq = -np.log(freq[target]).mean()
    learned.check("held-out NLL gain of BC over the action frequencies", nll_freq - nll_bc, ">", 0.1,
                  context=(nll_bc, nll_freq))


def _left_preference_data(tmp_path, flip: bool, seed: int = 0) -> Path:
    """Rollouts of a random policy, labelled by a utility that likes the player's own column to be small
    (left), or the opposite with ``flip``."""
    from pbrl.data.store import write_trajectories
    from pbrl.train.overcooked import rollout_episodes

    traj = tmp_path / "random.h5"
    if not traj.exists():
        result = play("cramped_room", RandomPolicy(seed), RandomPolicy(seed + 1), episodes=16, horizon=100,
                      record=True)
        write_trajectories(traj, rollout_episodes(result, source="random"), env_id="Overcooked-cramped_room",
                           behaviour_policy="random", seed=0,
                           metadata={"action_space": {"type": "discrete", "n": 6, "encoding": "one-hot"}})
    groups = tmp_path / f"left-{flip}.toml"
    groups.write_text(f'[[group]]\nname = "left"\nutility = "return"\nweights = {{ x = {1.0 if flip else -1.0} }}\n')
    prefs = tmp_path / f"left-{flip}.prefs.h5"
    assert pbrl(["data", "label", str(traj), "--pairs", "400", "--segment", "20", "--groups", str(groups),
                 "--seed", str(seed), "--out", str(prefs)]) == 0
    return prefs


def _mean_column(policy_dir: Path) -> float:
    from pbrl.train.overcooked import PolicyPartner

    result = play("cramped_room", PolicyPartner.load(policy_dir, seed=9), RandomPolicy(3), episodes=8, horizon=100,
                  record=True)
    return float(result.steps["x"][:, :, 0].mean())


@pytest.mark.learning
def test_hybrid_offline_phase_learns_the_preference_and_the_loop_runs(tmp_path, learned, learning_seed):
    """One offline epoch moves the policy where the labels point (left), measured in the simulator; the flipped
    labels move it right (the known-bad variant). The whole hybrid loop runs on a tiny budget and resumes."""
    from pbrl.agents.hybrid import HybridConfig
    from pbrl.train.overcooked import PPOConfig, train_hybrid, train_ppo

    ppo = PPOConfig(n_games=2, n_epochs=1, checkpoint_every=800)
    pool = tmp_path / "pool"
    train_ppo(pool, "cramped_room", 800, cfg=ppo, seed=learning_seed, progress=False)
    base = _mean_column(pool)
    columns = {}
    for flip in (False, True):
        cfg = HybridConfig(pretrain_steps=800, rounds=1, offline_epochs=6, lr=3e-3, alpha=1.0, recovery_steps=800,
                           max_recovery_chunks=1)
        out = tmp_path / f"hybrid-{flip}"
        train_hybrid(out, "cramped_room", [pool], _left_preference_data(tmp_path, flip, learning_seed), cfg=cfg,
                     ppo=ppo, seed=learning_seed, pretrained=pool, eval_episodes=2, progress=False)
        columns[flip] = _mean_column(out / "round1" / "offline")
        log = json.loads((out / "rounds.json").read_text())
        assert len(log["rounds"]) == 1 and len(log["rounds"][0]["after_recovery"]) == 1
        assert (out / "model.zip").exists()
    # the labels' way (left) by more than 0.05 of a column; the flipped labels (the known-bad variant) the other way
    learned.check("column moved left by the left-liking labels", base - columns[False], ">", 0.05)
    learned.check("column moved left by the flipped labels", base - columns[True], "<", 0.0, bad=True)


def test_overcooked_cli_eval_and_bad_override(capsys):
    assert pbrl(["overcooked", "eval", "--ego", "random", "--partner", "random", "--episodes", "2", "--style", "cook"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["return_mean"] >= 0 and out["episodes"] == 2 and "preference_mean" in out
    assert pbrl(["overcooked", "hybrid", "--pool", "x", "--preferences", "y", "--out", "z", "--set", "rounds=0"]) == 2
    assert "hybrid.rounds" in capsys.readouterr().err
    assert pbrl(["overcooked", "eval", "--ego", "random", "--partner", "random", "--style", "gourmet"]) == 2
    assert "gourmet" in capsys.readouterr().err


def test_a_ppo_run_folder_has_one_writer(tmp_path):
    from pbrl.errors import RunLockedError
    from pbrl.io import exclusive_lock
    from pbrl.train.overcooked import PPOConfig, train_ppo

    with exclusive_lock(tmp_path):
        with pytest.raises(RunLockedError, match="locked by"):
            train_ppo(tmp_path, "cramped_room", 800, cfg=PPOConfig(n_games=2), progress=False)
    assert not (tmp_path / "checkpoints").exists()


def test_control_agents_refuse_discrete_actions(tmp_path, capsys):
    from pbrl.data.store import write_trajectories
    from pbrl.train.overcooked import rollout_episodes

    result = play("cramped_room", RandomPolicy(0), RandomPolicy(1), episodes=2, horizon=20, record=True)
    path = tmp_path / "oc.h5"
    write_trajectories(path, rollout_episodes(result, source="random"), env_id="Overcooked-cramped_room",
                       behaviour_policy="random", seed=0, metadata={"action_space": {"type": "discrete", "n": 6}})
    assert pbrl(["train", "--agent", "bc", "--dataset", str(path), "--steps", "2", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "action_space" in err and "pbrl overcooked bc" in err and not (tmp_path / "run").exists()
