"""``pbrl annotate``: a local web page and a small JSON API for labelling segment pairs (standard library only).

API (JSON in and out; errors are 4xx with ``{"error": "<one line>"}`` and leave the labels file as it was):

=====================  ==================================================================================
``GET /api/next``      ``?annotator=NAME``: the next query for NAME (200), or 204 when NAME has answered
                       ``pairs`` queries. A query withdrawn by undo comes back first.
``POST /api/answer``   ``{"query_id", "choice", "annotator"}``; ``choice`` is ``a``, ``b``, ``equal`` or
                       ``skip``. 200 with ``{"saved", "next"}`` once the line is on disk. 400 malformed JSON
                       or field, 404 unknown query, 409 already answered by NAME, 413 body too large, 422
                       unknown choice.
``POST /api/undo``     ``{"query_id", "annotator"}`` (no ``query_id``: NAME's latest answer): appends an undo
                       line. 404 unknown query, 409 nothing to undo.
``GET /api/status``    answers per annotator, the file, the pairing.
``GET /videos/NAME``   the segment videos (WebM; byte ranges served).
=====================  ==================================================================================

A query is ``{"query_id", "a": {"segment", "video"}, "b": {...}, "answered", "total", "upcoming"}``;
``upcoming`` lists the videos of the query most likely next, for the page to fetch while the person watches.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np

from pbrl.annotate.log import LabelLog, RequestError, check_annotator
from pbrl.annotate.queries import Query, QuerySet, video_name
from pbrl.data.store import TrajectoryDataset

MAX_BODY_BYTES = 16 * 1024
PAGE = Path(__file__).with_name("page.html")
_VIDEO = re.compile(r"^/videos/(e\d+-s\d+-l\d+\.webm)$")


class DisagreementPicker:
    """Active querying: a reward-model ensemble (:func:`pbrl.train.critics.fit_reward_ensemble`) refitted in a
    background thread each time ``refit_every`` new decided labels arrived; the next query is the unanswered
    one on which the members' P(a ≻ b) varies most (Christiano et al., 2017). Until ``warmup`` labels exist,
    queries go in their (uniform random) order."""

    def __init__(self, trajectories: TrajectoryDataset, query_set: QuerySet, log: LabelLog, *, warmup: int,
                 refit_every: int = 5, seed: int = 0):
        self.trajectories, self.log, self.seed = trajectories, log, seed
        self.warmup, self.refit_every = max(2, warmup), max(1, refit_every)
        self.seg_a = np.array([q.a for q in query_set.queries], np.int64)
        self.seg_b = np.array([q.b for q in query_set.queries], np.int64)
        self.spread: np.ndarray | None = None   # [Q] std over members of P(a ≻ b); None before the first fit
        self.fitted_on = 0
        self._fitting = threading.Lock()

    def maybe_refit(self) -> None:
        """Start a refit in the background when enough new labels came (never two at once)."""
        seg_a, _, _ = self.log.decided()
        if len(seg_a) < self.warmup or len(seg_a) - self.fitted_on < self.refit_every:
            return
        if self._fitting.acquire(blocking=False):  # held until the thread's fit is done
            threading.Thread(target=self._refit_and_release, daemon=True).start()

    def wait(self) -> None:
        """Until no refit is running (a person's think time, for benchmarks and tests)."""
        with self._fitting:
            pass

    def refit(self) -> None:
        """Refit now, in this thread."""
        with self._fitting:
            self._fit()

    def _refit_and_release(self) -> None:
        try:
            self._fit()
        finally:
            self._fitting.release()

    def _fit(self) -> None:
        from pbrl.data.pairing import preference_spread
        from pbrl.train.critics import fit_reward_ensemble

        seg_a, seg_b, label = self.log.decided()
        if len(seg_a) < self.warmup:
            return
        rewards = fit_reward_ensemble(self.trajectories, seg_a, seg_b, label, self.seed + len(seg_a), steps=200)
        self.spread = preference_spread(self.trajectories, rewards, self.seg_a, self.seg_b)
        self.fitted_on = len(seg_a)

    def order(self, open_ids: list[int]) -> list[int]:
        """``open_ids`` most-disputed first (as given before the first fit)."""
        spread = self.spread
        if spread is None:
            return open_ids
        return sorted(open_ids, key=lambda i: -spread[i])


class Session:
    """A query set, its videos and its labels file: what the HTTP handler serves."""

    def __init__(self, query_set: QuerySet, log: LabelLog, video_dir: Path, *, group: int = 0,
                 default_annotator: str = "", picker: DisagreementPicker | None = None):
        self.query_set, self.log, self.video_dir = query_set, log, video_dir
        self.group, self.default_annotator, self.picker = int(group), default_annotator, picker
        self.by_id = query_set.by_id()
        self._lock: Any = None  # the session folder's lock, held from start_session to close

    def _side(self, segment: tuple[int, int, int]) -> dict[str, Any]:
        return {"segment": list(segment), "video": f"/videos/{video_name(segment)}"}

    def _open(self, annotator: str) -> list[int]:
        """Queries ``annotator`` may be asked next, in the order they will be asked."""
        answered = set(self.log.answered(annotator))
        if len(answered) >= self.query_set.pairs:
            return []
        undone = [q for q in self.log.undone(annotator) if q not in answered]
        rest = [q.query_id for q in self.query_set.queries if q.query_id not in answered and q.query_id not in undone]
        return undone + (self.picker.order(rest) if self.picker is not None else rest)

    def next_query(self, annotator: str) -> dict[str, Any] | None:
        who = check_annotator(annotator)
        order = self._open(who)
        if not order:
            return None
        query: Query = self.by_id[order[0]]
        upcoming = [v for q in order[1:2] for v in (self._side(self.by_id[q].a)["video"], self._side(self.by_id[q].b)["video"])]
        return {"query_id": query.query_id, "a": self._side(query.a), "b": self._side(query.b),
                "answered": len(self.log.answered(who)), "total": self.query_set.pairs, "upcoming": upcoming}

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        answer = self.log.answer(body.get("query_id"), body.get("choice"), body.get("annotator"), self.group)
        if self.picker is not None:
            self.picker.maybe_refit()
        return {"saved": answer.query_id, "next": self.next_query(answer.annotator)}

    def undo(self, body: dict[str, Any]) -> dict[str, Any]:
        qid = self.log.undo(body.get("query_id"), body.get("annotator"))
        return {"undone": qid, "next": self.next_query(str(body.get("annotator")).strip())}

    def close(self) -> None:
        self.log.close()
        if self._lock is not None:
            self._lock.__exit__(None, None, None)
            self._lock = None

    def status(self) -> dict[str, Any]:
        names = self.log.annotators()
        return {"labels": str(self.log.path), "pairs": self.query_set.pairs, "pairing": self.query_set.pairing,
                "env": self.query_set.env_id, "segment": self.query_set.segment,
                "answered": {n: len(self.log.answered(n)) for n in names},
                "default_annotator": self.default_annotator}


class Handler(BaseHTTPRequestHandler):
    session: Session  # set on the subclass made by make_server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes: Nagle + delayed ACK would add 40 ms

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (the base class's name)
        pass  # the labels file is the record; per-request lines would drown the URL the user needs

    # -- replies --------------------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        if status != HTTPStatus.NO_CONTENT:
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store" if content_type == "application/json" else "max-age=3600")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode())

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    # -- routes ---------------------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802  (http.server's name)
        url = urlparse(self.path)
        try:
            if url.path in ("/", "/index.html"):
                self._send(200, PAGE.read_bytes(), "text/html; charset=utf-8")
            elif url.path == "/api/next":
                name = parse_qs(url.query).get("annotator", [None])[0]
                query = self.session.next_query(name)
                self._send(204) if query is None else self._json(200, query)
            elif url.path == "/favicon.ico":
                self._send(204)
            elif url.path == "/api/status":
                self._json(200, self.session.status())
            elif (m := _VIDEO.match(url.path)) and (self.session.video_dir / m.group(1)).is_file():
                self._video(self.session.video_dir / m.group(1))
            else:
                self._error(404, f"{url.path}: no such page or video")
        except RequestError as exc:
            self._error(exc.status, str(exc))

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        url = urlparse(self.path)
        routes = {"/api/answer": self.session.answer, "/api/undo": self.session.undo}
        if url.path not in routes:
            self._error(404, f"{url.path}: no such endpoint (POST /api/answer or /api/undo)")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY_BYTES:
            self.close_connection = True
            self._error(413 if length > MAX_BODY_BYTES else 400,
                        f"request body: got {length} bytes, expected a JSON object of 1 to {MAX_BODY_BYTES} bytes")
            return
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError as exc:
            self._error(400, f"request body: got malformed JSON ({exc}), expected a JSON object")
            return
        if not isinstance(body, dict):
            self._error(400, f"request body: got a JSON {type(body).__name__}, expected an object")
            return
        try:
            self._json(200, routes[url.path](body))
        except RequestError as exc:
            self._error(exc.status, str(exc))

    def _video(self, path: Path) -> None:
        data = path.read_bytes()
        match = re.match(r"bytes=(\d*)-(\d*)$", self.headers.get("Range", ""))
        if match and (match.group(1) or match.group(2)):
            start = int(match.group(1)) if match.group(1) else max(0, len(data) - int(match.group(2)))
            end = int(match.group(2)) if match.group(1) and match.group(2) else len(data) - 1
            end = min(end, len(data) - 1)
            if start > end:
                self._send(416, b"", "video/webm", {"Content-Range": f"bytes */{len(data)}"})
                return
            self._send(206, data[start: end + 1], "video/webm",
                       {"Content-Range": f"bytes {start}-{end}/{len(data)}", "Accept-Ranges": "bytes"})
        else:
            self._send(200, data, "video/webm", {"Accept-Ranges": "bytes"})


def make_server(session: Session, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A threaded HTTP server for ``session`` (``port`` 0 picks a free one: read ``server.server_address``)."""
    handler = type("SessionHandler", (Handler,), {"session": session})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def serve(session: Session, host: str, port: int) -> None:
    server = make_server(session, host, port)
    bound_host, bound_port = server.server_address[:2]
    print(f"pbrl annotate: serving http://{bound_host}:{bound_port}/ ; answers go to {session.log.path} "
          "(Ctrl-C stops; a restart resumes)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()
        session.close()


def session_dir(labels: str | Path) -> Path:
    """``LABELS.jsonl`` keeps its queries and videos in ``LABELS.annotate/``."""
    labels = Path(labels)
    return labels.with_name(labels.stem + ".annotate")


def owns_labels(labels: str | Path) -> bool:
    """Whether an existing ``labels`` file is a session's own: empty, or beside the session folder whose query set
    its rows answer (a restart then replays and checks them line by line). Any other file is not a labels file of
    `pbrl annotate` and is refused before a folder or a video is made."""
    labels = Path(labels)
    return labels.stat().st_size == 0 or (session_dir(labels) / "queries.json").is_file()


def start_session(dataset: str | Path, labels: str | Path, *, pairs: int, segment: int, pairing: str = "uniform",
                  seed: int = 0, candidates: int = 4, size: int = 192, fps: int = 30, group: int = 0,
                  annotator: str = "", workers: int = 1, progress: bool = True) -> Session:
    """Open (or resume) the session of ``labels``: lock its folder (one server per labels file), make or reload
    its query set, replay the answers already given, and render the videos not made yet. Everything that can be
    refused is checked before the first video; a first start refused before then leaves no folder behind."""
    import shutil

    from pbrl.annotate.queries import open_query_set, prepare_videos
    from pbrl.data.registry import load_dataset
    from pbrl.errors import ConfigError, RunLockedError, describe
    from pbrl.io import LockHeld, exclusive_lock

    labels = Path(labels)
    if labels.suffix != ".jsonl":
        raise ConfigError(describe("--out", "labels file", str(labels), "a .jsonl file (the labels format)"))
    trajectories = load_dataset(dataset, preferences=False, option="dataset").trajectories
    folder = session_dir(labels)
    made_folder = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = exclusive_lock(folder, ".server.lock")
    try:
        lock.__enter__()
    except LockHeld as exc:
        raise RunLockedError(describe(str(labels), "session", f"served by {exc.holder}",
                                      "one server per labels file (several annotators share one server)")) from None
    log = None
    try:
        try:
            query_set = open_query_set(folder, trajectories, pairs=pairs, segment=segment, pairing=pairing, seed=seed,
                                       candidates=candidates, size=size, fps=fps)
            log = LabelLog(labels, query_set)  # replays and checks the answers so far, before any video is made
        except BaseException:
            if made_folder:  # nothing of this start is worth keeping: the corrected command starts clean
                shutil.rmtree(folder, ignore_errors=True)
            raise
        prepare_videos(query_set, folder / "videos", workers=workers, progress=progress)
        picker = None
        if pairing == "disagreement":
            picker = DisagreementPicker(trajectories, query_set, log, warmup=max(2, pairs // 10), seed=seed)
            picker.refit()  # labels from before a restart count at once
        session = Session(query_set, log, folder / "videos", group=group, default_annotator=annotator, picker=picker)
    except BaseException:
        if log is not None:
            log.close()
        lock.__exit__(None, None, None)
        raise
    session._lock = lock
    return session
