"""One offline epoch of the hybrid agent, no recovery: what does it change? (issue 15 diagnostics)

    OMP_NUM_THREADS=1 python scripts/diag/hybrid_offline.py --style cook --labels true coin \
        --configs bias=0.5 bias=1.0 [--root runs/overcooked/cramped_room] [--pretrained hybrid-pretrain-s0]

For each label file (``true``: ``data/with-STYLE.prefs.h5``, ``coin``: ``data/with-STYLE-coin.prefs.h5``, from
``scripts/bench/overcooked_ai.py``; ``--data balanced``: ``data/with-all-STYLE*.prefs.h5``, the pool with every proxy) and each HybridConfig override set (comma-separated ``key=value``), runs
``offline_epochs`` of :class:`pbrl.agents.hybrid.HybridOffline` from the pre-trained agent and prints the agent's
return, preference score, potting and deliveries with each proxy (10 episodes) and its return with the pool (4
episodes per member). Nothing is written outside a temporary folder.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from pbrl.agents.hybrid import HybridConfig, HybridOffline
from pbrl.data.preferences import PreferenceSampler
from pbrl.data.registry import load_dataset
from pbrl.envs.overcooked import EVENT_INDEX, STYLES
from pbrl.train.config import set_fields
from pbrl.train.loop import TrainConfig, run_loop
from pbrl.train.overcooked import PolicyPartner, pool_return, score_pair
from pbrl.train.overcooked_pool import pool_dirs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="runs/overcooked/cramped_room")
    p.add_argument("--layout", default="cramped_room")
    p.add_argument("--style", default="cook", choices=sorted(STYLES))
    p.add_argument("--labels", nargs="+", default=["true", "coin"], choices=["true", "coin"])
    p.add_argument("--pretrained", default="hybrid-pretrain-s0")
    p.add_argument("--data", default="matching", choices=["matching", "balanced"],
                   help="matching: data/with-STYLE (the pool with the style's proxy); balanced: data/with-all-STYLE "
                        "(the pool with every proxy in equal parts)")
    p.add_argument("--configs", nargs="+", default=["bias=0.5", "bias=1.0"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="the pool's self-play seeds")
    args = p.parse_args()
    torch.set_num_threads(1)
    from stable_baselines3 import PPO

    root = Path(args.root)
    pool = [PolicyPartner.load(d, seed=3 + i) for i, d in enumerate(pool_dirs(root, args.seeds))]
    print("| labels | config | " + " | ".join(f"with {s}: return, preference, potting, deliveries" for s in STYLES)
          + " | pool return |\n|---|---|" + "---|" * len(STYLES) + "---|")
    for labels in args.labels:
        suffix = "" if labels == "true" else f"-{labels}"
        stem = f"with-{args.style}" if args.data == "matching" else f"with-all-{args.style}"
        data = load_dataset(root / "data" / f"{stem}{suffix}.prefs.h5")
        for spec in args.configs:
            cfg = HybridConfig()
            set_fields(cfg, [kv for kv in spec.split(",") if kv], section="hybrid", where="--configs")
            steps = max(1, int(round(cfg.offline_epochs * len(data.preferences.used) / cfg.batch_size)))
            model = PPO.load(root / args.pretrained / "model.zip", device="cpu")
            torch.manual_seed(0)
            learner = HybridOffline(model.policy, cfg)
            sampler = PreferenceSampler(data.trajectories, data.preferences, seed=0)
            with tempfile.TemporaryDirectory() as tmp:
                run_loop(learner, lambda s=sampler, b=cfg.batch_size: s.sample(b),
                         TrainConfig(steps=steps, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=0.0,
                                     checkpoint_every=steps, log_every=steps), Path(tmp), device=torch.device("cpu"),
                         stateful={"sampler": sampler}, progress=False)
            model.policy.eval()
            ego = PolicyPartner(model.policy, seed=1)
            cells = []
            for name, style in STYLES.items():
                r = score_pair(args.layout, ego, PolicyPartner.load(root / f"proxy-{name}", seed=2), episodes=10,
                               style=style)
                e = r.ego_events.mean(0)
                cells.append(f"{r.returns.mean():.0f}, {np.nanmean(r.preference):.2f}, "
                             f"{e[EVENT_INDEX['potting_onion']]:.1f}, {e[EVENT_INDEX['soup_delivery']]:.1f}")
            print(f"| {args.style}, {labels}, {args.data} | {spec} ({steps} steps) | " + " | ".join(cells)
                  + f" | {pool_return(args.layout, ego, pool, episodes=4):.1f} |", flush=True)


if __name__ == "__main__":
    main()
