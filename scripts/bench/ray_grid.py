"""`pbrl bench --backend ray` measured: a worker killed mid-cell, and cells per hour against workers.

1. **Kill**: a 4-cell grid on a local Ray; once the watched cell has written a checkpoint, its worker process (the pid
   its run directory's lock names) is killed with SIGKILL. Ray runs the task again; the cell resumes from its newest
   checkpoint and finishes. Its result must equal an uninterrupted local run of the same cell (resume is exact).
2. **Throughput**: the same grid of ``--cells`` cells trained by the local backend (one process) and by a local Ray
   with 1 and 2 workers (``ray.init(num_cpus=k)``, one CPU per cell): cells per hour of each, in one run.

    OMP_NUM_THREADS=1 python scripts/bench/ray_grid.py [--steps 1500] [--cells 8] [--out runs/bench/ray_grid]

Prints a markdown table (the figures of docs/benchmarks.md, "Benchmark grids on Ray").
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from pbrl.data.synthetic import two_behaviour_dataset
from pbrl.train.bench import RaySettings, bench


def settings(steps: int) -> list[str]:
    return ["train.eval_episodes=0", "agent.hidden_layers=[64, 64]", "train.batch_size=32", "train.log_every=100",
            f"train.checkpoint_every={max(steps // 10, 1)}"]


def results(out: Path) -> dict[tuple[str, str], str]:
    with open(out / "results.csv") as f:
        return {(r["agent"], r["seed"]): r["action_mse"] for r in csv.DictReader(f)}


def kill_when_checkpointed(run_dir: Path, killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the process training ``run_dir`` once it has a checkpoint (the pid its lock file names)."""
    while not stop.is_set():
        if list((run_dir / "checkpoints").glob("step_*.pt")):
            text = (run_dir / ".lock").read_text() if (run_dir / ".lock").exists() else ""
            if text.startswith("pid "):
                pid = int(text.split()[1])
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
        time.sleep(0.05)


def kill_check(data: str, out: Path, steps: int) -> dict[str, object]:
    import ray

    grid = (["bc", "cpl"], [data], [0, 1])
    local = out / "kill-local"
    bench(*grid, local, steps=steps, overrides=settings(steps), progress=False, ceiling_check=False)
    victim = out / "kill-ray" / "runs" / "two" / "cpl" / "seed1"
    killed: list[int] = []
    stop = threading.Event()
    watcher = threading.Thread(target=kill_when_checkpointed, args=(victim, killed, stop), daemon=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    watcher.start()
    try:
        bench(*grid, out / "kill-ray", steps=steps, overrides=settings(steps), progress=False, ceiling_check=False,
              ray=RaySettings())
    finally:
        stop.set()
        ray.shutdown()
    meta = json.loads((victim / "cell.json").read_text())
    same = results(local) == results(out / "kill-ray")
    return {"killed_pid": killed[0] if killed else None, "retried_pid": meta.get("pid"), "finished": meta["finished"],
            "same_results": same}


def throughput(data: str, out: Path, steps: int, cells: int) -> list[tuple[str, float, float]]:
    import ray

    seeds = list(range(cells // 2))
    grid = (["bc", "cpl"], [data], seeds)
    rows = []
    for label, workers in (("local backend (1 process)", None), ("ray, 1 worker", 1), ("ray, 2 workers", 2)):
        target = out / f"speed-{workers or 'local'}"
        t0 = time.perf_counter()
        if workers is None:
            bench(*grid, target, steps=steps, overrides=settings(steps), progress=False, ceiling_check=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            try:
                bench(*grid, target, steps=steps, overrides=settings(steps), progress=False, ceiling_check=False,
                      ray=RaySettings())
            finally:
                ray.shutdown()
        wall = time.perf_counter() - t0
        rows.append((label, wall, 3600.0 * cells / wall))
        print(f"{label}: {cells} cells in {wall:.1f} s", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--cells", type=int, default=8, help="an even number: bc and cpl x cells/2 seeds")
    parser.add_argument("--out", default="runs/bench/ray_grid")
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    data = two_behaviour_dataset(out, episodes=16, length=40)
    kill = kill_check(data, out, args.steps)
    print(f"kill: {json.dumps(kill)}", flush=True)
    rows = throughput(data, out, args.steps, args.cells)
    local = rows[0][2]
    print(f"\n{args.cells} cells (bc, cpl x {args.cells // 2} seeds), {args.steps} steps each, "
          f"{os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}\n")
    print("| backend | wall s | cells / hour | vs local |\n|---|---|---|---|")
    for label, wall, per_hour in rows:
        print(f"| {label} | {wall:.1f} | {per_hour:.0f} | {per_hour / local:.2f}x |")
    print(f"\nkilled worker: pid {kill['killed_pid']} SIGKILLed after the cell's first checkpoint; retried by Ray "
          f"(pid {kill['retried_pid']}), finished: {kill['finished']}; results equal to the uninterrupted local run: "
          f"{kill['same_results']}")


if __name__ == "__main__":
    main()
