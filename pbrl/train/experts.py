"""The expert behind a regret teacher's ``expert`` critic, when no ``--expert DIR`` names one: the dataset's own
expert policy, trained (or resumed) exactly as ``pbrl data make`` trains it.

Kept apart from :mod:`pbrl.train.critics` (which computes the advantages) because this trains a simulator policy.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pbrl.data.store import TrajectoryDataset
    from pbrl.data.teachers import Teacher


def with_dataset_expert(trajectories: TrajectoryDataset, teacher: Teacher, behaviour_dir: str | Path) -> Teacher:
    """``teacher`` with ``expert`` set to the run directory of the dataset's own expert, after training (or
    resuming) it under ``behaviour_dir`` as `pbrl data make` does; an expert already trained there is reused."""
    from pbrl.data.make import train_behaviour
    from pbrl.train.critics import dataset_expert

    env, algo, steps, seed, directory = dataset_expert(trajectories, behaviour_dir)
    train_behaviour(env, algo=algo, steps=steps, seed=seed, directory=directory)
    return dataclasses.replace(teacher, expert=str(directory))
