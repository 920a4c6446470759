"""What the staged benchmark scripts share (``scripts/bench/sequence.py``, ``scripts/bench/diffusion.py`` and the
diagnostics beside them): the command line, the resumable ``results.json``, and markdown tables of mean ± std over
seeds. It imports only the standard library and torch, so that a script importing it pulls in nothing else."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

Stage = Callable[[Path, list[int], int], Any]


def ms(values: list[float]) -> str:
    """``mean ± std`` of seeds (the value alone for one seed)."""
    v = [float(x) for x in values]
    return f"{v[0]:.2f}" if len(v) == 1 else f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}"


def record(results: dict[Any, dict[str, list[float]]], label: Any, metrics: dict[str, float]) -> None:
    """Append one seed's ``metrics`` under ``label``."""
    for k, v in metrics.items():
        results.setdefault(label, {}).setdefault(k, []).append(v)


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def read_curve(curve: list[tuple[float, float]], x: float) -> float | None:
    """A ``(x, value)`` curve read at ``x`` by linear interpolation between the points that bracket it (``None``
    outside the curve's range): e.g. a baseline's score at the drift (or KL) another method reached."""
    points = sorted(curve)
    for (x0, v0), (x1, v1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return v0 if x1 == x0 else v0 + (v1 - v0) * (x - x0) / (x1 - x0)
    return None


def new_axes(width: float, height: float) -> tuple[Any, Any]:
    """A matplotlib figure and axes on the file-only backend (matplotlib imported here, on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def save_figure(fig: Any, path: Path) -> None:
    """Lay ``fig`` out, write it to ``path`` (PNG, 120 dpi) and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_stages(description: str, stages: dict[str, Stage], *, out: str, steps: int) -> None:
    """``--out --seeds --steps --stages``: run the chosen stages in order, each result saved into
    ``OUT/results.json`` (written to a temporary file and renamed) as soon as its stage ends."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=out)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--stages", nargs="+", default=list(stages), choices=list(stages))
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "results.json"
    for stage in args.stages:
        start = time.perf_counter()
        result = stages[stage](folder, args.seeds, args.steps)
        print(f"\n({stage}: {time.perf_counter() - start:.0f} s)")
        save_stage(path, stage, result)


def save_stage(path: Path, stage: str, result: Any) -> None:
    """``result`` into ``path`` (a JSON object of stages) under ``stage``: read, updated and replaced under a lock,
    so that two scripts running different stages into one folder keep each other's results."""
    import fcntl

    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = json.loads(path.read_text()) if path.is_file() else {}
        results[stage] = result
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(path)
