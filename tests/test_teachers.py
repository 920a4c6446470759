"""Teachers against their definitions (B-Pref noise models, regret, user groups, rankings) and pairing strategies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pbrl.data.pairing import make_preferences, sample_segments
from pbrl.data.preferences import PreferenceDataset, PreferenceSampler
from pbrl.data.store import Episode, TrajectoryDataset, write_trajectories
from pbrl.data.teachers import Group, Teacher, consistency_report, load_groups, segment_returns, segment_scores
from pbrl.errors import ConfigError
from pbrl.train.critics import fit_reward_ensemble, regret_advantages
from tests.conftest import make_episodes, write_episodes


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    path = tmp_path_factory.mktemp("t") / "t.h5"
    write_trajectories(path, make_episodes([60, 45, 80, 33, 70], seed=3), env_id="Hopper-v5", behaviour_policy="s", seed=0)
    return TrajectoryDataset(path)


def hard_order(ds, prefs):
    ra, rb = segment_returns(ds, prefs.segments_a), segment_returns(ds, prefs.segments_b)
    return np.where(ra > rb, 1.0, np.where(ra < rb, 0.0, 0.5))


def test_mistake_flips_twenty_percent_of_100k_labels(ds):
    prefs = make_preferences(ds, pairs=100_000, segment=6, teacher=Teacher(mistake=0.2), seed=0)
    truth = hard_order(ds, prefs)
    decided = truth != 0.5
    flip_rate = (prefs.label[decided] != truth[decided]).mean()
    assert flip_rate == pytest.approx(0.2, abs=0.01)


def test_large_beta_matches_return_order_exactly(ds):
    prefs = make_preferences(ds, pairs=5000, segment=6, teacher=Teacher(beta=1e9), seed=1)
    truth = hard_order(ds, prefs)
    decided = truth != 0.5
    np.testing.assert_array_equal(prefs.label[decided], truth[decided])


def test_stochastic_rate_follows_bradley_terry(ds):
    teacher = Teacher(beta=0.7)
    prefs = make_preferences(ds, pairs=60_000, segment=4, teacher=teacher, seed=2)
    diff = segment_returns(ds, prefs.segments_a) - segment_returns(ds, prefs.segments_b)
    p = 1 / (1 + np.exp(-0.7 * diff))
    # calibration: within bins of the predicted probability, the empirical rate matches it
    bins = np.digitize(p, [0.2, 0.4, 0.6, 0.8])
    for b in range(5):
        rows = bins == b
        assert prefs.label[rows].mean() == pytest.approx(p[rows].mean(), abs=0.02)


def test_skip_and_equal_follow_their_thresholds(ds):
    teacher = Teacher(skip_threshold=0.0, equal_margin=1.0)
    prefs = make_preferences(ds, pairs=4000, segment=5, teacher=teacher, seed=3)
    ra, rb = segment_returns(ds, prefs.segments_a), segment_returns(ds, prefs.segments_b)
    np.testing.assert_array_equal(prefs.skipped, (ra < 0) & (rb < 0))
    near = np.abs(ra - rb) < 1.0
    answered = ~prefs.skipped
    assert np.all(prefs.label[near] == 0.5) and np.all(prefs.label[~near & answered] != 0.5)
    sampler = PreferenceSampler(ds, prefs)
    assert len(sampler) == int((~prefs.skipped).sum())  # skipped queries are never trained on


def test_myopic_weights_recent_steps(ds):
    seg = np.array([[0, 10, 4]])
    r = ds.rewards.astype(np.float64)[ds.episode_offsets[0] + 10: ds.episode_offsets[0] + 14]
    want = 0.5**3 * r[0] + 0.5**2 * r[1] + 0.5 * r[2] + r[3]
    got = Teacher(myopic=0.5).scores(ds, seg)
    assert got[0] == pytest.approx(want, rel=1e-12)
    plain = segment_scores(ds, ds.rewards.astype(np.float64), seg, discount=1.0, myopic=1.0)
    assert plain[0] == pytest.approx(r.sum(), rel=1e-12)


def test_skip_and_equal_look_at_unweighted_sums_as_b_pref_does(ds):
    """B-Pref (Lee et al., 2021, teacher_thres_skip / teacher_thres_equal) tests both on the plain segment sums; the
    myopic weights enter only the preference itself."""
    prefs = make_preferences(ds, pairs=3000, segment=6, seed=4, teacher=Teacher(myopic=0.3, equal_margin=1.0,
                                                                                 skip_threshold=0.0))
    raw_a, raw_b = segment_returns(ds, prefs.segments_a), segment_returns(ds, prefs.segments_b)
    weighted = Teacher(myopic=0.3)
    wa, wb = weighted.scores(ds, prefs.segments_a), weighted.scores(ds, prefs.segments_b)
    equal = np.abs(raw_a - raw_b) < 1.0
    skipped = (raw_a < 0.0) & (raw_b < 0.0)
    np.testing.assert_array_equal(prefs.skipped, skipped)
    assert np.all(prefs.label[equal & ~skipped] == 0.5)
    decided = ~equal & ~skipped & (wa != wb)
    np.testing.assert_array_equal(prefs.label[decided], (wa[decided] > wb[decided]).astype(np.float32))
    assert (np.abs(wa - wb)[decided] < 1.0).any()  # the weighted margin alone would have called some of these equal


def test_teacher_rejects_bad_parameters():
    with pytest.raises(ConfigError, match=r"--mistake: flip probability: got 0.7"):
        Teacher(mistake=0.7)
    with pytest.raises(ConfigError, match=r"--beta: rationality: got -1"):
        Teacher(beta=-1)
    with pytest.raises(ConfigError, match="--teacher: teacher: got 'oracle'"):
        Teacher(utility="oracle")


def test_user_groups_each_follow_their_own_utility(ds, tmp_path):
    groups_file = tmp_path / "groups.toml"
    groups_file.write_text('[[group]]\nname = "reward"\nshare = 3\n\n'
                           '[[group]]\nname = "gentle"\nshare = 1\nweights = { reward_ctrl = 1.0, action_magnitude = 2.0 }\n'
                           'mistake = 0.1\n')
    groups = load_groups(groups_file)
    assert [g.name for g in groups] == ["reward", "gentle"] and groups[0].share == pytest.approx(0.75)
    prefs = make_preferences(ds, pairs=20_000, segment=8, groups=groups, seed=0)
    assert (prefs.group == 1).mean() == pytest.approx(0.25, abs=0.01)
    report = consistency_report(ds, prefs.segments_a, prefs.segments_b, prefs.label, prefs.group, groups)
    assert report["self_agreement"][0] == 1.0
    assert report["self_agreement"][1] == pytest.approx(0.9, abs=0.015)   # its own 10 % mistakes
    assert report["cross_agreement"][0][1] < 0.75 and report["cross_agreement"][1][0] < 0.75


def test_groups_file_errors(tmp_path):
    bad = tmp_path / "g.toml"
    bad.write_text('[[group]]\nname = "x"\ncolour = "red"\n')
    with pytest.raises(ConfigError, match=r"group 0 field\(s\) \['colour'\]: got unknown"):
        load_groups(bad)
    with pytest.raises(ConfigError, match="g2.toml: file: got missing"):
        load_groups(tmp_path / "g2.toml")


def test_k_way_rankings_are_stored_as_consistent_pairs(ds):
    k = 4
    prefs = make_preferences(ds, pairs=300, segment=6, rank=k, seed=0)
    assert len(prefs) == 300 * k * (k - 1) // 2
    assert np.all(np.bincount(prefs.query) == k * (k - 1) // 2)
    truth = hard_order(ds, prefs)
    decided = truth != 0.5
    np.testing.assert_array_equal(prefs.label[decided], truth[decided])
    assert 0.3 < prefs.label.mean() < 0.7  # the better segment is on either side


def test_episodes_mode_uses_each_episode_once(ds):
    prefs = make_preferences(ds, pairs=2, segment=30, mode="episodes", seed=0)
    eps = np.concatenate([prefs.segments_a[:, 0], prefs.segments_b[:, 0]])
    assert len(set(eps.tolist())) == 4


@pytest.mark.learning
def test_stratified_pairing_reaches_rare_high_returns(tmp_path, learned, learning_seed):
    rng = np.random.default_rng(learning_seed)
    eps = [Episode(rng.standard_normal((50, 2)).astype(np.float32), rng.uniform(-1, 1, (50, 1)).astype(np.float32),
                   np.full(50, 10.0 if i == 0 else rng.uniform(0, 1), np.float32), False, np.zeros(2, np.float32))
           for i in range(40)]  # one episode in 40 has high return
    ds = TrajectoryDataset(write_trajectories(tmp_path / "s.h5", eps, env_id="Hopper-v5", behaviour_policy="s", seed=0))
    share = {}
    for pairing in ("uniform", "stratified"):  # (disagreement: below)
        prefs = make_preferences(ds, pairs=2000, segment=10, pairing=pairing, seed=learning_seed)
        share[pairing] = np.mean(np.concatenate([prefs.segments_a[:, 0], prefs.segments_b[:, 0]]) == 0)
    learned.check("stratified pairs' share of the rare episode", share["stratified"], ">", 0.3)
    learned.check("uniform pairs' share of the rare episode", share["uniform"], "<", 0.05, bad=True)


@pytest.mark.learning
def test_disagreement_pairing_picks_close_calls(tmp_path, learned, learning_seed):
    """With a learnable reward (r = o_0 + a_0), the ensemble is unsure where returns are close."""
    rng = np.random.default_rng(learning_seed)
    eps = []
    for _ in range(30):
        obs = rng.standard_normal((40, 2)).astype(np.float32)
        act = rng.uniform(-1, 1, (40, 1)).astype(np.float32)
        eps.append(Episode(obs, act, (obs[:, 0] + act[:, 0]).astype(np.float32), False, obs[-1]))
    ds = TrajectoryDataset(write_trajectories(tmp_path / "d.h5", eps, env_id="Hopper-v5", behaviour_policy="x", seed=0))
    uniform = make_preferences(ds, pairs=400, segment=8, seed=learning_seed)
    chosen = make_preferences(ds, pairs=400, segment=8, pairing="disagreement", seed=learning_seed,
                              ensemble=fit_reward_ensemble)
    gap = lambda p: np.abs(segment_returns(ds, p.segments_a) - segment_returns(ds, p.segments_b))[40:].mean()  # noqa: E731
    learned.check("return gap of disagreement pairs / uniform pairs", gap(chosen) / gap(uniform), "<", 0.8)


def test_models_are_passed_in_and_their_absence_is_one_line(tmp_path):
    ds = TrajectoryDataset(write_trajectories(tmp_path / "m.h5", make_episodes([20, 20, 20]), env_id="Hopper-v5",
                                              behaviour_policy="x", seed=0))
    with pytest.raises(ConfigError, match=r"teacher 'regret': critic: got none, expected an advantage critic"):
        make_preferences(ds, pairs=10, segment=4, teacher=Teacher(utility="regret"), seed=0)
    with pytest.raises(ConfigError, match=r"--pairing disagreement: ensemble: got none, expected a reward-ensemble fit"):
        make_preferences(ds, pairs=10, segment=4, pairing="disagreement", seed=0)
    # a critic is any callable: A = u (V = 0 everywhere) makes regret the plain discounted return
    zero = lambda traj, u, teacher: u  # noqa: E731
    a = make_preferences(ds, pairs=50, segment=4, teacher=Teacher(utility="regret", discount=0.9), seed=0, critic=zero)
    b = make_preferences(ds, pairs=50, segment=4, teacher=Teacher(discount=0.9), seed=0)
    np.testing.assert_array_equal(a.label, b.label)


def test_regret_teacher_ignores_state_value(tmp_path):
    """Good and bad actions from high- and low-value states: regret labels follow the action."""
    rng = np.random.default_rng(0)
    eps = []
    for i in range(60):
        high_state, good = i % 2 == 0, (i // 2) % 2 == 0
        obs = np.zeros((40, 2), np.float32)
        obs[:, 0] = 1.0 if high_state else 0.0
        obs[:, 1] = rng.standard_normal(40) * 0.01
        rew = np.full(40, (1.0 if high_state else 0.0) + (0.5 if good else 0.0), np.float32)
        eps.append(Episode(obs, np.full((40, 1), 0.5 if good else -0.5, np.float32), rew, False, obs[-1]))
    ds = TrajectoryDataset(write_trajectories(tmp_path / "r.h5", eps, env_id="Hopper-v5", behaviour_policy="x", seed=0))
    good = lambda seg: ds.actions[ds.episode_offsets[seg[:, 0]] + seg[:, 1], 0] > 0  # noqa: E731
    for utility, low, high in (("regret", 0.8, 1.01), ("return", 0.0, 0.75)):
        prefs = make_preferences(ds, pairs=400, segment=10, seed=0, critic=regret_advantages,
                                 teacher=Teacher(utility=utility, discount=0.9, value_steps=800,
                                                 critic="behaviour" if utility == "regret" else None))
        decided = good(prefs.segments_a) != good(prefs.segments_b)
        agree = ((prefs.label[decided] > 0.5) == good(prefs.segments_a)[decided]).mean()
        assert low < agree < high, (utility, agree)


@settings(max_examples=30, deadline=None)
@given(lengths=st.lists(st.integers(1, 30), min_size=1, max_size=6), t=st.integers(1, 12), seed=st.integers(0, 50))
def test_sampler_masks_are_right_for_short_segments(tmp_path_factory, lengths, t, seed):
    ds = write_episodes(tmp_path_factory.mktemp("m") / "m.h5", lengths, seed)
    rng = np.random.default_rng(seed)
    segs = []
    for _ in range(8):  # segments of any length up to min(t, episode length)
        ep = int(rng.integers(len(lengths)))
        n = int(rng.integers(1, min(t, lengths[ep]) + 1))
        segs.append([ep, int(rng.integers(0, lengths[ep] - n + 1)), n])
    segs = np.array(segs)
    prefs = PreferenceDataset(segs, segs[::-1].copy(), np.full(8, 0.5, np.float32), np.zeros(8, np.int32))
    batch = PreferenceSampler(ds, prefs).batch(torch.arange(8))
    for i, (ep, start, n) in enumerate(segs):
        assert batch.mask[i, 0].sum().item() == n and bool(batch.mask[i, 0, :n].all())
        lo = ds.episode_offsets[ep] + start
        np.testing.assert_array_equal(batch.obs[i, 0, :n].numpy(), ds.observations[lo:lo + n])
    assert sample_segments(ds, 16, min(t, max(lengths)), rng)[:, 2].max() <= max(lengths)


def test_groups_share_of_one_group_keeps_old_labels(ds):
    one = make_preferences(ds, pairs=300, segment=6, teacher=Teacher(), seed=5)
    grouped = make_preferences(ds, pairs=300, segment=6, groups=[Group("all", 1.0, Teacher())], seed=5)
    np.testing.assert_array_equal(one.label, grouped.label)


def test_cli_groups_report_in_label_and_info(tmp_path, capsys):
    from pbrl.cli import dataset_info, main

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    out = tmp_path / "g.prefs.h5"
    assert main(["data", "label", "hopper-medium-replay-small", "--groups", str(root / "docs" / "groups-hopper.toml"),
                 "--pairs", "400", "--segment", "32", "--seed", "0", "--out", str(out)]) == 0
    assert "consistency" in capsys.readouterr().out
    info = dataset_info(str(out))
    rep = info["consistency"]
    assert rep["groups"] == ["speed", "careful"] and sum(rep["labels"]) == 400
    assert rep["self_agreement"][0] > 0.9 and rep["self_agreement"][1] > 0.8
    assert rep["cross_agreement"][0][1] < rep["self_agreement"][0]
