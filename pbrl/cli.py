"""The ``pbrl`` command: ``pbrl data make|label|info``, ``pbrl train``, ``pbrl eval``.

Run ``pbrl COMMAND --help`` for the options of each; every error is one line naming the option or file.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

EXAMPLES = """\
examples:
  pbrl data info hopper-medium-replay-small            # what is in the shipped dataset
  pbrl train --agent cpl --dataset hopper-medium-replay-small --steps 2000 --seed 0 --out runs/cpl
  pbrl eval runs/cpl --episodes 10                     # re-evaluate the trained policy in MuJoCo
  pbrl data make --env hopper --mixture medium-replay --algo ppo --medium-steps 400000 \\
      --transitions 100000 --seed 0 --out my-hopper     # a new dataset from the simulator
  pbrl data label my-hopper --pairs 5000 --segment 64 --seed 0 --out my-hopper-prefs
"""


def _dataset_out(out: str, suffix: str) -> tuple[Path, Path | None]:
    """``--out`` as a name (-> ``datasets/NAME<suffix>`` + a card) or a path to an .h5 file (no card)."""
    if out.endswith((".h5", ".hdf5")) or "/" in out:
        return Path(out), None
    return Path("datasets") / f"{out}{suffix}", Path("datasets") / f"{out}.toml"


def cmd_data_make(args: argparse.Namespace) -> int:
    from pbrl.data.make import make_metaworld_dataset, make_mujoco_dataset
    from pbrl.data.registry import write_card
    from pbrl.envs.registry import get_env_spec

    spec = get_env_spec(args.env)
    path, card = _dataset_out(args.out, ".h5")
    if path.exists() and not args.overwrite:
        raise SystemExit(f"pbrl data make: --out: {path} exists; expected a new name (or pass --overwrite)")
    command = "pbrl " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if spec.family == "metaworld":
        noise = tuple(float(x) for x in args.noise.split(","))
        make_metaworld_dataset(spec.name, out=path, seed=args.seed, noise=noise, transitions=args.transitions,
                               command=command)
        how = {"behaviour": "Meta-World scripted policy + Gaussian action noise", "noise": list(noise)}
    else:
        make_mujoco_dataset(spec.name, args.mixture, out=path, seed=args.seed, algo=args.algo,
                            medium_steps=args.medium_steps, expert_steps=args.expert_steps,
                            transitions=args.transitions, behaviour_dir=args.behaviour_dir, command=command)
        how = {"behaviour": f"stable-baselines3 {args.algo.upper()}", "mixture": args.mixture,
               "medium_steps": args.medium_steps, "expert_steps": args.expert_steps}
    if card is not None:
        write_card(card, {"name": args.out, "env": spec.name, "trajectories": path.name,
                          "description": f"{spec.id} {args.mixture if spec.family != 'metaworld' else 'scripted-noise'}",
                          "made": {"command": command, "seed": args.seed, "transitions": args.transitions, **how}})
    print(f"wrote {path}" + (f" and {card}" if card else ""))
    return 0


def cmd_data_label(args: argparse.Namespace) -> int:
    from pbrl.data.preferences import RegretTeacher, ScriptedTeacher, label_pairs, write_preferences
    from pbrl.data.registry import load_dataset, write_card
    from pbrl.errors import ConfigError, describe

    if args.pairs < 1 or args.segment < 1:
        raise ConfigError(describe("--pairs/--segment", "value", f"{args.pairs}/{args.segment}", "positive integers"))
    if args.beta is not None and args.beta <= 0:
        raise ConfigError(describe("--beta", "rationality", args.beta, "a positive float (omit for a deterministic teacher)"))
    data = load_dataset(args.dataset, preferences=False)
    if args.teacher == "regret":
        teacher = RegretTeacher(beta=args.beta, gamma=0.99 if args.gamma is None else args.gamma, seed=args.seed)
    else:
        teacher = ScriptedTeacher(beta=args.beta, gamma=1.0 if args.gamma is None else args.gamma)
    prefs = label_pairs(data.trajectories, pairs=args.pairs, segment=args.segment, teacher=teacher, seed=args.seed)
    path, card = _dataset_out(args.out, ".prefs.h5")
    if card is not None and path.parent.resolve() != data.trajectories.path.parent.resolve():
        raise ConfigError(describe("--out", "name", args.out, "a name for a dataset whose trajectories live in datasets/ "
                                   "(or a path to an .h5 file)"))
    write_preferences(path, prefs, data.trajectories, teacher=teacher.as_dict(), seed=args.seed)
    command = "pbrl " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if card is not None:
        made = dict(data.card.get("made", {}))
        made.update({"label_command": command, "label_seed": args.seed, "pairs": args.pairs, "segment": args.segment,
                     "teacher": {k: v for k, v in teacher.as_dict().items() if v is not None}})
        write_card(card, {"name": args.out, "env": data.env, "trajectories": data.trajectories.path.name,
                          "preferences": path.name, "description": data.card.get("description", ""), "made": made})
    print(f"wrote {path}" + (f" and {card}" if card else ""))
    return 0


def dataset_info(name: str) -> dict[str, Any]:
    import numpy as np

    from pbrl.data.preferences import segment_returns
    from pbrl.data.registry import load_dataset

    data = load_dataset(name)
    traj = data.trajectories
    returns = traj.episode_returns()
    info: dict[str, Any] = {
        "name": data.name, "env": data.env, "env_id": traj.env_id, "episodes": traj.num_episodes,
        "transitions": traj.num_transitions, "obs_dim": traj.obs_dim, "act_dim": traj.act_dim,
        "behaviour_policy": traj.metadata.get("behaviour_policy", ""),
        "return": {"mean": float(returns.mean()), "std": float(returns.std()), "min": float(returns.min()),
                   "p25": float(np.percentile(returns, 25)), "median": float(np.median(returns)),
                   "p75": float(np.percentile(returns, 75)), "max": float(returns.max())},
        "episode_length": {"mean": float(traj.episode_lengths.mean()), "min": int(traj.episode_lengths.min()),
                           "max": int(traj.episode_lengths.max())},
        "pairs": 0,
    }
    if data.preferences is not None:
        p = data.preferences
        ra, rb = segment_returns(traj, p.segments_a), segment_returns(traj, p.segments_b)
        decided = (p.label != 0.5) & (ra != rb)
        agree = ((p.label > 0.5) == (ra > rb))[decided]
        info.update({"pairs": len(p), "segment_length": int(p.segments_a[:, 2].max()),
                     "label_counts": {"a": int((p.label > 0.5).sum()), "b": int((p.label < 0.5).sum()),
                                      "equal": int((p.label == 0.5).sum())},
                     "tie_fraction": float((p.label == 0.5).mean()), "skip_fraction": 0.0,
                     "label_agreement": float(agree.mean()) if agree.size else None})
    return info


def cmd_data_info(args: argparse.Namespace) -> int:
    info = dataset_info(args.dataset)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    r = info["return"]
    print(f"{info['name']}  ({info['env_id']})")
    print(f"  episodes     {info['episodes']:>10}   transitions {info['transitions']:>10}")
    print(f"  behaviour    {info['behaviour_policy']}")
    print(f"  return       mean {r['mean']:.1f} ± {r['std']:.1f}   min {r['min']:.1f}  p25 {r['p25']:.1f}  "
          f"median {r['median']:.1f}  p75 {r['p75']:.1f}  max {r['max']:.1f}")
    if info["pairs"]:
        c = info["label_counts"]
        print(f"  pairs        {info['pairs']:>10}   segment {info['segment_length']}")
        print(f"  labels       a {c['a']}  b {c['b']}  equal {c['equal']}   tie fraction {info['tie_fraction']:.3f}"
              f"   agreement with true return {info['label_agreement']:.3f}")
    else:
        print("  pairs        none (label some with `pbrl data label`)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pbrl.train.config import build_config
    from pbrl.train.trainer import train

    cfg = build_config(args.agent, args.dataset, scale=args.scale, overrides=args.set or [], steps=args.steps,
                       seed=args.seed, device=args.device, batch_size=args.batch_size)
    result = train(cfg, args.out, progress=not args.quiet)
    print(json.dumps({k: result[k] for k in ("agent", "dataset", "normalized_score", "return_mean", "return_std",
                                             "episodes", "seed", *(["success_rate"] if "success_rate" in result else []))}))
    return 0


def _headless_gl() -> None:
    """Pick a headless MuJoCo GL backend before mujoco is imported: OSMesa where its library is installed
    (Debian: libosmesa6), else EGL. An explicit MUJOCO_GL wins."""
    import ctypes.util
    import os

    if "MUJOCO_GL" not in os.environ:
        backend = "osmesa" if ctypes.util.find_library("OSMesa") else "egl"
        os.environ["MUJOCO_GL"] = backend
        if backend == "osmesa":
            os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")


def cmd_eval(args: argparse.Namespace) -> int:
    if args.video:
        _headless_gl()
    from pbrl.envs.evaluate import evaluate
    from pbrl.train.trainer import agent_policy, load_run, write_json

    cfg, agent, data = load_run(args.run_dir, args.device)
    device = next(agent.parameters()).device
    result = evaluate(agent_policy(agent, device), args.env or data.env, episodes=args.episodes, seed=args.seed,
                      video_dir=Path(args.run_dir) / "videos" if args.video else None, video_episodes=args.video)
    result = {"agent": cfg.agent, "dataset": data.name, **{k: v for k, v in result.items() if k != "seed"},
              "seed": cfg.train.seed, "eval_seed": args.seed}
    write_json(Path(args.run_dir) / "eval.json", result)
    print(json.dumps({k: v for k, v in result.items() if k != "returns"}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="pbrl", description="Offline preference-based RL: make datasets, train agents "
                                "from preferences, evaluate them in simulators.", epilog=EXAMPLES, formatter_class=fmt)
    from pbrl import __version__

    p.add_argument("--version", action="version", version=f"pbrl {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="make, label and inspect datasets")
    dsub = data.add_subparsers(dest="data_command", required=True)
    mk = dsub.add_parser("make", help="roll out behaviour policies in a simulator into a trajectory dataset",
                         description="MuJoCo: train (or resume) a stable-baselines3 behaviour policy and roll out a "
                         "D4RL-style mixture. Meta-World: the task's scripted policy with Gaussian action noise.")
    mk.add_argument("--env", required=True, help="env preset (envs/*.toml) or gymnasium id, e.g. hopper, button-press")
    mk.add_argument("--mixture", default="medium-replay", help="random | medium | medium-replay | medium-expert | expert")
    mk.add_argument("--algo", default="sac", choices=["sac", "ppo"], help="behaviour-policy trainer (default: sac)")
    mk.add_argument("--medium-steps", type=int, default=200_000, help="env steps to train the 'medium' policy")
    mk.add_argument("--expert-steps", type=int, default=1_000_000, help="env steps to train the 'expert' policy")
    mk.add_argument("--transitions", type=int, default=100_000, help="approximate size of the dataset in steps")
    mk.add_argument("--noise", default="0.1,0.5,1.0", help="Meta-World: comma-separated action-noise scales")
    mk.add_argument("--behaviour-dir", default="runs/behaviour", help="where behaviour policies are trained/cached")
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--out", required=True, help="dataset name (writes datasets/NAME.h5 + card) or a .h5 path")
    mk.add_argument("--overwrite", action="store_true", help="replace an existing dataset file")
    mk.set_defaults(func=cmd_data_make)

    lb = dsub.add_parser("label", help="sample segment pairs and label them with a scripted teacher")
    lb.add_argument("dataset", help="dataset name (datasets/NAME.toml) or .h5 path")
    lb.add_argument("--pairs", type=int, required=True, help="number of pairs to label")
    lb.add_argument("--segment", type=int, default=64, help="segment length T in steps")
    lb.add_argument("--teacher", default="scripted", choices=["scripted", "regret"],
                    help="scripted: Bradley-Terry on the true segment return; regret: on the segment's summed "
                    "advantage Σγ^t r_t + γ^T V(s_T) − V(s_0) under a fitted value function (CPL's assumption)")
    lb.add_argument("--beta", type=float, default=None, help="rationality β (stochastic labels); omit: deterministic")
    lb.add_argument("--gamma", type=float, default=None, help="discount inside a segment (scripted: 1, regret: 0.99)")
    lb.add_argument("--seed", type=int, default=0)
    lb.add_argument("--out", required=True, help="name (datasets/NAME.prefs.h5 + card) or .h5 path")
    lb.set_defaults(func=cmd_data_label)

    inf = dsub.add_parser("info", help="print size, returns and label statistics of a dataset")
    inf.add_argument("dataset", help="dataset name or .h5 path")
    inf.add_argument("--json", action="store_true", help="machine-readable output")
    inf.set_defaults(func=cmd_data_info)

    tr = sub.add_parser("train", help="train an agent from preferences (resumes when --out holds an unfinished run)",
                        epilog="Presets live in agents/NAME.toml ([cpu] and [paper] scales). Any field can be "
                        "overridden: --set agent.alpha=0.2 --set train.lr=3e-4", formatter_class=fmt)
    from pbrl.agents import AGENTS

    tr.add_argument("--agent", required=True, help=f"one of {sorted(AGENTS)}")
    tr.add_argument("--dataset", required=True, help="dataset name (datasets/NAME.toml) or preference .h5 path")
    tr.add_argument("--steps", type=int, default=None, help="gradient steps (default: the preset's)")
    tr.add_argument("--seed", type=int, default=None, help="seed for init, batches and dropout (default 0)")
    tr.add_argument("--batch-size", type=int, default=None, help="pairs per step (default: the preset's)")
    tr.add_argument("--out", required=True, help="run directory: config.toml, TensorBoard events, checkpoints/, eval.json")
    tr.add_argument("--scale", default="auto", help="preset scale: cpu | paper | auto (paper on CUDA)")
    tr.add_argument("--device", default=None, help="auto | cpu | cuda | mps")
    tr.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config field")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a trained run in its simulator; writes DIR/eval.json")
    ev.add_argument("run_dir", help="a directory written by `pbrl train`")
    ev.add_argument("--episodes", type=int, default=10)
    ev.add_argument("--seed", type=int, default=100_000, help="env i is seeded seed + i")
    ev.add_argument("--env", default=None, help="evaluate in another env preset than the dataset's")
    ev.add_argument("--video", type=int, default=0, metavar="N", help="also render N episodes to DIR/videos/")
    ev.add_argument("--device", default="auto")
    ev.set_defaults(func=cmd_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    from pbrl.errors import PbrlError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PbrlError as exc:
        print(f"pbrl: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
