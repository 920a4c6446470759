"""What a trained policy's likelihood says about a dataset's sources and labels (``pbrl likelihood``). CPL's
implied score is ``α Σ_t log π(a_t|s_t)``, so before and after CPL it is worth knowing

- the mean per-step ``log π(a|s)`` (the score form CPL uses) on each source policy's steps (for a learner's
  replay, each PPO checkpoint): where it rises with the source's quality, the likelihood alone already orders
  the sources, e.g. because the later policies act with less exploration noise;
- how often the policy's own segment score ``Σ_t log π`` already agrees with each label set's decided labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pbrl.errors import DatasetError, describe
from pbrl.train.offline_eval import segment_sums, step_log_probs


def size_of(trajectories: Any) -> str:
    """``"E episodes, N steps"`` of a trajectory dataset."""
    return f"{trajectories.num_episodes} episodes, {trajectories.num_transitions} steps"


def likelihood_report(run_dir: str | Path, labels: list[str] | None = None) -> dict[str, Any]:
    """``{"by_source": {source: mean log π per step}, "agreement": {labels: share of decided labels Σ log π
    follows}}`` for the `pbrl train` run in ``run_dir``; ``labels`` are dataset names or preference files on the
    run's trajectories (default: the run's own). Sources come in their known order, worst first (none when the
    dataset's sources have no known order); an agreement is None when a label set has no decided label."""
    from pbrl.data.registry import load_dataset
    from pbrl.data.teachers import source_quality
    from pbrl.train.trainer import load_run

    cfg, agent, data = load_run(run_dir, "cpu")
    traj = data.trajectories
    per_step = step_log_probs(agent, traj.observations, traj.actions, str(run_dir))
    by_source: dict[str, float] = {}
    quality = source_quality(traj)  # per episode; None when a source is not one `pbrl data make` writes
    if quality is not None:
        step_quality = np.repeat(quality, traj.episode_lengths)
        names = np.asarray(traj.episode_sources)
        by_source = {str(names[quality == q][0]): float(per_step[step_quality == q].mean())
                     for q in np.unique(quality[~np.isnan(quality)])}
    offsets = np.asarray(traj.episode_offsets)
    agreement: dict[str, float | None] = {}
    for name in labels or [cfg.dataset]:
        loaded = load_dataset(name)
        prefs = loaded.preferences
        if prefs is None:
            raise DatasetError(describe(name, "preferences", "none", "a dataset with labels"))
        if size_of(loaded.trajectories) != size_of(traj):  # segments index steps: other trajectories misalign
            raise DatasetError(describe(name, "trajectories", size_of(loaded.trajectories),
                                        f"the run's ({size_of(traj)}): labels on the run's trajectories"))
        used = prefs.used
        decided = used[prefs.label[used] != 0.5]
        if len(decided) == 0:
            agreement[name] = None
            continue
        margin = segment_sums(per_step, offsets, prefs.segments_a[decided]) - \
            segment_sums(per_step, offsets, prefs.segments_b[decided])
        agreement[name] = float(((margin > 0) == (prefs.label[decided] > 0.5)).mean())
    return {"by_source": by_source, "agreement": agreement}


def format_likelihood(report: dict[str, Any], run_dir: str | Path) -> str:
    """The report as two markdown tables."""
    lines = [f"run {run_dir}: mean per-step log π (score form) by source, in the sources' order\n",
             "| source (worst first) | mean log π per step |\n|---|---|"]
    if not report["by_source"]:
        lines.append("| (the dataset's sources have no known order) | |")
    lines += [f"| {name} | {v:.3f} |" for name, v in report["by_source"].items()]
    lines.append("\n| labels | agreement of Σ log π with the decided labels |\n|---|---|")
    lines += [f"| {name} | {'–' if a is None else f'{a:.3f}'} |" for name, a in report["agreement"].items()]
    return "\n".join(lines)
