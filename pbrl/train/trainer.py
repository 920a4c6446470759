"""The control wiring around the one loop (:mod:`pbrl.train.loop`): load the dataset, build the agent and the
sampler of the batches it declares, fit a reward model first where the agent learns its reward, train, and
evaluate in the simulator through the agent's actor."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pbrl.agents import AGENTS, Agent
from pbrl.agents.base import AgentConfig, BatchSpec, DataSpec
from pbrl.agents.reward_model import RewardModel
from pbrl.core import preference_accuracy
from pbrl.data.preferences import (
    GroupRounds,
    PreferenceDataset,
    PreferenceSampler,
    ScoredSegmentSampler,
    episode_win_counts,
    label_groups,
)
from pbrl.data.registry import LoadedDataset, load_dataset
from pbrl.data.sampling import NamedSamplers, Sampler, derived_seed
from pbrl.data.store import TrajectoryDataset
from pbrl.data.transitions import TransitionSampler, WindowSampler, check_rewards, returns_scale
from pbrl.envs.evaluate import evaluate
from pbrl.envs.registry import has_simulator, make_env
from pbrl.errors import CheckpointError, ConfigError, DatasetError, describe
from pbrl.io import atomic_write_text
from pbrl.train.config import RunConfig
from pbrl.train.loop import (  # resolve_device: pbrl.cli imports it from here too
    Checkpoints,
    TrainConfig,
    ddp_launched,
    load_weights,
    prepare_run_dir,
    resolve_device,
    run_directory,
    run_loop,
)

__all__ = ["Checkpoints", "actor_policy", "build_agent", "load_run", "train"]


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN; a reader must not meet one)."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Strict JSON (``allow_nan=False``: a non-finite figure is written as null), atomically."""
    atomic_write_text(path, json.dumps(finite_or_none(data), indent=2, sort_keys=True, allow_nan=False) + "\n")


def data_spec(trajectories: TrajectoryDataset, preferences: PreferenceDataset | None = None) -> DataSpec:
    """The agent's view of its data; with ``preferences``, the labels' per-episode win counts too."""
    obs = trajectories.observations.astype(np.float64)
    act = trajectories.actions
    groups = wins = comparisons = None
    if preferences is not None:
        groups = torch.as_tensor(label_groups(preferences))
        wins, comparisons = (torch.as_tensor(x) for x in episode_win_counts(preferences, trajectories.num_episodes))
    return DataSpec(trajectories.obs_dim, trajectories.act_dim, torch.as_tensor(obs.mean(0)),
                    torch.as_tensor(obs.std(0) + 1e-3), torch.as_tensor(act.min(0)), torch.as_tensor(act.max(0)),
                    label_groups=groups, episode_wins=wins, episode_comparisons=comparisons)


def build_agent(cfg: RunConfig, data: LoadedDataset) -> Agent:
    return AGENTS[cfg.agent](cfg.agent_config, data_spec(data.trajectories, data.preferences))


def actor_policy(agent: Agent, num_envs: int, device: torch.device, seed: int = 0):
    """numpy obs [N, obs_dim] -> numpy actions [N, act_dim] through the agent's actor; ``.reset(mask)`` resets it."""
    actor = agent.actor(num_envs, seed=seed)

    def policy(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return actor(torch.as_tensor(obs, device=device)).float().cpu().numpy()

    policy.reset = actor.reset  # type: ignore[attr-defined]
    return policy


def batch_specs(agent: str, agent_cfg: AgentConfig | None = None) -> dict[str, BatchSpec]:
    """The named batches agent ``agent`` declares for ``agent_cfg`` (default: its config's defaults)."""
    cls = AGENTS[agent]
    return cls.batch_specs(agent_cfg if agent_cfg is not None else cls.Config())


def reward_sources(specs: dict[str, BatchSpec]) -> set[str]:
    """Where the declared transition batches' rewards come from: ``true``, ``constant``, ``learned``."""
    return {s.rewards for s in specs.values() if s.rewards is not None}


def needs_preferences(agent: str, agent_cfg: AgentConfig | None = None) -> bool:
    return any(s.needs_labels for s in batch_specs(agent, agent_cfg).values())


def check_inputs(cfg: RunConfig, data: LoadedDataset) -> None:
    """Everything that can be refused before a file is written."""
    space = data.trajectories.metadata.get("action_space")
    if isinstance(space, dict) and space.get("type") == "discrete":
        raise DatasetError(describe(cfg.dataset, "action_space", f"discrete ({space.get('n')} one-hot actions)",
                                    "continuous actions for the control agents (Overcooked: `pbrl overcooked bc` or "
                                    "`pbrl overcooked hybrid`)"))
    specs = batch_specs(cfg.agent, cfg.agent_config)
    sources = reward_sources(specs)
    if any(s.needs_labels for s in specs.values()) and (data.preferences is None or len(data.preferences.used) == 0):
        what = "a reward model" if "learned" in sources else f"agent {cfg.agent!r}"
        raise DatasetError(describe(cfg.dataset, "preferences", "none", f"preference labels for {what} "
                                    "(label the dataset with `pbrl data label`)"))
    if "true" in sources:
        check_rewards(data.trajectories, data.trajectories.rewards, cfg.dataset)
    for spec in specs.values():
        if spec.kind == "segments" and data.preferences is not None and data.preferences.score_a is None:
            raise DatasetError(describe(str(data.preferences_path or cfg.dataset), "'score_a'/'score_b'", "missing",
                                        f"the teacher's segment scores for {spec.origin or 'scored segments'} "
                                        "(relabel with `pbrl data label`; human labels have none)"))
    if cfg.train.eval_episodes > 0 and not has_simulator(data.env):
        raise DatasetError(describe(cfg.dataset, "environment", f"{data.env!r}, which no simulator in pbrl replays "
                                    "(robot logs)", "train.eval_episodes=0 (then eval.json holds offline metrics: "
                                    "held-out action error and preference accuracy)"))
    if cfg.train.eval_episodes > 0:  # a policy the simulator cannot run is refused now, not after training
        env = make_env(data.env)
        env_dims = (env.observation_space.shape[0], env.action_space.shape[0])
        env.close()
        traj = data.trajectories
        if env_dims != (traj.obs_dim, traj.act_dim):
            raise DatasetError(describe(str(traj.path), "observation and action sizes", (traj.obs_dim, traj.act_dim),
                                        f"{env_dims}, those of its environment {data.env} (or train.eval_episodes=0 "
                                        "to train without evaluating)"))


def unit_range(r: np.ndarray) -> np.ndarray:
    """Min-max normalisation to [0, 1] (Uni-RLHF's for relabelled rewards); a constant array becomes zeros."""
    lo, hi = float(r.min()), float(r.max())
    return (r - lo) / (hi - lo) if hi > lo else np.zeros_like(r)






def split_pairs(prefs: PreferenceDataset, holdout: float, seed: int) -> tuple[PreferenceDataset, PreferenceDataset]:
    """Labelled pairs split into (train, held out) by a seeded permutation; skipped pairs are dropped."""
    used = prefs.used
    order = np.random.default_rng(seed).permutation(used)
    n_hold = int(round(holdout * len(order)))
    if holdout > 0 and (n_hold < 1 or n_hold >= len(order)):
        raise DatasetError(describe("reward_holdout", "held-out pairs", n_hold, f"between 1 and {len(order) - 1} "
                                    f"of {len(order)} labelled pairs"))
    return prefs.subset(np.sort(order[n_hold:])), prefs.subset(np.sort(order[:n_hold]))


@torch.no_grad()
def holdout_accuracy(model: RewardModel, sampler: PreferenceSampler, chunk: int = 256) -> float:
    model.eval()
    margins, labels = [], []
    for start in range(0, len(sampler), chunk):
        batch = sampler.batch(torch.arange(start, min(start + chunk, len(sampler)), device=sampler.device))
        margins.append(model.margins(batch))
        labels.append(batch.label)
    return float(preference_accuracy(torch.cat(margins, 1), torch.cat(labels)))


@torch.no_grad()
def relabel(model: RewardModel, trajectories: TrajectoryDataset, device: torch.device, chunk: int = 2048) -> np.ndarray:
    """The model's reward of every transition, ``[N]`` float64."""
    model.eval()
    windows = WindowSampler(trajectories, context=model.relabel_context, device=device)
    out = []
    for start in range(0, len(windows), chunk):
        w = windows.batch(torch.arange(start, min(start + chunk, len(windows)), device=device))
        out.append(model.window_reward(w.obs, w.act, w.timestep, w.mask).double().cpu())
    return torch.cat(out).numpy()


def learn_reward(cfg: RunConfig, data: LoadedDataset, out: Path, device: torch.device, progress: bool
                 ) -> tuple[np.ndarray, dict[str, Any]] | None:
    """Fit the reward model of an ``iql-mr`` / ``iql-pt`` run in ``out`` (resumable); returns the relabelled,
    min-max normalised rewards ``[N]`` and a summary, or None when stopped early."""
    ac = cfg.agent_config
    prefs = data.preferences
    segment = int(max(prefs.segments_a[:, 2].max(), prefs.segments_b[:, 2].max()))
    train_pairs, held_pairs = split_pairs(prefs, ac.reward_holdout, cfg.train.seed)
    tc = TrainConfig(steps=ac.reward_steps, batch_size=ac.reward_batch_size, lr=ac.reward_lr, weight_decay=0.0,
                     grad_clip=0.0, seed=cfg.train.seed, device=cfg.train.device, threads=cfg.train.threads,
                     amp=cfg.train.amp, log_every=min(cfg.train.log_every, ac.reward_steps),
                     checkpoint_every=cfg.train.checkpoint_every, keep_checkpoints=1,
                     eval_every=max(ac.reward_steps // 4, 1))  # held-out accuracy four times per fit
    torch.manual_seed(tc.seed)
    model = RewardModel(ac.reward_config(segment), data_spec(data.trajectories)).to(device)
    sampler = PreferenceSampler(data.trajectories, train_pairs, device=device, seed=tc.seed)
    held = PreferenceSampler(data.trajectories, held_pairs, device=device, seed=tc.seed) if len(held_pairs) else None

    def log_holdout(step: int, writer) -> None:
        if held is not None:
            writer.add_scalar("reward/holdout_accuracy", holdout_accuracy(model, held), step)

    result = run_loop(model, lambda: sampler.sample(tc.batch_size), tc, out, device=device,
                      stateful={"sampler": sampler}, evaluate=log_holdout, progress=progress,
                      desc=f"reward model ({ac.reward_model})")
    if not result.finished:
        return None
    raw = relabel(model, data.trajectories, device)
    rewards = unit_range(raw)
    true = data.trajectories.rewards.astype(np.float64)
    # train accuracy on at most 2,000 of the training pairs: enough to compare with the held-out figure
    sample = train_pairs if len(train_pairs) <= 2000 else split_pairs(train_pairs, 2000 / len(train_pairs), tc.seed)[1]
    summary = {"reward_model": ac.reward_model, "steps": result.step, "train_pairs": len(train_pairs),
               "holdout_pairs": len(held_pairs),
               "holdout_accuracy": holdout_accuracy(model, held) if held is not None else None,
               "train_accuracy": holdout_accuracy(model, PreferenceSampler(data.trajectories, sample, device=device)),
               "reward_correlation": float(np.corrcoef(raw, true)[0, 1]) if true.std() > 0 and raw.std() > 0 else None}
    write_json(out / "summary.json", summary)
    return rewards, summary


def build_sampler(spec: BatchSpec, data: LoadedDataset, device: torch.device, seed: int, where: str,
                  rewards: np.ndarray | None = None, draws_per_step: int = 1) -> Sampler | GroupRounds:
    """The sampler of one declared batch; ``rewards`` [N]: a reward model's relabelling (``rewards="learned"``);
    ``draws_per_step``: the loop's draws per step (gradient accumulation), for samplers that follow the step."""
    if spec.kind == "preferences" and spec.rounds is not None:
        start, round_steps = spec.rounds
        return GroupRounds(data.trajectories, data.preferences, start=start, round_steps=round_steps,
                           draws_per_step=draws_per_step, device=device, seed=seed)
    if spec.kind == "preferences":
        return PreferenceSampler(data.trajectories, data.preferences, device=device, seed=seed)
    if spec.kind == "segments":
        return ScoredSegmentSampler(data.trajectories, data.preferences, device=device, seed=seed,
                                    where=str(data.preferences_path or where))
    if spec.kind == "windows":
        return WindowSampler(data.trajectories, context=spec.context, device=device, seed=seed)
    n = data.trajectories.num_transitions
    if spec.rewards == "learned":
        if rewards is None:
            raise ConfigError(describe(where, "learned rewards", "none", "a reward model's relabelling first"))
        r = rewards
    elif spec.rewards == "constant":
        r = np.ones(n, np.float32)
    elif spec.rewards == "true":
        r = data.trajectories.rewards
    else:  # no reward read (BC on transitions)
        r = np.zeros(n, np.float32)
    if spec.reward_scale == "minmax-returns":  # Uni-RLHF's normalisation of relabelled rewards, applied to any reward
        r = unit_range(r)
    scale = returns_scale(data.trajectories, r) if spec.reward_scale in ("returns", "minmax-returns") else 1.0
    return TransitionSampler(data.trajectories, rewards=r, scale=scale, device=device, seed=seed)


def make_sampler(cfg: RunConfig, agent: Agent, data: LoadedDataset, device: torch.device,
                 rewards: np.ndarray | None = None) -> Sampler | NamedSamplers:
    """The sampler of each batch the agent declares: the one sampler itself, or several as :class:`NamedSamplers`
    (each with a seed of its own, derived from ``train.seed``)."""
    specs = type(agent).batch_specs(cfg.agent_config)
    samplers = {name: build_sampler(spec, data, device, derived_seed(cfg.train.seed, i), cfg.dataset, rewards,
                                    cfg.train.grad_accum) for i, (name, spec) in enumerate(specs.items())}
    if len(samplers) == 1:
        return next(iter(samplers.values()))
    return NamedSamplers(samplers, {name: spec.batch_size for name, spec in specs.items()})


def train(cfg: RunConfig, out: str | os.PathLike, *, progress: bool = True, stop_at: int | None = None
          ) -> dict[str, Any] | None:
    """Train ``cfg.agent`` on ``cfg.dataset`` into ``out``, resuming from its latest checkpoint; returns eval.json.

    ``stop_at`` ends this call early at that step with a checkpoint (a time-boxed session); a later call
    resumes and gives exactly the numbers of an uninterrupted run on the same CPU. With
    ``train.eval_episodes = 0`` no simulator is used (e.g. datasets of robot logs) and eval.json holds offline
    metrics beside the training summary: action error and preference accuracy on ``train.eval_dataset``
    (:mod:`pbrl.train.offline_eval`).
    """
    out = Path(out)
    tc = cfg.train
    if ddp_launched():  # small control models scale out as many runs (pbrl bench --backend ray), not as DDP
        raise ConfigError(describe("WORLD_SIZE", "processes", os.environ["WORLD_SIZE"], "1 for the control agents "
                                   "(run a grid of them with `pbrl bench --backend ray`; torchrun / accelerate: "
                                   "`pbrl seq train`)"))
    device = resolve_device(tc.device)
    if device.type == "cpu":
        torch.set_num_threads(tc.threads)
    data = load_dataset(cfg.dataset, preferences=needs_preferences(cfg.agent, cfg.agent_config))
    check_inputs(cfg, data)
    offline = None
    if tc.eval_episodes == 0 and (tc.eval_dataset or not has_simulator(data.env)):
        from pbrl.train.offline_eval import held_out

        offline = held_out(tc.eval_dataset, data)  # loaded and checked once, before anything is written
    files = data.files()  # hashed once: a path-named dataset has no recorded sums
    with run_directory(out, files):
        return _train_in(cfg, data, out, device, progress, stop_at, offline)


def dry_run(cfg: RunConfig) -> dict[str, Any]:
    """Check a config end to end without leaving a file: load the data, build the agent (and its reward model),
    and run two training steps (the first a warm-start step where the agent has one, so a phase switch is
    crossed) in a temporary directory that is removed afterwards. Returns what the steps reported."""
    import copy
    import tempfile

    trial = copy.deepcopy(cfg)
    trial.train.steps, trial.train.eval_episodes, trial.train.log_every = 2, 0, 1
    trial.agent_config.shrink_for_dry_run()
    with tempfile.TemporaryDirectory(prefix="pbrl-dry-run-") as tmp:
        summary = train(trial, Path(tmp) / "run", progress=False)
        _, agent, _ = load_run(Path(tmp) / "run", trial.train.device)
        parameters = sum(p.numel() for p in agent.parameters())
    return {"agent": cfg.agent, "dataset": summary["dataset"], "steps_run": 2, "parameters": parameters,
            "written": "nothing"}




def _train_in(cfg: RunConfig, data: LoadedDataset, out: Path, device: torch.device, progress: bool,
              stop_at: int | None, offline: tuple[LoadedDataset, str] | None) -> dict[str, Any] | None:
    tc = cfg.train
    prepare_run_dir(out, cfg.to_dict(), read=lambda path: RunConfig.load(path).to_dict())
    rewards, reward_summary = None, None
    if "learned" in reward_sources(batch_specs(cfg.agent, cfg.agent_config)):
        learned = learn_reward(cfg, data, out / "reward_model", device, progress)
        if learned is None:
            return None
        rewards, reward_summary = learned
    torch.manual_seed(tc.seed)
    agent = build_agent(cfg, data).to(device)
    sampler = make_sampler(cfg, agent, data, device, rewards)
    episodes = tc.eval_episodes

    def run_eval(step: int, writer) -> dict[str, Any]:
        agent.eval()
        result = evaluate(actor_policy(agent, episodes, device, tc.eval_seed), data.env, episodes=episodes,
                          dims=(agent.spec.obs_dim, agent.spec.act_dim),
                          seed=tc.eval_seed)
        agent.train()
        for key in ("normalized_score", "return_mean", "success_rate"):
            if key in result and writer is not None:
                writer.add_scalar(f"eval/{key}", result[key], step)
        return result

    result = run_loop(agent, lambda: sampler.sample(tc.batch_size), tc, out, device=device,
                      stateful={"sampler": sampler}, evaluate=run_eval if episodes > 0 else None, progress=progress,
                      stop_at=stop_at, desc=f"{cfg.agent} {data.name}", extra_state={"config": cfg.to_dict()})
    if not result.finished:
        return None
    if result.step == result.start_step and (out / "eval.json").exists():  # a finished run: nothing to do
        return json.loads((out / "eval.json").read_text())
    from torch.utils.tensorboard import SummaryWriter

    if episodes > 0:
        if progress:  # the simulator's episodes can take minutes: a log says what the run is doing meanwhile
            print(f"{cfg.agent} {data.name}: evaluating {episodes} episodes in {data.env}", file=sys.stderr, flush=True)
        with SummaryWriter(str(out)) as writer:
            evaluation = run_eval(result.step, writer)
    elif offline is not None:  # no simulator or a held-out set: action error, preference accuracy
        from pbrl.train.offline_eval import offline_metrics

        evaluation = offline_metrics(agent, data, offline, device, tc.eval_seed)
        with SummaryWriter(str(out)) as writer:
            for key in ("action_mse", "action_mae", "preference_accuracy"):
                if evaluation[key] is not None:
                    writer.add_scalar(f"eval/{key}", evaluation[key], result.step)
    else:  # a quick run on simulator data without evaluating (tests, dry runs): the training summary only
        evaluation = {"normalized_score": None, "return_mean": None, "return_std": None, "episodes": 0}
    summary = {"agent": cfg.agent, "dataset": data.name, "steps": result.step, "scale": cfg.scale,
               "train_time_s": result.train_time_s, "steps_per_s": result.steps_per_s,
               "sample_fraction": result.sample_fraction,
               **{k: v for k, v in evaluation.items() if k != "seed"}, "seed": tc.seed, "eval_seed": tc.eval_seed}
    if reward_summary is not None:
        summary["reward_model"] = reward_summary
    write_json(out / "eval.json", summary)
    return summary


def load_run(run_dir: str | os.PathLike, device: str = "auto", *, step: int | None = None
             ) -> tuple[RunConfig, Agent, LoadedDataset]:
    """The config, the agent at its newest readable checkpoint, or at ``step``'s (eval mode; ``agent.checkpoint``
    names the file), and the dataset of a run directory. A checkpoint with non-finite weights is refused."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.toml"
    if not cfg_path.exists():
        raise ConfigError(describe(str(run_dir), "config.toml", "missing", "a run directory written by `pbrl train`"))
    cfg = RunConfig.load(cfg_path)
    checkpoints = Checkpoints(run_dir / "checkpoints", 1)
    loaded = checkpoints.load_latest() if step is None else checkpoints.load_step(step)
    if loaded is None:
        raise ConfigError(describe(str(run_dir / "checkpoints"), "checkpoint", "none", "at least one step_*.pt"))
    latest, state = loaded
    bad = [k for k, v in state["agent"].items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(describe(str(latest), f"parameter {bad[0]!r}", "non-finite values",
                                       "finite weights (this checkpoint cannot be evaluated)"))
    dev = resolve_device(device)
    data = load_dataset(cfg.dataset, preferences=needs_preferences(cfg.agent, cfg.agent_config))
    agent = build_agent(cfg, data).to(dev)
    load_weights(agent, state, latest)
    agent.eval()
    agent.checkpoint = latest.name
    return cfg, agent, data
