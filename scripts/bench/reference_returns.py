"""Measure the reference returns used for normalized scores: a uniform random policy (every env) and, for
Meta-World, the task's scripted policy (the 'expert'). Prints TOML to paste into envs/<name>.toml.

    python scripts/bench/reference_returns.py button-press --episodes 50
"""

from __future__ import annotations

import argparse

import numpy as np

from pbrl.data.make import metaworld_scripted_policy, random_policy
from pbrl.envs.evaluate import evaluate
from pbrl.envs.registry import get_env_spec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("env")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    spec = get_env_spec(args.env)
    single = random_policy(spec.name, args.seed)
    rand = evaluate(lambda obs: np.stack([single(o) for o in obs]), spec.name, episodes=args.episodes, seed=args.seed)
    print(f"# {spec.id}: {args.episodes} episodes, seed {args.seed}")
    print(f"random = {rand['return_mean']:.4f}   # std {rand['return_std']:.1f}")
    if spec.family == "metaworld":
        scripted = metaworld_scripted_policy(spec)
        exp = evaluate(lambda obs: np.stack([scripted(o) for o in obs]), spec.name, episodes=args.episodes, seed=args.seed)
        print(f"expert = {exp['return_mean']:.4f}   # std {exp['return_std']:.1f}, success {exp['success_rate']:.2f}")


if __name__ == "__main__":
    main()
