"""ROS 2 bags (rosbag2 folders, MCAP or sqlite3 storage) as pbrl trajectory datasets, read with ``rosbags``.

A robot log is a set of topics, each at its own rate and clock; a trajectory dataset is one observation, action
and reward per control step. A mapping file (TOML) says which message fields make up each, and at what rate::

    rate_hz = 10                   # control rate: one step every 1 / rate_hz seconds (a number > 0)
    env = "rosbag/ur5-pick"        # optional env id of the dataset (default "rosbag/<bag folder name>")
    stamp = "header"               # optional: "header" (default) or "receive", which clock times a message
    episode_gap_s = 1.0            # optional: a gap longer than this in the action topics starts a new episode
                                   #   (default: the whole bag is one episode)
    max_staleness_s = 0.3          # optional: the oldest a held message may be at a tick (default 3 / rate_hz)

    [observation]                  # topic -> fields, concatenated in this order into the observation vector
    "/joint_states" = ["position", "velocity"]
    [action]                       # topic -> fields, concatenated into the action vector
    "/cmd_vel" = ["linear.x", "linear.y", "angular.z"]
    [camera]                       # optional: camera name -> topic of sensor_msgs/msg/Image
    front = "/camera/image_raw"
    [reward]                       # optional (default: every reward 0)
    topic = "/reward"
    field = "data"

A field is a dotted path into the message (``linear.x``, ``pose.pose.position``); ``name[i]`` picks element i of
an array field (``position[0]``). Numbers, booleans and numeric arrays are taken (arrays flattened); a field's
length must stay the same in every message of its topic. Camera images may be ``rgb8``, ``bgr8`` (stored as RGB)
or ``mono8`` (repeated to three channels).

Clocks (``stamp``): with ``"header"`` a message is timed by its ``header.stamp`` where its type has a header (and
the topic's stamps are not all zero), otherwise by the time the bag recorded it; ``"receive"`` always uses the
recorded time. The dataset's metadata ``clocks`` says which clock each topic used.

Alignment rule (zero-order hold). Let ``T0`` be the first time every mapped topic (observation, action, reward
and camera topics) has a message and ``T1`` the last time every one still has one (the earliest of the topics'
last messages). The action topics' messages, split where consecutive ones are more than ``episode_gap_s`` apart,
give the episodes' spans ``[s, e]``, clipped to ``[T0, T1]``. An episode's ticks are ``t_k = s + k / rate_hz``
for every ``t_k <= e``; at each tick every topic contributes its latest message stamped at or before ``t_k``.
Steps are ticks ``0 .. K-2``: observation, action and camera frame at ``t_k``, reward held at ``t_{k+1}`` (the
outcome of the step); the observation at the last tick ``t_{K-1}`` is the episode's ``final_observation``, and the
episode ends truncated (``terminated=False``: a log does not say whether the task ended). Spans with fewer than two
ticks are dropped (the metadata counts them). Each step's ``infos["time_s"]`` is its tick's time in seconds after
the first tick of the bag; the metadata keeps the mapping text, the bag's path and each topic's clock.

Mismatched rates: at no tick may a topic's held message be older than ``max_staleness_s`` (default
``3 / rate_hz``); a topic slower than that, or one that stops for a while, is refused in one line naming the topic,
its gap between messages and the control rate (lower ``rate_hz`` or raise ``max_staleness_s``).

Camera frames are never all in memory: a second pass over the bag writes the frames the ticks use, one message at a
time, into a sidecar HDF5 file ``<out>.media.h5`` (dataset ``camera/<name>``, [N, H, W, 3] uint8, one frame per
chunk) beside the trajectory file, which refers to them (:mod:`pbrl.data.media`). Both files appear complete or not
at all; an existing file is never replaced. Every error is one line (:class:`~pbrl.errors.DatasetError` for the
bag, :class:`~pbrl.errors.ConfigError` for the mapping or the output).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import tomllib

from pbrl.data.media import FrameRef
from pbrl.data.store import Episode, atomic_path, commit_new, write_trajectories
from pbrl.errors import ConfigError, DatasetError, describe
from pbrl.fields import short_repr

KEYS = ("rate_hz", "env", "stamp", "episode_gap_s", "max_staleness_s", "observation", "action", "camera", "reward")
ENCODINGS = {"rgb8": 3, "bgr8": 3, "mono8": 1}
IMAGE_TYPE = "sensor_msgs/msg/Image"
_PART = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)\])?$")
_CAMERA = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class RosbagMapping:
    """A parsed mapping file: ``observation`` / ``action``: topic -> field paths (in order), ``camera``: name ->
    image topic, ``reward``: (topic, field) or None, times in seconds."""

    path: Path
    rate_hz: float
    observation: dict[str, list[str]]
    action: dict[str, list[str]]
    camera: dict[str, str] = field(default_factory=dict)
    reward: tuple[str, str] | None = None
    env: str | None = None
    stamp: str = "header"
    episode_gap_s: float | None = None
    max_staleness_s: float = 0.0

    @property
    def topics(self) -> list[str]:
        """Every mapped topic, each once, in mapping order (observation, action, reward, camera)."""
        names = [*self.observation, *self.action, *([self.reward[0]] if self.reward else []), *self.camera.values()]
        return list(dict.fromkeys(names))

    def fields(self, topic: str) -> list[str]:
        """The numeric fields read from ``topic`` (observation, action and reward ones, each once)."""
        names = [*self.observation.get(topic, []), *self.action.get(topic, [])]
        if self.reward and self.reward[0] == topic:
            names.append(self.reward[1])
        return list(dict.fromkeys(names))


def _positive(where: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(describe(where, key, short_repr(value), "a number > 0"))
    return float(value)


def _topic_fields(where: str, table: str, value: Any) -> dict[str, list[str]]:
    if not isinstance(value, dict) or not value:
        raise ConfigError(describe(where, f"[{table}]", short_repr(value),
                                   'a table of topic = [fields], e.g. "/joint_states" = ["position"]'))
    out = {}
    for topic, names in value.items():
        if (not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names)
                or not all(all(_PART.match(p) for p in n.split(".")) for n in names)):
            raise ConfigError(describe(where, f"[{table}] {topic!r}", short_repr(names),
                                       'a list of field paths, e.g. ["position", "linear.x", "position[0]"]'))
        out[str(topic)] = list(names)
    return out


def read_mapping(path: str | Path) -> RosbagMapping:
    """Parse and check a mapping file (format in the module docstring); ConfigError in one line on any problem."""
    path = Path(path)
    where = str(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(describe("--map", "file", where, "an existing mapping .toml")) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(describe(where, "mapping file", f"unreadable ({type(exc).__name__})", "a TOML file")) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(describe(where, "TOML", f"a syntax error ({exc})", "a valid TOML mapping")) from None
    if unknown := sorted(set(raw) - set(KEYS)):
        raise ConfigError(describe(where, "keys", unknown, f"only {list(KEYS)}"))
    if "rate_hz" not in raw:
        raise ConfigError(describe(where, "rate_hz", "missing", "the control rate in Hz, e.g. rate_hz = 10"))
    rate = _positive(where, "rate_hz", raw["rate_hz"])
    for key in ("observation", "action"):
        if key not in raw:
            raise ConfigError(describe(where, f"[{key}]", "missing", f"a [{key}] table of topic = [fields]"))
    observation = _topic_fields(where, "observation", raw["observation"])
    action = _topic_fields(where, "action", raw["action"])
    camera = raw.get("camera", {})
    if not isinstance(camera, dict) or not all(isinstance(t, str) and t for t in camera.values()) \
            or not all(_CAMERA.match(name) for name in camera):
        raise ConfigError(describe(where, "[camera]", short_repr(camera),
                                   'a table of name = "image topic", names of letters, digits, "_", "-" or "."'))
    reward = raw.get("reward")
    if reward is not None:
        if (not isinstance(reward, dict) or set(reward) != {"topic", "field"}
                or not all(isinstance(v, str) and v for v in reward.values())
                or not all(_PART.match(p) for p in reward["field"].split("."))):
            raise ConfigError(describe(where, "[reward]", short_repr(reward),
                                       'topic = "/reward" and field = "data" (a scalar field)'))
        reward = (reward["topic"], reward["field"])
    stamp = raw.get("stamp", "header")
    if stamp not in ("header", "receive"):
        raise ConfigError(describe(where, "stamp", short_repr(stamp), '"header" or "receive"'))
    env = raw.get("env")
    if env is not None and (not isinstance(env, str) or not env):
        raise ConfigError(describe(where, "env", short_repr(env), "a non-empty env id string"))
    gap = _positive(where, "episode_gap_s", raw["episode_gap_s"]) if "episode_gap_s" in raw else None
    stale = _positive(where, "max_staleness_s", raw["max_staleness_s"]) if "max_staleness_s" in raw else 3.0 / rate
    return RosbagMapping(path=path, rate_hz=rate, observation=observation, action=action, camera=dict(camera),
                         reward=reward, env=env, stamp=stamp, episode_gap_s=gap, max_staleness_s=stale)


def media_path(out: str | Path) -> Path:
    """The sidecar of a trajectory file: ``x.h5`` -> ``x.media.h5`` (same folder)."""
    out = Path(out)
    stem = out.name[: -len(out.suffix)] if out.suffix.lower() in (".h5", ".hdf5") else out.name
    return out.with_name(f"{stem}.media.h5")


# ----------------------------------------------------------------------------------------------- reading the bag


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class _Bag:
    """An open rosbag2 (``rosbags.highlevel.AnyReader``) whose failures become one-line DatasetErrors."""

    def __init__(self, path: Path):
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore

        self.path = path
        where = str(path)
        if not path.exists():
            raise DatasetError(describe(where, "bag", "missing", "a rosbag2 folder (metadata.yaml + .mcap or .db3)"))
        if path.is_dir() and not (path / "metadata.yaml").is_file():
            raise DatasetError(describe(where, "metadata.yaml", "missing",
                                        "a rosbag2 folder (metadata.yaml beside its .mcap or .db3 files)"))
        try:
            self.reader = AnyReader([path], default_typestore=get_typestore(Stores.ROS2_HUMBLE))
            self.reader.open()
        except Exception as exc:  # rosbags and its storage back ends (apsw, zstd, yaml) raise their own types
            raise DatasetError(describe(where, "bag", f"unreadable ({_one_line(exc)})",
                                        "a complete rosbag2 (MCAP or sqlite3 storage)")) from None

    def connections(self, topic: str, mapping: RosbagMapping) -> list[Any]:
        """The bag's connections of ``topic`` (one message type); DatasetError naming the topics if absent."""
        conns = [c for c in self.reader.connections if c.topic == topic]
        if not conns:
            known = sorted({c.topic for c in self.reader.connections})
            raise DatasetError(describe(str(mapping.path), f"topic '{topic}'", f"missing from the bag {self.path}",
                                        f"one of {short_repr(known)}"))
        types = sorted({c.msgtype for c in conns})
        if len(types) > 1:
            raise DatasetError(describe(str(self.path), f"topic '{topic}'", f"messages of types {types}",
                                        "one message type per topic"))
        return conns

    def messages(self, connections: list[Any]) -> Iterator[tuple[Any, int, Any]]:
        """(connection, receive time ns, deserialized message) in the bag's time order."""
        where = str(self.path)
        it = iter(self.reader.messages(connections=connections))
        while True:
            try:
                conn, t, raw = next(it)
            except StopIteration:
                return
            except Exception as exc:  # a truncated or corrupt storage file (struct, apsw, zstd, rosbags errors)
                raise DatasetError(describe(where, "messages", f"unreadable ({_one_line(exc)})",
                                            "a complete rosbag2 (was the recording cut off?)")) from None
            try:
                msg = self.reader.deserialize(raw, conn.msgtype)
            except Exception as exc:
                raise DatasetError(describe(where, f"a message of '{conn.topic}' ({conn.msgtype})",
                                            f"undecodable ({_one_line(exc)})", "CDR messages of the recorded type")) from None
            yield conn, int(t), msg

    def close(self) -> None:
        self.reader.close()


def field_value(msg: Any, path: str, where: str) -> np.ndarray:
    """The numeric value at dotted ``path`` of ``msg`` as a flat float64 array [n] (a scalar: n = 1)."""
    value = msg
    for part in path.split("."):
        m = _PART.match(part)
        name, index = (m.group(1), m.group(2)) if m else (part, None)
        fields = [f for f in getattr(value, "__dataclass_fields__", {}) if f != "__msgtype__"]
        if name not in fields:
            raise DatasetError(describe(where, f"field '{path}'", f"no '{name}' in {getattr(value, '__msgtype__', type(value).__name__)}",
                                        f"one of {fields}" if fields else "a path into the message's fields"))
        value = getattr(value, name)
        if index is not None:
            if not hasattr(value, "__len__") or isinstance(value, str) or int(index) >= len(value):
                raise DatasetError(describe(where, f"field '{path}'", f"index {index} of a value of length "
                                            f"{len(value) if hasattr(value, '__len__') else 'none'}", "an index inside the array"))
            value = value[int(index)]
    if isinstance(value, str) or hasattr(value, "__msgtype__"):
        raise DatasetError(describe(where, f"field '{path}'", f"a {type(value).__name__} value",
                                    "a number or numeric array (name a field inside it)"))
    try:
        arr = np.asarray(value, np.float64).ravel()
    except (TypeError, ValueError):
        raise DatasetError(describe(where, f"field '{path}'", f"a {type(value).__name__} value",
                                    "a number or numeric array")) from None
    return arr


def header_stamp(msg: Any) -> int | None:
    """``header.stamp`` in nanoseconds, or None where the message has no header."""
    header = getattr(msg, "header", None)
    stamp = getattr(header, "stamp", None)
    if stamp is None or not hasattr(stamp, "sec"):
        return None
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def image_layout(msg: Any, where: str) -> tuple[int, int, int, int]:
    """(height, width, channels, step) of a sensor_msgs/Image, checked against its encoding and data size."""
    channels = ENCODINGS.get(msg.encoding)
    if channels is None:
        raise DatasetError(describe(where, "image encoding", repr(msg.encoding), f"one of {sorted(ENCODINGS)}"))
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.asarray(msg.data, np.uint8)
    if h <= 0 or w <= 0 or step < w * channels or data.size < step * h:
        raise DatasetError(describe(where, "image", f"{w}x{h} {msg.encoding}, step {step}, {data.size} bytes",
                                    f"at least height x step = {h * step} bytes"))
    return h, w, channels, step


def image_rgb(msg: Any, where: str) -> np.ndarray:
    """A sensor_msgs/Image as [H, W, 3] uint8 RGB (rgb8 as is, bgr8 reversed, mono8 repeated)."""
    h, w, channels, step = image_layout(msg, where)
    data = np.asarray(msg.data, np.uint8)
    img = data[: step * h].reshape(h, step)[:, : w * channels].reshape(h, w, channels)
    if msg.encoding == "bgr8":
        img = img[..., ::-1]
    elif channels == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img)


@dataclass
class _Topic:
    """What the first pass keeps of one topic: times [M] i8 (sorted), ``order`` [M] (index in bag order of the
    i-th sorted message), values per field [M, n] f8 (sorted), image shape for a camera topic."""

    name: str
    msgtype: str
    clock: str = "receive"
    times: list[int] = field(default_factory=list)
    received: list[int] = field(default_factory=list)
    values: dict[str, list[np.ndarray]] = field(default_factory=dict)
    image_shape: tuple[int, int] | None = None
    order: np.ndarray | None = None
    sorted_times: np.ndarray | None = None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def finish(self, use_header: bool) -> None:
        stamps = np.asarray(self.times, np.int64)
        if not use_header or not len(stamps) or not stamps.any() or not self.clock == "header":
            stamps, self.clock = np.asarray(self.received, np.int64), "receive"
        self.order = np.argsort(stamps, kind="stable")
        self.sorted_times = stamps[self.order]
        self.arrays = {k: np.stack(v)[self.order] for k, v in self.values.items()}
        self.values, self.times, self.received = {}, [], []


def _read_numbers(bag: _Bag, mapping: RosbagMapping, progress: bool) -> dict[str, _Topic]:
    """First pass: every mapped topic's times and numeric fields (camera topics: times and image checks)."""
    from pbrl.io import Progress

    topics: dict[str, _Topic] = {}
    conns = []
    cameras = set(mapping.camera.values())
    for name in mapping.topics:
        cs = bag.connections(name, mapping)
        if name in cameras and cs[0].msgtype != IMAGE_TYPE:
            raise DatasetError(describe(str(mapping.path), f"camera topic '{name}'", cs[0].msgtype,
                                        f"a {IMAGE_TYPE} topic (compressed images are not supported)"))
        topics[name] = _Topic(name, cs[0].msgtype, values={f: [] for f in mapping.fields(name)})
        conns += cs
    total = sum(int(c.msgcount) for c in conns)
    with Progress(total, desc=f"import-rosbag {bag.path.name}: reading", unit="message", enabled=progress) as bar:
        for conn, t, msg in bag.messages(conns):
            top = topics[conn.topic]
            where = f"{bag.path} (topic '{conn.topic}', {conn.msgtype}, message {len(top.received)})"
            first = f"{mapping.path} (topic '{conn.topic}', {conn.msgtype})"
            stamp = header_stamp(msg)
            top.received.append(t)
            top.times.append(t if stamp is None else stamp)
            if stamp is not None:
                top.clock = "header"
            for path, got in top.values.items():
                value = field_value(msg, path, where if got else first)
                if got and value.shape != got[0].shape:
                    raise DatasetError(describe(where, f"field '{path}'", f"{value.size} numbers",
                                                f"{got[0].size}, as in the topic's first message"))
                got.append(value)
            if conn.topic in cameras:
                shape = image_layout(msg, where)[:2]
                if top.image_shape is not None and shape != top.image_shape:
                    raise DatasetError(describe(where, "image size", f"{shape[1]}x{shape[0]}",
                                                f"{top.image_shape[1]}x{top.image_shape[0]}, as in the first image"))
                top.image_shape = shape
            bar.update()
    for top in topics.values():
        if not top.received:
            raise DatasetError(describe(str(bag.path), f"topic '{top.name}'", "no messages",
                                        "at least one message of every mapped topic"))
        top.finish(mapping.stamp == "header")
    if mapping.reward:
        reward = topics[mapping.reward[0]].arrays[mapping.reward[1]]
        if reward.shape[1] != 1:
            raise DatasetError(describe(str(mapping.path), f"reward field '{mapping.reward[1]}'",
                                        f"{reward.shape[1]} numbers per message", "a scalar"))
    return topics


# ----------------------------------------------------------------------------------------------- alignment


def episode_spans(topics: dict[str, _Topic], mapping: RosbagMapping) -> tuple[list[tuple[int, int]], int, int]:
    """The episodes' spans ``[(s, e)]`` in ns (action-topic runs split at gaps > episode_gap_s, clipped to the
    window ``[T0, T1]`` where every topic has messages) and ``(T0, T1)``."""
    t0 = max(int(t.sorted_times[0]) for t in topics.values())
    t1 = min(int(t.sorted_times[-1]) for t in topics.values())
    if t1 <= t0:
        first = max(topics.values(), key=lambda t: t.sorted_times[0])
        raise DatasetError(describe(str(mapping.path), "topics' overlap",
                                    f"none (topic '{first.name}' starts at {t0 / 1e9:.3f} s, after another ends at "
                                    f"{t1 / 1e9:.3f} s)", "a time span in which every mapped topic has messages"))
    actions = np.sort(np.concatenate([topics[a].sorted_times for a in mapping.action]))
    if mapping.episode_gap_s is None:
        runs = [(int(actions[0]), int(actions[-1]))]
    else:
        cut = np.flatnonzero(np.diff(actions) > round(mapping.episode_gap_s * 1e9)) + 1
        runs = [(int(r[0]), int(r[-1])) for r in np.split(actions, cut)]
    return [(max(s, t0), min(e, t1)) for s, e in runs if min(e, t1) > max(s, t0)], t0, t1


def ticks(start: int, end: int, rate_hz: float) -> np.ndarray:
    """Tick times [K] i8 ns: ``start + round(k * 1e9 / rate_hz)`` for every one ``<= end``."""
    k = int(math.floor((end - start) * rate_hz / 1e9)) + 2
    t = start + np.round(np.arange(k) * (1e9 / rate_hz)).astype(np.int64)
    return t[t <= end]


def hold(topic: _Topic, at: np.ndarray, mapping: RosbagMapping, episode: int) -> np.ndarray:
    """Zero-order hold: index [K] (into the topic's sorted messages) of the latest message at or before each time
    in ``at``; DatasetError if one is older than ``max_staleness_s`` (a topic too slow for the control rate)."""
    idx = np.searchsorted(topic.sorted_times, at, side="right") - 1
    age = at - topic.sorted_times[idx]
    worst = int(np.argmax(age))
    if age[worst] > round(mapping.max_staleness_s * 1e9):
        i = int(idx[worst])
        nxt = topic.sorted_times[i + 1] if i + 1 < len(topic.sorted_times) else None
        gap = f"{(nxt - topic.sorted_times[i]) / 1e9:.3g} s between messages" if nxt is not None else \
            f"no message for the last {age[worst] / 1e9:.3g} s"
        raise DatasetError(describe(str(mapping.path), f"topic '{topic.name}' (episode {episode}, {topic.clock} clock)",
                                    f"{gap} at t = {at[worst] / 1e9:.3f} s",
                                    f"at most max_staleness_s = {mapping.max_staleness_s:.3g} s at rate_hz = "
                                    f"{mapping.rate_hz:g} (mismatched rates: lower rate_hz or raise max_staleness_s)"))
    return idx


@dataclass
class Plan:
    """The episodes (frames still to be written) and, per camera, the bag-order indices of the image messages
    they use (sorted, unique: row r of ``camera/<name>`` in the sidecar is message ``frames[name][r]``)."""

    episodes: list[Episode]
    frames: dict[str, np.ndarray]
    dropped: int
    window: tuple[int, int]


def plan_episodes(topics: dict[str, _Topic], mapping: RosbagMapping, sidecar: Path, source: str) -> Plan:
    """Episodes from the first pass by the alignment rule (module docstring): observations [T, obs_dim] f4,
    actions [T, act_dim] f4, rewards [T] f4, FrameRefs into ``sidecar``."""
    spans, t0, t1 = episode_spans(topics, mapping)
    picked: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
    dropped = 0
    for e, (s, end) in enumerate(spans):
        at = ticks(s, end, mapping.rate_hz)
        if len(at) < 2:
            dropped += 1
            continue
        picked.append((at, {name: hold(top, at, mapping, e) for name, top in topics.items()}))
    if not picked:
        raise DatasetError(describe(str(mapping.path), "episodes", f"none of 2 ticks or more ({len(spans)} spans "
                                    f"between {t0 / 1e9:.3f} s and {t1 / 1e9:.3f} s)",
                                    f"action messages spanning at least 1 / rate_hz = {1 / mapping.rate_hz:.3g} s"))
    used = {cam: np.unique(np.concatenate([topics[topic].order[idx[topic][:-1]] for _, idx in picked]))
            for cam, topic in mapping.camera.items()}

    def vector(table: dict[str, list[str]], idx: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([topics[topic].arrays[f][idx[topic]] for topic, fs in table.items() for f in fs],
                              axis=1).astype(np.float32)

    episodes = []
    first = picked[0][0][0]
    for at, idx in picked:
        obs = vector(mapping.observation, idx)
        act = vector(mapping.action, idx)[:-1]
        if mapping.reward:
            top = topics[mapping.reward[0]]
            rewards = top.arrays[mapping.reward[1]][hold(top, at[1:], mapping, len(episodes)), 0].astype(np.float32)
        else:
            rewards = np.zeros(len(at) - 1, np.float32)
        media = {cam: FrameRef(str(sidecar.resolve()), f"camera/{cam}",
                               np.searchsorted(used[cam], topics[topic].order[idx[topic][:-1]]).astype(np.int64))
                 for cam, topic in mapping.camera.items()}
        episodes.append(Episode(observations=obs[:-1], actions=act, rewards=rewards, terminated=False,
                                final_observation=obs[-1], source=source,
                                infos={"time_s": ((at[:-1] - first) / 1e9).astype(np.float32)}, media=media))
    return Plan(episodes, used, dropped, (t0, t1))


# ----------------------------------------------------------------------------------------------- writing


def write_frames(bag: _Bag, topics: dict[str, _Topic], mapping: RosbagMapping, frames: dict[str, np.ndarray],
                 tmp: Path, progress: bool) -> None:
    """Second pass: the image messages ``frames`` names, one at a time, into ``tmp`` (``camera/<name>``
    [N, H, W, 3] uint8, chunks of one frame); memory holds one image, never the camera's stream."""
    from pbrl.io import Progress

    by_topic = {topic: cam for cam, topic in mapping.camera.items()}
    conns = [c for topic in by_topic for c in bag.connections(topic, mapping)]
    total = sum(len(v) for v in frames.values())
    seen = {topic: 0 for topic in by_topic}
    with h5py.File(tmp, "w") as f, Progress(total, desc=f"import-rosbag {bag.path.name}: frames", unit="frame",
                                             enabled=progress) as bar:
        f.attrs["format"] = "pbrl.media"
        f.attrs["source"] = str(bag.path)
        sets, wanted = {}, {}
        for cam, topic in mapping.camera.items():
            h, w = topics[topic].image_shape
            sets[topic] = f.create_dataset(f"camera/{cam}", shape=(len(frames[cam]), h, w, 3), dtype=np.uint8,
                                           chunks=(1, h, w, 3))
            wanted[topic] = {int(m): row for row, m in enumerate(frames[cam])}
        for conn, _, msg in bag.messages(conns):
            i = seen[conn.topic]
            seen[conn.topic] = i + 1
            row = wanted[conn.topic].get(i)
            if row is not None:
                sets[conn.topic][row] = image_rgb(msg, f"{bag.path} topic '{conn.topic}' (message {i})")
                bar.update()
    for topic, n in seen.items():
        if n != len(topics[topic].order):
            raise DatasetError(describe(str(bag.path), f"topic '{topic}'", f"{n} messages on the second read",
                                        f"{len(topics[topic].order)}, as on the first (was the bag changed meanwhile?)"))


def import_rosbag(bag: str | Path, mapping: RosbagMapping | str | Path, out: str | Path, *,
                  progress: bool = True) -> Path:
    """Convert ``bag`` by ``mapping`` into the trajectory file ``out`` (+ ``<out>.media.h5`` with camera frames);
    both appear complete or not at all, and an existing sidecar is never replaced. Returns ``out``."""
    bag, out = Path(bag), Path(out)
    if not isinstance(mapping, RosbagMapping):
        mapping = read_mapping(mapping)
    sidecar = media_path(out)
    if mapping.camera and (sidecar.exists() or sidecar.is_symlink()):
        raise ConfigError(describe("--out", "camera frames file", f"{sidecar} (exists)",
                                   "a new file; an import never replaces one (remove it or pick another --out)"))
    reader = _Bag(bag)
    try:
        topics = _read_numbers(reader, mapping, progress)
        name = bag.name if bag.is_dir() else bag.stem
        plan = plan_episodes(topics, mapping, sidecar, source=f"rosbag:{name}")
        metadata = {"source": "rosbag2", "bag": str(bag.resolve()), "mapping": mapping.path.read_text(),
                    "rate_hz": mapping.rate_hz, "control_rate_hz": mapping.rate_hz, "clocks": {t: top.clock for t, top in topics.items()},
                    "window_ns": list(plan.window), "dropped_spans": plan.dropped,
                    "observation_fields": [f"{t}:{f}" for t, fs in mapping.observation.items() for f in fs],
                    "action_fields": [f"{t}:{f}" for t, fs in mapping.action.items() for f in fs]}
        env_id = mapping.env or f"rosbag/{name}"
        committed = False
        tmp = atomic_path(sidecar) if mapping.camera else None
        try:
            if tmp is not None:
                write_frames(reader, topics, mapping, plan.frames, tmp, progress)
                try:
                    commit_new(tmp, sidecar)
                except FileExistsError:
                    raise ConfigError(describe("--out", "camera frames file", f"{sidecar} (written meanwhile)",
                                               "a new file; an import never replaces one")) from None
                committed = True
            write_trajectories(out, plan.episodes, env_id=env_id, seed=0, metadata=metadata,
                               behaviour_policy=f"robot log {bag.name} (rosbag2)")
        except BaseException:
            if committed:
                sidecar.unlink(missing_ok=True)
            raise
        finally:
            if tmp is not None and tmp.exists():
                tmp.unlink()
    finally:
        reader.close()
    return out
