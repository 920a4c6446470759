"""Deploy latency: one observation in, one action out, on ONE CPU thread, for pbrl's exported policies of each
backbone (``pbrl export``: MLP, transformer, diffusion with its MLP or unet1d denoiser), through each way of running
them; and, with ``--peer lerobot``, the diffusion policy against LeRobot's.

    OMP_NUM_THREADS=1 python scripts/bench/deploy.py [--backbones mlp,transformer,diffusion,diffusion-unet]
        [--peer lerobot] [--repeats N | mlp=20000,transformer=10000,diffusion=4000,diffusion-unet=250]
        [--warmup N | mlp=2000,transformer=1000,diffusion=200,diffusion-unet=10] [--rounds 4]
        [--work runs/bench-deploy] [--out runs/bench-deploy/latency.json]

Policies. For each backbone a tiny BC run on the shipped dataset (``hopper-medium-replay-small``: obs_dim 11,
act_dim 3; ``--steps`` gradient steps of the ``cpu`` preset: the weights' values do not change the latency) is trained
under ``--work/BACKBONE/run`` and exported with ``pbrl export`` to ``--work/BACKBONE/export``; both are reused when
present (an MLP run of the older layout, ``--work/run`` and ``--work/export``, is moved into ``--work/mlp``):

  mlp             MLP 256x256 (the preset's policy): ``obs [1, 11] -> action``
  transformer     width 128, 2 blocks, 4 heads, ``agent.context=20``: one window of 20 steps -> (action, raw)
  diffusion       MLP denoiser 256x256, horizon 16, n_obs 2, n_action 8, 10 DDIM steps (``agent.sample_steps=10``):
                  ``(obs [1, 2, 11], noise [1, 16, 3]) -> chunk [1, 16, 3]``, the whole DDIM loop in one graph
  diffusion-unet  the same with ``agent.denoiser=unet1d``, ``agent.channels=[64, 128, 256]`` (LeRobot's default
                  widths would be [512, 1024, 2048]; these are the widths ``--peer lerobot`` gives both libraries)

Paths, all in one process, ``torch.set_num_threads(1)`` and ONNX Runtime with one intra-op thread:

  (a) ``pbrl.deploy.Policy.act(obs)`` per call: ONNX Runtime with the observation's validation (dtype, shape,
      finite values) and the runtime's state (a transformer's window; a diffusion policy's observation ring and
      action queue: a new chunk every ``n_action`` calls, so p50 is a queue pop and p99 about one chunk's sampling)
  (b) raw ``onnxruntime.InferenceSession.run`` of one graph call on the same ``policy.onnx``, no validation (MLP: one
      observation; transformer: one window of ``context`` steps; diffusion: one chunk from given noise)
  (c) the same graph call through TorchScript ``policy.pt`` (``torch.jit.load``) under ``torch.inference_mode``
  (d) the same graph call in eager PyTorch: the module the exporter wraps (``pbrl.export.BoundedAction(agent)``,
      ``BoundedWindowAction(agent.policy)``, ``BoundedChunk(acting)`` with ``acting, _ = agent.chunk_acting()``, the
      EMA copy) under ``torch.inference_mode`` -- the reference of the graph calls' ratios
  (e) transformer and diffusion: the evaluation actor per call (``pbrl.train.trainer.actor_policy``: numpy in and
      out, ``HistoryActor`` / ``ChunkActor`` under ``torch.no_grad``), eager PyTorch's counterpart of (a)

Each call takes a float32 ``[obs_dim]`` observation of the dataset (cycled over 1,024) or a prepared graph input
made of them (windows of consecutive observations and actions; observation pairs with standard normal noise) and
returns numpy; the torch paths include ``torch.from_numpy`` / ``.numpy()`` and entering the grad mode, as an ``act``
function in a control loop would. Each path gets ``--warmup`` untimed calls, then ``--repeats`` calls timed one by one
with ``time.perf_counter_ns``, split over ``--rounds`` interleaved rounds (so a noisy moment of a shared machine falls
on every path alike); the per-call paths of a diffusion policy get ``n_action`` times as many calls (each chunk
serves ``n_action`` calls: as many chunks as a graph-call path samples). p50 / p99 / max over all of them, in
microseconds; for the graph calls the ratio eager p50 / path p50 (> 1: faster than eager PyTorch), for the per-call
paths the ratios actor p50 / p50 and actor p99 / p99 (> 1: faster than the evaluation actor). A no-op call gives the
timer's own floor. The paths' actions are checked to agree first (on the same noise for diffusion).

Targets, judged on (a) unless said: requirement: MLP p50 < 100 us; goals: MLP p99 < 100 us; transformer (context 20)
p50 and p99 < 1 ms; diffusion (10 DDIM steps), each denoiser: p99 < 5 ms and one chunk (raw onnxruntime p50) < 5 ms.

``--peer lerobot`` (needs the ``diffusion-unet`` backbone) runs ``scripts/bench/peers/lerobot_diffusion_worker.py`` in
LeRobot's own virtual environment (made by ``scripts/bench/backbones.py``'s helper on first use: lerobot 0.4.4 and the
torch it pins) with the sizes of the unet1d export (obs_dim, act_dim, widths, step-embedding size, horizon, n_obs,
n_action, DDIM steps): LeRobot's ``DiffusionPolicy.select_action`` per call, alternating with pbrl's ``ChunkActor``
on the same torch, as many chunks as above; set beside ``Policy.act`` of the export and the eager ``ChunkActor`` of
(e), with both parameter counts (pbrl's exported acting module and LeRobot's policy must agree within 5 %).

Writes ``--out`` (JSON: machine, versions, settings, per-backbone statistics, targets, the peer) and prints markdown
tables.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

BACKBONES: dict[str, list[str]] = {  # `pbrl train --set` overrides of each backbone's run (the agent: bc)
    "mlp": [],
    "transformer": ["agent.backbone=transformer", "agent.context=20"],
    "diffusion": ["agent.backbone=diffusion", "agent.sample_steps=10"],
    "diffusion-unet": ["agent.backbone=diffusion", "agent.sample_steps=10", "agent.denoiser=unet1d",
                       "agent.channels=[64, 128, 256]"],
}
# timed calls per path (a diffusion policy's per-call paths: n_action times as many) and warm-up calls per path and
# round: sized so the whole bench (LeRobot included) stays within about 15 minutes on a 2-core machine
REPEATS = {"mlp": 20000, "transformer": 10000, "diffusion": 4000, "diffusion-unet": 250}
WARMUP = {"mlp": 2000, "transformer": 1000, "diffusion": 200, "diffusion-unet": 10}
CHECKED = {"mlp": 1024, "transformer": 256, "diffusion": 64, "diffusion-unet": 16}  # graph inputs compared
# Agreement of the paths' outputs (max abs). A diffusion chunk is looser: an epsilon-prediction DDIM chain's first
# step divides by sqrt(alpha_bar) (5e-4 at the cosine schedule's last step), which magnifies float32 rounding
# differences between any two runtimes (different kernels, fusions, summation orders) to about 1e-3 in the chunk.
TOLERANCE = {"mlp": 1e-4, "transformer": 1e-4, "diffusion": 1e-2, "diffusion-unet": 1e-2}
POOL = 1024  # observations (and graph inputs) the calls cycle over

REQUIREMENT_US = 100.0  # MLP Policy.act p50, validation included, one thread
MLP_GOAL_US = 100.0  # MLP Policy.act p99
TRANSFORMER_GOAL_US = 1000.0  # transformer Policy.act p50 and p99
DIFFUSION_GOAL_US = 5000.0  # diffusion: Policy.act p99 and one chunk (raw onnxruntime p50)

NOOP = "no-op call (timer floor)"
ACT = "Policy.act (ONNX Runtime + validation)"
ORT = "onnxruntime session.run (raw)"
TS = "TorchScript policy.pt (inference_mode)"


def machine() -> dict[str, Any]:
    """The CPU, the thread settings and the versions that the numbers depend on."""
    model = None
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                     None)
    except (OSError, subprocess.CalledProcessError):
        pass
    import onnxruntime as ort

    return {"processor": platform.processor() or platform.machine(), "lscpu_model_name": model,
            "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": ort.__version__, "numpy": np.__version__,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "torch_threads": torch.get_num_threads()}


def prepare(work: Path, backbone: str, dataset: str, steps: int) -> tuple[Path, Path]:
    """The backbone's run and its export under ``work/BACKBONE``, made when missing (an MLP run of the older layout,
    ``work/run`` and ``work/export``, is moved there)."""
    home = work / backbone
    run, export = home / "run", home / "export"
    if backbone == "mlp" and not home.exists() and (work / "run" / "config.toml").is_file():
        home.mkdir(parents=True)
        for name in ("run", "export"):
            if (work / name).exists():
                print(f"# moving {work / name} -> {home / name} (one folder per backbone)", flush=True)
                shutil.move(str(work / name), str(home / name))
    if not (run / "config.toml").is_file() or not any((run / "checkpoints").glob("step_*.pt")):
        print(f"# training {run} (bc, {backbone}, {dataset}, {steps} steps)", flush=True)
        overrides = [arg for o in ["train.eval_episodes=0", *BACKBONES[backbone]] for arg in ("--set", o)]
        subprocess.run([sys.executable, "-m", "pbrl.cli", "train", "--agent", "bc", "--dataset", dataset, "--steps",
                        str(steps), "--out", str(run), "--scale", "cpu", *overrides, "--quiet"], check=True)
    if not (export / "metadata.json").is_file():
        print(f"# exporting {run} -> {export}", flush=True)
        subprocess.run([sys.executable, "-m", "pbrl.cli", "export", str(run), "--out", str(export)], check=True,
                       stdout=subprocess.DEVNULL)
    return run, export


@dataclass
class Timed:
    """One way of running a policy: ``fn(input)`` on the inputs it cycles over. ``graph``: one call is one graph
    call (compared with eager PyTorch's); else one control step (compared with the evaluation actor's);
    ``per_repeat``: calls per repeat (a chunk policy's per-call paths: ``n_action``)."""

    fn: Callable[[Any], Any]
    inputs: list[Any]
    graph: bool
    per_repeat: int = 1


@dataclass
class Bench:
    """A backbone's export, its paths (by name; ``eager`` and ``actor`` name the ratios' references) and what the
    paths' agreement check found."""

    backbone: str
    info: dict[str, Any]
    paths: dict[str, Timed]
    eager: str
    actor: str | None = None
    agreement: dict[str, float] = field(default_factory=dict)


class Loaded:
    """What every backbone's paths are made of: the runtime, a raw ORT session, the TorchScript module, the agent."""

    def __init__(self, run: Path, export: Path):
        import onnxruntime as ort

        from pbrl.deploy import Policy
        from pbrl.train.trainer import load_run

        self.policy = Policy.load(export, threads=1)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(export / "policy.onnx"), sess_options=options,
                                            providers=["CPUExecutionProvider"])
        self.scripted = torch.jit.load(str(export / "policy.pt"), map_location="cpu").eval()
        _, self.agent, _ = load_run(run, "cpu")
        self.agent.eval()
        self.meta = self.policy.metadata
        self.low, self.high = torch.tensor(self.meta["action_low"]), torch.tensor(self.meta["action_high"])
        self.low_np, self.high_np = self.low.numpy(), self.high.numpy()

    def info(self, module: torch.nn.Module) -> dict[str, Any]:
        """The export's description; ``parameters``: those of the exported (eager) module."""
        meta = self.meta
        keys = ("agent", "dataset", "kind", "obs_dim", "act_dim", "context", "n_obs", "horizon", "n_action",
                "sample_steps", "prediction", "acting_module", "onnx_opset", "checkpoint")
        return {**{k: meta[k] for k in keys if k in meta}, "parameters": sum(p.numel() for p in module.parameters())}

    def act_path(self, pool: list[np.ndarray], per_repeat: int = 1) -> Timed:
        policy = self.policy

        def act(obs: np.ndarray) -> np.ndarray:
            return policy.act(obs)

        return Timed(act, pool, graph=self.meta["kind"] == "mlp", per_repeat=per_repeat)

    def actor_path(self, pool: list[np.ndarray], per_repeat: int = 1) -> Timed:
        from pbrl.train.trainer import actor_policy

        actor = actor_policy(self.agent, 1, torch.device("cpu"), seed=0)

        def act(obs: np.ndarray) -> np.ndarray:
            return actor(obs[None])[0]

        act.reset = actor.reset  # type: ignore[attr-defined]
        return Timed(act, pool, graph=False, per_repeat=per_repeat)


def max_diff(outputs: dict[str, list[np.ndarray]]) -> dict[str, float]:
    """Each path's largest difference from the first path's outputs."""
    ref = np.stack(next(iter(outputs.values())))
    return {name: float(np.abs(np.stack(out) - ref).max()) for name, out in outputs.items()}


def per_call_agreement(loaded: Loaded, act: Timed, actor: Timed, pool: list[np.ndarray], n: int) -> float:
    """``Policy.act`` against the evaluation actor over the first ``n`` observations of an episode (both reset first
    and after; a diffusion policy's runtime and actor draw the same seeded noise streams). The actor's actions are
    clipped to the bounds, as the export's are (the environment clips them too)."""
    loaded.policy.reset()
    actor.fn.reset()  # type: ignore[attr-defined]
    a = np.stack([act.fn(o) for o in pool[:n]])
    b = np.clip(np.stack([actor.fn(o) for o in pool[:n]]), loaded.low_np, loaded.high_np)
    loaded.policy.reset()
    actor.fn.reset()  # type: ignore[attr-defined]
    return float(np.abs(a - b).max())


def mlp_bench(loaded: Loaded, pool: list[np.ndarray]) -> Bench:
    """(a)-(d) of an MLP policy: every path is one graph call on one observation."""
    from pbrl.export import BoundedAction

    session, scripted = loaded.session, loaded.scripted
    eager = BoundedAction(loaded.agent, loaded.low, loaded.high).eval()

    def act_ort(obs: np.ndarray) -> np.ndarray:
        return session.run(None, {"obs": obs[None]})[0][0]

    def act_torchscript(obs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return scripted(torch.from_numpy(obs)[None])[0].numpy()

    def act_eager(obs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return eager(torch.from_numpy(obs)[None])[0].numpy()

    eager_name = "eager PyTorch (BoundedAction, inference_mode)"
    paths = {ACT: loaded.act_path(pool), ORT: Timed(act_ort, pool, graph=True),
             TS: Timed(act_torchscript, pool, graph=True), eager_name: Timed(act_eager, pool, graph=True)}
    bench = Bench("mlp", loaded.info(eager), paths, eager_name)
    bench.agreement = max_diff({name: [t.fn(o) for o in pool[:CHECKED["mlp"]]] for name, t in paths.items()})
    return bench


def transformer_bench(loaded: Loaded, pool: list[np.ndarray], obs: np.ndarray, actions: np.ndarray) -> Bench:
    """(a), (e) per call; (b)-(d) one window of ``context`` steps: consecutive observations and actions of the
    dataset (the newest action slot zero, as the runtime's), timesteps counting up, mask all true."""
    from pbrl.export import BoundedWindowAction

    session, scripted = loaded.session, loaded.scripted
    eager = BoundedWindowAction(loaded.agent.policy, loaded.low, loaded.high).eval()
    k = int(loaded.meta["context"])
    rng = np.random.default_rng(1)
    windows = []
    for s in rng.choice(len(obs) - k, size=POOL, replace=False):
        act = actions[s:s + k].astype(np.float32)
        act[-1] = 0.0
        t0 = int(rng.integers(0, 1000 - k))
        windows.append((np.ascontiguousarray(obs[s:s + k][None], np.float32), np.ascontiguousarray(act[None]),
                        np.arange(t0, t0 + k, dtype=np.int64)[None], np.ones((1, k), bool)))
    names = ("obs", "act", "timestep", "mask")

    def window_ort(w: tuple[np.ndarray, ...]) -> np.ndarray:
        return session.run(None, dict(zip(names, w)))[0][0]

    def window_torchscript(w: tuple[np.ndarray, ...]) -> np.ndarray:
        with torch.inference_mode():
            return scripted(*(torch.from_numpy(x) for x in w))[0][0].numpy()

    def window_eager(w: tuple[np.ndarray, ...]) -> np.ndarray:
        with torch.inference_mode():
            return eager(*(torch.from_numpy(x) for x in w))[0][0].numpy()

    eager_name = "eager PyTorch (BoundedWindowAction, inference_mode)"
    actor_name = "evaluation actor per call (HistoryActor, no_grad)"
    graph = {f"{ORT}, one window": Timed(window_ort, windows, graph=True),
             f"{TS}, one window": Timed(window_torchscript, windows, graph=True),
             f"{eager_name}, one window": Timed(window_eager, windows, graph=True)}
    paths = {ACT: loaded.act_path(pool), **graph, actor_name: loaded.actor_path(pool)}
    bench = Bench("transformer", loaded.info(eager), paths, f"{eager_name}, one window", actor_name)
    bench.agreement = max_diff({name: [t.fn(w) for w in windows[:CHECKED["transformer"]]] for name, t in graph.items()})
    bench.agreement["per call: Policy.act vs actor (256 steps of an episode)"] = per_call_agreement(
        loaded, paths[ACT], paths[actor_name], pool, 256)
    return bench


def diffusion_bench(loaded: Loaded, backbone: str, pool: list[np.ndarray], obs: np.ndarray) -> Bench:
    """(a), (e) per call (a new chunk every ``n_action`` calls); (b)-(d) one chunk: ``n_obs`` consecutive
    observations of the dataset and standard normal noise, the whole DDIM loop."""
    from pbrl.export import BoundedChunk

    session, scripted = loaded.session, loaded.scripted
    acting, n_action = loaded.agent.chunk_acting()
    eager = BoundedChunk(acting, loaded.low, loaded.high).eval()
    meta = loaded.meta
    n_obs, horizon, act_dim = int(meta["n_obs"]), int(meta["horizon"]), int(meta["act_dim"])
    rng = np.random.default_rng(2)
    inputs = [(np.ascontiguousarray(obs[s:s + n_obs][None], np.float32),
               rng.standard_normal((1, horizon, act_dim), dtype=np.float32))
              for s in rng.choice(len(obs) - n_obs, size=POOL, replace=False)]

    def chunk_ort(x: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        return session.run(None, {"obs": x[0], "noise": x[1]})[0][0]

    def chunk_torchscript(x: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return scripted(torch.from_numpy(x[0]), torch.from_numpy(x[1]))[0].numpy()

    def chunk_eager(x: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return eager(torch.from_numpy(x[0]), torch.from_numpy(x[1]))[0].numpy()

    eager_name = "eager PyTorch (BoundedChunk, inference_mode)"
    actor_name = "evaluation actor per call (ChunkActor, no_grad)"
    graph = {f"{ORT}, one chunk": Timed(chunk_ort, inputs, graph=True),
             f"{TS}, one chunk": Timed(chunk_torchscript, inputs, graph=True),
             f"{eager_name}, one chunk": Timed(chunk_eager, inputs, graph=True)}
    paths = {ACT: loaded.act_path(pool, n_action), **graph, actor_name: loaded.actor_path(pool, n_action)}
    info = loaded.info(eager)
    denoiser = acting.denoiser
    if hasattr(denoiser, "down"):  # unet1d: its widths and step-embedding size (what --peer gives LeRobot)
        info["channels"] = [int(level[0].conv1[0].out_channels) for level in denoiser.down]
    info["denoiser"] = type(denoiser).__name__
    info["time_dim"] = int(acting.time_dim)
    bench = Bench(backbone, info, paths, f"{eager_name}, one chunk", actor_name)
    bench.agreement = max_diff({name: [t.fn(x) for x in inputs[:CHECKED[backbone]]] for name, t in graph.items()})
    steps = 4 * n_action
    bench.agreement[f"per call: Policy.act vs actor ({steps} steps, same noise streams)"] = per_call_agreement(
        loaded, paths[ACT], paths[actor_name], pool, steps)
    return bench


def time_calls(fn: Callable[[Any], Any], inputs: list[Any], n: int, warmup: int) -> np.ndarray:
    """``warmup`` untimed calls, then ``n`` calls timed one by one (ns), cycling over ``inputs``."""
    size = len(inputs)
    for i in range(warmup):
        fn(inputs[i % size])
    out = np.empty(n, dtype=np.int64)
    clock = time.perf_counter_ns
    gc.collect()
    for i in range(n):
        x = inputs[i % size]
        t0 = clock()
        fn(x)
        out[i] = clock() - t0
    return out


def stats(ns: np.ndarray) -> dict[str, float]:
    us = ns / 1000.0
    return {"calls": int(us.size), "p50_us": float(np.percentile(us, 50)), "p99_us": float(np.percentile(us, 99)),
            "max_us": float(us.max()), "mean_us": float(us.mean())}


def run_bench(bench: Bench, pool: list[np.ndarray], repeats: int, warmup: int, rounds: int) -> dict[str, Any]:
    """The paths' statistics over ``rounds`` interleaved rounds, and their ratios."""
    calls = {NOOP: Timed(lambda o: None, pool, graph=False), **bench.paths}
    samples: dict[str, list[np.ndarray]] = {name: [] for name in calls}
    for r in range(rounds):
        for name, t in calls.items():
            total = repeats * t.per_repeat
            ns = time_calls(t.fn, t.inputs, total // rounds + (r < total % rounds), warmup * t.per_repeat)
            samples[name].append(ns)
            print(f"#   {bench.backbone} round {r + 1}/{rounds}  {name}: p50 {np.percentile(ns, 50) / 1000:.1f} us, "
                  f"p99 {np.percentile(ns, 99) / 1000:.1f} us", flush=True)
    results = {name: stats(np.concatenate(v)) for name, v in samples.items()}
    eager, actor = results[bench.eager], results[bench.actor] if bench.actor else None
    for name, r in results.items():
        t = calls[name]
        r["graph_call"] = t.graph if name != NOOP else None
        r["eager_p50_over_p50"] = eager["p50_us"] / r["p50_us"] if name != NOOP and t.graph else None
        per_call = name != NOOP and not t.graph and actor is not None
        r["actor_p50_over_p50"] = actor["p50_us"] / r["p50_us"] if per_call else None
        r["actor_p99_over_p99"] = actor["p99_us"] / r["p99_us"] if per_call else None
    return results


def targets(results: dict[str, dict[str, Any]], infos: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The issue's requirement and goals for the backbones measured: met or not."""
    out: dict[str, dict[str, Any]] = {}

    def judge(kind: str, backbone: str, what: str, measured: float, threshold: float) -> None:
        out[f"{kind}: {what} < {threshold / 1000:g} ms" if threshold >= 1000 else f"{kind}: {what} < {threshold:g} µs"] = {
            "kind": kind, "backbone": backbone, "measured_us": measured, "threshold_us": threshold,
            "met": measured < threshold}

    if "mlp" in results:
        act = results["mlp"][ACT]
        judge("requirement", "mlp", "MLP Policy.act p50", act["p50_us"], REQUIREMENT_US)
        judge("goal", "mlp", "MLP Policy.act p99", act["p99_us"], MLP_GOAL_US)
    if "transformer" in results:
        act, k = results["transformer"][ACT], infos["transformer"].get("context")
        judge("goal", "transformer", f"transformer (context {k}) Policy.act p50", act["p50_us"], TRANSFORMER_GOAL_US)
        judge("goal", "transformer", f"transformer (context {k}) Policy.act p99", act["p99_us"], TRANSFORMER_GOAL_US)
    for backbone, label in (("diffusion", "MLP denoiser"), ("diffusion-unet", "unet1d denoiser")):
        if backbone in results:
            info, r = infos[backbone], results[backbone]
            what = f"diffusion ({label}, {info.get('sample_steps')} DDIM steps)"
            judge("goal", backbone, f"{what} Policy.act p99", r[ACT]["p99_us"], DIFFUSION_GOAL_US)
            judge("goal", backbone, f"{what} one chunk, raw onnxruntime p50", r[f"{ORT}, one chunk"]["p50_us"],
                  DIFFUSION_GOAL_US)
    return out


def lerobot_peer(bench: Bench, repeats: int, warmup: int, rounds: int) -> dict[str, Any]:
    """LeRobot's ``select_action`` and pbrl's ``ChunkActor`` per call in LeRobot's venv, at the unet1d export's
    sizes, as many chunks as this bench's per-call paths sample."""
    from pbrl.train.peers import run_lerobot_worker

    info = bench.info
    n_action = int(info["n_action"])
    return run_lerobot_worker(
        "--steps", "0", "--obs-dim", str(info["obs_dim"]), "--act-dim", str(info["act_dim"]),
        "--n-obs", str(info["n_obs"]), "--horizon", str(info["horizon"]), "--n-action", str(n_action),
        "--down-dims", *(str(c) for c in info["channels"]), "--time-dim", str(info["time_dim"]),
        "--ddim-steps", str(info["sample_steps"]), "--actions", str(repeats * n_action),
        "--act-warmup", str(warmup * n_action), "--act-rounds", str(rounds))


def per_backbone(spec: str, defaults: dict[str, int], flag: str) -> dict[str, int]:
    """``N`` (every backbone) or ``BACKBONE=N,...`` (those backbones; the others keep their defaults)."""
    out = dict(defaults)
    try:
        if "=" not in spec:
            return dict.fromkeys(defaults, int(spec))
        for item in spec.split(","):
            name, value = item.split("=")
            if name.strip() not in defaults:
                raise ValueError(name)
            out[name.strip()] = int(value)
    except ValueError:
        raise SystemExit(f"{flag}: got {spec!r}, expected N or BACKBONE=N,... with BACKBONE in {list(defaults)}") from None
    return out


def fmt(v: float | None, spec: str = ".2f") -> str:
    return "" if v is None else format(v, spec)


def print_bench(backbone: str, info: dict[str, Any], results: dict[str, dict[str, Any]]) -> None:
    sizes = {"mlp": "MLP 256x256", "transformer": f"transformer, context {info.get('context')}",
             "diffusion": f"diffusion, {info.get('denoiser')}, horizon {info.get('horizon')}, n_obs "
                          f"{info.get('n_obs')}, n_action {info.get('n_action')}, {info.get('sample_steps')} DDIM steps"}
    what = sizes["diffusion" if backbone.startswith("diffusion") else backbone]
    if "channels" in info:
        what += f", widths {info['channels']}"
    print(f"\n### {backbone}: {what}; {info['parameters']:,} parameters (obs {info['obs_dim']}, act {info['act_dim']})\n")
    print("| path | calls | p50 µs | p99 µs | max µs | eager p50 / p50 | actor p50 / p50 | actor p99 / p99 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['calls']:,} | {r['p50_us']:.1f} | {r['p99_us']:.1f} | {r['max_us']:.1f} | "
              f"{fmt(r['eager_p50_over_p50'])} | {fmt(r['actor_p50_over_p50'])} | {fmt(r['actor_p99_over_p99'])} |")


def print_peer(peer: dict[str, Any], unet: dict[str, Any], info: dict[str, Any], ort_version: str) -> None:
    lr_p50, lr_p99 = 1000 * peer["act_p50_ms"]["lerobot"], 1000 * peer["act_p99_ms"]["lerobot"]
    rows = [("pbrl Policy.act (ONNX Runtime, the unet1d export)", f"onnxruntime {ort_version}", info["parameters"],
             unet[ACT]),
            ("pbrl ChunkActor, eager (actor_policy, numpy in and out)", f"torch {torch.__version__}",
             info["parameters"], unet["evaluation actor per call (ChunkActor, no_grad)"])]
    for lib, label in (("pbrl", "pbrl ChunkActor, eager (tensor in and out), in LeRobot's venv"),
                       ("lerobot", "LeRobot DiffusionPolicy.select_action")):
        rows.append((label, f"torch {peer['torch']}", peer["params"][lib],
                     {"calls": peer["act_calls"][lib], "p50_us": 1000 * peer["act_p50_ms"][lib],
                      "p99_us": 1000 * peer["act_p99_ms"][lib], "max_us": 1000 * peer["act_max_ms"][lib]}))
    s = peer["settings"]
    print(f"\n### LeRobot's diffusion policy against pbrl's: unet1d widths {s['down_dims']}, step embedding "
          f"{s['time_dim']}, obs {s['obs_dim']}, act {s['act_dim']}, horizon {s['horizon']}, n_obs {s['n_obs']}, "
          f"n_action {s['n_action']}, {s['ddim_steps']} DDIM steps; one thread, per call\n")
    print("| policy, path | runtime | parameters | calls | p50 µs | p99 µs | max µs | LeRobot p50 / p50 | "
          "LeRobot p99 / p99 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, runtime, params, r in rows:
        print(f"| {label} | {runtime} | {params:,} | {r['calls']:,} | {r['p50_us']:.1f} | {r['p99_us']:.1f} | "
              f"{r['max_us']:.1f} | {lr_p50 / r['p50_us']:.2f} | {lr_p99 / r['p99_us']:.2f} |")
    print(f"\nparameters: pbrl's exported acting module {info['parameters']:,}, LeRobot's DiffusionPolicy "
          f"{peer['params']['lerobot']:,}: pbrl / LeRobot = {info['parameters'] / peer['params']['lerobot']:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", default=",".join(BACKBONES), help=f"comma-separated from {list(BACKBONES)}")
    p.add_argument("--peer", choices=["lerobot"], default=None,
                   help="also LeRobot's diffusion policy against the diffusion-unet export")
    p.add_argument("--work", default="runs/bench-deploy", help="the runs and exports live (and are reused) here")
    p.add_argument("--dataset", default="hopper-medium-replay-small")
    p.add_argument("--steps", type=int, default=20, help="BC training steps of each tiny run")
    p.add_argument("--repeats", default=None, help="timed calls per path over all rounds: N or BACKBONE=N,... "
                   f"(defaults {REPEATS}; a diffusion policy's per-call paths: n_action times as many)")
    p.add_argument("--warmup", default=None, help=f"untimed calls per path before each round (defaults {WARMUP})")
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds the timed calls are split over")
    p.add_argument("--out", default=None, help="results JSON (default: WORK/latency.json)")
    args = p.parse_args()
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    unknown = [b for b in backbones if b not in BACKBONES]
    if unknown or not backbones:
        p.error(f"--backbones: got {unknown or 'none'}, expected some of {list(BACKBONES)}")
    if args.peer == "lerobot" and "diffusion-unet" not in backbones:
        p.error("--peer lerobot compares with the diffusion-unet export: add it to --backbones")
    repeats = per_backbone(args.repeats, REPEATS, "--repeats") if args.repeats else dict(REPEATS)
    warmup = per_backbone(args.warmup, WARMUP, "--warmup") if args.warmup else dict(WARMUP)
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    if os.environ.get("OMP_NUM_THREADS") != "1":
        print("# warning: OMP_NUM_THREADS is not 1", file=sys.stderr)
    work = Path(args.work)
    out_path = Path(args.out) if args.out else work / "latency.json"
    started = time.perf_counter()

    from pbrl.data.registry import load_dataset

    trajectories = load_dataset(args.dataset).trajectories
    obs = np.asarray(trajectories.observations, dtype=np.float32)
    actions = np.asarray(trajectories.actions, dtype=np.float32)
    pool = [np.ascontiguousarray(obs[i]) for i in np.random.default_rng(0).choice(len(obs), size=POOL, replace=False)]

    benches: dict[str, Bench] = {}
    for backbone in backbones:
        loaded = Loaded(*prepare(work, backbone, args.dataset, args.steps))
        if backbone == "mlp":
            bench = mlp_bench(loaded, pool)
        elif backbone == "transformer":
            bench = transformer_bench(loaded, pool, obs, actions)
        else:
            bench = diffusion_bench(loaded, backbone, pool, obs)
        worst = max(bench.agreement.values())
        assert worst < TOLERANCE[backbone], f"{backbone}: the paths disagree: {bench.agreement}"
        benches[backbone] = bench

    env = machine()
    print(f"# {env['lscpu_model_name'] or env['processor']} ({env['cpus']} CPUs), torch {env['torch']}, onnxruntime "
          f"{env['onnxruntime']}, numpy {env['numpy']}, Python {env['python']}; 1 thread; {args.rounds} interleaved "
          f"rounds; timed calls per path {', '.join(f'{b} {repeats[b]:,}' for b in backbones)}; warm-up calls per "
          f"path and round {', '.join(f'{b} {warmup[b]:,}' for b in backbones)}", flush=True)
    results = {b: run_bench(bench, pool, repeats[b], warmup[b], args.rounds) for b, bench in benches.items()}
    infos = {b: bench.info for b, bench in benches.items()}
    peer = None
    if args.peer == "lerobot":
        print("# LeRobot's diffusion policy (its own venv) ...", flush=True)
        peer = lerobot_peer(benches["diffusion-unet"], repeats["diffusion-unet"], warmup["diffusion-unet"],
                            args.rounds)
        params = infos["diffusion-unet"]["parameters"]
        peer["pbrl_export_parameters"] = params
        peer["pbrl_over_lerobot_parameters"] = params / peer["params"]["lerobot"]
    goals = targets(results, infos)

    print(f"\n{env['lscpu_model_name'] or env['processor']}, {env['cpus']} CPUs; torch {env['torch']}, onnxruntime "
          f"{env['onnxruntime']}; one thread (torch.set_num_threads(1), ORT intra-op 1, OMP_NUM_THREADS="
          f"{env['OMP_NUM_THREADS']}); {args.rounds} interleaved rounds")
    for b in backbones:
        print_bench(b, infos[b], results[b])
    if peer is not None:
        print_peer(peer, results["diffusion-unet"], infos["diffusion-unet"], env["onnxruntime"])
    print("\n### targets (one thread, validation included)\n")
    print("| target | measured | met |")
    print("|---|---|---|")
    for name, t in goals.items():
        print(f"| {name} | {t['measured_us']:.1f} µs | {'met' if t['met'] else 'not met'} |")

    record: dict[str, Any] = {
        "date": datetime.date.today().isoformat(), "command": " ".join(sys.argv), "machine": env,
        "settings": {"backbones": backbones, "repeats": {b: repeats[b] for b in backbones},
                     "warmup": {b: warmup[b] for b in backbones}, "rounds": args.rounds, "observations": len(pool),
                     "work": str(args.work), "dataset": args.dataset, "train_steps": args.steps,
                     "tolerance": {b: TOLERANCE[b] for b in backbones}},
        "backbones": {b: {"policy": infos[b], "agreement_max_abs": benches[b].agreement, "results": results[b]}
                      for b in backbones},
        "targets": goals, "peer": peer, "wall_s": time.perf_counter() - started}
    if "mlp" in results:  # the MLP's section at the top level too, where the first version of this file wrote it
        record.update(policy=infos["mlp"], agreement_max_abs=benches["mlp"].agreement, results=results["mlp"])
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\n# wrote {out_path} ({record['wall_s']:.0f} s)")
    if peer is not None and abs(peer["pbrl_over_lerobot_parameters"] - 1) > 0.05:
        raise SystemExit(f"not equal work: pbrl's export has {peer['pbrl_export_parameters']:,} parameters, LeRobot's "
                         f"policy {peer['params']['lerobot']:,} (more than 5 % apart)")


if __name__ == "__main__":
    main()
