"""Training throughput of CPL: gradient steps per second and the share of each step spent sampling batches.

    OMP_NUM_THREADS=1 python scripts/bench_speed.py [--batch 256] [--segment 64] [--steps 30] [--device cpu]
    python scripts/bench_speed.py --device cuda --amp --compile      # on a GPU: bf16 autocast + torch.compile

Uses the shipped dataset's trajectories with freshly sampled pairs of ``--segment`` steps. Also times the
naive per-item batch assembly (a Python loop over pairs) against the vectorised PreferenceSampler, as a
ratio measured in the same run. Prints a markdown table; medians over ``--steps`` timed steps after warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from pbrl.agents import CPL, CPLConfig
from pbrl.data.preferences import PreferenceBatch, PreferenceSampler, ScriptedTeacher, label_pairs
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


def bench(args, hidden: int, dropout: float, device: torch.device, data, prefs) -> dict:
    torch.manual_seed(0)
    traj = data.trajectories
    agent = CPL(CPLConfig(hidden=hidden, layers=2, dropout=dropout, policy=args.policy, bc_steps=0), traj.obs_dim,
                traj.act_dim).to(device)
    opt = torch.optim.AdamW(agent.parameters(), lr=1e-4)
    sampler = PreferenceSampler(traj, prefs, device=device, seed=0)
    loss_fn = torch.compile(agent.loss) if args.compile else agent.loss
    step_times, sample_times = [], []
    for i in range(args.warmup + args.steps):
        sync(device)
        t0 = time.perf_counter()
        batch = sampler.sample(args.batch)
        sync(device)
        t1 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp and device.type == "cuda"):
            out = loss_fn(batch, 10**9)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(agent.parameters(), 1.0)
        opt.step()
        sync(device)
        t2 = time.perf_counter()
        if i >= args.warmup:
            step_times.append(t2 - t0)
            sample_times.append(t1 - t0)
    med = statistics.median(step_times)
    return {"hidden": hidden, "dropout": dropout, "steps_per_s": 1.0 / med, "step_ms": 1000 * med,
            "sample_ms": 1000 * statistics.median(sample_times),
            "sample_fraction": statistics.median(s / t for s, t in zip(sample_times, step_times))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="hopper-medium-replay-small")
    p.add_argument("--batch", type=int, default=256, help="pairs per step")
    p.add_argument("--segment", type=int, default=64)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--policy", default="deterministic")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = load_dataset(args.dataset)
    prefs = label_pairs(data.trajectories, pairs=5000, segment=args.segment, teacher=ScriptedTeacher(), seed=0)
    print(f"# CPL training throughput: {args.dataset}, batch {args.batch} pairs x 2 x {args.segment} steps, "
          f"device {device}{' bf16' if args.amp else ''}{' compiled' if args.compile else ''}, "
          f"{args.threads} thread(s), policy {args.policy}; median of {args.steps} steps")
    print("| MLP | dropout | steps/s | step ms | sampling ms | sampling share |")
    print("|---|---|---|---|---|---|")
    for hidden, dropout in ((256, 0.25), (512, 0.25)):
        r = bench(args, hidden, dropout, device, data, prefs)
        print(f"| {hidden}x{hidden} | {dropout} | {r['steps_per_s']:.2f} | {r['step_ms']:.1f} | {r['sample_ms']:.2f} "
              f"| {100 * r['sample_fraction']:.1f} % |")
    # batch assembly alone: vectorised sampler vs the per-item loop, same pairs, same run
    sampler = PreferenceSampler(data.trajectories, prefs, device=device, seed=0)
    rng = np.random.default_rng(0)
    vec, naive = [], []
    for _ in range(args.steps):
        index = rng.integers(0, len(prefs), args.batch)
        sync(device)
        t0 = time.perf_counter()
        sampler.batch(torch.as_tensor(index, device=device))
        sync(device)
        t1 = time.perf_counter()
        naive_batch(data.trajectories, prefs, index, device)
        sync(device)
        t2 = time.perf_counter()
        vec.append(t1 - t0)
        naive.append(t2 - t1)
    v, n = statistics.median(vec), statistics.median(naive)
    print()
    print("| batch assembly | batches/s | ms |")
    print("|---|---|---|")
    print(f"| PreferenceSampler (vectorised) | {1 / v:.1f} | {1000 * v:.2f} |")
    print(f"| per-item Python loop | {1 / n:.1f} | {1000 * n:.2f} |")
    print(f"| ratio (loop time / vectorised time) | {n / v:.1f}x | |")


if __name__ == "__main__":
    main()
