"""Overcooked-AI: the hybrid offline-online agent against self-play PPO, PPO_BC and BC, with hidden-utility human
proxies and the held-out human model as partners (issue 15). Every stage is resumable: run it again and
finished runs are reused, unfinished ones resume from their checkpoints.

    OMP_NUM_THREADS=1 python scripts/bench/overcooked_ai.py [--layout cramped_room] [--seeds 0 1 2]
        [--steps 500000] [--episodes 20] [--styles cook deliverer] [--stages speed gate human proxies data agents eval]

Stages:
  speed    env steps/s of pbrl's wrapper (features for both players) against the raw package (the overhead ratio)
  gate     self-play PPO, one run per seed: learning curves and the gate (>= 100 sparse return per 400 steps)
  human    the human trials of the layout as datasets (train, test) and BC human models (train: one per seed;
           test: the held-out human proxy)
  proxies  one PPO human proxy per style, trained against the self-play pool with its event-weighted utility;
           their event counts side by side
  data     rollouts of the pool's policies (and their early checkpoints) with each proxy, labelled by the proxy's
           style through pbrl's teachers; the balanced-roles set (the pool with every proxy in equal parts, labelled
           by each style); the real human trajectories labelled by every style (groups = styles)
  agents   per seed: PPO_BC, the hybrid agent per style (pre-trained against the pool once per seed), and two
           controls: the same loop on coin-flip labels, and the pre-trained agent given the hybrid's online steps
           without the offline epochs (``--offline-data balanced``: the hybrid and its coin-flip control on the
           balanced-roles set instead)
  eval     every agent with every proxy and the held-out human model: team return and preference score

Writes ``OUT/LAYOUT/`` (runs, datasets, ``results.json``, ``sp-curve.png``) and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pbrl.agents.hybrid import HybridConfig
from pbrl.envs.overcooked import EVENTS, STYLES, OvercookedGame, groups_toml, play
from pbrl.train.config import set_fields
from pbrl.train.overcooked import (
    PolicyPartner,
    PPOConfig,
    rollout_episodes,
    score_pair,
    train_bc,
    train_hybrid,
    train_ppo,
)
from pbrl.train.overcooked_pool import pool_dirs, pool_name

GATE = 100.0


def ms(values) -> str:
    v = [float(x) for x in values if np.isfinite(x)]
    if not v:
        return "–"
    return f"{statistics.mean(v):.2f}" if len(v) == 1 else f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}"


def stage_speed(layout: str, results: dict) -> None:
    """Game steps/s: the package's own OvercookedEnv.step (no observations) vs pbrl's step with features."""
    from overcooked.mdp import Action, OvercookedEnv

    rng = np.random.default_rng(0)
    n = 4000
    acts = rng.integers(0, 6, size=(n, 2))
    raw, ours = [], []
    for _ in range(5):
        game = OvercookedGame(layout)
        env = OvercookedEnv.from_mdp(game.mdp, horizon=n + 1, info_level=0)
        env.reset()
        t = time.perf_counter()
        for a in acts:
            env.step([Action.INDEX_TO_ACTION[a[0]], Action.INDEX_TO_ACTION[a[1]]])
        raw.append(n / (time.perf_counter() - t))
        game = OvercookedGame(layout, horizon=n + 1)
        game.reset()
        t = time.perf_counter()
        for a in acts:
            game.step(a)
        ours.append(n / (time.perf_counter() - t))
    r, o = statistics.median(raw), statistics.median(ours)
    results["speed"] = {"raw_steps_per_s": r, "pbrl_steps_per_s": o, "overhead": r / o}
    print(f"\n| what | game steps/s (median of 5 x {n}) |\n|---|---|\n| package OvercookedEnv.step | {r:,.0f} |\n"
          f"| pbrl OvercookedGame.step + features of both players | {o:,.0f} |\n| overhead (raw / pbrl) | {r / o:.2f}x |")


def stage_gate(root: Path, layout: str, seeds, steps: int, episodes: int, results: dict) -> None:
    rows = []
    for s in seeds:
        t = time.perf_counter()
        train_ppo(root / f"sp-s{s}", layout, steps, seed=s)
        curve = json.loads((root / f"sp-s{s}" / "curve.json").read_text())
        me = PolicyPartner.load(root / f"sp-s{s}", seed=100 + s)
        twin = PolicyPartner.load(root / f"sp-s{s}", seed=200 + s)
        sp = play(layout, me, twin, episodes=episodes).returns
        rows.append({"seed": s, "self_play_return": float(sp.mean()), "curve": curve, "wall_s": time.perf_counter() - t})
    passed = all(r["self_play_return"] >= GATE for r in rows)
    results["gate"] = {"rows": rows, "passed": passed, "steps": steps}
    print(f"\n| seed | self-play return ({episodes} episodes, after {steps:,} game steps) |\n|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['self_play_return']:.1f} |")
    print(f"gate (>= {GATE:.0f} on every seed): {'passed' if passed else 'NOT passed'}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        for r in rows:
            ax.plot(np.array(r["curve"]["game_steps"]) / 1e3, r["curve"]["sparse_return"], label=f"seed {r['seed']}")
        ax.axhline(GATE, color="k", ls="--", lw=0.8, label="gate")
        ax.set_xlabel("game steps (thousands)")
        ax.set_ylabel("sparse return per 400 steps")
        ax.set_title(f"self-play PPO, {layout}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(root / "sp-curve.png", dpi=110)
    except ImportError:
        pass


def stage_human(root: Path, layout: str, seeds, results: dict) -> None:
    from pbrl.cli import main as pbrl

    for split in ("train", "test"):
        path = root / f"human-{split}.h5"
        if not path.exists():
            pbrl(["data", "import-overcooked", "--layout", layout, "--split", split, "--out", str(path)])
    for s in seeds:
        train_bc(root / f"bc-train-s{s}", root / "human-train.h5", seed=s, progress=False)
    train_bc(root / "bc-test", root / "human-test.h5", seed=0, progress=False)
    bc_pair = [play(layout, PolicyPartner.load(root / f"bc-train-s{s}", seed=s), PolicyPartner.load(root / "bc-test", seed=50 + s),
                    episodes=10).returns.mean() for s in seeds]
    results["human"] = {"bc_train_with_bc_test": bc_pair}
    print(f"\nBC(train) with BC(test), 10 episodes per seed: {ms(bc_pair)}")


def stage_proxies(root: Path, layout: str, seeds, steps: int, styles, episodes: int, results: dict) -> None:
    pool = pool_dirs(root, seeds)
    for name in styles:
        partners = [PolicyPartner.load(d, seed=10 + i) for i, d in enumerate(pool)]
        train_ppo(root / f"proxy-{name}", layout, steps, seed=0, partners=partners, partner_names=[str(d) for d in pool],
                  utility=STYLES[name])
    table = {}
    for name in styles:
        proxy = PolicyPartner.load(root / f"proxy-{name}", seed=3)
        runs = [score_pair(layout, proxy, PolicyPartner.load(d, seed=4 + i), episodes=episodes) for i, d in enumerate(pool)]
        ev = np.concatenate([r.ego_events for r in runs])
        table[name] = {"return": float(np.mean([r.returns.mean() for r in runs])),
                       "events": {e: float(ev[:, k].mean()) for k, e in enumerate(EVENTS)}}
    results["proxies"] = table
    shown = ("potting_onion", "useful_onion_pickup", "dish_pickup", "soup_pickup", "soup_delivery", "onion_drop")
    print(f"\nEach proxy's own events per episode, with the self-play pool ({episodes} episodes per pool member)\n")
    print("| proxy | return | " + " | ".join(shown) + " |\n|---|---|" + "---|" * len(shown))
    for name, row in table.items():
        print(f"| {name} | {row['return']:.1f} | " + " | ".join(f"{row['events'][e]:.1f}" for e in shown) + " |")


def stage_data(root: Path, layout: str, seeds, styles, pairs: int, segment: int, results: dict) -> None:
    from pbrl.cli import main as pbrl
    from pbrl.data.store import write_trajectories

    data_dir = root / "data"
    data_dir.mkdir(exist_ok=True)
    ai = [(pool_name(p), p) for p in pool_dirs(root, seeds)]
    for name in styles:
        traj = data_dir / f"with-{name}.h5"
        if not traj.exists():
            proxy = PolicyPartner.load(root / f"proxy-{name}", seed=77)
            episodes = []
            for i, (src, path) in enumerate(ai):
                result = play(layout, PolicyPartner.load(path, seed=i), proxy, episodes=12, record=True)
                episodes += rollout_episodes(result, source=src)
            write_trajectories(traj, episodes, env_id=f"Overcooked-{layout}", behaviour_policy=f"pool policies with the {name} proxy",
                               seed=0, metadata={"layout": layout, "partner": f"proxy-{name}",
                                                 "action_space": {"type": "discrete", "n": 6, "encoding": "one-hot"}})
        groups = data_dir / f"style-{name}.toml"
        groups.write_text(groups_toml([STYLES[name]], seat="partner"))
        prefs = data_dir / f"with-{name}.prefs.h5"
        if not prefs.exists():
            pbrl(["data", "label", str(traj), "--pairs", str(pairs), "--segment", str(segment), "--groups", str(groups),
                  "--seed", "0", "--out", str(prefs)])
        # the label control: the same pairs' worth of labels, each flipped with probability 0.5 (coin flips)
        coin = data_dir / f"with-{name}-coin.prefs.h5"
        if not coin.exists():
            pbrl(["data", "label", str(traj), "--pairs", str(pairs), "--segment", str(segment), "--groups", str(groups),
                  "--mistake", "0.5", "--seed", "0", "--out", str(coin)])
    if len(styles) > 1:  # balanced roles: each pool policy with every proxy in equal parts, so cloning has no default
        balanced = data_dir / "with-all.h5"
        if not balanced.exists():
            proxies = {name: PolicyPartner.load(root / f"proxy-{name}", seed=78 + k) for k, name in enumerate(styles)}
            games = 12 // len(styles)
            episodes = []
            for i, (src, path) in enumerate(ai):
                for name, proxy in proxies.items():
                    result = play(layout, PolicyPartner.load(path, seed=100 + i), proxy, episodes=games, record=True)
                    episodes += rollout_episodes(result, source=f"{src} with {name}")
            write_trajectories(balanced, episodes, env_id=f"Overcooked-{layout}",
                               behaviour_policy=f"pool policies with each proxy ({', '.join(styles)}) in equal parts",
                               seed=0, metadata={"layout": layout, "partner": ",".join(f"proxy-{n}" for n in styles),
                                                 "action_space": {"type": "discrete", "n": 6, "encoding": "one-hot"}})
        for name in styles:
            for suffix, mistake in (("", []), ("-coin", ["--mistake", "0.5"])):
                prefs = data_dir / f"with-all-{name}{suffix}.prefs.h5"
                if not prefs.exists():
                    pbrl(["data", "label", str(balanced), "--pairs", str(pairs), "--segment", str(segment), "--groups",
                          str(data_dir / f"style-{name}.toml"), *mistake, "--seed", "0", "--out", str(prefs)])
    # the real human trajectories, labelled by every style at once (one group per style)
    human_groups = data_dir / "styles-human.toml"
    human_groups.write_text(groups_toml([STYLES[n] for n in styles], seat="partner"))
    human_prefs = data_dir / "human-train-styles.prefs.h5"
    if not human_prefs.exists():
        pbrl(["data", "label", str(root / "human-train.h5"), "--pairs", str(pairs), "--segment", str(segment),
              "--groups", str(human_groups), "--seed", "0", "--out", str(human_prefs)])
    results["data"] = {"pairs": pairs, "segment": segment, "ai_policies": [a for a, _ in ai]}
    print(f"\nrollouts: {len(ai)} pool policies x 12 episodes with each proxy; {pairs} pairs of {segment}-step segments "
          "per style, and on the human trials")


def stage_agents(root: Path, layout: str, seeds, agent_seeds, steps: int, styles, hybrid_overrides: dict,
                 results: dict, coin: bool = True, offline_data: str = "matching") -> None:
    pool = pool_dirs(root, seeds)
    # matching: the offline rollouts are the pool's play with the style's own proxy (data/with-STYLE);
    # balanced: with every proxy in equal parts (data/with-all), labelled by the style, so cloning has no default role
    data, tag = (("with-{}", "") if offline_data == "matching" else ("with-all-{}", "all-"))
    for s in agent_seeds:
        pre = root / f"hybrid-pretrain-s{s}"
        partners = [PolicyPartner.load(d, seed=400 + s + 10 * i) for i, d in enumerate(pool)]
        train_ppo(pre, layout, steps, seed=s, partners=partners, partner_names=[str(d) for d in pool])
        if offline_data == "matching":
            bc = PolicyPartner.load(root / f"bc-train-s{s}", seed=300 + s)
            train_ppo(root / f"ppo-bc-s{s}", layout, steps, seed=s, partners=[bc], partner_names=[f"bc-train-s{s}"])
        for name in styles:
            cfg = HybridConfig(pretrain_steps=steps, **hybrid_overrides)
            hybrid = root / f"hybrid-{tag}{name}-s{s}"
            prefs = root / "data" / f"{data.format(name)}.prefs.h5"
            train_hybrid(hybrid, layout, pool, prefs, cfg=cfg, seed=s, pretrained=pre)
            if coin:  # label control: the same loop on coin-flip labels of the same rollouts
                train_hybrid(root / f"hybrid-{tag}{name}-coin-s{s}", layout, pool,
                             root / "data" / f"{data.format(name)}-coin.prefs.h5", cfg=cfg, seed=s, pretrained=pre)
            if offline_data != "matching":
                continue  # the online-steps control is the matching data's (the same pre-trained agent)
            # the control: the same pre-trained agent given the same online steps, without the offline epochs
            chunks = sum(len(r["after_recovery"]) for r in json.loads((hybrid / "rounds.json").read_text())["rounds"])
            partners = [PolicyPartner.load(d, seed=700 + s + 10 * i) for i, d in enumerate(pool)]
            train_ppo(root / f"pool-ppo-{name}-s{s}", layout, chunks * cfg.recovery_steps, seed=s, init=pre,
                      cfg=PPOConfig(shaping_horizon=0.0), partners=partners, partner_names=[str(d) for d in pool])


def stage_eval(root: Path, layout: str, seeds, styles, episodes: int, results: dict) -> None:
    partners = {f"proxy-{n}": STYLES[n] for n in styles}
    partners["bc-test"] = None
    agents = {"self-play PPO": lambda s: root / f"sp-s{s}", "PPO_BC": lambda s: root / f"ppo-bc-s{s}",
              "BC": lambda s: root / f"bc-train-s{s}", "hybrid pre-trained": lambda s: root / f"hybrid-pretrain-s{s}"}
    for n in styles:
        agents[f"hybrid ({n})"] = lambda s, n=n: root / f"hybrid-{n}-s{s}"
        agents[f"hybrid ({n}), coin-flip labels"] = lambda s, n=n: root / f"hybrid-{n}-coin-s{s}"
        agents[f"pool PPO, hybrid's online steps ({n})"] = lambda s, n=n: root / f"pool-ppo-{n}-s{s}"
        agents[f"hybrid ({n}), balanced roles"] = lambda s, n=n: root / f"hybrid-all-{n}-s{s}"
        agents[f"hybrid ({n}), balanced roles, coin-flip labels"] = lambda s, n=n: root / f"hybrid-all-{n}-coin-s{s}"
    table = {}
    for agent, where in agents.items():
        for partner, style in partners.items():
            per_seed = []
            for s in seeds:
                if not where(s).exists():
                    continue
                ego = PolicyPartner.load(where(s), seed=500 + s)
                other = PolicyPartner.load(root / partner, seed=600 + s)
                r = score_pair(layout, ego, other, episodes=episodes, style=style)
                per_seed.append({"seed": s, "return": float(r.returns.mean()),
                                 "preference": float(np.nanmean(r.preference)) if np.isfinite(r.preference).any() else float("nan")})
            table[f"{agent} | {partner}"] = per_seed
    results["eval"] = table
    print("\n| agent | partner | return | preference score | seeds |\n|---|---|---|---|---|")
    for key, rows in table.items():
        agent, partner = key.split(" | ")
        if not rows:
            continue
        print(f"| {agent} | {partner} | {ms([r['return'] for r in rows])} | {ms([r['preference'] for r in rows])} | {len(rows)} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layout", default="cramped_room")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--agent-seeds", nargs="+", type=int, default=None,
                   help="train agents only for these seeds (default: --seeds; the pool always uses --seeds), e.g. to "
                   "split the agents stage over two processes")
    p.add_argument("--steps", type=int, default=500_000, help="game steps per PPO run")
    p.add_argument("--episodes", type=int, default=20, help="evaluation episodes per pair and seed")
    p.add_argument("--styles", nargs="+", default=["cook", "deliverer"], choices=sorted(STYLES))
    p.add_argument("--pairs", type=int, default=10_000, help="labelled pairs per style (one offline epoch = all)")
    p.add_argument("--segment", type=int, default=100, help="segment length of the labelled pairs")
    p.add_argument("--hybrid", action="append", default=[], metavar="KEY=VALUE", help="HybridConfig override")
    p.add_argument("--offline-data", default="matching", choices=["matching", "balanced"],
                   help="the hybrid's offline rollouts: the pool with the style's own proxy (matching), or with every "
                        "proxy in equal parts (balanced: both roles equally frequent, so cloning has no default)")
    p.add_argument("--no-coin-control", action="store_true", help="skip the hybrid on coin-flip labels (the label control)")
    p.add_argument("--stages", nargs="+", default=["speed", "gate", "human", "proxies", "data", "agents", "eval"])
    p.add_argument("--out", default="runs/overcooked")
    args = p.parse_args()
    torch.set_num_threads(1)
    root = Path(args.out) / args.layout
    root.mkdir(parents=True, exist_ok=True)
    res_path = root / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {}
    probe = HybridConfig()
    set_fields(probe, args.hybrid, section="hybrid", where="--hybrid")  # checked here, applied per run
    overrides = {k: getattr(probe, k) for k in (o.split("=", 1)[0].strip() for o in args.hybrid)}
    print(f"# scripts/bench/overcooked_ai.py: {args.layout}, seeds {args.seeds}, {args.steps:,} game steps per PPO run "
          f"({PPOConfig().n_games} games), {' '.join(sys.argv[1:])}")
    for stage in args.stages:
        t = time.perf_counter()
        if stage == "speed":
            stage_speed(args.layout, results)
        elif stage == "gate":
            stage_gate(root, args.layout, args.seeds, args.steps, args.episodes, results)
            if not results["gate"]["passed"]:
                print("the gate is not passed: stopping before any comparison")
                break
        elif stage == "human":
            stage_human(root, args.layout, args.seeds, results)
        elif stage == "proxies":
            stage_proxies(root, args.layout, args.seeds, args.steps, args.styles, args.episodes, results)
        elif stage == "data":
            stage_data(root, args.layout, args.seeds, args.styles, args.pairs, args.segment, results)
        elif stage == "agents":
            stage_agents(root, args.layout, args.seeds, args.agent_seeds or args.seeds, args.steps, args.styles, overrides,
                         results, coin=not args.no_coin_control, offline_data=args.offline_data)
        elif stage == "eval":
            stage_eval(root, args.layout, args.seeds, args.styles, args.episodes, results)
        else:
            raise SystemExit(f"unknown stage {stage!r}")
        results.setdefault("wall_s", {})[stage] = time.perf_counter() - t
        res_path.write_text(json.dumps(results, indent=1, default=float))
        print(f"[{stage}: {time.perf_counter() - t:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
