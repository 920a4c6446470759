"""Who may import whom (docs/DESIGN §3), checked on the source: every ``import`` statement of every module of pbrl,
at the top, inside functions and under ``TYPE_CHECKING`` alike (a lazy import is still an arrow), relative imports
resolved. Nothing is imported: the files are parsed with :mod:`ast`.

The units are pbrl's subpackages (``core``, ``data``, ``envs``, ...), the top (``cli``, a module or a package, which
may import anything) and the base modules (``errors``, ``fields``, ``io``, ``paths``, ``stages`` (the scripts'
helper) and the root ``pbrl/__init__.py``): leaves that import only each other, open to every unit but ``core``.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "pbrl"
BASE_MODULES = ("pbrl", "pbrl.errors", "pbrl.fields", "pbrl.io", "pbrl.paths", "pbrl.stages")
TOP_UNITS = ("cli",)  # may import anything; nothing else imports it
SHARED_LOOP = "pbrl.train.loop"  # the one module of train that sequence may import

# what each constrained unit may import of pbrl besides itself ("base": the base modules); DESIGN §3
ALLOWED_UNITS: dict[str, set[str]] = {
    "core": set(),                                     # core -> torch only
    "nets": {"core", "base"},                          # nets -> core at most
    "envs": {"core", "base"},                          # simulators know no dataset, no agent, no network
    "agents": {"nets", "core", "data", "base"},        # data: batch types only (below)
    "sequence": {"core", SHARED_LOOP, "base"},         # never agents, envs, nets or the control wiring
    SHARED_LOOP: {"core", "base"},                     # no agent, env or dataset; sequence imports it, so nothing more
    "export": {"agents", "nets", "core", "base"},
    "deploy": {"pbrl.errors"},                         # and kept torch-free (below)
}
# third-party imports a unit may make (absent: any); the standard library is always allowed
ALLOWED_THIRD_PARTY: dict[str, set[str]] = {"core": {"torch"}}
FORBIDDEN_THIRD_PARTY: dict[str, set[str]] = {"deploy": {"torch"}}


@dataclass(frozen=True)
class Arrow:
    """One import: ``source`` (a file under pbrl/) imports ``target`` (a dotted module name, relative imports
    resolved) at ``line``, by ``statement`` (as written); ``names`` are the names a ``from`` import takes."""

    source: Path
    line: int
    target: str
    statement: str
    names: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"pbrl/{self.source.relative_to(PACKAGE_DIR)}:{self.line}: {self.statement}"


def module_of(path: Path) -> str:
    """``pbrl/envs/render.py`` -> ``pbrl.envs.render``; ``pbrl/envs/__init__.py`` -> ``pbrl.envs``."""
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def python_files() -> list[Path]:
    return sorted(p for p in PACKAGE_DIR.rglob("*.py") if "__pycache__" not in p.parts)


MODULES = {module_of(p) for p in python_files()}


def arrows_of(path: Path) -> list[Arrow]:
    """Every import in the file ``path`` under pbrl/ (see :func:`arrows_in`)."""
    return arrows_in(path.read_text(), path)


def arrows_in(code: str, path: Path) -> list[Arrow]:
    """Every import of ``code``, read as the file ``path``: ``import a.b`` -> ``a.b``; ``from a import b`` ->
    ``a.b`` where that is a pbrl module, else ``a``; relative imports resolved against the file's package."""
    module = module_of(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    arrows = []
    for node in ast.walk(ast.parse(code, filename=str(path))):
        if isinstance(node, ast.Import):
            arrows += [Arrow(path, node.lineno, alias.name, f"import {alias.name}") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                origin = ".".join(parts[: len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            names = tuple(alias.name for alias in node.names)
            statement = f"from {'.' * node.level}{node.module or ''} import {', '.join(names)}"
            submodules = tuple(n for n in names if f"{origin}.{n}" in MODULES)
            # `from pbrl.data import store`: an arrow to the module pbrl.data.store
            arrows += [Arrow(path, node.lineno, f"{origin}.{name}", statement, (name,)) for name in submodules]
            rest = tuple(n for n in names if n not in submodules)
            if rest:
                arrows.append(Arrow(path, node.lineno, origin, statement, rest))
    return arrows


def unit_of(module: str) -> str:
    """The unit a pbrl module belongs to: its subpackage, ``base`` for the base modules, or the top's name."""
    if module in BASE_MODULES:
        return "base"
    if module == SHARED_LOOP:
        return SHARED_LOOP
    return module.split(".")[1]


def graph_unit(unit: str) -> str:
    """The node of the subpackage graph: the shared loop is part of ``train``."""
    return "train" if unit == SHARED_LOOP else unit


def all_arrows() -> list[Arrow]:
    return [arrow for path in python_files() for arrow in arrows_of(path)]


def is_pbrl(target: str) -> bool:
    return target == "pbrl" or target.startswith("pbrl.")


def layer_violations(arrows: Iterable[Arrow]) -> list[str]:
    """Arrows DESIGN §3 forbids, one line each: the file and line, the import, and the rule it breaks."""
    stdlib = set(sys.stdlib_module_names)
    found = []
    for arrow in arrows:
        unit = unit_of(module_of(arrow.source))
        if not is_pbrl(arrow.target):
            top = arrow.target.split(".")[0]
            if unit in ALLOWED_THIRD_PARTY and top not in stdlib and top not in ALLOWED_THIRD_PARTY[unit]:
                found.append(f"{arrow}  [{unit} imports only {sorted(ALLOWED_THIRD_PARTY[unit])} and the standard library]")
            if top in FORBIDDEN_THIRD_PARTY.get(unit, set()):
                found.append(f"{arrow}  [{unit} never imports {top}]")
            continue
        target_unit = unit_of(arrow.target)
        within = target_unit == unit or (graph_unit(unit) == graph_unit(target_unit) and unit != SHARED_LOOP)
        if unit == "base" and target_unit != "base":
            found.append(f"{arrow}  [the base modules are leaves: they import only each other]")
        elif target_unit in TOP_UNITS and unit not in TOP_UNITS:
            found.append(f"{arrow}  [{target_unit} is the top: no module of pbrl imports it]")
        elif unit in ALLOWED_UNITS and not within:
            allowed = ALLOWED_UNITS[unit]
            if target_unit not in allowed and arrow.target not in allowed:
                base = f"the base modules ({', '.join(BASE_MODULES)})"
                names = [base if name == "base" else name for name in sorted(allowed)] or ["nothing"]
                found.append(f"{arrow}  [{unit} may import of pbrl only: {'; '.join(names)}]")
            elif unit == "agents" and target_unit == "data" and not (
                    arrow.names and all(n.endswith("Batch") for n in arrow.names)):
                found.append(f"{arrow}  [agents import of pbrl.data only batch types (names ending in Batch)]")
    return found


def unit_cycles(arrows: Iterable[Arrow]) -> list[str]:
    """Each cycle of the subpackage graph (the base modules left out: they are leaves), as its arrows, one
    import statement named per edge."""
    edges: dict[str, dict[str, Arrow]] = defaultdict(dict)
    for arrow in arrows:
        if not is_pbrl(arrow.target):
            continue
        a, b = graph_unit(unit_of(module_of(arrow.source))), graph_unit(unit_of(arrow.target))
        if "base" not in (a, b) and a != b:
            edges[a].setdefault(b, arrow)
    return [" -> ".join(cycle) + "\n    " + "\n    ".join(str(edges[x][y]) for x, y in zip(cycle, cycle[1:]))
            for cycle in find_cycles(edges)]


def module_cycles(arrows: Iterable[Arrow]) -> list[str]:
    """Each cycle between the modules of one subpackage (``render`` <-> ``metaworld_render``)."""
    edges: dict[str, dict[str, Arrow]] = defaultdict(dict)
    for arrow in arrows:
        source = module_of(arrow.source)
        target = arrow.target if arrow.target in MODULES else arrow.target.rpartition(".")[0]
        if (is_pbrl(target) and target in MODULES and target != source and unit_of(source) not in ("base",)
                and source.rpartition(".")[0] == target.rpartition(".")[0]):
            edges[source].setdefault(target, arrow)
    return [" -> ".join(cycle) + "\n    " + "\n    ".join(str(edges[x][y]) for x, y in zip(cycle, cycle[1:]))
            for cycle in find_cycles(edges)]


def find_cycles(edges: dict[str, dict[str, Arrow]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one node: ``[a, b, ..., a]``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(edges):
        if node not in index:
            visit(node)
    cycles = []
    for component in components:  # a shortest path back to the start, within the component
        members, start = set(component), min(component)
        paths = {start: [start]}
        frontier = [start]
        while frontier:
            node = frontier.pop(0)
            for nxt in sorted(edges.get(node, {})):
                if nxt == start:
                    cycles.append(paths[node] + [start])
                    frontier = []
                    break
                if nxt in members and nxt not in paths:
                    paths[nxt] = paths[node] + [nxt]
                    frontier.append(nxt)
    return cycles


def test_the_walk_sees_every_kind_of_import():
    """The walker finds lazy, TYPE_CHECKING and relative imports (a miss here would let the rules below pass)."""
    code = ("from __future__ import annotations\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from pbrl.data.store import TrajectoryDataset\nfrom . import render\nfrom ..data import store\n"
            "def f():\n    import pbrl.agents.iql\n    from .. import core\n    from .registry import make_env\n")
    arrows = arrows_in(code, PACKAGE_DIR / "envs" / "probe.py")
    assert {a.target for a in arrows} == {"__future__", "typing", "pbrl.data.store", "pbrl.envs.render", "pbrl.agents.iql",
                                          "pbrl.core", "pbrl.envs.registry"}, arrows
    assert len(layer_violations(arrows)) == 3  # data (twice) and agents: envs may import neither


def test_every_import_follows_the_layers_of_design_3():
    found = layer_violations(all_arrows())
    assert not found, "imports DESIGN §3 forbids:\n" + "\n".join(found)


def test_no_cycle_between_subpackages():
    found = unit_cycles(all_arrows())
    assert not found, "cycles between subpackages (each arrow names one import that makes it):\n" + "\n".join(found)


def test_no_cycle_between_the_modules_of_a_subpackage():
    found = module_cycles(all_arrows())
    assert not found, "cycles between modules (each arrow names one import that makes it):\n" + "\n".join(found)


@pytest.mark.parametrize("unit", sorted(ALLOWED_UNITS))
def test_each_constrained_unit_exists(unit):
    """The rules name real places: a renamed subpackage must be renamed here too (export and deploy may come later)."""
    if unit in ("export", "deploy") and not (PACKAGE_DIR / unit).is_dir():
        pytest.skip(f"pbrl/{unit}/ is not written yet")
    assert unit in MODULES or f"pbrl.{unit}" in MODULES or any(m.startswith(f"pbrl.{unit}.") for m in MODULES), unit
