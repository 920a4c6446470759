"""``pbrl export``: a trained run's policy as one ONNX / TorchScript graph with its metadata, for ``pbrl.deploy``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pbrl.cli.common import FORMATTER


def cmd_export(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    import pbrl
    from pbrl.envs.registry import get_env_spec, make_env
    from pbrl.export import FORMATS, export_policy
    from pbrl.train.bench import config_hash
    from pbrl.train.trainer import load_run

    formats = FORMATS if args.format == "both" else (args.format,)
    out = Path(args.out) if args.out else Path(args.run_dir) / "export"
    if out.exists():  # before the run is loaded: an export is never overwritten
        from pbrl.errors import ConfigError, describe

        raise ConfigError(describe("--out", "folder", f"{out}, which exists", "a new folder (exports are never "
                                   "overwritten: remove it, or choose another)"))
    cfg, agent, data = load_run(args.run_dir, "cpu")
    obs_dim, act_dim = agent.spec.obs_dim, agent.spec.act_dim
    low, high, rate, env_id = -np.ones(act_dim), np.ones(act_dim), None, None
    if data.env:
        env = make_env(data.env)
        low, high = env.action_space.low, env.action_space.high
        rate = 1.0 / float(env.unwrapped.dt) if hasattr(env.unwrapped, "dt") else None
        env_id = get_env_spec(data.env).id
        env.close()
    metadata = {"pbrl_version": pbrl.__version__, "agent": cfg.agent, "dataset": cfg.dataset, "env": data.env,
                "env_id": env_id, "control_rate_hz": rate, "checkpoint": agent.checkpoint,
                "config_hash": config_hash(cfg),
                "dataset_sha256": {role: sha for role, (_, sha) in data.files().items()}}
    path = export_policy(agent, out, obs_dim=obs_dim, act_low=torch.as_tensor(low, dtype=torch.float32),
                         act_high=torch.as_tensor(high, dtype=torch.float32), formats=formats, metadata=metadata)
    print(json.dumps({"export": str(path), "files": sorted(p.name for p in path.iterdir())}))
    return 0


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser("export", help="a trained run's policy as one graph (ONNX and / or TorchScript) with "
                        "metadata.json, for the torch-free runtime pbrl.deploy", formatter_class=FORMATTER,
                        epilog="example: pbrl export runs/cpl --out exports/cpl; then in Python: "
                        "pbrl.deploy.Policy.load('exports/cpl').act(obs)")
    ex.add_argument("run_dir", help="a directory written by `pbrl train` (MLP policies in this version)")
    ex.add_argument("--format", default="both", choices=("onnx", "torchscript", "both"))
    ex.add_argument("--out", default=None, metavar="DIR", help="the export folder, new (default: RUN_DIR/export)")
    ex.set_defaults(func=cmd_export)
