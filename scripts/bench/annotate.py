"""Speed of `pbrl annotate`, driven through the same headless Chromium as the tests.

- **prepare**: seconds to render and encode the session's segment videos, per video, with 1 and 2 worker
  processes (a fresh folder each time; a progress bar per run);
- **next pair**: milliseconds from a key press (recorded by the page on ``keydown``) to both videos of the next
  pair playing, p50 / p99 over ``--answers`` answers, with the page's prefetch of the upcoming pair on and off
  (``?prefetch=0``). The goal is under 100 ms, because the next videos are fetched before they are asked for;
- **answer round trip**: milliseconds for ``POST /api/answer`` (append + fsync + the next query) from Python;
- **active querying** (``--stages active``): a simulated annotator who prefers the higher true return answers
  ``--active-labels`` queries through the session, with ``uniform`` and with ``disagreement`` pairing; a fresh
  reward ensemble fitted on each set of answers is scored on 1,000 held-out uniform pairs (accuracy against the
  true return order), over ``--seeds``;
- and the README screenshot (``--screenshot``), taken by that browser mid-playback.

    python scripts/bench/annotate.py --pairs 40 --segment 25 --size 160 --out runs/annotate-bench
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[2]  # the repository root (this file is scripts/bench/NAME.py)

from pbrl.annotate.browser import chromium, press, wait_for  # noqa: E402
from pbrl.annotate.log import LabelLog  # noqa: E402
from pbrl.annotate.queries import make_query_set  # noqa: E402
from pbrl.annotate.server import DisagreementPicker, Session, make_server, start_session  # noqa: E402
from pbrl.data.pairing import sample_segments  # noqa: E402
from pbrl.data.store import TrajectoryDataset  # noqa: E402
from pbrl.data.teachers import segment_returns, segment_scores  # noqa: E402
from pbrl.stages import print_table  # noqa: E402
from pbrl.train.critics import fit_reward_ensemble  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def prepare(args, workers: int) -> tuple[float, int]:
    out = Path(args.out) / f"prepare-w{workers}" / "labels.jsonl"
    shutil.rmtree(out.parent, ignore_errors=True)
    start = time.perf_counter()
    session = start_session(args.dataset, out, pairs=args.pairs, segment=args.segment, size=args.size, fps=args.fps,
                            seed=args.seed, workers=workers)
    seconds = time.perf_counter() - start
    count = len(session.query_set.segments())
    session.close()
    return seconds, count


def drive(args, prefetch: bool, screenshot: Path | None) -> dict[str, list[float]]:
    """Answer ``args.answers`` queries through the page; returns key-to-playing and POST timings (ms)."""
    source = Path(args.out) / "prepare-w1"
    folder = Path(args.out) / f"drive-prefetch{int(prefetch)}"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(source / "labels.annotate", folder / "labels.annotate")  # the videos made above
    session = start_session(args.dataset, folder / "labels.jsonl", pairs=args.pairs, segment=args.segment,
                            size=args.size, fps=args.fps, seed=args.seed, annotator="bench", progress=False)
    server = make_server(session, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/?annotator=bench" + ("" if prefetch else "&prefetch=0")
    driver = chromium(width=900, height=760)
    rng = np.random.default_rng(args.seed)
    try:
        driver.get(url)
        for k in range(min(args.answers, args.pairs - 1)):
            wait_for(driver, f"document.getElementById('count').textContent === '{k} / {args.pairs}'")
            wait_for(driver, f"window.pbrlTimings.length === {k}")  # the previous pair is playing
            time.sleep(args.watch)  # a person watches before answering (prefetch happens here)
            if screenshot is not None and k == 2:
                wait_for(driver, "document.getElementById('va').currentTime > 0.3")
                driver.save_screenshot(str(screenshot))
            press(driver, str(rng.choice(["1", "2", "e"])))
        wait_for(driver, f"window.pbrlTimings.length === {min(args.answers, args.pairs - 1)}")
        timings = [t["ms"] for t in driver.execute_script("return window.pbrlTimings;")]
    finally:
        driver.quit()
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1])
    posts = []
    for qid in range(args.pairs):  # a second annotator through the API only: the server's own share
        start = time.perf_counter()
        conn.request("POST", "/api/answer", json.dumps({"query_id": qid, "choice": "a", "annotator": "api"}))
        conn.getresponse().read()
        posts.append(1000 * (time.perf_counter() - start))
    conn.close()
    server.shutdown()
    session.close()
    return {"key_to_playing": timings, "post": posts}


def active(args, pairing: str, seed: int) -> float:
    """Held-out accuracy of a reward ensemble fitted on ``args.active_labels`` answers chosen by ``pairing``."""
    trajectories = TrajectoryDataset(args.dataset)
    folder = Path(args.out) / f"active-{pairing}-s{seed}"
    shutil.rmtree(folder, ignore_errors=True)
    n = args.active_labels
    query_set = make_query_set(trajectories, pairs=n, segment=args.segment, pairing=pairing, seed=seed, candidates=4)
    log = LabelLog(folder / "labels.jsonl", query_set)
    picker = (DisagreementPicker(trajectories, query_set, log, warmup=max(2, n // 10), seed=seed)
              if pairing == "disagreement" else None)
    session = Session(query_set, log, folder, picker=picker)
    while (query := session.next_query("sim")) is not None:
        r_a, r_b = segment_returns(trajectories, np.array([query["a"]["segment"], query["b"]["segment"]]))
        session.answer({"query_id": query["query_id"], "choice": "a" if r_a > r_b else "b" if r_b > r_a else "equal",
                        "annotator": "sim"})
        if picker is not None:
            picker.wait()  # a person's think time covers the background refit
    seg_a, seg_b, label = log.decided()
    session.close()
    member_rewards = fit_reward_ensemble(trajectories, seg_a, seg_b, label, 1000 + seed)
    rng = np.random.default_rng(12345)  # the same held-out pairs for both pairings
    test_a, test_b = (sample_segments(trajectories, 1000, args.segment, rng) for _ in range(2))
    reward = np.mean(member_rewards, axis=0)
    predicted = segment_scores(trajectories, reward, test_a) > segment_scores(trajectories, reward, test_b)
    truth_a, truth_b = segment_returns(trajectories, test_a), segment_returns(trajectories, test_b)
    decided = truth_a != truth_b
    return float(np.mean(predicted[decided] == (truth_a > truth_b)[decided]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=str(ROOT / "datasets" / "hopper-medium-replay-small.h5"))
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--answers", type=int, default=30, help="answers given through the page per setting")
    parser.add_argument("--segment", type=int, default=25)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--watch", type=float, default=0.5, help="seconds the simulated person watches each pair")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/annotate-bench")
    parser.add_argument("--screenshot", default=None, help="save a screenshot of the page here (PNG)")
    parser.add_argument("--stages", nargs="+", default=["prepare", "drive", "active"],
                        choices=["prepare", "drive", "active"])
    parser.add_argument("--active-labels", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()

    if "active" in args.stages:
        rows = []
        for pairing in ("uniform", "disagreement"):
            start = time.perf_counter()
            acc = [active(args, pairing, seed) for seed in range(args.seeds)]
            rows.append([pairing, f"{statistics.mean(acc):.3f} ± {statistics.stdev(acc):.3f}",
                         " ".join(f"{a:.3f}" for a in acc), f"{time.perf_counter() - start:.0f}"])
        print_table(f"Active querying: reward-model accuracy on 1,000 held-out pairs after {args.active_labels} answers "
                    f"({args.seeds} seeds; the simulated annotator follows the true return)",
                    ["pairing", "accuracy", "per seed", "seconds"], rows)
    if "prepare" in args.stages:
        rows = []
        for workers in (1, 2):
            seconds, count = prepare(args, workers)
            rows.append([str(workers), str(count), f"{seconds:.1f}", f"{seconds / count:.2f}"])
        print_table(f"Preparing the videos ({args.pairs} pairs, {args.segment} steps, {args.size}×{args.size}, "
                    "WebM VP8)", ["workers", "videos", "seconds", "s / video"], rows)
    if "drive" not in args.stages:
        return
    if not (Path(args.out) / "prepare-w1" / "labels.annotate").exists():
        prepare(args, 1)
    rows = []
    for prefetch in (True, False):
        shot = Path(args.screenshot) if (args.screenshot and prefetch) else None
        got = drive(args, prefetch, shot)
        key, post = got["key_to_playing"], got["post"]
        rows.append(["on" if prefetch else "off", str(len(key)), f"{statistics.median(key):.1f}",
                     f"{percentile(key, 99):.1f}", f"{max(key):.1f}", f"{statistics.median(post):.2f}",
                     f"{percentile(post, 99):.2f}"])
    print_table(f"Key press to the next pair playing (Chromium, headless; {args.watch:.1f} s watched per pair)",
                ["prefetch", "answers", "p50 ms", "p99 ms", "max ms", "POST p50 ms", "POST p99 ms"], rows)
    if args.screenshot:
        print(f"\nscreenshot: {args.screenshot}")


if __name__ == "__main__":
    main()
