"""The GPU check for the control agents (DESIGN §7.7): about five minutes, one prepared script.

    python scripts/bench/gpu.py [--agents cpl,iql-oracle] [--steps 200] [--warmup 20] [--device cuda]

For each agent at its ``paper`` preset (CPL: MLP 512x512, batch 96 pairs x 2 x 64 steps; IQL: MLPs 256x256,
batch 256 transitions):
1. the same loss on CPU and on the device for one batch and the same weights (fp32), within tolerance;
2. steps/s of the loop's own update (:func:`pbrl.train.loop.train_step`, sampling included) in fp32, bf16
   autocast, bf16 + ``torch.compile`` of the loss, and bf16 + ``torch.compile(mode="reduce-overhead")`` (CUDA
   graphs): the median of ``--steps`` timed steps after ``--warmup``, timed per block of 10 steps with one
   synchronisation per block, as the loop runs; peak device memory of each.
Prints a markdown table for docs/benchmarks.md. ``--device cpu`` is a dry run of the same code (fp32 rows only).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pbrl.data.registry import load_dataset
from pbrl.train.config import build_config
from pbrl.train.loop import Optimizers, train_step
from pbrl.train.trainer import build_agent, make_sampler

SETTINGS = (("fp32", False, None), ("bf16", True, None), ("bf16 + compile", True, "default"),
            ("bf16 + compile (CUDA graphs)", True, "reduce-overhead"))


def setup(agent_name: str, data, device: torch.device, compile_mode: str | None = None):
    cfg = build_config(agent_name, data.name, scale="paper", seed=0, overrides=[f"train.device={device.type}"])
    torch.manual_seed(0)
    agent = build_agent(cfg, data).to(device)
    sampler = make_sampler(cfg, agent, data, device)
    loss_fn = torch.compile(agent.loss, mode=compile_mode) if compile_mode else agent.loss
    return cfg, agent, sampler, loss_fn


def loss_gap_cpu_vs_device(agent_name: str, data, device: torch.device) -> float:
    _, cpu_agent, cpu_sampler, _ = setup(agent_name, data, torch.device("cpu"))
    _, dev_agent, dev_sampler, _ = setup(agent_name, data, device)
    dev_agent.load_state_dict(cpu_agent.state_dict())
    cpu_agent.eval()
    dev_agent.eval()  # no dropout: the same function on both devices
    index = torch.arange(0, 4096, 16)
    with torch.no_grad():
        a = cpu_agent.loss(cpu_sampler.batch(index), 10**9).total()
        b = dev_agent.loss(dev_sampler.batch(index.to(device)), 10**9).total()
    torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-4)
    return float((b.cpu() - a).abs())


def speed(agent_name: str, data, device: torch.device, amp: bool, compile_mode: str | None, steps: int,
          warmup: int, block: int = 10) -> dict:
    cfg, agent, sampler, loss_fn = setup(agent_name, data, device, compile_mode)
    opts = Optimizers(agent.optimizers(), cfg.train)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    agent.train()
    for i in range(warmup):
        train_step(agent, loss_fn, sampler.sample(cfg.train.batch_size), opts, i, amp=amp, norms_wanted=False)
    per_step = []
    for b in range(max(steps // block, 1)):
        sync()
        t0 = time.perf_counter()
        for i in range(block):
            train_step(agent, loss_fn, sampler.sample(cfg.train.batch_size), opts, warmup + b * block + i, amp=amp,
                       norms_wanted=False)
        sync()
        per_step.append((time.perf_counter() - t0) / block)
    med = statistics.median(per_step)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    return {"steps_per_s": 1 / med, "step_ms": 1000 * med, "peak_mib": peak, "batch": cfg.train.batch_size}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", default="cpl,iql-oracle")
    p.add_argument("--dataset", default="hopper-medium-replay-small")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    device = torch.device(args.device)
    data = load_dataset(args.dataset)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (dry run)"
    print(f"# {name} · torch {torch.__version__} · paper presets · {args.dataset} · "
          f"median of {args.steps} steps in blocks of 10 after {args.warmup} warm-up steps")
    print("| agent | setting | batch | steps/s | step ms | × fp32 | peak MiB | CPU–device loss gap (fp32) |")
    print("|---|---|---|---|---|---|---|---|")
    for agent_name in args.agents.split(","):
        gap = loss_gap_cpu_vs_device(agent_name, data, device)
        base = None
        for label, amp, mode in SETTINGS:
            if device.type != "cuda" and (amp or mode):
                continue
            try:
                r = speed(agent_name, data, device, amp, mode, args.steps, args.warmup)
            except Exception as e:  # one failing setting must not hide the others' figures
                print(f"| {agent_name} | {label} | – | failed: {type(e).__name__}: {str(e).splitlines()[0][:80]} |"
                      " | | | |", flush=True)
                continue
            base = base or r["step_ms"]
            print(f"| {agent_name} | {label} | {r['batch']} | {r['steps_per_s']:.0f} | {r['step_ms']:.2f} | "
                  f"{base / r['step_ms']:.2f} | {r['peak_mib']:.0f} | {gap:.1e} |", flush=True)


if __name__ == "__main__":
    main()
