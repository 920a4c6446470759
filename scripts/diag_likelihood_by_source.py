"""What a trained policy's likelihood says about a dataset's sources and labels: CPL's implied score is
``α Σ_t log π(a_t|s_t)``, so before and after CPL it is worth knowing

- the mean per-step ``log π(a|s)`` (the score form CPL uses) on each source policy's steps (for a learner's
  replay, each PPO checkpoint): where it rises with the source's quality, the likelihood alone already orders
  the sources, e.g. because the later policies act with less exploration noise;
- how often the policy's own segment score ``Σ_t log π`` already agrees with each label set's decided labels.

    OMP_NUM_THREADS=1 python scripts/diag_likelihood_by_source.py RUN_DIR [LABELS ...] [--json FILE]

``RUN_DIR`` is a `pbrl train` run of an MLP policy agent (BC, SFT, CPL); ``LABELS`` are dataset names or
preference files on the same trajectories (default: the run's own). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from pbrl.data.registry import load_dataset
from pbrl.data.teachers import source_quality
from pbrl.train.trainer import load_run


def segment_sums(per_step: np.ndarray, offsets: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Σ over each (episode, start, length) segment of a per-step array ``[N]`` -> ``[P]``."""
    csum = np.concatenate([[0.0], np.cumsum(per_step, dtype=np.float64)])
    first = offsets[segments[:, 0]] + segments[:, 1]
    return csum[first + segments[:, 2]] - csum[first]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("labels", nargs="*")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg, agent, data = load_run(args.run_dir, "cpu")
    traj = data.trajectories
    with torch.no_grad():
        per_step = agent.policy.score_log_prob(torch.as_tensor(traj.observations), torch.as_tensor(traj.actions)).numpy()
    quality = source_quality(traj)                                       # per episode; NaN where unknown
    step_quality = np.repeat(quality, traj.episode_lengths)
    names = np.asarray(traj.episode_sources)
    by_source = {str(names[quality == q][0]): float(per_step[step_quality == q].mean())
                 for q in np.unique(quality[~np.isnan(quality)])}
    offsets = np.asarray(traj.episode_offsets)
    agreement = {}
    for name in args.labels or [cfg.dataset]:
        prefs = load_dataset(name).preferences
        used = prefs.used
        decided = used[prefs.label[used] != 0.5]
        margin = segment_sums(per_step, offsets, prefs.segments_a[decided]) - \
            segment_sums(per_step, offsets, prefs.segments_b[decided])
        agreement[name] = float(((margin > 0) == (prefs.label[decided] > 0.5)).mean())
    print(f"run {args.run_dir}: mean per-step log π (score form) by source, in the sources' order\n")
    print("| source (worst first) | mean log π per step |\n|---|---|")
    for name, v in by_source.items():
        print(f"| {name} | {v:.3f} |")
    print("\n| labels | agreement of Σ log π with the decided labels |\n|---|---|")
    for name, a in agreement.items():
        print(f"| {name} | {a:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"by_source": by_source, "agreement": agreement}, f, indent=2)


if __name__ == "__main__":
    main()
