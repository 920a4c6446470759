"""The agent-agnostic training loop: optimisers and schedulers, gradient clipping, bf16 autocast on CUDA,
TensorBoard scalars, a progress bar, atomic checkpoints with exact resume, and a non-finite flag kept on the
device (no host sync per step; checked before every log, checkpoint and evaluation).

It knows nothing of agents, environments or datasets: a *learner* is any ``nn.Module`` that declares

- ``optimizers() -> dict[str, OptimizerSpec]``: named parameter groups, each with its own optimiser;
- ``loss(batch, step) -> LossOutput``: one loss, or one loss per optimiser name. One backward runs through their
  sum and each optimiser steps its own parameters with the whole gradient they received, so a loss moves every
  parameter its graph reaches, whichever optimiser it is named for (OPPO's triplet loss reaches the encoder and
  z*); a loss that must not move a parameter detaches it (IQL's actor reads the critic's advantage detached).
  The names only group the losses for logging and select the optimisers (tested in ``tests/test_train.py``);
- optionally ``after_step(step)`` (target networks, EMA) and ``reset_optimizers(step) -> list[str]`` (a phase
  switch that restarts an optimiser, e.g. CPL's BC -> CPL switch).

Batches come from ``sample()``; objects whose state must survive a resume (samplers with their generators)
are passed as ``stateful``. Control agents (``pbrl.train.trainer``) and sequence-level objectives run on it
(:func:`run_loop`); models fitted in seconds inside another command, with no run directory, take the same steps
in memory (:func:`fit_in_memory`: the labelling critics). The run directory's helpers are here too, for both
kinds of run: :func:`resolve_device`, :func:`make_run_dir`, :func:`prepare_run_dir` (``config.toml``, a changed
config refused on resume), :func:`run_lock`, and :func:`run_directory`, which joins them with the data checksums
(``data.json``) and the clean-up after a failed start.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import tomli_w
import tomllib
import torch
import torch.distributed as dist
from torch import Tensor, nn

from pbrl.core.training import SCHEDULES, LossOutput, OptimizerSpec
from pbrl.errors import CheckpointError, ConfigError, DatasetError, NonFiniteError, RunLockedError, describe
from pbrl.fields import param
from pbrl.io import LockHeld, Progress, atomic_path, atomic_write_text, commit_atomic, exclusive_lock

__all__ = ["Checkpoints", "LossOutput", "OptimizerSpec", "Optimizers", "TrainConfig", "check_same_data", "fit_in_memory",
           "make_run_dir", "prepare_run_dir", "record_data", "remove_unstarted", "resolve_device", "run_directory",
           "run_lock", "run_loop", "train_step"]


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainConfig:
    """The shared loop's settings (any learner). Evaluation fields are read by the control wiring."""

    steps: int = param(10_000, ge=1)            # gradient steps
    batch_size: int = param(32, ge=1)           # items per step (pairs, transitions or windows: what the agent declares)
    grad_accum: int = param(1, ge=1)            # micro-batches per step, gradients summed (each of batch_size items)
    lr: float = param(1e-4, gt=0)               # AdamW learning rate (optimisers that do not set their own)
    weight_decay: float = param(1e-4, ge=0)     # AdamW weight decay (0: Adam)
    grad_clip: float = param(1.0, ge=0)         # max global gradient norm per optimiser (0 disables)
    seed: int = param(0, ge=0, lt=2**63)        # fixes the initialisation, batches and dropout
    device: str = param("auto", pattern=r"auto|cpu|cuda(:\d+)?|mps")  # auto | cpu | cuda[:N] | mps
    threads: int = param(1, ge=1, le=1024)      # torch CPU threads (1 is fastest on a shared 2-core machine)
    amp: bool = False              # bf16 autocast on CUDA (ignored on CPU); off: it was slower for the MLPs (H100/H200)
    compile: bool = False          # torch.compile the loss (GPU)
    log_every: int = param(100, ge=1)           # TensorBoard scalars every N steps
    checkpoint_every: int = param(1000, ge=1)   # checkpoint every N steps (and at the end)
    keep_checkpoints: int = param(2, ge=1)      # how many recent checkpoints to keep
    eval_every: int = param(0, ge=0)            # evaluate every N steps (0: only at the end)
    eval_episodes: int = param(10, ge=0, le=100_000)  # episodes per evaluation
    eval_seed: int = param(100_000, ge=0, lt=2**31)  # env seeds eval_seed + i, apart from training seeds
    eval_dataset: str = param("", pattern=r"[^\x00-\x1f]{0,4096}")  # eval_episodes = 0: held-out dataset of the offline metrics


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA, else MPS, else the CPU; ``cpu``, ``cuda[:N]`` and ``mps`` as named (``cuda`` where there is
    none is one line of :class:`ConfigError`)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(describe("train.device", "device", "'cuda'", "'cpu' or 'auto' (no CUDA device here)"))
    return torch.device(name)


def make_run_dir(out: Path) -> None:
    """``out`` as a directory, or one line saying why it cannot be (a file is there, a parent is a file, no
    permission, a read-only disk)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(describe(str(out), "--out", "an existing file", "a run directory (new or a run's own)"))
    blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ConfigError(describe(str(out), "--out", f"a path under the file {blocking}", "a directory path"))
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ConfigError(describe(str(out), "--out", exc.strerror or type(exc).__name__,
                                   "a directory this user can write to")) from None


def prepare_run_dir(out: Path, asked: Mapping[str, Mapping[str, Any]], *,
                    read: Callable[[Path], Mapping[str, Mapping[str, Any]]] | None = None) -> None:
    """``out/config.toml``, the sections of fields a run depends on: written from ``asked`` for a new run (``None``
    values left out: TOML has no null); for an existing run, refused in one line naming the first fields that
    differ unless the stored config equals ``asked`` (a resume continues the run it started, never another).

    ``read(path)`` reads the stored file as the caller's config does (the control runs' :class:`RunConfig` fills
    the defaults a file of an older version lacks); plain TOML by default. Call it under :func:`run_lock`."""
    path = out / "config.toml"
    if path.exists():
        if read is not None:
            stored = read(path)
        else:
            with open(path, "rb") as f:
                stored = tomllib.load(f)
        if stored != asked:
            sections = sorted(set(stored) | set(asked))
            differ = [(s, k) for s in sections for k in sorted(set(stored.get(s, {})) | set(asked.get(s, {})))
                      if stored.get(s, {}).get(k) != asked.get(s, {}).get(k)]
            diffs = [f"{s}.{k}: stored {stored.get(s, {}).get(k)!r}, asked {asked.get(s, {}).get(k)!r}" for s, k in differ]
            raise ConfigError(describe(str(path), "config", "; ".join(diffs[:4]),
                                       "the same config to resume this run (or a new --out directory)"))
        return
    atomic_write_text(path, tomli_w.dumps({s: {k: v for k, v in fields.items() if v is not None}
                                           for s, fields in asked.items()}))


def check_same_data(out: Path, files: Mapping[str, tuple[Path, str]]) -> None:
    """A run resumes only on the files it started on: refuse (before writing anything) where their sha256 changed.
    ``files`` maps a role ("trajectories", "pairs", ...) to (path, sha256)."""
    path = out / "data.json"
    if not path.exists():
        return
    recorded = json.loads(path.read_text())
    for role, (file, sha) in files.items():
        before = recorded.get(role, {}).get("sha256")
        if before is not None and before != sha:
            raise DatasetError(describe(str(file), "sha256", sha[:16] + "…", f"{before[:16]}…, the {role} this run "
                                        f"started on ({path}); train into a new --out to use the changed data"))


def record_data(out: Path, files: Mapping[str, tuple[Path, str]]) -> None:
    """``out/data.json``: the path and sha256 of every file the run reads (written once, at its start)."""
    path = out / "data.json"
    if not path.exists():
        atomic_write_text(path, json.dumps({role: {"file": str(file), "sha256": sha}
                                            for role, (file, sha) in files.items()}, indent=2) + "\n")


RESUMABLE = ("step_*.pt", "eval.json")
"""What makes a run directory worth keeping after a failure: a checkpoint or a finished evaluation."""


def remove_unstarted(out: Path, before: set[Path] | None, resumable: tuple[str, ...] = RESUMABLE) -> None:
    """After a failure, take back what this call wrote unless something resumable exists (``resumable``: glob
    patterns searched under ``out``): a run that never got going leaves no directory to block the corrected
    command. ``before`` is the directory's listing before the call (None: it did not exist)."""
    if not out.is_dir() or any(next(out.rglob(pattern), None) is not None for pattern in resumable):
        return
    if before is None:
        shutil.rmtree(out, ignore_errors=True)
        return
    for entry in set(out.iterdir()) - before:
        shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)


@contextmanager
def run_directory(out: Path, files: Mapping[str, tuple[Path, str]] | None = None, *,
                  resumable: tuple[str, ...] = RESUMABLE) -> Iterator[Path]:
    """The one way a command takes a run directory: ``out`` made (or refused in one line: :func:`make_run_dir`),
    locked for this process (:func:`run_lock`), checked against the data files it started on (``files``, recorded in
    ``data.json`` on first use), and, if the body fails before anything resumable exists, put back as it was (a
    failed start leaves nothing that blocks the corrected command; Ctrl-C included)."""
    out = Path(out)
    before = set(out.iterdir()) if out.is_dir() else None
    make_run_dir(out)
    with run_lock(out):
        try:
            if files:
                check_same_data(out, files)
                record_data(out, files)
            yield out
        except BaseException:
            remove_unstarted(out, before, resumable)
            raise


@contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold ``out``'s lock for a training run, or refuse in one line naming the process that holds it."""
    try:
        with exclusive_lock(out):
            yield
    except LockHeld as held:
        raise RunLockedError(describe(str(out), "run directory", f"locked by {held.holder}",
                                      "no other process training into it (wait for that one, or use another --out)")) from None


class Checkpoints:
    """``DIR/checkpoints/step_XXXXXXXX.pt``, written atomically, the newest ``keep`` kept."""

    def __init__(self, directory: Path, keep: int):
        self.directory = Path(directory)
        self.keep = keep

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete ``.step_*.pt.*.tmp`` files a killed write left behind (only the owner of the run calls this)."""
        stale = sorted(self.directory.glob(".step_*.tmp")) if self.directory.is_dir() else []
        for tmp in stale:
            tmp.unlink(missing_ok=True)
        return stale

    def load_latest(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that loads, with its state; a damaged newer one is skipped with a warning on
        stderr. None where there is none; :class:`CheckpointError` where none of them loads."""
        found = self.all()
        for path in reversed(found):
            try:
                state = torch.load(path, map_location="cpu", weights_only=False)  # RNG states stay CPU tensors
            except Exception as exc:  # a truncated zip, a pickle error, an empty file: all mean "damaged"
                reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
                print(f"pbrl: warning: {path}: unreadable ({reason}); trying the one before it", file=sys.stderr)
                continue
            if path != found[-1]:
                print(f"pbrl: warning: resuming from {path.name}, the newest checkpoint that loads", file=sys.stderr)
            return path, state
        if found:
            raise CheckpointError(describe(str(self.directory), "checkpoints", f"{len(found)} file(s), none readable",
                                           "a checkpoint written by pbrl (train into a new --out)"))
        return None

    def load_step(self, step: int) -> tuple[Path, dict[str, Any]]:
        """The checkpoint of ``step`` with its state, or one line naming the steps there are (or that it is damaged)."""
        path = self.directory / f"step_{step:08d}.pt"
        if not path.is_file():
            steps = [int(p.stem.split("_")[-1]) for p in self.all()]
            raise ConfigError(describe("--checkpoint", "step", step, f"one of the run's checkpoints {steps}"))
        try:
            return path, torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # a truncated zip, a pickle error, an empty file
            raise CheckpointError(describe(str(path), "checkpoint", f"unreadable ({type(exc).__name__})",
                                           "a checkpoint written by pbrl")) from None

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


def load_weights(module: nn.Module, state: dict[str, Any], path: Path) -> None:
    """``module.load_state_dict(state["agent"])``, or one line naming the checkpoint when it does not fit."""
    try:
        module.load_state_dict(state["agent"])
    except (RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0] if first else type(exc).__name__
        raise CheckpointError(f"{path}: weights: got {detail[:200]}, expected the parameters of this agent and config "
                              "(a checkpoint of another pbrl version? train into a new --out)") from None


def rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def _schedule(spec: OptimizerSpec, steps: int) -> Callable[[int], float]:
    """The learning-rate multiplier at step k (see :class:`OptimizerSpec`)."""
    if spec.schedule == "cosine":  # CosineAnnealingLR(T_max=steps) as a multiplier, the IQL paper's actor schedule
        def base(k: int) -> float:
            return 0.5 * (1.0 + math.cos(math.pi * min(k, steps) / max(steps, 1)))
    else:
        def base(k: int) -> float:
            return 1.0
    if spec.warmup_steps <= 0:
        return base
    start, length = spec.warmup_start, spec.warmup_steps
    return lambda k: base(k) * (1.0 if k < start else min(1.0, (k - start + 1) / length))


class Optimizers:
    """The learner's named optimisers with their schedulers and clip norms."""

    def __init__(self, specs: Mapping[str, OptimizerSpec], cfg: TrainConfig):
        self.specs = dict(specs)
        self.opt: dict[str, torch.optim.Optimizer] = {}
        self.sched: dict[str, torch.optim.lr_scheduler.LambdaLR] = {}
        for name, spec in self.specs.items():
            if spec.schedule not in SCHEDULES:
                raise ValueError(f"optimizer {name}: schedule: got {spec.schedule!r}, expected one of {SCHEDULES}")
            lr = cfg.lr if spec.lr is None else spec.lr
            wd = cfg.weight_decay if spec.weight_decay is None else spec.weight_decay
            fused = all(p.is_cuda for p in spec.params)  # one kernel per step on CUDA; CPU keeps the default
            self.opt[name] = torch.optim.AdamW(spec.params, lr=lr, weight_decay=wd, fused=fused or None)
            self.sched[name] = torch.optim.lr_scheduler.LambdaLR(self.opt[name], _schedule(spec, cfg.steps))
        self.clip = {n: (cfg.grad_clip if s.grad_clip is None else s.grad_clip) for n, s in self.specs.items()}

    @property
    def names(self) -> list[str]:
        return list(self.opt)

    def zero_grad(self) -> None:
        for o in self.opt.values():
            o.zero_grad(set_to_none=True)

    def step(self, norms_wanted: bool = True) -> dict[str, Tensor]:
        """Clip each group's gradient, step its optimiser and scheduler; returns each group's gradient norm (computed
        where a clip needs it or ``norms_wanted``: a log step)."""
        norms = {}
        for name, o in self.opt.items():
            clip = self.clip[name]
            if clip > 0 or norms_wanted:
                norms[name] = torch.nn.utils.clip_grad_norm_(self.specs[name].params, clip if clip > 0 else float("inf"))
            o.step()
            self.sched[name].step()
        return norms

    def reset(self, name: str) -> None:
        """Forget the optimiser's moments (a phase switch); the learning-rate schedule goes on."""
        self.opt[name].state.clear()

    def state_dict(self) -> dict[str, Any]:
        return {n: {"opt": self.opt[n].state_dict(), "sched": self.sched[n].state_dict()} for n in self.opt}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for n in self.opt:
            self.opt[n].load_state_dict(state[n]["opt"])
            self.sched[n].load_state_dict(state[n]["sched"])


@dataclass
class LoopResult:
    step: int              # the step reached
    start_step: int        # the step this call started from (a resume starts later than 0)
    train_time_s: float    # seconds in sampling + updates, this call
    sample_time_s: float   # seconds in sampling, this call
    finished: bool         # step == cfg.steps

    @property
    def steps_per_s(self) -> float | None:
        return (self.step - self.start_step) / self.train_time_s if self.train_time_s else None

    @property
    def sample_fraction(self) -> float | None:
        return self.sample_time_s / self.train_time_s if self.train_time_s else None


def train_step(learner: nn.Module, loss_fn: Callable[[Any, int], LossOutput], batch: Any, optimizers: Optimizers,
               step: int, *, amp: bool, norms_wanted: bool,
               more_batches: list[Any] = ()) -> tuple[LossOutput, dict[str, Tensor], Tensor, dict[str, Tensor]]:
    """One update: the loss under bf16 autocast (``amp``, CUDA), backward through the sum of the per-optimiser
    losses, clipped optimiser steps, then the learner's ``after_step`` hook (target networks, EMA).

    With ``more_batches`` (gradient accumulation), each of the ``1 + len(more_batches)`` micro-batches is
    back-propagated in turn with weight ``1 / count``, so the step follows the mean loss over all of them; the
    returned losses are those means and the output's metrics are the first micro-batch's.
    Returns (output, losses per optimiser, their sum, gradient norms); nothing here synchronises the device."""
    device_type = "cuda" if amp else "cpu"
    micro = [batch, *more_batches]
    scale = 1.0 / len(micro)
    optimizers.zero_grad()
    first: LossOutput | None = None
    summed: dict[str, Tensor] = {}
    for mb in micro:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
            output = loss_fn(mb, step)
        losses = output.per_optimizer(optimizers.names)
        total = sum(losses.values())
        (total * scale if len(micro) > 1 else total).backward()
        first = first or output
        for name, value in losses.items():
            summed[name] = summed.get(name, 0.0) + value.detach() * scale
    norms = optimizers.step(norms_wanted=norms_wanted)
    after_step = getattr(learner, "after_step", None)
    if after_step is not None:
        after_step(step)
    return first, summed, sum(summed.values()), norms


def fit_in_memory(learner: nn.Module, sample: Callable[[], Any], cfg: TrainConfig, *, progress: bool = False,
                  desc: str = "fit") -> None:
    """Train ``learner`` for ``cfg.steps`` steps of :func:`train_step` on batches from ``sample()``, keeping nothing on
    disk: no checkpoints, no TensorBoard, no resume. For models fitted in seconds inside another command (the
    labelling critics of ``pbrl data label``); whatever must be reproducible is seeded by the caller.

    Every step's loss joins a non-finite flag kept on the device; :class:`NonFiniteError` at the end where one was
    not finite, so no caller reads a model trained into NaN. The learner is left in eval mode."""
    optimizers = Optimizers(learner.optimizers(), cfg)
    reset_optimizers = getattr(learner, "reset_optimizers", None)
    nonfinite: Tensor | None = None
    learner.train()
    bar = Progress(cfg.steps, desc=desc, enabled=progress)  # off a terminal: a line every 30 s, not silence
    for step in range(cfg.steps):
        if reset_optimizers is not None:
            for name in reset_optimizers(step):
                optimizers.reset(name)
        batch = sample()
        more = [sample() for _ in range(cfg.grad_accum - 1)]
        _, _, total, _ = train_step(learner, learner.loss, batch, optimizers, step, amp=False, norms_wanted=False,
                                    more_batches=more)
        flag = ~torch.isfinite(total.detach())
        nonfinite = flag if nonfinite is None else nonfinite | flag  # on the loss's device: no sync per step
        bar.update()
    bar.close()
    learner.eval()
    if nonfinite is not None and bool(nonfinite):
        raise NonFiniteError(f"{desc}: loss: got a non-finite value, expected finite values (check the data)")


class NullWriter:
    """What a DDP rank other than 0 logs to: nothing (rank 0's TensorBoard events are the run's)."""

    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def run_loop(learner: nn.Module, sample: Callable[[], Any], cfg: TrainConfig, out: Path, *, device: torch.device,
             stateful: Mapping[str, Stateful] | None = None, evaluate: Callable[[int, Any], dict] | None = None,
             progress: bool = True, stop_at: int | None = None, desc: str = "train",
             extra_state: dict[str, Any] | None = None) -> LoopResult:
    """Train ``learner`` for ``cfg.steps`` steps into ``out`` (TensorBoard events, ``checkpoints/``), resuming
    from the newest checkpoint there. The global torch RNG is seeded with ``cfg.seed`` by the caller *before*
    the learner is built; its state is checkpointed, so a resumed run is bit-identical on the same CPU.

    ``evaluate(step, writer)`` runs every ``cfg.eval_every`` steps; ``stop_at`` ends this call early at that step
    with a checkpoint. ``extra_state`` is stored in every checkpoint (e.g. the resolved config).
    """
    out = Path(out)
    main = is_main()  # under DDP rank 0 alone writes; every rank resumes from the same checkpoint
    progress = progress and main
    stateful = dict(stateful or {})
    optimizers = Optimizers(learner.optimizers(), cfg)
    ckpts = Checkpoints(out / "checkpoints", cfg.keep_checkpoints)
    step = 0
    if main:
        ckpts.remove_stale_temporaries()
    barrier()  # no rank reads the checkpoints while rank 0 clears a killed write's leftovers
    loaded = ckpts.load_latest()
    if loaded is not None:
        latest, state = loaded
        load_weights(learner, state, latest)
        optimizers.load_state_dict(state["optimizers"])
        for name, obj in stateful.items():
            obj.load_state_dict(state["stateful"][name])
        set_rng_state(state["rng"], device)
        step = int(state["step"])
    result = LoopResult(step, step, 0.0, 0.0, step >= cfg.steps)
    end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    if step >= end:
        return result
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out)) if main else NullWriter()
    use_amp = cfg.amp and device.type == "cuda"
    loss_fn = torch.compile(learner.loss) if cfg.compile else learner.loss
    reset_optimizers = getattr(learner, "reset_optimizers", None)
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)  # accumulated on the device, no sync per step

    def check_finite(what: str) -> None:
        if bool(nonfinite):
            raise NonFiniteError(f"{out}: loss: got a non-finite value at or before step {step}, expected finite "
                                 f"values (no {what} written; lower train.lr or check the data)")

    def checkpoint() -> None:
        check_finite("checkpoint")
        if not main:
            return
        ckpts.save(step, {"step": step, "agent": learner.state_dict(), "optimizers": optimizers.state_dict(),
                          "stateful": {n: o.state_dict() for n, o in stateful.items()}, "rng": rng_state(device),
                          **(extra_state or {})})

    learner.train()
    bar = Progress(cfg.steps, initial=step, desc=desc, enabled=progress)
    while step < end:
        t0 = time.perf_counter()
        if reset_optimizers is not None:
            for name in reset_optimizers(step):
                optimizers.reset(name)
        batch = sample()
        more = [sample() for _ in range(cfg.grad_accum - 1)]
        t1 = time.perf_counter()
        logging = (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps
        output, losses, total, norms = train_step(learner, loss_fn, batch, optimizers, step, amp=use_amp,
                                                  norms_wanted=logging, more_batches=more)
        nonfinite |= ~torch.isfinite(total.detach())
        step += 1
        if logging and device.type == "cuda":
            torch.cuda.synchronize(device)  # only here: a sync per step would stall the launch queue
        t2 = time.perf_counter()
        result.sample_time_s += t1 - t0
        result.train_time_s += t2 - t0
        if logging:
            check_finite("log")
            writer.add_scalar("train/loss", total.item(), step)
            several = len(losses) > 1
            for name, norm in norms.items():
                writer.add_scalar(f"train/grad_norm/{name}" if several else "train/grad_norm", norm.item(), step)
                if several:
                    writer.add_scalar(f"train/loss/{name}", losses[name].item(), step)
                writer.add_scalar(f"train/lr/{name}" if several else "train/lr", optimizers.sched[name].get_last_lr()[0], step)
            writer.add_scalar("time/steps_per_s", (step - result.start_step) / max(result.train_time_s, 1e-9), step)
            writer.add_scalar("time/sample_fraction", result.sample_time_s / max(result.train_time_s, 1e-9), step)
            for k, v in output.metrics.items():
                writer.add_scalar(k, float(v), step)
            bar.set_postfix_str(f"loss={total.item():.3f}")
        if step % cfg.checkpoint_every == 0 or step == end:
            checkpoint()
        if evaluate is not None and cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
            check_finite("evaluation")
            learner.eval()
            evaluate(step, writer)
            learner.train()
        bar.update(1)
    bar.close(final_line=True)
    writer.flush()
    writer.close()
    result.step = step
    result.finished = step >= cfg.steps
    return result


# ---------------------------------------------------------------------------------------------------------
# Data parallel: the loop under torchrun / accelerate launch (DDP)
# ---------------------------------------------------------------------------------------------------------
# Both launchers set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in each process;
# :func:`ddp_setup` joins the process group from them (NCCL on CUDA, gloo on CPU). What changes in a run with W processes:
#
# - **the global batch stays the single-process batch**: ``train.batch_size`` is split into W equal shares; every
#   rank draws the same global indices (one seeded permutation per epoch) and keeps its own share
#   (:func:`rank_share`), so the pairs seen per step and the sampler's checkpointed state are those of one process;
# - **gradients**: the policy runs through :class:`torch.nn.parallel.DistributedDataParallel`, which averages the
#   ranks' gradients; each rank's loss is scaled so that the average is the gradient of the *global* batch's
#   (weighted, or token-averaged) mean, not a mean of per-rank means (:func:`global_mean`);
# - **files**: rank 0 alone writes (run directory and its lock, TensorBoard events, checkpoints, the final model and
#   metrics); every rank resumes from the newest checkpoint, so a restarted job continues where it stopped.
#
# With one process nothing here does anything: the single-process run is the reference the tests compare against.


def ddp_launched() -> bool:
    """Started by torchrun / accelerate with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def ddp_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 without a process group)."""
    return (dist.get_rank(), dist.get_world_size()) if ddp_active() else (0, 1)


def is_main() -> bool:
    return rank_and_world()[0] == 0


def ddp_setup(device: torch.device) -> tuple[torch.device, bool]:
    """Join the launcher's process group (once per process); returns the device this rank trains on
    (``cuda:LOCAL_RANK`` on CUDA) and whether this call created the group (the caller then tears it down)."""
    if not ddp_launched() or (dist.is_available() and dist.is_initialized()):
        return _rank_device(device), False
    if not dist.is_available():
        raise ConfigError(describe("WORLD_SIZE", "processes", os.environ["WORLD_SIZE"], "a torch built with "
                                   "torch.distributed (or one process)"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return _rank_device(device), True


def _rank_device(device: torch.device) -> torch.device:
    if device.type == "cuda" and ddp_launched():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def ddp_teardown(created: bool) -> None:
    if created and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if ddp_active():
        dist.barrier()


def check_batch(batch_size: int, option: str = "train.batch_size") -> None:
    """Refuse a global batch the processes cannot share equally."""
    world = rank_and_world()[1]
    if batch_size % world:
        raise ConfigError(describe(option, "global batch", batch_size, f"a multiple of the {world} processes "
                                   "(each takes an equal share; the global batch is the single-process batch)"))


def rank_share(indices: Tensor) -> Tensor:
    """This rank's contiguous share of a global batch's indices ``[B]`` -> ``[B / W]`` (all of them in one process)."""
    rank, world = rank_and_world()
    share = len(indices) // world
    return indices[rank * share:(rank + 1) * share]


def global_mean(total: Tensor, count: Tensor) -> Tensor:
    """``total / count`` in one process; across W ranks ``W * total / Σ_ranks count``, so that DDP's average of the
    ranks' gradients is the gradient of the global ``Σ total / Σ count`` (a weighted or token-averaged mean over the
    whole global batch). ``count`` is summed without gradient (it is data, not a function of the weights)."""
    if not ddp_active():
        return total / count
    summed = count.detach().clone()
    dist.all_reduce(summed)
    return total * dist.get_world_size() / summed


def ddp_wrap(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` under DDP where several processes train (the wrapper averages gradients during backward), else
    ``module`` itself. The caller keeps the bare module for state dicts, so checkpoints do not depend on W."""
    if not ddp_active():
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
