"""Learning curves of finished or running `pbrl train` runs, read from their TensorBoard events.

    python scripts/learning_curves.py runs/curves/cpl-iql-s0 runs/curves/cpl-expert-s0 \
        [--tag eval/normalized_score] [--png docs/curves.png] [--title TEXT]

A run is named by its directory's last component, or ``NAME=DIR``. Prints a markdown table (one row per run,
one column per evaluated step, plus the best and the last value) and, with ``--png``, draws the curves.
Evaluations come from ``train.eval_every`` (``pbrl train ... --set train.eval_every=2000``); the final one is
always there.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pbrl.errors import ConfigError, PbrlError, describe


def read_scalars(run_dir: Path, tag: str) -> dict[int, float]:
    """``{step: value}`` of one scalar tag over every event file of a run (a resumed run has several; the last
    file written wins where steps repeat)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(run_dir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise ConfigError(describe(str(run_dir), "TensorBoard events", "none", "a run directory of `pbrl train`"))
    values: dict[int, float] = {}
    for f in files:
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            values.update({e.step: e.value for e in acc.Scalars(tag)})
    return dict(sorted(values.items()))


def markdown(curves: dict[str, dict[int, float]], tag: str) -> str:
    steps = sorted({s for c in curves.values() for s in c})
    head = f"| run ({tag}) | " + " | ".join(f"{s // 1000}k" if s % 1000 == 0 else str(s) for s in steps) + \
        " | best | last |"
    lines = [head, "|" + "---|" * (len(steps) + 3)]
    for name, c in curves.items():
        cells = [f"{c[s]:.1f}" if s in c else "" for s in steps]
        best = f"{max(c.values()):.1f}" if c else ""
        last = f"{c[max(c)]:.1f}" if c else ""
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {best} | {last} |")
    return "\n".join(lines)


def plot(curves: dict[str, dict[int, float]], tag: str, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, c in curves.items():
        ax.plot(list(c), list(c.values()), marker="o", ms=3, label=name)
    ax.set_xlabel("gradient step")
    ax.set_ylabel(tag)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories, optionally NAME=DIR")
    p.add_argument("--tag", default="eval/normalized_score")
    p.add_argument("--png", default=None)
    p.add_argument("--title", default="")
    args = p.parse_args()
    curves = {}
    for spec in args.runs:
        name, _, d = spec.rpartition("=") if "=" in spec else (Path(spec).name, "", spec)
        curves[name] = read_scalars(Path(d), args.tag)
    print(markdown(curves, args.tag))
    if args.png:
        plot(curves, args.tag, args.png, args.title or args.tag)


if __name__ == "__main__":
    try:
        main()
    except PbrlError as exc:
        raise SystemExit(f"learning_curves: error: {exc}") from None
