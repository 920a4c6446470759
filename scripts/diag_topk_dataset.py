"""The top-k % of a dataset's episodes by true return, written as their own labelled dataset, so that BC on it
measures what imitation of the best data alone reaches (the "%BC" baseline of Chen et al., 2021).

    python scripts/diag_topk_dataset.py hopper-medium-replay-small --fraction 0.1 --out runs/topbc/top0.1
    OMP_NUM_THREADS=1 pbrl train --agent bc --dataset runs/topbc/top0.1.prefs.h5 --scale cpu --out runs/topbc-bc

Writes ``OUT.h5`` (the episodes) and ``OUT.prefs.h5`` (5,000 return-teacher pairs of 64-step segments: BC samples
segments from the pair table and ignores the labels).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pbrl.data.pairing import make_preferences
from pbrl.data.preferences import write_preferences
from pbrl.data.registry import load_dataset
from pbrl.data.store import TrajectoryDataset, write_trajectories


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset")
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--pairs", type=int, default=5000)
    p.add_argument("--segment", type=int, default=64)
    p.add_argument("--out", required=True, help="path prefix: writes OUT.h5 and OUT.prefs.h5")
    args = p.parse_args()
    traj = load_dataset(args.dataset, preferences=False).trajectories
    returns = traj.episode_returns()
    keep = np.sort(np.argsort(-returns)[: max(2, int(round(args.fraction * len(returns))))])
    episodes = [traj.episode(int(e)) for e in keep]
    traj_path, prefs_path = Path(args.out + ".h5"), Path(args.out + ".prefs.h5")
    traj_path.parent.mkdir(parents=True, exist_ok=True)
    path = write_trajectories(traj_path, episodes, env_id=traj.env_id, seed=0,
                              behaviour_policy=f"top {args.fraction:g} of {args.dataset}'s episodes by return")
    top = TrajectoryDataset(path)
    prefs = make_preferences(top, pairs=args.pairs, segment=args.segment, seed=0)
    write_preferences(prefs_path, prefs, top, teacher={"name": "return"}, seed=0)
    print(f"{len(episodes)} episodes, {sum(len(e.actions) for e in episodes)} steps, returns "
          f"{returns[keep].min():.0f} to {returns[keep].max():.0f}: wrote {path} and {prefs_path}")


if __name__ == "__main__":
    main()
