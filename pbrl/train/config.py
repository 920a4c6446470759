"""Run configuration: dataclasses, TOML presets (``agents/NAME.toml``, scales ``cpu`` and ``paper``) and
``--set section.key=value`` overrides. The resolved config is what ``DIR/config.toml`` holds."""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w
import tomllib

from pbrl.agents import AGENTS, AgentConfig
from pbrl.errors import ConfigError, describe
from pbrl.fields import INVALID, check_fields, coerce, set_fields, short_repr, type_name  # noqa: F401 (set_fields: re-exported for callers)
from pbrl.paths import find_resource
from pbrl.train.loop import TrainConfig

SCALES = ("cpu", "paper", "cpu-locomotion", "paper-locomotion")  # *-locomotion: CPL only (cpl-human)


@dataclass
class RunConfig:
    agent: str
    dataset: str
    scale: str = "cpu"
    train: TrainConfig = field(default_factory=TrainConfig)
    agent_config: AgentConfig = field(default_factory=AgentConfig)
    # what build_config resolved on the user's behalf, as warning lines for the commands to print (not stored:
    # config.toml holds the resolved values themselves)
    notes: list[str] = field(default_factory=list, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"run": {"agent": self.agent, "dataset": self.dataset, "scale": self.scale},
                "train": dataclasses.asdict(self.train), "agent": dataclasses.asdict(self.agent_config)}

    def to_toml(self) -> str:
        d = self.to_dict()  # TOML has no null: an unset optional field is left out and reads back as None
        return tomli_w.dumps({s: {k: v for k, v in t.items() if v is not None} for s, t in d.items()})

    def validate(self, where: str | Callable[[str], str]) -> RunConfig:
        """Every field within its declared bounds (:mod:`pbrl.fields`), else one :class:`ConfigError` line naming
        ``where`` (or ``where("section.field")``: the flag or file that set it)."""
        check_fields(self.train, "train", where)
        check_fields(self.agent_config, "agent", where)
        return self

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> RunConfig:
        run = d.get("run", {})
        agent = run.get("agent")
        if agent not in AGENTS:
            raise ConfigError(describe(where, "run.agent", repr(agent), f"one of {sorted(AGENTS)}"))
        cfg = cls(agent=agent, dataset=str(run.get("dataset", "")), scale=str(run.get("scale", "cpu")),
                  agent_config=AGENTS[agent].Config())
        for section in ("train", "agent"):
            for key, value in d.get(section, {}).items():
                _set_field(cfg, section, key, value, where)
        return cfg.validate(where)

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        with open(path, "rb") as f:
            return cls.from_dict(tomllib.load(f), str(path))


def _set_field(cfg: RunConfig, section: str, key: str, value: Any, where: str) -> None:
    if section == "run":
        if key not in ("dataset", "scale"):
            raise ConfigError(describe(where, f"run.{key}", "unknown field", "run.dataset or run.scale"))
        setattr(cfg, key, str(value))
        return
    target = cfg.train if section == "train" else cfg.agent_config if section == "agent" else None
    if target is None:
        raise ConfigError(describe(where, f"{section}.{key}", "unknown section", "train.<field> or agent.<field>"))
    fields = {f.name: f for f in dataclasses.fields(target)}
    if key not in fields:
        raise ConfigError(describe(where, f"{section}.{key}", "unknown field", f"one of {sorted(fields)}"))
    hint = typing.get_type_hints(type(target))[key]
    coerced = coerce(value, hint)
    if coerced is INVALID:
        raise ConfigError(describe(where, f"{section}.{key}", f"{short_repr(value)} ({type(value).__name__})",
                                   type_name(hint)))
    setattr(target, key, coerced)


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"agent.alpha=0.2"`` -> ``("agent", "alpha", 0.2)``; the value is read as TOML, else as a string."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(describe("--set", "override", repr(text), "section.key=value, e.g. agent.alpha=0.2"))
    key, raw = text.split("=", 1)
    section, name = key.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except ValueError:  # TOMLDecodeError, or an integer past Python's digit limit: kept as text, refused by type
        value = raw.strip()
    return section, name, value


def load_preset(agent: str, scale: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The ``[scale.train]`` and ``[scale.agent]`` tables of ``agents/<agent>.toml`` (empty if there is none).
    A preset with ``extends = "other"`` starts from ``other``'s tables and replaces the keys it names."""
    path = find_resource("agents", f"{agent}.toml")
    if path is None:
        return {}
    with open(path, "rb") as f:
        preset = tomllib.load(f)
    base: dict[str, Any] = {}
    if "extends" in preset:
        parent = preset.pop("extends")
        if parent in (agent, *_seen) or find_resource("agents", f"{parent}.toml") is None:
            raise ConfigError(describe(str(path), "extends", repr(parent), "another preset in agents/, without a cycle"))
        base = load_preset(parent, scale, (*_seen, agent))
    if scale not in preset and not base:
        raise ConfigError(describe(str(path), f"scale [{scale}]", "missing", f"one of {sorted(preset)}"))
    tables = preset.get(scale, {})
    return {section: {**base.get(section, {}), **tables.get(section, {})} for section in {*base, *tables}}


def resolve_scale(scale: str, device: str) -> str:
    """``auto`` picks ``paper`` where CUDA is available, else ``cpu``."""
    if scale == "auto":
        import torch

        return "paper" if (device in ("auto", "cuda") and torch.cuda.is_available()) else "cpu"
    if scale not in SCALES:
        raise ConfigError(describe("--scale", "scale", repr(scale), f"one of {['auto', *SCALES]}"))
    return scale


def resolved_dataset(dataset: str) -> str:
    """A dataset given as a file path is stored absolute (``pbrl eval`` may run from another directory); a card
    name stays a name, found again through the search roots (:mod:`pbrl.paths`)."""
    path = Path(dataset)
    looks_like_path = "/" in dataset or path.suffix in (".h5", ".hdf5", ".toml")
    return str(path.resolve()) if looks_like_path and path.exists() else dataset


def build_config(agent: str, dataset: str, *, scale: str = "auto", overrides: list[str] = (),
                 **train_fields: Any) -> RunConfig:
    """Preset for (agent, scale), then ``train_fields`` (CLI flags such as steps, seed), then ``--set`` overrides."""
    if agent not in AGENTS:
        raise ConfigError(describe("--agent", "agent", repr(agent), f"one of {sorted(AGENTS)}"))
    dataset = resolved_dataset(dataset)
    parsed = [parse_override(o) for o in overrides]
    device = next((v for s, k, v in parsed if s == "train" and k == "device"), train_fields.get("device", "auto"))
    scale = resolve_scale(scale, str(device))
    preset = load_preset(agent, scale)
    cfg = RunConfig.from_dict({"run": {"agent": agent, "dataset": dataset, "scale": scale}, **preset},
                              f"agents/{agent}.toml [{scale}]")
    preset_steps = cfg.train.steps
    origin = {}
    for key, value in train_fields.items():
        if value is not None:
            origin[f"train.{key}"] = f"--{key.replace('_', '-')}"
            _set_field(cfg, "train", key, value, origin[f"train.{key}"])
    for section, key, value in parsed:
        origin[f"{section}.{key}"] = "--set"
        _set_field(cfg, section, key, value, "--set")
    cfg.validate(lambda key: origin.get(key, f"agents/{agent}.toml [{scale}]"))
    cfg.notes = fit_phases_to_budget(cfg, preset_steps, origin)
    return cfg


def fit_phases_to_budget(cfg: RunConfig, preset_steps: int, origin: dict[str, str]) -> list[str]:
    """Scale the agent's phases inside the budget (``budget_phases``: CPL's BC warm start and learning-rate warm-up)
    by ``train.steps / preset_steps`` where the user's budget is shorter than the preset's, so each keeps its share:
    CPL's cpu preset gives 1,600 of 4,000 steps to BC, and ``--steps 200`` would otherwise be BC from start to end.
    A longer budget keeps the preset's phases; a phase the user set with ``--set`` is theirs and never scaled.

    Returns warning lines for the command to print: what was scaled, and a warm start that fills the whole budget."""
    steps, agent_cfg = cfg.train.steps, cfg.agent_config
    budget = f"--steps {steps}" if origin.get("train.steps") == "--steps" else f"--set train.steps={steps}"
    scaled, names = [], []
    if steps < preset_steps:
        lowest = {f.name: int(f.metadata["bounds"].ge or 0) for f in dataclasses.fields(agent_cfg)
                  if "bounds" in f.metadata}
        for name in type(agent_cfg).budget_phases:
            before = getattr(agent_cfg, name)
            after = math.floor(before * steps / preset_steps + 0.5)  # rounded half up, the same on every platform
            after = max(after, lowest.get(name, 0))                  # a phase that must last a step keeps one
            if f"agent.{name}" not in origin and after != before:
                setattr(agent_cfg, name, after)
                scaled.append(f"agent.{name} {before} -> {after}")
                names.append(name)
    notes = []
    if scaled:
        notes.append(f"pbrl: warning: {cfg.agent}: {budget} shortens the {cfg.scale} preset's {preset_steps} steps; "
                     f"its phases keep their share: {', '.join(scaled)} (--set agent.{names[0]}=N to choose yourself)")
    warm_start = type(agent_cfg).warm_start
    if warm_start is not None and getattr(agent_cfg, warm_start) >= steps:
        notes.append(f"pbrl: warning: {cfg.agent}: agent.{warm_start} {getattr(agent_cfg, warm_start)} >= train.steps "
                     f"{steps}: the whole run is its warm start, the {cfg.agent} objective never trains")
    return notes
