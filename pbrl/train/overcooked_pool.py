"""Where the Overcooked benchmark keeps its partner pool: each self-play seed's run folder ``sp-sSEED`` under the
layout's root, its final policy and its checkpoints at ``POOL_CHECKPOINTS`` game steps (a pool of skill levels).
``scripts/bench/overcooked_ai.py`` trains the pool; the diagnostics beside it read it."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

POOL_CHECKPOINTS = (192_000, 288_000)  # besides each self-play seed's final policy: a pool of skill levels


def pool_dirs(root: Path, seeds: Iterable[int]) -> list[Path]:
    """The training pool: every self-play seed's final policy and its checkpoints at ``POOL_CHECKPOINTS``."""
    out = []
    for s in seeds:
        out += [root / f"sp-s{s}" / "checkpoints" / f"ppo_{k:09d}.zip" for k in POOL_CHECKPOINTS]
        out.append(root / f"sp-s{s}" / "model.zip")
    return out


def pool_name(path: Path) -> str:
    """``sp-s0`` for a final policy, ``sp-s0@192k`` for a checkpoint."""
    if path.name == "model.zip":
        return path.parent.name
    return f"{path.parent.parent.name}@{int(path.stem.split('_')[1]) // 1000}k"
