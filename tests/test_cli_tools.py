"""The commands that replaced the README's scripts: `pbrl data topk`, `pbrl curves`, `pbrl likelihood`. Each runs
in this process on tiny synthetic data; bad input gets one line (option or file, got, expected), exit 2, and
nothing written or replaced."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pbrl.cli import main
from pbrl.data.pairing import make_preferences
from pbrl.data.preferences import read_preferences, write_preferences
from pbrl.data.store import Episode, TrajectoryDataset, write_trajectories

QUICK = ["--set", "train.eval_episodes=0", "--set", "agent.hidden_layers=[16]", "--set", "train.device=cpu",
         "--set", "train.log_every=1", "--scale", "cpu", "--quiet"]


def run(capsys, *args: str) -> tuple[int, str, list[str]]:
    """``pbrl ARGS`` in this process: (exit code, stdout, stderr lines)."""
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


def assert_one_line_error(code: int, err: list[str], *needles: str) -> None:
    assert code == 2, err
    assert not any("Traceback" in line for line in err), err
    assert err[-1].startswith("pbrl: error: "), err
    for needle in needles:
        assert needle in err[-1], err[-1]


def two_source_dataset(folder, episodes: int = 12, length: int = 16) -> tuple[str, str]:
    """Half the episodes from an ``expert-sac`` source (a ≈ +0.6, reward 1 per step), half ``random`` (a ≈ −0.6,
    reward 0): sources `pbrl data make` names, so their quality order is known. Returns (trajectories, labels)."""
    rng = np.random.default_rng(0)
    eps = []
    for i in range(episodes):
        good = i % 2 == 0
        act = np.clip((0.6 if good else -0.6) + 0.1 * rng.standard_normal((length, 1)), -1, 1).astype(np.float32)
        eps.append(Episode(rng.standard_normal((length, 3)).astype(np.float32), act,
                           np.full(length, 1.0 if good else 0.0, np.float32), False,
                           rng.standard_normal(3).astype(np.float32), "expert-sac" if good else "random"))
    traj_path = write_trajectories(folder / "two.h5", eps, env_id="Hopper-v5", behaviour_policy="two", seed=0)
    with TrajectoryDataset(traj_path) as ds:
        prefs = write_preferences(folder / "two.prefs.h5", make_preferences(ds, pairs=40, segment=8, seed=0), ds,
                                  teacher={"name": "scripted"}, seed=0)
    return str(traj_path), str(prefs)


@pytest.fixture(scope="module")
def bc_run(tmp_path_factory):
    """A 4-step BC run on :func:`two_source_dataset` (its TensorBoard events log every step): (run, traj, labels)."""
    folder = tmp_path_factory.mktemp("bc")
    traj, labels = two_source_dataset(folder)
    out = folder / "run"
    assert main(["train", "--agent", "bc", "--dataset", labels, "--steps", "4", "--out", str(out), *QUICK]) == 0
    return out, traj, labels


# ------------------------------------------------------------------------------------------------ pbrl data topk

def test_topk_keeps_the_best_episodes_and_labels_them(tmp_path, traj_file, capsys):
    returns = TrajectoryDataset(traj_file).episode_returns()
    out = tmp_path / "top" / "half"  # the folder is made
    code, stdout, err = run(capsys, "data", "topk", str(traj_file), "--fraction", "0.5", "--pairs", "20",
                            "--segment", "5", "--out", str(out))
    assert code == 0, err
    top = TrajectoryDataset(f"{out}.h5")
    assert sorted(top.episode_returns()) == pytest.approx(sorted(np.sort(returns)[-2:]))
    prefs, _ = read_preferences(f"{out}.prefs.h5")
    assert len(prefs) == 20 and int(prefs.segments_a[:, 2].max()) == 5
    assert "2 episodes" in stdout and f"wrote {out}.h5 and {out}.prefs.h5" in stdout


@pytest.mark.parametrize("option, value, message", [
    ("--fraction", "0", "--fraction: fraction: got 0.0, expected a value in (0, 1]"),
    ("--fraction", "1.5", "--fraction: fraction: got 1.5"),
    ("--pairs", "0", "--pairs/--segment: value: got 0/5"),
    ("--segment", "0", "--pairs/--segment: value: got 20/0"),
    ("--segment", "500", "--segment: segment length: got 500, expected at most the longest kept episode"),
])
def test_topk_refuses_nonsense_numbers_and_writes_nothing(tmp_path, traj_file, capsys, option, value, message):
    args = {"--fraction": "0.5", "--pairs": "20", "--segment": "5", option: value}
    code, _, err = run(capsys, "data", "topk", str(traj_file), *[x for kv in args.items() for x in kv],
                       "--out", str(tmp_path / "top"))
    assert_one_line_error(code, err, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["traj.h5"]


def test_topk_never_replaces_an_existing_file(tmp_path, traj_file, capsys):
    (tmp_path / "top.prefs.h5").write_text("someone's labels")
    code, _, err = run(capsys, "data", "topk", str(traj_file), "--segment", "5", "--out", str(tmp_path / "top"))
    assert_one_line_error(code, err, "--out: file: got", "top.prefs.h5 (exists)")
    assert (tmp_path / "top.prefs.h5").read_text() == "someone's labels" and not (tmp_path / "top.h5").exists()
    code, _, err = run(capsys, "data", "topk", str(traj_file), "--out", str(tmp_path / "top.h5"))
    assert_one_line_error(code, err, "--out: path prefix: got", "a prefix without a suffix")


# ------------------------------------------------------------------------------------------------ pbrl curves

def test_curves_tabulate_and_draw_named_runs(bc_run, tmp_path, capsys):
    run_dir, _, _ = bc_run
    png = tmp_path / "curves.png"
    code, stdout, err = run(capsys, "curves", str(run_dir), f"again={run_dir}", "--tag", "train/loss",
                            "--png", str(png), "--title", "BC")
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0] == "| run (train/loss) | 1 | 2 | 3 | 4 | best | last |"
    assert lines[2].startswith("| run | ") and lines[3].startswith("| again | ")
    assert png.stat().st_size > 1000 and lines[-1] == f"wrote {png}"


def test_curves_name_the_missing_run_the_misspelt_tag_and_the_missing_folder(bc_run, tmp_path, capsys):
    run_dir, _, _ = bc_run
    assert_one_line_error(*run(capsys, "curves", str(tmp_path / "nope"))[::2], "nope: run directory: got missing")
    assert_one_line_error(*run(capsys, "curves", str(tmp_path))[::2], "TensorBoard events: got none")
    assert_one_line_error(*run(capsys, "curves", str(run_dir), "--tag", "eval/nope")[::2],
                          "--tag: scalar tag: got 'eval/nope', expected one that the runs logged", "train/loss")
    assert_one_line_error(*run(capsys, "curves", str(run_dir), "--png", str(tmp_path / "no" / "c.png"))[::2],
                          "--png: folder: got")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ pbrl likelihood

def test_likelihood_by_source_and_label_agreement(bc_run, tmp_path, capsys):
    run_dir, _, labels = bc_run
    out = tmp_path / "likelihood.json"
    code, stdout, err = run(capsys, "likelihood", str(run_dir), labels, "--json", str(out))
    assert code == 0, err
    report = json.loads(out.read_text())
    assert list(report["by_source"]) == ["random", "expert-sac"]  # worst first
    assert 0.0 <= report["agreement"][labels] <= 1.0
    assert "| random |" in stdout and f"| {labels} |" in stdout and stdout.strip().endswith(f"wrote {out}")
    code, stdout, err = run(capsys, "likelihood", str(run_dir))  # default: the run's own labels
    assert code == 0 and "| agreement of Σ log π with the decided labels |" in stdout, err


def test_likelihood_refuses_labels_that_are_not_labels_and_a_folder_that_is_not_a_run(bc_run, tmp_path, traj_file,
                                                                                       capsys):
    run_dir, traj, _ = bc_run
    assert_one_line_error(*run(capsys, "likelihood", str(run_dir), traj)[::2],
                          f"{traj}: preferences: got none, expected a dataset with labels")
    with TrajectoryDataset(traj_file) as other:  # labels on other trajectories: their segments index other steps
        elsewhere = write_preferences(tmp_path / "other.prefs.h5", make_preferences(other, pairs=5, segment=4, seed=0),
                                      other, teacher={"name": "scripted"}, seed=0)
    assert_one_line_error(*run(capsys, "likelihood", str(run_dir), str(elsewhere))[::2],
                          "trajectories: got 4 episodes, 97 steps, expected the run's (12 episodes, 192 steps)")
    assert_one_line_error(*run(capsys, "likelihood", str(tmp_path))[::2], "config.toml: got missing")
    assert_one_line_error(*run(capsys, "likelihood", str(run_dir), "--json", str(tmp_path / "out.txt"))[::2],
                          "--json: file: got", "a .json file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.prefs.h5", "traj.h5"]  # the inputs only
