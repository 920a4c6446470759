"""CPL vs BC: the same gradient-step budget, several seeds, on a mixed-quality Hopper dataset and a Meta-World task.

    OMP_NUM_THREADS=1 python scripts/bench/agents.py [--steps 4000] [--seeds 0 1 2] [--episodes 10]

Runs are written to ``runs/bench/<dataset>/<agent>/seed<k>/`` and reused when their eval.json exists, so an
interrupted benchmark resumes (each run also resumes from its own checkpoints). Prints a markdown table of
normalized score (and success rate on Meta-World), mean ± std over seeds, and writes ``runs/bench/agents.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from pbrl.train.config import build_config
from pbrl.train.trainer import train

DATASETS = ("hopper-medium-replay-small", "button-press-noisy")


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS))
    p.add_argument("--agents", nargs="+", default=["cpl", "bc"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=None, help="gradient steps per run (default: the cpu preset's)")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--set", action="append", default=[],
                   help="override for every run (agent.policy=tanh_gaussian) or for one agent (cpl:agent.bc_steps=4800)")
    p.add_argument("--out", default="runs/bench")
    args = p.parse_args()
    results = []
    for dataset in args.datasets:
        for agent in args.agents:
            for seed in args.seeds:
                run = Path(args.out) / dataset / agent / f"seed{seed}"
                if (run / "eval.json").exists():
                    result = json.loads((run / "eval.json").read_text())
                else:
                    sets = [o.split(":", 1)[1] if ":" in o.split("=", 1)[0] else o for o in args.set
                            if ":" not in o.split("=", 1)[0] or o.split(":", 1)[0] == agent]
                    cfg = build_config(agent, dataset, scale="cpu", steps=args.steps, seed=seed,
                                       overrides=[f"train.eval_episodes={args.episodes}", *sets])
                    result = train(cfg, run)
                results.append(result)
                print(f"{dataset} {agent} seed {seed}: normalized score {result['normalized_score']:.1f}"
                      + (f", success {result['success_rate']:.2f}" if "success_rate" in result else ""), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "agents.json").write_text(json.dumps(results, indent=2))
    print()
    print("| dataset | agent | steps | seeds | normalized score | success rate | steps/s |")
    print("|---|---|---|---|---|---|---|")
    for dataset in args.datasets:
        for agent in args.agents:
            rs = [r for r in results if r["dataset"] == dataset and r["agent"] == agent]
            success = mean_std([100 * r["success_rate"] for r in rs]) + " %" if "success_rate" in rs[0] else "–"
            speed = statistics.median(r["steps_per_s"] for r in rs if r.get("steps_per_s"))
            print(f"| {dataset} | {agent} | {rs[0]['steps']} | {len(rs)} | {mean_std([r['normalized_score'] for r in rs])} "
                  f"| {success} | {speed:.0f} |")


if __name__ == "__main__":
    main()
