"""The `pbrl` command end to end on the real simulators and the shipped dataset, and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pbrl.cli import dataset_info, main
from pbrl.data.registry import load_dataset
from pbrl.data.store import TrajectoryDataset
from tests.conftest import run_cli, run_cli_process

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = "hopper-medium-replay-small"


def test_help_is_there_for_every_command():
    for args in ([], ["data"], ["data", "make"], ["data", "label"], ["data", "info"], ["train"], ["eval"]):
        out = run_cli(*args, "--help")
        assert out.returncode == 0 and "usage: pbrl" in out.stdout


@pytest.mark.parametrize("group", ["data", "train", "eval", "bench", "seq", "overcooked", "annotate"])
def test_the_real_entry_point_starts_every_command_group(group):
    """One real ``python -m pbrl.cli`` per command group: the in-process calls above skip the interpreter's start."""
    out = run_cli_process(group, "--help")
    assert out.returncode == 0 and f"usage: pbrl {group}" in out.stdout, out.stderr


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
    before = (out / "eval.json").read_bytes()
    r = run_cli("eval", str(out), "--episodes", "3")
    assert r.returncode == 0, r.stderr
    assert (out / "eval.json").read_bytes() == before  # the run's own result is never overwritten
    again = json.loads((out / "eval-step30-3ep-seed100000.json").read_text())
    assert again["episodes"] == 3 and len(again["returns"]) == 3 and again["checkpoint"] == "step_00000030.pt"


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
    (["data", "label", SHIPPED, "--pairs", "5", "--gamma", "0.9", "--out", "y.h5"], "--gamma: option: got 0.9, expected --myopic"),
    (["data", "label", SHIPPED, "--pairs", "5", "--critic", "iql", "--out", "y.h5"], "--critic/--expert: critic: got iql"),
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
    r = run_cli("eval", str(out), "--episodes", "1", "--video", "1", "--video-size", "96")
    assert r.returncode == 0, r.stderr
    video = out / "videos" / "episode_0.mp4"
    assert video.exists() and video.stat().st_size > 1000
    import imageio.v2 as imageio

    assert imageio.mimread(video)[0].shape == (96, 96, 3)
    assert json.loads((out / "eval-step5-1ep-seed100000.json").read_text())["videos"] == [str(video)]


def test_paths_round_trip_whatever_their_suffix_and_relabelling_is_guarded(tmp_path):
    hop = tmp_path / "hop.hdf5"
    assert main(["data", "make", "--env", "Hopper-v5", "--mixture", "random", "--transitions", "400", "--seed", "1",
                 "--out", str(hop)]) == 0
    assert dataset_info(str(hop))["episodes"] >= 1
    bare = tmp_path / "labels" / "x"  # no suffix: written as given, read back by content
    bare.parent.mkdir()
    assert main(["data", "label", str(hop), "--pairs", "40", "--segment", "8", "--out", str(bare)]) == 0
    assert dataset_info(str(bare))["pairs"] == 40
    assert load_dataset(str(bare)).preferences_path == bare
    before = bare.read_bytes()
    r = run_cli("data", "label", str(hop), "--pairs", "40", "--segment", "8", "--seed", "1", "--out", str(bare))
    assert r.returncode == 2 and "(exists), expected a new name, or --force to replace" in r.stderr
    assert bare.read_bytes() == before
    assert main(["data", "label", str(hop), "--pairs", "40", "--segment", "8", "--seed", "1", "--force",
                 "--out", str(bare)]) == 0
    assert bare.read_bytes() != before
    d4 = tmp_path / "d4.hdf5"
    assert main(["data", "export-d4rl", str(hop), "--out", str(d4)]) == 0
    r = run_cli("data", "info", str(d4))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "layout: got D4RL's" in r.stderr and "pbrl data import-d4rl" in r.stderr


def test_a_run_refuses_to_resume_on_changed_labels_and_writes_nothing(tmp_path):
    hop = tmp_path / "hop.h5"
    assert main(["data", "make", "--env", "Hopper-v5", "--mixture", "random", "--transitions", "400", "--seed", "1",
                 "--out", str(hop)]) == 0
    prefs = tmp_path / "hop.prefs.h5"
    assert main(["data", "label", str(hop), "--pairs", "40", "--segment", "8", "--out", str(prefs)]) == 0
    out = tmp_path / "run"
    args = ["train", "--agent", "bc", "--dataset", str(prefs), "--steps", "4", "--scale", "cpu", "--out", str(out),
            "--set", "train.eval_episodes=0", "--set", "train.checkpoint_every=2", "--quiet"]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    recorded = json.loads((out / "data.json").read_text())
    assert set(recorded) == {"trajectories", "preferences"} and recorded["preferences"]["file"] == str(prefs)
    assert main(["data", "label", str(hop), "--pairs", "40", "--segment", "8", "--seed", "7", "--force",
                 "--out", str(prefs)]) == 0
    files = sorted(p.name for p in out.rglob("*"))
    r = run_cli(*args[:6], "8", *args[7:])  # resume towards more steps
    assert r.returncode == 2 and "sha256" in r.stderr and "the preferences this run started on" in r.stderr
    assert sorted(p.name for p in out.rglob("*")) == files


def test_a_relabelled_card_says_how_it_was_labelled_and_keeps_the_oracle_and_the_control(tmp_path):
    import tomllib

    assert run_cli("data", "make", "--env", "Hopper-v5", "--mixture", "random", "--transitions", "300", "--seed", "1",
                   "--out", "tiny", cwd=tmp_path).returncode == 0
    card = tmp_path / "datasets" / "tiny.toml"
    card.write_text(card.read_text() + '\n[oracle]\nagent = "iql-oracle"\nnormalized_score = 1.5\n')
    r = run_cli("data", "label", "tiny", "--pairs", "30", "--segment", "8", "--mistake", "0.1", "--out", "tiny",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    written = tomllib.loads(card.read_text())
    assert written["labels"] == ("30 pairs of 8-step segments, uniform pairing (segments), labelled by the return teacher, "
                                 "noise: mistake 0.1; seed 0.")
    assert written["oracle"]["normalized_score"] == 1.5 and written["preferences"] == "tiny.prefs.h5"
    card.write_text(card.read_text() + '\n[control]\nagent = "iql-constant"\nnormalized_score = 2.5\n')
    r = run_cli("data", "label", "tiny", "--pairs", "30", "--segment", "8", "--seed", "2", "--force", "--out", "tiny",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    written = tomllib.loads(card.read_text())
    assert written["made"]["label_command"] == "pbrl data label tiny --pairs 30 --segment 8 --seed 2 --out tiny"
    assert written["oracle"]["normalized_score"] == 1.5 and written["control"]["normalized_score"] == 2.5
