"""Online RL and partners in Overcooked: stable-baselines3 PPO (self-play, or against a partner pool, on any
:class:`~pbrl.envs.overcooked.Utility`), the behaviour-cloned human model, and evaluation of pairs.

Every PPO run lives in one folder:

- ``checkpoints/ppo_XXXXXXXXX.zip`` + ``.state.pt`` (RNG states, the env's episode counters, the curve so far),
  written atomically every ``checkpoint_every`` game steps at a rollout boundary; a run started again in the
  same folder resumes from the newest pair and gives the same numbers as an uninterrupted run;
- ``model.zip`` (the final policy), ``curve.json`` (game steps, mean team sparse return per rollout), TensorBoard
  events (SB3's scalars plus ``overcooked/sparse_return`` and ``overcooked/shaping_scale``), ``config.json`` (the
  settings: a resume with others is refused naming stored and asked values).

BC and hybrid runs add ``data.json`` (the sha256 of the files they read: a resume on changed data is refused). Every
run takes its folder through :func:`pbrl.train.loop.run_directory`: checked inputs first, and a start that fails
before anything resumable exists leaves no folder behind.

Budgets are in **game steps** (one joint step of both players), rounded up to whole rollouts
(:meth:`PPOConfig.whole_rollouts`). Self-play trains on both seats, so it gets two samples per game step; a learner
against a pool gets one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pbrl.agents.hybrid import HybridConfig
from pbrl.envs.overcooked import HORIZON, N_ACTIONS, TASK, OvercookedVecEnv, Policy, Utility, check_layout, play
from pbrl.errors import CheckpointError, ConfigError, DatasetError, describe
from pbrl.fields import check_fields, param
from pbrl.io import Progress, atomic_path, atomic_write_text, commit_atomic
from pbrl.train.loop import run_directory

if TYPE_CHECKING:
    from pbrl.data.registry import LoadedDataset

PPO_RESUMABLE = ("ppo_*.state.pt", "model.zip")
"""What makes a PPO run folder worth keeping after a failure (:func:`pbrl.train.loop.run_directory`)."""
HYBRID_RESUMABLE = ("ppo_*.state.pt", "step_*.pt", "model.zip", "rounds.json")
"""The same for a hybrid run: any phase's checkpoint or model, or the pre-trained policy's measured return."""


@dataclass
class PPOConfig:
    """SB3 PPO for Overcooked (Carroll et al.'s recipe scaled to a CPU: featurised observations and an MLP); the
    command line sets its fields with ``--set ppo.FIELD=VALUE``."""

    n_games: int = param(8, ge=1)                  # games stepped together
    n_steps: int = param(HORIZON, ge=1)            # steps per rollout = the horizon, so rollouts end at episode boundaries
    n_epochs: int = param(8, ge=1)
    minibatches: int = param(4, ge=1)              # minibatches per epoch
    lr: float = param(5e-4, gt=0)
    gamma: float = param(0.99, gt=0, le=1)
    gae_lambda: float = param(0.98, ge=0, le=1)
    ent_coef: float = param(0.01, ge=0)
    clip_range: float = param(0.2, gt=0)
    hidden: list[int] = param([128, 128], ge=1)
    shaping_horizon: float = param(0.5, ge=0, le=1)  # the shaping term anneals from 1 to 0 over this fraction of the run
    checkpoint_every: int = param(96_000, ge=1)    # game steps between checkpoints (rounded up to whole rollouts)

    def check(self) -> tuple[str, Any, str] | None:
        """Cross-field rules (:func:`pbrl.fields.check_fields`): rollouts of whole episodes, minibatches of at least
        one sample."""
        if self.n_steps != HORIZON:
            return "n_steps", self.n_steps, f"{HORIZON} (rollouts must end with episodes)"
        if self.minibatches > self.rollout_game_steps:
            return "minibatches", self.minibatches, f"at most n_steps x n_games = {self.rollout_game_steps}"
        return None

    @property
    def rollout_game_steps(self) -> int:
        """Game steps per rollout (self-play or against a pool alike): PPO updates after each."""
        return self.n_steps * self.n_games

    def whole_rollouts(self, game_steps: int) -> int:
        """The game steps a budget of ``game_steps`` trains: rounded up to whole rollouts."""
        return -(-game_steps // self.rollout_game_steps) * self.rollout_game_steps

    def rounding_note(self, budget_name: str, game_steps: int) -> str | None:
        """One warning line where ``game_steps`` (given as ``budget_name``) is not a whole number of rollouts."""
        trained = self.whole_rollouts(game_steps)
        if trained == game_steps:
            return None
        return (f"pbrl: warning: {budget_name} {game_steps}: trains {trained} game steps, rounded up to whole rollouts "
                f"of {self.rollout_game_steps} ({self.n_games} games x {self.n_steps} steps; PPO updates after each)")


class PolicyPartner:
    """A trained SB3 policy as a batched :data:`~pbrl.envs.overcooked.Policy` that samples its actions from its
    own generator (``deterministic`` takes the argmax; Overcooked policies get stuck when deterministic)."""

    def __init__(self, policy, seed: int = 0, *, deterministic: bool = False, name: str = "") -> None:
        self.policy, self.deterministic, self.name = policy, deterministic, name
        self.rng = np.random.default_rng(seed)

    @classmethod
    def load(cls, path: str | Path, seed: int = 0, **kw: Any) -> PolicyPartner:
        """From a run folder (``model.zip`` of PPO or ``policy.pt`` of BC) or either file."""
        return cls(load_policy(path), seed, name=kw.pop("name", str(path)), **kw)

    def probabilities(self, obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            dist = self.policy.get_distribution(torch.as_tensor(obs, dtype=torch.float32))
            return dist.distribution.probs.numpy().astype(np.float64)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        p = self.probabilities(obs)
        if self.deterministic:
            return p.argmax(1)
        u = self.rng.random((len(p), 1))
        return np.minimum((np.cumsum(p, 1) < u).sum(1), N_ACTIONS - 1)


def load_policy(path: str | Path):
    """The SB3 policy of a PPO run (``model.zip``) or of a BC run (``policy.pt``): a folder or the file."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.policies import ActorCriticPolicy

    path = Path(path)
    candidates = [path / "model.zip", path / "policy.pt"] if path.is_dir() else [path]
    for p in candidates:
        if p.exists():
            policy = PPO.load(p, device="cpu").policy if p.suffix == ".zip" else ActorCriticPolicy.load(p, device="cpu")
            return policy.eval()
    raise CheckpointError(describe(str(path), "policy", "missing", "a run folder with model.zip (PPO) or policy.pt (BC)"))


def _callback_class():
    from stable_baselines3.common.callbacks import BaseCallback

    class _Hooks(BaseCallback):
        """Anneals shaping, records the curve, writes TensorBoard scalars and checkpoints at rollout boundaries."""

        def __init__(self, run: _PPORun) -> None:
            super().__init__()
            self.run = run

        def _on_step(self) -> bool:
            self.run.env.set_shaping_scale(self.run.shaping_scale(self.num_timesteps))
            for info in self.locals.get("infos", ()):
                if "episode" in info:
                    self.run.finished_returns.append(info["episode"]["r"])
            return True

        def _on_rollout_start(self) -> None:
            self.run.maybe_checkpoint(self.model)

        def _on_rollout_end(self) -> None:
            self.run.record(self.model)

    return _Hooks


class _PPORun:
    def __init__(self, out: Path, env: OvercookedVecEnv, cfg: PPOConfig, total_samples: int, progress: bool) -> None:
        self.out, self.env, self.cfg, self.total = out, env, cfg, total_samples
        self.samples_per_game_step = env.num_envs // len(env.games)
        self.curve: list[list[float]] = []
        self.finished_returns: list[float] = []
        self.last_checkpoint = -1
        self.progress_enabled = progress
        self.progress: Progress | None = None

    def start_progress(self, samples: int) -> None:
        """The progress report, from where this call starts (a resumed run counts from its checkpoint): a bar on a
        terminal, a plain line at least every 30 s off one."""
        self.progress = Progress(self.game_steps(self.total), desc=f"ppo {self.out.name}",
                                 initial=self.game_steps(samples), enabled=self.progress_enabled)

    def shaping_scale(self, samples: int) -> float:
        horizon = self.cfg.shaping_horizon * self.total
        return max(0.0, 1.0 - samples / horizon) if horizon > 0 else 0.0

    def game_steps(self, samples: int) -> int:
        return samples // self.samples_per_game_step

    def record(self, model) -> None:
        steps = self.game_steps(model.num_timesteps)
        mean = float(np.mean(self.finished_returns)) if self.finished_returns else float("nan")
        self.finished_returns = []
        self.curve.append([steps, mean])
        model.logger.record("overcooked/sparse_return", mean)
        model.logger.record("overcooked/shaping_scale", self.env.shaping_scale)
        if self.progress is not None:
            self.progress.set_postfix_str(f"sparse {mean:.1f}")
            self.progress.update(steps - self.progress.n)

    def maybe_checkpoint(self, model) -> None:
        steps = self.game_steps(model.num_timesteps)
        if steps == 0 or steps == self.last_checkpoint:
            return
        if steps - max(self.last_checkpoint, 0) >= self.cfg.checkpoint_every or model.num_timesteps >= self.total:
            self.save_checkpoint(model)

    def save_checkpoint(self, model) -> None:
        steps = self.game_steps(model.num_timesteps)
        d = self.out / "checkpoints"
        d.mkdir(parents=True, exist_ok=True)
        zip_path = d / f"ppo_{steps:09d}.zip"
        state = {"game_steps": steps, "samples": int(model.num_timesteps), "torch": torch.get_rng_state(),
                 "numpy": np.random.get_state(), "env": self.env.state_dict(), "curve": self.curve}
        state_path = d / f"ppo_{steps:09d}.state.pt"
        save_atomic(model, zip_path)
        tmp_state = atomic_path(state_path)
        torch.save(state, tmp_state)
        commit_atomic(tmp_state, state_path)  # the state last: a checkpoint counts once both files exist
        self.last_checkpoint = steps


def _claim_config(out: Path, config: dict[str, Any]) -> None:
    """Write ``out/config.json``, or refuse in one line when the folder holds a run of other settings, naming the
    stored and the asked value of the first that differ. Call it inside the run's :func:`run_directory`."""
    path = out / "config.json"
    wanted = json.loads(json.dumps(config))
    if path.exists():
        found = json.loads(path.read_text())
        if found != wanted:
            differ = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
            raise ConfigError(describe(str(path), f"settings {differ}", "; ".join(_differences(found, wanted)[:4]),
                                       "the same settings to resume or reuse this run (or a new --out)"))
        return
    atomic_write_text(path, json.dumps(wanted, indent=2))


def _differences(stored: dict[str, Any], asked: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: stored X, asked Y`` for every differing key, sections (``ppo``, ``hybrid``) entered one level deep."""
    out = []
    for key in sorted(set(stored) | set(asked)):
        before, now = stored.get(key), asked.get(key)
        if before == now:
            continue
        if isinstance(before, dict) and isinstance(now, dict) and not prefix:
            out += _differences(before, now, f"{key}.")
        else:
            out.append(f"{prefix}{key}: stored {before!r}, asked {now!r}")
    return out


def _latest_checkpoint(out: Path) -> tuple[Path, dict[str, Any]] | None:
    d = out / "checkpoints"
    for state_path in sorted(d.glob("ppo_*.state.pt"), reverse=True) if d.is_dir() else ():
        zip_path = state_path.with_name(state_path.name.replace(".state.pt", ".zip"))
        if zip_path.exists():
            return zip_path, torch.load(state_path, weights_only=False)
    return None


def train_ppo(out: str | Path, layout: str, game_steps: int, *, seed: int = 0, cfg: PPOConfig | None = None,
              partners: Sequence[Policy] | None = None, partner_names: Sequence[str] = (), utility: Utility = TASK,
              init: str | Path | None = None, progress: bool = True, stop_after: int | None = None,
              budget_name: str = "--steps") -> Path | None:
    """Train (or resume) one PPO run in ``out``; returns ``out/model.zip``.

    ``stop_after`` (game steps) ends this call early with a checkpoint at the first rollout boundary at or past
    it and returns None; calling again resumes.

    ``partners=None`` is self-play; otherwise one learner seat per game against the pool. ``init`` starts from
    another run's ``model.zip`` (the policy and value weights; a fresh optimiser). The budget is rounded up to whole
    rollouts (:meth:`PPOConfig.whole_rollouts`), said in one line naming it as ``budget_name`` when training starts.

    Everything is checked before ``out`` is made (the config's fields, the layout, ``init``), and a start that fails
    before the first checkpoint leaves no folder behind (:func:`run_directory`)."""

    cfg = cfg or PPOConfig()
    check_fields(cfg, "ppo", "PPOConfig")
    check_layout(layout)
    init_policy = PolicyPartner.load(init).policy if init is not None else None
    out = Path(out)
    config = {"layout": layout, "game_steps": game_steps, "seed": seed, "ppo": asdict(cfg), "utility": asdict(utility),
              "partners": list(partner_names) if partners is not None else "self-play", "init": str(init or "")}
    with run_directory(out, resumable=PPO_RESUMABLE):
        _claim_config(out, config)
        final = out / "model.zip"
        if final.exists():
            return final
        return _train_ppo_in(out, layout, game_steps, seed, cfg, partners, utility, init_policy, progress, stop_after,
                             budget_name)


def _train_ppo_in(out: Path, layout: str, game_steps: int, seed: int, cfg: PPOConfig, partners, utility: Utility,
                  init_policy, progress: bool, stop_after: int | None, budget_name: str) -> Path | None:
    from stable_baselines3 import PPO
    from stable_baselines3.common.logger import configure

    final = out / "model.zip"
    torch.set_num_threads(1)
    env = OvercookedVecEnv(layout, cfg.n_games, partners=partners, utility=utility, seed=seed)
    samples_per_game_step = env.num_envs // cfg.n_games
    rollout = cfg.n_steps * env.num_envs
    total = cfg.whole_rollouts(game_steps) * samples_per_game_step
    run = _PPORun(out, env, cfg, total, progress)
    loaded = _latest_checkpoint(out)
    if loaded is not None:
        zip_path, state = loaded
        model = PPO.load(zip_path, env=env, device="cpu")
        torch.set_rng_state(state["torch"])
        np.random.set_state(state["numpy"])
        env.load_state_dict(state["env"])
        run.curve, run.last_checkpoint = list(state["curve"]), int(state["game_steps"])
    else:
        model = PPO("MlpPolicy", env, n_steps=cfg.n_steps, batch_size=rollout // cfg.minibatches, n_epochs=cfg.n_epochs,
                    learning_rate=cfg.lr, gamma=cfg.gamma, gae_lambda=cfg.gae_lambda, ent_coef=cfg.ent_coef,
                    clip_range=cfg.clip_range, policy_kwargs={"net_arch": list(cfg.hidden)}, seed=seed, verbose=0,
                    device="cpu")
        if init_policy is not None:
            model.policy.load_state_dict(init_policy.state_dict())
    model.set_logger(configure(str(out), ["tensorboard"]))
    run.start_progress(model.num_timesteps)
    note = cfg.rounding_note(budget_name, game_steps)
    if note is not None:
        run.progress.write(note)  # printed with --quiet too: the run trains more than was asked
    remaining = total - model.num_timesteps
    if stop_after is not None:
        stop = -(-stop_after * samples_per_game_step // rollout) * rollout
        remaining = min(remaining, max(0, stop - model.num_timesteps))
    t0 = time.perf_counter()
    try:
        if remaining > 0:
            model.learn(remaining, callback=_callback_class()(run), reset_num_timesteps=False)
    finally:
        run.progress.close(final_line=True)
    wall = time.perf_counter() - t0
    atomic_write_text(out / "curve.json", json.dumps({"game_steps": [c[0] for c in run.curve],
                                                      "sparse_return": [c[1] for c in run.curve],
                                                      "last_call_wall_s": wall}, indent=1))
    if stop_after is not None and model.num_timesteps < total:
        run.save_checkpoint(model)
        return None
    return save_atomic(model, final)


@dataclass
class PairScore:
    """Outcome of one ego with one partner: team return and the partner style's preference score, over episodes."""

    returns: np.ndarray          # [E]
    preference: np.ndarray       # [E] (NaN where the pair made none of the favoured events)
    ego_events: np.ndarray       # [E, len(EVENTS)]
    partner_events: np.ndarray   # [E, len(EVENTS)]


def score_pair(layout: str, ego: Policy, partner: Policy, *, episodes: int, style: Utility | None = None) -> PairScore:
    """Play ``ego`` with ``partner`` (sides alternated) and score it; the style is the partner's (the human's)."""
    result = play(layout, ego, partner, episodes=episodes)
    if style is None:
        pref = np.full(episodes, np.nan)
    else:
        pref = np.array([style.preference_score(result.events[k, 1], result.events[k, 0]) for k in range(episodes)])
    return PairScore(result.returns, pref, result.events[:, 0], result.events[:, 1])


# ---------------------------------------------------------------------------------------------------------
# Behaviour cloning (the human model), rollouts as datasets, and the hybrid agent's two phases
# ---------------------------------------------------------------------------------------------------------

def new_policy(hidden: Sequence[int] = (64, 64), lr: float = 1e-3):
    """An SB3 actor-critic policy for Overcooked's features and 6 actions (what PPO trains and partners load)."""
    import gymnasium as gym
    from stable_baselines3.common.policies import ActorCriticPolicy

    from pbrl.envs.overcooked import FEATURE_DIM

    obs_space = gym.spaces.Box(-np.inf, np.inf, shape=(FEATURE_DIM,), dtype=np.float32)
    return ActorCriticPolicy(obs_space, gym.spaces.Discrete(N_ACTIONS), lambda _: lr, net_arch=list(hidden))


def save_atomic(saveable, path: Path) -> Path:
    """``saveable.save(path)`` (an SB3 model or policy) through a temporary sibling and a rename."""
    tmp = atomic_path(path)
    saveable.save(tmp)
    commit_atomic(tmp, path)
    return path


def train_bc(out: str | Path, dataset: str | Path, *, steps: int = 20_000, seed: int = 0, batch_size: int = 256,
             lr: float = 1e-3, hidden: Sequence[int] = (64, 64), progress: bool = True) -> Path:
    """Behaviour-clone a trajectory dataset (e.g. the human trials) into ``out/policy.pt`` on pbrl's loop
    (checkpoints, exact resume, TensorBoard). Carroll et al.'s human model: a 64x64 MLP on features.

    The dataset is read and checked before ``out`` is made; the run resumes only on the file it started on (its
    sha256 in ``data.json``)."""
    from pbrl.data.registry import load_dataset

    out = Path(out)
    data = load_dataset(str(dataset), preferences=False)
    _check_discrete(data.trajectories, str(dataset))
    with run_directory(out, data.files(), resumable=("step_*.pt", "policy.pt")):
        _claim_config(out, {"dataset": str(dataset), "steps": steps, "seed": seed, "batch_size": batch_size, "lr": lr,
                            "hidden": list(hidden)})
        final = out / "policy.pt"
        if final.exists():
            return final
        return _train_bc_in(out, data, steps, seed, batch_size, lr, hidden, progress)


def _train_bc_in(out: Path, data: LoadedDataset, steps: int, seed: int, batch_size: int, lr: float, hidden: Sequence[int],
                 progress: bool) -> Path:
    from pbrl.agents.hybrid import PolicyCloning
    from pbrl.data.transitions import TransitionSampler
    from pbrl.train.loop import TrainConfig, run_loop

    final = out / "policy.pt"
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    policy = new_policy(hidden, lr)
    learner = PolicyCloning(policy, lr=lr)
    sampler = TransitionSampler(data.trajectories, seed=seed)
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, weight_decay=0.0,
                      checkpoint_every=max(1, steps // 4), log_every=max(1, min(100, steps)))
    run_loop(learner, lambda: sampler.sample(batch_size), cfg, out, device=torch.device("cpu"),
             stateful={"sampler": sampler}, progress=progress, desc=f"bc {out.name}")
    return save_atomic(policy, final)


def _check_discrete(trajectories, where: str) -> None:
    space = trajectories.metadata.get("action_space", {})
    if not isinstance(space, dict) or space.get("type") != "discrete" or trajectories.act_dim != N_ACTIONS:
        raise DatasetError(describe(where, "action_space", repr(space) if space else f"act_dim {trajectories.act_dim}",
                                    f"discrete Overcooked actions (one-hot, {N_ACTIONS} wide)"))


def rollout_episodes(result, *, source: str) -> list:
    """The first policy's side of a recorded :func:`~pbrl.envs.overcooked.play` as pbrl episodes: features,
    one-hot actions, the team's sparse reward, and ``infos`` with its own events, its partner's
    (``partner_<event>``), and both columns (``x``, ``partner_x``), as the human-trials import writes them."""
    from pbrl.data.store import Episode
    from pbrl.envs.overcooked import step_infos

    if result.steps is None:
        raise ValueError("rollout_episodes needs play(..., record=True)")
    st, eye = result.steps, np.eye(N_ACTIONS, dtype=np.float32)
    out = []
    for k in range(len(result.returns)):
        out.append(Episode(st["obs"][k, :, 0].copy(), eye[st["actions"][k, :, 0]], st["rewards"][k].copy(), False,
                           st["final_obs"][k, 0].copy(), source, step_infos(st["events"][k], st["x"][k], 0)))
    return out


def pool_return(layout: str, policy: Policy, pool: Sequence[Policy], *, episodes: int = 8) -> float:
    """Mean team return of ``policy`` with each pool member (``episodes`` games each, sides alternated)."""
    return float(np.mean([play(layout, policy, p, episodes=episodes).returns.mean() for p in pool]))


def _pool_policies(pool_dirs: Sequence[str | Path], seed: int) -> list[PolicyPartner]:
    return [PolicyPartner.load(d, seed=seed + 1000 * i) for i, d in enumerate(pool_dirs)]


def train_hybrid(out: str | Path, layout: str, pool_dirs: Sequence[str | Path], preferences: str | Path, *,
                 cfg: HybridConfig | None = None, ppo: PPOConfig | None = None, seed: int = 0, eval_episodes: int = 8,
                 pretrained: str | Path | None = None, progress: bool = True) -> Path:
    """The hybrid offline-online agent (:mod:`pbrl.agents.hybrid`) in ``out``; returns ``out/model.zip``.

    1. pre-train: PPO against the pool of partner policies (``pool_dirs``), or take ``pretrained`` (a PPO run
       folder trained that way, shared by several styles);
    2. ``rounds`` times: one offline epoch on the labelled pairs of ``preferences`` (no interaction with the
       human), then PPO against the pool in chunks of ``recovery_steps`` until the pool return is back to
       ``recovery_target`` of the pre-trained one (at most ``max_recovery_chunks``).

    Every phase is a resumable run folder of its own; ``rounds.json`` records the return after each phase. The
    configs, the layout, the pool, ``pretrained`` and the labelled pairs are checked before ``out`` is made; the run
    resumes only on the files it started on (their sha256 in ``data.json``).
    """
    from pbrl.data.registry import load_dataset

    cfg = cfg or HybridConfig()
    ppo = ppo or PPOConfig()
    check_fields(cfg, "hybrid", "HybridConfig")
    check_fields(ppo, "ppo", "PPOConfig")
    check_layout(layout)
    _pool_policies(pool_dirs, seed)  # each member loads, or one line naming it
    if pretrained is not None and not (Path(pretrained) / "model.zip").is_file():
        raise ConfigError(describe(str(pretrained), "--pretrained", "no model.zip in it",
                                   "a PPO run folder trained against the pool (pbrl overcooked ppo --partners ...)"))
    data = load_dataset(str(preferences), option="--preferences")
    if data.preferences is None:
        raise DatasetError(describe(str(preferences), "preferences", "none", "a labelled dataset (pbrl data label)"))
    _check_discrete(data.trajectories, str(preferences))
    out = Path(out)
    with run_directory(out, data.files(), resumable=HYBRID_RESUMABLE):
        _claim_config(out, {"layout": layout, "pool": [str(d) for d in pool_dirs], "preferences": str(preferences),
                            "hybrid": asdict(cfg), "ppo": asdict(ppo), "seed": seed, "eval_episodes": eval_episodes,
                            "pretrained": str(pretrained or "")})
        final = out / "model.zip"
        if final.exists():
            return final
        return _train_hybrid_in(out, layout, pool_dirs, data, cfg, ppo, seed, eval_episodes, pretrained, progress)


def _train_hybrid_in(out: Path, layout: str, pool_dirs: Sequence[str | Path], data: LoadedDataset,
                     cfg: HybridConfig, ppo: PPOConfig, seed: int, eval_episodes: int, pretrained: str | Path | None,
                     progress: bool) -> Path:
    from stable_baselines3 import PPO

    from pbrl.agents.hybrid import HybridOffline
    from pbrl.data.preferences import PreferenceSampler
    from pbrl.train.loop import TrainConfig, run_loop

    final = out / "model.zip"
    pool_names = [str(d) for d in pool_dirs]
    if pretrained is None:
        pretrained = out / "pretrain"
        train_ppo(pretrained, layout, cfg.pretrain_steps, seed=seed, cfg=ppo, partners=_pool_policies(pool_dirs, seed),
                  partner_names=pool_names, progress=progress, budget_name="hybrid.pretrain_steps")
    current = Path(pretrained) / "model.zip"
    log_path = out / "rounds.json"
    log = json.loads(log_path.read_text()) if log_path.exists() else {}
    if "pretrained_return" not in log:
        log["pretrained_return"] = pool_return(layout, PolicyPartner.load(current, seed=seed), _pool_policies(pool_dirs, seed + 7),
                                               episodes=eval_episodes)
        log["rounds"] = []
        atomic_write_text(log_path, json.dumps(log, indent=1))
    target = cfg.recovery_target * log["pretrained_return"]
    n_pairs = len(data.preferences.used)
    offline_steps = max(1, int(round(cfg.offline_epochs * n_pairs / cfg.batch_size)))
    recovery = PPOConfig(**{**asdict(ppo), "shaping_horizon": 0.0})
    for r in range(cfg.rounds):
        rdir = out / f"round{r + 1}"
        if r < len(log["rounds"]):
            current = Path(log["rounds"][r]["model"])
            continue
        # offline: one epoch of the preference link on the same policy network
        offline_dir = rdir / "offline"
        if not (offline_dir / "model.zip").exists():
            model = PPO.load(current, device="cpu")
            torch.manual_seed(seed * 1000 + r)
            learner = HybridOffline(model.policy, cfg)
            sampler = PreferenceSampler(data.trajectories, data.preferences, seed=seed * 1000 + r)
            tc = TrainConfig(steps=offline_steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=seed, weight_decay=0.0,
                             checkpoint_every=offline_steps, log_every=max(1, min(50, offline_steps)))
            run_loop(learner, lambda s=sampler: s.sample(cfg.batch_size), tc, offline_dir, device=torch.device("cpu"),
                     stateful={"sampler": sampler}, progress=progress, desc=f"offline {out.name} r{r + 1}")
            save_atomic(model, offline_dir / "model.zip")
        after_offline = pool_return(layout, PolicyPartner.load(offline_dir, seed=seed), _pool_policies(pool_dirs, seed + 7),
                                    episodes=eval_episodes)
        # online: generalisation recovery against the pool
        current, returns = offline_dir / "model.zip", []
        for c in range(cfg.max_recovery_chunks):
            cdir = rdir / f"recover{c + 1}"
            current = train_ppo(cdir, layout, cfg.recovery_steps, seed=seed * 1000 + r * 10 + c, cfg=recovery,
                                partners=_pool_policies(pool_dirs, seed), partner_names=pool_names, init=current,
                                progress=progress, budget_name="hybrid.recovery_steps")
            returns.append(pool_return(layout, PolicyPartner.load(current, seed=seed), _pool_policies(pool_dirs, seed + 7),
                                       episodes=eval_episodes))
            if returns[-1] >= target:
                break
        log["rounds"].append({"model": str(current), "after_offline": after_offline, "after_recovery": returns})
        atomic_write_text(log_path, json.dumps(log, indent=1))
    tmp = atomic_path(final)
    tmp.write_bytes(Path(current).read_bytes())
    commit_atomic(tmp, final)
    return final
