"""Robot-log files written inside the tests: a robomimic HDF5 file with every field of its schema."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

DEMO_NUMBERS = (0, 1, 2, 3, 10, 11, 4, 5, 6, 7, 8, 9)  # written out of order: demo_10 sorts after demo_9


def expert_weights(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(1000 + seed).standard_normal((7, 2)).astype(np.float32) * 0.6


def robomimic_file(path: Path, *, demos: int = 6, steps: int = 12, image: int = 8, seed: int = 0,
                   valid: int = 2, noise: float = 1.0) -> Path:
    """``demos`` demonstrations of a 2-D action ``tanh(obs @ W)`` plus noise (``noise`` times 0.05, 0.45, 0.85 by the demo's
    number mod 3);
    reward per step ``-|a - expert|^2`` (dense, so a scripted teacher prefers the cleaner demos); obs keys
    ``robot0_eef_pos`` [3] and ``object`` [4], camera ``agentview_image`` [image, image, 3]; the last ``valid`` demos
    form ``mask/valid``, the others ``mask/train``."""
    rng = np.random.default_rng(seed)
    w = expert_weights(seed)
    names = [f"demo_{k}" for k in DEMO_NUMBERS[:demos]]
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        total = 0
        for k, name in enumerate(names):
            t = steps + k % 4
            obs = rng.standard_normal((t + 1, 7)).astype(np.float32)
            frames = rng.integers(0, 256, (t + 1, image, image, 3), dtype=np.uint8)
            expert = np.tanh(obs[:t] @ w)
            actions = (expert + noise * (0.05 + 0.4 * (k % 3)) * rng.standard_normal((t, 2))).astype(np.float32)
            dones = np.zeros(t, np.int64)
            dones[-1] = k % 2
            g = data.create_group(name)
            g.attrs["num_samples"] = t
            g["actions"] = actions
            g["rewards"] = -((actions - expert) ** 2).sum(1)
            g["dones"] = dones
            g["states"] = rng.standard_normal((t, 9))
            for group, rows in (("obs", slice(0, t)), ("next_obs", slice(1, t + 1))):
                g[f"{group}/robot0_eef_pos"] = obs[rows, :3]
                g[f"{group}/object"] = obs[rows, 3:]
                g[f"{group}/agentview_image"] = frames[rows]
            total += t
        data.attrs["total"] = total
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1, "env_kwargs": {"control_freq": 20}})
        order = sorted(names, key=lambda n: int(n.split("_")[1]))
        f["mask/train"] = np.array([n.encode() for n in order[: demos - valid]], dtype="S")
        f["mask/valid"] = np.array([n.encode() for n in order[demos - valid:]], dtype="S")
    return path
