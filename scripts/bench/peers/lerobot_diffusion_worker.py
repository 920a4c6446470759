"""Runs inside LeRobot's own virtual environment (made by ``scripts/bench/backbones.py --peer lerobot``), with pbrl's
source on ``PYTHONPATH``, so both diffusion policies run on the *same* torch build in one process.

Equal work (DESIGN §7.4): LeRobot's ``DiffusionPolicy`` (1-D conv U-Net, FiLM) on a state input (LeRobot takes it as
a robot state and an environment state, half each: it asks for one of the two besides the state) and pbrl's
``DiffusionPolicy`` with its ``unet1d`` denoiser, the same widths (``--down-dims``), step-embedding size, kernel,
groups, observation history, horizon, chunk execution, batch and DDIM steps; the parameter counts are printed and
must agree within 5 %. Timed: one training step (forward, backward, AdamW) on the same batch (skipped with
``--steps 0``), and ``select_action`` (LeRobot) against pbrl's ``ChunkActor`` per call (a new chunk every ``n_action``
calls, so p50 and p99 differ): ``--actions`` timed calls each, after ``--act-warmup`` untimed ones, split over
``--act-rounds`` alternating rounds. ``scripts/bench/deploy.py --peer lerobot`` runs it with ``--steps 0`` and the
sizes of its own unet1d export. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch


def lerobot_policy(args: argparse.Namespace) -> torch.nn.Module:
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    half = args.obs_dim // 2  # LeRobot asks for an image or an environment state beside the robot state
    cfg = DiffusionConfig(
        input_features={"observation.state": PolicyFeature(type=FeatureType.STATE, shape=(half,)),
                        "observation.environment_state": PolicyFeature(type=FeatureType.ENV,
                                                                       shape=(args.obs_dim - half,))},
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(args.act_dim,))},
        n_obs_steps=args.n_obs, horizon=args.horizon, n_action_steps=args.n_action,
        down_dims=tuple(args.down_dims), kernel_size=5, n_groups=8, diffusion_step_embed_dim=args.time_dim,
        noise_scheduler_type="DDIM", num_train_timesteps=100, num_inference_steps=args.ddim_steps, device="cpu")
    return DiffusionPolicy(cfg)


def pbrl_policy(args: argparse.Namespace) -> torch.nn.Module:
    from pbrl.nets.diffusion import DiffusionPolicy

    return DiffusionPolicy(args.obs_dim, args.act_dim, horizon=args.horizon, n_obs=args.n_obs, denoiser="unet1d",
                           train_steps=100, sample_steps=args.ddim_steps, channels=tuple(args.down_dims),
                           time_dim=args.time_dim)


def time_steps(step: Callable[[], object], n: int, warmup: int) -> list[float]:
    out = []
    for i in range(warmup + n):
        t0 = time.perf_counter()
        step()
        if i >= warmup:
            out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--obs-dim", type=int, default=22, help="split in half: LeRobot's state and environment state")
    p.add_argument("--act-dim", type=int, default=3)
    p.add_argument("--n-obs", type=int, default=2)
    p.add_argument("--horizon", type=int, default=16)
    p.add_argument("--n-action", type=int, default=8)
    p.add_argument("--down-dims", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--time-dim", type=int, default=128)
    p.add_argument("--ddim-steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=10, help="timed training steps per library (0: no training timing)")
    p.add_argument("--actions", type=int, default=80, help="timed select_action / ChunkActor calls per library")
    p.add_argument("--act-warmup", type=int, default=0, help="untimed calls per library before each round")
    p.add_argument("--act-rounds", type=int, default=1, help="alternating rounds the timed calls are split over")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(args.batch, args.n_obs, args.obs_dim, generator=g)
    chunk = torch.rand(args.batch, args.horizon, args.act_dim, generator=g) * 2 - 1
    ours, theirs = pbrl_policy(args), lerobot_policy(args)
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-4)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-4)
    half = args.obs_dim // 2
    as_lerobot = lambda o: {"observation.state": o[..., :half], "observation.environment_state": o[..., half:]}  # noqa: E731
    batch = {**as_lerobot(obs), "action": chunk,
             "action_is_pad": torch.zeros(args.batch, args.horizon, dtype=torch.bool)}

    def step_ours():
        loss = ours.loss(obs, chunk).mean()
        opt_ours.zero_grad(set_to_none=True)
        loss.backward()
        opt_ours.step()

    def step_theirs():
        loss, _ = theirs.forward(batch)
        opt_theirs.zero_grad(set_to_none=True)
        loss.backward()
        opt_theirs.step()

    train: dict[str, list[float]] = {"pbrl": [], "lerobot": []}
    for _ in range(2 if args.steps > 0 else 0):  # alternating rounds, so drift on a shared machine hits both
        train["pbrl"] += time_steps(step_ours, args.steps, 2)
        train["lerobot"] += time_steps(step_theirs, args.steps, 2)

    from pbrl.agents.actors import ChunkActor

    ours.eval()
    theirs.eval()
    actor = ChunkActor(lambda o, noise: ours.sample(o, noise=noise), 1, args.obs_dim, args.act_dim, n_obs=args.n_obs,
                       horizon=args.horizon, n_action=args.n_action)
    actor.reset()
    theirs.reset()
    single = torch.randn(1, args.obs_dim, generator=g)
    calls = {"pbrl": lambda: actor(single), "lerobot": lambda: theirs.select_action(as_lerobot(single))}
    act: dict[str, list[float]] = {"pbrl": [], "lerobot": []}
    rounds = max(1, args.act_rounds)
    with torch.no_grad():
        for r in range(rounds):  # alternating rounds, as for the training steps
            n = args.actions // rounds + (r < args.actions % rounds)
            for lib, call in calls.items():
                act[lib] += time_steps(call, n, args.act_warmup)
    result = {"torch": torch.__version__, "params": {"pbrl": count(ours), "lerobot": count(theirs)}, "batch": args.batch,
              "settings": {k: getattr(args, k) for k in ("obs_dim", "act_dim", "n_obs", "horizon", "n_action",
                                                          "down_dims", "time_dim", "ddim_steps", "actions",
                                                          "act_warmup", "act_rounds")},
              "train_step_ms": ({k: 1000 * statistics.median(v) for k, v in train.items()} if args.steps > 0 else None),
              "act_calls": {k: len(v) for k, v in act.items()},
              "act_p50_ms": {k: 1000 * float(np.percentile(v, 50)) for k, v in act.items()},
              "act_p99_ms": {k: 1000 * float(np.percentile(v, 99)) for k, v in act.items()},
              "act_max_ms": {k: 1000 * max(v) for k, v in act.items()}}
    result["param_ratio"] = result["params"]["pbrl"] / result["params"]["lerobot"]
    result["train_speed_ratio"] = (result["train_step_ms"]["lerobot"] / result["train_step_ms"]["pbrl"]
                                   if args.steps > 0 else None)
    result["act_p50_ratio"] = result["act_p50_ms"]["lerobot"] / result["act_p50_ms"]["pbrl"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
