from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from pbrl.data.store import Episode, write_trajectories  # noqa: E402

# PBRL_TEST_THREADS: the margin study (scripts/diag/test_margins.py) reruns the learning tests in a second
# floating-point order (two threads and MKL's compatible path), as another CPU would have. The
# trainers set their own count (train.threads, 1 by default), so under the study every torch.set_num_threads call is
# pinned to it.
LEARNING_THREADS = int(os.environ.get("PBRL_TEST_THREADS", "1"))
if "PBRL_TEST_THREADS" in os.environ:
    _set_num_threads = torch.set_num_threads
    torch.set_num_threads = lambda _asked: _set_num_threads(LEARNING_THREADS)
torch.set_num_threads(LEARNING_THREADS)

ROOT = Path(__file__).resolve().parents[1]


def make_episodes(lengths, obs_dim=3, act_dim=2, seed=0, terminated_every=2):
    rng = np.random.default_rng(seed)
    eps = []
    for i, n in enumerate(lengths):
        eps.append(Episode(
            observations=rng.standard_normal((n, obs_dim)).astype(np.float32),
            actions=rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
            rewards=rng.standard_normal(n).astype(np.float32),
            terminated=(i % terminated_every == 0),
            final_observation=rng.standard_normal(obs_dim).astype(np.float32),
            source=f"synthetic-{i}",
            infos={"reward_ctrl": rng.standard_normal(n).astype(np.float32)},
        ))
    return eps


@pytest.fixture
def traj_file(tmp_path):
    """A small synthetic trajectory file (episodes of 30, 5, 50 and 12 steps) for Hopper-v5's id."""
    path = tmp_path / "traj.h5"
    write_trajectories(path, make_episodes([30, 5, 50, 12]), env_id="Hopper-v5", behaviour_policy="synthetic", seed=0)
    return path


def write_episodes(path, lengths, seed=0):
    """A synthetic trajectory file with episodes of the given lengths, opened for reading."""
    from pbrl.data.store import TrajectoryDataset

    write_trajectories(path, make_episodes(lengths, seed=seed), env_id="Hopper-v5", behaviour_policy="b", seed=0)
    return TrajectoryDataset(path)


@dataclass
class CliResult:
    """What a `pbrl` command returned: the same three fields as ``subprocess.CompletedProcess``."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(*args, cwd: str | Path | None = None) -> CliResult:
    """``pbrl ARGS`` inside this process: the tests' default, since a subprocess imports torch (and transformers /
    diffusers for ``seq``) again, a second or more each. argparse's exits become return codes; any other exception
    propagates, so a traceback fails the test as it would fail the user. The real entry point keeps one smoke test
    per command group (``run_cli_process``)."""
    from pbrl.cli import main

    out, err = io.StringIO(), io.StringIO()
    before, argv = os.getcwd(), sys.argv
    sys.argv = ["pbrl", *map(str, args)]  # what a command records of its own invocation (dataset cards)
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(sys.argv[1:])
            except SystemExit as exc:  # argparse: --help (0), a usage error (2)
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        os.chdir(before)
        sys.argv = argv
    return CliResult(int(code or 0), out.getvalue(), err.getvalue())


def run_cli_process(*args, cwd: str | Path = ROOT, env: dict[str, str] | None = None) -> CliResult:
    """``python -m pbrl.cli ARGS`` in a new process, as a user starts it."""
    proc = subprocess.run([sys.executable, "-m", "pbrl.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env=env)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


# ---------------------------------------------------------------- learning tests and their margins (DESIGN §7.8)

LEARNING_SEED = int(os.environ.get("PBRL_TEST_SEED", "0"))
"""The seed of every learning test: 0 in the suite; scripts/diag/test_margins.py reruns them with seeds 0-4."""


class Learned:
    """A learning test's checks on what it learnt, each recorded for the margin study.

    ``learned.check("dpo preferred", value, ">=", 0.9)`` asserts in the suite. Under the margin study
    (``PBRL_MARGINS_OUT`` set) it appends ``{test, quantity, value, op, threshold, bad, seed, threads}`` to that JSON
    lines file instead of raising, so one run yields every quantity of the test, its known-bad variants included
    (``bad=True``: a check that the known-bad variant *fails* the learning check, e.g. BC's mean action)."""

    OPS = {">=": float.__ge__, ">": float.__gt__, "<=": float.__le__, "<": float.__lt__}

    def __init__(self, test: str):
        self.test = test
        self.out = os.environ.get("PBRL_MARGINS_OUT")

    def check(self, quantity: str, value: float, op: str, threshold: float, *, bad: bool = False,
              context: object = None) -> None:
        value = float(value)
        if self.out:
            row = {"test": self.test, "quantity": quantity, "value": value, "op": op, "threshold": threshold,
                   "bad": bad, "seed": LEARNING_SEED, "threads": LEARNING_THREADS}
            with open(self.out, "a") as f:
                f.write(json.dumps(row) + "\n")
            return
        assert self.OPS[op](value, float(threshold)), f"{quantity}: {value:.4f}, expected {op} {threshold} ({context})"


@pytest.fixture
def learned(request) -> Learned:
    return Learned(request.node.nodeid.split("::", 1)[-1])


@pytest.fixture
def learning_seed() -> int:
    return LEARNING_SEED
