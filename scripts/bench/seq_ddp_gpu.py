"""The GPU check of data-parallel `pbrl seq train` (DESIGN §7.7): the plain run against the same run under
``torchrun --nproc-per-node 1`` (and ``--nproc-per-node N`` where N > 1 GPUs are visible: DDP over NCCL), steps per
second of each and the overhead as a ratio, on the synthetic grammar with a GPT-2 of ``--width`` and ``--layers``.

    python scripts/bench/seq_ddp_gpu.py [--steps 300] [--batch-size 64] [--width 512] [--layers 8]

One process means no process group: pbrl's loop only joins one where WORLD_SIZE > 1, so the first ratio is the
launcher's cost alone. Prints a markdown table; writes runs/bench/seq_ddp_gpu/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


def run(command: list[str], env: dict[str, str]) -> float:
    """steps/s the run's JSON line reports (rank 0 prints it)."""
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(command)}\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    return float(json.loads(line)["steps_per_s"])


def main() -> None:
    import torch

    from pbrl.sequence.synthetic import make_task, write_tiny_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--out", default="runs/bench/seq_ddp_gpu")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA device (this is the GPU check; the CPU check is tests/test_distributed.py)")
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    paths = make_task(seed=0, train_prompts=300, heldout_prompts=10, sft_per_prompt=1, pairs_per_prompt=4).write(out)
    write_tiny_model(out / "model", layers=args.layers, width=args.width)
    common = ["seq", "train", "--method", "dpo", "--model", str(out / "model"), "--data", str(paths["pairs"]),
              "--max-length", "32", "--steps", str(args.steps), "--batch-size", str(args.batch_size),
              "--reference", "cache", "--device", "cuda", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    gpus = torch.cuda.device_count()
    rows = [("plain `pbrl seq train`", run([sys.executable, "-m", "pbrl.cli", *common, "--out", str(out / "plain")], env))]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    rows.append(("torchrun --nproc-per-node 1", run([*torchrun, "--nproc-per-node", "1", "-m", "pbrl.cli", *common,
                                                     "--out", str(out / "torchrun1")], env)))
    if gpus > 1:
        rows.append((f"torchrun --nproc-per-node {gpus} (DDP, NCCL)",
                     run([*torchrun, "--nproc-per-node", str(gpus), "-m", "pbrl.cli", *common,
                          "--out", str(out / f"torchrun{gpus}")], env)))
    name = torch.cuda.get_device_name(0)
    print(f"\n{name} x {gpus}; GPT-2 {args.layers} layers, width {args.width}; global batch {args.batch_size} pairs, "
          f"{args.steps} steps\n")
    print("| launch | steps/s | against plain |\n|---|---|---|")
    for label, rate in rows:
        print(f"| {label} | {rate:.2f} | {rate / rows[0][1]:.3f}× |")


if __name__ == "__main__":
    main()
