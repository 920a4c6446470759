"""Where an OPPO run's optimal context z* sits among its encoder's embeddings, and what the contextual policy does
with other contexts (issue 35 diagnostic): is a low score the placement of z* or the policy π(a | s, z) itself?

    OMP_NUM_THREADS=1 python scripts/diag/oppo_context.py RUN_DIR [--episodes 3] [--windows 8]

Embeds ``--windows`` evenly spaced K-step windows of every dataset episode (the HIM windows' length), groups them by
the episode's return quartile, and prints the embeddings' norm, z*'s norm and its mean distance to each quartile's
embeddings. Then evaluates the policy (``--episodes`` each, the evaluation seeds of ``pbrl eval``) acting with: z*
(as trained), the mean embedding of the best and of the worst quartile, and the embedding nearest z*.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from pbrl.envs.evaluate import evaluate
from pbrl.train.trainer import actor_policy, load_run


def episode_windows(traj, episode: int, k: int, count: int) -> tuple[torch.Tensor, ...]:
    """``count`` evenly spaced windows of ``k`` steps of one episode: obs, act ``[count, k, ·]``, timestep, mask."""
    start, end = int(traj.episode_offsets[episode]), int(traj.episode_offsets[episode + 1])
    firsts = np.linspace(start, max(start, end - k), count).astype(int)
    rows = np.minimum(firsts[:, None] + np.arange(k)[None], end - 1)
    obs = torch.as_tensor(traj.observations[rows], dtype=torch.float32)
    act = torch.as_tensor(traj.actions[rows], dtype=torch.float32)
    timestep = torch.as_tensor(rows - start)
    mask = torch.as_tensor(firsts[:, None] + np.arange(k)[None] < end)
    return obs, act, timestep, mask


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--episodes", type=int, default=3)
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--seed", type=int, default=100_000)
    args = p.parse_args()
    torch.set_num_threads(1)
    _, agent, data = load_run(args.run_dir, "cpu")
    traj, k = data.trajectories, agent.cfg.context
    returns = traj.episode_returns()
    with torch.no_grad():
        z = torch.stack([agent.embed(*episode_windows(traj, e, k, args.windows)) for e in range(len(returns))])
    z_star = agent.policy.z.detach().clone()
    quartiles = np.array_split(np.argsort(returns), 4)
    print(f"{args.run_dir}: {len(returns)} episodes; embeddings' norm {z.norm(dim=-1).mean():.3f}, "
          f"z*'s norm {z_star.norm():.3f}")
    for q, episodes in enumerate(quartiles):
        d = (z[episodes] - z_star).norm(dim=-1).mean()
        print(f"  return quartile {q + 1} (mean return {returns[episodes].mean():.0f}): z*'s mean distance {d:.3f}")
    flat = z.reshape(-1, z.shape[-1])
    contexts = {"z* (trained)": z_star, "mean embedding, best quartile": z[quartiles[-1]].reshape(-1, z.shape[-1]).mean(0),
                "mean embedding, worst quartile": z[quartiles[0]].reshape(-1, z.shape[-1]).mean(0),
                "the embedding nearest z*": flat[(flat - z_star).norm(dim=-1).argmin()]}
    for name, context in contexts.items():
        agent.policy.z.data.copy_(context)
        result = evaluate(actor_policy(agent, args.episodes, torch.device("cpu"), args.seed), data.env,
                          episodes=args.episodes, seed=args.seed)
        print(f"  acting with {name}: normalized {result['normalized_score']:.1f} (return {result['return_mean']:.1f})",
              flush=True)


if __name__ == "__main__":
    main()
