"""Issue 32 for `pbrl train`, `pbrl bench` and `pbrl eval`: a second bench on the same folder, stale cells, progress
off a terminal, Ctrl-C, CPL's warm start under a shorter budget, nonsense numbers and unusable output folders. Each
case gets one line (exit code 2, the option or file the user typed, no traceback) and leaves files as they were."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from pbrl.io import Progress, exclusive_lock
from pbrl.train.bench import plan
from pbrl.train.config import build_config
from tests.conftest import run_cli
from tests.test_train import two_behaviour_dataset

TINY = ["--set", "train.eval_episodes=0", "--set", "agent.hidden_layers=[16]", "--set", "train.batch_size=8",
        "--set", "train.device=cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    """A labelled toy dataset (8 episodes of 24 steps): every cell below trains in a fraction of a second."""
    return two_behaviour_dataset(tmp_path_factory.mktemp("data"), episodes=8)


def bench_cli(data: str, out: Path, *extra: str, agents: str = "bc", seeds: str = "0", steps: str = "2"):
    return run_cli("bench", "--agents", agents, "--datasets", data, "--seeds", seeds, "--steps", steps, "--out", out,
                   "--no-ceiling-check", "--quiet", *TINY, *extra)


def tree(root: Path) -> list[str]:
    """Every path under ``root`` but the lock files (a refused command may have opened one), sorted."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name != ".lock")


def assert_one_line(result, *needles: str) -> str:
    """Exit code 2, no traceback, and a last stderr line naming every needle; returns that line."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    for needle in needles:
        assert needle in line, line
    return line


# ------------------------------------------------------------------------ 1. two benches on one folder
@pytest.mark.parametrize("holder", ["another bench on --out", "a train into the cell"])
def test_a_second_bench_is_refused_before_anything_moves(tmp_path, data, holder):
    """The second bench asks for other settings (3 steps), so it would move the finished 2-step cell aside; while the
    folder (another bench) or the cell itself (a `pbrl train` into it) is locked, it must refuse and move nothing."""
    out = tmp_path / "bench"
    assert bench_cli(data, out).returncode == 0
    cell = out / "runs" / "two" / "bc" / "seed0"
    before, config = tree(out), (cell / "config.toml").read_text()
    with exclusive_lock(out if holder.startswith("another bench") else cell):
        result = bench_cli(data, out, steps="3")
    assert_one_line(result, f"locked by pid {os.getpid()}")
    assert tree(out) == before and (cell / "config.toml").read_text() == config


@pytest.mark.parametrize("option, value", [
    ("--seeds", "0,0"), ("--seeds", ""), ("--seeds", ","), ("--seeds", "-1"), ("--agents", "bc,bc"), ("--agents", ","),
    ("--datasets", "DATA,DATA"), ("--datasets", " "),
])
def test_grid_lists_with_repeats_or_nothing_are_refused_naming_the_option(tmp_path, data, option, value):
    out = tmp_path / "bench"
    grid = {"--agents": "bc", "--datasets": data, "--seeds": "0", option: value.replace("DATA", data)}
    result = run_cli("bench", *[x for kv in grid.items() for x in kv], "--steps", "2", "--out", out, "--quiet", *TINY)
    assert_one_line(result, f"{option}: ")
    assert not out.exists()


# ------------------------------------------------------------------------ 2. a stale cell moved aside, said so
def test_bench_says_which_stale_cell_it_moved_why_and_where(tmp_path, data):
    out = tmp_path / "bench"
    assert bench_cli(data, out).returncode == 0
    result = bench_cli(data, out, "--set", "train.lr=0.001")
    assert result.returncode == 0, result.stderr
    [line] = result.stderr.splitlines()  # with --quiet: the move, and no progress
    stale = next((out / "runs" / "two" / "bc").glob("seed0.stale-*"))
    assert "two bc seed 0" in line and "train.lr: stored 0.0003, asked 0.001" in line and str(stale) in line


# ------------------------------------------------------------------------ 3. progress off a terminal
def test_off_a_terminal_train_and_bench_print_progress_lines(tmp_path, data, monkeypatch):
    monkeypatch.setitem(Progress.__init__.__kwdefaults__, "every", 0.0)  # a line per update, not every 30 s
    trained = run_cli("train", "--agent", "bc", "--dataset", data, "--steps", "3", "--out", tmp_path / "run", *TINY)
    assert trained.returncode == 0 and "bc two: 2/3 (67%) steps" in trained.stderr, trained.stderr
    benched = run_cli("bench", "--agents", "bc", "--datasets", data, "--seeds", "0,1", "--steps", "3", "--out",
                      tmp_path / "bench", "--no-ceiling-check", *TINY)
    assert benched.returncode == 0, benched.stderr
    lines = benched.stderr.splitlines()
    assert any(x.startswith("pbrl bench: 1/2 (50%) cells") for x in lines), benched.stderr   # the grid
    assert any(x.startswith("pbrl bench: cell 2/2: two bc seed 1") for x in lines), benched.stderr
    assert sum(x.startswith("bc two: 2/3 (67%) steps") for x in lines) == 2, benched.stderr  # inside each cell


# ------------------------------------------------------------------------ 4. Ctrl-C
def final_weights(run: Path) -> dict[str, torch.Tensor]:
    newest = sorted((run / "checkpoints").glob("step_*.pt"))[-1]
    return torch.load(newest, map_location="cpu", weights_only=False)["agent"]


def test_ctrl_c_is_one_line_keeps_the_run_and_resumes_bit_exactly(tmp_path, data, monkeypatch):
    """Ctrl-C in `pbrl train` and inside a `pbrl bench` cell, after the first checkpoint: one line, exit 130, the
    checkpoint kept; the same command again ends with the weights of an uninterrupted run (same config in both)."""
    from pbrl.train import loop

    def train(out: Path) -> tuple[object, Path]:
        return run_cli("train", "--agent", "cpl", "--dataset", data, "--steps", "6", "--scale", "cpu", "--out", out,
                       "--quiet", "--set", "train.checkpoint_every=2", *TINY), out

    def bench(out: Path) -> tuple[object, Path]:
        return bench_cli(data, out, "--set", "train.checkpoint_every=2", agents="cpl", steps="6"), \
            out / "runs" / "two" / "cpl" / "seed0"

    real_step = loop.train_step

    def ctrl_c_at_step_3(*args, **kwargs):  # after the checkpoint of step 2, as a user's Ctrl-C would come
        if args[4] == 3:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    whole, reference = train(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    for command in (train, bench):
        monkeypatch.setattr(loop, "train_step", ctrl_c_at_step_3)
        stopped, run_dir = command(tmp_path / command.__name__)
        assert stopped.returncode == 130 and "Traceback" not in stopped.stderr, stopped.stderr
        assert stopped.stderr.strip().splitlines()[-1].startswith(f"pbrl: interrupted: {command.__name__} stopped")
        assert [p.name for p in (run_dir / "checkpoints").glob("step_*.pt")] == ["step_00000002.pt"]
        monkeypatch.setattr(loop, "train_step", real_step)
        resumed, _ = command(tmp_path / command.__name__)
        assert resumed.returncode == 0, resumed.stderr
        a, b = final_weights(run_dir), final_weights(reference)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), command.__name__


# ------------------------------------------------------------------------ 5. CPL's warm start and --steps
@pytest.mark.parametrize("scale, steps, sets, expected", [
    ("cpu", 200, [], {"bc_steps": 80, "warmup_steps": 0}),               # 40 % of the budget, as the preset's 1600/4000
    ("cpu", 1, [], {"bc_steps": 0, "warmup_steps": 0}),                  # any budget still runs (CPL from step 0)
    ("cpu", 8000, [], {"bc_steps": 1600, "warmup_steps": 0}),            # a longer budget keeps the preset's phases
    ("paper", 1000, [], {"bc_steps": 400, "warmup_steps": 20}),          # 200k and 10k of 500k
    ("cpu", 200, ["agent.bc_steps=10"], {"bc_steps": 10, "warmup_steps": 0}),  # the user's own value wins
])
def test_cpl_phases_keep_their_share_of_a_shortened_budget(data, scale, steps, sets, expected):
    cfg = build_config("cpl", data, scale=scale, steps=steps, overrides=["train.device=cpu", *sets])
    assert {k: getattr(cfg.agent_config, k) for k in expected} == expected


def test_a_shortened_cpl_run_says_so_and_records_the_resolved_warm_start(tmp_path, data):
    result = run_cli("train", "--agent", "cpl", "--dataset", data, "--steps", "5", "--scale", "cpu", "--out",
                     tmp_path / "run", "--quiet", *TINY)
    assert result.returncode == 0, result.stderr
    warning = next(x for x in result.stderr.splitlines() if x.startswith("pbrl: warning: cpl:"))
    assert "--steps 5" in warning and "agent.bc_steps 1600 -> 2" in warning
    assert "bc_steps = 2\n" in (tmp_path / "run" / "config.toml").read_text()
    cells, _ = plan(["cpl", "bc"], [data], [0], tmp_path / "bench", steps=200, overrides=["train.eval_episodes=0"])
    assert [c.cfg.agent_config.bc_steps for c in cells if c.agent == "cpl"] == [80]   # bench resolves it the same way
    all_bc = run_cli("train", "--agent", "cpl", "--dataset", data, "--steps", "5", "--dry-run", "--out",
                     tmp_path / "dry", "--set", "agent.bc_steps=9", *TINY)
    assert "agent.bc_steps 9 >= train.steps 5" in all_bc.stderr, all_bc.stderr   # BC only: said, not silent


# ------------------------------------------------------------------------ 6. nonsense numbers
@pytest.mark.parametrize("args, option", [
    (["train", "--agent", "bc", "--dataset", "DATA", "--out", "OUT", "--steps", "0"], "--steps"),
    (["train", "--agent", "bc", "--dataset", "DATA", "--out", "OUT", "--steps", "-5"], "--steps"),
    (["train", "--agent", "bc", "--dataset", "DATA", "--out", "OUT", "--batch-size", "0"], "--batch-size"),
    (["bench", "--agents", "bc", "--datasets", "DATA", "--out", "OUT", "--steps", "-1"], "--steps"),
    (["bench", "--agents", "bc", "--datasets", "DATA", "--out", "OUT", "--steps", "0"], "--steps"),
    (["eval", "OUT", "--episodes", "0"], "--episodes"),
    (["eval", "OUT", "--episodes", "-3"], "--episodes"),
    (["eval", "OUT", "--video", "-1"], "--video"),
    (["eval", "OUT", "--seed", "-1"], "--seed"),
])
def test_nonsense_numbers_are_refused_naming_the_option(tmp_path, data, args, option):
    out = tmp_path / "out"
    result = run_cli(*[data if a == "DATA" else out if a == "OUT" else a for a in args])
    assert_one_line(result, option)
    assert not out.exists()


# ------------------------------------------------------------------------ 7. unusable --out for bench
@pytest.mark.parametrize("case", ["an existing file", "a path under a file", "results.csv a folder", "unwritable"])
def test_an_unusable_bench_out_is_one_line_before_any_training(tmp_path, data, case):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    out = {"an existing file": a_file, "a path under a file": a_file / "sub", "unwritable": Path("/proc/pbrl-test/b"),
           "results.csv a folder": tmp_path / "bench"}[case]
    if case == "results.csv a folder":
        (out / "results.csv").mkdir(parents=True)
    result = bench_cli(data, out)
    assert_one_line(result, str(out), "--out")
    assert a_file.read_text() == "x" and not (tmp_path / "bench" / "runs").exists()
