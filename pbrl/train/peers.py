"""Peer libraries as yardsticks, each in its own virtual environment (never a dependency of pbrl): made on first use
under ``.bench-venvs/``, and a worker script run there with pbrl's source on ``PYTHONPATH`` and one thread, so both
libraries run on the peer's torch in one process. Used by ``scripts/bench/backbones.py --peer lerobot`` and
``scripts/bench/deploy.py --peer lerobot``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from pbrl.paths import REPO_ROOT

LEROBOT_VENV = REPO_ROOT / ".bench-venvs" / "lerobot"
LEROBOT_WORKER = REPO_ROOT / "scripts" / "bench" / "peers" / "lerobot_diffusion_worker.py"


def lerobot_python() -> Path:
    """The Python of LeRobot's own virtual environment (lerobot 0.4.4, the newest release that installs here, with
    the torch it pins; h5py and tomli-w so pbrl's source imports), made on first use."""
    py = LEROBOT_VENV / "bin" / "python"
    if not py.exists() or subprocess.call([str(py), "-c", "import lerobot, h5py"], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL) != 0:
        print(f"making {LEROBOT_VENV} (lerobot 0.4.4 in its own venv) ...", flush=True)
        subprocess.check_call([sys.executable, "-m", "venv", str(LEROBOT_VENV)])
        subprocess.check_call([str(py), "-m", "pip", "install", "-q", "lerobot==0.4.4", "h5py", "tomli-w"])
    return py


def run_lerobot_worker(*worker_args: str) -> dict[str, Any]:
    """``scripts/bench/peers/lerobot_diffusion_worker.py`` in LeRobot's venv with ``worker_args``: the JSON object it
    prints last (its stderr in the error when it fails)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([str(lerobot_python()), str(LEROBOT_WORKER), *worker_args], env=env, capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{LEROBOT_WORKER.name} failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
