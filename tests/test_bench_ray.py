"""`pbrl bench --backend ray`: a local Ray cluster trains a 4-cell grid, one task per cell, to the local backend's
results.csv; the options that place Ray tasks are refused without it."""

from __future__ import annotations

import csv
import json

import pytest

from pbrl.train.bench import RaySettings, bench
from tests.conftest import run_cli
from tests.test_train import two_behaviour_dataset

SETS = ["train.eval_episodes=0", "agent.hidden_layers=[16, 16]", "train.batch_size=8", "train.log_every=5"]
SAME = ("dataset", "agent", "seed", "steps", "config_hash", "dataset_sha256", "action_mse", "preference_accuracy")


def rows(path):
    with open(path) as f:
        return [{k: r[k] for k in SAME} for r in csv.DictReader(f)]


def test_a_local_ray_cluster_gives_the_local_results_one_task_per_cell(tmp_path):
    ray = pytest.importorskip("ray")
    data = two_behaviour_dataset(tmp_path, episodes=6)
    grid = (["bc", "cpl"], [data], [0, 1])
    sets = [*SETS, f"train.eval_dataset={data}"]  # offline metrics to compare (on the training pairs themselves)
    bench(*grid, tmp_path / "local", steps=10, overrides=sets, progress=False, ceiling_check=False)
    # one worker: beside the other test process on two cores, a second worker only adds contention (measured 2x slower)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        bench(*grid, tmp_path / "ray", steps=10, overrides=sets, progress=False, ceiling_check=False,
              ray=RaySettings(cpus_per_cell=1))
    finally:
        ray.shutdown()
    local, remote = rows(tmp_path / "local/results.csv"), rows(tmp_path / "ray/results.csv")
    assert len(remote) == 4 and remote == local and all(r["action_mse"] and r["preference_accuracy"] for r in remote)
    cells = [json.loads(p.read_text()) for p in sorted((tmp_path / "ray/runs").glob("*/*/seed*/cell.json"))]
    assert len(cells) == 4 and all(c["backend"] == "ray" and c["finished"] for c in cells)
    assert len({c["ray_task_id"] for c in cells}) == 4  # one task per cell


def test_ray_placement_options_need_the_ray_backend(tmp_path):
    r = run_cli("bench", "--agents", "bc", "--datasets", "x", "--out", tmp_path / "b", "--cpus-per-cell", "2")
    assert r.returncode == 2 and "--cpus-per-cell: backend: got local (the default), expected --backend ray" in r.stderr
    r = run_cli("bench", "--agents", "bc", "--datasets", "x", "--backend", "ray", "--gpus-per-cell", "-1")
    assert r.returncode == 2 and "--gpus-per-cell" in r.stderr and not (tmp_path / "b").exists()
