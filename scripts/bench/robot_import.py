"""``pbrl data import-rosbag`` on a large bag: throughput (MB of bag per second) and peak memory, which must stay far
below the bag's size (the numbers are held per step, camera frames streamed one message at a time to the sidecar).

    OMP_NUM_THREADS=1 python scripts/bench/robot_import.py [--gigabytes 1.0] [--storage mcap] [--out runs/bench/robot_import]

Writes a rosbag2 of ``--gigabytes`` (JointState at 100 Hz, Twist at 50 Hz, sensor_msgs/Image 640x480 rgb8 at 30 Hz)
into ``--out``/bag, imports it at 10 Hz in a child process (``pbrl data import-rosbag``; MB/s = bag size / the time of the
command itself, start-up imports left out; its peak RSS is the child's ``getrusage`` ``ru_maxrss``, checked against
/proc sampling every 50 ms, beside the RSS of a child that only does the imports), checks the result and prints a markdown table
row. A line is printed every 30 s while it works. Needs ``rosbags``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

MAPPING = """\
rate_hz = {rate}
env = "rosbag/bench-arm"
[observation]
"/joint_states" = ["position", "velocity"]
[action]
"/cmd_vel" = ["linear.x", "linear.y", "angular.z"]
[camera]
front = "/camera/image_raw"
"""


class Ticker:
    """Prints ``what`` (a callable returning a line) every ``every`` seconds from a daemon thread."""

    def __init__(self, what, every: float = 30.0):
        self.what, self.every = what, every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.start = time.monotonic()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            print(f"[{time.monotonic() - self.start:6.0f} s] {self.what()}", flush=True)

    def __enter__(self) -> Ticker:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def write_bag(path: Path, gigabytes: float, storage: str, width: int, height: int, cam_hz: float) -> dict:
    """Stream a bag of about ``gigabytes`` to ``path`` (one message in memory at a time); returns its counts."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    T = ts.types
    frame_bytes = width * height * 3
    frames = max(2, int(gigabytes * 1e9 / (frame_bytes + 200)))
    duration = frames / cam_hz
    s = 1_000_000_000

    def header(t: int):
        return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=t // s, nanosec=t % s),
                                        frame_id="base")

    base = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    streams = {"/joint_states": 100.0, "/cmd_vel": 50.0, "/camera/image_raw": cam_hz}
    counts = {k: int(duration * hz) for k, hz in streams.items()}
    counts["/camera/image_raw"] = frames
    nxt = {k: 0 for k in streams}
    start = 1_700_000_000 * s
    written = {"messages": 0, "frames": 0}

    with Ticker(lambda: f"writing bag: {written['frames']}/{frames} frames"), \
            Writer(path, version=9, storage_plugin=StoragePlugin[storage.upper()]) as w:
        conns = {"/joint_states": w.add_connection("/joint_states", "sensor_msgs/msg/JointState", typestore=ts),
                 "/cmd_vel": w.add_connection("/cmd_vel", "geometry_msgs/msg/Twist", typestore=ts),
                 "/camera/image_raw": w.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=ts)}
        while any(nxt[k] < counts[k] for k in streams):
            topic = min((k for k in streams if nxt[k] < counts[k]), key=lambda k: nxt[k] / streams[k])
            i = nxt[topic]
            t = start + int(round(i * s / streams[topic]))
            if topic == "/joint_states":
                q = np.sin(np.arange(7) + i / 100.0)
                msg = T["sensor_msgs/msg/JointState"](header=header(t), name=[f"j{k}" for k in range(7)], position=q,
                                                      velocity=np.cos(np.arange(7) + i / 100.0), effort=np.zeros(7))
            elif topic == "/cmd_vel":
                v = T["geometry_msgs/msg/Vector3"]
                msg = T["geometry_msgs/msg/Twist"](linear=v(x=np.sin(i / 50.0), y=0.1, z=0.0),
                                                   angular=v(x=0.0, y=0.0, z=np.cos(i / 50.0)))
            else:
                img = base + np.uint8(i % 256)
                msg = T["sensor_msgs/msg/Image"](header=header(t), height=height, width=width, encoding="rgb8",
                                                 is_bigendian=0, step=width * 3, data=img.ravel())
                written["frames"] += 1
            w.write(conns[topic], t, ts.serialize_cdr(msg, msg.__msgtype__))
            nxt[topic] = i + 1
            written["messages"] += 1
    return {"messages": written["messages"], "frames": frames, "duration_s": duration}


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gigabytes", type=float, default=1.0, help="bag size to write (10^9 bytes)")
    p.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--camera-hz", type=float, default=30.0)
    p.add_argument("--rate-hz", type=float, default=10.0, help="control rate of the import")
    p.add_argument("--out", default="runs/bench/robot_import", help="work folder (its bag and outputs are replaced)")
    p.add_argument("--keep", action="store_true", help="keep the bag and the imported files")
    args = p.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bag, traj, mapping = out / "bag", out / "robot.h5", out / "mapping.toml"
    for old in (traj, traj.with_name("robot.media.h5")):
        old.unlink(missing_ok=True)
    shutil.rmtree(bag, ignore_errors=True)
    mapping.write_text(MAPPING.format(rate=args.rate_hz))

    t = time.perf_counter()
    info = write_bag(bag, args.gigabytes, args.storage, args.width, args.height, args.camera_hz)
    write_s = time.perf_counter() - t
    size = folder_bytes(bag)
    print(f"wrote {bag}: {size / 1e6:.0f} MB, {info['messages']} messages, {info['frames']} frames, "
          f"{info['duration_s']:.1f} s of log, in {write_s:.1f} s", flush=True)

    timing = out / "convert_s.txt"  # the child's time in the command itself, without the start-up imports
    code = ("import time; from pbrl.cli import main; import pbrl.data.rosbag, pbrl.data.registry, pbrl.envs.registry; "
            "t = time.perf_counter(); "
            f"rc = main(['data', 'import-rosbag', {str(bag)!r}, '--map', {str(mapping)!r}, '--out', {str(traj)!r}]); "
            f"open({str(timing)!r}, 'w').write(str(time.perf_counter() - t)); raise SystemExit(rc)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    peak = {"sampled": 0, "now": 0}
    t = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", code], env=env)
    with Ticker(lambda: f"importing: RSS {peak['now'] / 1024:.0f} MiB (peak {peak['sampled'] / 1024:.0f} MiB)"):
        while child.poll() is None:
            peak["now"] = rss_kib(child.pid)
            peak["sampled"] = max(peak["sampled"], peak["now"])
            time.sleep(0.05)
    import_s = time.perf_counter() - t
    if child.returncode != 0:
        sys.exit(f"import failed with exit code {child.returncode}")
    convert_s = float(timing.read_text())
    timing.unlink()
    ru_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the import child (the only one waited for)

    # the same child doing nothing but importing what the command imports: the memory no bag size changes
    base = subprocess.run([sys.executable, "-c", "import resource; import pbrl.cli, pbrl.data.rosbag, pbrl.data.registry, "
                           "pbrl.envs.registry, rosbags.highlevel; "
                           "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"],
                          env=env, check=True, capture_output=True, text=True)
    base_kib = int(base.stdout.split()[-1])

    from pbrl.data.store import TrajectoryDataset

    with TrajectoryDataset(traj) as ds, ds.frame_reader() as fr:
        steps, cams = ds.num_transitions, ds.cameras
        last = fr.frames("front", [steps - 1])
        assert last.shape == (1, args.height, args.width, 3), last.shape
    sidecar = traj.with_name("robot.media.h5")
    print(f"imported {steps} steps at {args.rate_hz:g} Hz, cameras {cams}: {traj} "
          f"({traj.stat().st_size / 1e6:.1f} MB) + {sidecar} ({sidecar.stat().st_size / 1e6:.0f} MB)")
    print()
    print("| bag | storage | messages | command s | conversion s | MB/s | peak RSS (ru_maxrss) | peak RSS (sampled) "
          "| RSS of the imports alone | steps | sidecar |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {size / 1e6:.0f} MB | {args.storage} | {info['messages']} | {import_s:.1f} | {convert_s:.1f} | "
          f"{size / 1e6 / convert_s:.0f} "
          f"| {ru_kib / 1024:.0f} MiB | {peak['sampled'] / 1024:.0f} MiB | {base_kib / 1024:.0f} MiB | {steps} | {sidecar.stat().st_size / 1e6:.0f} MB |")
    print(f"bench process itself (bag writer) ru_maxrss: "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; machine: {os.cpu_count()} CPUs")
    if not args.keep:
        shutil.rmtree(bag)
        traj.unlink()
        sidecar.unlink()


if __name__ == "__main__":
    main()
