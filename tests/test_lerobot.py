"""``pbrl data import-lerobot`` / ``export-lerobot``: a LeRobot v3.0 folder made here with pyarrow and PyAV (many
episodes in one parquet file and one MP4 per camera), imported, exported and imported again."""

from __future__ import annotations

import json
import shutil
from fractions import Fraction

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
av = pytest.importorskip("av")

from pbrl.cli import main  # noqa: E402
from pbrl.data.store import TrajectoryDataset  # noqa: E402

FPS = 10
LENGTHS = (12, 9, 15)
CAM = "observation.images.top"
H, W = 32, 48


def frame_image(k: int) -> np.ndarray:
    """Frame k of the camera: a flat colour that changes a lot from frame to frame, plus a gentle gradient."""
    base = np.array([(k * 37) % 180 + 30, (k * 53) % 180 + 30, (k * 71) % 180 + 30], np.int32)
    grad = (np.arange(W)[None, :, None] // 4 + np.arange(H)[:, None, None] // 4).astype(np.int32)
    return np.clip(base + grad, 0, 255).astype(np.uint8)


def write_mp4(path, frames):
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.codec_context.options = {"crf": "8", "g": "5", "bf": "0"}
        for k, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = k, Fraction(1, FPS)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def make_lerobot(root, *, with_video=True, reward=True):
    """A LeRobot v3.0 folder of ``LENGTHS`` episodes: state [4], environment_state [2], action [3], next.reward,
    next.done (episode 1 ends done); all rows in data/chunk-000/file-000.parquet, all frames in one MP4."""
    rng = np.random.default_rng(0)
    n = sum(LENGTHS)
    state = rng.standard_normal((n, 4)).astype(np.float32)
    env_state = rng.standard_normal((n, 2)).astype(np.float32)
    action = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
    rew = rng.standard_normal(n).astype(np.float32)
    ep = np.repeat(np.arange(len(LENGTHS)), LENGTHS)
    fi = np.concatenate([np.arange(k) for k in LENGTHS])
    done = np.zeros(n, bool)
    done[sum(LENGTHS[:2]) - 1] = True
    cols = {
        "observation.state": pa.FixedSizeListArray.from_arrays(pa.array(state.ravel()), 4),
        "observation.environment_state": pa.array(list(env_state)),  # a variable-size list column, also read
        "action": pa.FixedSizeListArray.from_arrays(pa.array(action.ravel()), 3),
        "timestamp": pa.array((fi / FPS).astype(np.float32)),
        "frame_index": pa.array(fi), "episode_index": pa.array(ep), "index": pa.array(np.arange(n)),
        "task_index": pa.array(np.zeros(n, np.int64)), "next.done": pa.array(done),
    }
    if reward:
        cols["next.reward"] = pa.array(rew)
    (root / "data/chunk-000").mkdir(parents=True)
    pq.write_table(pa.table(cols), root / "data/chunk-000/file-000.parquet")
    features = {
        "observation.state": {"dtype": "float32", "shape": [4], "names": ["a", "b", "c", "d"]},
        "observation.environment_state": {"dtype": "float32", "shape": [2], "names": None},
        "action": {"dtype": "float32", "shape": [3], "names": None},
        "next.done": {"dtype": "bool", "shape": [1], "names": None},
        **{k: {"dtype": "int64" if k != "timestamp" else "float32", "shape": [1], "names": None}
           for k in ("timestamp", "frame_index", "episode_index", "index", "task_index")},
    }
    if reward:
        features["next.reward"] = {"dtype": "float32", "shape": [1], "names": None}
    offsets = np.concatenate([[0], np.cumsum(LENGTHS)])
    episodes = {"episode_index": list(range(len(LENGTHS))), "tasks": [["pick the cube"]] * len(LENGTHS),
                "length": list(LENGTHS), "data/chunk_index": [0] * 3, "data/file_index": [0] * 3,
                "dataset_from_index": offsets[:-1].tolist(), "dataset_to_index": offsets[1:].tolist()}
    if with_video:
        features[CAM] = {"dtype": "video", "shape": [H, W, 3], "names": ["height", "width", "channels"]}
        write_mp4(root / f"videos/{CAM}/chunk-000/file-000.mp4", [frame_image(k) for k in range(n)])
        episodes.update({f"videos/{CAM}/chunk_index": [0] * 3, f"videos/{CAM}/file_index": [0] * 3,
                         f"videos/{CAM}/from_timestamp": (offsets[:-1] / FPS).tolist(),
                         f"videos/{CAM}/to_timestamp": (offsets[1:] / FPS).tolist()})
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(pa.table(episodes), root / "meta/episodes/chunk-000/file-000.parquet")
    pq.write_table(pa.table({"task_index": [0], "task": ["pick the cube"]}), root / "meta/tasks.parquet")
    info = {"codebase_version": "v3.0", "robot_type": "so100", "total_episodes": 3, "total_frames": n,
            "total_tasks": 1, "chunks_size": 1000, "data_files_size_in_mb": 100, "video_files_size_in_mb": 200,
            "fps": FPS, "splits": {"train": "0:3"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4" if with_video else None,
            "features": features}
    (root / "meta/info.json").write_text(json.dumps(info))
    return {"state": state, "env_state": env_state, "action": action, "reward": rew, "done": done}


def all_frames(ds):
    with ds.frame_reader() as r:
        return r.frames(ds.cameras[0], np.arange(ds.num_transitions))


def test_import_export_round_trip(tmp_path, capsys):
    src = tmp_path / "lr"
    want = make_lerobot(src)
    out = tmp_path / "x.h5"
    assert main(["data", "import-lerobot", str(src), "--out", str(out)]) == 0
    with TrajectoryDataset(out) as ds:
        assert ds.num_episodes == 3 and ds.episode_lengths.tolist() == list(LENGTHS)
        assert ds.env_id == "lerobot/so100" and ds.metadata["fps"] == FPS
        # observation: observation.environment_state then observation.state (sorted names)
        np.testing.assert_array_equal(ds.observations, np.concatenate([want["env_state"], want["state"]], 1))
        np.testing.assert_array_equal(ds.actions, want["action"])
        np.testing.assert_array_equal(ds.rewards, want["reward"])
        assert ds.terminations[np.cumsum(LENGTHS) - 1].tolist() == [False, True, False]
        np.testing.assert_array_equal(ds.final_observations, ds.observations[np.cumsum(LENGTHS) - 1])
        assert ds.episode_sources == ["pick the cube"] * 3 and ds.splits == {}
        assert ds.cameras == [CAM]
        frames = all_frames(ds)
        written = np.stack([frame_image(k) for k in range(ds.num_transitions)])
        assert frames.shape == written.shape
        err = np.abs(frames.astype(int) - written).mean(axis=(1, 2, 3))
        assert err.max() < 4, err  # lossy, but each step's own frame (neighbours differ by > 30)
        obs, act, rew, term = ds.observations, ds.actions, ds.rewards, ds.terminations

    back_dir = tmp_path / "exported"
    assert main(["data", "export-lerobot", str(out), "--out", str(back_dir)]) == 0
    info = json.loads((back_dir / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["robot_type"] == "so100" and info["fps"] == FPS
    assert info["features"][CAM]["dtype"] == "video" and info["features"][CAM]["shape"] == [H, W, 3]
    assert (back_dir / f"videos/{CAM}/chunk-000/file-000.mp4").exists()
    eps = pq.read_table(back_dir / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e[f"videos/{CAM}/from_timestamp"] for e in eps] == [0.0, 1.2, 2.1]
    stats = json.loads((back_dir / "meta/stats.json").read_text())
    np.testing.assert_allclose(stats["action"]["mean"], act.mean(0), atol=1e-6)
    assert np.array(stats[CAM]["mean"]).shape == (3, 1, 1) and stats[CAM]["count"] == [sum(LENGTHS)]
    again = tmp_path / "again.h5"
    assert main(["data", "import-lerobot", str(back_dir), "--out", str(again)]) == 0
    with TrajectoryDataset(again) as ds:
        np.testing.assert_array_equal(ds.observations, obs)
        np.testing.assert_array_equal(ds.actions, act)
        np.testing.assert_array_equal(ds.rewards, rew)
        np.testing.assert_array_equal(ds.terminations, term)
        np.testing.assert_array_equal(ds.episode_lengths, list(LENGTHS))
        assert ds.env_id == "lerobot/so100" and ds.cameras == [CAM]
        err = np.abs(all_frames(ds).astype(int) - written).mean(axis=(1, 2, 3))
        assert err.max() < 6, err
    capsys.readouterr()


def test_import_without_reward_or_video_and_by_name(tmp_path, monkeypatch):
    src = tmp_path / "plain"
    want = make_lerobot(src, with_video=False, reward=False)
    monkeypatch.chdir(tmp_path)
    assert main(["data", "import-lerobot", str(src), "--out", "plain"]) == 0  # a name: datasets/plain.h5 + card
    assert (tmp_path / "datasets/plain.toml").exists()
    with TrajectoryDataset(tmp_path / "datasets/plain.h5") as ds:
        assert ds.cameras == [] and not ds.rewards.any()
        np.testing.assert_array_equal(ds.actions, want["action"])
    exported = tmp_path / "plain_out"
    assert main(["data", "export-lerobot", "plain", "--out", str(exported), "--fps", "20"]) == 0
    info = json.loads((exported / "meta/info.json").read_text())
    assert info["fps"] == 20 and info["video_path"] is None
    t = pq.read_table(exported / "data/chunk-000/file-000.parquet")
    assert t.column("timestamp").to_pylist()[:3] == pytest.approx([0.0, 0.05, 0.1])


def _bad(tmp_path, capsys, argv, out, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


def test_bad_inputs_are_refused_in_one_line(tmp_path, capsys):
    src = tmp_path / "lr"
    make_lerobot(src)
    out = tmp_path / "bad.h5"

    def variant(name, change):
        d = tmp_path / name
        shutil.copytree(src, d)
        change(d)
        return d

    def set_info(d, **kw):
        info = json.loads((d / "meta/info.json").read_text())
        info.update(kw)
        (d / "meta/info.json").write_text(json.dumps(info))

    def drop_column(d):
        p = d / "data/chunk-000/file-000.parquet"
        pq.write_table(pq.read_table(p).drop_columns(["action"]), p)

    def longer_episode(d):
        p = d / "meta/episodes/chunk-000/file-000.parquet"
        t = pq.read_table(p)
        pq.write_table(t.set_column(t.column_names.index("length"), "length", pa.array([13, 9, 15])), p)

    def image_feature(d):
        info = json.loads((d / "meta/info.json").read_text())
        info["features"]["observation.images.wrist"] = {"dtype": "image", "shape": [8, 8, 3], "names": None}
        (d / "meta/info.json").write_text(json.dumps(info))

    cases = [
        (variant("noinfo", lambda d: (d / "meta/info.json").unlink()), ("meta/info.json", "missing")),
        (variant("v21", lambda d: set_info(d, codebase_version="v2.1")), ("'v2.1'", "convert")),
        (variant("nodata", lambda d: (d / "data/chunk-000/file-000.parquet").unlink()), ("file-000.parquet", "missing")),
        (variant("nocol", drop_column), ("column 'action'", "missing")),
        (variant("lengths", longer_episode), ("episode 0", "13")),
        (variant("novideo", lambda d: shutil.rmtree(d / "videos")), ("video file", "missing")),
        (variant("image", image_feature), ("observation.images.wrist", "image")),
    ]
    for folder, needles in cases:
        _bad(tmp_path, capsys, ["data", "import-lerobot", str(folder), "--out", str(out)], out, *needles)

    good = tmp_path / "good.h5"
    assert main(["data", "import-lerobot", str(src), "--out", str(good)]) == 0
    assert main(["data", "import-lerobot", str(src), "--out", str(good)]) == 2  # an existing file is never replaced
    capsys.readouterr()
    taken = tmp_path / "taken"
    taken.mkdir()
    assert main(["data", "export-lerobot", str(good), "--out", str(taken)]) == 2
    assert "exists" in capsys.readouterr().err and not any(taken.iterdir())
    # a failure while writing (the camera's MP4 gone) leaves nothing behind
    shutil.rmtree(src / "videos")
    _bad(tmp_path, capsys, ["data", "export-lerobot", str(good), "--out", str(tmp_path / "half")],
         tmp_path / "half", "missing")
