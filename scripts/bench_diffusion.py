"""Diffusion and flow preference objectives on the synthetic shapes task (issue 17): learning checks and each
method's own claim.

    OMP_NUM_THREADS=1 python scripts/bench_diffusion.py [--out runs/diff-bench] [--seeds 0 1 2] [--steps 600]
        [--stages learn]

A small conditional U-Net (pbrl's ``SmallUNet``, widths 16/32) is first trained on both shapes at the training
prompts (SFT: it becomes the reference, ~50 % crosses), once as an ε-model and once as a rectified flow. Each method
then trains from it at equal steps on the same noisy pairs (the cross chosen, 20 % of labels reversed). Everything
is measured on the 16 held-out prompts, 16 samples each (DDIM / Euler, 20 steps): ``preferred`` (share of samples
the exact judge calls a cross), ``valid`` (a clean shape where the prompt put it), ``diversity`` (mean pairwise RMS
distance among a prompt's samples, as a ratio to the reference's).

Stages:
  learn   SFT on the winners, Diffusion-DPO, ABC, self-supervised DPO (shuffle losers), Diffusion-DRO (ε); SFT on the
          winners and Flow-DPO (flow); per seed

Runs are reused when finished (resumable). Writes ``OUT/results.json`` and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from pbrl.sequence.diffusion import NoiseSchedule, load_denoiser, sample
from pbrl.sequence.diffusion_train import DiffusionRunConfig, train_diffusion
from pbrl.sequence.shapes import (
    PREFERRED,
    classify_shapes,
    heldout_prompts,
    image_diversity,
    prompt_condition,
    write_shapes_task,
)

SFT_STEPS, SFT_LR, SFT_BATCH = 3000, 1e-3, 64
LR, BATCH = 1e-4, 16
BETA = {"diffusion_dpo": 2000.0, "flow_dpo": 2000.0, "abc": 2000.0, "sudo": 2000.0}
SAMPLES = 16


def make_task(out: Path) -> dict[str, Path]:
    """The shapes task (shared by seeds): SFT images, noisy pairs, held-out prompts, the U-Net config."""
    task = out / "task"
    if not (task / "unet.json").is_file():
        write_shapes_task(task, seed=0)
    return {"sft": task / "sft.h5", "pairs": task / "pairs.h5", "unet": task / "unet.json"}


def train(model: Path, data: Path, out: Path, method: str, *, prediction: str, steps: int, seed: int,
          lr: float = LR, batch: int = BATCH, noise_schedule: str = "scaled_linear",
          **method_fields: Any) -> tuple[Path, float]:
    cfg = DiffusionRunConfig(model=str(model), data=str(data), prediction=prediction, noise_schedule=noise_schedule)
    cfg.method.name = method
    cfg.method.beta = BETA.get(method, cfg.method.beta)
    for key, value in method_fields.items():
        setattr(cfg.method, key, value)
    cfg.train.steps, cfg.train.batch_size, cfg.train.lr, cfg.train.seed = steps, batch, lr, seed
    cfg.train.log_every, cfg.train.checkpoint_every = 50, steps
    if not (out / "metrics.json").is_file():
        train_diffusion(cfg, out, progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    return out / "model", steps / metrics["steps_per_s"] if metrics.get("steps_per_s") else 0.0


def measure(model_dir: Path, prediction: str, seed: int, noise_schedule: str = "scaled_linear") -> dict[str, Any]:
    net, _ = load_denoiser(model_dir)
    net.eval()
    prompts = [p for p in heldout_prompts() for _ in range(SAMPLES)]
    g = torch.Generator().manual_seed(10_000 + seed)
    images = sample(net, NoiseSchedule(prediction, schedule=noise_schedule), prompt_condition(prompts), (1, 16, 16),
                    steps=20, generator=g)
    kinds, valid, _ = classify_shapes(images, prompts)
    preferred = torch.tensor([k == PREFERRED for k in kinds])
    return {"preferred": float(preferred.float().mean()), "valid": float(valid.float().mean()),
            "preferred_valid": float((preferred & valid).float().mean()),
            "diversity": image_diversity(images, len(heldout_prompts()))}


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}"


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


LEARN = [  # (label, method, prediction, fields)
    ("SFT on chosen (ε)", "diffusion_sft", "epsilon", {}),
    ("Diffusion-DPO", "diffusion_dpo", "epsilon", {}),
    ("ABC", "abc", "epsilon", {}),
    ("self-supervised DPO (shuffle)", "sudo", "epsilon", {}),
    ("Diffusion-DRO", "dro", "epsilon", {}),
    ("SFT on chosen (flow)", "diffusion_sft", "flow", {}),
    ("Flow-DPO", "flow_dpo", "flow", {}),
]


def stage_learn(out: Path, seeds: list[int], steps: int) -> dict[str, Any]:
    task = make_task(out)
    results: dict[str, dict[str, list[float]]] = {}
    for seed in seeds:
        run = out / f"seed{seed}"
        refs = {}
        for prediction in ("epsilon", "flow"):
            t0 = time.perf_counter()
            refs[prediction], _ = train(task["unet"], task["sft"], run / f"sft-{prediction}", "diffusion_sft",
                                        prediction=prediction, steps=SFT_STEPS, seed=seed, lr=SFT_LR, batch=SFT_BATCH)
            m = measure(refs[prediction], prediction, seed)
            m["train_s"] = time.perf_counter() - t0
            for k, v in m.items():
                results.setdefault(f"reference ({prediction})", {}).setdefault(k, []).append(v)
            print(f"seed {seed} reference {prediction}: {m}", flush=True)
        for label, method, prediction, fields in LEARN:
            model_dir, seconds = train(refs[prediction], task["pairs"], run / f"{method}-{prediction}", method,
                                       prediction=prediction, steps=steps, seed=seed, **fields)
            m = measure(model_dir, prediction, seed)
            ref_div = results[f"reference ({prediction})"]["diversity"][-1]
            m["diversity_ratio"] = m["diversity"] / ref_div
            m["train_s"] = seconds
            for k, v in m.items():
                results.setdefault(label, {}).setdefault(k, []).append(v)
            print(f"seed {seed} {label}: {m}", flush=True)
    rows = [[label, *(mean_std(r[k]) for k in ("preferred", "valid", "preferred_valid")),
             mean_std(r.get("diversity_ratio", [1.0] * len(seeds))), mean_std(r["train_s"])]
            for label, r in results.items()]
    print_table(f"learning check ({steps} steps from the reference, batch {BATCH} pairs, {len(seeds)} seeds)",
                ["method", "preferred", "valid", "preferred & valid", "diversity / reference's", "train s"], rows)
    return results


STAGES = {"learn": stage_learn}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/diff-bench")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for stage in args.stages:
        results[stage] = STAGES[stage](out, args.seeds, args.steps)
        path.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
