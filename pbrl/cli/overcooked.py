"""``pbrl overcooked``: Overcooked-AI PPO (self-play, partner pools, styles), the BC human model, the hybrid agent,
rollouts as datasets, evaluation of pairs and the user-groups file for labelling (the training lives in
:mod:`pbrl.train.overcooked`)."""

from __future__ import annotations

import argparse
import json

from pbrl.cli.common import FORMATTER


def partner_policy(spec: str, seed: int):
    """A run folder (model.zip or policy.pt) as a playing partner, or ``random``."""
    from pbrl.envs.overcooked import RandomPolicy
    from pbrl.train.overcooked import PolicyPartner

    return RandomPolicy(seed) if spec == "random" else PolicyPartner.load(spec, seed=seed)


def style_utility(name: str | None):
    """The utility of the style ``name`` (``--style``), or the task's own when none is named."""
    from pbrl.envs.overcooked import STYLES, TASK
    from pbrl.errors import ConfigError, describe

    if name is None:
        return TASK
    if name not in STYLES:
        raise ConfigError(describe("--style", "style", repr(name), f"one of {sorted(STYLES)}"))
    return STYLES[name]


def cmd_overcooked(args: argparse.Namespace) -> int:
    import numpy as np

    from pbrl.train import overcooked as oc

    if args.oc_command == "ppo":
        partners = ([partner_policy(d, args.seed + 10 * i) for i, d in enumerate(args.partners)]
                    if args.partners else None)
        path = oc.train_ppo(args.out, args.layout, args.steps, seed=args.seed, partners=partners,
                            partner_names=args.partners or (), utility=style_utility(args.style), init=args.init,
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

        partner = partner_policy(args.partner, args.seed + 1)
        episodes = []
        for i, ego in enumerate(args.ego):
            result = play(args.layout, partner_policy(ego, args.seed + 100 * (i + 1)), partner, episodes=args.episodes,
                          record=True)
            episodes += oc.rollout_episodes(result, source=ego)
        path = write_trajectories(args.out, episodes, env_id=f"Overcooked-{args.layout}", seed=args.seed,
                                  behaviour_policy=f"{', '.join(args.ego)} with {args.partner}",
                                  metadata={"layout": args.layout, "partner": args.partner,
                                            "action_space": {"type": "discrete", "n": N_ACTIONS, "encoding": "one-hot"}})
    elif args.oc_command == "groups":
        from pbrl.envs.overcooked import groups_toml
        from pbrl.io import atomic_write_text

        path = atomic_write_text(args.out, groups_toml([style_utility(n) for n in args.styles], seat=args.seat))
    else:  # eval
        style = style_utility(args.style) if args.style else None
        score = oc.score_pair(args.layout, partner_policy(args.ego, args.seed),
                              partner_policy(args.partner, args.seed + 1), episodes=args.episodes, style=style)
        out = {"layout": args.layout, "ego": args.ego, "partner": args.partner, "episodes": args.episodes,
               "return_mean": float(score.returns.mean()), "return_std": float(score.returns.std()),
               "soups_mean": float(score.returns.mean() / 20)}
        if style is not None:
            out["preference_mean"] = float(np.nanmean(score.preference)) if np.isfinite(score.preference).any() else None
        print(json.dumps(out, indent=1))
        return 0
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
    # the options every game-playing subcommand shares (bc reads its layout from the dataset; eval writes nothing)
    for o in (o1, o2, o3, o4, o5):
        if o is not o2:
            o.add_argument("--layout", default="cramped_room", help="the package's layout name")
        o.add_argument("--seed", type=int, default=0)
        if o is not o5:
            o.add_argument("--out", required=True, help="run folder (rollouts: a new .h5 file)")
            o.add_argument("--quiet", action="store_true", help="no progress bar")
    oc.set_defaults(func=cmd_overcooked)
