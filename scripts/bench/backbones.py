"""Backbone speed: gradient steps per second of BC and CPL with each backbone (MLP, transformer, diffusion), and the
evaluation actor's latency per action (p50, p99: a diffusion actor samples a new chunk every ``n_action`` calls).

    OMP_NUM_THREADS=1 python scripts/bench/backbones.py [--batch 256] [--segment 64] [--steps 10] [--profile]
    python scripts/bench/backbones.py --device cuda --profile     # the GPU check: fp32, bf16, bf16 + torch.compile
    OMP_NUM_THREADS=1 python scripts/bench/backbones.py --peer lerobot          # + LeRobot's diffusion policy

``--peer lerobot`` makes LeRobot's own virtual environment on first use (``.bench-venvs/lerobot``: lerobot 0.4.4,
the newest release that installs here, with the torch it pins; h5py and tomli-w so pbrl's source imports) and
runs ``scripts/bench/peers/lerobot_diffusion_worker.py`` there: both diffusion policies on the same torch in one process,
equal work (identical U-Net layout and parameter count, horizon, history, batch, DDIM steps), training-step and
per-action latency ratios measured in one run.

Each cell times the shared loop's own ``train_step`` (sampling included, as in training) on the shipped Hopper
trajectories with freshly drawn pairs of ``--segment`` steps; medians over ``--steps`` timed steps after warm-up.
Sizes are the presets' defaults (MLP 256×256; transformer width 128, 2 blocks, 4 heads; diffusion: MLP denoiser
256×256, horizon 16, 100 training steps, 10 DDIM steps). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from pbrl.data.pairing import make_preferences
from pbrl.data.registry import LoadedDataset, load_dataset
from pbrl.train.config import build_config
from pbrl.train.loop import Optimizers, train_step
from pbrl.train.peers import run_lerobot_worker
from pbrl.train.trainer import build_agent, make_sampler

BACKBONES = {"mlp": [], "transformer": ["agent.backbone=transformer"], "diffusion": ["agent.backbone=diffusion"]}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


MATRIX_KERNELS = ("gemm", "mm", "conv", "xmma", "cutlass", "flash", "fmha", "dot_product", "attention", "matmul")


def matrix_share(step, device: torch.device, steps: int = 3) -> float:
    """Fraction of the profiled step time spent in matrix kernels (matmuls, convolutions, fused attention): self
    device time of the CUDA kernels on a GPU, self CPU time of the ATen ops on a CPU."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync(device)
    timed = [(e.key.lower(), getattr(e, "self_device_time_total", 0) if device.type == "cuda" else e.self_cpu_time_total)
             for e in prof.key_averages()]
    total = sum(t for _, t in timed)
    return sum(t for k, t in timed if any(m in k for m in MATRIX_KERNELS)) / total if total else float("nan")


def bench_cell(agent_name: str, backbone: str, data: LoadedDataset, args, device: torch.device, setting: str) -> dict:
    amp, compiled = "bf16" in setting, "compile" in setting
    cfg = build_config(agent_name, data.name, scale="cpu", overrides=[
        f"train.device={device.type}", f"train.batch_size={args.batch}",
        *(["agent.bc_steps=0"] if agent_name == "cpl" else []), *BACKBONES[backbone]],
        steps=args.warmup + args.steps)
    cfg.dataset = data.name
    torch.manual_seed(0)
    agent = build_agent(cfg, data).to(device)
    sampler = make_sampler(cfg, agent, data, device, None)
    optimizers = Optimizers(agent.optimizers(), cfg.train)
    loss_fn = torch.compile(agent.loss) if compiled else agent.loss

    def step() -> None:
        train_step(agent, loss_fn, sampler.sample(args.batch), optimizers, 10**9, amp=amp and device.type == "cuda",
                   norms_wanted=False)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(args.warmup + args.steps):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    share = matrix_share(step, device) if args.profile else None
    agent.eval()
    actor = agent.actor(1, seed=0)
    actor.reset()
    obs = torch.as_tensor(data.trajectories.observations[:1], device=device)
    latencies = []
    with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=amp and device.type == "cuda"):
        for _ in range(args.actions):
            sync(device)
            t0 = time.perf_counter()
            actor(obs)
            sync(device)
            latencies.append(time.perf_counter() - t0)
    params = sum(p.numel() for p in agent.parameters() if p.requires_grad)
    return {"agent": agent_name, "backbone": backbone, "setting": setting, "params": params,
            "steps_per_s": 1.0 / statistics.median(times), "step_ms": 1000 * statistics.median(times),
            "act_p50_ms": 1000 * float(np.percentile(latencies, 50)),
            "act_p99_ms": 1000 * float(np.percentile(latencies, 99)), "peak_mib": peak, "matrix_share": share}


def lerobot_peer(batch: int, steps: int) -> dict:
    return run_lerobot_worker("--batch", str(batch), "--steps", str(steps))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=256, help="pairs per step")
    p.add_argument("--segment", type=int, default=64)
    p.add_argument("--pairs", type=int, default=2000, help="pairs drawn for the benchmark's preference table")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--actions", type=int, default=200, help="actor calls timed per cell")
    p.add_argument("--agents", default="bc,cpl")
    p.add_argument("--backbones", default="mlp,transformer,diffusion")
    p.add_argument("--device", default="cpu")
    p.add_argument("--settings", default=None, help="comma-separated from fp32, bf16, bf16+compile (bf16: autocast, CUDA "
                   "only); default: fp32 on a CPU, all three on a GPU (the GPU check, about 5 minutes)")
    p.add_argument("--profile", action="store_true", help="also the share of step time in matrix kernels (profiler)")
    p.add_argument("--peer", choices=["lerobot"], default=None, help="also compare with LeRobot's diffusion policy")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    shipped = load_dataset("hopper-medium-replay-small", preferences=False)
    prefs = make_preferences(shipped.trajectories, pairs=args.pairs, segment=args.segment, seed=0)
    data = LoadedDataset(name="hopper-medium-replay-small", env=shipped.env, trajectories=shipped.trajectories,
                         preferences=prefs)
    settings = (args.settings or ("fp32,bf16,bf16+compile" if device.type == "cuda" else "fp32")).split(",")
    unknown = [x for x in settings if x not in ("fp32", "bf16", "bf16+compile")]
    if unknown:
        p.error(f"--settings: got {unknown[0]!r}, expected fp32, bf16 or bf16+compile")
    rows = [bench_cell(a, b, data, args, device, st) for st in settings for a in args.agents.split(",")
            for b in args.backbones.split(",")]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}), batch {args.batch} pairs of {args.segment} steps, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, medians of {args.steps} steps after {args.warmup} warm-up\n")
    fmt = lambda v, spec: "–" if v is None else format(v, spec)  # noqa: E731
    print("| agent | backbone | setting | parameters | steps/s | ms/step | act p50 ms | act p99 ms | peak MiB | "
          "matrix kernels |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['agent']} | {r['backbone']} | {r['setting']} | {r['params']:,} | {r['steps_per_s']:.2f} | "
              f"{r['step_ms']:.1f} | {r['act_p50_ms']:.2f} | {r['act_p99_ms']:.2f} | {fmt(r['peak_mib'], '.0f')} | "
              f"{fmt(None if r['matrix_share'] is None else 100 * r['matrix_share'], '.0f')}{'' if r['matrix_share'] is None else ' %'} |")
    if args.peer == "lerobot":
        r = lerobot_peer(args.batch, args.steps)
        print(f"\nLeRobot's diffusion policy against pbrl's (unet1d), torch {r['torch']}, batch {r['batch']}, one thread:\n")
        print("| | parameters | train step ms | act p50 ms | act p99 ms |\n|---|---|---|---|---|")
        for lib in ("pbrl", "lerobot"):
            print(f"| {lib} | {r['params'][lib]:,} | {r['train_step_ms'][lib]:.1f} | {r['act_p50_ms'][lib]:.3f} | "
                  f"{r['act_p99_ms'][lib]:.1f} |")
        print(f"\nratios (LeRobot / pbrl, > 1: pbrl faster): train step {r['train_speed_ratio']:.2f}, "
              f"act p50 {r['act_p50_ratio']:.2f}; parameters pbrl / LeRobot {r['param_ratio']:.3f}")


if __name__ == "__main__":
    main()
