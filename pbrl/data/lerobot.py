"""LeRobot datasets (format ``v3.0``) in and out, read and written with ``pyarrow`` and PyAV (LeRobot not needed).

Layout of a v3.0 dataset folder (LeRobot's ``src/lerobot/datasets/utils.py``), E episodes, N frames in all:

=====================================================  ==============================================================
path                                                   content
=====================================================  ==============================================================
meta/info.json                                         ``codebase_version`` "v3.0", ``robot_type``, ``fps``, totals,
                                                       ``chunks_size``, ``data_files_size_in_mb``,
                                                       ``video_files_size_in_mb``, ``data_path``, ``video_path``,
                                                       ``splits`` ({name: "start:stop"}), ``features``
                                                       ({name: {dtype, shape, names[, info]}})
meta/tasks.parquet                                     one row per task: ``task`` (string, the pandas index) and
                                                       ``task_index``
meta/episodes/chunk-CCC/file-FFF.parquet               one row per episode: ``episode_index``, ``tasks``, ``length``,
                                                       ``data/chunk_index``, ``data/file_index``,
                                                       ``dataset_from_index``, ``dataset_to_index`` (global ``index``
                                                       range), ``videos/<key>/{chunk_index,file_index,
                                                       from_timestamp,to_timestamp}``, ``stats/<feature>/<stat>``
meta/stats.json                                        {feature: {min, max, mean, std, count, q01, q10, q50, q90, q99}}
data/chunk-CCC/file-FFF.parquet                        one row per frame, many episodes per file: the features
                                                       (``observation.state``, ``action``, ``next.reward``, ...) and
                                                       ``timestamp``, ``frame_index``, ``episode_index``, ``index``,
                                                       ``task_index``
videos/<key>/chunk-CCC/file-FFF.mp4                    the frames of one camera, many episodes one after another
=====================================================  ==============================================================

Import (:func:`read_lerobot`, :func:`import_lerobot`): one pbrl episode per LeRobot episode, in ``episode_index`` order.

- observation: every numeric feature whose name starts with ``observation.`` and is not an image or a video
  (``observation.state``, ``observation.environment_state``, ...), flattened and concatenated in sorted name order;
  the layout is kept in the metadata ``lerobot_observation_features`` ([[name, width], ...]).
- action: ``action`` (flattened). reward: ``next.reward`` where the dataset has it, else 0.
- terminated: ``next.done`` at the episode's last frame where the dataset has it, else False (truncated).
- final observation: the episode's last observation (LeRobot stores none after the last action).
- source: the episode's task strings joined with "; ".
- cameras (features of dtype ``video``) are not decoded: each episode gets ``media[<feature name>] =
  FrameRef(<absolute mp4 path>, "", frames)``, where step t's frame inside the (concatenated) MP4 is
  ``round((from_timestamp + timestamp[t]) * fps)``, LeRobot's own rule (its torchcodec decoder asks for frame
  ``round(ts * average_fps)`` at ``ts = from_timestamp + timestamp``). Features of dtype ``image`` (PNG bytes inside
  the data parquet) are refused in one line: pbrl has no frame reference into a parquet file yet.
- env_id: ``lerobot/<robot_type>``, or ``lerobot/<folder name>`` where ``robot_type`` is empty; ``splits`` of info.json
  that are "start:stop" ranges become pbrl splits (one that covers every episode is dropped).
- metadata: ``fps``, ``lerobot_robot_type``, ``lerobot_codebase_version``, ``lerobot_tasks``, the feature
  names of ``observation.state`` and ``action`` where the dataset gives them (``observation_names``,
  ``action_names``).

Export (:func:`export_lerobot`): a v3.0 folder, written into a temporary sibling and renamed into place at the end
(an existing folder is refused; nothing is left on failure).

- ``observation.state`` float32 [obs_dim], ``action`` float32 [act_dim], ``next.reward`` float32,
  ``next.done`` bool (True at the last frame of a terminated episode), ``timestamp`` = frame_index / fps,
  ``frame_index``, ``episode_index``, ``index``, ``task_index`` (0: one task, ``task``). pbrl's final observations
  and ``infos/*`` have no place in LeRobot's layout and are not written.
- fps: the ``fps`` argument, else the dataset's metadata ``fps``, else 10. ``robot_type``: the argument, else
  the metadata ``lerobot_robot_type``, else the env id without a leading ``lerobot/``.
- cameras: one feature ``observation.images.<camera>`` (a camera whose name already starts with ``observation.`` keeps
  it) of dtype ``video``; frames decoded from the source episode by episode in blocks, encoded H.264 (libx264,
  yuv420p, no B-frames, ``crf`` 18 by default, a keyframe every ``gop`` frames) with frame t of the file at pts
  t / fps; episodes are concatenated into one MP4 per camera until it reaches ``video_files_size_in_mb``, and each
  episode's ``from_timestamp``/``to_timestamp`` are recorded. Frames must have an even height and width (yuv420p).
- data parquet files hold whole episodes (one row group each) up to about ``data_files_size_in_mb``.
- stats.json and the episodes' ``stats/*`` columns: min, max, mean, std (population), count and the quantiles
  q01, q10, q50, q90, q99 (exact, where LeRobot uses a histogram estimate) per feature; for a video, per channel
  (shape [3, 1, 1]) on pixel values / 255, as LeRobot writes them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from pbrl.errors import ConfigError, DatasetError, describe

CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
EPISODES_PATH = EPISODES_DIR + "/" + CHUNK_FILE + ".parquet"
CHUNKS_SIZE = 1000
DATA_FILES_SIZE_IN_MB = 100
VIDEO_FILES_SIZE_IN_MB = 200
DEFAULT_FPS = 10
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
_INDEX_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")


def _pyarrow() -> Any:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(describe("pbrl data *-lerobot", "package pyarrow", "not installed",
                                   "pyarrow (pip install pyarrow) to read and write LeRobot's parquet files")) from None
    return pq


def _av() -> Any:
    try:
        import av
    except ImportError:
        raise ConfigError(describe("pbrl data *-lerobot", "package av", "not installed",
                                   "PyAV (pip install av) to write LeRobot's videos")) from None
    return av


# ----------------------------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class LeRobotImport:
    episodes: list
    env_id: str
    metadata: dict[str, Any]
    splits: dict[str, list[int]]


def _flat(column: Any, n: int, where: str, name: str) -> np.ndarray:
    """A parquet column (scalars or nested fixed or variable lists) as ``[n, width]``."""
    import pyarrow as pa

    arr = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        arr = arr.flatten()
    if arr.null_count:
        raise DatasetError(describe(where, f"column '{name}'", f"{arr.null_count} null values", "a value in every row"))
    values = arr.to_numpy(zero_copy_only=False)
    if n == 0 or len(values) % n:
        raise DatasetError(describe(where, f"column '{name}'", f"{len(values)} values for {n} rows",
                                    "the same number of values in every row"))
    return values.reshape(n, -1)


def _read_parquet(path: Path, columns: Sequence[str] | None, what: str) -> Any:
    pq = _pyarrow()
    if not path.exists():
        raise DatasetError(describe(str(path), "file", "missing", what))
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001  (pyarrow raises several kinds)
        raise DatasetError(describe(str(path), "file", f"unreadable ({type(exc).__name__}: {exc})",
                                    f"a parquet file, {what}")) from None
    for c in columns or ():
        if c not in table.column_names:
            raise DatasetError(describe(str(path), f"column '{c}'", "missing", f"present ({what})"))
    return table


def _load_info(root: Path) -> dict[str, Any]:
    path = root / INFO_PATH
    if not root.is_dir():
        raise DatasetError(describe(str(root), "folder", "missing", "a LeRobot dataset folder"))
    if not path.exists():
        raise DatasetError(describe(str(path), "file", "missing", "a LeRobot dataset folder with meta/info.json"))
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(describe(str(path), "file", f"unreadable ({type(exc).__name__}: {exc})", "JSON")) from None
    if not isinstance(info, dict):
        raise DatasetError(describe(str(path), "content", type(info).__name__, "a JSON object"))
    version = info.get("codebase_version")
    if version != CODEBASE_VERSION:
        raise DatasetError(describe(str(path), "codebase_version", repr(version),
                                    f"'{CODEBASE_VERSION}' (convert a v2.1 dataset first with LeRobot's converter: "
                                    "`python -m lerobot.scripts.convert_dataset_v21_to_v30 --repo-id=... --root=...`, "
                                    "lerobot.datasets.v30.convert_dataset_v21_to_v30 before lerobot 0.5)"))
    for key, kind in (("fps", (int, float)), ("features", dict), ("data_path", str)):
        if not isinstance(info.get(key), kind) or isinstance(info.get(key), bool):
            raise DatasetError(describe(str(path), f"'{key}'", repr(info.get(key)),
                                        f"a {kind[0].__name__ if isinstance(kind, tuple) else kind.__name__}"))
    if not info["fps"] > 0:
        raise DatasetError(describe(str(path), "'fps'", info["fps"], "a positive number"))
    return info


def _tasks(root: Path) -> dict[int, str]:
    path = root / TASKS_PATH
    if not path.exists():
        return {}
    table = _read_parquet(path, ["task_index"], "the task strings and their task_index")
    name = next((c for c in ("task", "__index_level_0__") if c in table.column_names), None)
    if name is None:
        raise DatasetError(describe(str(path), "column 'task'", "missing", "the task strings"))
    return {int(i): str(t) for i, t in zip(table.column("task_index").to_pylist(), table.column(name).to_pylist())}


def _episodes_table(root: Path) -> Any:
    import pyarrow as pa

    files = sorted((root / EPISODES_DIR).glob("*/*.parquet"))
    if not files:
        raise DatasetError(describe(str(root / EPISODES_DIR), "parquet files", "none",
                                    "meta/episodes/chunk-XXX/file-YYY.parquet (LeRobot v3.0 episode metadata)"))
    needed = ["episode_index", "length", "data/chunk_index", "data/file_index", "dataset_from_index",
              "dataset_to_index"]
    tables = []
    for f in files:
        t = _read_parquet(f, needed, "LeRobot's episode metadata")
        tables.append(t.select([c for c in t.column_names if not c.startswith("stats/")]))
    try:
        table = pa.concat_tables(tables, promote_options="default")
    except TypeError:  # pyarrow < 14
        table = pa.concat_tables(tables, promote=True)
    return table.sort_by("episode_index")


def read_lerobot(folder: str | os.PathLike) -> tuple[list, str, dict[str, Any]]:
    """The episodes of a LeRobot v3.0 dataset folder, its env id and metadata (see the module docstring); the
    splits of its info.json are :func:`import_lerobot`'s to write."""
    got = _read(folder)
    return got.episodes, got.env_id, got.metadata


def _read(folder: str | os.PathLike) -> LeRobotImport:
    from pbrl.data.media import FrameRef
    from pbrl.data.store import Episode

    root = Path(folder).resolve()
    info = _load_info(root)
    info_path = root / INFO_PATH
    fps = float(info["fps"])
    features: dict[str, dict] = info["features"]
    images = sorted(k for k, ft in features.items() if isinstance(ft, dict) and ft.get("dtype") == "image")
    if images:
        raise DatasetError(describe(str(info_path), f"feature '{images[0]}'", "dtype 'image' (PNG frames in parquet)",
                                    "numeric features and cameras of dtype 'video' (pbrl reads frames from MP4 "
                                    "files or HDF5 only)"))
    if "action" not in features:
        raise DatasetError(describe(str(info_path), "feature 'action'", "missing", "the actions of every frame"))
    videos = sorted(k for k, ft in features.items() if isinstance(ft, dict) and ft.get("dtype") == "video")
    obs_keys = sorted(k for k, ft in features.items() if k.startswith("observation.") and isinstance(ft, dict)
                      and ft.get("dtype") not in ("video", "image", "string", "language"))
    if not obs_keys:
        raise DatasetError(describe(str(info_path), "observation features", "none",
                                    "at least one numeric feature named observation.* (e.g. observation.state)"))
    if videos and not isinstance(info.get("video_path"), str):
        raise DatasetError(describe(str(info_path), "'video_path'", repr(info.get("video_path")),
                                    "a path template, as the dataset has videos"))
    has_reward, has_done = "next.reward" in features, "next.done" in features
    columns = [*obs_keys, "action", "timestamp", "frame_index", "episode_index", "index"]
    columns += ["next.reward"] * has_reward + ["next.done"] * has_done
    tasks = _tasks(root)
    eps = _episodes_table(root)
    ep_rows = eps.to_pylist()
    if not ep_rows:
        raise DatasetError(describe(str(root / EPISODES_DIR), "episodes", 0, "at least one episode"))
    indices = [int(r["episode_index"]) for r in ep_rows]
    if len(set(indices)) != len(indices):
        dup = next(i for i in indices if indices.count(i) > 1)
        raise DatasetError(describe(str(root / EPISODES_DIR), "episode_index", f"{dup} listed twice",
                                    "one row per episode"))
    total = info.get("total_episodes")
    if isinstance(total, int) and total != len(ep_rows):
        raise DatasetError(describe(str(info_path), "total_episodes", total,
                                    f"{len(ep_rows)}, the rows of meta/episodes"))
    for key in videos:
        for c in ("chunk_index", "file_index", "from_timestamp"):
            if f"videos/{key}/{c}" not in eps.column_names:
                raise DatasetError(describe(str(root / EPISODES_DIR), f"column 'videos/{key}/{c}'", "missing",
                                            f"where camera {key}'s frames lie"))

    # the numbers, one data file at a time (each episode's rows found by episode_index)
    by_file: dict[tuple[int, int], list[dict]] = {}
    for row in ep_rows:
        by_file.setdefault((int(row["data/chunk_index"]), int(row["data/file_index"])), []).append(row)
    arrays: dict[int, dict[str, np.ndarray]] = {}
    for (chunk, file), rows in sorted(by_file.items()):
        path = root / info["data_path"].format(chunk_index=chunk, file_index=file)
        table = _read_parquet(path, columns, "LeRobot frame data")
        n = table.num_rows
        where = str(path)
        cols = {c: _flat(table.column(c), n, where, c) for c in columns}
        ep_col = cols["episode_index"][:, 0].astype(np.int64)
        order = np.lexsort((cols["frame_index"][:, 0], ep_col))
        ep_sorted = ep_col[order]
        for row in rows:
            e = int(row["episode_index"])
            lo, hi = np.searchsorted(ep_sorted, e, "left"), np.searchsorted(ep_sorted, e, "right")
            length = int(row["length"])
            span = int(row["dataset_to_index"]) - int(row["dataset_from_index"])
            if hi - lo != length or span != length:
                raise DatasetError(describe(f"{where} (episode {e})", "frames", hi - lo,
                                            f"{length}, the episode's length in meta/episodes "
                                            f"(dataset_from_index..dataset_to_index spans {span})"))
            sel = order[lo:hi]
            arrays[e] = {c: v[sel] for c, v in cols.items()}

    episodes, widths = [], []
    for row in ep_rows:
        e = int(row["episode_index"])
        a = arrays[e]
        obs = np.concatenate([a[k].astype(np.float32) for k in obs_keys], axis=1)
        widths = [(k, a[k].shape[1]) for k in obs_keys]
        rewards = a["next.reward"][:, 0].astype(np.float32) if has_reward else np.zeros(len(obs), np.float32)
        terminated = bool(a["next.done"][-1, 0]) if has_done else False
        media = {}
        for key in videos:
            chunk, file = int(row[f"videos/{key}/chunk_index"]), int(row[f"videos/{key}/file_index"])
            path = root / info["video_path"].format(video_key=key, chunk_index=chunk, file_index=file)
            if not path.exists():
                raise DatasetError(describe(str(path), "video file", "missing",
                                            f"the frames of camera {key!r} of episode {e}"))
            start = float(row[f"videos/{key}/from_timestamp"])
            frames = np.rint((start + a["timestamp"][:, 0].astype(np.float64)) * fps).astype(np.int64)
            media[key] = FrameRef(file=str(path), key="", frames=frames)
        task_names = row.get("tasks") or []
        if isinstance(task_names, str):
            task_names = [task_names]
        episodes.append(Episode(obs, a["action"].astype(np.float32), rewards, terminated, obs[-1].copy(),
                                source="; ".join(str(t) for t in task_names), media=media))

    robot = str(info.get("robot_type") or "").strip()
    env_id = f"lerobot/{robot or root.name}"
    metadata: dict[str, Any] = {"fps": int(fps) if fps == int(fps) else fps, "control_rate_hz": fps, "lerobot_robot_type": robot,
                                "lerobot_codebase_version": CODEBASE_VERSION,
                                "lerobot_tasks": [tasks[i] for i in sorted(tasks)],
                                "lerobot_observation_features": [list(w) for w in widths]}
    for key, meta in (("observation.state", "observation_names"), ("action", "action_names")):
        names = features.get(key, {}).get("names")
        if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
            metadata[meta] = names
    position = {int(r["episode_index"]): i for i, r in enumerate(ep_rows)}
    splits = {}
    for name, span in (info.get("splits") or {}).items():
        try:
            a_, b_ = (int(x) for x in str(span).split(":"))
        except ValueError:
            continue
        members = [position[i] for i in range(a_, b_) if i in position]
        if members and len(members) < len(ep_rows):
            splits[str(name)] = members
    return LeRobotImport(episodes, env_id, metadata, splits)


def import_lerobot(folder: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Convert a LeRobot v3.0 dataset folder to a pbrl trajectory file ``out`` (camera frames stay in its MP4s)."""
    from pbrl.data.store import write_trajectories

    got = _read(folder)
    return write_trajectories(out, got.episodes, env_id=got.env_id, seed=0, metadata=got.metadata,
                              behaviour_policy=f"LeRobot dataset {Path(folder).resolve().name}",
                              splits=got.splits or None)


# ----------------------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------------------
def _stats(x: np.ndarray) -> dict[str, list]:
    """LeRobot's per-feature statistics of ``x`` [n, d] (or [n] for a scalar feature: shape-(1,) values)."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    out = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0), "count": np.array([len(x)])}
    for q, v in zip(QUANTILES, np.quantile(x, QUANTILES, axis=0)):
        out[f"q{int(q * 100):02d}"] = v
    return {k: v.tolist() for k, v in out.items()}


class _PixelStats:
    """Per-channel statistics of uint8 frames (values / 255, shape [3, 1, 1]) from exact 256-bin histograms."""

    def __init__(self) -> None:
        self.hist = np.zeros((3, 256), np.int64)
        self.frames = 0

    def add(self, frames: np.ndarray) -> None:
        for c in range(3):
            self.hist[c] += np.bincount(frames[..., c].ravel(), minlength=256)
        self.frames += len(frames)

    def merge(self, other: _PixelStats) -> None:
        self.hist += other.hist
        self.frames += other.frames

    def result(self) -> dict[str, list]:
        levels = np.arange(256) / 255.0
        n = self.hist.sum(1)
        mean = (self.hist * levels).sum(1) / n
        std = np.sqrt((self.hist * (levels - mean[:, None]) ** 2).sum(1) / n)
        nz = self.hist > 0
        out = {"min": np.array([levels[np.flatnonzero(r)[0]] for r in nz]),
               "max": np.array([levels[np.flatnonzero(r)[-1]] for r in nz]),
               "mean": mean, "std": std}
        cdf = np.cumsum(self.hist, 1) / n[:, None]
        for q in QUANTILES:
            out[f"q{int(q * 100):02d}"] = np.array([levels[np.searchsorted(cdf[c], q)] for c in range(3)])
        res = {k: v.reshape(3, 1, 1).tolist() for k, v in out.items()}
        res["count"] = [self.frames]
        return res


class _VideoWriter:
    """One camera's MP4 files: episodes appended one after another, a new file past ``max_mb``."""

    def __init__(self, root: Path, key: str, fps: int, crf: int, gop: int, max_mb: float):
        self.root, self.key, self.fps, self.crf, self.gop, self.max_mb = root, key, fps, crf, gop, max_mb
        self.chunk, self.file = 0, 0
        self.container: Any = None
        self.stream: Any = None
        self.count = 0
        self.shape: tuple[int, ...] | None = None

    @property
    def path(self) -> Path:
        return self.root / VIDEO_PATH.format(video_key=self.key, chunk_index=self.chunk, file_index=self.file)

    def start_episode(self) -> None:
        if self.container is not None and self.path.stat().st_size >= self.max_mb * 1024 * 1024:
            self.close()
            self.chunk, self.file = (self.chunk + 1, 0) if self.file == CHUNKS_SIZE - 1 else (self.chunk, self.file + 1)

    def _open(self, h: int, w: int) -> None:
        av = _av()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(self.path), mode="w", format="mp4")
        self.stream = self.container.add_stream("libx264", rate=self.fps)
        self.stream.width, self.stream.height, self.stream.pix_fmt = w, h, "yuv420p"
        self.stream.codec_context.options = {"crf": str(self.crf), "g": str(self.gop), "bf": "0"}
        self.count = 0

    def write(self, frames: np.ndarray, where: str) -> None:
        av = _av()
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise DatasetError(describe(where, "frames", f"shape {frames.shape}", "[T, H, W, 3] RGB"))
        if self.shape is None:
            self.shape = frames.shape[1:]
            if self.shape[0] % 2 or self.shape[1] % 2:
                raise DatasetError(describe(where, "frame size", f"{self.shape[0]}x{self.shape[1]}",
                                            "an even height and width (H.264, yuv420p)"))
        if frames.shape[1:] != self.shape:
            raise DatasetError(describe(where, "frame shape", frames.shape[1:], f"{self.shape}, that of the first frame"))
        if self.container is None:
            self._open(self.shape[0], self.shape[1])
        for img in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img, np.uint8), format="rgb24")
            frame.pts, frame.time_base = self.count, Fraction(1, self.fps)
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
            self.count += 1

    def close(self) -> None:
        if self.container is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
            self.container.close()
            self.container = None

    def info(self) -> dict[str, Any]:
        h, w, _ = self.shape or (0, 0, 3)
        return {"video.height": h, "video.width": w, "video.codec": "h264", "video.pix_fmt": "yuv420p",
                "video.is_depth_map": False, "video.fps": self.fps, "video.channels": 3, "video.g": self.gop,
                "video.crf": self.crf, "has_audio": False, "is_depth_map": False}


def _pandas_index_metadata(index: str, columns: list[tuple[str, str, str]]) -> bytes:
    """The schema metadata pandas writes, so that ``pd.read_parquet`` makes ``index`` the frame's index (LeRobot
    reads meta/tasks.parquet that way: task string -> task_index)."""
    return json.dumps({
        "index_columns": [index],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                            "metadata": {"encoding": "UTF-8"}}],
        "columns": [{"name": n, "field_name": n, "pandas_type": p, "numpy_type": t, "metadata": None}
                    for n, p, t in columns],
        "attributes": {}, "creator": {"library": "pyarrow", "version": "pbrl"}, "pandas_version": "2.0.0",
    }).encode()


def _camera_key(camera: str) -> str:
    return camera if camera.startswith("observation.") else f"observation.images.{camera}"


def export_lerobot(trajectories: Any, out_dir: str | os.PathLike, *, fps: float | None = None,
                   robot_type: str | None = None, task: str | None = None, crf: int = 18, gop: int | None = None,
                   block: int = 64) -> Path:
    """Write ``trajectories`` (a :class:`~pbrl.data.store.TrajectoryDataset`) as a LeRobot v3.0 folder ``out_dir``
    (see the module docstring); refused if ``out_dir`` exists, nothing left behind on failure."""
    out = Path(out_dir)
    if out.exists() or out.is_symlink():
        raise ConfigError(describe("--out", "folder", f"{out} (exists)", "a new folder (an export never replaces one)"))
    meta = trajectories.metadata
    raw_fps = fps if fps is not None else meta.get("fps", meta.get("control_rate_hz", DEFAULT_FPS))
    try:
        fps_value = float(raw_fps)
    except (TypeError, ValueError):
        fps_value = float("nan")
    if not (math.isfinite(fps_value) and fps_value > 0 and fps_value == int(fps_value)):
        raise ConfigError(describe("--fps", "frames per second", repr(raw_fps),
                                   "a positive whole number (LeRobot's fps is an int)"))
    fps_int = int(fps_value)
    if not 0 <= int(crf) <= 51:
        raise ConfigError(describe("--crf", "quality", crf, "0 (lossless luma) to 51"))
    gop = int(gop) if gop else max(2, fps_int)
    robot = robot_type or str(meta.get("lerobot_robot_type") or "") or str(trajectories.env_id).removeprefix("lerobot/")
    task = task or "pbrl export"
    _pyarrow()
    if trajectories.cameras:
        _av()
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        _write(trajectories, tmp, fps_int, robot, task, int(crf), gop, block)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write(ds: Any, root: Path, fps: int, robot: str, task: str, crf: int, gop: int, block: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    obs_dim, act_dim = ds.obs_dim, ds.act_dim
    offsets = ds.episode_offsets
    n_eps = ds.num_episodes
    observations, actions, rewards = ds.observations, ds.actions, ds.rewards
    terminations = ds.terminations
    meta = ds.metadata
    cameras = ds.cameras
    keys = {cam: _camera_key(cam) for cam in cameras}
    if len(set(keys.values())) != len(keys):
        raise DatasetError(describe(str(ds.path), "cameras", cameras, "names that stay distinct as LeRobot features"))

    schema = pa.schema([
        ("observation.state", pa.list_(pa.float32(), obs_dim)), ("action", pa.list_(pa.float32(), act_dim)),
        ("next.reward", pa.float32()), ("next.done", pa.bool_()), ("timestamp", pa.float32()),
        ("frame_index", pa.int64()), ("episode_index", pa.int64()), ("index", pa.int64()), ("task_index", pa.int64()),
    ])
    row_bytes = 4 * (obs_dim + act_dim) + 4 + 1 + 4 + 8 * 4
    data_chunk, data_file, data_rows = 0, 0, 0
    writer: Any = None
    videos = {cam: _VideoWriter(root, keys[cam], fps, crf, gop, VIDEO_FILES_SIZE_IN_MB) for cam in cameras}
    pixel_totals = {cam: _PixelStats() for cam in cameras}
    ep_records: list[dict[str, Any]] = []
    reader = ds.frame_reader() if cameras else None
    try:
        for e in range(n_eps):
            lo, hi = int(offsets[e]), int(offsets[e + 1])
            n = hi - lo
            if writer is not None and (data_rows + n) * row_bytes >= DATA_FILES_SIZE_IN_MB * 1024 * 1024:
                writer.close()
                writer, data_rows = None, 0
                data_chunk, data_file = ((data_chunk + 1, 0) if data_file == CHUNKS_SIZE - 1
                                         else (data_chunk, data_file + 1))
            done = np.zeros(n, bool)
            done[-1] = bool(terminations[hi - 1])
            frame_index = np.arange(n, dtype=np.int64)
            cols = {
                "observation.state": observations[lo:hi].astype(np.float32),
                "action": actions[lo:hi].astype(np.float32),
                "next.reward": rewards[lo:hi].astype(np.float32),
                "next.done": done,
                "timestamp": (frame_index / fps).astype(np.float32),
                "frame_index": frame_index,
                "episode_index": np.full(n, e, np.int64),
                "index": np.arange(lo, hi, dtype=np.int64),
                "task_index": np.zeros(n, np.int64),
            }
            arrays = []
            for field in schema:
                v = cols[field.name]
                if v.ndim == 2:
                    arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(v.ravel(), pa.float32()), v.shape[1]))
                else:
                    arrays.append(pa.array(v, field.type))
            table = pa.Table.from_arrays(arrays, schema=schema)
            if writer is None:
                path = root / DATA_PATH.format(chunk_index=data_chunk, file_index=data_file)
                path.parent.mkdir(parents=True, exist_ok=True)
                writer = pq.ParquetWriter(str(path), schema, compression="snappy")
            writer.write_table(table)
            data_rows += n
            record: dict[str, Any] = {
                "episode_index": e, "tasks": [task], "length": n,
                "data/chunk_index": data_chunk, "data/file_index": data_file,
                "dataset_from_index": lo, "dataset_to_index": hi,
            }
            for cam in cameras:
                video = videos[cam]
                video.start_episode()
                start_frame = video.count if video.container is not None else 0
                stats = _PixelStats()
                for b in range(lo, hi, block):
                    rows = np.arange(b, min(b + block, hi))
                    frames = reader.frames(cam, rows)
                    video.write(frames, f"{ds.path} (camera {cam!r}, episode {e})")
                    stats.add(frames)
                pixel_totals[cam].merge(stats)
                k = keys[cam]
                record.update({f"videos/{k}/chunk_index": video.chunk, f"videos/{k}/file_index": video.file,
                               f"videos/{k}/from_timestamp": start_frame / fps,
                               f"videos/{k}/to_timestamp": (start_frame + n) / fps})
                record.update({f"stats/{k}/{s}": v for s, v in stats.result().items()})
            for name, v in cols.items():
                record.update({f"stats/{name}/{s}": val for s, val in _stats(v).items()})
            record.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
            ep_records.append(record)
    finally:
        if writer is not None:
            writer.close()
        for video in videos.values():
            video.close()
        if reader is not None:
            reader.close()

    # meta/episodes: one file (its rows are small)
    ep_table = pa.Table.from_pylist(ep_records)
    ep_path = root / EPISODES_PATH.format(chunk_index=0, file_index=0)
    ep_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(ep_table, str(ep_path), compression="snappy")

    # meta/tasks.parquet: the task string is the pandas index
    tasks = pa.table({"task_index": pa.array([0], pa.int64()), "task": pa.array([task], pa.string())})
    tasks = tasks.replace_schema_metadata({b"pandas": _pandas_index_metadata(
        "task", [("task_index", "int64", "int64"), ("task", "unicode", "object")])})
    pq.write_table(tasks, str(root / TASKS_PATH))

    # meta/stats.json over the whole dataset
    n_all = ds.num_transitions
    done_all = np.zeros(n_all, bool)
    done_all[offsets[1:] - 1] = terminations[offsets[1:] - 1]
    frame_all = np.arange(n_all, dtype=np.int64) - np.repeat(offsets[:-1], np.diff(offsets))
    stats = {"observation.state": _stats(observations), "action": _stats(actions), "next.reward": _stats(rewards),
             "next.done": _stats(done_all), "timestamp": _stats((frame_all / fps).astype(np.float32)),
             "frame_index": _stats(frame_all), "episode_index": _stats(np.repeat(np.arange(n_eps), np.diff(offsets))),
             "index": _stats(np.arange(n_all)), "task_index": _stats(np.zeros(n_all))}
    for cam in cameras:
        stats[keys[cam]] = pixel_totals[cam].result()
    (root / STATS_PATH).write_text(json.dumps(stats, indent=2))

    # meta/info.json
    names = meta.get("observation_names")
    act_names = meta.get("action_names")
    features: dict[str, Any] = {
        "observation.state": {"dtype": "float32", "shape": [obs_dim],
                              "names": names if isinstance(names, list) and len(names) == obs_dim else None},
        "action": {"dtype": "float32", "shape": [act_dim],
                   "names": act_names if isinstance(act_names, list) and len(act_names) == act_dim else None},
        "next.reward": {"dtype": "float32", "shape": [1], "names": None},
        "next.done": {"dtype": "bool", "shape": [1], "names": None},
    }
    for cam in cameras:
        h, w, c = videos[cam].shape or (0, 0, 3)
        features[keys[cam]] = {"dtype": "video", "shape": [h, w, c], "names": ["height", "width", "channels"],
                               "info": videos[cam].info()}
    features.update({
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    })
    # LeRobot's splits are "start:stop" ranges: pbrl's contiguous ones are kept, "train" is every episode unless
    # the dataset has its own train split (a non-contiguous one is then left out)
    splits = {} if "train" in ds.splits else {"train": f"0:{n_eps}"}
    for name, members in ds.splits.items():
        m = np.sort(np.asarray(members, np.int64))
        if len(m) and np.array_equal(m, np.arange(m[0], m[-1] + 1)):
            splits[str(name)] = f"{int(m[0])}:{int(m[-1]) + 1}"
    info = {
        "codebase_version": CODEBASE_VERSION, "robot_type": robot or None, "total_episodes": n_eps,
        "total_frames": n_all, "total_tasks": 1, "chunks_size": CHUNKS_SIZE,
        "data_files_size_in_mb": DATA_FILES_SIZE_IN_MB, "video_files_size_in_mb": VIDEO_FILES_SIZE_IN_MB,
        "fps": fps, "splits": splits, "data_path": DATA_PATH, "video_path": VIDEO_PATH if cameras else None,
        "features": features,
    }
    (root / INFO_PATH).write_text(json.dumps(info, indent=4))
