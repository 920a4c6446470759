"""pbrl's IQL against d3rlpy 2.8.1's, on the same pbrl dataset exported to D4RL layout (DESIGN §7.3, §7.4).

    OMP_NUM_THREADS=1 python scripts/bench/iql_d3rlpy.py [--compile]             # equal-work check + update speed
    OMP_NUM_THREADS=1 python scripts/bench/iql_d3rlpy.py --train-steps 50000 --seeds 0,1,2   # + scores, both libraries

d3rlpy pins gymnasium 1.0.0 and pulls the old ``gym``, so it lives in its own virtual environment, made here on
first use (``.bench-venvs/d3rlpy``: torch==2.13.0, d3rlpy==2.8.1, gymnasium[mujoco]==1.0.0, h5py), and is driven
through ``scripts/bench/peers/d3rlpy_iql_worker.py``. Never a pbrl dependency.

1. **Equal work first**: d3rlpy builds its IQL; its initial weights and scalers are copied into pbrl's IQL, and
   both compute their value, critic and actor losses on the same batch of 256 transitions. They must agree to
   float tolerance (d3rlpy's critic loss is the *sum* of the two critics' MSEs, pbrl's their mean: compared ×2).
2. **Update speed**, one thread, batch 256, same networks (MLPs 256x256), medians of ``--speed-steps`` updates
   after a warm-up, two alternating rounds per library; sampling timed apart and reported as its share.
3. **Scores** (``--train-steps``): both trained with the same steps and seeds; d3rlpy's greedy policy is saved
   as TorchScript (with its scalers) and evaluated by pbrl's evaluator on the same episodes as pbrl's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]  # the repository root (this file is scripts/bench/NAME.py)
VENV = ROOT / ".bench-venvs" / "d3rlpy"
WORKER = ROOT / "scripts" / "bench" / "peers" / "d3rlpy_iql_worker.py"
PACKAGES = [["torch==2.13.0"], ["d3rlpy==2.8.1", "gymnasium[mujoco]==1.0.0", "h5py"]]


def ensure_venv() -> Path:
    py = VENV / "bin" / "python"
    if not py.exists() or subprocess.call([str(py), "-c", "import d3rlpy"], stderr=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL) != 0:
        print(f"making {VENV} (d3rlpy 2.8.1 in its own venv) ...", flush=True)
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
        for group in PACKAGES:
            subprocess.check_call([str(py), "-m", "pip", "install", "-q", *group])
    return py


def worker(py: Path, *args: str, cwd: Path) -> None:
    subprocess.check_call([str(py), str(WORKER), *args], cwd=cwd, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


def pbrl_iql(data, weights: dict[str, np.ndarray] | None = None):
    """pbrl's IQL (the cpu preset), with d3rlpy's initial weights and observation scaler when given."""
    from pbrl.agents import IQL
    from pbrl.agents.base import DataSpec
    from pbrl.train.config import build_config
    from pbrl.train.trainer import data_spec

    cfg = build_config("iql-oracle", data.name, scale="cpu").agent_config
    spec = data_spec(data.trajectories)
    if weights is not None:
        spec = DataSpec(spec.obs_dim, spec.act_dim, torch.as_tensor(weights["obs_mean"]),
                        torch.as_tensor(weights["obs_std"] + weights["obs_eps"]))
    torch.manual_seed(0)
    agent = IQL(cfg, spec)
    if weights is None:
        return agent
    w = {k: torch.as_tensor(v) for k, v in weights.items()}
    sd = agent.state_dict()
    for i, src in ((0, "_encoder._layers.0"), (2, "_encoder._layers.2"), (4, "_mu")):
        sd[f"policy.net.{i}.weight"], sd[f"policy.net.{i}.bias"] = w[f"policy.{src}.weight"], w[f"policy.{src}.bias"]
    # d3rlpy parametrises log σ = min + (max − min) · sigmoid(θ) (min −5, max 2); pbrl (as CORL) learns log σ
    # directly: give pbrl d3rlpy's initial log σ, so both compute the same actor loss on the same batch
    sd["policy.log_std"] = -5.0 + 7.0 * torch.sigmoid(w["policy._logstd"][0])
    for i, src in ((0, "_encoder._layers.0"), (2, "_encoder._layers.2"), (4, "_fc")):
        sd[f"value.net.{i}.weight"], sd[f"value.net.{i}.bias"] = w[f"value_func.{src}.weight"], w[f"value_func.{src}.bias"]
    for ours, theirs in (("q", "q_funcs"), ("q_target", "targ_q_funcs")):
        for name, src in (("layers.0", "_encoder._layers.0"), ("layers.1", "_encoder._layers.2"), ("out", "_fc")):
            sd[f"{ours}.{name}.weight"] = torch.stack([w[f"{theirs}.{k}.{src}.weight"].T for k in (0, 1)])
            sd[f"{ours}.{name}.bias"] = torch.stack([w[f"{theirs}.{k}.{src}.bias"][None] for k in (0, 1)])
    agent.load_state_dict(sd)
    return agent


def equal_work(py: Path, data, d4rl: Path, tmp: Path) -> dict:
    from pbrl.data.transitions import TransitionSampler, returns_scale

    rows = np.random.default_rng(0).integers(0, data.trajectories.num_transitions, 256)
    np.save(tmp / "rows.npy", rows)
    worker(py, "init", str(d4rl), str(tmp), "--batch-rows", str(tmp / "rows.npy"), cwd=tmp)
    theirs = json.loads((tmp / "losses.json").read_text())
    weights = dict(np.load(tmp / "weights.npz"))
    scale = 1000.0 / float(weights["return_max"] - weights["return_min"])
    agent = pbrl_iql(data, weights)
    sampler = TransitionSampler(data.trajectories, scale=scale)
    with torch.no_grad():
        out = agent.loss(sampler.batch(torch.as_tensor(rows)), 0)
    ours = {"value_loss": float(out.loss["value"]), "q_loss_sum_of_critics": 2 * float(out.loss["critic"]),
            "actor_loss": float(out.loss["actor"])}
    return {"pbrl": ours, "d3rlpy": theirs, "reward_scale_pbrl": returns_scale(data.trajectories),
            "reward_scale_d3rlpy": scale,
            "agree": all(abs(ours[k] - theirs[k]) <= 1e-4 * max(1.0, abs(theirs[k])) for k in ours),
            "parameters": sum(p.numel() for n, p in agent.named_parameters() if "target" not in n)}


def pbrl_speed(data, steps: int, warmup: int, compile_loss: bool = False) -> dict:
    """Median update and sampling times of pbrl's IQL: the loop's own ``train_step`` (no logging), the loss
    optionally through ``torch.compile`` (``train.compile = true``; inductor's C++ backend on CPU)."""
    from pbrl.data.transitions import TransitionSampler, returns_scale
    from pbrl.train.loop import Optimizers, TrainConfig, train_step

    torch.set_num_threads(1)
    agent = pbrl_iql(data)
    sampler = TransitionSampler(data.trajectories, scale=returns_scale(data.trajectories))
    opts = Optimizers(agent.optimizers(), TrainConfig(steps=steps + warmup, lr=3e-4, weight_decay=0.0, grad_clip=0.0))
    loss_fn = torch.compile(agent.loss) if compile_loss else agent.loss
    update, sample = [], []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        batch = sampler.sample(256)
        t1 = time.perf_counter()
        train_step(agent, loss_fn, batch, opts, i, amp=False, norms_wanted=False)
        t2 = time.perf_counter()
        if i >= warmup:
            sample.append(t1 - t0)
            update.append(t2 - t1)
    return {"update_ms": 1000 * statistics.median(update), "sample_ms": 1000 * statistics.median(sample)}


def scores(py: Path, data, d4rl: Path, tmp: Path, steps: int, seeds: list[int], episodes: int, out: Path,
           bench_dir: Path) -> dict:
    """pbrl's side runs as `pbrl bench` cells in ``bench_dir`` (finished cells with the same config are reused, and
    a later full `pbrl bench` there reuses these)."""
    from pbrl.envs.evaluate import evaluate
    from pbrl.train.bench import bench
    from pbrl.train.config import build_config

    ours_rows = bench(["iql-oracle"], [data.name], seeds, bench_dir, steps=steps, ceiling_check=False,
                      overrides=[f"train.eval_episodes={episodes}"], progress=False,
                      command=f"scripts/bench/iql_d3rlpy.py --train-steps {steps}")
    rows = []
    for seed in seeds:
        cfg = build_config("iql-oracle", data.name, scale="cpu", steps=steps, seed=seed)
        ours = next(r for r in ours_rows if r["seed"] == seed)
        ours_wall = ours["wall_time_s"]
        policy_path = out / f"policy_seed{seed}.pt"
        if not policy_path.exists():
            worker(py, "train", str(d4rl), str(out), "--steps", str(steps), "--seed", str(seed), cwd=tmp)
        policy = torch.jit.load(str(policy_path))
        theirs = evaluate(lambda o, p=policy: p(torch.as_tensor(o)).detach().numpy(), data.env, episodes=episodes,
                          seed=cfg.train.eval_seed)
        d3_wall = json.loads((out / f"train_seed{seed}.json").read_text())["wall_s"]
        rows.append({"seed": seed, "pbrl": ours["normalized_score"], "d3rlpy": theirs["normalized_score"],
                     "pbrl_steps_per_s": ours["steps_per_s"],
                     "pbrl_wall_s": ours_wall, "d3rlpy_wall_s": d3_wall})
        print(f"seed {seed}: pbrl {rows[-1]['pbrl']:.1f}  d3rlpy {rows[-1]['d3rlpy']:.1f}", flush=True)
    mean = lambda k: statistics.fmean(r[k] for r in rows)  # noqa: E731
    result = {"steps": steps, "episodes": episodes, "rows": rows, "pbrl_mean": mean("pbrl"), "d3rlpy_mean": mean("d3rlpy")}
    result["agree_within_10"] = abs(result["pbrl_mean"] - result["d3rlpy_mean"]) <= 10.0
    try:
        from scipy.stats import ttest_ind

        result["welch_p"] = float(ttest_ind([r["pbrl"] for r in rows], [r["d3rlpy"] for r in rows],
                                            equal_var=False).pvalue)
    except ImportError:
        pass
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="hopper-medium-replay-small")
    p.add_argument("--speed-steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="also time pbrl with torch.compile of the loss")
    p.add_argument("--train-steps", type=int, default=0, help="also train both for N steps and compare scores")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--out", default="runs/bench_iql_d3rlpy")
    p.add_argument("--bench-dir", default="bench", help="where pbrl's iql-oracle cells live (as `pbrl bench --out`)")
    args = p.parse_args()
    from pbrl.data.formats import export_d4rl
    from pbrl.data.registry import load_dataset

    torch.set_num_threads(1)
    out = Path(args.out).resolve()  # the worker runs in a temporary directory
    out.mkdir(parents=True, exist_ok=True)
    py = ensure_venv()
    data = load_dataset(args.dataset, preferences=False)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        d4rl = export_d4rl(data.trajectories, tmp / "d4rl.hdf5")
        check = equal_work(py, data, d4rl, tmp)
        print("## equal work: the same batch, the same initial weights")
        print("| loss | pbrl | d3rlpy |\n|---|---|---|")
        for k in check["pbrl"]:
            print(f"| {k} | {check['pbrl'][k]:.6f} | {check['d3rlpy'][k]:.6f} |")
        print(f"agree: {check['agree']}; reward scale pbrl {check['reward_scale_pbrl']:.6f} vs d3rlpy "
              f"{check['reward_scale_d3rlpy']:.6f}; {check['parameters']} trainable parameters in each\n", flush=True)
        rounds = []
        for _ in range(args.rounds):
            ours = pbrl_speed(data, args.speed_steps, args.warmup)
            compiled = pbrl_speed(data, args.speed_steps, args.warmup, compile_loss=True) if args.compile else None
            worker(py, "speed", str(d4rl), str(tmp), "--steps", str(args.speed_steps), "--warmup", str(args.warmup),
                   cwd=tmp)
            theirs = json.loads((tmp / "speed.json").read_text())
            rounds.append((ours, theirs, compiled))
        print(f"## IQL update speed: batch 256, one thread, median of {args.speed_steps} updates, {args.rounds} rounds")
        print("| round | library | update ms | sampling ms | sampling share | d3rlpy / pbrl (update + sampling) |")
        print("|---|---|---|---|---|---|")
        for i, (ours, theirs, compiled) in enumerate(rounds):
            d3rlpy_ms = theirs["update_ms"] + theirs["sample_ms"]
            rows = [("pbrl", ours), ("pbrl, torch.compile", compiled), ("d3rlpy 2.8.1", theirs)]
            for name, r in rows:
                if r is None:
                    continue
                share = r["sample_ms"] / (r["update_ms"] + r["sample_ms"])
                ratio = "" if r is theirs else f"{d3rlpy_ms / (r['update_ms'] + r['sample_ms']):.2f}×"
                print(f"| {i} | {name} | {r['update_ms']:.2f} | {r['sample_ms']:.3f} | {100 * share:.1f} % | {ratio} |")
        result = {"equal_work": check, "speed": rounds}
        if args.train_steps:
            seeds = [int(s) for s in args.seeds.split(",")]
            result["scores"] = scores(py, data, d4rl, tmp, args.train_steps, seeds, args.episodes, out,
                                      Path(args.bench_dir))
            s = result["scores"]
            print(f"\n## scores after {args.train_steps} steps, {args.episodes} episodes, seeds {seeds}")
            print("| seed | pbrl iql-oracle | d3rlpy IQL |\n|---|---|---|")
            for r in s["rows"]:
                print(f"| {r['seed']} | {r['pbrl']:.1f} | {r['d3rlpy']:.1f} |")
            print(f"| mean | {s['pbrl_mean']:.1f} | {s['d3rlpy_mean']:.1f} |")
            print(f"means differ by {abs(s['pbrl_mean'] - s['d3rlpy_mean']):.1f} points: "
                  f"{'agree' if s['agree_within_10'] else 'DO NOT agree'} by the ≤ 10-point rule"
                  + (f"; Welch p = {s['welch_p']:.3f}" if "welch_p" in s else ""))
    (out / "result.json").write_text(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()
