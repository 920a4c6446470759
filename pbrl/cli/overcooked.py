"""``pbrl overcooked``: Overcooked-AI PPO (self-play, partner pools, styles), the BC human model, the hybrid agent,
rollouts as datasets, evaluation of pairs and the user-groups file for labelling (the training lives in
:mod:`pbrl.train.overcooked`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pbrl.cli.common import FORMATTER, int_at_least, output_file

SEED_LIMIT = 1_000_000
"""Seeds are below this: the runs derive seeds from ``--seed`` (the hybrid's recovery chunks ``1000 * seed + ...``)
and NumPy's legacy seeding, which SB3 uses, takes only seeds below 2**32."""


def seed_number(text: str) -> int:
    """An argparse ``type`` for ``--seed``: an integer in [0, SEED_LIMIT)."""
    value = int_at_least(0)(text)
    if value >= SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"got {value}, expected an integer >= 0 and < {SEED_LIMIT}")
    return value


seed_number.__name__ = "seed"


def partner_policy(spec: str, seed: int):
    """A run folder (model.zip or policy.pt) as a playing partner, or ``random``."""
    from pbrl.envs.overcooked import RandomPolicy
    from pbrl.train.overcooked import PolicyPartner

    return RandomPolicy(seed) if spec == "random" else PolicyPartner.load(spec, seed=seed)


def style_utility(name: str | None, option: str = "--style"):
    """The utility of the style ``name`` (``option``), or the task's own when none is named."""
    from pbrl.envs.overcooked import STYLES, TASK
    from pbrl.errors import ConfigError, describe

    if name is None:
        return TASK
    if name not in STYLES:
        raise ConfigError(describe(option, "style", repr(name), f"one of {sorted(STYLES)}"))
    return STYLES[name]


def apply_set(overrides: list[str] | None, sections: dict[str, Any], bare: str) -> None:
    """``--set SECTION.KEY=VALUE`` (as `pbrl train --set`; ``KEY=VALUE`` means section ``bare``) onto the config
    dataclasses of ``sections``, typed and checked against each field's bounds (:func:`pbrl.fields.set_fields`)."""
    import dataclasses

    from pbrl.errors import ConfigError, describe
    from pbrl.fields import set_fields

    per_section: dict[str, list[str]] = {name: [] for name in sections}
    for text in overrides or []:
        key, equals, value = text.partition("=")
        section, dot, field = key.strip().rpartition(".")
        section = section if dot else bare
        if not equals or section not in sections:
            raise ConfigError(describe("--set", "override", repr(text), f"SECTION.KEY=VALUE with SECTION in "
                                       f"{sorted(sections)} (a bare KEY=VALUE sets {bare})"))
        fields = sorted(f.name for f in dataclasses.fields(sections[section]))
        if field not in fields:
            raise ConfigError(describe("--set", "override", repr(text), f"{section}.KEY=VALUE with KEY in {fields}"))
        per_section[section].append(f"{field}={value}")
    for section, target in sections.items():
        set_fields(target, per_section[section], section=section)


def run_ppo(args: argparse.Namespace) -> Path | None:
    from pbrl.envs.overcooked import check_layout
    from pbrl.train import overcooked as oc

    cfg = oc.PPOConfig()
    apply_set(args.set, {"ppo": cfg}, bare="ppo")
    check_layout(args.layout)
    utility = style_utility(args.style)
    partners = ([partner_policy(d, args.seed + 10 * i) for i, d in enumerate(args.partners)]
                if args.partners else None)
    return oc.train_ppo(args.out, args.layout, args.steps, seed=args.seed, cfg=cfg, partners=partners,
                        partner_names=args.partners or (), utility=utility, init=args.init, progress=not args.quiet)


def run_bc(args: argparse.Namespace) -> Path:
    from pbrl.train import overcooked as oc

    return oc.train_bc(args.out, args.dataset, steps=args.steps, seed=args.seed, progress=not args.quiet)


def run_hybrid(args: argparse.Namespace) -> Path:
    from pbrl.agents.hybrid import HybridConfig
    from pbrl.train import overcooked as oc

    cfg, ppo = HybridConfig(), oc.PPOConfig()
    apply_set(args.set, {"hybrid": cfg, "ppo": ppo}, bare="hybrid")
    return oc.train_hybrid(args.out, args.layout, args.pool, args.preferences, cfg=cfg, ppo=ppo, seed=args.seed,
                           pretrained=args.pretrained, progress=not args.quiet)


def run_rollouts(args: argparse.Namespace) -> Path:
    from pbrl.data.store import write_trajectories
    from pbrl.envs.overcooked import N_ACTIONS, check_layout, play
    from pbrl.train import overcooked as oc

    out = output_file("--out", args.out, suffixes=(".h5", ".hdf5"))
    check_layout(args.layout)
    partner = partner_policy(args.partner, args.seed + 1)
    egos = [partner_policy(ego, args.seed + 100 * (i + 1)) for i, ego in enumerate(args.ego)]  # all load, or none plays
    episodes = []
    for name, ego in zip(args.ego, egos, strict=True):
        result = play(args.layout, ego, partner, episodes=args.episodes, record=True)
        episodes += oc.rollout_episodes(result, source=name)
    return write_trajectories(out, episodes, env_id=f"Overcooked-{args.layout}", seed=args.seed,
                              behaviour_policy=f"{', '.join(args.ego)} with {args.partner}",
                              metadata={"layout": args.layout, "partner": args.partner,
                                        "action_space": {"type": "discrete", "n": N_ACTIONS, "encoding": "one-hot"}})


def is_groups_file(path: Path) -> bool:
    """Whether ``path`` is a groups file (what `pbrl overcooked groups` writes): then it may be replaced."""
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    return set(data) == {"group"} and isinstance(data["group"], list)


def run_groups(args: argparse.Namespace) -> Path:
    from pbrl.envs.overcooked import groups_toml
    from pbrl.io import atomic_write_text

    out = output_file("--out", args.out, suffixes=(".toml",), owned=is_groups_file)
    return atomic_write_text(out, groups_toml([style_utility(n, "--styles") for n in args.styles], seat=args.seat))


def run_eval(args: argparse.Namespace) -> None:
    """Print the pair's scores as JSON (eval writes no file)."""
    import numpy as np

    from pbrl.envs.overcooked import check_layout
    from pbrl.train import overcooked as oc

    check_layout(args.layout)
    style = style_utility(args.style) if args.style else None
    score = oc.score_pair(args.layout, partner_policy(args.ego, args.seed), partner_policy(args.partner, args.seed + 1),
                          episodes=args.episodes, style=style)
    out = {"layout": args.layout, "ego": args.ego, "partner": args.partner, "episodes": args.episodes,
           "return_mean": float(score.returns.mean()), "return_std": float(score.returns.std()),
           "soups_mean": float(score.returns.mean() / 20)}
    if style is not None:
        out["preference_mean"] = float(np.nanmean(score.preference)) if np.isfinite(score.preference).any() else None
    print(json.dumps(out, indent=1))


SUBCOMMANDS = {"ppo": run_ppo, "bc": run_bc, "hybrid": run_hybrid, "rollouts": run_rollouts, "groups": run_groups}


def cmd_overcooked(args: argparse.Namespace) -> int:
    if args.oc_command == "eval":
        run_eval(args)
        return 0
    path = SUBCOMMANDS[args.oc_command](args)
    print(f"wrote {path}" if path is not None else "stopped early at a checkpoint; run again to resume")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``pbrl overcooked`` and its subcommands (one handler: :func:`cmd_overcooked` dispatches on the name)."""
    oc = sub.add_parser("overcooked", help="Overcooked-AI: PPO (self-play, pools, styles), the BC human model, the "
                        "hybrid agent, rollouts, evaluation of pairs", formatter_class=FORMATTER,
                        epilog="example: pbrl overcooked ppo --layout cramped_room --steps 500000 --out runs/sp-s0; "
                        "partners and egos are run folders (model.zip or policy.pt) or 'random'")
    ocs = oc.add_subparsers(dest="oc_command", required=True)
    o1 = ocs.add_parser("ppo", help="stable-baselines3 PPO: self-play, or against --partners (resumable)")
    o1.add_argument("--partners", nargs="+", default=None, metavar="DIR", help="partner pool (omit: self-play)")
    o1.add_argument("--style", default=None, help="train a human proxy with this style's utility (cook, deliverer)")
    o1.add_argument("--init", default=None, metavar="DIR", help="start from another run's weights")
    o1.add_argument("--steps", type=int_at_least(1), default=500_000, help="game steps (default 500000; rounded up "
                    "to whole rollouts of ppo.n_games x 400)")
    o1.add_argument("--set", action="append", metavar="ppo.KEY=VALUE", help="PPOConfig field, e.g. ppo.lr=3e-4 "
                    "(recorded in config.json)")
    o2 = ocs.add_parser("bc", help="behaviour-clone an Overcooked dataset (the human model of Carroll et al.)")
    o2.add_argument("--dataset", required=True, help="dataset name or .h5 (e.g. from `pbrl data import-overcooked`)")
    o2.add_argument("--steps", type=int_at_least(1), default=20_000, help="gradient steps (default 20000)")
    o3 = ocs.add_parser("hybrid", help="the hybrid offline-online agent (pbrl.agents.hybrid)")
    o3.add_argument("--pool", nargs="+", required=True, metavar="DIR", help="partner pool for the online phases")
    o3.add_argument("--preferences", required=True, help="labelled pairs of the ego's trajectories (.prefs.h5 or name)")
    o3.add_argument("--pretrained", default=None, metavar="DIR", help="a PPO run pre-trained against the pool")
    o3.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="HybridConfig field (hybrid.KEY or "
                    "KEY, e.g. rounds=2) or PPOConfig field of its PPO phases (ppo.KEY)")
    o4 = ocs.add_parser("rollouts", help="record --ego policies playing with --partner as a trajectory dataset")
    o4.add_argument("--ego", nargs="+", required=True, metavar="DIR")
    o4.add_argument("--partner", required=True, metavar="DIR")
    o4.add_argument("--episodes", type=int_at_least(1), default=10, help="episodes per ego")
    o5 = ocs.add_parser("eval", help="team return (and a style's preference score) of --ego with --partner")
    o5.add_argument("--ego", required=True, metavar="DIR")
    o5.add_argument("--partner", required=True, metavar="DIR")
    o5.add_argument("--style", default=None, help="the partner's style, for the preference score")
    o5.add_argument("--episodes", type=int_at_least(1), default=20)
    o6 = ocs.add_parser("groups", help="a `pbrl data label --groups` file: one group per style")
    o6.add_argument("--styles", nargs="+", default=["cook", "deliverer"])
    o6.add_argument("--seat", default="partner", choices=["partner", "own"], help="partner: label the trajectories of "
                    "the player who played WITH the style's person (an AI's rollouts); own: the person's own")
    o6.add_argument("--out", required=True, help="a .toml path")
    o6.set_defaults(func=cmd_overcooked)
    # the options every game-playing subcommand shares (bc reads its layout from the dataset; eval writes nothing)
    for o in (o1, o2, o3, o4, o5):
        if o is not o2:
            o.add_argument("--layout", default="cramped_room", help="the package's layout name")
        o.add_argument("--seed", type=seed_number, default=0, help=f"0 <= seed < {SEED_LIMIT}")
        if o is not o5:
            o.add_argument("--out", required=True, help="run folder (rollouts: a new .h5 file)")
            o.add_argument("--quiet", action="store_true", help="no progress (a bar on a terminal, else a line "
                           "every 30 s); warnings still print")
    oc.set_defaults(func=cmd_overcooked)
