"""Data-parallel `pbrl seq train` (pbrl.train.loop's data-parallel section): two gloo processes with the global batch of one process
reach the one-process parameters; the known-bad variant (every rank reading the same shard) does not."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

STEPS, BATCH = 10, 8
TOLERANCE = 1e-4  # float32: two processes sum the gradients in another order than one backward; Adam scales each weight's step by 1 / sqrt(v), so tiny differences in small gradients reach ~1e-5 after 10 steps


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(task: dict[str, str]):
    from pbrl.sequence.train import SeqRunConfig

    cfg = SeqRunConfig(model=task["model"], data=task["pairs"], max_length=32, reference="copy")
    cfg.train.steps, cfg.train.batch_size, cfg.train.lr, cfg.train.log_every = STEPS, BATCH, 1e-3, 5
    cfg.train.checkpoint_every = STEPS // 2
    return cfg


def worker(rank: int, world: int, port: int, task: dict[str, str], runs: list[tuple[str, str]]) -> None:
    """One rank, as torchrun starts it (its environment variables), training each ``(variant, out)`` in turn."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"})
    torch.set_num_threads(1)
    import torch.distributed as dist

    from pbrl.sequence.train import train_sequence
    from pbrl.train import loop

    dist.init_process_group("gloo")  # held across both runs: train_sequence joins it and leaves it standing
    good_share = loop.rank_share
    for variant, out in runs:
        # the known-bad variant: every rank collates the first share of the global batch
        loop.rank_share = good_share if variant != "same-shard" else (lambda ix: ix[: len(ix) // world])
        if variant == "resumed":  # stopped half-way (a killed job), then the same command again: every rank resumes
            train_sequence(config(task), out, progress=False, stop_at=STEPS // 2)
        train_sequence(config(task), out, progress=False)
    loop.rank_share = good_share
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict[str, str]:
    from pbrl.sequence.synthetic import make_task, write_tiny_model

    d = tmp_path_factory.mktemp("ddp")
    paths = make_task(seed=0, train_prompts=12, heldout_prompts=2, sft_per_prompt=1, pairs_per_prompt=2).write(d)
    write_tiny_model(d / "model")
    return {"model": str(d / "model"), "pairs": str(paths["pairs"])}


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / f"step_{STEPS:08d}.pt", weights_only=False)["agent"]


def test_two_gloo_processes_train_the_one_process_parameters(task, tmp_path):
    import torch.multiprocessing as mp

    from pbrl.sequence.train import train_sequence

    train_sequence(config(task), tmp_path / "one", progress=False)
    runs = [("sharded", str(tmp_path / "two")), ("same-shard", str(tmp_path / "bad")),
            ("resumed", str(tmp_path / "resumed"))]
    # fork: the ranks inherit the imported modules (spawn would import torch and transformers again, seconds each)
    mp.start_processes(worker, args=(2, free_port(), task, runs), nprocs=2, join=True, start_method="fork")
    one, two, bad = (final_weights(tmp_path / name) for name in ("one", "two", "bad"))
    from transformers import AutoModelForCausalLM

    start = {f"policy.{k}": v for k, v in AutoModelForCausalLM.from_pretrained(task["model"]).state_dict().items()}
    moved = max((one[k] - start[k]).abs().max().item() for k in one if k in start)
    assert one.keys() == two.keys()
    assert moved > 10 * TOLERANCE, moved  # a nonzero learning rate moved the weights
    gap = max((one[k] - two[k]).abs().max().item() for k in one)
    bad_gap = max((one[k] - bad[k]).abs().max().item() for k in one)
    assert gap < TOLERANCE, f"2 processes differ from 1 by {gap:.2e}"
    assert bad_gap > 10 * TOLERANCE, f"every rank on the same shard matched 1 process ({bad_gap:.2e}): the test is blind"
    resumed = final_weights(tmp_path / "resumed")  # every rank resumed from rank 0's checkpoint at step 5
    assert all(torch.equal(resumed[k], two[k]) for k in two)
    # rank 0 alone wrote the run: one TensorBoard file, the final model and metrics
    assert len(list((tmp_path / "two").glob("events.out.tfevents.*"))) == 1
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["steps"] == STEPS and (tmp_path / "two" / "model").is_dir()


def test_trainers_without_data_parallelism_refuse_a_launcher_in_one_line(tmp_path, monkeypatch):
    from pbrl.data.synthetic import two_behaviour_dataset
    from tests.conftest import run_cli

    data = two_behaviour_dataset(tmp_path, episodes=4, pairs=20)
    monkeypatch.setenv("WORLD_SIZE", "2")
    r = run_cli("train", "--agent", "bc", "--dataset", data, "--steps", "2", "--out", tmp_path / "run", "--quiet")
    assert r.returncode == 2 and "WORLD_SIZE: processes: got 2, expected 1 for the control agents" in r.stderr
    r = run_cli("seq", "train", "--method", "diffusion_dpo", "--model", tmp_path / "m.json", "--data", tmp_path / "d.h5",
                "--out", tmp_path / "seq", "--quiet")
    assert r.returncode == 2 and "WORLD_SIZE: processes: got 2, expected 1 for diffusion_dpo" in r.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "seq").exists()
