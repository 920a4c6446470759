"""The demo behind `make demo`: train CPL and BC on the shipped dataset (cpu preset), evaluate both in MuJoCo,
print a table. Writes runs/demo/<agent>/ (config.toml, TensorBoard events, checkpoints/, eval.json).

    python scripts/demo.py [--dataset NAME] [--steps N] [--seed S] [--episodes K]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

DEFAULT_DATASET = "hopper-medium-replay-small"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=DEFAULT_DATASET)
    p.add_argument("--steps", type=int, default=None, help="gradient steps per agent (default: the cpu preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--out", default="runs/demo")
    args = p.parse_args()
    rows = []
    for agent in ("cpl", "bc"):
        out = Path(args.out) / agent
        cmd = [sys.executable, "-m", "pbrl.cli", "train", "--agent", agent, "--dataset", args.dataset, "--seed",
               str(args.seed), "--out", str(out), "--scale", "cpu", "--set", f"train.eval_episodes={args.episodes}"]
        if args.steps:
            cmd += ["--steps", str(args.steps)]
        print("$ " + " ".join(cmd[1:]).replace("-m pbrl.cli", "pbrl"), flush=True)
        if subprocess.call(cmd) != 0:
            return 1
        rows.append(json.loads((out / "eval.json").read_text()))
    print()
    print(f"{'agent':<6} {'dataset':<28} {'steps':>6} {'normalized score':>17} {'return':>18} {'episodes':>8}")
    for r in rows:
        print(f"{r['agent']:<6} {r['dataset']:<28} {r['steps']:>6} {r['normalized_score']:>17.1f} "
              f"{r['return_mean']:>10.1f} ± {r['return_std']:<6.1f} {r['episodes']:>8}")
    print(f"\nresults: {args.out}/<agent>/eval.json   curves: tensorboard --logdir {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
