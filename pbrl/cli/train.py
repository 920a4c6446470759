"""``pbrl train``, ``pbrl bench`` and ``pbrl eval``: train an agent from preferences, a grid of them, and evaluate a
run in its simulator; ``pbrl curves`` and ``pbrl likelihood`` read what a run learned."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pbrl.cli.common import FORMATTER, float_in, int_at_least

AGENT_NAMES = ("bc", "cpl", "diff-uapa", "iql-constant", "iql-mr", "iql-oracle", "iql-pt", "oppo", "sft")
"""``pbrl.agents.AGENTS``'s names, written out so that building the parser (``pbrl --help``) imports no torch; a test
keeps the two equal."""


def run_settings(cfg, requested_scale: str) -> str:
    """One line: the settings that change the method or the numbers, as resolved (all of them are in config.toml)."""
    from pbrl.train.trainer import resolve_device

    device = resolve_device(cfg.train.device)
    scale = cfg.scale + (f" (--scale auto: {'CUDA' if cfg.scale == 'paper' else 'no CUDA'} here)"
                         if requested_scale == "auto" else "")
    amp = "on" if cfg.train.amp and device.type == "cuda" else ("off" if not cfg.train.amp else "off (CPU)")
    # a reward model is its own stage before the budget (not scaled by --steps): its steps are part of what runs
    reward_steps = getattr(cfg.agent_config, "reward_steps", None)
    stage = f" after {reward_steps} reward-model steps" if reward_steps else ""
    return (f"pbrl train: {cfg.agent} on {cfg.dataset}, preset {scale}, device {device}, bf16 autocast {amp}, "
            f"torch.compile {'on' if cfg.train.compile else 'off'}, {cfg.train.steps} steps{stage}, seed {cfg.train.seed}")


def cmd_train(args: argparse.Namespace) -> int:
    from pbrl.train.config import build_config
    from pbrl.train.trainer import train

    cfg = build_config(args.agent, args.dataset, scale=args.scale, overrides=args.set or [], steps=args.steps,
                       seed=args.seed, device=args.device, batch_size=args.batch_size)
    from pbrl.data.registry import load_dataset

    load_dataset(cfg.dataset, preferences=False)  # a missing dataset is its own one-line error, before the settings
    print(run_settings(cfg, args.scale), file=sys.stderr)
    for note in cfg.notes:  # phases scaled to a shorter --steps, a warm start that fills the budget
        print(note, file=sys.stderr)
    if args.dry_run:
        from pbrl.train.trainer import dry_run

        print(json.dumps(dry_run(cfg)))
        return 0
    result = train(cfg, args.out, progress=not args.quiet)
    print(json.dumps({k: result[k] for k in ("agent", "dataset", "normalized_score", "return_mean", "return_std",
                                             "episodes", "seed", *(["success_rate"] if "success_rate" in result else []),
                                             *(OFFLINE_KEYS if "action_mse" in result else []))}))
    return 0


OFFLINE_KEYS = ("offline_data", "action_mse", "action_mse_random", "preference_accuracy")  # runs without a simulator


def comma_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: the items of a comma-separated option, blanks dropped (an empty list is
    refused by the bench's plan, naming the option)."""
    return [item.strip() for item in text.split(",") if item.strip()]


def cmd_bench(args: argparse.Namespace) -> int:
    from pbrl.errors import ConfigError, describe
    from pbrl.train.bench import bench

    try:
        seeds = [int(s) for s in comma_list(args.seeds)]
    except ValueError:
        raise ConfigError(describe("--seeds", "seeds", repr(args.seeds), "comma-separated integers, e.g. 0,1,2")) from None
    ray = None
    placed = {"--address": args.address, "--cpus-per-cell": args.cpus_per_cell, "--gpus-per-cell": args.gpus_per_cell}
    if args.backend == "ray":
        from pbrl.train.bench import RaySettings

        ray = RaySettings(address=args.address, cpus_per_cell=args.cpus_per_cell or 1.0,
                          gpus_per_cell=args.gpus_per_cell or 0.0)
    elif any(v is not None for v in placed.values()):
        option = next(k for k, v in placed.items() if v is not None)
        raise ConfigError(describe(option, "backend", "local (the default)", "--backend ray beside it (it places "
                                   "Ray tasks)"))
    bench(comma_list(args.agents), comma_list(args.datasets), seeds, args.out, steps=args.steps, scale=args.scale,
          overrides=args.set or [], ceiling_check=not args.no_ceiling_check, progress=not args.quiet,
          record=args.record, report_only=args.report_only, ray=ray)
    print((Path(args.out) / "results.md").read_text())
    print(f"wrote {args.out}/results.csv, results.md, results.png")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    if args.video:
        from pbrl.envs.render import choose_gl

        choose_gl()  # before mujoco is imported: EGL or OSMesa, whichever draws here
    if (Path(args.run_dir) / "metadata.json").is_file():  # an export (`pbrl export`): through the runtime
        return eval_export(args)
    from pbrl.envs.evaluate import evaluate
    from pbrl.envs.registry import has_simulator
    from pbrl.errors import ConfigError, describe
    from pbrl.train.trainer import actor_policy, load_run

    cfg, agent, data = load_run(args.run_dir, args.device)
    if not args.env and not has_simulator(data.env):
        raise ConfigError(describe(str(args.run_dir), "environment", f"{data.env!r}, robot logs no simulator in pbrl "
                                   "replays", "--env ENV of the same sizes, or the offline metrics the run wrote to "
                                   "eval.json (train.eval_episodes=0)"))
    device = next(agent.parameters()).device
    result = evaluate(actor_policy(agent, args.episodes, device, args.seed), args.env or data.env,
                      episodes=args.episodes, seed=args.seed, dims=(agent.spec.obs_dim, agent.spec.act_dim),
                      video_dir=Path(args.run_dir) / "videos" if args.video else None, video_episodes=args.video,
                      video_size=args.video_size)
    checkpoint = agent.checkpoint  # the one load_run read (a damaged newer one is skipped)
    step = int(Path(checkpoint).stem.split("_")[-1])
    result = {"agent": cfg.agent, "dataset": data.name, **{k: v for k, v in result.items() if k != "seed"},
              "seed": cfg.train.seed, "eval_seed": args.seed, "checkpoint": checkpoint}
    # the run's own eval.json stays as training wrote it; each evaluation setting gets its own file
    return write_evaluation(args, f"step{step}", result)


def write_evaluation(args: argparse.Namespace, what: str, result: dict) -> int:
    """``DIR/eval-WHAT[-ENV]-Nep-seedS.json`` (one file per evaluation setting), and the result on stdout."""
    from pbrl.train.trainer import write_json

    env_tag = f"-{args.env}" if args.env else ""
    out = Path(args.run_dir) / f"eval-{what}{env_tag}-{args.episodes}ep-seed{args.seed}.json"
    write_json(out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "returns"}, indent=2))
    print(f"wrote {out}")
    return 0


def eval_export(args: argparse.Namespace) -> int:
    """``pbrl eval EXPORT_DIR``: the exported policy through ``pbrl.deploy`` (ONNX Runtime), on the env seeds a run's
    own evaluation uses (env i seeded seed + i); the result goes into the export folder as ``eval-…json``."""
    from pbrl.deploy import Policy
    from pbrl.envs.evaluate import evaluate
    from pbrl.errors import ConfigError, describe

    policy = Policy.load(args.run_dir, seed=args.seed)  # a diffusion policy's noise: the run's evaluation streams
    env = args.env or policy.metadata.get("env")
    if not env:
        raise ConfigError(describe("--env", "env", "none given and none in metadata.json", "an env preset to evaluate in"))
    act = lambda obs: policy.act(obs)  # noqa: E731
    act.reset = policy.reset  # type: ignore[attr-defined]  (a window or an action chunk restarts per episode)
    result = evaluate(act, env, episodes=args.episodes, seed=args.seed,
                      dims=(policy.obs_dim, policy.act_dim),
                      video_dir=Path(args.run_dir) / "videos" if args.video else None, video_episodes=args.video,
                      video_size=args.video_size)
    meta = policy.metadata
    result = {"agent": meta.get("agent"), "dataset": meta.get("dataset"), "export": str(args.run_dir),
              **{k: v for k, v in result.items() if k != "seed"}, "eval_seed": args.seed,
              "checkpoint": meta.get("checkpoint"), "runtime": "onnxruntime"}
    return write_evaluation(args, "export", result)


def report_file(option: str, path: str, suffixes: tuple[str, ...]) -> Path:
    """A report's output file (``--png``, ``--json``): its folder must exist and its suffix fit. A report is made
    to be regenerated, so an existing one is replaced, and the command says so."""
    from pbrl.errors import ConfigError, describe

    out = Path(path)
    if out.suffix.lower() not in suffixes:
        raise ConfigError(describe(option, "file", path, f"a {' or '.join(suffixes)} file"))
    if not out.parent.is_dir():
        raise ConfigError(describe(option, "folder", str(out.parent), "an existing folder"))
    return out


def wrote(path: Path, existed: bool) -> str:
    return f"wrote {path}" + (" (replaced the old one)" if existed else "")


def cmd_curves(args: argparse.Namespace) -> int:
    from pbrl.train.curves import curves_table, plot_curves, read_curves

    png = report_file("--png", args.png, (".png",)) if args.png else None
    curves = read_curves(args.runs, args.tag)
    print(curves_table(curves, args.tag))
    if png is not None:
        existed = png.exists()
        plot_curves(curves, args.tag, png, args.title or args.tag)
        print(wrote(png, existed))
    return 0


def cmd_likelihood(args: argparse.Namespace) -> int:
    from pbrl.io import atomic_write_text
    from pbrl.train.likelihood import format_likelihood, likelihood_report

    out = report_file("--json", args.json, (".json",)) if args.json else None
    report = likelihood_report(args.run_dir, args.labels)
    print(format_likelihood(report, args.run_dir))
    if out is not None:
        existed = out.exists()
        atomic_write_text(out, json.dumps(report, indent=2) + "\n")
        print(wrote(out, existed))
    return 0


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    tr = sub.add_parser("train", help="train an agent from preferences (resumes when --out holds an unfinished run)",
                        epilog="Presets live in agents/NAME.toml ([cpu] and [paper] scales). Any field can be "
                        "overridden: --set agent.alpha=0.2 --set train.lr=3e-4", formatter_class=FORMATTER)
    tr.add_argument("--agent", required=True, help=f"one of {list(AGENT_NAMES)}")
    tr.add_argument("--dataset", required=True, help="dataset name (datasets/NAME.toml) or preference .h5 path")
    tr.add_argument("--steps", type=int, default=None, help="gradient steps (default: the preset's)")
    tr.add_argument("--seed", type=int, default=None, help="seed for init, batches and dropout (default 0)")
    tr.add_argument("--batch-size", type=int, default=None, help="pairs per step (default: the preset's)")
    tr.add_argument("--out", required=True, help="run directory: config.toml, TensorBoard events, checkpoints/, eval.json")
    tr.add_argument("--scale", default="auto", help="preset scale: cpu | paper | auto (paper on CUDA); CPL also "
                    "cpu-locomotion | paper-locomotion (the D4RL recipe of cpl-human)")
    tr.add_argument("--device", default=None, help="auto | cpu | cuda | mps")
    tr.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config field")
    tr.add_argument("--quiet", action="store_true", help="no progress (a bar on a terminal, else a line every 30 s); "
                    "warnings still print")
    tr.add_argument("--dry-run", action="store_true", help="validate the config, build the agent, run two steps in "
                    "a temporary directory, write nothing (--out is not touched)")
    tr.set_defaults(func=cmd_train)


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    bn = sub.add_parser("bench", help="train an agent x dataset x seed grid (resumable); every score beside oracle IQL",
                        epilog="example: pbrl bench --agents cpl,sft,bc,iql-mr,iql-pt,iql-oracle --datasets "
                        "hopper-medium-replay-small --seeds 0,1,2 --out bench", formatter_class=FORMATTER)
    bn.add_argument("--agents", required=True, help=f"comma-separated, from {list(AGENT_NAMES)}")
    bn.add_argument("--datasets", required=True, help="comma-separated dataset names or .h5 paths")
    bn.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    bn.add_argument("--steps", type=int, default=None, help="gradient steps for every agent (default: each preset's)")
    bn.add_argument("--scale", default="cpu", help="preset scale: cpu | paper (CPL also cpu-locomotion, paper-locomotion)")
    bn.add_argument("--set", action="append", metavar="[AGENT:]SECTION.KEY=VALUE",
                    help="override a config field, for every agent or one (cpl:agent.alpha=0.2)")
    bn.add_argument("--out", default="bench", help="results folder (default: bench/)")
    bn.add_argument("--no-ceiling-check", action="store_true", help="skip oracle IQL at twice the budget")
    bn.add_argument("--record", action="store_true", help="record the oracle score in each dataset's card (the demo "
                    "shows it)")
    bn.add_argument("--report-only", action="store_true", help="train nothing: tabulate the finished cells, name the "
                    "missing ones")
    bn.add_argument("--quiet", action="store_true", help="no progress (bars on a terminal, else a line per cell and "
                    "one every 30 s); warnings and moved cells still print")
    bn.add_argument("--backend", choices=["local", "ray"], default="local", help="local: one cell after another in "
                    "this process; ray: one Ray task per cell (resumable the same way)")
    bn.add_argument("--address", default=None, help="ray: the cluster to join (auto, host:6379, ray://host:10001); "
                    "default: start a local Ray")
    bn.add_argument("--cpus-per-cell", type=float_in(0, 1024, low_open=True), default=None, metavar="N",
                    help="ray: CPUs each cell's task declares (default 1)")
    bn.add_argument("--gpus-per-cell", type=float_in(0, 64), default=None, metavar="F",
                    help="ray: GPUs each cell's task declares, a fraction shares one (default 0; add --set "
                    "train.device=cuda)")
    bn.set_defaults(func=cmd_bench)


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="evaluate a trained run in its simulator; writes DIR/eval-stepK-…-seedS.json")
    ev.add_argument("run_dir", help="a directory written by `pbrl train`, or an export (`pbrl export`): then the exported "
                    "policy is evaluated through pbrl.deploy")
    ev.add_argument("--episodes", type=int_at_least(1), default=10)
    ev.add_argument("--seed", type=int_at_least(0), default=100_000, help="env i is seeded seed + i")
    ev.add_argument("--env", default=None, help="evaluate in another env preset than the dataset's")
    ev.add_argument("--video", type=int_at_least(0), default=0, metavar="N", help="also render N episodes to DIR/videos/")
    ev.add_argument("--video-size", type=int_at_least(16), default=None, metavar="PX", help="the videos' width and "
                    "height in pixels (default: the env's own, 480 for MuJoCo)")
    ev.add_argument("--device", default="auto")
    ev.set_defaults(func=cmd_eval)


def add_curves_parser(sub: argparse._SubParsersAction) -> None:
    from pbrl.train.curves import DEFAULT_TAG

    cv = sub.add_parser("curves", help="learning curves of `pbrl train` runs from their TensorBoard events: a markdown "
                        "table (one column per evaluated step, the best and the last value) and a figure",
                        formatter_class=FORMATTER, epilog="example: pbrl curves runs/cpl-s0 expert=runs/cpl-expert-s0 "
                        "--png docs/curves.png; evaluations during training come from --set train.eval_every=2000")
    cv.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories, each optionally NAME=DIR (default "
                    "name: the directory's last component)")
    cv.add_argument("--tag", default=DEFAULT_TAG, help=f"the scalar to read (default {DEFAULT_TAG})")
    cv.add_argument("--png", default=None, help="also draw the curves into this .png file (replaced if it exists)")
    cv.add_argument("--title", default="", help="the figure's title (default: the tag)")
    cv.set_defaults(func=cmd_curves)


def add_likelihood_parser(sub: argparse._SubParsersAction) -> None:
    lk = sub.add_parser("likelihood", help="what a trained policy's likelihood says about its dataset: mean per-step "
                        "log π on each source policy's steps, and how often Σ log π agrees with each label set",
                        formatter_class=FORMATTER, epilog="example: pbrl likelihood runs/cpl-s0 "
                        "hopper-medium-replay-small --json runs/cpl-s0/likelihood.json")
    lk.add_argument("run_dir", help="a `pbrl train` run of an agent with an MLP policy (bc, sft, cpl)")
    lk.add_argument("labels", nargs="*", help="dataset names or preference files on the run's trajectories (default: "
                    "the run's own)")
    lk.add_argument("--json", default=None, metavar="FILE", help="also write the report as JSON (replaced if it "
                    "exists)")
    lk.set_defaults(func=cmd_likelihood)
