"""The `pbrl` command end to end on the real simulators and the shipped dataset, and its one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pbrl.cli import dataset_info, main
from pbrl.data.registry import load_dataset
from pbrl.data.store import TrajectoryDataset

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = "hopper-medium-replay-small"


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "pbrl.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_help_is_there_for_every_command():
    for args in ([], ["data"], ["data", "make"], ["data", "label"], ["data", "info"], ["train"], ["eval"]):
        out = run_cli(*args, "--help")
        assert out.returncode == 0 and "usage: pbrl" in out.stdout


def test_shipped_dataset_loads_with_card_and_checksums():
    data = load_dataset(SHIPPED)
    assert data.env == "hopper" and data.trajectories.env_id == "Hopper-v5"
    assert data.preferences is not None and len(data.preferences) >= 1000
    assert (ROOT / "datasets" / f"{SHIPPED}.h5").stat().st_size < 20 * 2**20
    info = dataset_info(SHIPPED)
    assert info["segment_length"] == 64 and data.card["made"]["teacher"]["name"] == "regret"
    assert dataset_info(f"{SHIPPED}-return")["label_agreement"] == 1.0  # the return teacher follows returns
    assert info["return"]["max"] > 3 * info["return"]["p25"]  # mixed quality: the point of medium-replay


def test_train_then_eval_on_the_shipped_dataset(tmp_path):
    out = tmp_path / "cpl"
    r = run_cli("train", "--agent", "cpl", "--dataset", SHIPPED, "--steps", "30", "--seed", "3", "--out", str(out),
                "--scale", "cpu", "--set", "train.eval_episodes=2", "--set", "agent.bc_steps=10", "--quiet")
    assert r.returncode == 0, r.stderr
    result = json.loads((out / "eval.json").read_text())
    for key in ("agent", "dataset", "normalized_score", "return_mean", "return_std", "episodes", "seed"):
        assert key in result
    assert result["agent"] == "cpl" and result["dataset"] == SHIPPED and result["seed"] == 3 and result["episodes"] == 2
    assert json.loads(r.stdout.strip().splitlines()[-1])["normalized_score"] == result["normalized_score"]
    r = run_cli("eval", str(out), "--episodes", "3")
    assert r.returncode == 0, r.stderr
    again = json.loads((out / "eval.json").read_text())
    assert again["episodes"] == 3 and len(again["returns"]) == 3


def test_data_make_label_info_for_mujoco_and_metaworld(tmp_path):
    hop = tmp_path / "hop.h5"
    assert main(["data", "make", "--env", "Hopper-v5", "--mixture", "random", "--transitions", "300", "--seed", "1",
                 "--out", str(hop)]) == 0
    with TrajectoryDataset(hop) as ds:
        assert ds.num_transitions >= 300 and ds.env_id == "Hopper-v5" and "reward_ctrl" in ds.info_keys
        assert ds.metadata["mixture"] == "random" and ds.metadata["seed"] == 1
    mw = tmp_path / "bp.h5"
    assert main(["data", "make", "--env", "button-press", "--transitions", "1000", "--noise", "0.1,1.0", "--seed", "0",
                 "--out", str(mw)]) == 0
    with TrajectoryDataset(mw) as ds:
        assert ds.num_episodes == 2 and ds.episode_lengths.tolist() == [500, 500] and "success" in ds.info_keys
        assert ds.episode_sources == ["scripted+noise0.1", "scripted+noise1"]
        assert ds.info("success")[:500].max() == 1.0  # the lightly-noised scripted policy presses the button
    prefs = tmp_path / "bp.prefs.h5"
    assert main(["data", "label", str(mw), "--pairs", "50", "--segment", "64", "--beta", "0.5", "--out", str(prefs)]) == 0
    info = dataset_info(str(prefs))
    assert info["pairs"] == 50 and info["episodes"] == 2 and 0.5 < info["label_agreement"] <= 1.0


@pytest.mark.parametrize("args, message", [
    (["train", "--agent", "nope", "--dataset", SHIPPED, "--out", "x"], "--agent: agent: got 'nope', expected one of"),
    (["train", "--agent", "cpl", "--dataset", "missing-set", "--out", "x"], "--dataset: dataset: got 'missing-set'"),
    (["train", "--agent", "cpl", "--dataset", SHIPPED, "--out", "x", "--set", "agent.nope=1"], "agent.nope: got unknown field"),
    (["data", "make", "--env", "Hopper-v99", "--out", "x.h5"], "--env: environment: got 'Hopper-v99', expected one of"),
    (["data", "info", "/nonexistent/file.h5"], "/nonexistent/file.h5: file: got missing"),
    (["data", "label", SHIPPED, "--pairs", "5", "--segment", "5000", "--out", "y.h5"], "segment length: got 5000"),
])
def test_bad_input_gets_one_line_error_and_writes_nothing(tmp_path, args, message):
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pbrl: error: ") and message in lines[0], r.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not __import__("ctypes.util").util.find_library("OSMesa"),
                    reason="needs OSMesa for headless rendering (apt-get install libosmesa6)")
def test_eval_writes_videos(tmp_path):
    out = tmp_path / "bc"
    r = run_cli("train", "--agent", "bc", "--dataset", SHIPPED, "--steps", "5", "--out", str(out), "--scale", "cpu",
                "--set", "train.eval_episodes=1", "--quiet")
    assert r.returncode == 0, r.stderr
    r = run_cli("eval", str(out), "--episodes", "1", "--video", "1")
    assert r.returncode == 0, r.stderr
    video = out / "videos" / "episode_0.mp4"
    assert video.exists() and video.stat().st_size > 1000
    assert json.loads((out / "eval.json").read_text())["videos"] == [str(video)]
