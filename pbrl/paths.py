"""Where pbrl finds its declarative side: the top-level ``envs/``, ``agents/`` and ``datasets/`` folders."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent


def search_roots() -> list[Path]:
    """Folders searched, in order: ``$PBRL_HOME``, the current directory, the repository holding pbrl."""
    roots = []
    if os.environ.get("PBRL_HOME"):
        roots.append(Path(os.environ["PBRL_HOME"]))
    roots += [Path.cwd(), REPO_ROOT]
    seen, out = set(), []
    for r in roots:
        r = r.resolve()
        if r not in seen:
            seen.add(r)
            out.append(r)
    return out


def find_resource(kind: str, name: str) -> Path | None:
    """The first ``<root>/<kind>/<name>`` that exists, or None."""
    for root in search_roots():
        p = root / kind / name
        if p.exists():
            return p
    return None


def list_resources(kind: str, suffix: str = ".toml") -> list[str]:
    names: set[str] = set()
    for root in search_roots():
        d = root / kind
        if d.is_dir():
            names.update(p.name[: -len(suffix)] for p in d.glob(f"*{suffix}"))
    return sorted(names)
