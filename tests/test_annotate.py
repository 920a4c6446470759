"""`pbrl annotate`: the labels log, the JSON API (bad input, concurrency), active querying, and the page end to
end in a real headless Chromium (answer, undo, close, kill the server, restart, finish, import)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from pbrl.annotate.log import LabelLog
from pbrl.annotate.queries import make_query_set
from pbrl.annotate.server import DisagreementPicker, Session, make_server
from pbrl.data.formats import import_labels
from pbrl.data.store import TrajectoryDataset
from pbrl.errors import DatasetError

ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT / "datasets" / "hopper-medium-replay-small.h5"


@pytest.fixture(scope="module")
def trajectories() -> TrajectoryDataset:
    return TrajectoryDataset(DATASET)


def serve_in_thread(session: Session):
    server = make_server(session, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def call(port: int, method: str, path: str, body: bytes | str | None = None) -> tuple[int, dict | None]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    data = body.encode() if isinstance(body, str) else body
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    return resp.status, (json.loads(raw) if raw else None)


def session_for(trajectories, tmp_path: Path, pairs: int, **kw) -> Session:
    query_set = make_query_set(trajectories, pairs=pairs, segment=20, seed=1, **kw)
    return Session(query_set, LabelLog(tmp_path / "labels.jsonl", query_set), tmp_path / "videos")


def test_bad_input_gets_4xx_and_leaves_the_file_byte_identical(trajectories, tmp_path):
    session = session_for(trajectories, tmp_path, pairs=5)
    server, port = serve_in_thread(session)
    try:
        assert call(port, "POST", "/api/answer", '{"query_id": 0, "choice": "a", "annotator": "ann"}')[0] == 200
        before = (tmp_path / "labels.jsonl").read_bytes()
        bad = [("/api/answer", '{"query_id": 1, "choice": ', 400),                       # malformed JSON
               ("/api/answer", '[1, 2]', 400),                                           # not an object
               ("/api/answer", '{"query_id": 99, "choice": "a", "annotator": "ann"}', 404),  # no such query
               ("/api/answer", '{"query_id": "x", "choice": "a", "annotator": "ann"}', 404),
               ("/api/answer", '{"query_id": 1, "choice": "left", "annotator": "ann"}', 422),  # unknown choice
               ("/api/answer", '{"query_id": 1, "choice": "a"}', 400),                   # no annotator
               ("/api/answer", '{"query_id": 0, "choice": "b", "annotator": "ann"}', 409),  # double submit
               ("/api/undo", '{"query_id": 3, "annotator": "ann"}', 409),                # nothing to undo
               ("/api/undo", '{"annotator": "nobody"}', 409),
               ("/api/answer", "x" * 20000, 413)]
        for path, body, status in bad:
            got, reply = call(port, "POST", path, body)
            assert got == status, (body[:60], got, reply)
            assert "error" in reply and "\n" not in reply["error"]
        assert call(port, "GET", "/api/next")[0] == 400  # no annotator
        assert call(port, "GET", "/videos/../labels.jsonl")[0] == 404
        assert (tmp_path / "labels.jsonl").read_bytes() == before
    finally:
        server.shutdown()
        session.close()


def test_two_clients_answer_200_each_at_once(trajectories, tmp_path):
    session = session_for(trajectories, tmp_path, pairs=200)
    server, port = serve_in_thread(session)
    posted: dict[str, dict[int, str]] = {}

    def client(name: str, seed: int) -> None:
        rng = np.random.default_rng(seed)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = posted.setdefault(name, {})
        for qid in rng.permutation(200):
            choice = str(rng.choice(["a", "b", "equal", "skip"]))
            conn.request("POST", "/api/answer", json.dumps({"query_id": int(qid), "choice": choice, "annotator": name}))
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200
            mine[int(qid)] = choice
        conn.close()

    threads = [threading.Thread(target=client, args=(n, s)) for n, s in (("ann", 0), ("bob", 1))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        server.shutdown()
        session.close()
    lines = (tmp_path / "labels.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]  # every line intact JSON
    assert len(rows) == 400
    got = {(r["annotator"], r["query_id"]): r["choice"] for r in rows}
    assert len(got) == 400 and got == {(n, q): c for n, answers in posted.items() for q, c in answers.items()}
    assert len(import_labels(tmp_path / "labels.jsonl", trajectories)) == 400


def test_log_replays_answers_and_undo_and_refuses_torn_or_foreign_lines(trajectories, tmp_path):
    session = session_for(trajectories, tmp_path, pairs=4)
    log = session.log
    log.answer(0, "a", "ann")
    log.answer(1, "b", "ann")
    log.undo(None, "ann")                    # withdraws query 1
    log.answer(0, "equal", "bob")
    log.close()
    again = LabelLog(tmp_path / "labels.jsonl", session.query_set)
    assert again.answered("ann") == [0] and again.undone("ann") == [1] and again.answered("bob") == [0]
    assert Session(session.query_set, again, tmp_path)._open("ann")[0] == 1  # the withdrawn query comes back first
    again.close()
    prefs = import_labels(tmp_path / "labels.jsonl", trajectories)
    assert sorted(prefs.label.tolist()) == [0.5, 1.0]

    path = tmp_path / "labels.jsonl"
    good = path.read_bytes()
    path.write_bytes(good + b'{"query_id": 2, "choi')
    with pytest.raises(DatasetError, match=r"labels.jsonl:5: last line"):
        LabelLog(path, session.query_set)
    row = json.loads(good.splitlines()[0])
    row["a_start"] += 1                        # a row of another query set
    path.write_bytes(good + (json.dumps(row) + "\n").encode())
    with pytest.raises(DatasetError, match=r"labels.jsonl:5: label row"):
        LabelLog(path, session.query_set)


def test_disagreement_asks_where_the_refitted_ensemble_disagrees_most(trajectories, tmp_path):
    from pbrl.data.teachers import segment_returns

    session = session_for(trajectories, tmp_path, pairs=10, pairing="disagreement", candidates=4)
    picker = DisagreementPicker(trajectories, session.query_set, session.log, warmup=6, refit_every=1, seed=0)
    session.picker = picker
    queries = session.query_set.queries
    assert [session.next_query("ann")["query_id"] for _ in range(1)] == [0]  # before any fit: the uniform order
    for q in queries[:6]:  # a return-following annotator
        ra, rb = segment_returns(trajectories, np.array([q.a, q.b]))
        session.log.answer(q.query_id, "a" if ra > rb else "b", "ann")
    picker.refit()
    assert picker.spread is not None and picker.spread.std() > 0
    open_ids = [q.query_id for q in queries[6:]]
    best = max(open_ids, key=lambda i: picker.spread[i])
    assert session.next_query("ann")["query_id"] == best
    assert session.next_query("bob")["query_id"] == max(range(len(queries)), key=lambda i: picker.spread[i])
    session.close()


# --------------------------------------------------------------------------------------------------------------
# the page in a real browser
# --------------------------------------------------------------------------------------------------------------

def _browser_or_skip():
    from pbrl.errors import ConfigError

    try:
        import selenium  # noqa: F401

        from pbrl.annotate.browser import find_browser
        find_browser()
    except (ImportError, ConfigError) as exc:
        pytest.skip(f"needs Debian's chromium + chromium-driver and selenium (make test installs them): {exc}")


def start_cli_server(out: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """`pbrl annotate` in its own process, as a user starts it; returns it and its URL."""
    cmd = [sys.executable, "-m", "pbrl.cli", "annotate", str(DATASET), "--pairs", "6", "--segment", "6",
           "--size", "64", "--out", str(out), "--port", "0", "--annotator", "tester"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(log, "a"), text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    for line in proc.stdout:
        if "serving http://" in line:
            return proc, line.split("serving ")[1].split(" ")[0]
    raise AssertionError(f"server did not start: {log.read_text()[-2000:]}")


@pytest.mark.slow
def test_page_end_to_end_in_chromium_with_undo_crash_and_restart(tmp_path):
    _browser_or_skip()
    from selenium.webdriver.common.keys import Keys

    from pbrl.annotate.browser import chromium, press, wait_for
    from pbrl.cli import main

    out = tmp_path / "labels.jsonl"
    shown: list[int] = []
    driver = chromium()  # one browser for both servers: the crash and restart are the server's
    try:
        server, url = start_cli_server(out, tmp_path / "server.log")
        try:
            driver.get(url)
            for k, key in enumerate([Keys.ARROW_LEFT, Keys.ARROW_RIGHT, "e", Keys.ARROW_DOWN, "1"]):
                wait_for(driver, f"document.getElementById('count').textContent === '{k} / 6'")
                if k == 0:  # the segment videos decode and play in the browser
                    assert wait_for(driver, "document.getElementById('va').videoWidth") == 64
                    assert wait_for(driver, "document.getElementById('vb').currentTime > 0")
                shown.append(int(driver.find_element("id", "query").text.split()[-1]))
                press(driver, key)
            wait_for(driver, "document.getElementById('count').textContent === '5 / 6'")
            press(driver, "u")  # undo the fifth answer
            wait_for(driver, "document.getElementById('count').textContent === '4 / 6'")
            assert int(driver.find_element("id", "query").text.split()[-1]) == shown[4]
        finally:
            server.send_signal(signal.SIGKILL)  # a crash, not a clean stop
            server.wait()
        server, url = start_cli_server(out, tmp_path / "server.log")
        try:
            driver.get(url)  # the restarted server (a new port): the page loads afresh from it
            wait_for(driver, "document.getElementById('count').textContent === '4 / 6'")  # resumed
            for k, key in enumerate([Keys.ARROW_RIGHT, "2"]):
                wait_for(driver, f"document.getElementById('count').textContent === '{4 + k} / 6'")
                shown.append(int(driver.find_element("id", "query").text.split()[-1]))
                press(driver, key)
            wait_for(driver, "document.getElementById('count').textContent === 'finished'")
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait()
    finally:
        driver.quit()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r.get("undo", False) for r in rows] == [False] * 5 + [True] + [False] * 2
    assert rows[5]["query_id"] == shown[4]
    live = {r["query_id"]: r["choice"] for i, r in enumerate(rows) if "choice" in r and i != 4}
    assert live == dict(zip(shown[:4] + shown[5:], ["a", "b", "equal", "skip", "b", "b"]))
    assert sorted(shown[:4] + shown[5:]) == list(range(6))
    prefs = import_labels(out, TrajectoryDataset(DATASET))
    assert len(prefs) == 6 and prefs.skipped.sum() == 1
    assert main(["data", "import-labels", str(out), "--dataset", str(DATASET), "--out", str(tmp_path / "human.prefs.h5")]) == 0


def test_session_prepares_decodable_videos_for_meta_world(tmp_path):
    """The whole `start_session` path on the shipped Meta-World dataset: a query set, WebM videos that decode to
    the asked size, an empty log; a restart with other options is refused."""
    import imageio.v2 as imageio

    from pbrl.annotate.server import start_session
    from pbrl.errors import ConfigError

    out = tmp_path / "labels.jsonl"
    session = start_session(ROOT / "datasets" / "button-press-noisy.h5", out, pairs=1, segment=6, size=48,
                            progress=False)
    videos = sorted(session.video_dir.glob("*.webm"))
    session.close()
    assert len(videos) == 2 and not list(session.video_dir.glob(".*"))  # no temporary files left
    frames = imageio.mimread(videos[0])
    assert len(frames) == 6 and frames[0].shape == (48, 48, 3)
    with pytest.raises(ConfigError, match="segment"):
        start_session(ROOT / "datasets" / "button-press-noisy.h5", out, pairs=1, segment=8, size=48, progress=False)


def test_a_restart_from_another_folder_renders_from_where_the_dataset_is_now(tmp_path, monkeypatch):
    """The query set keeps the dataset's content hash, not its path: a restart from another working folder (or
    with the file moved) finds the videos still to render."""
    import shutil

    from pbrl.annotate.server import session_dir, start_session

    data = tmp_path / "a" / "hopper.h5"
    data.parent.mkdir()
    shutil.copy(DATASET, data)
    out = tmp_path / "labels.jsonl"
    monkeypatch.chdir(data.parent)
    start_session("hopper.h5", out, pairs=1, segment=4, size=32, progress=False).close()
    for video in (session_dir(out) / "videos").glob("*.webm"):
        video.unlink()  # as if the first start had been stopped before rendering
    from pbrl.annotate import queries

    queries._DATASETS.clear()  # a restart is a new process: nothing is open from the first start
    moved = tmp_path / "b" / "renamed.h5"
    moved.parent.mkdir()
    shutil.move(data, moved)
    monkeypatch.chdir(moved.parent)
    session = start_session("renamed.h5", out, pairs=1, segment=4, size=32, progress=False)
    assert len(list(session.video_dir.glob("*.webm"))) == 2
    session.close()
