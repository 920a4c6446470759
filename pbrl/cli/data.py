"""``pbrl data``: make a dataset in a simulator, label it with a scripted teacher, inspect it, measure human labels'
agreement, cut its best episodes out; the import and export commands live in :mod:`pbrl.cli.data_formats`."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pbrl.cli import data_formats, data_robot
from pbrl.cli.common import FORMATTER, dataset_out, float_in, int_at_least, invoked_command
from pbrl.cli.data_formats import writable_dataset_out, writable_out

ANY_NUMBER = float_in(-math.inf, math.inf, low_open=True, high_open=True)
POSITIVE = float_in(0.0, math.inf, low_open=True, high_open=True)
NON_NEGATIVE = float_in(0.0, math.inf, high_open=True)
UNIT = float_in(0.0, 1.0)
SEED = int_at_least(0)


def noise_scales(text: str) -> tuple[float, ...]:
    """``--noise 0.1,0.5,1.0``: comma-separated action-noise scales, each a finite number >= 0."""
    scales = []
    for part in text.split(","):
        try:
            scales.append(NON_NEGATIVE(part.strip()))
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"got {text!r}, expected comma-separated numbers >= 0") from None
    return tuple(scales)


def ranking_size(text: str) -> int:
    """``--rank K``: 0 (pairs) or K >= 2 (a one-way ranking compares nothing)."""
    value = int_at_least(0)(text)
    if value == 1:
        raise argparse.ArgumentTypeError("got 1, expected 0 (pairs) or an integer >= 2")
    return value


def has_format(fmt: str) -> Callable[[Path], bool]:
    """``owned`` of an output check: the file is a pbrl HDF5 file of format ``fmt`` (this command's own kind)."""
    from pbrl.data.registry import pbrl_format

    return lambda path: pbrl_format(path) == fmt


def existing_refused(out: str, suffix: str, fmt: str, replace: bool, field: str, expected: str
                     ) -> tuple[Path, Path | None]:
    """``--out`` of `data make` / `data label`, checked before any work: an existing file of this command's own
    kind (``fmt``) is replaced only with ``replace`` (else refused as ``field`` ... ``expected``); a directory, an
    unrelated file or an unwritable place never."""
    from pbrl.data.registry import pbrl_format
    from pbrl.errors import ConfigError, describe

    path, _ = dataset_out(out, suffix)
    if path.is_file() and not replace and pbrl_format(path) == fmt:
        raise ConfigError(describe("--out", field, f"{path} (exists)", expected))
    return writable_dataset_out(out, suffix, owned=has_format(fmt) if replace else None)


def cmd_data_make(args: argparse.Namespace) -> int:
    from pbrl.data.make import make_metaworld_dataset, make_mujoco_dataset
    from pbrl.data.registry import write_card
    from pbrl.envs.registry import get_env_spec

    spec = get_env_spec(args.env)
    path, card = existing_refused(args.out, ".h5", "pbrl.trajectories", args.overwrite, "dataset file",
                                  "a new name (or pass --overwrite)")
    command = invoked_command()
    if spec.family == "metaworld":
        noise = args.noise
        make_metaworld_dataset(spec.name, out=path, seed=args.seed, noise=noise, transitions=args.transitions,
                               command=command, reversed_fraction=args.reversed)
        how = {"behaviour": "Meta-World scripted policy + Gaussian action noise", "noise": list(noise),
               **({"reversed_fraction": args.reversed} if args.reversed else {})}
    else:
        make_mujoco_dataset(spec.name, args.mixture, out=path, seed=args.seed, algo=args.algo,
                            medium_steps=args.medium_steps, expert_steps=args.expert_steps,
                            transitions=args.transitions, behaviour_dir=args.behaviour_dir, command=command,
                            expert_algo=args.expert_algo, noise=args.noise)
        how = {"behaviour": f"stable-baselines3 {args.algo.upper()}", "mixture": args.mixture,
               "expert_algo": args.expert_algo or args.algo,
               "medium_steps": args.medium_steps, "expert_steps": args.expert_steps,
               **({"noise": list(args.noise)} if args.mixture == "medium-noisy" else {})}
    if card is not None:
        write_card(card, {"name": args.out, "env": spec.name, "trajectories": path.name,
                          "description": f"{spec.id} " + (args.mixture if spec.family != "metaworld" else
                                                          "scripted policy + noise" + (f", {args.reversed:g} of the "
                                                          "steps from the reversed policy" if args.reversed else "")),
                          "made": {"command": command, "seed": args.seed, "transitions": args.transitions, **how}})
    print(f"wrote {path}" + (f" and {card}" if card else ""))
    return 0


def teacher_from_args(args: argparse.Namespace):
    """The scripted teacher the options of `pbrl data label` / `pbrl data agreement` describe."""
    from pbrl.data.labelling import make_teacher
    from pbrl.errors import ConfigError, describe

    if args.gamma is not None:
        raise ConfigError(describe("--gamma", "option", args.gamma, "--myopic (the myopic weight of B-Pref; the "
                                   "discount inside a segment is --discount)"))
    return make_teacher(args.teacher, critic=args.critic, expert=args.expert, critic_steps=args.critic_steps,
                        beta=args.beta, mistake=args.mistake, skip_threshold=args.skip_threshold,
                        equal_margin=args.equal_margin, myopic=args.myopic, discount=args.discount, seed=args.seed)


def cmd_data_label(args: argparse.Namespace) -> int:
    from pbrl.data.info import format_consistency
    from pbrl.data.labelling import describe_labels
    from pbrl.data.pairing import make_preferences
    from pbrl.data.preferences import write_preferences
    from pbrl.data.registry import load_dataset, write_card
    from pbrl.data.teachers import load_groups
    from pbrl.errors import ConfigError, describe

    teacher = teacher_from_args(args)
    if args.rounds is not None and (args.groups or args.rank):
        raise ConfigError(describe("--rounds", "option", args.rounds, "no --groups or --rank beside it (each round is "
                                   "one group labelling every pair)"))
    groups = load_groups(args.groups, teacher) if args.groups else None
    path, card = existing_refused(args.out, ".prefs.h5", "pbrl.preferences", args.force, "preference file",
                                  "a new name, or --force to replace these labels (runs trained on them then refuse "
                                  "to resume)")
    data = load_dataset(args.dataset, preferences=False, option="dataset")
    if card is not None and path.parent.resolve() != data.trajectories.path.parent.resolve():
        raise ConfigError(describe("--out", "name", args.out, "a name for a dataset whose trajectories live in datasets/ "
                                   "(or a path to an .h5 file)"))
    from pbrl.train.critics import fit_reward_ensemble, regret_advantages

    if teacher.utility == "regret" and teacher.critic_name == "expert" and teacher.expert is None:
        from pbrl.train.experts import with_dataset_expert

        teacher = with_dataset_expert(data.trajectories, teacher, args.behaviour_dir)
    prefs = make_preferences(data.trajectories, pairs=args.pairs, segment=args.segment, teacher=teacher, groups=groups,
                             pairing=args.pairing, mode=args.mode, rank=args.rank, seed=args.seed,
                             critic=regret_advantages, ensemble=fit_reward_ensemble)
    how = {"teacher": teacher.as_dict(), "pairing": args.pairing, "mode": args.mode, "rank": args.rank}
    if args.rounds is not None:
        from pbrl.data.pairing import reversal_rounds

        prefs = reversal_rounds(prefs, args.rounds, share=args.reverse_share, rate=args.reverse_rate, seed=args.seed)
        how["rounds"] = {"groups": args.rounds, "reverse_share": args.reverse_share, "reverse_rate": args.reverse_rate}
    if groups:
        how["groups"] = [{"name": g.name, "share": g.share, **g.teacher.params()} for g in groups]
    write_preferences(path, prefs, data.trajectories, teacher=how, seed=args.seed)
    # the command that makes these labels anew (--force only let this run replace the old ones)
    command = invoked_command(leave_out=("--force",))
    if card is not None:
        made = {k: v for k, v in data.card.get("made", {}).items() if k != "label_note"}  # notes on the old labels
        made.update({"label_command": command, "label_seed": args.seed, "pairs": args.pairs, "segment": args.segment,
                     **{k: v for k, v in how.items() if k != "groups"}})
        if groups:
            made["groups"] = how["groups"]
        kept = {k: data.card[k] for k in ("oracle", "control") if k in data.card}  # of the trajectories, not the labels
        labels = describe_labels(teacher, groups, pairs=args.pairs, segment=args.segment, rank=args.rank,
                                 pairing=args.pairing, mode=args.mode, seed=args.seed)
        if args.rounds is not None:
            labels += (f" Relabelled by {args.rounds} groups in rounds: the {args.reverse_share:.0%} most uncertain "
                       f"decided pairs reversed by each group with probability {args.reverse_rate}.")
        write_card(card, {"name": args.out, "env": data.env, "trajectories": data.trajectories.path.name,
                          "preferences": path.name, "description": data.card.get("description", ""),
                          "labels": labels, "made": made, **kept})
    print(f"wrote {path}" + (f" and {card}" if card else ""))
    if groups:
        from pbrl.data.teachers import consistency_report

        report = consistency_report(data.trajectories, prefs.segments_a, prefs.segments_b, prefs.label, prefs.group,
                                    groups, prefs.skipped, critic=regret_advantages)
        print(format_consistency(report))
    return 0


def cmd_data_agreement(args: argparse.Namespace) -> int:
    from pbrl.data.agreement import agreement_report, format_agreement
    from pbrl.data.formats import import_labels
    from pbrl.data.registry import load_dataset
    from pbrl.io import atomic_write_text

    # a previous report may be replaced (a report is made to be regenerated); any other file is refused
    out = writable_out("--json", args.json, owned=is_agreement_report) if args.json else None
    replacing = out is not None and out.exists()
    if args.teacher is None and (args.critic or args.expert or args.critic_steps is not None):
        from pbrl.errors import ConfigError, describe

        raise ConfigError(describe("--critic/--expert/--critic-steps", "option", "given without --teacher",
                                   "--teacher regret (or leave them out)"))
    teacher = teacher_from_args(args) if args.teacher is not None else None
    data = load_dataset(args.dataset, preferences=False)
    prefs = import_labels(args.file, data.trajectories)
    critic = None
    if teacher is not None:
        from pbrl.train.critics import regret_advantages

        critic = regret_advantages
        if teacher.utility == "regret" and teacher.critic_name == "expert" and teacher.expert is None:
            teacher = trained_dataset_expert(data.trajectories, teacher, args)
    report = agreement_report(prefs, data.trajectories, teacher, critic=critic)
    print(format_agreement(report, Path(args.file).name))
    if out is not None:
        atomic_write_text(out, json.dumps({"labels": str(args.file), "dataset": args.dataset, **report}, indent=2) + "\n")
        print(f"replaced the previous report {out}" if replacing else f"wrote {out}")
    return 0


def is_agreement_report(path: Path) -> bool:
    """Whether ``path`` holds a report `pbrl data agreement --json` wrote (which a new report may replace)."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and {"labels", "dataset", "annotators", "pairwise"} <= report.keys()


def trained_dataset_expert(trajectories, teacher, args: argparse.Namespace):
    """``teacher`` with the dataset's own expert, which must be trained already: a report never starts hours of
    policy training unasked (`pbrl data label ... --critic expert` trains or resumes it, as `pbrl data make` does)."""
    import dataclasses

    from pbrl.data.make import BehaviourRun
    from pbrl.errors import ConfigError, describe
    from pbrl.train.critics import dataset_expert

    env, algo, steps, seed, directory = dataset_expert(trajectories, args.behaviour_dir)
    done = BehaviourRun(directory, algo, env, seed).steps_done()
    if done < steps or not (directory / "model.zip").exists():
        raise ConfigError(describe("--critic expert", "expert", f"{directory} trained for {done:,} of {steps:,} "
                                   "steps", f"a trained expert: `pbrl data label {args.dataset} --teacher regret "
                                   f"--critic expert --behaviour-dir {args.behaviour_dir} ...` trains (or resumes) "
                                   "it, for hours; or name one with --expert DIR"))
    return dataclasses.replace(teacher, expert=str(directory))


def dataset_info(name: str, option: str = "--dataset") -> dict[str, Any]:
    """:func:`pbrl.data.info.dataset_info` with the regret critic that user groups' consistency needs."""
    from pbrl.data.info import dataset_info as compute_info
    from pbrl.train.critics import regret_advantages

    return compute_info(name, critic=regret_advantages, option=option)


def cmd_data_info(args: argparse.Namespace) -> int:
    from pbrl.data.info import format_dataset_info

    info = dataset_info(args.dataset, option="dataset")
    print(json.dumps(info, indent=2) if args.json else format_dataset_info(info))
    return 0


def cmd_data_topk(args: argparse.Namespace) -> int:
    from pbrl.data.topk import top_dataset_paths, write_top_dataset

    # a directory, a path under a file, an unwritable place; existing files, nonsense numbers and a prefix with a
    # suffix are refused by write_top_dataset (before it writes anything) in its own words
    if not str(args.out).endswith((".h5", ".hdf5")):
        for path in top_dataset_paths(args.out):
            writable_out("--out", path, owned=lambda _existing: True)
    top = write_top_dataset(args.dataset, fraction=args.fraction, pairs=args.pairs, segment=args.segment, out=args.out)
    print(f"{top.episodes} episodes, {top.steps} steps, returns {top.return_min:.0f} to {top.return_max:.0f}: "
          f"wrote {top.trajectories} and {top.preferences}")
    return 0


def add_make_parser(dsub: argparse._SubParsersAction) -> None:
    mk = dsub.add_parser("make", help="roll out behaviour policies in a simulator into a trajectory dataset",
                         description="MuJoCo: train (or resume) a stable-baselines3 behaviour policy and roll out a "
                         "D4RL-style mixture. Meta-World: the task's scripted policy with Gaussian action noise.")
    mk.add_argument("--env", required=True, help="env preset (envs/*.toml) or gymnasium id, e.g. hopper, button-press")
    mk.add_argument("--mixture", default="medium-replay", help="random | medium | medium-replay | medium-expert | "
                    "expert | medium-noisy (the medium policy's deterministic action + Gaussian noise at each --noise "
                    "scale: one suboptimal policy with noise, as CPL's data)")
    mk.add_argument("--algo", default="sac", choices=["sac", "ppo"], help="behaviour-policy trainer (default: sac)")
    mk.add_argument("--expert-algo", default=None, choices=["sac", "ppo"],
                    help="trainer of the expert policy of expert / medium-expert (default: --algo)")
    mk.add_argument("--medium-steps", type=int_at_least(1), default=200_000,
                    help="env steps to train the 'medium' policy")
    mk.add_argument("--expert-steps", type=int_at_least(1), default=1_000_000,
                    help="env steps to train the 'expert' policy")
    mk.add_argument("--transitions", type=int_at_least(1), default=100_000,
                    help="approximate size of the dataset in steps")
    mk.add_argument("--noise", type=noise_scales, default="0.1,0.5,1.0",
                    help="Meta-World and MuJoCo medium-noisy: comma-separated action-noise scales (an equal share of "
                    "the steps at each)")
    mk.add_argument("--reversed", type=float_in(0.0, 1.0, high_open=True), default=0.0, metavar="F",
                    help="Meta-World: fraction of the steps from the reversed scripted policy (a bad operator: BC on "
                    "the mixture falls short)")
    mk.add_argument("--behaviour-dir", default="runs/behaviour", help="where behaviour policies are trained/cached")
    mk.add_argument("--seed", type=SEED, default=0)
    mk.add_argument("--out", required=True, help="dataset name (writes datasets/NAME.h5 + card) or a .h5 path")
    mk.add_argument("--overwrite", action="store_true", help="replace an existing dataset file")
    mk.set_defaults(func=cmd_data_make)


def add_label_parser(dsub: argparse._SubParsersAction) -> None:
    lb = dsub.add_parser("label", help="sample segment pairs and label them with a scripted teacher")
    lb.add_argument("dataset", help="dataset name (datasets/NAME.toml) or .h5 path")
    lb.add_argument("--pairs", type=int_at_least(1), required=True, help="number of pairs to label")
    lb.add_argument("--segment", type=int_at_least(1), default=64, help="segment length T in steps")
    lb.add_argument("--teacher", default="scripted", choices=["scripted", "return", "regret"],
                    help="scripted/return: Bradley-Terry on the true segment return; regret: on the segment's summed "
                    "advantage Σ_t γ^t A(s_t, a_t) under --critic (CPL's assumption)")
    noise = lb.add_argument_group("noise (B-Pref models, combinable)")
    noise.add_argument("--beta", type=POSITIVE, default=None, help="stochastic: rationality β; omit: deterministic")
    noise.add_argument("--mistake", type=float_in(0.0, 0.5), default=0.0,
                       help="mistake: flip each label with probability ε")
    noise.add_argument("--skip-threshold", type=ANY_NUMBER, default=None,
                       help="skip: no label when both scores are below")
    noise.add_argument("--equal-margin", type=NON_NEGATIVE, default=0.0,
                       help="equal: label 0.5 when scores differ by less")
    noise.add_argument("--myopic", type=float_in(0.0, 1.0, low_open=True), default=1.0,
                       help="myopic: weight step t of T by myopic^(T−1−t) in the preference (B-Pref's teacher_gamma; "
                       "skip and equal use the unweighted scores)")
    noise.add_argument("--gamma", type=float, default=None, help=argparse.SUPPRESS)  # renamed: refused in one line
    lb.add_argument("--critic", default=None, choices=["iql", "expert", "behaviour"],
                    help="regret: where the advantage comes from. iql (default): r + γV(s′) − V(s) with IQL's in-sample "
                    "optimal value fitted to the true reward; expert: the expert policy's critic, as the CPL paper labels (the dataset's own "
                    "expert from `pbrl data make`, trained or resumed under --behaviour-dir, or --expert DIR); "
                    "behaviour: a value fitted to the behaviour's own returns (weak: kept for comparison)")
    lb.add_argument("--expert", default=None, metavar="DIR", help="critic expert: a stable-baselines3 run directory "
                    "(runs/behaviour/ENV-ALGO-STEPS-sSEED with model.zip); implies --critic expert")
    lb.add_argument("--critic-steps", type=int_at_least(1), default=None, help="gradient steps of the critic fit "
                    "(iql 20000, behaviour 3000)")
    lb.add_argument("--behaviour-dir", default="runs/behaviour", help="where `pbrl data make` keeps behaviour policies")
    lb.add_argument("--discount", type=UNIT, default=None, help="discount inside a segment (return: 1, regret: 0.99)")
    lb.add_argument("--groups", default=None, metavar="FILE", help="user groups (TOML [[group]] tables: share, "
                    "utility weights over reward terms, noise); every label carries its group id")
    rounds = lb.add_argument_group("rounds of user groups (Diff-UAPA's noise protocol)")
    rounds.add_argument("--rounds", type=int_at_least(1), default=None, metavar="R",
                        help="label the same pairs once per group, R groups (group r = round r)")
    rounds.add_argument("--reverse-share", type=UNIT, default=0.2,
                        help="with --rounds: the share of decided pairs, the most uncertain by teacher score, that a "
                        "group may reverse (the paper: 0.2)")
    rounds.add_argument("--reverse-rate", type=UNIT, default=0.5,
                        help="with --rounds: each group reverses each of them with this probability (the paper: 0.5)")
    lb.add_argument("--pairing", default="uniform", choices=["uniform", "stratified", "disagreement"],
                    help="how pairs are chosen (see pbrl.data.pairing)")
    lb.add_argument("--mode", default="segments", choices=["segments", "episodes"],
                    help="segments: any number of labels per episode; episodes: one label per pair of trajectories "
                    "(not the CPL paper's dense/sparse: those are agent.regime)")
    lb.add_argument("--rank", type=ranking_size, default=0, metavar="K", help="ask K-way rankings (stored as pairs)")
    lb.add_argument("--seed", type=SEED, default=0)
    lb.add_argument("--force", action="store_true", help="replace an existing preference file")
    lb.add_argument("--out", required=True, help="name (datasets/NAME.prefs.h5 + card) or .h5 path")
    lb.set_defaults(func=cmd_data_label)


def add_agreement_parser(dsub: argparse._SubParsersAction) -> None:
    ag = dsub.add_parser("agreement", help="agreement of human labels: Cohen's kappa per pair of annotators, Fleiss' "
                         "kappa, and (--teacher) each annotator's agreement with a noise-free scripted teacher")
    ag.add_argument("file", help="labels (.jsonl or .csv, as `pbrl data import-labels` reads)")
    ag.add_argument("--dataset", required=True, help="the trajectory dataset the segments refer to")
    ag.add_argument("--teacher", default=None, choices=["scripted", "return", "regret"],
                    help="compare each annotator with this teacher's noise-free preference (default: annotators only)")
    ag.add_argument("--critic", default=None, choices=["iql", "expert", "behaviour"], help="regret: as `pbrl data label`")
    ag.add_argument("--expert", default=None, metavar="DIR", help="regret, critic expert: as `pbrl data label`")
    ag.add_argument("--critic-steps", type=int_at_least(1), default=None, help="regret: gradient steps of the critic fit")
    ag.add_argument("--behaviour-dir", default="runs/behaviour", help="where `pbrl data make` keeps behaviour policies")
    ag.add_argument("--discount", type=UNIT, default=None, help="discount inside a segment (return: 1, regret: 0.99)")
    ag.add_argument("--myopic", type=float_in(0.0, 1.0, low_open=True), default=1.0, help="weight step t of T by myopic^(T−1−t)")
    ag.add_argument("--seed", type=SEED, default=0, help="seed of the regret critic's fit")
    ag.add_argument("--json", default=None, metavar="OUT", help="also write the report as JSON")
    # the teacher is noise-free here: the noise options of `data label` are fixed
    ag.set_defaults(func=cmd_data_agreement, beta=None, mistake=0.0, skip_threshold=None, equal_margin=0.0, gamma=None)


def add_topk_parser(dsub: argparse._SubParsersAction) -> None:
    tk = dsub.add_parser("topk", help="the best fraction of a dataset's episodes by true return as its own labelled "
                         "dataset (BC on it: the %%BC baseline of Chen et al., 2021)",
                         description="Writes OUT.h5 (the episodes) and OUT.prefs.h5 (return-teacher pairs: BC samples\n"
                         "segments from the pair table and ignores the labels).", formatter_class=FORMATTER,
                         epilog="example: pbrl data topk hopper-medium-replay-small --fraction 0.1 --out "
                         "runs/topbc/top0.1 && pbrl train --agent bc --dataset runs/topbc/top0.1.prefs.h5 --scale cpu "
                         "--out runs/topbc-bc")
    tk.add_argument("dataset", help="dataset name or .h5 path")
    tk.add_argument("--fraction", type=float, default=0.1, help="share of the episodes kept, in (0, 1] (default 0.1; "
                    "at least two episodes)")
    tk.add_argument("--pairs", type=int, default=5000, help="return-teacher pairs written (default 5000)")
    tk.add_argument("--segment", type=int, default=64, help="segment length in steps (default 64)")
    tk.add_argument("--out", required=True, help="path prefix: writes OUT.h5 and OUT.prefs.h5 (neither may exist)")
    tk.set_defaults(func=cmd_data_topk)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``pbrl data`` and its subcommands, in the order `pbrl data --help` lists them."""
    data = sub.add_parser("data", help="make, label and inspect datasets")
    dsub = data.add_subparsers(dest="data_command", required=True)
    add_make_parser(dsub)
    add_label_parser(dsub)
    inf = dsub.add_parser("info", help="print size, returns and label statistics of a dataset")
    inf.add_argument("dataset", help="dataset name or .h5 path")
    inf.add_argument("--json", action="store_true", help="machine-readable output")
    inf.set_defaults(func=cmd_data_info)
    data_formats.add_parsers(dsub)
    data_robot.add_parsers(dsub)
    add_agreement_parser(dsub)
    add_topk_parser(dsub)
