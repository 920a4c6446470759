"""Learning curves of finished or running ``pbrl train`` runs, read from their TensorBoard events
(``pbrl curves``): a markdown table, one row per run and one column per evaluated step, and a figure.

Evaluations come from ``train.eval_every`` (``pbrl train ... --set train.eval_every=2000``); the final one is always
there. tensorboard and matplotlib are imported only when needed.
"""

from __future__ import annotations

from pathlib import Path

from pbrl.errors import ConfigError, describe

DEFAULT_TAG = "eval/normalized_score"


def run_name_and_dir(spec: str) -> tuple[str, Path]:
    """``NAME=DIR`` or ``DIR`` (named by its last component) -> ``(name, directory)``."""
    if "=" in spec:
        name, _, directory = spec.rpartition("=")
        return name, Path(directory)
    return Path(spec).name, Path(spec)


def event_files(run_dir: Path) -> list[Path]:
    """A run's TensorBoard event files, oldest first (a resumed run has several)."""
    if not run_dir.is_dir():
        raise ConfigError(describe(str(run_dir), "run directory", "missing", "a run directory of `pbrl train`"))
    files = sorted(run_dir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise ConfigError(describe(str(run_dir), "TensorBoard events", "none", "a run directory of `pbrl train`"))
    return files


def read_scalars(run_dir: Path, tag: str) -> tuple[dict[int, float], set[str]]:
    """``({step: value}, every scalar tag seen)`` of one scalar ``tag`` over every event file of a run; the last
    file written wins where steps repeat."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[int, float] = {}
    tags: set[str] = set()
    for f in event_files(run_dir):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        tags.update(acc.Tags()["scalars"])
        if tag in acc.Tags()["scalars"]:
            values.update({e.step: e.value for e in acc.Scalars(tag)})
    return dict(sorted(values.items())), tags


def read_curves(specs: list[str], tag: str = DEFAULT_TAG) -> dict[str, dict[int, float]]:
    """``{run name: {step: value}}`` for each ``NAME=DIR`` or ``DIR``. A run without the tag yet (still before
    its first evaluation) has an empty curve; a tag that no run has is refused (a misspelt ``--tag``)."""
    curves: dict[str, dict[int, float]] = {}
    seen: set[str] = set()
    for spec in specs:
        name, directory = run_name_and_dir(spec)
        curves[name], tags = read_scalars(directory, tag)
        seen |= tags
    if not any(curves.values()):
        raise ConfigError(describe("--tag", "scalar tag", repr(tag), f"one that the runs logged: {sorted(seen)}"))
    return curves


def curves_table(curves: dict[str, dict[int, float]], tag: str) -> str:
    """Markdown: one row per run, one column per evaluated step (``2k`` for 2000), then the best and last value."""
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


def plot_curves(curves: dict[str, dict[int, float]], tag: str, path: str | Path, title: str) -> None:
    """Draw every run's curve against the gradient step into ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
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
    plt.close(fig)
