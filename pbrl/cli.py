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
  pbrl data label my-hopper --pairs 5000 --beta 0.1 --mistake 0.1 --groups groups.toml --seed 0 --out my-hopper-noisy
  pbrl data import-labels answers.jsonl --dataset my-hopper --out my-hopper-human
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
        from pbrl.errors import ConfigError, describe

        raise ConfigError(describe("--out", "dataset file", f"{path} (exists)", "a new name (or pass --overwrite)"))
    command = "pbrl " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if spec.family == "metaworld":
        noise = tuple(float(x) for x in args.noise.split(","))
        make_metaworld_dataset(spec.name, out=path, seed=args.seed, noise=noise, transitions=args.transitions,
                               command=command, reversed_fraction=args.reversed)
        how = {"behaviour": "Meta-World scripted policy + Gaussian action noise", "noise": list(noise),
               **({"reversed_fraction": args.reversed} if args.reversed else {})}
    else:
        make_mujoco_dataset(spec.name, args.mixture, out=path, seed=args.seed, algo=args.algo,
                            medium_steps=args.medium_steps, expert_steps=args.expert_steps,
                            transitions=args.transitions, behaviour_dir=args.behaviour_dir, command=command,
                            expert_algo=args.expert_algo)
        how = {"behaviour": f"stable-baselines3 {args.algo.upper()}", "mixture": args.mixture,
               "expert_algo": args.expert_algo or args.algo,
               "medium_steps": args.medium_steps, "expert_steps": args.expert_steps}
    if card is not None:
        write_card(card, {"name": args.out, "env": spec.name, "trajectories": path.name,
                          "description": f"{spec.id} " + (args.mixture if spec.family != "metaworld" else
                                                          "scripted policy + noise" + (f", {args.reversed:g} of the "
                                                          "steps from the reversed policy" if args.reversed else "")),
                          "made": {"command": command, "seed": args.seed, "transitions": args.transitions, **how}})
    print(f"wrote {path}" + (f" and {card}" if card else ""))
    return 0


def teacher_from_args(args: argparse.Namespace):
    from pbrl.data.teachers import Teacher
    from pbrl.errors import ConfigError, describe

    if args.gamma is not None:
        raise ConfigError(describe("--gamma", "option", args.gamma, "--myopic (the myopic weight of B-Pref; the "
                                   "discount inside a segment is --discount)"))
    regret = args.teacher == "regret"
    if not regret and (args.critic or args.expert):
        raise ConfigError(describe("--critic/--expert", "critic", args.critic or args.expert,
                                   "nothing: only `--teacher regret` has a critic"))
    if args.expert and args.critic not in (None, "expert"):
        raise ConfigError(describe("--expert", "critic", repr(args.critic), "'expert' (or leave --critic out)"))
    critic = "expert" if args.expert else args.critic
    return Teacher(utility="regret" if regret else "return", beta=args.beta, mistake=args.mistake,
                   skip_threshold=args.skip_threshold, equal_margin=args.equal_margin, myopic=args.myopic,
                   discount=args.discount, seed=args.seed, critic=critic if regret else None,
                   expert=args.expert, value_steps=args.critic_steps)


CRITIC_WORDS = {"iql": "IQL's in-sample optimal value fitted to the true reward",
                "expert": "the advantage under an expert's critic",
                "behaviour": "a value fitted to the behaviour's own returns (weak)"}


def describe_labels(args: argparse.Namespace, teacher, groups) -> str:
    """One sentence for the card: how these labels were made (the description may predate them)."""
    who = (f"{len(groups)} user groups ({', '.join(g.name for g in groups)})" if groups else
           f"the {teacher.utility} teacher" + (f" (critic: {CRITIC_WORDS[teacher.critic_name]}"
                                               + (f", {teacher.expert}" if teacher.critic_name == "expert" else "") + ")"
                                               if teacher.utility == "regret" else ""))
    what = f"{args.pairs} {f'{args.rank}-way rankings' if args.rank else 'pairs'} of {args.segment}-step segments"
    noise = [f"{k} {v}" for k, v in (("beta", args.beta), ("mistake", args.mistake), ("skip below", args.skip_threshold),
                                     ("equal within", args.equal_margin), ("myopic", args.myopic)) if v not in (None, 0.0, 1.0)]
    return (f"{what}, {args.pairing} pairing ({args.mode}), labelled by {who}"
            + (f", noise: {', '.join(noise)}" if noise else ", no noise") + f"; seed {args.seed}.")


def train_expert(trajectories, teacher, behaviour_dir: str):
    """The teacher with ``expert`` set to the dataset's own expert, trained (or resumed) as `pbrl data make`
    trains it, under ``behaviour_dir``."""
    import dataclasses

    from pbrl.data.make import train_behaviour
    from pbrl.train.critics import dataset_expert

    env, algo, steps, seed, directory = dataset_expert(trajectories, behaviour_dir)
    train_behaviour(env, algo=algo, steps=steps, seed=seed, directory=directory)
    return dataclasses.replace(teacher, expert=str(directory))


def cmd_data_label(args: argparse.Namespace) -> int:
    from pbrl.data.pairing import make_preferences
    from pbrl.data.preferences import write_preferences
    from pbrl.data.registry import load_dataset, write_card
    from pbrl.data.teachers import load_groups
    from pbrl.errors import ConfigError, describe

    if args.pairs < 1 or args.segment < 1:
        raise ConfigError(describe("--pairs/--segment", "value", f"{args.pairs}/{args.segment}", "positive integers"))
    teacher = teacher_from_args(args)
    groups = load_groups(args.groups, teacher) if args.groups else None
    path, card = _dataset_out(args.out, ".prefs.h5")
    if path.exists() and not args.force:
        raise ConfigError(describe("--out", "preference file", f"{path} (exists)", "a new name, or --force to replace "
                                   "these labels (runs trained on them then refuse to resume)"))
    data = load_dataset(args.dataset, preferences=False)
    if card is not None and path.parent.resolve() != data.trajectories.path.parent.resolve():
        raise ConfigError(describe("--out", "name", args.out, "a name for a dataset whose trajectories live in datasets/ "
                                   "(or a path to an .h5 file)"))
    from pbrl.train.critics import fit_reward_ensemble, regret_advantages

    if teacher.utility == "regret" and teacher.critic_name == "expert" and teacher.expert is None:
        teacher = train_expert(data.trajectories, teacher, args.behaviour_dir)
    prefs = make_preferences(data.trajectories, pairs=args.pairs, segment=args.segment, teacher=teacher, groups=groups,
                             pairing=args.pairing, mode=args.mode, rank=args.rank, seed=args.seed,
                             critic=regret_advantages, ensemble=fit_reward_ensemble)
    how = {"teacher": teacher.as_dict(), "pairing": args.pairing, "mode": args.mode, "rank": args.rank}
    if groups:
        how["groups"] = [{"name": g.name, "share": g.share, **g.teacher.params()} for g in groups]
    write_preferences(path, prefs, data.trajectories, teacher=how, seed=args.seed)
    # the command that makes these labels anew (--force only let this run replace the old ones)
    command = "pbrl " + " ".join(shlex.quote(a) for a in sys.argv[1:] if a != "--force")
    if card is not None:
        made = {k: v for k, v in data.card.get("made", {}).items() if k != "label_note"}  # notes on the old labels
        made.update({"label_command": command, "label_seed": args.seed, "pairs": args.pairs, "segment": args.segment,
                     **{k: v for k, v in how.items() if k != "groups"}})
        if groups:
            made["groups"] = how["groups"]
        kept = {k: data.card[k] for k in ("oracle", "control") if k in data.card}  # of the trajectories, not the labels
        write_card(card, {"name": args.out, "env": data.env, "trajectories": data.trajectories.path.name,
                          "preferences": path.name, "description": data.card.get("description", ""),
                          "labels": describe_labels(args, teacher, groups), "made": made, **kept})
    print(f"wrote {path}" + (f" and {card}" if card else ""))
    if groups:
        from pbrl.data.teachers import consistency_report

        report = consistency_report(data.trajectories, prefs.segments_a, prefs.segments_b, prefs.label, prefs.group,
                                    groups, prefs.skipped, critic=regret_advantages)
        print(format_consistency(report))
    return 0


def format_consistency(report: dict[str, Any]) -> str:
    names = report["groups"]
    fmt = lambda v: "  –  " if v is None else f"{v:.3f}"  # noqa: E731
    lines = ["consistency: row = whose labels, column = whose utility (fraction of decided labels that agree)",
             f"{'':<14}{'labels':>8} " + " ".join(f"{n[:10]:>10}" for n in names)]
    for i, n in enumerate(names):
        lines.append(f"{n[:14]:<14}{report['labels'][i]:>8} " + " ".join(f"{fmt(v):>10}" for v in report["cross_agreement"][i]))
    return "\n".join(lines)


def _write_imported(args: argparse.Namespace, write, description: str) -> int:
    """Run ``write(path)`` for ``--out`` (a name gets a card) and report."""
    from pbrl.data.registry import write_card
    from pbrl.data.store import TrajectoryDataset
    from pbrl.envs.registry import get_env_spec
    from pbrl.errors import ConfigError, describe

    path, card = _dataset_out(args.out, ".h5")
    if path.exists():
        raise ConfigError(describe("--out", "dataset file", f"{path} (exists)", "a new name"))
    write(path)
    if card is not None:
        with TrajectoryDataset(path) as ds:
            env = get_env_spec(ds.env_id).name
        write_card(card, {"name": args.out, "env": env, "trajectories": path.name, "description": description,
                          "made": {"command": "pbrl " + " ".join(shlex.quote(a) for a in sys.argv[1:])}})
    print(f"wrote {path}" + (f" and {card}" if card else ""))
    return 0


def cmd_import_d4rl(args: argparse.Namespace) -> int:
    from pbrl.data.formats import import_d4rl
    from pbrl.envs.registry import get_env_spec

    env_id = get_env_spec(args.env).id
    return _write_imported(args, lambda p: import_d4rl(args.file, p, env_id=env_id), f"imported from {args.file}")


def cmd_import_overcooked(args: argparse.Namespace) -> int:
    import numpy as np

    from pbrl.data.store import Episode, write_trajectories
    from pbrl.envs.overcooked import ACTION_NAMES, FEATURES, N_ACTIONS, step_infos
    from pbrl.envs.overcooked_human import convert_games, read_trials, trials_path
    from pbrl.envs.registry import all_env_specs

    spec = next((s for s in all_env_specs().values() if s.family == "overcooked" and s.layout == args.layout), None)
    if spec is None:
        from pbrl.errors import ConfigError, describe

        known = sorted(s.layout for s in all_env_specs().values() if s.family == "overcooked")
        raise ConfigError(describe("--layout", "layout", repr(args.layout), f"one of the trials' layouts {known}"))
    source = Path(args.pickle) if args.pickle else trials_path(args.split)
    games = convert_games(read_trials(source), args.layout, where=str(source))
    eye = np.eye(N_ACTIONS, dtype=np.float32)
    episodes = []
    for g in games:
        for player in (0, 1):
            infos = step_infos(g.events, g.x, player)
            episodes.append(Episode(g.observations[player], eye[g.actions[:, player]], g.rewards, False,
                                    g.final_observations[player], f"{g.source}:player{player}", infos))
    games_meta = [{"worker": g.worker, "round": g.round, "steps": len(g.rewards), "soups": float(g.rewards.sum() / 20)}
                  for g in games]
    consistent = float(np.mean(np.concatenate([g.consistent for g in games])))
    meta = {"layout": args.layout, "split": args.split, "source": str(source), "games": games_meta,
            "action_space": {"type": "discrete", "n": N_ACTIONS, "names": list(ACTION_NAMES), "encoding": "one-hot"},
            "observation_features": [list(f) for f in FEATURES], "dynamics_agreement": consistent,
            "reward": "the package's sparse reward, 20 per soup (the trials paid 5 points per soup)"}

    def write(path: Path) -> Path:
        return write_trajectories(path, episodes, env_id=spec.id, seed=0, metadata=meta,
                                  behaviour_policy=f"human-human trials of Carroll et al. 2019 ({args.split} split)")

    print(f"{args.layout} ({args.split}): {len(games)} games, {sum(m['steps'] for m in games_meta)} steps, "
          f"{sum(m['soups'] for m in games_meta):.0f} soups; the package's dynamics reproduce {consistent:.1%} of the "
          "logged steps")
    return _write_imported(args, write, f"Overcooked-AI human-human trials ({args.split} split), {args.layout}, "
                           "one trajectory per game and player")


def cmd_import_minari(args: argparse.Namespace) -> int:
    from pbrl.data.formats import import_minari

    return _write_imported(args, lambda p: import_minari(args.dataset_id, p, root=args.root, env_id=args.env),
                           f"imported from Minari dataset {args.dataset_id}")


def cmd_export_minari(args: argparse.Namespace) -> int:
    from pbrl.data.formats import export_minari
    from pbrl.data.registry import load_dataset

    data = load_dataset(args.dataset, preferences=False)
    print(f"wrote {export_minari(data.trajectories, args.dataset_id, root=args.root)}")
    return 0


def cmd_export_d4rl(args: argparse.Namespace) -> int:
    from pbrl.data.formats import export_d4rl
    from pbrl.data.registry import load_dataset
    from pbrl.errors import ConfigError, describe

    out = Path(args.out)
    if out.exists() or not out.parent.is_dir():
        raise ConfigError(describe("--out", "file", str(out), "a new file in an existing directory"
                                   + (" (it exists)" if out.exists() else "")))
    data = load_dataset(args.dataset, preferences=False)
    print(f"wrote {export_d4rl(data.trajectories, out)}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from pbrl.errors import ConfigError, describe
    from pbrl.train.bench import bench

    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(describe("--seeds", "seeds", repr(args.seeds), "comma-separated integers, e.g. 0,1,2")) from None
    agents = [a.strip() for a in args.agents.split(",") if a.strip()]
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    bench(agents, datasets, seeds, args.out, steps=args.steps, scale=args.scale, overrides=args.set or [],
          ceiling_check=not args.no_ceiling_check, progress=not args.quiet, record=args.record,
          report_only=args.report_only)
    print((Path(args.out) / "results.md").read_text())
    print(f"wrote {args.out}/results.csv, results.md, results.png")
    return 0


def cmd_import_labels(args: argparse.Namespace) -> int:
    from pbrl.data.formats import import_labels
    from pbrl.data.preferences import write_preferences
    from pbrl.data.registry import load_dataset, write_card
    from pbrl.errors import ConfigError, describe

    data = load_dataset(args.dataset, preferences=False)
    prefs = import_labels(args.file, data.trajectories)
    path, card = _dataset_out(args.out, ".prefs.h5")
    if card is not None and path.parent.resolve() != data.trajectories.path.parent.resolve():
        raise ConfigError(describe("--out", "name", args.out, "a name for a dataset whose trajectories live in datasets/"))
    write_preferences(path, prefs, data.trajectories, teacher={"name": "human", "source": str(args.file)}, seed=0)
    if card is not None:
        write_card(card, {"name": args.out, "env": data.env, "trajectories": data.trajectories.path.name,
                          "preferences": path.name, "description": f"human labels from {Path(args.file).name}",
                          "made": {**data.card.get("made", {}), "label_command": "pbrl " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
                                   "teacher": {"name": "human"}}})
    print(f"imported {len(prefs)} labels: wrote {path}" + (f" and {card}" if card else ""))
    return 0


def cmd_export_labels(args: argparse.Namespace) -> int:
    from pbrl.data.formats import export_labels
    from pbrl.data.registry import load_dataset
    from pbrl.errors import DatasetError, describe

    data = load_dataset(args.dataset)
    if data.preferences is None:
        raise DatasetError(describe(args.dataset, "preferences", "none", "a dataset with labels"))
    print(f"wrote {export_labels(data.preferences, args.out)}")
    return 0


def cmd_data_agreement(args: argparse.Namespace) -> int:
    from pbrl.data.agreement import agreement_report, format_agreement
    from pbrl.data.formats import import_labels
    from pbrl.data.registry import load_dataset
    from pbrl.io import atomic_write_text

    data = load_dataset(args.dataset, preferences=False)
    prefs = import_labels(args.file, data.trajectories)
    teacher = critic = None
    if args.teacher is None and (args.critic or args.expert or args.critic_steps is not None):
        from pbrl.errors import ConfigError, describe

        raise ConfigError(describe("--critic/--expert/--critic-steps", "option", "given without --teacher",
                                   "--teacher regret (or leave them out)"))
    if args.teacher is not None:
        from pbrl.train.critics import regret_advantages

        teacher, critic = teacher_from_args(args), regret_advantages
        if teacher.utility == "regret" and teacher.critic_name == "expert" and teacher.expert is None:
            teacher = train_expert(data.trajectories, teacher, args.behaviour_dir)
    report = agreement_report(prefs, data.trajectories, teacher, critic=critic)
    print(format_agreement(report, Path(args.file).name))
    if args.json:
        atomic_write_text(args.json, json.dumps({"labels": str(args.file), "dataset": args.dataset, **report}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _groups_of(attrs: dict[str, Any]) -> list | None:
    """The user groups recorded in a preference file's ``teacher`` attribute by `pbrl data label --groups`."""
    from pbrl.data.teachers import Group, Teacher

    try:
        recorded = json.loads(attrs.get("teacher", "{}")).get("groups")
    except (json.JSONDecodeError, AttributeError):
        return None
    if not recorded:
        return None
    fields = set(Teacher.__dataclass_fields__)
    return [Group(g["name"], g["share"], Teacher(**{k: v for k, v in g.items() if k in fields})) for g in recorded]


def dataset_info(name: str) -> dict[str, Any]:
    import numpy as np

    from pbrl.data.registry import load_dataset
    from pbrl.data.teachers import agreement, segment_returns, source_quality

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
        used = ~p.skipped
        lab = p.label[used]
        info.update({"pairs": len(p), "labelled_pairs": int(used.sum()), "queries": int(len(np.unique(p.query))),
                     "labels_made": data.card.get("labels", ""),
                     "segment_length": int(p.segments_a[:, 2].max()),
                     "label_counts": {"a": int((lab > 0.5).sum()), "b": int((lab < 0.5).sum()),
                                      "equal": int((lab == 0.5).sum()), "skip": int(p.skipped.sum())},
                     "tie_fraction": float((lab == 0.5).mean()) if used.any() else 0.0,
                     "skip_fraction": float(p.skipped.mean()),
                     "label_agreement": agreement(lab, ra[used], rb[used]),
                     "label_agreement_episode_return": agreement(lab, returns[p.segments_a[used, 0]],
                                                                 returns[p.segments_b[used, 0]]),
                     "label_agreement_teacher": None if p.score_a is None else
                     agreement(lab, p.score_a[used], p.score_b[used]),
                     "groups": {int(g): int((p.group[used] == g).sum()) for g in np.unique(p.group)},
                     "annotators": int(len(set(p.annotator[used]) - {""}))})
        quality = source_quality(traj)
        if quality is not None:
            qa, qb = quality[p.segments_a[used, 0]], quality[p.segments_b[used, 0]]
            info["label_agreement_source"] = agreement(lab, qa, qb)
            info["cross_source_pairs"] = int(((qa != qb) & (lab != 0.5)).sum())
        groups = _groups_of(p.attrs)
        if groups:
            from pbrl.data.teachers import consistency_report
            from pbrl.train.critics import regret_advantages

            info["consistency"] = consistency_report(traj, p.segments_a, p.segments_b, p.label, p.group, groups, p.skipped,
                                                     critic=regret_advantages)
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
        if info["labels_made"]:
            print(f"  labelled     {info['labels_made']}")
        agree = "–" if info["label_agreement"] is None else f"{info['label_agreement']:.3f}"
        print(f"  labels       a {c['a']}  b {c['b']}  equal {c['equal']}  skip {c['skip']}   tie fraction "
              f"{info['tie_fraction']:.3f}   skip fraction {info['skip_fraction']:.3f}")
        fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"  agreement    {fmt(info['label_agreement_teacher'])} of decided labels follow the teacher's own "
              "noise-free scores")
        print(f"               {agree} follow the true segment return")
        print(f"               {fmt(info['label_agreement_episode_return'])} follow the return of the episode each "
              "segment comes from")
        if "label_agreement_source" in info:
            print(f"               {fmt(info['label_agreement_source'])} follow the known order of the policies that "
                  f"produced them ({info['cross_source_pairs']} pairs from different policies)")
        print(f"  groups       {info['groups']}   annotators {info['annotators']}   queries {info['queries']}")
        if "consistency" in info:
            print(format_consistency(info["consistency"]))
    else:
        print("  pairs        none (label some with `pbrl data label`)")
    return 0


def run_settings(cfg, requested_scale: str) -> str:
    """One line: the settings that change the method or the numbers, as resolved (all of them are in config.toml)."""
    from pbrl.train.trainer import resolve_device

    device = resolve_device(cfg.train.device)
    scale = cfg.scale + (f" (--scale auto: {'CUDA' if cfg.scale == 'paper' else 'no CUDA'} here)"
                         if requested_scale == "auto" else "")
    amp = "on" if cfg.train.amp and device.type == "cuda" else ("off" if not cfg.train.amp else "off (CPU)")
    return (f"pbrl train: {cfg.agent} on {cfg.dataset}, preset {scale}, device {device}, bf16 autocast {amp}, "
            f"torch.compile {'on' if cfg.train.compile else 'off'}, {cfg.train.steps} steps, seed {cfg.train.seed}")


def cmd_train(args: argparse.Namespace) -> int:
    from pbrl.train.config import build_config
    from pbrl.train.trainer import train

    cfg = build_config(args.agent, args.dataset, scale=args.scale, overrides=args.set or [], steps=args.steps,
                       seed=args.seed, device=args.device, batch_size=args.batch_size)
    from pbrl.data.registry import load_dataset

    load_dataset(cfg.dataset, preferences=False)  # a missing dataset is its own one-line error, before the settings
    print(run_settings(cfg, args.scale), file=sys.stderr)
    if args.dry_run:
        from pbrl.train.trainer import dry_run

        print(json.dumps(dry_run(cfg)))
        return 0
    result = train(cfg, args.out, progress=not args.quiet)
    print(json.dumps({k: result[k] for k in ("agent", "dataset", "normalized_score", "return_mean", "return_std",
                                             "episodes", "seed", *(["success_rate"] if "success_rate" in result else []))}))
    return 0


def _apply_sections(cfg: Any, overrides: dict[str, list[str]], set_args: list[str] | None) -> None:
    """Apply ``KEY=VALUE`` overrides per section and every ``--set SECTION.KEY=VALUE`` to a run config of sections
    run / method / train, then validate it."""
    from pbrl.errors import ConfigError, describe
    from pbrl.fields import set_fields
    from pbrl.train.config import parse_override

    for text in set_args or []:
        section, _, _ = parse_override(text)
        if section not in overrides:
            raise ConfigError(describe("--set", "section", repr(section), "run, method or train"))
        overrides[section].append(text.split(".", 1)[1])
    for section, target in (("run", cfg), ("method", cfg.method), ("train", cfg.train)):
        set_fields(target, overrides[section], section=section)
    cfg.validate("command line")


def cmd_seq_train(args: argparse.Namespace) -> int:
    from pbrl.errors import ConfigError, describe
    from pbrl.sequence.diffusion_train import DIFFUSION_METHODS, DiffusionRunConfig, train_diffusion

    diffusion = args.method in DIFFUSION_METHODS
    if diffusion:
        cfg = DiffusionRunConfig(model=args.model, data=args.data)
        for option in ("loss_type", "reference", "max_length"):
            if getattr(args, option) is not None:
                raise ConfigError(describe("command line", f"--{option.replace('_', '-')}", getattr(args, option),
                                           f"nothing for {args.method} (a language-model option)"))
        if args.lora:
            raise ConfigError(describe("command line", "--lora", "set", f"nothing for {args.method} (LoRA is for "
                                       "language models here)"))
    else:
        from pbrl.sequence.train import SeqRunConfig

        cfg = SeqRunConfig(model=args.model, data=args.data)
    overrides = {"method": [f"name={args.method!r}"], "run": [], "train": []}
    for option, section, key in (("beta", "method", "beta"), ("loss_type", "method", "loss_type"),
                                 ("reference", "run", "reference"), ("max_length", "run", "max_length"),
                                 ("steps", "train", "steps"), ("batch_size", "train", "batch_size"),
                                 ("grad_accum", "train", "grad_accum"), ("lr", "train", "lr"),
                                 ("seed", "train", "seed"), ("device", "train", "device")):
        value = getattr(args, option)
        if value is not None:
            overrides[section].append(f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}")
    if args.lora:
        overrides["run"].append("lora=true")
    if args.amp:
        overrides["train"].append("amp=true")
    _apply_sections(cfg, overrides, args.set)
    train = train_diffusion if diffusion else train_sequence_lazy
    result = train(cfg, args.out, progress=not args.quiet)
    print(json.dumps({"method": cfg.method.name, "step": result.step, "finished": result.finished,
                      "steps_per_s": result.steps_per_s, "model": str(Path(args.out) / "model")}))
    return 0


def train_sequence_lazy(cfg: Any, out: str, *, progress: bool) -> Any:
    from pbrl.sequence.train import train_sequence

    return train_sequence(cfg, out, progress=progress)


def cmd_seq_grammar(args: argparse.Namespace) -> int:
    from pbrl.sequence.lm import word_tokenizer
    from pbrl.sequence.synthetic import ADJECTIVES, NOUNS, VERBS, make_task, tiny_gpt2_config

    task = make_task(seed=args.seed, train_prompts=args.prompts, flip=args.flip)
    out = Path(args.out)
    paths = task.write(out)
    tokenizer = word_tokenizer([" ".join(NOUNS + ADJECTIVES + VERBS) + " : ."])
    tokenizer.save_pretrained(out / "tokenizer")
    config = tiny_gpt2_config(len(tokenizer), layers=args.layers, width=args.width)
    (out / "gpt2-tiny.json").write_text(json.dumps(config, indent=2))
    print(json.dumps({k: str(v) for k, v in {**paths, "tokenizer": out / "tokenizer",
                                             "model_config": out / "gpt2-tiny.json"}.items()}))
    return 0


def cmd_seq_self_play(args: argparse.Namespace) -> int:
    from pbrl.sequence.diffusion_train import DiffusionRunConfig
    from pbrl.sequence.self_play import load_reward_fn, self_play

    cfg = DiffusionRunConfig(model=args.model, data=args.data)
    overrides = {"run": [], "method": [f"name={args.method!r}"], "train": [f"steps={args.steps}"]}
    _apply_sections(cfg, overrides, args.set)
    rounds = self_play(cfg, load_reward_fn(args.reward), args.out, rounds=args.rounds, samples=args.samples,
                       flip_rate=args.flip_rate, progress=not args.quiet)
    for r in rounds:
        print(json.dumps(vars(r)))
    return 0


def cmd_seq_shapes(args: argparse.Namespace) -> int:
    from pbrl.sequence.shapes import write_shapes_task

    paths = write_shapes_task(args.out, seed=args.seed, images_per_prompt=args.images, pairs_per_prompt=args.pairs,
                              flip_rate=args.flip)
    print(json.dumps({k: str(v) for k, v in paths.items()}))
    return 0


def cmd_annotate(args: argparse.Namespace) -> int:
    from pbrl.annotate.server import serve, start_session

    session = start_session(args.dataset, args.out, pairs=args.pairs, segment=args.segment, pairing=args.pairing,
                            seed=args.seed, candidates=args.candidates, size=args.size, fps=args.fps, group=args.group,
                            annotator=args.annotator, workers=args.workers)
    if args.prepare_only:
        session.close()
        print(f"prepared {len(session.query_set.segments())} videos in {session.video_dir}")
        return 0
    serve(session, args.host, args.port)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    if args.video:
        from pbrl.envs.render import choose_gl

        choose_gl()  # before mujoco is imported: EGL or OSMesa, whichever draws here
    from pbrl.envs.evaluate import evaluate
    from pbrl.train.trainer import actor_policy, load_run, write_json

    cfg, agent, data = load_run(args.run_dir, args.device)
    device = next(agent.parameters()).device
    result = evaluate(actor_policy(agent, args.episodes, device, args.seed), args.env or data.env,
                      episodes=args.episodes, seed=args.seed, dims=(agent.spec.obs_dim, agent.spec.act_dim),
                      video_dir=Path(args.run_dir) / "videos" if args.video else None, video_episodes=args.video)
    checkpoint = agent.checkpoint  # the one load_run read (a damaged newer one is skipped)
    step = int(Path(checkpoint).stem.split("_")[-1])
    result = {"agent": cfg.agent, "dataset": data.name, **{k: v for k, v in result.items() if k != "seed"},
              "seed": cfg.train.seed, "eval_seed": args.seed, "checkpoint": checkpoint}
    # the run's own eval.json stays as training wrote it; each evaluation setting gets its own file
    env_tag = f"-{args.env}" if args.env else ""
    out = Path(args.run_dir) / f"eval-step{step}{env_tag}-{args.episodes}ep-seed{args.seed}.json"
    write_json(out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "returns"}, indent=2))
    print(f"wrote {out}")
    return 0


def _partner(spec: str, seed: int):
    from pbrl.envs.overcooked import RandomPolicy
    from pbrl.train.overcooked import PolicyPartner

    return RandomPolicy(seed) if spec == "random" else PolicyPartner.load(spec, seed=seed)


def _style(name: str | None):
    from pbrl.envs.overcooked import STYLES, TASK
    from pbrl.errors import ConfigError, describe

    if name is None:
        return TASK
    if name not in STYLES:
        raise ConfigError(describe("--style", "style", repr(name), f"one of {sorted(STYLES)}"))
    return STYLES[name]


def cmd_overcooked(args: argparse.Namespace) -> int:
    import json as _json

    import numpy as np

    from pbrl.train import overcooked as oc

    if args.oc_command == "ppo":
        partners = [_partner(d, args.seed + 10 * i) for i, d in enumerate(args.partners)] if args.partners else None
        path = oc.train_ppo(args.out, args.layout, args.steps, seed=args.seed, partners=partners,
                            partner_names=args.partners or (), utility=_style(args.style), init=args.init,
                            progress=not args.quiet)
    elif args.oc_command == "bc":
        path = oc.train_bc(args.out, args.dataset, steps=args.steps, seed=args.seed, progress=not args.quiet)
    elif args.oc_command == "hybrid":
        from pbrl.agents.hybrid import HybridConfig
        from pbrl.train.config import set_fields

        cfg = HybridConfig()
        set_fields(cfg, args.set or [], section="hybrid")
        path = oc.train_hybrid(args.out, args.layout, args.pool, args.preferences, cfg=cfg, seed=args.seed,
                               pretrained=args.pretrained, progress=not args.quiet)
    elif args.oc_command == "rollouts":
        from pbrl.data.store import write_trajectories
        from pbrl.envs.overcooked import N_ACTIONS, play

        partner = _partner(args.partner, args.seed + 1)
        episodes = []
        for i, ego in enumerate(args.ego):
            result = play(args.layout, _partner(ego, args.seed + 100 * (i + 1)), partner, episodes=args.episodes,
                          record=True)
            episodes += oc.rollout_episodes(result, source=ego)
        path = write_trajectories(args.out, episodes, env_id=f"Overcooked-{args.layout}", seed=args.seed,
                                  behaviour_policy=f"{', '.join(args.ego)} with {args.partner}",
                                  metadata={"layout": args.layout, "partner": args.partner,
                                            "action_space": {"type": "discrete", "n": N_ACTIONS, "encoding": "one-hot"}})
    elif args.oc_command == "groups":
        from pbrl.envs.overcooked import groups_toml
        from pbrl.io import atomic_write_text

        path = atomic_write_text(args.out, groups_toml([_style(n) for n in args.styles], seat=args.seat))
    else:  # eval
        style = _style(args.style) if args.style else None
        score = oc.score_pair(args.layout, _partner(args.ego, args.seed), _partner(args.partner, args.seed + 1),
                              episodes=args.episodes, style=style)
        out = {"layout": args.layout, "ego": args.ego, "partner": args.partner, "episodes": args.episodes,
               "return_mean": float(score.returns.mean()), "return_std": float(score.returns.std()),
               "soups_mean": float(score.returns.mean() / 20)}
        if style is not None:
            out["preference_mean"] = float(np.nanmean(score.preference)) if np.isfinite(score.preference).any() else None
        print(_json.dumps(out, indent=1))
        return 0
    print(f"wrote {path}" if path is not None else "stopped early at a checkpoint; run again to resume")
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
    mk.add_argument("--expert-algo", default=None, choices=["sac", "ppo"],
                    help="trainer of the expert policy of expert / medium-expert (default: --algo)")
    mk.add_argument("--medium-steps", type=int, default=200_000, help="env steps to train the 'medium' policy")
    mk.add_argument("--expert-steps", type=int, default=1_000_000, help="env steps to train the 'expert' policy")
    mk.add_argument("--transitions", type=int, default=100_000, help="approximate size of the dataset in steps")
    mk.add_argument("--noise", default="0.1,0.5,1.0", help="Meta-World: comma-separated action-noise scales")
    mk.add_argument("--reversed", type=float, default=0.0, metavar="F", help="Meta-World: fraction of the steps "
                    "from the reversed scripted policy (a bad operator: BC on the mixture falls short)")
    mk.add_argument("--behaviour-dir", default="runs/behaviour", help="where behaviour policies are trained/cached")
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--out", required=True, help="dataset name (writes datasets/NAME.h5 + card) or a .h5 path")
    mk.add_argument("--overwrite", action="store_true", help="replace an existing dataset file")
    mk.set_defaults(func=cmd_data_make)

    lb = dsub.add_parser("label", help="sample segment pairs and label them with a scripted teacher")
    lb.add_argument("dataset", help="dataset name (datasets/NAME.toml) or .h5 path")
    lb.add_argument("--pairs", type=int, required=True, help="number of pairs to label")
    lb.add_argument("--segment", type=int, default=64, help="segment length T in steps")
    lb.add_argument("--teacher", default="scripted", choices=["scripted", "return", "regret"],
                    help="scripted/return: Bradley-Terry on the true segment return; regret: on the segment's summed "
                    "advantage Σ_t γ^t A(s_t, a_t) under --critic (CPL's assumption)")
    noise = lb.add_argument_group("noise (B-Pref models, combinable)")
    noise.add_argument("--beta", type=float, default=None, help="stochastic: rationality β; omit: deterministic")
    noise.add_argument("--mistake", type=float, default=0.0, help="mistake: flip each label with probability ε")
    noise.add_argument("--skip-threshold", type=float, default=None, help="skip: no label when both scores are below")
    noise.add_argument("--equal-margin", type=float, default=0.0, help="equal: label 0.5 when scores differ by less")
    noise.add_argument("--myopic", type=float, default=1.0, help="myopic: weight step t of T by myopic^(T−1−t) in "
                       "the preference (B-Pref's teacher_gamma; skip and equal use the unweighted scores)")
    noise.add_argument("--gamma", type=float, default=None, help=argparse.SUPPRESS)  # renamed: refused in one line
    lb.add_argument("--critic", default=None, choices=["iql", "expert", "behaviour"],
                    help="regret: where the advantage comes from. iql (default): r + γV(s′) − V(s) with IQL's in-sample "
                    "optimal value fitted to the true reward; expert: the expert policy's critic, as the CPL paper labels (the dataset's own "
                    "expert from `pbrl data make`, trained or resumed under --behaviour-dir, or --expert DIR); "
                    "behaviour: a value fitted to the behaviour's own returns (weak: kept for comparison)")
    lb.add_argument("--expert", default=None, metavar="DIR", help="critic expert: a stable-baselines3 run directory "
                    "(runs/behaviour/ENV-ALGO-STEPS-sSEED with model.zip); implies --critic expert")
    lb.add_argument("--critic-steps", type=int, default=None, help="gradient steps of the critic fit "
                    "(iql 20000, behaviour 3000)")
    lb.add_argument("--behaviour-dir", default="runs/behaviour", help="where `pbrl data make` keeps behaviour policies")
    lb.add_argument("--discount", type=float, default=None, help="discount inside a segment (return: 1, regret: 0.99)")
    lb.add_argument("--groups", default=None, metavar="FILE", help="user groups (TOML [[group]] tables: share, "
                    "utility weights over reward terms, noise); every label carries its group id")
    lb.add_argument("--pairing", default="uniform", choices=["uniform", "stratified", "disagreement"],
                    help="how pairs are chosen (see pbrl.data.pairing)")
    lb.add_argument("--mode", default="segments", choices=["segments", "episodes"],
                    help="segments: any number of labels per episode; episodes: one label per pair of trajectories "
                    "(not the CPL paper's dense/sparse: those are agent.regime)")
    lb.add_argument("--rank", type=int, default=0, metavar="K", help="ask K-way rankings (stored as pairs)")
    lb.add_argument("--seed", type=int, default=0)
    lb.add_argument("--force", action="store_true", help="replace an existing preference file")
    lb.add_argument("--out", required=True, help="name (datasets/NAME.prefs.h5 + card) or .h5 path")
    lb.set_defaults(func=cmd_data_label)

    inf = dsub.add_parser("info", help="print size, returns and label statistics of a dataset")
    inf.add_argument("dataset", help="dataset name or .h5 path")
    inf.add_argument("--json", action="store_true", help="machine-readable output")
    inf.set_defaults(func=cmd_data_info)

    d4 = dsub.add_parser("import-d4rl", help="convert a D4RL-format HDF5 file (no d4rl package needed)")
    d4.add_argument("file", help="HDF5 file with observations, actions, rewards, terminals, timeouts[, infos/*]")
    d4.add_argument("--env", required=True, help="env preset or gymnasium id the data comes from, e.g. hopper")
    d4.add_argument("--out", required=True, help="dataset name (datasets/NAME.h5 + card) or .h5 path")
    d4.set_defaults(func=cmd_import_d4rl)
    mi = dsub.add_parser("import-minari", help="convert a local Minari dataset")
    mi.add_argument("dataset_id", help="e.g. pbrl/hopper-mr-v0")
    mi.add_argument("--root", default=None, help="Minari datasets folder (default: $MINARI_DATASETS_PATH or ~/.minari)")
    mi.add_argument("--env", default=None, help="env preset; checked against the dataset's spaces")
    mi.add_argument("--out", required=True, help="dataset name or .h5 path")
    mi.set_defaults(func=cmd_import_minari)
    oc = dsub.add_parser("import-overcooked", help="the Overcooked-AI human-human trials (Carroll et al. 2019) of one "
                         "layout and split: one trajectory per game and player, worker and round kept")
    oc.add_argument("--layout", required=True, help="cramped_room | asymmetric_advantages | coordination_ring | "
                    "random0 (forced coordination) | random3 (counter circuit)")
    oc.add_argument("--split", default="train", choices=["train", "test"])
    oc.add_argument("--pickle", default=None, help="a trials pickle (default: the one overcooked-ai 1.1.0 installed)")
    oc.add_argument("--out", required=True, help="dataset name (datasets/NAME.h5 + card) or .h5 path")
    oc.set_defaults(func=cmd_import_overcooked)
    me = dsub.add_parser("export-minari", help="write a dataset's trajectories as a local Minari dataset")
    me.add_argument("dataset", help="dataset name or .h5 path")
    me.add_argument("--dataset-id", required=True, help="Minari id, e.g. pbrl/hopper-mr-v0")
    me.add_argument("--root", default=None, help="Minari datasets folder")
    me.set_defaults(func=cmd_export_minari)
    il = dsub.add_parser("import-labels", help="import human labels (JSON Lines or CSV; see pbrl.data.formats)")
    il.add_argument("file", help=".jsonl or .csv with query_id, a_episode, a_start, a_length, b_…, choice, annotator, group, timestamp")
    il.add_argument("--dataset", required=True, help="the trajectory dataset the segments refer to")
    il.add_argument("--out", required=True, help="name (datasets/NAME.prefs.h5 + card) or .h5 path")
    il.set_defaults(func=cmd_import_labels)
    ed = dsub.add_parser("export-d4rl", help="write a dataset's trajectories in D4RL's HDF5 layout (d3rlpy, CORL)")
    ed.add_argument("dataset", help="dataset name or .h5 path")
    ed.add_argument("--out", required=True, help="a new .hdf5 path")
    ed.set_defaults(func=cmd_export_d4rl)
    el = dsub.add_parser("export-labels", help="export a dataset's labels as JSON Lines or CSV")
    el.add_argument("dataset", help="dataset name or preference .h5 path")
    el.add_argument("--out", required=True, help="a .jsonl or .csv path")
    el.set_defaults(func=cmd_export_labels)
    ag = dsub.add_parser("agreement", help="agreement of human labels: Cohen's kappa per pair of annotators, Fleiss' "
                         "kappa, and (--teacher) each annotator's agreement with a noise-free scripted teacher")
    ag.add_argument("file", help="labels (.jsonl or .csv, as `pbrl data import-labels` reads)")
    ag.add_argument("--dataset", required=True, help="the trajectory dataset the segments refer to")
    ag.add_argument("--teacher", default=None, choices=["scripted", "return", "regret"],
                    help="compare each annotator with this teacher's noise-free preference (default: annotators only)")
    ag.add_argument("--critic", default=None, choices=["iql", "expert", "behaviour"], help="regret: as `pbrl data label`")
    ag.add_argument("--expert", default=None, metavar="DIR", help="regret, critic expert: as `pbrl data label`")
    ag.add_argument("--critic-steps", type=int, default=None, help="regret: gradient steps of the critic fit")
    ag.add_argument("--behaviour-dir", default="runs/behaviour", help="where `pbrl data make` keeps behaviour policies")
    ag.add_argument("--discount", type=float, default=None, help="discount inside a segment (return: 1, regret: 0.99)")
    ag.add_argument("--myopic", type=float, default=1.0, help="weight step t of T by myopic^(T−1−t)")
    ag.add_argument("--seed", type=int, default=0, help="seed of the regret critic's fit")
    ag.add_argument("--json", default=None, metavar="OUT", help="also write the report as JSON")
    ag.set_defaults(func=cmd_data_agreement, beta=None, mistake=0.0, skip_threshold=None, equal_margin=0.0, gamma=None)

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
    tr.add_argument("--scale", default="auto", help="preset scale: cpu | paper | auto (paper on CUDA); CPL also "
                    "cpu-locomotion | paper-locomotion (the D4RL recipe of cpl-human)")
    tr.add_argument("--device", default=None, help="auto | cpu | cuda | mps")
    tr.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config field")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.add_argument("--dry-run", action="store_true", help="validate the config, build the agent, run two steps in "
                    "a temporary directory, write nothing (--out is not touched)")
    tr.set_defaults(func=cmd_train)

    sq = sub.add_parser("seq", help="sequence-level objectives: language models (DPO family, RSO, IS-DAA, TGDPO, "
                        "TVKD, iREPO, inverse soft-Q) and diffusion / flow models (Diffusion-DPO, Flow-DPO, ABC, "
                        "self-supervised DPO, DRO, RPO, Flow-RWR)", formatter_class=fmt)
    sqs = sq.add_subparsers(dest="seq_command", required=True)
    from pbrl.sequence.diffusion_train import DIFFUSION_METHODS
    from pbrl.sequence.objectives import METHODS

    st = sqs.add_parser("train", help="train a causal LM, or an image / video diffusion or flow model, on preference "
                        "pairs (resumes when --out holds an unfinished run)", formatter_class=fmt,
                        epilog="example: pbrl seq grammar --out runs/grammar && pbrl seq train --method sft --model "
                        "runs/grammar/gpt2-tiny.json --set run.tokenizer=runs/grammar/tokenizer --data "
                        "runs/grammar/sft.jsonl --out runs/sft;  pbrl seq shapes --out runs/shapes && pbrl seq train "
                        "--method diffusion_sft --model runs/shapes/unet.json --data runs/shapes/sft.h5 --out runs/ref")
    st.add_argument("--method", required=True, choices=METHODS + DIFFUSION_METHODS,
                    help="the objective: language models " + ", ".join(METHODS) + "; diffusion / flow models "
                    + ", ".join(DIFFUSION_METHODS))
    st.add_argument("--model", required=True, help="a local model folder, or a config .json (new weights): a Hugging "
                    "Face causal LM; for diffusion methods pbrl's SmallUNet or a diffusers model class")
    st.add_argument("--data", required=True, help="pairs: JSON Lines or Parquet with prompt, chosen, rejected; for "
                    "diffusion methods an HDF5 file with cond, chosen, rejected (and weight, label, reward)")
    st.add_argument("--out", required=True, help="run directory: config.toml, TensorBoard events, checkpoints/, model/")
    st.add_argument("--beta", type=float, default=None, help="β of the implicit reward (default 0.1)")
    st.add_argument("--loss-type", default=None, help="DPO loss type for dpo / is_daa / rso (default sigmoid)")
    st.add_argument("--reference", default=None, help="copy | cache | adapter | none (default copy)")
    st.add_argument("--lora", action="store_true", help="train LoRA adapters (peft) instead of all weights")
    st.add_argument("--max-length", type=int, default=None, help="prompt + completion tokens (default 128)")
    st.add_argument("--steps", type=int, default=None, help="gradient steps (default 200)")
    st.add_argument("--batch-size", type=int, default=None, help="pairs per micro-batch (default 8)")
    st.add_argument("--grad-accum", type=int, default=None, help="micro-batches per step (default 1)")
    st.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default 1e-4)")
    st.add_argument("--seed", type=int, default=None, help="seed (default 0)")
    st.add_argument("--device", default=None, help="auto | cpu | cuda | mps")
    st.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    st.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                    help="override any field: run.*, method.* (e.g. method.tg_alpha=0.5), train.*")
    st.add_argument("--quiet", action="store_true", help="no progress bar")
    st.set_defaults(func=cmd_seq_train)
    sg = sqs.add_parser("grammar", help="write the synthetic grammar task: SFT data, noisy preference pairs, held-out "
                        "prompts, a word tokenizer and a tiny GPT-2 config", formatter_class=fmt)
    sg.add_argument("--out", required=True)
    sg.add_argument("--seed", type=int, default=0)
    sg.add_argument("--prompts", type=int, default=300, help="training prompts")
    sg.add_argument("--flip", type=float, default=0.2, help="share of preference labels reversed")
    sg.add_argument("--layers", type=int, default=2)
    sg.add_argument("--width", type=int, default=64)
    sg.set_defaults(func=cmd_seq_grammar)
    sh = sqs.add_parser("shapes", help="write the synthetic 16x16 shapes task (the cross preferred over the square): "
                        "SFT images, noisy pairs (HDF5), held-out prompts and a SmallUNet config", formatter_class=fmt)
    sh.add_argument("--out", required=True)
    sh.add_argument("--seed", type=int, default=0)
    sh.add_argument("--images", type=int, default=100, help="SFT images per training prompt")
    sh.add_argument("--pairs", type=int, default=50, help="preference pairs per training prompt")
    sh.add_argument("--flip", type=float, default=0.2, help="share of preference labels reversed")
    sh.set_defaults(func=cmd_seq_shapes)
    sp = sqs.add_parser("self-play", help="SPRO-style self-play for a diffusion / flow model: each round generates "
                        "samples per prompt, scores them, pairs best with worst and trains DPO on them",
                        formatter_class=fmt, epilog="example: pbrl seq self-play --model runs/ref/model --data "
                        "runs/shapes/pairs.h5 --reward pbrl.sequence.shapes:shape_reward --out runs/spro")
    sp.add_argument("--model", required=True, help="the starting model folder")
    sp.add_argument("--data", required=True, help="an HDF5 file whose cond rows are the prompts")
    sp.add_argument("--reward", required=True, help="module:function (images, cond) -> [N], or a reward-model folder")
    sp.add_argument("--out", required=True)
    sp.add_argument("--method", default="diffusion_dpo", choices=("diffusion_dpo", "flow_dpo", "diffusion_sft"),
                    help="the trainer of each round (diffusion_sft: the winners only, a RAFT-style baseline)")
    sp.add_argument("--rounds", type=int, default=3)
    sp.add_argument("--samples", type=int, default=8, help="samples per prompt per round")
    sp.add_argument("--steps", type=int, default=200, help="training steps per round")
    sp.add_argument("--flip-rate", type=float, default=0.0, help="a noisy annotator: share of pairs reversed")
    sp.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="run.*, method.*, train.*")
    sp.add_argument("--quiet", action="store_true")
    sp.set_defaults(func=cmd_seq_self_play)

    bn = sub.add_parser("bench", help="train an agent x dataset x seed grid (resumable); every score beside oracle IQL",
                        epilog="example: pbrl bench --agents cpl,sft,bc,iql-mr,iql-pt,iql-oracle --datasets "
                        "hopper-medium-replay-small --seeds 0,1,2 --out bench", formatter_class=fmt)
    bn.add_argument("--agents", required=True, help=f"comma-separated, from {sorted(AGENTS)}")
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
    bn.add_argument("--quiet", action="store_true", help="no progress bar")
    bn.set_defaults(func=cmd_bench)

    oc = sub.add_parser("overcooked", help="Overcooked-AI: PPO (self-play, pools, styles), the BC human model, the "
                        "hybrid agent, rollouts, evaluation of pairs", formatter_class=fmt,
                        epilog="example: pbrl overcooked ppo --layout cramped_room --steps 500000 --out runs/sp-s0; "
                        "partners and egos are run folders (model.zip or policy.pt) or 'random'")
    ocs = oc.add_subparsers(dest="oc_command", required=True)
    o1 = ocs.add_parser("ppo", help="stable-baselines3 PPO: self-play, or against --partners (resumable)")
    o1.add_argument("--partners", nargs="+", default=None, metavar="DIR", help="partner pool (omit: self-play)")
    o1.add_argument("--style", default=None, help="train a human proxy with this style's utility (cook, deliverer)")
    o1.add_argument("--init", default=None, metavar="DIR", help="start from another run's weights")
    o1.add_argument("--steps", type=int, default=500_000, help="game steps (default 500000)")
    o2 = ocs.add_parser("bc", help="behaviour-clone an Overcooked dataset (the human model of Carroll et al.)")
    o2.add_argument("--dataset", required=True, help="dataset name or .h5 (e.g. from `pbrl data import-overcooked`)")
    o2.add_argument("--steps", type=int, default=20_000)
    o3 = ocs.add_parser("hybrid", help="the hybrid offline-online agent (pbrl.agents.hybrid)")
    o3.add_argument("--pool", nargs="+", required=True, metavar="DIR", help="partner pool for the online phases")
    o3.add_argument("--preferences", required=True, help="labelled pairs of the ego's trajectories (.prefs.h5 or name)")
    o3.add_argument("--pretrained", default=None, metavar="DIR", help="a PPO run pre-trained against the pool")
    o3.add_argument("--set", action="append", metavar="KEY=VALUE", help="HybridConfig field, e.g. rounds=2")
    o4 = ocs.add_parser("rollouts", help="record --ego policies playing with --partner as a trajectory dataset")
    o4.add_argument("--ego", nargs="+", required=True, metavar="DIR")
    o4.add_argument("--partner", required=True, metavar="DIR")
    o4.add_argument("--episodes", type=int, default=10, help="episodes per ego")
    o5 = ocs.add_parser("eval", help="team return (and a style's preference score) of --ego with --partner")
    o5.add_argument("--ego", required=True, metavar="DIR")
    o5.add_argument("--partner", required=True, metavar="DIR")
    o5.add_argument("--style", default=None, help="the partner's style, for the preference score")
    o5.add_argument("--episodes", type=int, default=20)
    o6 = ocs.add_parser("groups", help="a `pbrl data label --groups` file: one group per style")
    o6.add_argument("--styles", nargs="+", default=["cook", "deliverer"])
    o6.add_argument("--seat", default="partner", choices=["partner", "own"], help="partner: label the trajectories of "
                    "the player who played WITH the style's person (an AI's rollouts); own: the person's own")
    o6.add_argument("--out", required=True, help="a .toml path")
    o6.set_defaults(func=cmd_overcooked)
    for o in (o1, o2, o3, o4, o5):
        if o not in (o2,):
            o.add_argument("--layout", default="cramped_room", help="the package's layout name")
        o.add_argument("--seed", type=int, default=0)
        if o is not o5:
            o.add_argument("--out", required=True, help="run folder (rollouts: a new .h5 file)")
            o.add_argument("--quiet", action="store_true", help="no progress bar")
    oc.set_defaults(func=cmd_overcooked)

    an = sub.add_parser("annotate", help="label segment pairs yourself: a local page with the two segment videos side "
                        "by side and keys to answer; every answer is appended to --out at once (restart resumes)")
    an.add_argument("dataset", help="trajectory dataset (name in datasets/ or .h5 path)")
    an.add_argument("--pairs", type=int, required=True, help="answers each annotator gives")
    an.add_argument("--segment", type=int, required=True, help="segment length in steps")
    an.add_argument("--out", required=True, help="labels file (.jsonl, the format `pbrl data import-labels` reads); "
                    "its queries and videos live in OUT-stem.annotate/")
    an.add_argument("--port", type=int, default=8765, help="port (0: any free one; the URL is printed)")
    an.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    an.add_argument("--annotator", default="", help="name filled in on the page (each person can type their own)")
    an.add_argument("--group", type=int, default=0, help="annotator group written with every answer")
    an.add_argument("--pairing", default="uniform", choices=["uniform", "disagreement"],
                    help="disagreement: the next pair is where a reward-model ensemble refitted on the labels so far "
                    "disagrees most, among --candidates x --pairs uniform pairs")
    an.add_argument("--candidates", type=int, default=4, help="candidate pool per answer for --pairing disagreement")
    an.add_argument("--seed", type=int, default=0)
    an.add_argument("--size", type=int, default=192, help="video frame size in pixels")
    an.add_argument("--fps", type=int, default=30, help="video frame rate (steps shown per second)")
    an.add_argument("--workers", type=int, default=1, help="processes rendering the videos")
    an.add_argument("--prepare-only", action="store_true", help="render the videos and stop")
    an.set_defaults(func=cmd_annotate)

    ev = sub.add_parser("eval", help="evaluate a trained run in its simulator; writes DIR/eval-stepK-…-seedS.json")
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
