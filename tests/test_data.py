"""Trajectory and preference datasets: schema, atomic writes, validation errors, sampler and teacher."""

from __future__ import annotations

import hashlib

import h5py
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pbrl.data.pairing import make_preferences, sample_segments
from pbrl.data.preferences import PreferenceDataset, PreferenceSampler, read_preferences, write_preferences
from pbrl.data.registry import load_dataset
from pbrl.data.store import TrajectoryDataset, write_trajectories
from pbrl.data.teachers import Teacher, segment_returns
from pbrl.errors import DatasetError
from tests.conftest import make_episodes, write_episodes


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_round_trip_keeps_every_array(tmp_path):
    eps = make_episodes([7, 3, 9])
    path = write_trajectories(tmp_path / "d.h5", eps, env_id="Hopper-v5", behaviour_policy="b", seed=3,
                              metadata={"mixture": "x", "noise": [0.1, 0.2]})
    with TrajectoryDataset(path) as ds:
        assert (ds.num_episodes, ds.num_transitions, ds.obs_dim, ds.act_dim) == (3, 19, 3, 2)
        assert ds.episode_offsets.tolist() == [0, 7, 10, 19]
        for e, ep in enumerate(eps):
            got = ds.episode(e)
            np.testing.assert_array_equal(got.observations, ep.observations)
            np.testing.assert_array_equal(got.actions, ep.actions)
            np.testing.assert_array_equal(got.rewards, ep.rewards)
            np.testing.assert_array_equal(got.final_observation, ep.final_observation)
            np.testing.assert_array_equal(got.infos["reward_ctrl"], ep.infos["reward_ctrl"])
            assert got.terminated == ep.terminated and got.source == ep.source
        assert ds.terminations.sum() + ds.truncations.sum() == 3
        meta = ds.metadata
        assert meta["env_id"] == "Hopper-v5" and meta["seed"] == 3 and meta["noise"] == [0.1, 0.2]
        assert meta["format"] == "pbrl.trajectories" and "pbrl_version" in meta
        np.testing.assert_allclose(ds.episode_returns(), [e.rewards.sum() for e in eps], rtol=1e-5)


def test_reading_is_lazy(traj_file):
    ds = TrajectoryDataset(traj_file)
    assert "observations" not in ds._cache  # validation reads rewards and flags, not observations
    _ = ds.observations
    assert "observations" in ds._cache


def test_failed_write_leaves_existing_file_untouched(traj_file):
    before = digest(traj_file)
    bad = make_episodes([4])
    bad[0].rewards[2] = np.nan
    with pytest.raises(DatasetError, match="rewards"):
        write_trajectories(traj_file, bad, env_id="Hopper-v5", behaviour_policy="b", seed=0)
    assert digest(traj_file) == before
    assert not [p for p in traj_file.parent.iterdir() if p.name.endswith(".tmp")]


def test_missing_and_corrupt_files_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match=r"nope\.h5: file: got missing"):
        TrajectoryDataset(tmp_path / "nope.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(DatasetError, match=r"junk\.h5: file: got unreadable"):
        TrajectoryDataset(junk)
    assert junk.read_bytes() == b"not an hdf5 file at all"


def _tamper(path, fn):
    with h5py.File(path, "r+") as f:
        fn(f)
    return digest(path)


def test_arrays_that_disagree_in_length(traj_file):
    def shorten(f):
        a = f["actions"][()][:-1]
        del f["actions"]
        f["actions"] = a

    before = _tamper(traj_file, shorten)
    with pytest.raises(DatasetError, match=r"'actions' length: got 96, expected 97"):
        TrajectoryDataset(traj_file)
    assert digest(traj_file) == before


def test_nan_rewards_are_rejected_on_open(traj_file):
    def poison(f):
        f["rewards"][5] = np.nan

    _tamper(traj_file, poison)
    with pytest.raises(DatasetError, match=r"'rewards': got non-finite value nan at row 5"):
        TrajectoryDataset(traj_file)


def test_missing_key_and_wrong_format(traj_file):
    _tamper(traj_file, lambda f: f.__delitem__("terminations"))
    with pytest.raises(DatasetError, match="key 'terminations': got missing"):
        TrajectoryDataset(traj_file)
    _tamper(traj_file, lambda f: f.attrs.__setitem__("format", "d4rl"))
    with pytest.raises(DatasetError, match="attribute 'format'"):
        TrajectoryDataset(traj_file)


def test_sampled_segments_stay_inside_episodes(traj_file):
    ds = TrajectoryDataset(traj_file)
    seg = sample_segments(ds, 2000, 10, np.random.default_rng(0))
    lengths = ds.episode_lengths
    assert np.all(seg[:, 1] + seg[:, 2] <= lengths[seg[:, 0]])
    assert 1 not in set(seg[:, 0].tolist())  # the 5-step episode is too short for T = 10
    with pytest.raises(DatasetError, match="segment length: got 51"):
        sample_segments(ds, 1, 51, np.random.default_rng(0))


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(1, 40), min_size=1, max_size=8), t=st.integers(1, 40), seed=st.integers(0, 99))
def test_sampler_never_crosses_episode_ends(tmp_path_factory, lengths, t, seed):
    ds = write_episodes(tmp_path_factory.mktemp("h") / "d.h5", lengths, seed)
    if t > max(lengths):
        with pytest.raises(DatasetError):
            sample_segments(ds, 4, t, np.random.default_rng(seed))
        return
    seg = sample_segments(ds, 64, t, np.random.default_rng(seed))
    assert np.all(seg[:, 1] >= 0) and np.all(seg[:, 1] + t <= ds.episode_lengths[seg[:, 0]])


def test_sampler_batch_equals_per_item_gather_and_masks_short_segments(traj_file):
    ds = TrajectoryDataset(traj_file)
    seg_a = np.array([[0, 3, 10], [1, 0, 5], [2, 40, 10]])
    seg_b = np.array([[2, 0, 10], [3, 2, 10], [0, 20, 4]])
    prefs = PreferenceDataset(seg_a, seg_b, np.array([1.0, 0.0, 0.5], np.float32), np.array([0, 1, 2], np.int32))
    batch = PreferenceSampler(ds, prefs).batch(torch.arange(3))
    assert batch.obs.shape == (3, 2, 10, 3) and batch.act.shape == (3, 2, 10, 2) and batch.mask.shape == (3, 2, 10)
    for i in range(3):
        for j, seg in enumerate((seg_a[i], seg_b[i])):
            ep, start, n = seg
            lo = ds.episode_offsets[ep] + start
            np.testing.assert_array_equal(batch.obs[i, j, :n].numpy(), ds.observations[lo:lo + n])
            np.testing.assert_array_equal(batch.act[i, j, :n].numpy(), ds.actions[lo:lo + n])
            assert batch.mask[i, j].tolist() == [True] * n + [False] * (10 - n)
    assert batch.label.tolist() == [1.0, 0.0, 0.5] and batch.group.tolist() == [0, 1, 2]


def test_sampler_is_deterministic_and_resumable(traj_file):
    ds = TrajectoryDataset(traj_file)
    prefs = make_preferences(ds, pairs=50, segment=8, seed=0)
    s1, s2 = PreferenceSampler(ds, prefs, seed=7), PreferenceSampler(ds, prefs, seed=7)
    s1.sample(4)
    state = s1.state_dict()
    a = s1.sample(4)
    s2.load_state_dict(state)
    torch.testing.assert_close(a.obs, s2.sample(4).obs)


def test_deterministic_teacher_follows_return_order(traj_file):
    ds = TrajectoryDataset(traj_file)
    prefs = make_preferences(ds, pairs=500, segment=5, seed=1)
    ra, rb = segment_returns(ds, prefs.segments_a), segment_returns(ds, prefs.segments_b)
    expected = np.where(ra > rb, 1.0, np.where(ra < rb, 0.0, 0.5))
    np.testing.assert_array_equal(prefs.label, expected)
    lo = ds.episode_offsets[prefs.segments_a[0, 0]] + prefs.segments_a[0, 1]
    assert ra[0] == pytest.approx(float(ds.rewards[lo:lo + 5].astype(np.float64).sum()))


def test_stochastic_teacher_matches_bradley_terry_probability():
    teacher = Teacher(beta=0.5)
    p = teacher.probability(np.array([2.0, 0.0, -1e6]), np.array([0.0, 0.0, 1e6]))
    assert p.tolist() == pytest.approx([1 / (1 + np.exp(-1.0)), 0.5, 0.0])
    rng = np.random.default_rng(0)
    draws = rng.random(200_000) < teacher.probability(np.full(200_000, 2.0), np.zeros(200_000))
    assert draws.mean() == pytest.approx(1 / (1 + np.exp(-1.0)), abs=0.005)


def test_preference_file_round_trip_and_bad_labels(traj_file, tmp_path):
    ds = TrajectoryDataset(traj_file)
    prefs = make_preferences(ds, pairs=20, segment=6, teacher=Teacher(beta=1.0), seed=0)
    out = write_preferences(tmp_path / "p.h5", prefs, ds, teacher={"name": "scripted"}, seed=0)
    back, traj = read_preferences(out)
    np.testing.assert_array_equal(back.segments_a, prefs.segments_a)
    np.testing.assert_array_equal(back.label, prefs.label)
    assert traj.path.name == traj_file.name
    before = digest(out)
    bad = PreferenceDataset(prefs.segments_a, prefs.segments_b, prefs.label.copy(), prefs.group)
    bad.label[3] = 1.5
    with pytest.raises(DatasetError, match=r"'label' at pair 3: got 1.5, expected a value in \[0, 1\]"):
        write_preferences(out, bad, ds, teacher={}, seed=0)
    assert digest(out) == before


def test_segment_longer_than_episode_is_rejected(traj_file, tmp_path):
    ds = TrajectoryDataset(traj_file)
    seg_ok = np.array([[0, 0, 5]])
    seg_bad = np.array([[1, 2, 5]])  # episode 1 has 5 steps: start 2 + length 5 runs past its end
    bad = PreferenceDataset(seg_ok, seg_bad, np.array([1.0], np.float32), np.zeros(1, np.int32))
    with pytest.raises(DatasetError, match=r"'segments_b' at pair 0: got segment start 2 length 5 in episode 1, "
                       r"expected a segment inside the episode's 5 steps"):
        write_preferences(tmp_path / "p.h5", bad, ds, teacher={}, seed=0)
    assert not (tmp_path / "p.h5").exists()


def test_tampered_trajectories_are_detected_through_checksum(traj_file, tmp_path):
    ds = TrajectoryDataset(traj_file)
    prefs = make_preferences(ds, pairs=5, segment=4, seed=0)
    out = write_preferences(tmp_path / "p.h5", prefs, ds, teacher={}, seed=0)
    ds.close()
    _tamper(traj_file, lambda f: f.attrs.__setitem__("seed", 99))
    with pytest.raises(DatasetError, match="trajectories_sha256"):
        read_preferences(out)


def test_unknown_dataset_name_lists_known_ones():
    with pytest.raises(DatasetError, match=r"--dataset: dataset: got 'no-such-data', expected a card name in datasets/"):
        load_dataset("no-such-data")


def test_regret_scores_match_hand_computation(traj_file):
    from pbrl.data.teachers import advantages, discounted_returns_to_go, segment_scores

    ds = TrajectoryDataset(traj_file)  # episodes of 30, 5, 50, 12 steps; episodes 0 and 2 terminate
    v_rows = np.linspace(-1.0, 2.0, ds.num_transitions)
    v_final = np.array([10.0, 20.0, 30.0, 40.0])
    segs = np.array([[0, 2, 4], [0, 26, 4], [1, 1, 4], [3, 0, 5]])
    adv = advantages(ds, ds.rewards.astype(np.float64), (v_rows, v_final), 0.9)
    got = segment_scores(ds, adv, segs, discount=0.9)
    r = ds.rewards.astype(np.float64)
    off = ds.episode_offsets
    for i, (ep, start, n) in enumerate(segs):
        lo = off[ep] + start
        ret = sum(0.9**t * r[lo + t] for t in range(n))
        if lo + n < off[ep + 1]:
            v_end = v_rows[lo + n]
        else:
            v_end = 0.0 if ds.terminations[lo + n - 1] else v_final[ep]  # ep 0 terminates, ep 1 is truncated
        assert got[i] == pytest.approx(ret + 0.9**n * v_end - v_rows[lo], rel=1e-10)
    g = discounted_returns_to_go(ds, 0.5)
    assert g[off[1] - 1] == pytest.approx(r[off[1] - 1]) and g[0] == pytest.approx(r[0] + 0.5 * g[1])


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_behaviour_training_resumes_where_it_stopped_and_its_policy_acts(tmp_path, algo):
    import json

    from pbrl.data.make import load_behaviour_policy, train_behaviour
    from pbrl.errors import ConfigError

    run = train_behaviour("hopper", algo=algo, steps=512, seed=0, directory=tmp_path / algo, chunk=512)
    assert run.steps_done() == 512 and (run.directory / "vecnormalize.pkl").exists() == (algo == "ppo")
    first_episodes = len(run.episodes())
    run = train_behaviour("hopper", algo=algo, steps=1024, seed=0, directory=tmp_path / algo, chunk=512)
    progress = json.loads(run.progress_file.read_text())
    assert progress["steps"] == 1024 and len(run.episodes()) > first_episodes
    action = load_behaviour_policy(run, deterministic=True)(np.zeros(11, np.float32))
    assert action.shape == (3,) and np.all(np.abs(action) <= 1)
    with pytest.raises(ConfigError, match=r"--algo: behaviour trainer: got 'a2c', expected one of"):
        train_behaviour("hopper", algo="a2c", steps=1, seed=0, directory=tmp_path / "x")


def test_metaworld_mixture_with_a_reversed_operator_ranks_it_last(tmp_path):
    from pbrl.data.make import make_metaworld_dataset
    from pbrl.data.teachers import source_quality
    from pbrl.errors import ConfigError

    path = make_metaworld_dataset("button-press", out=tmp_path / "r.h5", seed=0, noise=(0.1,), transitions=1000,
                                  reversed_fraction=0.5)
    ds = TrajectoryDataset(path)
    assert ds.episode_sources == ["scripted+noise0.1", "reversed-scripted+noise0.1"]
    quality = source_quality(ds)
    assert quality[0] > quality[1] and ds.metadata["reversed_fraction"] == 0.5
    good, bad = (ds.episode_returns()[i] for i in (0, 1))
    assert good > 2 * bad  # the reversed operator moves away from the button
    with pytest.raises(ConfigError, match=r"--reversed: fraction: got 1.0, expected a value in \[0, 1\)"):
        make_metaworld_dataset("button-press", out=tmp_path / "x.h5", seed=0, noise=(0.1,), transitions=10,
                               reversed_fraction=1.0)


def test_a_medium_noisy_mixture_is_one_policy_with_noise_at_each_scale(tmp_path):
    """``--mixture medium-noisy``: the medium checkpoint's deterministic action plus N(0, σ²), clipped, an equal share
    of the steps at each σ; at σ = 0 the actions are the policy's own."""
    from pbrl.data.make import BehaviourRun, load_behaviour_policy, make_mujoco_dataset

    path = make_mujoco_dataset("hopper", "medium-noisy", out=tmp_path / "n.h5", seed=0, algo="ppo", medium_steps=512,
                               expert_steps=0, transitions=240, behaviour_dir=tmp_path / "b", noise=(0.0, 0.5))
    ds = TrajectoryDataset(path)
    sources = sorted(set(ds.episode_sources))
    assert sources == ["medium-ppo+noise0", "medium-ppo+noise0.5"] and ds.metadata["noise"] == [0.0, 0.5]
    lengths = ds.episode_lengths
    assert all(lengths[[src == s for src in ds.episode_sources]].sum() >= 120 for s in sources)
    policy = load_behaviour_policy(BehaviourRun(tmp_path / "b" / "hopper-ppo-512-s0", "ppo", "hopper", 0),
                                   deterministic=True)
    for episode, source in zip(ds, ds.episode_sources):
        own = np.stack([policy(o) for o in episode.observations])
        gap = np.abs(np.clip(own, -1, 1) - episode.actions).max()
        assert (gap < 1e-6) if source.endswith("noise0") else (gap > 0.1)


def test_per_episode_win_counts_and_the_ids_a_preference_batch_carries(tmp_path):
    """``episode_win_counts`` against a plain loop over the pairs, per annotator group (ties half to each side,
    skipped pairs nowhere); a batch's ``pair`` and ``episode`` name the rows its segments were gathered from."""
    from pbrl.data.preferences import episode_win_counts, label_groups

    ds = write_episodes(tmp_path / "t.h5", [30, 12, 25, 40])
    prefs = make_preferences(ds, pairs=60, segment=6, seed=3)
    rng = np.random.default_rng(0)
    prefs.label = rng.choice([0.0, 0.5, 1.0, 0.3], len(prefs)).astype(np.float32)
    prefs.skipped = rng.random(len(prefs)) < 0.2
    prefs.group = rng.choice([7, 2], len(prefs)).astype(np.int32)      # two annotator groups: rows 0 (2) and 1 (7)
    wins, comparisons = np.zeros((2, 4)), np.zeros((2, 4))
    for i in range(len(prefs)):
        if prefs.skipped[i]:
            continue
        g = 0 if prefs.group[i] == 2 else 1
        for seg, p in ((prefs.segments_a[i], float(prefs.label[i])), (prefs.segments_b[i], 1 - float(prefs.label[i]))):
            wins[g, seg[0]] += p
            comparisons[g, seg[0]] += 1
    np.testing.assert_array_equal(label_groups(prefs), [2, 7])
    got = episode_win_counts(prefs, ds.num_episodes)
    np.testing.assert_allclose(got[0], wins, rtol=1e-12)
    np.testing.assert_array_equal(got[1], comparisons)
    sampler = PreferenceSampler(ds, prefs, seed=0)
    batch = sampler.sample(16)
    offsets = ds.episode_offsets
    for b in range(16):
        pair = int(batch.pair[b])
        assert not prefs.skipped[pair] and float(batch.label[b]) == float(prefs.label[pair])
        for side, seg in enumerate((prefs.segments_a[pair], prefs.segments_b[pair])):
            assert int(batch.episode[b, side]) == seg[0]
            np.testing.assert_array_equal(batch.obs[b, side, :seg[2]].numpy(),
                                          ds.observations[offsets[seg[0]] + seg[1]:offsets[seg[0]] + seg[1] + seg[2]])


def test_group_rounds_draw_every_group_before_the_start_then_one_group_per_round_and_resume_exactly(tmp_path):
    """Diff-UAPA's iterative alignment: before ``start`` every group, then round r from the r-th group only (the
    last group after the last round); two draws per step under gradient accumulation; a restored state draws alike."""
    import copy

    from pbrl.data.preferences import GroupRounds

    ds = write_episodes(tmp_path / "t.h5", [30, 12, 25, 40])
    prefs = make_preferences(ds, pairs=90, segment=6, seed=3)
    prefs.group = np.repeat([5, 1, 3], 30).astype(np.int32)
    rounds = GroupRounds(ds, prefs, start=2, round_steps=3, draws_per_step=2, seed=0)
    seen = []
    for step in range(14):
        for _ in range(2):
            batch = rounds.sample(8)
            seen.append((step, set(prefs.group[batch.pair.numpy()].tolist())))
    for step, groups in seen:
        expected = {1, 3, 5} if step < 2 else {[1, 3, 5][min((step - 2) // 3, 2)]}
        assert groups <= expected and (step < 2 or groups == expected), (step, groups)
    assert {g for step, groups in seen if step < 2 for g in groups} != set()
    state = copy.deepcopy(rounds.state_dict())
    a = rounds.sample(8)
    rounds.load_state_dict(state)
    b = rounds.sample(8)
    assert torch.equal(a.pair, b.pair) and torch.equal(a.obs, b.obs)


def test_reversal_rounds_relabel_the_same_pairs_per_group_and_flip_only_the_most_uncertain(tmp_path):
    """Diff-UAPA's protocol: R copies of the pairs, group r each; only the chosen share of decided pairs (the
    smallest teacher-score gaps) ever differ from the teacher, each flipped with the rate per group."""
    from pbrl.data.pairing import reversal_rounds

    ds = write_episodes(tmp_path / "t.h5", [60] * 20)
    prefs = make_preferences(ds, pairs=2000, segment=6, seed=3, teacher=Teacher(utility="return"))
    out = reversal_rounds(prefs, 4, share=0.2, rate=0.5, seed=0)
    p = len(prefs)
    assert len(out) == 4 * p and np.array_equal(out.group, np.repeat(np.arange(4), p))
    decided = ~prefs.skipped & (prefs.label != 0.5)
    gap = np.abs(prefs.score_a - prefs.score_b)
    changed = np.zeros(p, bool)
    for r in range(4):
        labels = out.label[r * p:(r + 1) * p]
        np.testing.assert_array_equal(out.segments_a[r * p:(r + 1) * p], prefs.segments_a)
        diff = labels != prefs.label
        assert np.array_equal(labels[diff], 1.0 - prefs.label[diff])
        assert abs(diff.sum() / round(0.2 * decided.sum()) - 0.5) < 0.1          # each chosen pair: rate 0.5
        changed |= diff
    assert changed.sum() <= round(0.2 * decided.sum()) and not (changed & ~decided).any()
    assert gap[changed].max() <= np.sort(gap[decided])[int(round(0.2 * decided.sum())) - 1] + 1e-12


def test_the_cards_label_sentence_names_a_discount_that_was_asked_for():
    from pbrl.data.labelling import describe_labels

    say = lambda teacher: describe_labels(teacher, None, pairs=10, segment=8, rank=0, pairing="uniform",  # noqa: E731
                                          mode="segments", seed=0)
    assert "discount 1 inside a segment" in say(Teacher(utility="regret", critic="iql", discount=1.0))
    assert "discount" not in say(Teacher(utility="regret", critic="iql"))
