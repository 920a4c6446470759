"""``pbrl export``: a trained run's policy as one ONNX / TorchScript graph with its metadata, for ``pbrl.deploy``;
``pbrl deploy``: an export in a fixed-rate control loop with a watchdog, against a simulator standing in for the robot."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pbrl.cli.common import FORMATTER, float_in, int_at_least


def cmd_export(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    import pbrl
    from pbrl.envs.registry import get_env_spec, has_simulator, make_env
    from pbrl.export import FORMATS, check_request, export_policy
    from pbrl.train.bench import config_hash
    from pbrl.train.trainer import load_run

    formats = FORMATS if args.format == "both" else (args.format,)
    out = Path(args.out) if args.out else Path(args.run_dir) / "export"
    check_request(out, formats)  # before the run is loaded: an export is never overwritten
    run = Path(args.run_dir)
    if (run / "model.zip").is_file() or (run / "policy.pt").is_file():  # an Overcooked run (SB3)
        if args.checkpoint is not None:
            from pbrl.errors import ConfigError, describe

            raise ConfigError(describe("--checkpoint", "step", args.checkpoint, "none for an Overcooked run (it "
                                       "keeps its final policy only)"))
        return export_overcooked(run, out, formats)
    cfg, agent, data = load_run(args.run_dir, "cpu", step=args.checkpoint)
    obs_dim, act_dim = agent.spec.obs_dim, agent.spec.act_dim
    low, high, rate, env_id = -np.ones(act_dim), np.ones(act_dim), None, None
    if has_simulator(data.env):
        env = make_env(data.env)
        low, high = env.action_space.low, env.action_space.high
        rate = 1.0 / float(env.unwrapped.dt) if hasattr(env.unwrapped, "dt") else None
        env_id = get_env_spec(data.env).id
        env.close()
    else:  # robot logs: the logged actions' box, the recorded control rate
        actions = data.trajectories.actions
        low, high, env_id = actions.min(0), actions.max(0), data.env
        rate = data.trajectories.metadata.get("control_rate_hz")
    metadata = {"pbrl_version": pbrl.__version__, "agent": cfg.agent, "dataset": cfg.dataset, "env": data.env,
                "env_id": env_id, "control_rate_hz": rate, "checkpoint": agent.checkpoint,
                "config_hash": config_hash(cfg),
                "dataset_sha256": {role: sha for role, (_, sha) in data.files().items()}}
    path = export_policy(agent, out, obs_dim=obs_dim, act_low=torch.as_tensor(low, dtype=torch.float32),
                         act_high=torch.as_tensor(high, dtype=torch.float32), formats=formats, metadata=metadata)
    print(json.dumps({"export": str(path), "files": sorted(p.name for p in path.iterdir())}))
    return 0


def export_overcooked(run: Path, out: Path, formats: tuple[str, ...]) -> int:
    """``pbrl export`` of an Overcooked run (PPO's ``model.zip``, BC's ``policy.pt``): its SB3 policy's probabilities."""
    import pbrl
    from pbrl.data.preferences import sha256_file
    from pbrl.export import export_sb3_policy
    from pbrl.train.overcooked import load_policy

    config = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
    model = run / "model.zip" if (run / "model.zip").is_file() else run / "policy.pt"
    metadata = {"pbrl_version": pbrl.__version__, "agent": f"overcooked {model.stem}", "env": "overcooked",
                "layout": config.get("layout"), "source": str(model), "source_sha256": sha256_file(model)}
    path = export_sb3_policy(load_policy(run), out, formats=formats, metadata=metadata)
    print(json.dumps({"export": str(path), "files": sorted(p.name for p in path.iterdir())}))
    return 0


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser("export", help="a trained run's policy as one graph (ONNX and / or TorchScript) with "
                        "metadata.json, for the torch-free runtime pbrl.deploy", formatter_class=FORMATTER,
                        epilog="example: pbrl export runs/cpl --out exports/cpl; then in Python: "
                        "pbrl.deploy.Policy.load('exports/cpl').act(obs)")
    ex.add_argument("run_dir", help="a directory written by `pbrl train` (MLP, transformer or diffusion policies) or by `pbrl "
                    "overcooked ppo|bc|hybrid`")
    ex.add_argument("--format", default="both", choices=("onnx", "torchscript", "both"))
    ex.add_argument("--checkpoint", type=int_at_least(0), default=None, metavar="STEP",
                    help="export the checkpoint of this step (default: the newest that loads)")
    ex.add_argument("--out", default=None, metavar="DIR", help="the export folder, new (default: RUN_DIR/export)")
    ex.set_defaults(func=cmd_export)


def cmd_deploy(args: argparse.Namespace) -> int:
    from pbrl.deploy import ControlLoop, Policy
    from pbrl.envs.registry import make_env
    from pbrl.io import atomic_write_text, output_file

    log = output_file("--log", args.log or str(Path(args.export_dir) / "deploy.jsonl"), suffixes=(".jsonl",))
    policy = Policy.load(args.export_dir)
    rate = args.rate or policy.metadata.get("control_rate_hz")
    if not rate:
        from pbrl.errors import ConfigError, describe

        raise ConfigError(describe("--rate", "rate", "none given and none in metadata.json", "the control rate in Hz"))
    env = make_env(args.env)
    try:
        report = ControlLoop(policy, env, rate_hz=rate, safe_action=args.safe_action,
                             max_steps=args.max_steps).run(args.episodes, seed=args.seed, log=log)
    finally:
        env.close()
    summary = log.with_suffix(".report.json")
    atomic_write_text(summary, json.dumps(report.__dict__, indent=2) + "\n")
    print(report.line())
    print(f"wrote {log} (one line a step) and {summary}")
    return 0


def add_deploy_parser(sub: argparse._SubParsersAction) -> None:
    dp = sub.add_parser("deploy", help="run an export in a fixed-rate control loop with a watchdog (the safe action at "
                        "every missed deadline) against a simulator standing in for the robot; a JSONL log and a "
                        "cadence report", formatter_class=FORMATTER,
                        epilog="example: pbrl deploy exports/cpl --env hopper --rate 125 --episodes 2")
    dp.add_argument("export_dir", help="a folder written by `pbrl export`")
    dp.add_argument("--env", required=True, help="a pbrl env preset (hopper, button-press, ...) or a gymnasium id")
    dp.add_argument("--rate", type=float_in(0.0, 100_000.0, low_open=True), default=None, metavar="HZ",
                    help="control rate (default: the env's, from metadata.json)")
    dp.add_argument("--episodes", type=int_at_least(1), default=1)
    dp.add_argument("--max-steps", type=int_at_least(1), default=None, help="stop an episode after this many steps")
    dp.add_argument("--safe-action", default="zeros", choices=("zeros", "hold"), help="sent at a missed deadline or "
                    "for a non-finite action: zeros (clipped to the bounds) or hold the last action")
    dp.add_argument("--seed", type=int_at_least(0), default=100_000, help="env i is seeded seed + i")
    dp.add_argument("--log", default=None, metavar="FILE", help="the step log, a new .jsonl (default: "
                    "EXPORT_DIR/deploy.jsonl); the cadence report goes beside it (.report.json)")
    dp.set_defaults(func=cmd_deploy)
