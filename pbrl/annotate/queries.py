"""The fixed set of segment pairs an annotation session asks about, and their videos, made before anyone asks.

A session lives beside its labels file: ``LABELS.jsonl`` has ``LABELS.annotate/`` with ``queries.json`` (the
pairs, the dataset's SHA-256 and the options that made them) and ``videos/`` (one WebM per segment). A restart
with the same options reuses both; other options are refused, so a labels file never mixes two query sets.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pbrl.data.pairing import sample_segments
from pbrl.data.preferences import sha256_file
from pbrl.data.store import TrajectoryDataset
from pbrl.errors import ConfigError, DatasetError, describe
from pbrl.io import atomic_write_text

PAIRINGS = ("uniform", "disagreement")
FORMAT = "pbrl.annotate.queries"


@dataclass(frozen=True)
class Query:
    """One pair to label: segments ``a`` and ``b`` as (episode, start, length)."""

    query_id: int
    a: tuple[int, int, int]
    b: tuple[int, int, int]


@dataclass
class QuerySet:
    """What a session asks: ``pairs`` answers per annotator, drawn from ``queries`` (more of them than ``pairs``
    under ``disagreement`` pairing, which picks among them), each segment ``segment`` steps long."""

    dataset: str
    dataset_sha256: str
    env_id: str
    pairs: int
    segment: int
    pairing: str
    seed: int
    candidates: int
    size: int
    fps: int
    queries: list[Query] = field(default_factory=list)

    def by_id(self) -> dict[int, Query]:
        return {q.query_id: q for q in self.queries}

    def segments(self) -> list[tuple[int, int, int]]:
        """Every distinct segment of the set, in first-use order."""
        return list(dict.fromkeys(s for q in self.queries for s in (q.a, q.b)))

    def options(self) -> dict[str, object]:
        """The options that define the set (a restart must give the same)."""
        return {k: v for k, v in asdict(self).items() if k not in ("queries", "dataset")}


def video_name(segment: Sequence[int]) -> str:
    episode, start, length = (int(v) for v in segment)
    return f"e{episode}-s{start}-l{length}.webm"


def make_query_set(trajectories: TrajectoryDataset, *, pairs: int, segment: int, pairing: str = "uniform",
                   seed: int = 0, candidates: int = 4, size: int = 192, fps: int = 30) -> QuerySet:
    """``pairs`` uniform pairs (``uniform``), or ``candidates × pairs`` of them for ``disagreement`` to pick from.
    A pair never shows one segment against itself."""
    if pairing not in PAIRINGS:
        raise ConfigError(describe("--pairing", "pairing", repr(pairing), f"one of {list(PAIRINGS)}"))
    for name, value, low in (("--pairs", pairs, 1), ("--segment", segment, 1), ("--candidates", candidates, 1),
                             ("--size", size, 16), ("--fps", fps, 1)):
        if int(value) < low:
            raise ConfigError(describe(name, name.strip("-"), value, f"an integer >= {low}"))
    count = pairs * (candidates if pairing == "disagreement" else 1)
    rng = np.random.default_rng(seed)
    seg_a = sample_segments(trajectories, count, segment, rng)
    seg_b = sample_segments(trajectories, count, segment, rng)
    same = np.all(seg_a == seg_b, axis=1)
    while same.any():  # redraw the rare self-pairs
        seg_b[same] = sample_segments(trajectories, int(same.sum()), segment, rng)
        same = np.all(seg_a == seg_b, axis=1)
    queries = [Query(i, tuple(int(v) for v in a), tuple(int(v) for v in b)) for i, (a, b) in enumerate(zip(seg_a, seg_b))]
    return QuerySet(str(trajectories.path.resolve()), sha256_file(trajectories.path), trajectories.env_id, int(pairs), int(segment),
                    pairing, int(seed), int(candidates), int(size), int(fps), queries)


def save_query_set(query_set: QuerySet, path: str | os.PathLike) -> Path:
    record = {"format": FORMAT, **asdict(query_set),
              "queries": [{"query_id": q.query_id, "a": list(q.a), "b": list(q.b)} for q in query_set.queries]}
    return atomic_write_text(path, json.dumps(record, indent=1) + "\n")


def load_query_set(path: str | os.PathLike) -> QuerySet:
    path = Path(path)
    try:
        record = json.loads(path.read_text())
        if record.get("format") != FORMAT:
            raise DatasetError(describe(str(path), "format", repr(record.get("format")), repr(FORMAT)))
        queries = [Query(int(q["query_id"]), tuple(q["a"]), tuple(q["b"])) for q in record.pop("queries")]
        record.pop("format")
        return QuerySet(**record, queries=queries)
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetError(describe(str(path), "query set", f"unreadable ({exc.__class__.__name__}: {exc})",
                                    "the queries.json that `pbrl annotate` wrote")) from None


def open_query_set(session_dir: Path, trajectories: TrajectoryDataset, **options) -> QuerySet:
    """The session's query set: made and saved on the first start, reloaded (and checked against ``options``
    and the dataset's content) on a restart."""
    path = session_dir / "queries.json"
    fresh = make_query_set(trajectories, **options) if not path.exists() else None
    if fresh is not None:
        session_dir.mkdir(parents=True, exist_ok=True)
        save_query_set(fresh, path)
        return fresh
    saved = load_query_set(path)
    saved.dataset = str(trajectories.path.resolve())  # where it is now (same content: checked below); workers open it
    wanted = {"dataset_sha256": sha256_file(trajectories.path), "env_id": trajectories.env_id,
              **{k: v for k, v in options.items() if k in saved.options()}}
    for key, value in wanted.items():
        if saved.options()[key] != value:
            raise ConfigError(describe(str(path), key, f"{value!r} now, {saved.options()[key]!r} when the session began",
                                       "the same dataset and options as the first start (or a new --out)"))
    return saved


def segment_frames(trajectories: TrajectoryDataset, segment: tuple[int, int, int] | np.ndarray, *,
                   size: int = 192) -> np.ndarray:
    """``[T, size, size, 3]`` uint8 frames of segment ``(episode, start, length)`` of ``trajectories``: a robot log's
    camera frames where it has cameras (the first, by name; :mod:`pbrl.data.media`), decoded for this segment only
    and scaled to ``size`` square, else drawn from its observations (:func:`pbrl.envs.render.observation_frames`)."""
    from pbrl.envs.render import observation_frames

    episode, start, length = (int(v) for v in segment)
    offsets = trajectories.episode_offsets
    if not 0 <= episode < len(offsets) - 1 or start < 0 or length < 1 or start + length > offsets[episode + 1] - offsets[episode]:
        raise DatasetError(describe(str(trajectories.path), "segment", (episode, start, length),
                                    "an (episode, start, length) inside the dataset's episodes"))
    lo = int(offsets[episode]) + start
    if trajectories.cameras:
        with trajectories.frame_reader() as reader:
            return square_frames(reader.frames(trajectories.cameras[0], np.arange(lo, lo + length)), size)
    return observation_frames(trajectories.env_id, np.asarray(trajectories.observations[lo: lo + length]), size=size)


def square_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """Camera frames ``[T, H, W, C]`` uint8 scaled (bilinear) and padded with black to ``[T, size, size, 3]``, the
    aspect ratio kept; one channel is repeated to three."""
    from PIL import Image

    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    h, w = frames.shape[1:3]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    out = np.zeros((len(frames), size, size, 3), np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    for i, frame in enumerate(frames):
        out[i, top:top + nh, left:left + nw] = np.asarray(Image.fromarray(frame[..., :3]).resize((nw, nh), Image.BILINEAR))
    return out


def _render_segment(job: tuple[str, tuple[int, int, int], int, int, str]) -> str:
    from pbrl.envs.render import write_video

    dataset, segment, size, fps, out = job
    write_video(segment_frames(_worker_dataset(dataset), segment, size=size), out, fps=fps)
    return out


_DATASETS: dict[str, TrajectoryDataset] = {}


def _worker_dataset(path: str) -> TrajectoryDataset:
    if path not in _DATASETS:
        _DATASETS[path] = TrajectoryDataset(path)
    return _DATASETS[path]


def prepare_videos(query_set: QuerySet, video_dir: Path, *, workers: int = 1, progress: bool = True) -> int:
    """Render every segment of ``query_set`` not yet in ``video_dir`` (atomically, so an interrupted run leaves
    whole files only and resumes where it stopped). Returns how many were made."""
    from pbrl.envs.gl import choose_gl
    from pbrl.envs.registry import find_env_spec

    video_dir.mkdir(parents=True, exist_ok=True)
    todo = [(query_set.dataset, seg, query_set.size, query_set.fps, str(video_dir / video_name(seg)))
            for seg in query_set.segments() if not (video_dir / video_name(seg)).exists()]
    if not todo:
        return 0
    spec = find_env_spec(query_set.env_id)  # None: robot logs, shown from their camera frames
    if spec is not None and spec.family != "overcooked":  # Overcooked is drawn without GL
        choose_gl()  # once here, so the workers inherit MUJOCO_GL
    bar = tqdm(total=len(todo), desc="videos", unit="video", disable=not progress)
    if workers <= 1:
        for job in todo:
            _render_segment(job)
            bar.update()
    else:
        import multiprocessing

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for _ in pool.map(_render_segment, todo, chunksize=max(1, len(todo) // (4 * workers))):
                bar.update()
    bar.close()
    return len(todo)
