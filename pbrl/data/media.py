"""Camera frames of robot datasets, kept as references and decoded on demand.

A robot log's images are far larger than its numbers (a 1 GB robomimic file is mostly ``agentview_image``), so a
pbrl trajectory file never copies them: for each camera and step it records *where* the frame is, and
:class:`FrameReader` decodes the frames a caller asks for (never all of them at once).

Schema (inside the trajectory HDF5, see :mod:`pbrl.data.store`); N steps, C clips of one camera:

=========================  ============  ===============================================================
key                        shape / dtype  meaning
=========================  ============  ===============================================================
media/<camera>/clip        [N] i4        which clip holds step i's frame (index into the ``clips`` attr)
media/<camera>/frame       [N] i8        the frame's index inside that clip
=========================  ============  ===============================================================

``media/<camera>`` attribute ``clips``: a JSON list of ``[file, key]`` pairs. ``file`` is relative to the trajectory
file's folder (``..`` allowed) or absolute; ``key`` is the HDF5 dataset inside it (frames ``[T, H, W, C]`` uint8,
row = frame index) or ``""`` for a video file (MP4 / MKV / WebM, decoded with PyAV; frame index = presentation
order). A dataset card's ``[checksums]`` covers every referenced file (:func:`media_files`), so a changed video or
source HDF5 is refused on load like a changed trajectory file.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pbrl.errors import DatasetError, describe


@dataclass
class FrameRef:
    """Where the frames of one camera in one episode live: in ``file`` (an absolute path while importing), at HDF5
    dataset ``key`` (``""``: ``file`` is a video), frame ``frames[t]`` for step t, ``frames`` [T] int64."""

    file: str
    key: str
    frames: np.ndarray


def write_media(f: h5py.File, episodes: Sequence[Any], folder: Path) -> None:
    """The ``media/*`` groups of ``episodes`` (each with ``.media``: camera -> :class:`FrameRef`) in the open
    trajectory file ``f``, whose folder is ``folder`` (files are stored relative to it where they can be)."""
    cameras = sorted(episodes[0].media) if episodes else []
    for i, ep in enumerate(episodes):
        if sorted(ep.media) != cameras:
            raise DatasetError(describe(f"episode {i}", "cameras", sorted(ep.media), f"{cameras}, those of episode 0"))
        for cam, ref in ep.media.items():
            if len(ref.frames) != len(ep):
                raise DatasetError(describe(f"episode {i}", f"camera {cam!r} frames", len(ref.frames),
                                            f"{len(ep)}, one per step"))
    for cam in cameras:
        clips: dict[tuple[str, str], int] = {}
        clip_ids, frames = [], []
        for ep in episodes:
            ref = ep.media[cam]
            stored = stored_path(ref.file, folder)
            clip = clips.setdefault((stored, ref.key), len(clips))
            clip_ids.append(np.full(len(ep), clip, np.int32))
            frames.append(np.asarray(ref.frames, np.int64))
        group = f.create_group(f"media/{cam}")
        group.attrs["clips"] = json.dumps([list(k) for k in clips])
        group.create_dataset("clip", data=np.concatenate(clip_ids), compression="gzip")
        group.create_dataset("frame", data=np.concatenate(frames), compression="gzip")


def stored_path(file: str, folder: Path) -> str:
    """``file`` relative to ``folder`` where both are on one drive (a dataset moved with its media keeps working)."""
    try:
        return os.path.relpath(Path(file).resolve(), Path(folder).resolve())
    except ValueError:  # another drive (Windows)
        return str(Path(file).resolve())


def clip_table(f: h5py.File, camera: str) -> list[tuple[str, str]]:
    return [(str(a), str(b)) for a, b in json.loads(f[f"media/{camera}"].attrs["clips"])]


def media_files(trajectory_path: str | os.PathLike) -> list[str]:
    """Every file the trajectory file's frames refer to, as stored (relative to its folder where they can be)."""
    with h5py.File(trajectory_path, "r") as f:
        if "media" not in f:
            return []
        return sorted({file for cam in f["media"] for file, _ in clip_table(f, cam)})


class FrameReader:
    """Decodes the frames of a trajectory file's cameras on demand, keeping at most ``open_files`` files open.

    ``frames(camera, rows)`` -> ``[len(rows), H, W, C]`` uint8 for global step indices ``rows``. Videos are decoded
    from the keyframe before the first frame asked for up to the last one (one pass per call), HDF5 frames are read
    row by row: memory is bounded by what one call asks for, never the dataset."""

    def __init__(self, trajectory_path: str | os.PathLike, open_files: int = 8):
        self.path = Path(trajectory_path)
        self.open_files = open_files
        self._handles: OrderedDict[str, Any] = OrderedDict()
        with h5py.File(self.path, "r") as f:
            self.cameras = sorted(f["media"]) if "media" in f else []
            self._clips = {cam: clip_table(f, cam) for cam in self.cameras}
            self._clip = {cam: f[f"media/{cam}/clip"][()] for cam in self.cameras}
            self._frame = {cam: f[f"media/{cam}/frame"][()] for cam in self.cameras}

    def resolve(self, file: str) -> Path:
        p = Path(file)
        return p if p.is_absolute() else self.path.parent / p

    def _open(self, file: str, kind: str) -> Any:
        if file in self._handles:
            self._handles.move_to_end(file)
            return self._handles[file]
        path = self.resolve(file)
        if not path.exists():
            raise DatasetError(describe(str(path), "media file", "missing", f"the frames {self.path.name} refers to"))
        try:
            handle = h5py.File(path, "r") if kind == "hdf5" else _open_video(path)
        except (OSError, ValueError) as exc:
            raise DatasetError(describe(str(path), "media file", f"unreadable ({type(exc).__name__}: {exc})",
                                        "an HDF5 file or a video PyAV can decode")) from None
        self._handles[file] = handle
        while len(self._handles) > self.open_files:
            _, old = self._handles.popitem(last=False)
            old.close()
        return handle

    def frames(self, camera: str, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        if camera not in self._clips:
            raise DatasetError(describe(str(self.path), "camera", repr(camera), f"one of {self.cameras}"))
        rows = np.asarray(rows, np.int64)
        clip, frame = self._clip[camera][rows], self._frame[camera][rows]
        out: list[np.ndarray | None] = [None] * len(rows)
        for c in np.unique(clip):
            file, key = self._clips[camera][int(c)]
            where = np.flatnonzero(clip == c)
            wanted = frame[where]
            if key:
                data = self._open(file, "hdf5")
                if key not in data:
                    raise DatasetError(describe(str(self.resolve(file)), f"dataset '{key}'", "missing",
                                                f"the frames of camera {camera!r}"))
                # one read of the rows asked for (h5py takes increasing indices), then back in the asked order
                unique, back = np.unique(wanted, return_inverse=True)
                block = data[key][unique[0]:unique[-1] + 1] if unique[-1] - unique[0] + 1 == len(unique) \
                    else data[key][unique]
                images = list(block[back])
            else:
                images = _decode_video(self._open(file, "video"), wanted, self.resolve(file))
            for w, img in zip(where, images):
                out[int(w)] = np.asarray(img, np.uint8)
        return np.stack(out) if len(out) else np.zeros((0, 0, 0, 3), np.uint8)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_video(path: Path) -> Any:
    import av

    try:
        return av.open(str(path))
    except av.error.FFmpegError as exc:
        raise ValueError(str(exc)) from None


def _decode_video(container: Any, wanted: np.ndarray, path: Path) -> list[np.ndarray]:
    """Frames ``wanted`` (indices in presentation order, constant frame rate) of an open PyAV container."""
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate
    if not rate:
        raise DatasetError(describe(str(path), "video frame rate", "unknown", "a constant-rate video"))
    start = int(stream.start_time or 0)
    tb = stream.time_base
    first, last = int(wanted.min()), int(wanted.max())
    # seek to the keyframe at or before the first frame, then decode forward to the last one
    container.seek(start + int(first / rate / tb), stream=stream, backward=True, any_frame=False)
    got: dict[int, np.ndarray] = {}
    need = set(int(i) for i in wanted)
    for frame in container.decode(stream):
        index = int(round(float((frame.pts - start) * tb * rate)))
        if index in need:
            got[index] = frame.to_ndarray(format="rgb24")
        if index >= last:
            break
    missing = sorted(need - set(got))
    if missing:
        raise DatasetError(describe(str(path), "video frames", f"none at index {missing[0]}",
                                    f"frames 0 to {stream.frames - 1 if stream.frames else '?'}"))
    return [got[int(i)] for i in wanted]
