"""robomimic HDF5 files (Mandlekar et al. 2021; the format of Diff-UAPA's robomimic benchmarks) into pbrl datasets.

The layout read (robomimic's ``dataset_states_to_obs`` writes it; no robomimic or robosuite package is needed)::

    data/                       attrs: total (steps), env_args (JSON: env_name, type, env_kwargs)
      demo_N/                   attrs: num_samples (T)
        actions    [T, A]
        rewards    [T]
        dones      [T]
        obs/<key>       [T, D] low-dimensional, or [T, H, W, C] uint8 camera images
        next_obs/<key>  the same, one step later
        states     [T, S] (simulator states; not needed, not read)
    mask/<split>                byte strings of demo names (``train``, ``valid``, ``20_percent``, ...)

Mapping: demos in their number order (``demo_2`` before ``demo_10``) become episodes; the observation is the
concatenation of the low-dimensional ``obs/<key>`` arrays, every one in sorted key order by default or the
``obs_keys`` asked for in that order; the final observation is ``next_obs`` at the last step. An episode is
terminated where ``dones`` is set at its last step (robomimic marks success there), else truncated. Camera keys
(``[T, H, W, C]`` uint8, e.g. ``agentview_image``) are not copied: each step refers to its row in the source file
(:mod:`pbrl.data.media`; camera ``agentview`` for ``agentview_image``), and a dataset card's checksum covers that
file. Every ``mask/<split>`` is kept as the split of the same name; ``split`` imports only that split's demos.
The env id is ``robomimic/<env_name>``: no simulator in pbrl replays it, so training evaluates offline.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pbrl.data.media import FrameRef
from pbrl.data.store import Episode, open_h5, write_trajectories
from pbrl.errors import ConfigError, DatasetError, describe
from pbrl.fields import short_repr


def _demo_number(name: str) -> tuple[int, str]:
    match = re.fullmatch(r"demo_(\d+)", name)
    return (int(match.group(1)), name) if match else (1 << 62, name)


def _is_camera(dataset: h5py.Dataset) -> bool:
    return dataset.ndim == 4 and dataset.dtype == np.uint8


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_robomimic(path: str | os.PathLike, *, obs_keys: list[str] | None = None, split: str | None = None
                   ) -> tuple[list[Episode], str, dict[str, Any], dict[str, list[int]]]:
    """``(episodes, env_id, metadata, splits)`` of a robomimic HDF5 file (see the module docstring). Every demo is
    checked before any is returned; the first problem is named in one line."""
    path = Path(path)
    where = str(path)
    with open_h5(path, "a robomimic HDF5 file") as f:
        if "data" not in f or not isinstance(f["data"], h5py.Group):
            raise DatasetError(describe(where, "group 'data/'", "missing", "robomimic's data/demo_N groups"))
        data = f["data"]
        demos = sorted((k for k in data if isinstance(data[k], h5py.Group)), key=_demo_number)
        if not demos:
            raise DatasetError(describe(where, "demos under data/", "none", "at least one data/demo_N group"))
        masks = {name: sorted({_decode(v) for v in f[f"mask/{name}"][()]}, key=_demo_number)
                 for name in (f["mask"] if "mask" in f else [])}
        for name, members in masks.items():
            unknown = [m for m in members if m not in data]
            if unknown:
                raise DatasetError(describe(where, f"mask/{name}", f"demo {unknown[0]!r}, not under data/",
                                            "names of demos in data/"))
        if split is not None:
            if split not in masks:
                raise ConfigError(describe("--split", "split", repr(split), f"one of the file's masks {sorted(masks)}"
                                           if masks else "no --split: the file has no mask/ group"))
            demos = masks[split]
        env_args = _env_args(data.attrs.get("env_args"), where)
        first = data[demos[0]]
        if "obs" not in first:
            raise DatasetError(describe(f"{where}:data/{demos[0]}", "group 'obs/'", "missing", "robomimic's obs/<key>"))
        low_dim = sorted(k for k in first["obs"] if not _is_camera(first[f"obs/{k}"]))
        cameras = sorted(k for k in first["obs"] if _is_camera(first[f"obs/{k}"]))
        keys = _chosen_keys(obs_keys, low_dim, cameras, f"{where}:data/{demos[0]}/obs")
        episodes = [_episode(data[d], f"{where}:data/{d}", keys, cameras, path) for d in demos]
        total = data.attrs.get("total")
    steps = sum(len(e) for e in episodes)
    if split is None and total is not None and int(total) != steps:
        raise DatasetError(describe(f"{where}:data", "attribute 'total'", int(total),
                                    f"{steps}, the sum of the demos' num_samples"))
    index = {d: i for i, d in enumerate(demos)}
    splits = {name: [index[m] for m in members if m in index] for name, members in masks.items()}
    splits = {name: members for name, members in splits.items() if members}  # --split: the masks it overlaps
    env_id = f"robomimic/{env_args.get('env_name', path.stem)}"
    rate = env_args.get("env_kwargs", {}).get("control_freq") if isinstance(env_args.get("env_kwargs"), dict) else None
    meta = {"source": str(path.resolve()), "robomimic_env_args": env_args,
            **({"control_rate_hz": float(rate)} if isinstance(rate, int | float) else {}), "obs_keys": keys,
            "cameras": [camera_name(c) for c in cameras], "demos": demos, "split": split or ""}
    return episodes, env_id, meta, splits


def camera_name(key: str) -> str:
    """``agentview_image`` -> ``agentview``: robomimic's image keys end in ``_image``."""
    return key.removesuffix("_image")


def _env_args(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        args = json.loads(_decode(raw))
    except json.JSONDecodeError as exc:
        raise DatasetError(describe(f"{where}:data", "attribute 'env_args'", f"invalid JSON ({exc.msg})",
                                    "robomimic's env_args JSON (env_name, type, env_kwargs)")) from None
    if not isinstance(args, dict):
        raise DatasetError(describe(f"{where}:data", "attribute 'env_args'", type(args).__name__, "a JSON object"))
    return args


def _chosen_keys(asked: list[str] | None, low_dim: list[str], cameras: list[str], where: str) -> list[str]:
    if asked is None:
        if not low_dim:
            raise DatasetError(describe(where, "low-dimensional keys", "none", "at least one [T, D] observation key"))
        return low_dim
    for key in asked:
        if key in cameras:
            raise ConfigError(describe("--obs-keys", "key", repr(key), f"a low-dimensional key ({key} holds camera "
                                       f"images, kept as frames); one of {low_dim}"))
        if key not in low_dim:
            raise ConfigError(describe("--obs-keys", "key", repr(key), f"one of the file's keys {low_dim}"))
    if len(set(asked)) != len(asked):
        raise ConfigError(describe("--obs-keys", "keys", short_repr(asked), "each key once"))
    return list(asked)


def _flat(demo: h5py.Group, group: str, key: str, n: int, where: str, rows: slice = slice(None)) -> np.ndarray:
    """``group/key`` of a demo (checked: present, ``n`` rows), the ``rows`` asked for, each row flattened, float32."""
    if f"{group}/{key}" not in demo:
        raise DatasetError(describe(where, f"'{group}/{key}'", "missing", f"the key of every demo's {group}/"))
    data = demo[f"{group}/{key}"]
    if data.shape[0] != n:
        raise DatasetError(describe(where, f"'{group}/{key}' length", data.shape[0], f"{n} (num_samples)"))
    arr = data[rows]
    return arr.reshape(len(arr), -1).astype(np.float32)


def _episode(demo: h5py.Group, where: str, keys: list[str], cameras: list[str], path: Path) -> Episode:
    for key in ("actions", "rewards", "dones", "obs", "next_obs"):
        if key not in demo:
            raise DatasetError(describe(where, f"'{key}'", "missing", "actions, rewards, dones, obs/, next_obs/"))
    actions = demo["actions"][()]
    n = int(demo.attrs.get("num_samples", len(actions)))
    if n < 1 or len(actions) != n:
        raise DatasetError(describe(where, "'actions' length", len(actions), f"{n}, the num_samples attribute"))
    rewards = demo["rewards"][()].reshape(-1).astype(np.float32)
    dones = demo["dones"][()].reshape(-1)
    for key, arr in (("rewards", rewards), ("dones", dones)):
        if len(arr) != n:
            raise DatasetError(describe(where, f"'{key}' length", len(arr), f"{n} (num_samples)"))
    if not np.all(np.isfinite(rewards)):
        bad = int(np.flatnonzero(~np.isfinite(rewards))[0])
        raise DatasetError(describe(where, "'rewards'", f"non-finite value {rewards[bad]} at step {bad}", "finite floats"))
    obs = np.concatenate([_flat(demo, "obs", k, n, where) for k in keys], axis=1)
    final = np.concatenate([_flat(demo, "next_obs", k, n, where, slice(n - 1, n))[0] for k in keys])  # one row read
    media = {}
    for key in cameras:
        if f"obs/{key}" not in demo or demo[f"obs/{key}"].shape[0] != n:
            raise DatasetError(describe(where, f"'obs/{key}'", "missing or of another length", f"{n} camera frames"))
        media[camera_name(key)] = FrameRef(str(path.resolve()), f"{demo.name.lstrip('/')}/obs/{key}", np.arange(n))
    return Episode(obs, actions.reshape(n, -1).astype(np.float32), rewards, bool(dones[-1]), final,
                   f"robomimic {demo.name.rsplit('/', 1)[-1]}", media=media)


def import_robomimic(path: str | os.PathLike, out: str | os.PathLike, *, obs_keys: list[str] | None = None,
                     split: str | None = None) -> Path:
    episodes, env_id, meta, splits = read_robomimic(path, obs_keys=obs_keys, split=split)
    return write_trajectories(out, episodes, env_id=env_id, seed=0, metadata=meta, splits=splits,
                              behaviour_policy=f"robomimic demonstrations from {Path(path).name}"
                              + (f" ({split} split)" if split else ""))
