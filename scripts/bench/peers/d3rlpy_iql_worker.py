"""Runs inside the d3rlpy virtual environment made by scripts/bench/iql_d3rlpy.py (never imports pbrl).

    python d3rlpy_iql_worker.py init  D4RL.hdf5 OUT_DIR --batch-rows ROWS.npy      # weights, scalers, losses
    python d3rlpy_iql_worker.py speed D4RL.hdf5 OUT_DIR --steps 200 --warmup 20     # update / sampling medians
    python d3rlpy_iql_worker.py train D4RL.hdf5 OUT_DIR --steps N --seed S          # TorchScript greedy policy

d3rlpy's IQL is configured as pbrl's ``iql-oracle`` cpu/paper preset: MLPs 256x256 (actor, twin Q, V), Adam
lr 3e-4, batch 256, γ 0.99, τ 0.005, expectile 0.7, β 3.0, weight clip 100, standardised observations, rewards
times 1000 / (max − min episode return), cosine schedule on the actor over the run's steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import d3rlpy
import h5py
import numpy as np
import torch


def load(path: str):
    with h5py.File(path) as f:
        d = {k: f[k][()] for k in ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")}
    ds = d3rlpy.dataset.MDPDataset(d["observations"], d["actions"], d["rewards"], d["terminals"], d["timeouts"])
    return ds, d


def make_iql(steps: int):
    enc = d3rlpy.models.VectorEncoderFactory([256, 256])
    cosine = d3rlpy.optimizers.AdamFactory(lr_scheduler_factory=d3rlpy.optimizers.CosineAnnealingLRFactory(T_max=steps))
    cfg = d3rlpy.algos.IQLConfig(
        observation_scaler=d3rlpy.preprocessing.StandardObservationScaler(),
        reward_scaler=d3rlpy.preprocessing.ReturnBasedRewardScaler(multiplier=1000.0),
        actor_encoder_factory=enc, critic_encoder_factory=enc, value_encoder_factory=enc,
        actor_optim_factory=cosine, actor_learning_rate=3e-4, critic_learning_rate=3e-4, batch_size=256,
        gamma=0.99, tau=0.005, expectile=0.7, weight_temp=3.0, max_weight=100.0)
    return cfg.create(device="cpu:0")


def build(iql, ds) -> None:
    iql.build_with_dataset(ds)
    for scaler in (iql.config.observation_scaler, iql.config.reward_scaler):
        scaler.fit_with_transition_picker(ds.episodes, ds.transition_picker)


def batch_of(d: dict, rows: np.ndarray):
    f32 = lambda x: np.ascontiguousarray(x, dtype=np.float32)  # noqa: E731
    n = len(rows)
    return d3rlpy.dataset.TransitionMiniBatch(
        observations=f32(d["observations"][rows]), actions=f32(d["actions"][rows]),
        rewards=f32(d["rewards"][rows]).reshape(n, 1), next_observations=f32(d["next_observations"][rows]),
        next_actions=f32(d["actions"][rows]), terminals=f32(d["terminals"][rows]).reshape(n, 1),
        intervals=np.ones((n, 1), np.float32), transitions=[])


def cmd_init(args) -> None:
    ds, d = load(args.data)
    iql = make_iql(args.steps)
    build(iql, ds)
    m = iql.impl.modules
    weights = {f"{name}.{k}": v.detach().numpy() for name in ("policy", "q_funcs", "targ_q_funcs", "value_func")
               for k, v in getattr(m, name).state_dict().items()}
    sc, rs = iql.config.observation_scaler, iql.config.reward_scaler
    np.savez(Path(args.out) / "weights.npz", **weights, obs_mean=np.asarray(sc.mean), obs_std=np.asarray(sc.std),
             obs_eps=np.float64(sc.eps), return_min=np.float64(rs.return_min), return_max=np.float64(rs.return_max))
    rows = np.load(args.batch_rows)
    tb = d3rlpy.torch_utility.TorchMiniBatch.from_batch(
        batch=batch_of(d, rows), gamma=0.99, compute_returns_to_go=False, device="cpu:0",
        observation_scaler=sc, action_scaler=None, reward_scaler=rs)
    with torch.no_grad():
        impl = iql.impl
        critic = impl.compute_critic_loss(tb, impl.compute_target(tb))
        actor = impl.compute_actor_loss(tb, m.policy(tb.observations))
    out = {"value_loss": float(critic.v_loss), "q_loss_sum_of_critics": float(critic.q_loss),
           "actor_loss": float(actor.actor_loss), "d3rlpy": d3rlpy.__version__, "torch": torch.__version__}
    (Path(args.out) / "losses.json").write_text(json.dumps(out, indent=2))


def cmd_speed(args) -> None:
    torch.set_num_threads(1)
    ds, _ = load(args.data)
    iql = make_iql(args.steps + args.warmup)
    build(iql, ds)
    buffer = d3rlpy.dataset.ReplayBuffer(d3rlpy.dataset.InfiniteBuffer(), episodes=ds.episodes)
    update, sample = [], []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        batch = buffer.sample_transition_batch(256)
        t1 = time.perf_counter()
        iql.update(batch)
        t2 = time.perf_counter()
        if i >= args.warmup:
            sample.append(t1 - t0)
            update.append(t2 - t1)
    (Path(args.out) / "speed.json").write_text(json.dumps({
        "update_ms": 1000 * statistics.median(update), "sample_ms": 1000 * statistics.median(sample),
        "steps": args.steps, "threads": torch.get_num_threads(), "d3rlpy": d3rlpy.__version__}, indent=2))


def cmd_train(args) -> None:
    torch.set_num_threads(1)
    d3rlpy.seed(args.seed)
    ds, _ = load(args.data)
    iql = make_iql(args.steps)
    t0 = time.perf_counter()
    iql.fit(ds, n_steps=args.steps, n_steps_per_epoch=min(args.steps, 10_000), save_interval=10**9,
            show_progress=False, experiment_name=f"iql_seed{args.seed}", with_timestamp=False,
            logger_adapter=d3rlpy.logging.NoopAdapterFactory())
    iql.save_policy(str(Path(args.out) / f"policy_seed{args.seed}.pt"))
    (Path(args.out) / f"train_seed{args.seed}.json").write_text(json.dumps(
        {"steps": args.steps, "seed": args.seed, "wall_s": time.perf_counter() - t0}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["init", "speed", "train"])
    p.add_argument("data")
    p.add_argument("out")
    p.add_argument("--batch-rows", default=None)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    {"init": cmd_init, "speed": cmd_speed, "train": cmd_train}[args.mode](args)


if __name__ == "__main__":
    main()
