"""Preference batches per second: the vectorised PreferenceSampler against the naive per-item loop, same run.

    OMP_NUM_THREADS=1 python scripts/bench/data.py [--batch 256] [--segment 64] [--repeats 50] [--device cpu]

Both build the same PreferenceBatch (obs [B,2,T,do], act [B,2,T,da], label, mask, group) for the same pair
indices of the shipped dataset; prints a markdown table with medians and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from pbrl.data.pairing import make_preferences
from pbrl.data.preferences import PreferenceBatch, PreferenceSampler
from pbrl.data.registry import load_dataset


def naive_batch(traj, prefs, index: np.ndarray, device) -> PreferenceBatch:
    """The per-item loop a first implementation would write: slice each segment, stack."""
    obs, act, mask = [], [], []
    t = int(prefs.segments_a[:, 2].max())
    for i in index:
        o2, a2, m2 = [], [], []
        for seg in (prefs.segments_a[i], prefs.segments_b[i]):
            lo = traj.episode_offsets[seg[0]] + seg[1]
            o = np.zeros((t, traj.obs_dim), np.float32)
            a = np.zeros((t, traj.act_dim), np.float32)
            o[: seg[2]] = traj.observations[lo:lo + seg[2]]
            a[: seg[2]] = traj.actions[lo:lo + seg[2]]
            o2.append(o)
            a2.append(a)
            m2.append(np.arange(t) < seg[2])
        obs.append(np.stack(o2))
        act.append(np.stack(a2))
        mask.append(np.stack(m2))
    return PreferenceBatch(torch.as_tensor(np.stack(obs), device=device), torch.as_tensor(np.stack(act), device=device),
                           torch.as_tensor(prefs.label[index], device=device), torch.as_tensor(np.stack(mask), device=device),
                           torch.as_tensor(prefs.group[index], device=device))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="hopper-medium-replay-small")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--segment", type=int, default=64)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    data = load_dataset(args.dataset, preferences=False)
    prefs = make_preferences(data.trajectories, pairs=5000, segment=args.segment, seed=0)
    sampler = PreferenceSampler(data.trajectories, prefs, device=device, seed=0)
    rng = np.random.default_rng(0)
    vec, naive = [], []
    for _ in range(args.repeats):
        index = rng.integers(0, len(prefs), args.batch)
        sync(device)
        t0 = time.perf_counter()
        a = sampler.batch(torch.as_tensor(index, device=device))
        sync(device)
        t1 = time.perf_counter()
        b = naive_batch(data.trajectories, prefs, index, device)
        sync(device)
        t2 = time.perf_counter()
        vec.append(t1 - t0)
        naive.append(t2 - t1)
    assert torch.equal(a.obs, b.obs) and torch.equal(a.mask, b.mask)
    v, n = statistics.median(vec), statistics.median(naive)
    print(f"# preference batches: {args.dataset}, B = {args.batch} pairs, T = {args.segment}, device {device}, "
          f"1 thread, median of {args.repeats}")
    print("| batch assembly | batches/s | ms per batch |")
    print("|---|---|---|")
    print(f"| PreferenceSampler (vectorised gather) | {1 / v:.1f} | {1000 * v:.2f} |")
    print(f"| per-item Python loop | {1 / n:.1f} | {1000 * n:.2f} |")
    print(f"| ratio (loop time / vectorised time) | {n / v:.1f}x | |")


if __name__ == "__main__":
    main()
