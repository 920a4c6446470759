"""``pbrl bench``: an agent × dataset × seed grid, one cell at a time, resumable, every score beside oracle IQL.

Each cell is a ``pbrl train`` run in ``OUT/runs/<dataset>/<agent>/seed<seed>/``. A finished cell is reused only
when its resolved config and its dataset's checksums match what the cell recorded (``cell.json``); a cell whose
config or data changed is moved aside (``seed<seed>.stale-<time>``, said in one line with the changed values) and
trained again. An interrupted cell resumes from its checkpoint. Results: ``OUT/results.csv`` (one row per cell),
``OUT/results.md`` (mean ± std, ratio to ``iql-oracle``, gap closed), ``OUT/results.png`` (bar chart), each written
atomically.

One bench at a time per ``OUT``: a bench holds ``OUT``'s lock from its first write to its last (a second one is
refused in one line before anything moves), and moves a stale cell only while holding that cell's own lock (a
``pbrl train`` into it is refused the same way). ``--report-only`` reads the cells and takes no lock.

The ceiling check (DESIGN §7.1): with ``iql-oracle`` in the grid, seed ``seeds[0]`` is also trained at twice the
budget; the ceiling counts as converged where the 1× score is at least 0.9 of the 2× score.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pbrl
from pbrl.agents import AGENTS
from pbrl.data.preferences import sha256_file
from pbrl.data.registry import LoadedDataset, load_dataset
from pbrl.errors import ConfigError, DatasetError, NonFiniteError, describe
from pbrl.io import Progress, atomic_write_text
from pbrl.train.config import RunConfig, build_config
from pbrl.train.loop import make_run_dir, run_directory, run_lock

ORACLE = "iql-oracle"
CONTROL = "iql-constant"  # the survival-instinct control (pbrl.agents.iql.IQLConstant)
CSV_FIELDS = ["dataset", "agent", "seed", "steps", "scale", "normalized_score", "success_rate", "ratio_to_oracle",
              "gap_closed", "holdout_accuracy", "wall_time_s", "steps_per_s", "config_hash", "dataset_sha256",
              "pbrl_version", "action_mse", "preference_accuracy"]  # the last two: runs without a simulator


@dataclass
class Cell:
    dataset: str
    agent: str
    seed: int
    cfg: RunConfig
    run_dir: Path
    checksum: str        # of the files the cell reads (see dataset_checksum)
    budget: str = "1x"   # 1x, or 2x for the ceiling check
    settings: tuple[str, ...] = ()  # the agent's --set overrides (KEY=VALUE), as the card records its oracle's preset

    @property
    def name(self) -> str:
        """``two bc seed 0``, ``two iql-oracle@2x seed 0``: how the bench's lines name the cell."""
        return f"{self.dataset} {self.agent}{'@2x' if self.budget == '2x' else ''} seed {self.seed}"


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def config_hash(cfg: RunConfig) -> str:
    """sha256 of the resolved config. On a CPU, ``train.amp`` changes nothing (autocast runs on CUDA only), so a
    CPU cell hashes with it set to true, the default every CPU cell was recorded with until it became false:
    flipping the default does not send finished CPU cells back to training."""
    if cfg.train.amp is False and (cfg.train.device == "cpu" or cfg.train.device == "auto" and not cuda_available()):
        cfg = RunConfig.from_dict(cfg.to_dict())
        cfg.train.amp = True
    return hashlib.sha256(cfg.to_toml().encode()).hexdigest()[:16]


def dataset_checksum(data: LoadedDataset, with_preferences: bool) -> str:
    """One hash over the files a cell reads: the trajectories, and the labels where the agent uses them (so an
    ``iql-oracle`` cell stays valid when only the labels change). Cards' recorded sums, else the files' own."""
    files = data.files()
    sums = [files["trajectories"][1]] + ([files["preferences"][1]] if with_preferences and "preferences" in files else [])
    return hashlib.sha256("".join(sums).encode()).hexdigest()[:16]


def trajectories_source(data: LoadedDataset) -> tuple[str, str]:
    """``(cell folder name, --dataset value)`` of ``data``'s trajectories alone: the card whose trajectory file is
    this one, by path or by the sha256 the card records (a copy in another checkout), so that a label set's oracle
    cells are the base dataset's own; else the file itself."""
    import tomllib

    from pbrl.paths import find_resource

    path = Path(data.trajectories.path).resolve()
    name = path.name.removesuffix(path.suffix)
    card = find_resource("datasets", f"{name}.toml")
    if card is not None:
        try:
            fields = tomllib.loads(card.read_text())
        except (OSError, tomllib.TOMLDecodeError):
            fields = {}
        named = fields.get("trajectories")
        recorded = fields.get("checksums", {}).get(named or "")
        if named and ((card.parent / named).resolve() == path or recorded == sha256_file(path)):
            return name, name
    return name, str(path)


def parse_overrides(items: list[str]) -> dict[str, list[str]]:
    """``["cpl:agent.alpha=0.2", "train.lr=1e-3"]`` -> per-agent lists (``"*"``: every agent)."""
    out: dict[str, list[str]] = {}
    for item in items:
        agent, _, rest = item.partition(":") if ":" in item.split("=", 1)[0] else ("*", "", item)
        out.setdefault(agent, []).append(rest)
    return out


def plan(agents: list[str], datasets: list[str], seeds: list[int], out: Path, *, steps: int | None = None,
         scale: str = "cpu", overrides: list[str] = (), ceiling_check: bool = True
         ) -> tuple[list[Cell], dict[str, LoadedDataset]]:
    """Every cell of the grid, checked before anything is trained or written: unknown agents or datasets, and
    agents the dataset cannot serve (no labels, no rewards), fail here with one line."""
    from pbrl.train.trainer import check_inputs, needs_preferences

    for option, items in (("--agents", agents), ("--datasets", datasets), ("--seeds", seeds)):
        check_grid_list(option, list(items))
    unknown = [a for a in agents if a not in AGENTS]
    if unknown:
        raise ConfigError(describe("--agents", "agent", repr(unknown[0]), f"one of {sorted(AGENTS)}"))
    out_of_range = next((s for s in seeds if not 0 <= s < 2**63), None)  # train.seed's bounds, named as typed
    if out_of_range is not None:
        raise ConfigError(describe("--seeds", "seed", out_of_range, "integers >= 0 and < 2**63"))
    per_agent = parse_overrides(list(overrides))
    for name in per_agent:
        if name != "*" and name not in agents:
            raise ConfigError(describe("--set", "agent prefix", repr(name), f"one of the benchmarked agents {agents}"))
    loaded = {d: load_dataset(d, preferences=any(needs_preferences(a) for a in agents)) for d in datasets}
    cells = []
    for d in datasets:
        # an agent that reads no pairs (oracle IQL, the control) trains on the trajectories: one cell for all label sets
        label_free = trajectories_source(loaded[d]) if not all(needs_preferences(a) for a in agents) else None
        for a in agents:
            sets = per_agent.get("*", []) + per_agent.get(a, [])
            cell_name, source = (loaded[d].name, d) if needs_preferences(a) else label_free
            for s in seeds:
                cfg = build_config(a, source, scale=scale, steps=steps, seed=s,
                                   overrides=["train.device=cpu", *sets] if scale == "cpu" else sets)
                check_inputs(cfg, loaded[d])
                checksum = dataset_checksum(loaded[d], needs_preferences(a))
                cells.append(Cell(loaded[d].name, a, s, cfg, out / "runs" / cell_name / a / f"seed{s}", checksum,
                                  settings=tuple(sets)))
            if a == ORACLE and ceiling_check:
                base = next(c for c in cells if c.dataset == loaded[d].name and c.agent == a and c.seed == seeds[0])
                cfg2 = RunConfig.from_dict(base.cfg.to_dict())
                cfg2.train.steps *= 2
                cells.append(Cell(loaded[d].name, a, seeds[0], cfg2, base.run_dir.parent.with_name(f"{a}@2x") /
                                  f"seed{seeds[0]}", base.checksum, "2x", base.settings))
    names = [data.name for data in loaded.values()]
    if len(set(names)) != len(names):
        raise ConfigError(describe("--datasets", "dataset names", names, "distinct names"))
    return cells, {data.name: data for data in loaded.values()}


def check_grid_list(option: str, items: list[Any]) -> None:
    """One axis of the grid: at least one item, each once (``--seeds 0,0`` would train and tabulate the same cell
    twice), else one line naming the option."""
    if not items:
        raise ConfigError(describe(option, "list", "nothing", "at least one comma-separated item"))
    repeated = next((item for i, item in enumerate(items) if item in items[:i]), None)
    if repeated is not None:
        raise ConfigError(describe(option, "list", f"{repeated!r} twice", "each item once"))


def cell_identity(cell: Cell) -> dict[str, str]:
    return {"config_hash": config_hash(cell.cfg), "dataset_sha256": cell.checksum}


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object the bench wrote, or None where it is missing or unreadable (then the cell is not reused)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def same_identity(cell: Cell, meta: dict[str, Any] | None) -> bool:
    """Whether the cell's recorded ``cell.json`` was made with this cell's config and data."""
    want = cell_identity(cell)
    return meta is not None and {k: meta.get(k) for k in want} == want


def finished_result(cell: Cell) -> dict[str, Any] | None:
    """The cell's stored eval.json when it finished with the same config and data, else None (reads only)."""
    meta = read_json(cell.run_dir / "cell.json")
    if same_identity(cell, meta) and meta.get("finished"):
        return read_json(cell.run_dir / "eval.json")
    return None


def config_changes(stored: dict[str, Any], asked: dict[str, Any], most: int = 4) -> list[str]:
    """``["train.lr: stored 0.0003, asked 0.001", ...]``: the fields two resolved configs disagree on."""
    changes = [f"{section}.{key}: stored {stored.get(section, {}).get(key)!r}, asked {asked.get(section, {}).get(key)!r}"
               for section in sorted(set(stored) | set(asked))
               for key in sorted(set(stored.get(section, {})) | set(asked.get(section, {})))
               if stored.get(section, {}).get(key) != asked.get(section, {}).get(key)]
    return changes[:most]


def stale_reason(cell: Cell, meta: dict[str, Any] | None) -> str:
    """Why a cell's folder cannot be reused: no record of it, other settings (the fields that changed, with stored and
    asked values), or other data (the checksums)."""
    if meta is None:
        return "no cell.json recording how it was trained"
    if meta.get("config_hash") != config_hash(cell.cfg):
        stored_config = cell.run_dir / "config.toml"
        try:
            changes = config_changes(RunConfig.load(stored_config).to_dict(), cell.cfg.to_dict())
        except (OSError, ValueError, ConfigError):  # never started training, or a config of an older version
            changes = []
        return "settings changed (" + ("; ".join(changes) or f"config hash {meta.get('config_hash')}, asked "
                                       f"{config_hash(cell.cfg)}") + ")"
    return f"its data changed (sha256 {str(meta.get('dataset_sha256'))[:16]}, now {cell.checksum})"


def move_aside(cell: Cell, meta: dict[str, Any] | None, say: Callable[[str], None]) -> None:
    """Move a stale cell's folder to ``seed<seed>.stale-<time>`` while holding the cell's own lock (a ``pbrl train``
    into it is refused in one line, and nothing moves), then say which cell moved, why and where."""
    reason = stale_reason(cell, meta)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    stale = cell.run_dir.with_name(f"{cell.run_dir.name}.stale-{stamp}")
    for n in range(2, 1000):  # two moves of one cell in the same second get their own folders
        if not stale.exists():
            break
        stale = cell.run_dir.with_name(f"{cell.run_dir.name}.stale-{stamp}-{n}")
    with run_lock(cell.run_dir):
        os.rename(cell.run_dir, stale)
    say(f"pbrl bench: {cell.name}: {reason}; moved the old cell to {stale}")


def prepare_cell(cell: Cell, say: Callable[[str], None] = print) -> dict[str, Any] | None:
    """The cell's stored result when it is finished with the same config and data, else None after making the cell
    ready to train: an unfinished cell of the same config stays (it resumes), a stale one is moved aside."""
    done = finished_result(cell)
    if done is not None:
        return done
    meta_path = cell.run_dir / "cell.json"
    meta = read_json(meta_path)
    if same_identity(cell, meta):
        return None
    if cell.run_dir.exists():
        move_aside(cell, meta, say)
    cell.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(meta_path, json.dumps({**cell_identity(cell), "finished": False}, indent=2) + "\n")
    return None


def run_cell(cell: Cell, progress: bool, say: Callable[[str], None] = print,
             where: dict[str, Any] | None = None) -> dict[str, Any]:
    """Reuse, resume or train one cell (its steps reported through the training loop's progress); ``where`` (the
    Ray task and node that trained it) is recorded in its ``cell.json``."""
    from pbrl.train.trainer import train

    done = prepare_cell(cell, say)
    if done is not None:
        return {**done, "reused": True}
    t0 = time.perf_counter()
    result = train(cell.cfg, cell.run_dir, progress=progress)
    wall = time.perf_counter() - t0
    meta = {**cell_identity(cell), "finished": True, "wall_time_s": wall, **(where or {})}
    atomic_write_text(cell.run_dir / "cell.json", json.dumps(meta, indent=2) + "\n")
    return {**result, "reused": False}


def wall_time(cell: Cell) -> float | None:
    return (read_json(cell.run_dir / "cell.json") or {}).get("wall_time_s")


def summarise(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (dataset, agent): per-seed scores, mean, std."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["agent"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        scores = [r["normalized_score"] for r in rs if r["normalized_score"] is not None]
        success = [r["success_rate"] for r in rs if r.get("success_rate") not in (None, "")]
        out[key] = {"scores": scores, "seeds": [r["seed"] for r in rs],
                    "mean": statistics.fmean(scores) if scores else None,
                    "std": statistics.pstdev(scores) if len(scores) > 1 else 0.0,
                    "success": statistics.fmean(success) if success else None,
                    "steps": rs[0]["steps"], "scale": rs[0]["scale"],
                    "holdout": [r["holdout_accuracy"] for r in rs if r.get("holdout_accuracy") not in (None, "")]}
    return out


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """``ratio_to_oracle`` = score / mean oracle score, ``gap_closed`` = (score − BC) / (oracle − BC), per dataset."""
    means = {k: v["mean"] for k, v in summarise(rows).items()}
    for r in rows:
        oracle, bc = means.get((r["dataset"], ORACLE)), means.get((r["dataset"], "bc"))
        s = r["normalized_score"]
        r["ratio_to_oracle"] = s / oracle if s is not None and oracle else None
        r["gap_closed"] = (s - bc) / (oracle - bc) if s is not None and oracle is not None and bc is not None \
            and oracle != bc else None


def markdown(rows: list[dict[str, Any]], ceiling: dict[str, dict[str, Any]], command: str) -> str:
    stats = summarise(rows)
    fmt = lambda v, p=1: "–" if v is None else f"{v:.{p}f}"  # noqa: E731
    lines = [f"`{command}`", "",
             "| dataset | agent | steps | scale | seeds | normalized score (per seed) | ratio to oracle | gap closed | "
             "success | reward-model held-out acc. |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (d, a), s in stats.items():
        oracle, bc = stats.get((d, ORACLE), {}).get("mean"), stats.get((d, "bc"), {}).get("mean")
        ratio = s["mean"] / oracle if s["mean"] is not None and oracle else None
        gap = (s["mean"] - bc) / (oracle - bc) if None not in (s["mean"], oracle, bc) and oracle != bc else None
        per_seed = ", ".join(f"{x:.1f}" for x in s["scores"])
        acc = fmt(statistics.fmean(s["holdout"]), 3) if s["holdout"] else "–"
        lines.append(f"| {d} | {a} | {s['steps']} | {s['scale']} | {len(s['scores'])} | {fmt(s['mean'])} ± "
                     f"{fmt(s['std'])} ({per_seed}) | {fmt(ratio, 2)} | {fmt(gap, 2)} | "
                     f"{fmt(None if s['success'] is None else 100 * s['success'])} | {acc} |")
    lines.append("")
    for d, c in ceiling.items():
        verdict = "meets the 2x-budget rule" if c["converged"] else "**ceiling not converged**"
        lines.append(f"- {d}: oracle IQL seed {c['seed']} scores {fmt(c['score_1x'])} at {c['steps_1x']} steps and "
                     f"{fmt(c['score_2x'])} at {c['steps_2x']} (ratio {fmt(c['ratio'], 2)}): {verdict} (rule: ≥ 0.9).")
    for d, above in above_ceiling(rows).items():
        why = ("the survival control is among them, so a positive reward alone beats the true one on this data: "
               "read agents against the control, not as fractions of the oracle" if any(a.startswith(f"{CONTROL} (")
                                                                                         for a in above)
               else "train the oracle longer (DESIGN §7.1) before reading ratios as fractions of a ceiling")
        lines.append(f"- {d}: **the oracle is no ceiling at this budget**: {', '.join(above)} score(s) more than 1.1 × "
                     f"oracle IQL; {why}.")
    for d, line in control_margins(rows).items():
        lines.append(f"- {d}: {line}")
    for d in {r["dataset"] for r in rows}:
        oracle, bc = stats.get((d, ORACLE), {}).get("mean"), stats.get((d, "bc"), {}).get("mean")
        if oracle is not None and bc is not None:
            kind = "discriminates" if bc <= 0.7 * oracle else "does not discriminate (claim nothing)"
            lines.append(f"- {d}: BC / oracle = {bc / oracle:.2f}: {kind} (rule: BC ≤ 0.7 × oracle).")
    return "\n".join(lines) + "\n"


def control_margins(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Per dataset with the survival control in the grid: its score, and every other agent's margin over it."""
    stats = summarise(rows)
    out = {}
    for (d, a), s in stats.items():
        if a != CONTROL or s["mean"] is None:
            continue
        margins = [f"{b} {o['mean'] - s['mean']:+.1f}" for (d2, b), o in stats.items()
                   if d2 == d and b != CONTROL and o["mean"] is not None]
        out[d] = (f"survival control `{CONTROL}` (IQL with every reward 1: no reward, no labels) scores "
                  f"{s['mean']:.1f} ± {s['std']:.1f}; margin over it: {', '.join(margins)}. Offline RL with a positive "
                  "reward learns to stay alive inside the data (Li et al., 2023): an agent's labels are worth only its "
                  "margin over this row.")
    return out


def above_ceiling(rows: list[dict[str, Any]], margin: float = 1.1) -> dict[str, list[str]]:
    """Per dataset, the agents whose mean score exceeds ``margin`` × the oracle's mean: the oracle is then no ceiling."""
    stats = summarise(rows)
    out: dict[str, list[str]] = {}
    for (d, a), s in stats.items():
        oracle = stats.get((d, ORACLE), {}).get("mean")
        if a != ORACLE and oracle and s["mean"] is not None and s["mean"] > margin * oracle:
            out.setdefault(d, []).append(f"{a} ({s['mean']:.1f})")
    return out


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = summarise(rows)
    datasets = list(dict.fromkeys(d for d, _ in stats))
    agents = list(dict.fromkeys(a for _, a in stats))
    fig, axes = plt.subplots(1, len(datasets), figsize=(1.2 * len(agents) * len(datasets) + 2, 3.6), squeeze=False)
    for ax, d in zip(axes[0], datasets):
        names = [a for a in agents if (d, a) in stats]
        means = [stats[(d, a)]["mean"] or 0.0 for a in names]
        stds = [stats[(d, a)]["std"] for a in names]
        colors = ["#888888" if a == ORACLE else "#d08c2c" if a == CONTROL else "#3b75af" for a in names]
        ax.bar(range(len(names)), means, yerr=stds, color=colors, capsize=3)
        for i, a in enumerate(names):
            ax.scatter([i] * len(stats[(d, a)]["scores"]), stats[(d, a)]["scores"], color="black", s=8, zorder=3)
        if stats.get((d, ORACLE), {}).get("mean") is not None:
            ax.axhline(stats[(d, ORACLE)]["mean"], color="#888888", ls="--", lw=1)
        ax.set_xticks(range(len(names)), [f"{a}\n{stats[(d, a)]['steps']} steps" for a in names], fontsize=7)
        ax.set_title(f"{d} ({stats[(d, names[0])]['scale']} presets, mean ± std, dots: seeds)", fontsize=8)
        ax.set_ylabel("normalized score")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_text(path, buf.getvalue())


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS})
    atomic_write_text(path, buf.getvalue())


def record_in_card(data: LoadedDataset, rows: list[dict[str, Any]], ceiling: dict[str, Any] | None,
                   command: str) -> Path | None:
    """Store this bench's oracle IQL score (``[oracle]``) and, where it ran, the survival control's (``[control]``)
    in the dataset's card, for the demo to show; ``settings`` names the agent's ``--set`` overrides (the preset the
    oracle was measured at, e.g. d3rlpy's defaults ``agent.observations=raw``), empty for the shipped preset."""
    import tomli_w
    import tomllib

    from pbrl.paths import find_resource

    card_path = find_resource("datasets", f"{data.name}.toml")
    if card_path is None:
        return None
    card = tomllib.loads(card_path.read_text())
    recorded = False
    for table, agent in (("oracle", ORACLE), ("control", CONTROL)):
        mine = [r for r in rows if r["dataset"] == data.name and r["agent"] == agent]
        if not mine:
            continue
        scores = [r["normalized_score"] for r in mine]
        card[table] = {"agent": agent, "normalized_score": statistics.fmean(scores),
                       "normalized_score_std": statistics.pstdev(scores) if len(scores) > 1 else 0.0,
                       "per_seed": scores, "seeds": [r["seed"] for r in mine], "steps": mine[0]["steps"],
                       "scale": mine[0]["scale"], "settings": list(mine[0].get("settings", [])), "command": command,
                       "pbrl_version": pbrl.__version__}
        recorded = True
    if "oracle" in card and any(r["agent"] == ORACLE and r["dataset"] == data.name for r in rows):
        if ceiling:
            card["oracle"].update({"converged": ceiling["converged"], "score_2x": ceiling["score_2x"],
                                   "steps_2x": ceiling["steps_2x"]})
        card["oracle"]["exceeded_by"] = above_ceiling(rows).get(data.name, [])
    if not recorded:
        return None
    atomic_write_text(card_path, tomli_w.dumps(card))
    return card_path


RESULT_FILES = ("results.csv", "results.md", "results.png", "ceiling.json")


def bench(agents: list[str], datasets: list[str], seeds: list[int], out: str | os.PathLike, *, steps: int | None = None,
          scale: str = "cpu", overrides: list[str] = (), ceiling_check: bool = True, progress: bool = True,
          record: bool = False, command: str | None = None, report_only: bool = False,
          ray: RaySettings | None = None) -> list[dict[str, Any]]:
    """Run (or reuse) every cell, then write results.csv / results.md / results.png into ``out``. With
    ``report_only`` nothing is trained: the results hold the finished cells and name the missing ones. With
    ``ray``, the cells to train run as Ray tasks (:func:`train_on_ray`), the rest is the same.

    Everything is checked before the first write: the grid (:func:`plan`), then ``out`` and the result files in it
    (one line each). A bench then holds ``out``'s lock to its end; where it fails before any cell has a checkpoint,
    what it created is removed again (:func:`pbrl.train.loop.run_directory`)."""
    out = Path(out)
    command = command or "pbrl " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    cells, loaded = plan(agents, datasets, seeds, out, steps=steps, scale=scale, overrides=overrides,
                         ceiling_check=ceiling_check)
    for note in dict.fromkeys(note for cell in cells for note in cell.cfg.notes):  # once per agent, not per cell
        print(note, file=sys.stderr)
    if report_only:  # reads the cells only: no lock, so it can tabulate a bench that is still running
        rows, ceiling_rows, missing = collect(cells, report_only=True, progress=progress)
        if not rows:
            raise ConfigError(describe(str(out), "finished cells", "none of the grid's " + str(len(cells)),
                                       "at least one cell trained with this config (run without --report-only first)"))
        make_run_dir(out)
        check_result_files(out)
        return write_results(out, rows, ceiling_rows, missing, loaded, record, command)
    with run_directory(out):
        check_result_files(out)
        if ray is not None:
            train_on_ray([c for c in cells if finished_result(c) is None], ray, progress=progress)
        rows, ceiling_rows, missing = collect(cells, report_only=False, progress=progress)
        return write_results(out, rows, ceiling_rows, missing, loaded, record, command)


def check_result_files(out: Path) -> None:
    """The files the bench writes at its end, checked before the first cell (a folder named ``results.csv`` would
    otherwise fail the bench after all its training)."""
    from pbrl.io import output_file

    for name in RESULT_FILES:
        output_file("--out", out / name, replace=True)  # the bench's own reports: replaced on every run


def collect(cells: list[Cell], *, report_only: bool, progress: bool
            ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]], list[str]]:
    """Every cell's result row, training the missing cells unless ``report_only``: (rows, the 2x ceiling rows per
    dataset, the names of the cells not yet run). Progress: a bar over the cells on a terminal, off one a line per
    cell and a status line at least every 30 s; inside a cell the training loop reports its steps."""
    rows, ceiling_rows, missing = [], {}, []
    bar = Progress(len(cells), desc="pbrl bench", unit="cell", enabled=progress)
    for number, cell in enumerate(cells, 1):
        bar.set_postfix_str(cell.name)
        result = finished_result(cell)
        if result is None and report_only:
            missing.append(cell.name)
            bar.update(1)
            continue
        if progress and not report_only:
            reused = ": finished earlier with these settings, reused" if result is not None else ""
            bar.write(f"pbrl bench: cell {number}/{len(cells)}: {cell.name}{reused}")
        if result is None:
            result = run_cell(cell, progress=progress, say=bar.write)
        row = {"dataset": cell.dataset, "agent": cell.agent, "seed": cell.seed, "steps": result["steps"],
               "scale": cell.cfg.scale, "normalized_score": result.get("normalized_score"),
               "success_rate": result.get("success_rate"),
               "holdout_accuracy": (result.get("reward_model") or {}).get("holdout_accuracy"),
               "wall_time_s": wall_time(cell), "steps_per_s": result.get("steps_per_s"),
               "action_mse": result.get("action_mse"), "preference_accuracy": result.get("preference_accuracy"),
               "config_hash": config_hash(cell.cfg), "dataset_sha256": cell.checksum,
               "pbrl_version": pbrl.__version__, "settings": list(cell.settings)}
        if cell.budget == "2x":
            ceiling_rows[cell.dataset] = row
        else:
            rows.append(row)
        bar.update(1)
    bar.close(final_line=not report_only)
    return rows, ceiling_rows, missing


def write_results(out: Path, rows: list[dict[str, Any]], ceiling_rows: dict[str, dict[str, Any]], missing: list[str],
                  loaded: dict[str, LoadedDataset], record: bool, command: str) -> list[dict[str, Any]]:
    """Ratios, the ceiling check, and the result files (each written atomically); with ``record``, the oracle and
    control scores in the datasets' cards. Returns the rows."""
    add_ratios(rows)
    ceiling = {}
    for d, row2 in ceiling_rows.items():
        row1 = next((r for r in rows if r["dataset"] == d and r["agent"] == ORACLE and r["seed"] == row2["seed"]), None)
        if row1 is None:
            continue
        s1, s2 = row1["normalized_score"], row2["normalized_score"]
        ratio = s1 / s2 if s1 is not None and s2 else None
        ceiling[d] = {"seed": row2["seed"], "score_1x": row1["normalized_score"], "steps_1x": row1["steps"],
                      "score_2x": row2["normalized_score"], "steps_2x": row2["steps"], "ratio": ratio,
                      "converged": ratio is not None and ratio >= 0.9}
    write_csv(rows, out / "results.csv")
    atomic_write_text(out / "ceiling.json", json.dumps(ceiling, indent=2) + "\n")
    atomic_write_text(out / "results.md", markdown(rows, ceiling, command)
                      + (f"- not yet run (`--report-only`): {'; '.join(missing)}.\n" if missing else ""))
    plot(rows, out / "results.png")
    if record:
        for d, data in loaded.items():
            record_in_card(data, rows, ceiling.get(d), command)
    return rows


# ---------------------------------------------------------------------------------------------------------
# The Ray backend: one task per cell
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RaySettings:
    """Where and how the cells run on Ray: ``address`` None starts a local Ray (``ray.init()``), else joins that
    cluster (``auto``, ``ray://host:10001``, ``host:6379``); each task declares ``cpus_per_cell`` CPUs and
    ``gpus_per_cell`` GPUs (a fraction shares one GPU between cells); a task whose worker dies (killed, node lost)
    is run again up to ``retries`` times and resumes the cell from its newest checkpoint."""

    address: str | None = None
    cpus_per_cell: float = 1.0
    gpus_per_cell: float = 0.0
    retries: int = 3


def ray_cell(cell: Cell, cwd: str) -> dict[str, Any]:
    """The body of one Ray task: train (or resume) ``cell`` in the driver's working directory (a cluster shares it:
    the repository and datasets on a shared file system at the same path), recording the task and node."""
    import ray

    os.chdir(cwd)
    context = ray.get_runtime_context()
    where = {"backend": "ray", "ray_task_id": context.get_task_id(), "ray_node_id": context.get_node_id(),
             "pid": os.getpid()}
    return run_cell(cell, progress=False, say=print, where=where)


def train_on_ray(cells: list[Cell], settings: RaySettings, *, progress: bool) -> None:
    """Train ``cells`` (each prepared here first: a stale cell moved aside by the driver, which holds the bench's
    lock) as Ray tasks, one per cell with its resources declared, and wait for all of them. A task that fails is
    reported with the cell's own one-line error; a killed worker's task is retried by Ray and resumes."""
    if not cells:
        return
    try:
        import ray
    except ImportError:
        raise ConfigError(describe("--backend", "backend", "'ray'", "the ray package installed (pip install "
                                   "'pbrl[ray]')")) from None
    for cell in cells:
        prepare_cell(cell)
    started = not ray.is_initialized()
    if started:
        import logging

        ray.init(address=settings.address, include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False)
    task = ray.remote(ray_cell).options(num_cpus=settings.cpus_per_cell, num_gpus=settings.gpus_per_cell,
                                        max_retries=settings.retries, retry_exceptions=False)
    try:
        pending = {task.remote(cell, os.getcwd()): cell for cell in cells}
        bar = Progress(len(cells), desc="pbrl bench (ray)", unit="cell", enabled=progress)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=30.0)
            for ref in done:
                cell = pending.pop(ref)
                try:
                    ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # the cell's own error, as one line
                    cause = exc.cause if isinstance(exc.cause, Exception) else None
                    if isinstance(cause, ConfigError | DatasetError | NonFiniteError):
                        raise cause from None
                    raise
                bar.write(f"pbrl bench: {cell.name}: finished on ray")
                bar.update(1)
        bar.close(final_line=True)
    finally:
        if started:
            ray.shutdown()
