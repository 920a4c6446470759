"""``pbrl data import-rosbag``: tiny ROS 2 bags (MCAP and sqlite3) written here with ``rosbags``, aligned at the
control rate, camera frames in a sidecar, and every bad input refused in one line with nothing written."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import tomllib

pytest.importorskip("rosbags")

from rosbags.rosbag2 import StoragePlugin, Writer  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

from pbrl.cli import main  # noqa: E402
from pbrl.data.rosbag import import_rosbag, media_path, read_mapping  # noqa: E402
from pbrl.data.store import TrajectoryDataset  # noqa: E402
from pbrl.errors import ConfigError, DatasetError  # noqa: E402

TS = get_typestore(Stores.ROS2_HUMBLE)
S = 1_000_000_000
MS = 1_000_000
H, W = 4, 6


def stamp(t: int):
    return TS.types["std_msgs/msg/Header"](stamp=TS.types["builtin_interfaces/msg/Time"](sec=t // S, nanosec=t % S),
                                           frame_id="")


def joint_state(i: int, t: int):
    return TS.types["sensor_msgs/msg/JointState"](header=stamp(t), name=["a", "b"], position=np.array([i, 2.0 * i]),
                                                  velocity=np.array([-1.0 * i, 0.5]), effort=np.zeros(0))


def twist(j: int):
    v = TS.types["geometry_msgs/msg/Vector3"]
    return TS.types["geometry_msgs/msg/Twist"](linear=v(x=float(j), y=0.25, z=0.0), angular=v(x=0.0, y=0.0, z=-j))


def picture(k: int, channels: int) -> np.ndarray:
    """Image k: [H, W, channels] uint8, every pixel distinct and k-dependent."""
    return ((np.arange(H * W * channels).reshape(H, W, channels) + 7 * k) % 256).astype(np.uint8)


def image(k: int, t: int, encoding: str):
    channels = 1 if encoding == "mono8" else 3
    return TS.types["sensor_msgs/msg/Image"](header=stamp(t), height=H, width=W, encoding=encoding, is_bigendian=0,
                                             step=W * channels, data=picture(k, channels).ravel())


def write_bag(path, storage=StoragePlugin.MCAP, *, js=(1000, 50, 40), cmd=((1030, 100, 20),), cams=(),
              reward=None, slow=None):
    """A bag: topic -> (start ms, period ms, count). ``cmd``: runs of /cmd_vel (a gap between runs), ``cams``:
    (topic, encoding, start, period, count), ``slow``: a second JointState topic /slow."""
    msgs = []
    times = [(js[0] + i * js[1]) * MS for i in range(js[2])]
    msgs += [("/joint_states", t, joint_state(i, t)) for i, t in enumerate(times)]
    j = 0
    for start, period, count in cmd:
        for i in range(count):
            msgs.append(("/cmd_vel", (start + i * period) * MS, twist(j)))
            j += 1
    for topic, enc, start, period, count in cams:
        msgs += [(topic, (start + k * period) * MS, image(k, (start + k * period) * MS, enc)) for k in range(count)]
    if reward:
        f32 = TS.types["std_msgs/msg/Float32"]
        msgs += [("/reward", (reward[0] + i * reward[1]) * MS, f32(data=float(i) / 4)) for i in range(reward[2])]
    if slow:
        msgs += [("/slow", (slow[0] + i * slow[1]) * MS, joint_state(i, (slow[0] + i * slow[1]) * MS))
                 for i in range(slow[2])]
    msgs.sort(key=lambda m: m[1])
    with Writer(path, version=9, storage_plugin=storage) as w:
        conns = {}
        for topic, _, msg in msgs:
            if topic not in conns:
                conns[topic] = w.add_connection(topic, msg.__msgtype__, typestore=TS)
        for topic, t, msg in msgs:
            w.write(conns[topic], t, TS.serialize_cdr(msg, msg.__msgtype__))
    return path


MAPPING = """\
rate_hz = {rate}
{extra}
[observation]
"/joint_states" = ["position", "velocity[1]"]
[action]
"/cmd_vel" = ["linear.x", "linear.y", "angular.z"]
"""


def write_map(path, rate="10", extra="", tail=""):
    path.write_text(MAPPING.format(rate=rate, extra=extra) + tail)
    return path


def run(bag, mapping, out):
    return main(["data", "import-rosbag", str(bag), "--map", str(mapping), "--out", str(out)])


def latest(t_ns, start_ms, period_ms):
    """Index of the latest message at or before t of a topic starting at start_ms every period_ms."""
    return (t_ns - start_ms * MS) // (period_ms * MS)


def test_mcap_with_cameras_aligns_at_the_control_rate(tmp_path):
    cams = (("/front/image", "bgr8", 1010, 200, 10), ("/wrist/image", "mono8", 1000, 100, 20))
    bag = write_bag(tmp_path / "pick", cams=cams)
    mapping = write_map(tmp_path / "m.toml", tail='[camera]\nfront = "/front/image"\nwrist = "/wrist/image"\n')
    out = tmp_path / "x.h5"
    assert run(bag, mapping, out) == 0
    # T0 = 1.030 s (the last topic to start: /cmd_vel); T1 = 2.810 s (the first to end: /front/image)
    ticks = 1030 * MS + np.arange(18) * 100 * MS        # 1.03 .. 2.73 (2.83 > T1): 18 ticks, 17 steps
    with TrajectoryDataset(out) as ds:
        assert ds.episode_lengths.tolist() == [17] and ds.obs_dim == 3 and ds.act_dim == 3
        assert ds.env_id == "rosbag/pick" and ds.cameras == ["front", "wrist"]
        assert ds.truncations.sum() == 1 and ds.terminations.sum() == 0
        i = latest(ticks, 1000, 50)
        obs = np.stack([i, 2.0 * i, np.full(18, 0.5)], 1)
        np.testing.assert_array_equal(ds.observations, obs[:-1])
        np.testing.assert_array_equal(ds.final_observations[0], obs[-1])
        j = latest(ticks[:-1], 1030, 100)
        np.testing.assert_array_equal(ds.actions, np.stack([j, np.full(17, 0.25), -j], 1))
        np.testing.assert_array_equal(ds.rewards, np.zeros(17))
        with ds.frame_reader() as fr:
            front = fr.frames("front", np.arange(17))
            wrist = fr.frames("wrist", np.arange(17))
    k = latest(ticks[:-1], 1010, 200)
    np.testing.assert_array_equal(front, np.stack([picture(x, 3)[..., ::-1] for x in k]))
    k = latest(ticks[:-1], 1000, 100)
    np.testing.assert_array_equal(wrist, np.stack([np.repeat(picture(x, 1), 3, 2) for x in k]))
    import h5py

    with h5py.File(media_path(out)) as f:  # only the frames the ticks use, one frame per chunk
        assert f["camera/front"].shape == (9, H, W, 3) and f["camera/front"].chunks == (1, H, W, 3)
        assert f["camera/wrist"].shape == (17, H, W, 3)


def test_sqlite3_episodes_split_at_action_gaps_with_rewards(tmp_path):
    bag = write_bag(tmp_path / "db", StoragePlugin.SQLITE3, js=(1000, 50, 80),
                    cmd=((1030, 100, 10), (3030, 100, 10)), reward=(1000, 50, 80))
    mapping = write_map(tmp_path / "m.toml", extra='episode_gap_s = 0.5\nenv = "rosbag/ur5-pick"\nstamp = "receive"',
                        tail='[reward]\ntopic = "/reward"\nfield = "data"\n')
    out = tmp_path / "y.h5"
    assert run(bag, mapping, out) == 0
    with TrajectoryDataset(out) as ds:
        # spans [1.03, 1.93] and [3.03, 3.93]: ticks 1.03 .. 1.93 (10 ticks, 9 steps) and the same from 3.03
        assert ds.episode_lengths.tolist() == [9, 9] and ds.env_id == "rosbag/ur5-pick" and ds.cameras == []
        for e, start in enumerate((1030, 3030)):
            ticks = start * MS + np.arange(10) * 100 * MS
            rows = slice(int(ds.episode_offsets[e]), int(ds.episode_offsets[e + 1]))
            np.testing.assert_array_equal(ds.observations[rows][:, 0], latest(ticks[:-1], 1000, 50))
            np.testing.assert_array_equal(ds.actions[rows][:, 0], 10 * e + np.arange(9))
            # the reward of step k is the one held at the next tick
            np.testing.assert_array_equal(ds.rewards[rows], latest(ticks[1:], 1000, 50) / 4)


def test_dataset_name_gets_a_card_covering_the_frames(tmp_path, monkeypatch):
    bag = write_bag(tmp_path / "pick", cams=(("/cam", "rgb8", 1000, 100, 20),))
    mapping = write_map(tmp_path / "m.toml", tail='[camera]\nfront = "/cam"\n')
    monkeypatch.chdir(tmp_path)
    assert run(bag, mapping, "robot-pick") == 0
    card = tomllib.loads((tmp_path / "datasets/robot-pick.toml").read_text())
    assert set(card["checksums"]) == {"robot-pick.h5", "robot-pick.media.h5"}
    with TrajectoryDataset(tmp_path / "datasets/robot-pick.h5") as ds, ds.frame_reader() as fr:
        np.testing.assert_array_equal(fr.frames("front", [0])[0], picture(0, 3))


def attempt(capsys, tmp_path, bag, mapping) -> tuple[int, str, list[str]]:
    """Import ``bag`` by ``mapping`` into ``tmp_path/bad.h5``: the exit code, stderr, and every file the attempt left
    (the output, its frames file, any temporary file)."""
    out = tmp_path / "bad.h5"
    code = run(bag, mapping, out)
    err = capsys.readouterr().err
    left = [p.name for p in (out, media_path(out)) if p.exists()]
    left += [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    return code, err, left


def one_line(err: str, *needles: str) -> bool:
    """``err`` is one ``pbrl: error:`` line holding every needle."""
    return err.count("\n") == 1 and err.startswith("pbrl: error: ") and all(n in err for n in needles)


CAM = '[camera]\nfront = "/cam"\n'


@pytest.fixture()
def cam_bag(tmp_path):
    return write_bag(tmp_path / "bag", cams=(("/cam", "rgb8", 1000, 100, 20),), slow=(1000, 1000, 3))


def test_topic_missing_from_the_bag(tmp_path, capsys, cam_bag):
    m = write_map(tmp_path / "m.toml", tail=CAM.replace("/cam", "/camera/image_raw"))
    code, err, left = attempt(capsys, tmp_path, cam_bag, m)
    assert code == 2 and one_line(err, "topic '/camera/image_raw'", "missing from the bag", "'/cmd_vel'"), err
    assert left == []


def test_field_missing_from_the_message(tmp_path, capsys, cam_bag):
    m = write_map(tmp_path / "m.toml", tail=CAM)
    m.write_text(m.read_text().replace('"velocity[1]"', '"velocty"'))
    code, err, left = attempt(capsys, tmp_path, cam_bag, m)
    assert code == 2 and one_line(err, "m.toml", "field 'velocty'", "sensor_msgs/msg/JointState", "'velocity'"), err
    assert left == []
    m.write_text(m.read_text().replace('"velocty"', '"header"'))  # a field that is a message, not a number
    code, err, left = attempt(capsys, tmp_path, cam_bag, m)
    assert code == 2 and one_line(err, "field 'header'", "a number or numeric array"), err
    assert left == []


def test_mismatched_rates(tmp_path, capsys, cam_bag):
    m = write_map(tmp_path / "m.toml", tail=CAM)  # /slow: one message a second, the control rate 10 Hz
    m.write_text(m.read_text().replace('"velocity[1]"]', '"velocity[1]"]\n"/slow" = ["position"]'))
    code, err, left = attempt(capsys, tmp_path, cam_bag, m)
    assert code == 2 and one_line(err, "topic '/slow'", "1 s between messages", "rate_hz = 10",
                                  "max_staleness_s = 0.3 s", "mismatched rates"), err
    assert left == []


@pytest.mark.parametrize("storage", [StoragePlugin.MCAP, StoragePlugin.SQLITE3])
def test_truncated_bag_and_missing_metadata(tmp_path, capsys, storage):
    bag = write_bag(tmp_path / "bag", storage, cams=(("/cam", "rgb8", 1000, 100, 20),))
    m = write_map(tmp_path / "m.toml", tail=CAM)
    store = next(p for p in bag.iterdir() if p.suffix in (".mcap", ".db3"))
    os.truncate(store, store.stat().st_size // 2)
    code, err, left = attempt(capsys, tmp_path, bag, m)
    assert code == 2 and one_line(err, str(bag), "unreadable") and left == [], err
    (bag / "metadata.yaml").unlink()
    code, err, left = attempt(capsys, tmp_path, bag, m)
    assert code == 2 and one_line(err, "metadata.yaml: got missing") and left == [], err
    code, err, left = attempt(capsys, tmp_path, tmp_path / "nowhere", m)
    assert code == 2 and one_line(err, "bag: got missing") and left == [], err


@pytest.mark.parametrize("rate", ["0", "-5", '"fast"', "nan", "true"])
def test_nonsense_rate(tmp_path, capsys, cam_bag, rate):
    code, err, left = attempt(capsys, tmp_path, cam_bag, write_map(tmp_path / "m.toml", rate=rate))
    assert code == 2 and one_line(err, "m.toml: rate_hz: got", "a number > 0") and left == [], err


def test_mapping_errors_are_config_errors(tmp_path, cam_bag):
    with pytest.raises(ConfigError, match="keys: got \\['rate'\\]"):
        read_mapping(write_map(tmp_path / "a.toml", extra="rate = 3"))
    with pytest.raises(ConfigError, match="stamp"):
        read_mapping(write_map(tmp_path / "b.toml", extra='stamp = "gps"'))
    (tmp_path / "c.toml").write_text('rate_hz = 10\n[observation]\n"/joint_states" = "position"\n[action]\n')
    with pytest.raises(ConfigError, match="\\[observation\\] '/joint_states'"):
        read_mapping(tmp_path / "c.toml")
    with pytest.raises(ConfigError, match="--map: file"):
        read_mapping(tmp_path / "none.toml")


def test_unsupported_encoding_and_existing_sidecar(tmp_path, capsys):
    bag = write_bag(tmp_path / "bag", cams=(("/cam", "rgb8", 1000, 100, 20),))
    m = write_map(tmp_path / "m.toml", tail=CAM)
    media_path(tmp_path / "bad.h5").write_bytes(b"someone else's")
    out = tmp_path / "bad.h5"
    assert run(bag, m, out) == 2
    assert "bad.media.h5 (exists)" in capsys.readouterr().err and not out.exists()
    assert media_path(out).read_bytes() == b"someone else's"
    media_path(out).unlink()
    enc = write_bag(tmp_path / "enc", cams=(("/cam", "16UC1", 1000, 100, 20),))
    code, err, left = attempt(capsys, tmp_path, enc, m)
    assert code == 2 and one_line(err, "image encoding: got '16UC1'", "'bgr8'") and left == [], err


def test_a_failed_trajectory_write_leaves_no_sidecar(tmp_path, cam_bag, monkeypatch):
    import pbrl.data.rosbag as rb

    def fail(*a, **k):
        raise DatasetError("disk full")

    monkeypatch.setattr(rb, "write_trajectories", fail)
    m = write_map(tmp_path / "m.toml", tail=CAM)
    with pytest.raises(DatasetError, match="disk full"):
        import_rosbag(cam_bag, m, tmp_path / "x.h5", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag", "m.toml"]
    shutil.rmtree(cam_bag)
