"""The answers file of an annotation session: append-only JSON Lines in the labels format of
:mod:`pbrl.data.formats`, so ``pbrl data import-labels`` reads it as it is.

- Every answer is one ``os.write`` of one whole line to a descriptor opened with ``O_APPEND``, then ``fsync``:
  it is on disk before the page hears "saved", and lines of concurrent writers never interleave.
- Nothing is rewritten: an undo is a new line ``{"query_id", "annotator", "undo": true}``.
- On start the file is replayed to rebuild who answered what, and every line is checked against the query
  set; a line the server did not write (another query set, a torn last line) stops the start with its line
  number, before anything is appended.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pbrl.annotate.queries import Query, QuerySet
from pbrl.data.formats import control_characters
from pbrl.errors import DatasetError, describe

CHOICES = ("a", "b", "equal", "skip")
LABEL_OF = {"a": 1.0, "b": 0.0, "equal": 0.5}
MAX_ANNOTATOR_CHARS = 64


class RequestError(Exception):
    """An answer the log refuses, with the HTTP status the server gives it (the file is left as it was)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Answer:
    query_id: int
    choice: str
    annotator: str
    group: int
    timestamp: str


def answer_line(query: Query, choice: str, annotator: str, group: int, timestamp: str) -> dict[str, Any]:
    """One row of the labels format for ``query``."""
    return {"query_id": query.query_id, "a_episode": query.a[0], "a_start": query.a[1], "a_length": query.a[2],
            "b_episode": query.b[0], "b_start": query.b[1], "b_length": query.b[2], "choice": choice,
            "annotator": annotator, "group": group, "timestamp": timestamp}


def check_annotator(value: Any) -> str:
    """The annotator's name of a request, stripped; 400 for no name, a long one, or one with control characters
    or line breaks (it would break the labels' agreement table and every log line it is printed in)."""
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_ANNOTATOR_CHARS:
        raise RequestError(400, describe("request", "field 'annotator'", repr(value)[:80],
                                         f"a non-empty name of at most {MAX_ANNOTATOR_CHARS} characters"))
    bad = control_characters(value.strip())
    if bad:
        raise RequestError(400, describe("request", "field 'annotator'", f"{value!r:.80} (control character "
                                         f"{', '.join(bad)})", "a name without control characters or line breaks"))
    return value.strip()


class LabelLog:
    """The session's answers: the file on disk and, in memory, each annotator's live answers in order."""

    def __init__(self, path: str | os.PathLike, query_set: QuerySet):
        self.path = Path(path)
        self.queries = query_set.by_id()
        self._lock = threading.Lock()
        self._live: dict[str, dict[int, Answer]] = {}   # annotator -> query -> answer (insertion = answer order)
        self._undone: dict[str, list[int]] = {}         # annotator -> withdrawn, not answered again (oldest first)
        self._replay()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def close(self) -> None:
        os.close(self._fd)

    # -- reading ------------------------------------------------------------------------------------------
    def _replay(self) -> None:
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            line = raw.count(b"\n") + 1
            raise DatasetError(describe(f"{self.path}:{line}", "last line", "cut short (no newline: the writer stopped "
                                        "mid-line, so that answer was never confirmed)",
                                        "whole lines: delete the partial last line and start again"))
        for n, text in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
            if not text.strip():
                continue
            where = f"{self.path}:{n}"
            try:
                row = json.loads(text)
                if not isinstance(row, dict):
                    raise ValueError("not an object")
                if row.get("undo") is True:
                    self._withdraw(self._query(row.get("query_id")).query_id, check_annotator(row.get("annotator")))
                    continue
                query = self._query(row.get("query_id"))
                expected = answer_line(query, row.get("choice"), row.get("annotator"), row.get("group"), row.get("timestamp"))
                if {k: row.get(k) for k in expected} != expected or row.get("choice") not in CHOICES:
                    raise ValueError("segments or choice differ from the session's query")
                self._record(Answer(query.query_id, row["choice"], check_annotator(row["annotator"]), int(row["group"]),
                                    str(row["timestamp"])))
            except (ValueError, RequestError, TypeError) as exc:
                raise DatasetError(describe(where, "label row", f"{text[:120]!r} ({exc})",
                                            "a row this session's server wrote for its queries (same --out, same "
                                            "query set)")) from None

    def _query(self, value: Any) -> Query:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise RequestError(400, describe("request", "field 'query_id'", repr(value)[:80], "a query id (an integer)"))
        try:
            query = self.queries.get(int(value))
        except ValueError:
            query = None
        if query is None:
            raise RequestError(404, describe("request", "field 'query_id'", repr(value)[:80],
                                             f"a query of this session (0 to {len(self.queries) - 1})"))
        return query

    def _record(self, answer: Answer) -> None:
        live = self._live.setdefault(answer.annotator, {})
        if answer.query_id in live:
            raise RequestError(409, describe("request", "query", f"{answer.query_id} already answered by "
                                             f"{answer.annotator!r}", "an unanswered query (undo first to change it)"))
        live[answer.query_id] = answer
        undone = self._undone.get(answer.annotator, [])
        if answer.query_id in undone:
            undone.remove(answer.query_id)

    def _withdraw(self, query_id: int, annotator: str) -> None:
        live = self._live.get(annotator, {})
        if query_id not in live:
            raise RequestError(409, describe("request", "undo", f"query {query_id} by {annotator!r}",
                                             "a query this annotator has answered"))
        del live[query_id]
        self._undone.setdefault(annotator, []).append(query_id)

    # -- writing ------------------------------------------------------------------------------------------
    def _append(self, row: dict[str, Any]) -> None:
        data = (json.dumps(row) + "\n").encode()
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # another process appending to the same file waits for this line
        try:
            written = os.write(self._fd, data)
            os.fsync(self._fd)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        if written != len(data):
            raise OSError(f"{self.path}: wrote {written} of {len(data)} bytes")

    def answer(self, query_id: Any, choice: Any, annotator: Any, group: int = 0) -> Answer:
        """Check, append and fsync one answer; RequestError (file untouched) if it is refused."""
        query = self._query(query_id)
        who = check_annotator(annotator)
        if choice not in CHOICES:
            raise RequestError(422, describe("request", "field 'choice'", repr(choice)[:80], f"one of {list(CHOICES)}"))
        stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")
        answer = Answer(query.query_id, choice, who, int(group), stamp)
        with self._lock:
            if query.query_id in self._live.get(who, {}):
                self._record(answer)  # raises the 409
            self._append(answer_line(query, choice, who, int(group), stamp))
            self._record(answer)
        return answer

    def undo(self, query_id: Any, annotator: Any) -> int:
        """Withdraw ``annotator``'s answer to ``query_id`` (their latest answer when ``query_id`` is None)."""
        who = check_annotator(annotator)
        with self._lock:
            live = self._live.get(who, {})
            if query_id is None:
                if not live:
                    raise RequestError(409, describe("request", "undo", f"nothing answered by {who!r}", "an earlier answer"))
                qid = next(reversed(live))
            else:
                qid = self._query(query_id).query_id
            if qid not in live:
                self._withdraw(qid, who)  # raises the 409
            self._append({"query_id": qid, "annotator": who, "undo": True})
            self._withdraw(qid, who)
        return qid

    # -- state --------------------------------------------------------------------------------------------
    def annotators(self) -> list[str]:
        with self._lock:
            return sorted(self._live)

    def answered(self, annotator: str) -> list[int]:
        """The queries ``annotator`` has live answers to, in answer order."""
        with self._lock:
            return list(self._live.get(annotator, {}))

    def undone(self, annotator: str) -> list[int]:
        """Queries ``annotator`` withdrew and has not answered again (oldest first)."""
        with self._lock:
            return list(self._undone.get(annotator, []))

    def decided(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every live a / b / equal answer of every annotator: ``seg_a`` [M, 3], ``seg_b`` [M, 3], ``label`` [M]."""
        with self._lock:
            rows = [(self.queries[a.query_id], LABEL_OF[a.choice]) for live in self._live.values()
                    for a in live.values() if a.choice in LABEL_OF]
        seg_a = np.array([q.a for q, _ in rows], np.int64).reshape(-1, 3)
        seg_b = np.array([q.b for q, _ in rows], np.int64).reshape(-1, 3)
        return seg_a, seg_b, np.array([y for _, y in rows], np.float32)
