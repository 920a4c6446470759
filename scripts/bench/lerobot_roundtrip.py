"""LeRobot's own loader reads what ``pbrl data export-lerobot`` writes: every frame's numbers and camera images.

    OMP_NUM_THREADS=1 python scripts/bench/lerobot_roundtrip.py [--episodes 5] [--steps 40] [--size 64]
        [--lerobot 0.6.1,0.4.4] [--torch 2.13.0] [--venv runs/venvs/lerobot] [--backend auto|torchcodec|pyav]

1. makes LeRobot's own virtual environment (``--venv``, once): ``python3 -m venv``, ``pip install torch==<--torch>``
   (a CPU build from local disk), then the first of the ``--lerobot`` versions that installs (0.5 and later need
   Python 3.12; the error of each failed try is printed);
2. writes a small synthetic pbrl dataset with one camera (frames in an HDF5 file, smooth colour fields that change
   every step), exports it with ``pbrl data export-lerobot`` and imports that back with ``import-lerobot``;
3. in LeRobot's venv, ``LeRobotDataset(repo_id, root=DIR)`` reads every frame (``--backend auto``: torchcodec where it
   loads, else PyAV) and saves them;
4. compares: ``observation.state``, ``action``, ``next.reward``, ``next.done``, ``episode_index``, ``frame_index``
   exactly against pbrl's arrays; LeRobot's decoded images (uint8) against the source frames (lossy H.264: mean
   and max absolute difference) and against pbrl's own decoding of the exported MP4 (``FrameReader``).

Prints one result line; exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[2]

WORKER = r'''
import json, sys, time
import numpy as np
root, out, backend = sys.argv[1], sys.argv[2], sys.argv[3]
import lerobot
from lerobot.datasets.lerobot_dataset import LeRobotDataset

def load(b):
    ds = LeRobotDataset("pbrl/lerobot-roundtrip", root=root, video_backend=None if b == "auto" else b)
    ds[0]
    return ds

errors = {}
ds = None
for b in (["torchcodec", "pyav"] if backend == "auto" else [backend]):
    try:
        ds = load(b)
        used = b
        break
    except Exception as exc:  # torchcodec needs FFmpeg's shared libraries
        errors[b] = f"{type(exc).__name__}: {str(exc)[:300]}"
if ds is None:
    print(json.dumps({"error": errors}))
    sys.exit(1)
t0 = time.time()
cams = ds.meta.video_keys
keys = ["observation.state", "action", "next.reward", "next.done", "episode_index", "frame_index", "index",
        "timestamp"]
got = {k: [] for k in keys + cams}
for i in range(len(ds)):
    item = ds[i]
    for k in keys:
        got[k].append(np.asarray(item[k]))
    for c in cams:
        img = np.asarray(item[c])  # [3, H, W] float in [0, 1]
        got[c].append(np.clip(np.rint(img * 255), 0, 255).astype(np.uint8).transpose(1, 2, 0))
np.savez(out, **{k.replace("/", "_"): np.stack(v) for k, v in got.items()})
print(json.dumps({"frames": len(ds), "episodes": ds.meta.total_episodes, "cameras": cams, "backend": used,
                  "skipped": errors, "lerobot": getattr(lerobot, "__version__", "?"),
                  "seconds": round(time.time() - t0, 2)}))
'''

WRITER = r'''
import json, sys, time
import numpy as np
root, src, out, backend = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
import lerobot
from lerobot.datasets.lerobot_dataset import LeRobotDataset

d = np.load(src)
h, w = d["images"].shape[1:3]
features = {
    "observation.state": {"dtype": "float32", "shape": (d["state"].shape[1],), "names": None},
    "action": {"dtype": "float32", "shape": (d["action"].shape[1],), "names": None},
    "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
    "next.done": {"dtype": "bool", "shape": (1,), "names": None},
    "observation.images.front": {"dtype": "video", "shape": (int(h), int(w), 3), "names": ["height", "width", "channels"]},
}
t0 = time.time()
ds = LeRobotDataset.create("pbrl/lerobot-made", fps=int(d["fps"]), features=features, root=root,
                           robot_type="synthetic-arm", use_videos=True)
for e in range(len(d["lengths"])):
    lo, hi = int(d["offsets"][e]), int(d["offsets"][e + 1])
    for i in range(lo, hi):
        ds.add_frame({"observation.state": d["state"][i], "action": d["action"][i],
                      "next.reward": d["reward"][i:i + 1], "next.done": d["done"][i:i + 1],
                      "observation.images.front": d["images"][i], "task": "reach the target"})
    ds.save_episode()
ds.finalize()
write_s = time.time() - t0
back = LeRobotDataset("pbrl/lerobot-made", root=root, video_backend=None if backend == "auto" else backend)
imgs = [np.clip(np.rint(np.asarray(back[i]["observation.images.front"]) * 255), 0, 255).astype(np.uint8)
        .transpose(1, 2, 0) for i in range(len(back))]
np.savez(out, images=np.stack(imgs))
info = json.load(open(f"{root}/meta/info.json"))
print(json.dumps({"lerobot": getattr(lerobot, "__version__", "?"), "codec": info["features"]["observation.images.front"]
                  .get("info", {}).get("video.codec"), "seconds": round(write_s, 2), "backend": getattr(back, "video_backend", getattr(back, "_video_backend", "?"))}))
'''


def ensure_venv(venv: Path, torch_version: str, lerobot_versions: list[str]) -> tuple[Path, str]:
    py = venv / "bin" / "python"
    probe = [str(py), "-c", "import importlib.metadata as m; print(m.version('lerobot'))"]
    if py.exists():
        out = subprocess.run(probe, capture_output=True, text=True)
        if out.returncode == 0:
            return py, out.stdout.strip()
    else:
        print(f"making {venv} ...", flush=True)
        subprocess.check_call(["python3", "-m", "venv", str(venv)])
    t = time.time()
    out = subprocess.run([str(py), "-m", "pip", "install", "-q", f"torch=={torch_version}"], capture_output=True,
                         text=True)
    if out.returncode != 0:
        sys.exit(f"pip install torch=={torch_version} failed:\n{_pip_error(out.stderr)}")
    print(f"torch {torch_version} installed in {time.time() - t:.0f} s", flush=True)
    for version in lerobot_versions:
        t = time.time()
        out = subprocess.run([str(py), "-m", "pip", "install", "-q", f"lerobot=={version}"], capture_output=True,
                             text=True)
        if out.returncode == 0:
            print(f"lerobot {version} installed in {time.time() - t:.0f} s", flush=True)
            return py, version
        print(f"pip install lerobot=={version} failed:\n{_pip_error(out.stderr)}", flush=True)
    sys.exit("no lerobot version installed")


def _pip_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if not line.startswith("WARNING: Location")]
    return "\n".join(lines[-6:])


def frame(k: int, size: int) -> np.ndarray:
    """Step k's image: a colour that changes by 20 to 60 levels a step plus a smooth gradient."""
    base = np.array([(k * 37) % 160 + 40, (k * 53) % 160 + 40, (k * 71) % 160 + 40], np.int32)
    yy, xx = np.mgrid[0:size, 0:size]
    grad = ((xx + yy) * 48 // (2 * size))[..., None]
    return np.clip(base + grad - 24, 0, 255).astype(np.uint8)


def make_source(folder: Path, episodes: int, steps: int, size: int) -> Path:
    """A pbrl trajectory file of ``episodes`` episodes of ``steps`` to ``steps + episodes - 1`` steps, obs [6],
    actions [3], one camera ``front`` whose frames lie in ``frames.h5``."""
    from pbrl.data.media import FrameRef
    from pbrl.data.store import Episode, write_trajectories

    rng = np.random.default_rng(0)
    lengths = [steps + e for e in range(episodes)]
    frames_file = folder / "frames.h5"
    with h5py.File(frames_file, "w") as f:
        f.create_dataset("front", data=np.stack([frame(k, size) for k in range(sum(lengths))]))
    eps, lo = [], 0
    for e, n in enumerate(lengths):
        obs = rng.standard_normal((n, 6)).astype(np.float32)
        eps.append(Episode(obs, rng.uniform(-1, 1, (n, 3)).astype(np.float32), rng.standard_normal(n).astype(np.float32),
                           bool(e % 2), obs[-1], media={"front": FrameRef(str(frames_file), "front",
                                                                          np.arange(lo, lo + n))}))
        lo += n
    return write_trajectories(folder / "source.h5", eps, env_id="lerobot/synthetic", behaviour_policy="random",
                              seed=0, metadata={"fps": 15})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", type=int, default=5)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--lerobot", default="0.6.1,0.4.4", help="versions to try in order")
    ap.add_argument("--torch", default="2.13.0")
    ap.add_argument("--venv", default=str(ROOT / "runs" / "venvs" / "lerobot"))
    ap.add_argument("--backend", default="auto", choices=["auto", "torchcodec", "pyav"])
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-lerobot-roundtrip"))
    args = ap.parse_args()

    py, version = ensure_venv(Path(args.venv), args.torch, [v.strip() for v in args.lerobot.split(",") if v.strip()])
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    src = make_source(work, args.episodes, args.steps, args.size)
    exported, back = work / "lerobot", work / "back.h5"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t = time.time()
    subprocess.check_call([sys.executable, "-m", "pbrl.cli", "data", "export-lerobot", str(src), "--out",
                           str(exported)], env=env)
    export_s = time.time() - t
    subprocess.check_call([sys.executable, "-m", "pbrl.cli", "data", "import-lerobot", str(exported), "--out",
                           str(back)], env=env)
    (work / "worker.py").write_text(WORKER)
    out = subprocess.run([str(py), str(work / "worker.py"), str(exported), str(work / "lerobot.npz"), args.backend],
                         env={**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                              "HF_HOME": str(work / "hf-home")}, capture_output=True, text=True)
    if out.returncode != 0:
        print(out.stdout[-3000:], out.stderr[-3000:], sep="\n")
        print(f"RESULT lerobot {version}: LeRobotDataset failed to read {exported}")
        return 1
    report = json.loads(out.stdout.strip().splitlines()[-1])
    got = np.load(work / "lerobot.npz")

    from pbrl.data.store import TrajectoryDataset

    problems = []
    with TrajectoryDataset(src) as ds, TrajectoryDataset(back) as again:
        n = ds.num_transitions
        offsets = ds.episode_offsets
        ends = offsets[1:] - 1
        done = np.zeros(n, bool)
        done[ends] = ds.terminations[ends]
        want = {"observation.state": ds.observations, "action": ds.actions, "next.reward": ds.rewards,
                "next.done": done, "episode_index": np.repeat(np.arange(ds.num_episodes), np.diff(offsets)),
                "frame_index": np.arange(n) - np.repeat(offsets[:-1], np.diff(offsets)), "index": np.arange(n)}
        if report["frames"] != n or report["episodes"] != ds.num_episodes:
            problems.append(f"LeRobot sees {report['frames']} frames / {report['episodes']} episodes, pbrl {n} / "
                            f"{ds.num_episodes}")
        for key, value in want.items():
            theirs = got[key].reshape(len(got[key]), -1)
            if theirs.shape[0] != n or not np.array_equal(theirs, np.asarray(value).reshape(n, -1)):
                problems.append(f"{key} differs")
        with ds.frame_reader() as r, again.frame_reader() as r2:
            source = r.frames("front", np.arange(n)).astype(np.int16)
            pbrl_decoded = r2.frames(again.cameras[0], np.arange(n)).astype(np.int16)
        theirs = got["observation.images.front"].astype(np.int16)
        vs_source = np.abs(theirs - source).mean(axis=(1, 2, 3))
        vs_pbrl = np.abs(theirs - pbrl_decoded)
        if vs_source.max() > 6:
            problems.append(f"images off the source (worst frame mean |diff| {vs_source.max():.2f})")
        if vs_pbrl.mean() > 1:
            problems.append(f"LeRobot's and pbrl's decoding differ (mean |diff| {vs_pbrl.mean():.2f})")
    problems += lerobot_made(py, work, env, args)
    verdict = "OK" if not problems else "MISMATCH: " + "; ".join(problems)
    print(f"RESULT lerobot {report['lerobot']} ({report['backend']} decoder"
          + (f"; {', '.join(report['skipped'])} failed" if report["skipped"] else "")
          + f") read {report['frames']} frames / {report['episodes']} episodes of pbrl's export "
          f"({args.size}x{args.size} H.264, export {export_s:.1f} s): state/action/reward/done/indices exact "
          f"{'yes' if not any('differs' in p for p in problems) else 'NO'}; images vs source mean |diff| "
          f"{vs_source.mean():.2f} (worst frame {vs_source.max():.2f}); vs pbrl's own decoding mean |diff| "
          f"{vs_pbrl.mean():.3f}, max {int(vs_pbrl.max())} -> {verdict}")
    return 0 if not problems else 1


def lerobot_made(py: Path, work: Path, env: dict, args: argparse.Namespace) -> list[str]:
    """The other way: LeRobot records a dataset (its own parquet writer and AV1 encoder), pbrl imports it."""
    from pbrl.data.store import TrajectoryDataset

    rng = np.random.default_rng(1)
    lengths = np.array([args.steps + 3 * e for e in range(args.episodes)])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    n = int(offsets[-1])
    done = np.zeros(n, bool)
    done[offsets[1::2][:len(lengths) // 2 + len(lengths) % 2] - 1] = True  # episodes 0, 2, 4, ... end done
    src = {"state": rng.standard_normal((n, 5)).astype(np.float32), "action": rng.standard_normal((n, 2)).astype(np.float32),
           "reward": rng.standard_normal(n).astype(np.float32), "done": done, "lengths": lengths, "offsets": offsets,
           "images": np.stack([frame(k, args.size) for k in range(n)]), "fps": np.array(15)}
    np.savez(work / "made_src.npz", **src)
    made = work / "lerobot-made"
    out = subprocess.run([str(py), "-c", WRITER, str(made), str(work / "made_src.npz"), str(work / "made.npz"),
                          args.backend], env={**env, "HF_HUB_OFFLINE": "1", "HF_HOME": str(work / "hf-home")},
                         capture_output=True, text=True)
    if out.returncode != 0:
        print(out.stdout[-2000:], out.stderr[-3000:], sep="\n")
        return ["LeRobot failed to write a dataset"]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    theirs = np.load(work / "made.npz")["images"].astype(np.int16)
    imported = work / "made.h5"
    subprocess.check_call([sys.executable, "-m", "pbrl.cli", "data", "import-lerobot", str(made), "--out",
                           str(imported)], env=env)
    problems = []
    with TrajectoryDataset(imported) as ds:
        if ds.episode_lengths.tolist() != lengths.tolist():
            problems.append(f"LeRobot-made: episode lengths {ds.episode_lengths.tolist()}")
        for key, got, want in (("state", ds.observations, src["state"]), ("action", ds.actions, src["action"]),
                               ("reward", ds.rewards, src["reward"]),
                               ("done", ds.terminations, done)):
            if got.shape != want.shape or not np.array_equal(got, want):
                problems.append(f"LeRobot-made: {key} differs")
        with ds.frame_reader() as r:
            ours = r.frames(ds.cameras[0], np.arange(n)).astype(np.int16)
        env_id = ds.env_id
    vs_lerobot = np.abs(ours - theirs)
    vs_source = np.abs(ours - src["images"].astype(np.int16)).mean(axis=(1, 2, 3))
    if vs_lerobot.mean() > 1:
        problems.append(f"LeRobot-made: pbrl's and LeRobot's decoding differ (mean |diff| {vs_lerobot.mean():.2f})")
    if vs_source.max() > 8:
        problems.append(f"LeRobot-made: frames off the source (worst frame {vs_source.max():.2f})")
    print(f"RESULT pbrl import-lerobot of a dataset LeRobot {report['lerobot']} recorded ({report['codec']} video, "
          f"{len(lengths)} episodes, {n} frames, written in {report['seconds']} s) as {env_id}: numbers exact "
          f"{'yes' if not any('differs' in p and 'decoding' not in p for p in problems) else 'NO'}; pbrl's frames vs "
          f"LeRobot's ({report['backend']}) mean |diff| {vs_lerobot.mean():.3f}, max {int(vs_lerobot.max())}; vs source "
          f"mean {vs_source.mean():.2f} (worst frame {vs_source.max():.2f})")
    return problems


if __name__ == "__main__":
    sys.exit(main())
