"""The demo behind `make demo`: train CPL, SFT and BC on the shipped dataset (cpu presets, two at a time on a
2-core machine), evaluate each in MuJoCo, and print them beside oracle IQL (IQL on the true reward, the ceiling).

Oracle IQL needs far more steps than a demo can spend on a CPU, so the demo does not train it: the table shows
the oracle score that `pbrl bench --record` stored in the dataset card, marked as recorded, with its command,
budget and whether the ceiling had converged (DESIGN §7.1). Writes runs/demo/<agent>-<hash of config and data>/ (config.toml, TensorBoard
events, checkpoints/, eval.json).

    python scripts/demo.py [--dataset NAME] [--steps N] [--seed S] [--episodes K] [--jobs J]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pbrl.data.registry import load_dataset
from pbrl.train.bench import config_hash, dataset_checksum
from pbrl.train.config import build_config

# HalfCheetah: its oracle IQL converges (a real ceiling) and no episode ends early (no survival instinct to mistake
# for preference learning); the Hopper replay is the tests' default (docs/benchmarks.md: why CPL stays at BC there)
DEFAULT_DATASET = "halfcheetah-medium-replay-small"
# (row, agent, its --set overrides): BC on every step of the trajectories, as D4RL's BC (CORL's ≈ 36 on the full
# halfcheetah-medium-replay); the `bc` preset's own data, the pairs' segments, hold an episode's first step once in
# ~1,000 segments, and on HalfCheetah BC then stalls at the start (2.3; docs/benchmarks.md, the HalfCheetah section)
AGENTS = (("cpl", "cpl", ()), ("sft", "sft", ()), ("bc", "bc", ("agent.data=transitions",)))
ROWS = tuple(row for row, _, _ in AGENTS)


def recorded_oracle(dataset: str, table: str = "oracle") -> dict | None:
    """The ``[oracle]`` (or ``[control]``) score that `pbrl bench --record` stored in the dataset's card."""
    import tomllib

    from pbrl.paths import find_resource

    card = find_resource("datasets", f"{dataset}.toml")
    return tomllib.loads(card.read_text()).get(table) if card else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=DEFAULT_DATASET)
    p.add_argument("--steps", type=int, default=None, help="gradient steps per agent (default: the cpu preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each)")
    p.add_argument("--out", default="runs/demo")
    args = p.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # one directory per resolved config and data: a finished demo is reused, and a pbrl whose presets or shipped
    # labels changed trains anew beside the old runs instead of refusing to resume them
    sets = [f"train.eval_episodes={args.episodes}"]
    data_sum = dataset_checksum(load_dataset(args.dataset), with_preferences=True)

    def run_name(row: str, agent: str, extra: tuple[str, ...]) -> str:
        cfg = build_config(agent, args.dataset, scale="cpu", seed=args.seed, steps=args.steps, overrides=[*sets, *extra])
        return f"{row}-{hashlib.sha256((config_hash(cfg) + data_sum).encode()).hexdigest()[:8]}"

    outs = {row: Path(args.out) / run_name(row, agent, extra) for row, agent, extra in AGENTS}
    pending, running, started = list(AGENTS), [], time.perf_counter()
    while pending or running:
        while pending and len(running) < args.jobs:
            row, agent, extra = pending.pop(0)
            out = outs[row]
            cmd = [sys.executable, "-m", "pbrl.cli", "train", "--agent", agent, "--dataset", args.dataset, "--seed",
                   str(args.seed), "--out", str(out), "--scale", "cpu", "--quiet",
                   "--set", f"train.eval_episodes={args.episodes}", *[a for kv in extra for a in ("--set", kv)]]
            if args.steps:
                cmd += ["--steps", str(args.steps)]
            print("$ " + " ".join(cmd[1:]).replace("-m pbrl.cli", "pbrl"), flush=True)
            running.append((row, subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)))
        time.sleep(0.5)
        for agent, proc in list(running):
            if proc.poll() is not None:
                running.remove((agent, proc))
                if proc.returncode != 0:
                    for _, other in running:
                        other.kill()
                    print(f"demo: the {agent} run failed (exit {proc.returncode})", file=sys.stderr)
                    return 1
    rows = [{**json.loads((outs[row] / "eval.json").read_text()), "row": row} for row in ROWS]
    oracle = recorded_oracle(args.dataset)
    ceiling = oracle["normalized_score"] if oracle else None
    print(f"\n{args.dataset} ({rows[0]['env_id']}), {rows[0]['episodes']} evaluation episodes each, seed {args.seed}; "
          f"trained here in {time.perf_counter() - started:.0f} s on {args.jobs} process(es)\n")
    print(f"{'agent':<12} {'steps':>7} {'scale':>6} {'normalized score':>17} {'ratio to oracle':>16}  source")
    for r in rows:
        ratio = f"{r['normalized_score'] / ceiling:.2f}" if ceiling else "–"
        how = " (every step of the trajectories, D4RL's BC)" if r["row"] == "bc" else ""
        print(f"{r['row']:<12} {r['steps']:>7} {r['scale']:>6} {r['normalized_score']:>17.1f} {ratio:>16}  trained now{how}")
    if oracle:
        note = "2x-budget rule met" if oracle.get("converged") else "CEILING NOT CONVERGED at this budget"
        seeds = ", ".join(str(s) for s in oracle["seeds"])
        print(f"{'iql-oracle':<12} {oracle['steps']:>7} {oracle['scale']:>6} {ceiling:>17.1f} {1.0:>16.2f}  RECORDED "
              f"(seeds {seeds}; {note}"
              + (f": {oracle['score_2x']:.1f} at {oracle['steps_2x']} steps" if "score_2x" in oracle else "") + ")")
        control = recorded_oracle(args.dataset, "control")
        if control:
            print(f"{'iql-constant':<12} {control['steps']:>7} {control['scale']:>6} {control['normalized_score']:>17.1f} "
                  f"{control['normalized_score'] / ceiling:>16.2f}  RECORDED (survival control: IQL with every reward 1, "
                  "no labels; a preference agent's labels are worth only its margin over this row)")
        if oracle.get("exceeded_by"):
            print(f"\nNOTE: at this budget the oracle is no ceiling: {', '.join(oracle['exceeded_by'])} scored above it "
                  "in the same bench (see docs/benchmarks.md).")
        print(f"\noracle recorded by: {oracle['command']}")
    else:
        print(f"{'iql-oracle':<12} {'–':>7} {'':>6} {'not recorded':>17}  run `pbrl bench ... --record` for this dataset")
    print(f"\nresults: {', '.join(str(outs[row] / 'eval.json') for row in ROWS)}   curves: tensorboard --logdir {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
