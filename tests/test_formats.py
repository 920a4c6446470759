"""D4RL files, Minari round trips and human labels in JSON Lines / CSV, with their bad-input errors."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from pbrl.cli import dataset_info, main
from pbrl.data.formats import export_labels, import_labels, read_d4rl
from pbrl.data.pairing import make_preferences
from pbrl.data.store import TrajectoryDataset, write_trajectories
from pbrl.data.teachers import Teacher
from pbrl.errors import DatasetError
from tests.conftest import make_episodes


def d4rl_file(path, n=25, next_obs=True):
    rng = np.random.default_rng(0)
    term = np.zeros(n, bool)
    tout = np.zeros(n, bool)
    term[6] = True      # episode 0: rows 0-6, terminated
    tout[14] = True     # episode 1: rows 7-14, time limit
    term[19] = True     # episode 2: rows 15-19; rows 20-24 end the file unflagged (truncated)
    with h5py.File(path, "w") as f:
        f["observations"] = rng.standard_normal((n, 11))
        f["actions"] = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
        f["rewards"] = rng.standard_normal(n)
        f["terminals"] = term
        f["timeouts"] = tout
        if next_obs:
            f["next_observations"] = rng.standard_normal((n, 11))
        f["infos/qpos"] = rng.standard_normal((n, 6))        # not 1-D: listed, not kept
        f["infos/x_velocity"] = rng.standard_normal(n)
    return path


def test_d4rl_file_loads_with_episode_boundaries(tmp_path):
    path = d4rl_file(tmp_path / "hopper_medium_replay-v2.hdf5")
    episodes, meta = read_d4rl(path)
    assert [len(e) for e in episodes] == [7, 8, 5, 5]
    assert [e.terminated for e in episodes] == [True, False, True, False]
    with h5py.File(path) as f:
        np.testing.assert_allclose(episodes[1].observations, f["observations"][7:15])
        np.testing.assert_allclose(episodes[1].final_observation, f["next_observations"][14], rtol=1e-6)
        np.testing.assert_allclose(episodes[3].infos["x_velocity"], f["infos/x_velocity"][20:25], rtol=1e-6)
    assert meta["skipped_infos"] == ["qpos"]
    out = tmp_path / "imported.h5"
    assert main(["data", "import-d4rl", str(path), "--env", "hopper", "--out", str(out)]) == 0
    with TrajectoryDataset(out) as ds:
        assert ds.episode_lengths.tolist() == [7, 8, 5, 5] and ds.obs_dim == 11 and ds.act_dim == 3
        assert ds.terminations.sum() == 2 and ds.truncations.sum() == 2 and ds.env_id == "Hopper-v5"


def test_d4rl_bad_files_name_the_key(tmp_path):
    path = d4rl_file(tmp_path / "x.hdf5")
    with h5py.File(path, "r+") as f:
        del f["timeouts"]
    with pytest.raises(DatasetError, match="x.hdf5: key 'timeouts': got missing"):
        read_d4rl(path)
    path = d4rl_file(tmp_path / "y.hdf5")
    with h5py.File(path, "r+") as f:
        r = f["rewards"][()][:-2]
        del f["rewards"]
        f["rewards"] = r
    with pytest.raises(DatasetError, match="y.hdf5: 'rewards' length: got 23, expected 25"):
        read_d4rl(path)
    assert main(["data", "import-d4rl", str(path), "--env", "hopper", "--out", str(tmp_path / "z.h5")]) == 2
    assert not (tmp_path / "z.h5").exists()


def test_minari_round_trip_gives_identical_arrays(tmp_path):
    src = write_trajectories(tmp_path / "src.h5", make_episodes([9, 4, 12], obs_dim=11, act_dim=3),
                             env_id="Hopper-v5", behaviour_policy="b", seed=0)
    root = tmp_path / "minari"
    assert main(["data", "export-minari", str(src), "--dataset-id", "pbrl/round-trip-v0", "--root", str(root)]) == 0
    back = tmp_path / "back.h5"
    assert main(["data", "import-minari", "pbrl/round-trip-v0", "--root", str(root), "--env", "hopper",
                 "--out", str(back)]) == 0
    a, b = TrajectoryDataset(src), TrajectoryDataset(back)
    for key in ("observations", "actions", "rewards", "terminations", "truncations", "episode_offsets",
                "final_observations"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
    np.testing.assert_array_equal(a.info("reward_ctrl"), b.info("reward_ctrl"))
    assert b.env_id == "Hopper-v5"


def test_minari_mismatched_spaces_are_refused(tmp_path):
    src = write_trajectories(tmp_path / "src.h5", make_episodes([5]), env_id="Hopper-v5", behaviour_policy="b", seed=0)
    root = tmp_path / "minari"
    assert main(["data", "export-minari", str(src), "--dataset-id", "pbrl/small-v0", "--root", str(root)]) == 0
    with pytest.raises(DatasetError, match=r"minari:pbrl/small-v0: observation_space shape: got \(3,\), expected \(11,\)"):
        from pbrl.data.formats import import_minari

        import_minari("pbrl/small-v0", tmp_path / "out.h5", root=root, env_id="hopper")
    assert not (tmp_path / "out.h5").exists()


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_labels_round_trip(tmp_path, traj_file, suffix):
    ds = TrajectoryDataset(traj_file)
    prefs = make_preferences(ds, pairs=50, segment=4, teacher=Teacher(equal_margin=0.3, skip_threshold=-1.5), seed=0)
    prefs.annotator[:] = "alice"
    prefs.timestamp[:] = "2026-11-23T10:00:00Z"
    path = export_labels(prefs, tmp_path / f"labels{suffix}")
    back = import_labels(path, ds)
    for key in ("segments_a", "segments_b", "label", "group", "skipped", "query"):
        np.testing.assert_array_equal(getattr(back, key), getattr(prefs, key), err_msg=key)
    assert list(back.annotator) == ["alice"] * 50 and back.timestamp[0] == "2026-11-23T10:00:00Z"


ROW = {"query_id": "q1", "a_episode": 0, "a_start": 0, "a_length": 5, "b_episode": 2, "b_start": 10, "b_length": 5,
       "choice": "a", "annotator": "bob", "group": 1, "timestamp": "2026-11-23T10:00:00Z"}


@pytest.mark.parametrize("change, message", [
    ({"choice": "maybe"}, r"labels.jsonl:2: field 'choice': got 'maybe', expected 'a', 'b', 'equal', 'skip' or a probability"),
    ({"choice": 1.5}, r"labels.jsonl:2: field 'choice': got 1.5"),
    ({"a_episode": 9}, r"labels.jsonl:2: field 'a_episode': got 9, expected an episode of traj.h5 \(0 to 3\)"),
    ({"b_start": 48}, r"labels.jsonl:2: segment b: got start 48 length 5 in episode 2, expected a segment inside the episode's 50 steps"),
    ({"a_length": "five"}, r"labels.jsonl:2: field 'a_length': got 'five', expected an integer"),
    ({"choice": None}, r"labels.jsonl:2: field 'choice': got missing"),
])
def test_malformed_label_rows_are_named_and_nothing_is_written(tmp_path, traj_file, change, message):
    rows = [ROW, {**ROW, **change}]
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DatasetError, match=message):
        import_labels(path, TrajectoryDataset(traj_file))
    out = tmp_path / "h.prefs.h5"
    assert main(["data", "import-labels", str(path), "--dataset", str(traj_file), "--out", str(out)]) == 2
    assert not out.exists()


def test_human_labels_import_and_info(tmp_path, traj_file):
    rows = [ROW, {**ROW, "query_id": "q2", "choice": "equal"}, {**ROW, "query_id": "q3", "choice": "skip"},
            {**ROW, "query_id": "q4", "choice": 0.25, "annotator": "carol", "group": 0}]
    path = tmp_path / "labels.csv"
    path.write_text("query_id,a_episode,a_start,a_length,b_episode,b_start,b_length,choice,annotator,group,timestamp\n"
                    + "".join(",".join(str(r[k]) for k in ROW) + "\n" for r in rows))
    out = tmp_path / "h.prefs.h5"
    assert main(["data", "import-labels", str(path), "--dataset", str(traj_file), "--out", str(out)]) == 0
    info = dataset_info(str(out))
    assert info["pairs"] == 4 and info["labelled_pairs"] == 3 and info["skip_fraction"] == 0.25
    assert info["tie_fraction"] == pytest.approx(1 / 3) and info["annotators"] == 2 and info["label_counts"]["skip"] == 1
    bad = tmp_path / "bad.csv"
    bad.write_text("query,a,b\n1,2,3\n")
    with pytest.raises(DatasetError, match=r"bad.csv:1: header: got \['query', 'a', 'b'\]"):
        import_labels(bad, TrajectoryDataset(traj_file))


def test_d4rl_export_round_trip_keeps_every_episode(tmp_path, traj_file, capsys):
    out = tmp_path / "export.hdf5"
    assert main(["data", "export-d4rl", str(traj_file), "--out", str(out)]) == 0
    src = TrajectoryDataset(traj_file)
    with h5py.File(out) as f:
        assert {"observations", "actions", "rewards", "terminals", "timeouts", "next_observations"} <= set(f)
        np.testing.assert_array_equal(f["next_observations"][4], src.observations[5])
        np.testing.assert_array_equal(f["next_observations"][29], src.final_observations[0])
        assert f["terminals"][()].sum() + f["timeouts"][()].sum() == src.num_episodes
    episodes, _ = read_d4rl(out)
    assert len(episodes) == src.num_episodes
    for got, want in zip(episodes, src):
        np.testing.assert_array_equal(got.observations, want.observations)
        np.testing.assert_array_equal(got.rewards, want.rewards)
        np.testing.assert_array_equal(got.final_observation, want.final_observation)
        assert got.terminated == want.terminated
    # an existing --out is refused with one line, and left as it was
    before = out.read_bytes()
    assert main(["data", "export-d4rl", str(traj_file), "--out", str(out)]) == 2
    assert "--out: file" in capsys.readouterr().err and out.read_bytes() == before
