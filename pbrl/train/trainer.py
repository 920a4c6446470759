"""The one training loop: AdamW, gradient clipping, bf16 autocast on CUDA, TensorBoard scalars, a progress bar,
atomic checkpoints with exact resume, periodic and final evaluation in the simulator."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from pbrl.agents import AGENTS, Agent
from pbrl.data.preferences import PreferenceSampler
from pbrl.data.registry import LoadedDataset, load_dataset
from pbrl.data.store import atomic_path, atomic_write_text, commit_atomic
from pbrl.envs.evaluate import evaluate
from pbrl.errors import ConfigError, DatasetError, describe
from pbrl.train.config import RunConfig


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(describe("train.device", "device", "'cuda'", "'cpu' or 'auto' (no CUDA device here)"))
    return torch.device(name)


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def build_agent(cfg: RunConfig, data: LoadedDataset) -> Agent:
    obs = data.trajectories.observations.astype(np.float64)
    mean, std = torch.as_tensor(obs.mean(0)), torch.as_tensor(obs.std(0) + 1e-3)
    return AGENTS[cfg.agent](cfg.agent_config, data.trajectories.obs_dim, data.trajectories.act_dim, mean, std)


def agent_policy(agent: Agent, device: torch.device):
    """numpy obs [N, obs_dim] -> numpy actions [N, act_dim] with the agent in eval mode."""

    def policy(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return agent.act(torch.as_tensor(obs, device=device)).float().cpu().numpy()

    return policy


class Checkpoints:
    """``DIR/checkpoints/step_XXXXXXXX.pt``, written atomically, the newest ``keep`` kept."""

    def __init__(self, directory: Path, keep: int):
        self.directory = directory
        self.keep = keep

    def all(self) -> list[Path]:
        return sorted(self.directory.glob("step_*.pt"))

    def latest(self) -> Path | None:
        found = self.all()
        return found[-1] if found else None

    def save(self, step: int, state: dict[str, Any]) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"step_{step:08d}.pt"
        tmp = atomic_path(path)
        torch.save(state, tmp)
        commit_atomic(tmp, path)
        for old in self.all()[: -self.keep]:
            old.unlink()
        return path


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def prepare_run_dir(cfg: RunConfig, out: Path) -> RunConfig:
    """Write ``out/config.toml`` for a new run; for an existing one, insist the config is the same."""
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "config.toml"
    if cfg_path.exists():
        stored = RunConfig.load(cfg_path)
        if stored.to_dict() != cfg.to_dict():
            a, b = stored.to_dict(), cfg.to_dict()
            diffs = [f"{s}.{k}: stored {a[s].get(k)!r}, asked {b[s].get(k)!r}"
                     for s in a for k in set(a[s]) | set(b[s]) if a[s].get(k) != b[s].get(k)]
            raise ConfigError(describe(str(cfg_path), "config", "; ".join(diffs[:4]),
                                       "the same config to resume this run (or a new --out directory)"))
        return stored
    atomic_write_text(cfg_path, cfg.to_toml())
    return cfg


def train(cfg: RunConfig, out: str | os.PathLike, *, progress: bool = True, stop_at: int | None = None
          ) -> dict[str, Any] | None:
    """Train ``cfg.agent`` on ``cfg.dataset`` into ``out``, resuming from its latest checkpoint; returns eval.json.

    ``stop_at`` ends this call early at that step with a checkpoint (a time-boxed session); a later call
    resumes and gives exactly the numbers of an uninterrupted run on the same CPU. With
    ``train.eval_episodes = 0`` no simulator is used (e.g. datasets of robot logs) and eval.json holds the
    training summary only.
    """
    out = Path(out)
    tc = cfg.train
    device = resolve_device(tc.device)
    if device.type == "cpu":
        torch.set_num_threads(tc.threads)
    data = load_dataset(cfg.dataset)
    if data.preferences is None:
        raise DatasetError(describe(cfg.dataset, "preferences", "none", "a dataset with preference labels "
                                    "(label one with `pbrl data label`)"))
    cfg = prepare_run_dir(cfg, out)
    torch.manual_seed(tc.seed)
    agent = build_agent(cfg, data).to(device)
    optimizer = torch.optim.AdamW(agent.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    sampler = PreferenceSampler(data.trajectories, data.preferences, device=device, seed=tc.seed)
    ckpts = Checkpoints(out / "checkpoints", tc.keep_checkpoints)
    step = 0
    latest = ckpts.latest()
    if latest is not None:
        state = torch.load(latest, map_location="cpu", weights_only=False)  # RNG states must stay CPU tensors
        agent.load_state_dict(state["agent"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.load_state_dict(state["sampler"])
        _set_rng_state(state["rng"], device)
        step = int(state["step"])
    if step >= tc.steps and (out / "eval.json").exists():  # a finished run: nothing to do
        return json.loads((out / "eval.json").read_text())
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out))
    use_amp = tc.amp and device.type == "cuda"
    loss_fn = torch.compile(agent.loss) if tc.compile else agent.loss

    def checkpoint() -> None:
        ckpts.save(step, {"step": step, "agent": agent.state_dict(), "optimizer": optimizer.state_dict(),
                          "sampler": sampler.state_dict(), "rng": _rng_state(device), "config": cfg.to_dict()})

    def run_eval() -> dict[str, Any]:
        agent.eval()
        result = evaluate(agent_policy(agent, device), data.env, episodes=tc.eval_episodes, seed=tc.eval_seed)
        agent.train()
        for key in ("normalized_score", "return_mean", "success_rate"):
            if key in result:
                writer.add_scalar(f"eval/{key}", result[key], step)
        return result

    agent.train()
    sample_time = total_time = 0.0
    start_step = step
    bar = tqdm(total=tc.steps, initial=step, desc=f"{cfg.agent} {data.name}", disable=not progress or None,
               dynamic_ncols=True)
    end = tc.steps if stop_at is None else min(stop_at, tc.steps)
    while step < end:
        t0 = time.perf_counter()
        batch = sampler.sample(tc.batch_size)
        t1 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            out_ = loss_fn(batch, step)
        optimizer.zero_grad(set_to_none=True)
        out_.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(agent.parameters(), tc.grad_clip if tc.grad_clip > 0 else float("inf"))
        optimizer.step()
        step += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t2 = time.perf_counter()
        sample_time += t1 - t0
        total_time += t2 - t0
        if step % tc.log_every == 0 or step == tc.steps:
            if not torch.isfinite(out_.loss):
                raise FloatingPointError(f"{out}: loss: got {out_.loss.item()} at step {step}, expected a finite value")
            writer.add_scalar("train/loss", out_.loss.item(), step)
            writer.add_scalar("train/grad_norm", grad_norm.item(), step)
            writer.add_scalar("time/steps_per_s", (step - start_step) / max(total_time, 1e-9), step)
            writer.add_scalar("time/sample_fraction", sample_time / max(total_time, 1e-9), step)
            for k, v in out_.metrics.items():
                writer.add_scalar(k, float(v), step)
            bar.set_postfix(loss=f"{out_.loss.item():.3f}")
        if step % tc.checkpoint_every == 0 and step < tc.steps:
            checkpoint()
        if tc.eval_every and step % tc.eval_every == 0 and step < tc.steps:
            run_eval()
        bar.update(1)
    bar.close()
    if step < tc.steps:
        checkpoint()
        writer.close()
        return None
    if ckpts.latest() is None or int(ckpts.latest().stem.split("_")[1]) != step:
        checkpoint()
    result = run_eval() if tc.eval_episodes > 0 else {"normalized_score": None, "return_mean": None,
                                                       "return_std": None, "episodes": 0}
    result = {"agent": cfg.agent, "dataset": data.name, "steps": step, "scale": cfg.scale,
              "train_time_s": total_time, "steps_per_s": (step - start_step) / total_time if total_time else None,
              "sample_fraction": sample_time / total_time if total_time else None,
              **{k: v for k, v in result.items() if k != "seed"}, "seed": tc.seed, "eval_seed": tc.eval_seed}
    write_json(out / "eval.json", result)
    writer.flush()
    writer.close()
    return result


def load_run(run_dir: str | os.PathLike, device: str = "auto") -> tuple[RunConfig, Agent, LoadedDataset]:
    """The config, the agent at its latest checkpoint (eval mode), and the dataset of a run directory."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.toml"
    if not cfg_path.exists():
        raise ConfigError(describe(str(run_dir), "config.toml", "missing", "a run directory written by `pbrl train`"))
    cfg = RunConfig.load(cfg_path)
    latest = Checkpoints(run_dir / "checkpoints", 1).latest()
    if latest is None:
        raise ConfigError(describe(str(run_dir / "checkpoints"), "checkpoint", "none", "at least one step_*.pt"))
    dev = resolve_device(device)
    data = load_dataset(cfg.dataset)
    agent = build_agent(cfg, data).to(dev)
    agent.load_state_dict(torch.load(latest, map_location="cpu", weights_only=False)["agent"])
    agent.eval()
    return cfg, agent, data
