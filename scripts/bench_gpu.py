"""The GPU check for the control agents (DESIGN §7.7): about five minutes, one prepared script.

    python scripts/bench_gpu.py [--agents cpl,iql-oracle] [--steps 200] [--warmup 20]

For each agent at its ``paper`` preset (CPL: MLP 512x512, batch 96 pairs x 2 x 64 steps; IQL: MLPs 256x256,
batch 256 transitions):
1. the same loss on CPU and on CUDA for one batch and the same weights (fp32), within tolerance;
2. steps/s of the loop's inner step in fp32, bf16 autocast, and bf16 + ``torch.compile`` of the loss, medians of
   ``--steps`` timed steps after ``--warmup``; peak GPU memory of each.
Prints a markdown table for docs/benchmarks.md. Needs a CUDA device.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pbrl.data.registry import load_dataset
from pbrl.train.config import build_config
from pbrl.train.loop import Optimizers
from pbrl.train.trainer import build_agent, make_sampler


def setup(agent_name: str, data, device: torch.device, compile_: bool = False):
    cfg = build_config(agent_name, data.name, scale="paper", seed=0, overrides=[f"train.device={device.type}"])
    torch.manual_seed(0)
    agent = build_agent(cfg, data).to(device)
    sampler = make_sampler(cfg, agent, data, device)
    loss_fn = torch.compile(agent.loss) if compile_ else agent.loss
    return cfg, agent, sampler, loss_fn


def same_loss_on_cpu_and_cuda(agent_name: str, data) -> float:
    _, cpu_agent, cpu_sampler, _ = setup(agent_name, data, torch.device("cpu"))
    _, gpu_agent, gpu_sampler, _ = setup(agent_name, data, torch.device("cuda"))
    gpu_agent.load_state_dict(cpu_agent.state_dict())
    cpu_agent.eval()
    gpu_agent.eval()  # no dropout: the same function on both devices
    index = torch.arange(0, 4096, 16)
    with torch.no_grad():
        a = cpu_agent.loss(cpu_sampler.batch(index), 10**9).total()
        b = gpu_agent.loss(gpu_sampler.batch(index.cuda()), 10**9).total()
    torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-4)
    return float((b.cpu() - a).abs())


def speed(agent_name: str, data, amp: bool, compile_: bool, steps: int, warmup: int) -> dict:
    device = torch.device("cuda")
    cfg, agent, sampler, loss_fn = setup(agent_name, data, device, compile_)
    opts = Optimizers(agent.optimizers(), cfg.train)
    torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        batch = sampler.sample(cfg.train.batch_size)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            out = loss_fn(batch, 10**9)
        total = sum(out.per_optimizer(opts.names).values())
        opts.zero_grad()
        total.backward()
        opts.step(norms_wanted=False)
        agent.after_step(i)
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"steps_per_s": 1 / med, "step_ms": 1000 * med, "peak_mib": torch.cuda.max_memory_allocated() / 2**20,
            "batch": cfg.train.batch_size}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", default="cpl,iql-oracle")
    p.add_argument("--dataset", default="hopper-medium-replay-small")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    args = p.parse_args()
    data = load_dataset(args.dataset)
    print(f"# {torch.cuda.get_device_name()} · torch {torch.__version__} · paper presets · {args.dataset}")
    print("| agent | setting | batch | steps/s | step ms | peak MiB | CPU–CUDA loss gap (fp32) |")
    print("|---|---|---|---|---|---|---|")
    for name in args.agents.split(","):
        gap = same_loss_on_cpu_and_cuda(name, data)
        for label, amp, comp in (("fp32", False, False), ("bf16", True, False), ("bf16 + compile", True, True)):
            r = speed(name, data, amp, comp, args.steps, args.warmup)
            print(f"| {name} | {label} | {r['batch']} | {r['steps_per_s']:.0f} | {r['step_ms']:.2f} | "
                  f"{r['peak_mib']:.0f} | {gap:.1e} |", flush=True)


if __name__ == "__main__":
    main()
