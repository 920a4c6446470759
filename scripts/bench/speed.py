"""Training throughput of CPL: gradient steps per second and the share of each step spent sampling batches.

    OMP_NUM_THREADS=1 python scripts/bench/speed.py [--batch 256] [--segment 64] [--steps 30] [--device cpu]
    python scripts/bench/speed.py --device cuda --amp --compile      # on a GPU: bf16 autocast + torch.compile

Uses the shipped dataset's trajectories with freshly sampled pairs of ``--segment`` steps. Prints a markdown
table; medians over ``--steps`` timed steps after warm-up. (Batch assembly alone: scripts/bench/data.py.)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pbrl.agents import CPL, CPLConfig
from pbrl.data.pairing import make_preferences
from pbrl.data.preferences import PreferenceSampler
from pbrl.data.registry import load_dataset
from pbrl.train.trainer import data_spec


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(args, hidden: int, dropout: float, device: torch.device, data, prefs) -> dict:
    torch.manual_seed(0)
    traj = data.trajectories
    agent = CPL(CPLConfig(hidden_layers=[hidden, hidden], dropout=dropout, policy=args.policy, bc_steps=0),
                data_spec(traj)).to(device)
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
    prefs = make_preferences(data.trajectories, pairs=5000, segment=args.segment, seed=0)
    print(f"# CPL training throughput: {args.dataset}, batch {args.batch} pairs x 2 x {args.segment} steps, "
          f"device {device}{' bf16' if args.amp else ''}{' compiled' if args.compile else ''}, "
          f"{args.threads} thread(s), policy {args.policy}; median of {args.steps} steps")
    print("| MLP | dropout | steps/s | step ms | sampling ms | sampling share |")
    print("|---|---|---|---|---|---|")
    for hidden, dropout in ((256, 0.25), (512, 0.25)):
        r = bench(args, hidden, dropout, device, data, prefs)
        print(f"| {hidden}x{hidden} | {dropout} | {r['steps_per_s']:.2f} | {r['step_ms']:.1f} | {r['sample_ms']:.2f} "
              f"| {100 * r['sample_fraction']:.1f} % |")


if __name__ == "__main__":
    main()
