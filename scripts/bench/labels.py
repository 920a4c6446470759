"""Label quality of the regret teacher's critics: on the same segment pairs, how often each critic's labels
follow the true segment return, the return of the segment's episode, the known order of the policies that
produced the segments, and an expert's advantage (where one is named).

    OMP_NUM_THREADS=1 python scripts/bench/labels.py --datasets hopper-medium-replay-small,button-press-noisy \
        [--critics iql,behaviour,expert] [--expert hopper-medium-replay-small=runs/behaviour/hopper-sac-300000-s0]

Each dataset's shipped pairs are relabelled in memory (deterministic teacher, γ 0.99, seed 0): nothing is
written. Source order needs a dataset `pbrl data make` built (``episode_sources``). "Expert agreement" is the
agreement of a critic's labels with the expert critic's on the same pairs; it needs ``--expert``. Prints a
markdown table; ``--json FILE`` also writes the rows.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from pbrl.data.registry import load_dataset
from pbrl.data.teachers import Teacher, agreement, segment_returns, source_quality
from pbrl.train.critics import regret_advantages


def critic_scores(traj, prefs, teacher: Teacher) -> tuple[np.ndarray, np.ndarray]:
    u = teacher.utilities(traj, regret_advantages)
    return teacher.scores(traj, prefs.segments_a, u), teacher.scores(traj, prefs.segments_b, u)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="hopper-medium-replay-small")
    p.add_argument("--critics", default="iql,behaviour,expert")
    p.add_argument("--expert", action="append", default=[], metavar="DATASET=DIR",
                   help="the expert run of a dataset (repeatable); datasets without one skip the expert critic")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    experts = dict(e.split("=", 1) for e in args.expert)
    rows = []
    for name in args.datasets.split(","):
        data = load_dataset(name)
        traj, prefs = data.trajectories, data.preferences
        returns = traj.episode_returns()
        quality = source_quality(traj)
        ra, rb = segment_returns(traj, prefs.segments_a), segment_returns(traj, prefs.segments_b)
        labels = {}
        for critic in ["return", *args.critics.split(",")]:
            if critic == "expert" and name not in experts:
                continue
            teacher = Teacher() if critic == "return" else \
                Teacher(utility="regret", critic=critic, expert=experts.get(name), seed=args.seed)
            t0 = time.perf_counter()
            sa, sb = critic_scores(traj, prefs, teacher)
            labels[critic] = (np.where(sa > sb, 1.0, np.where(sa < sb, 0.0, 0.5)).astype(np.float32), sa, sb,
                              time.perf_counter() - t0)
        for critic, (lab, _, _, seconds) in labels.items():
            ea, eb = returns[prefs.segments_a[:, 0]], returns[prefs.segments_b[:, 0]]
            row = {"dataset": name, "critic": critic, "pairs": len(lab),
                   "segment_return": agreement(lab, ra, rb), "episode_return": agreement(lab, ea, eb),
                   "source_order": None if quality is None else
                   agreement(lab, quality[prefs.segments_a[:, 0]], quality[prefs.segments_b[:, 0]]),
                   "expert": None if "expert" not in labels else agreement(lab, labels["expert"][1], labels["expert"][2]),
                   "seconds": seconds}
            rows.append(row)
            print(json.dumps(row), flush=True)
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    print("\n| dataset | labels | segment return | episode return | source order | expert's advantage | s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        who = "return teacher" if r["critic"] == "return" else f"regret, `{r['critic']}` critic"
        print(f"| {r['dataset']} | {who} | {fmt(r['segment_return'])} | {fmt(r['episode_return'])} | "
              f"{fmt(r['source_order'])} | {fmt(r['expert'])} | {r['seconds']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
