"""What a trained run's policy does: its actions on its own states (one evaluation episode) beside the dataset's
actions, and its error on the dataset's states, per source quartile of episode return.

    OMP_NUM_THREADS=1 python scripts/diag/policy_actions.py RUN_DIR [--episodes 1] [--seed 100000]

Prints the return, the share of action entries at the bound (|a| >= 0.999), the mean |a| and the per-dimension mean
action of the policy in its own episode and of the data, and the policy's mean squared error to the data's actions
on the data's states, by quartile of episode return (the behaviour it imitates best and worst).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from pbrl.envs.evaluate import evaluate
from pbrl.train.trainer import actor_policy, load_run


def describe_actions(name: str, actions: np.ndarray) -> str:
    return (f"{name}: at the bound {np.mean(np.abs(actions) >= 0.999):.3f}, mean |a| {np.abs(actions).mean():.3f}, "
            f"mean a {np.round(actions.mean(0), 2).tolist()}, std a {np.round(actions.std(0), 2).tolist()}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--episodes", type=int, default=1)
    p.add_argument("--seed", type=int, default=100_000)
    args = p.parse_args()
    torch.set_num_threads(1)
    _, agent, data = load_run(args.run_dir, "cpu")
    seen: list[np.ndarray] = []
    policy = actor_policy(agent, args.episodes, torch.device("cpu"), args.seed)

    def recording(obs: np.ndarray) -> np.ndarray:
        action = policy(obs)
        seen.append(action)
        return action

    recording.reset = policy.reset  # type: ignore[attr-defined]
    result = evaluate(recording, data.env, episodes=args.episodes, seed=args.seed)
    print(f"{args.run_dir}: return {result['return_mean']:.1f}, normalized {result['normalized_score']:.1f}, "
          f"length {result['length_mean']:.0f}")
    print(describe_actions("policy on its own states", np.concatenate(seen)))
    traj = data.trajectories
    print(describe_actions("dataset", traj.actions))
    returns, offsets = traj.episode_returns(), traj.episode_offsets
    order = np.argsort(returns)
    for q, episodes in enumerate(np.array_split(order, 4)):
        rows = np.concatenate([np.arange(offsets[e], offsets[e + 1]) for e in episodes])
        with torch.no_grad():
            predicted = agent.act(torch.as_tensor(traj.observations[rows])).numpy()
        mse = float(((predicted - traj.actions[rows]) ** 2).mean())
        print(f"return quartile {q + 1} (mean return {returns[episodes].mean():.0f}): policy MSE to the data's actions "
              f"{mse:.3f}; {describe_actions('policy on these states', predicted)}")


if __name__ == "__main__":
    main()
