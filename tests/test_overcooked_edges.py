"""Issue 32 for `pbrl overcooked ...` and `pbrl data import-overcooked`: failed starts that leave nothing behind,
nonsense numbers, PPO's rounding to whole rollouts and its `--set`, unusable `--out` paths, resumes on changed data or
settings, pickles that try to run code, and progress off a terminal. Each refusal is one line (exit code 2, the option
or file the user typed, no traceback)."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("overcooked")

from tests.conftest import run_cli  # noqa: E402

# one game per rollout and one epoch: a rollout is 400 game steps, a whole run about a second
TINY_PPO = ["--set", "ppo.n_games=1", "--set", "ppo.n_epochs=1", "--set", "ppo.hidden=[8]"]


def assert_one_line(result, *needles: str) -> str:
    """Exit code 2, no traceback, and a last stderr line naming every needle; returns that line."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("pbrl: error: "), result.stderr
    for needle in needles:
        assert needle in line, line
    return line


def random_rollouts(path: Path, *, seed: int = 0, episodes: int = 2, horizon: int = 20) -> Path:
    """A tiny Overcooked trajectory dataset (random players, discrete actions) written to ``path``."""
    from pbrl.data.store import write_trajectories
    from pbrl.envs.overcooked import RandomPolicy, play
    from pbrl.train.overcooked import rollout_episodes

    result = play("cramped_room", RandomPolicy(seed), RandomPolicy(seed + 1), episodes=episodes, horizon=horizon,
                  record=True)
    return write_trajectories(path, rollout_episodes(result, source="random"), env_id="Overcooked-cramped_room",
                              behaviour_policy="random", seed=0,
                              metadata={"action_space": {"type": "discrete", "n": 6, "encoding": "one-hot"}})


@pytest.fixture(scope="module")
def rollouts(tmp_path_factory) -> Path:
    return random_rollouts(tmp_path_factory.mktemp("data") / "random.h5")


@pytest.fixture(scope="module")
def labelled(rollouts) -> Path:
    """Ten labelled pairs of the rollouts' segments."""
    from pbrl.data.pairing import make_preferences
    from pbrl.data.preferences import write_preferences
    from pbrl.data.store import TrajectoryDataset

    with TrajectoryDataset(rollouts) as ds:
        prefs = make_preferences(ds, pairs=10, segment=5, seed=0)
        return write_preferences(rollouts.with_suffix(".prefs.h5"), prefs, ds, teacher={"name": "scripted"}, seed=0)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory) -> Path:
    """A run folder with an untrained BC-style ``policy.pt``: a valid partner and pool member."""
    from pbrl.train.overcooked import new_policy

    folder = tmp_path_factory.mktemp("policy")
    new_policy((8,)).save(folder / "policy.pt")
    return folder


@pytest.fixture(scope="module")
def tiny_ppo(tmp_path_factory):
    """`pbrl overcooked ppo` after a misspelt layout, corrected: --steps 300 on 400-step rollouts, not quiet (the
    captured stderr is off a terminal). Returns (run folder, the failed call, the corrected call)."""
    out = tmp_path_factory.mktemp("ppo") / "sp"
    failed = run_cli("overcooked", "ppo", "--layout", "cramped_kitchen", "--steps", "300", "--out", out, *TINY_PPO)
    corrected = run_cli("overcooked", "ppo", "--layout", "cramped_room", "--steps", "300", "--out", out, *TINY_PPO)
    return out, failed, corrected


# ------------------------------------------------------------------------ 1. a failed start leaves nothing
def test_a_misspelt_layout_leaves_no_folder_and_the_corrected_command_runs(tiny_ppo):
    out, failed, corrected = tiny_ppo
    assert_one_line(failed, "--layout", "cramped_kitchen")
    assert corrected.returncode == 0, corrected.stderr
    assert (out / "model.zip").exists()


@pytest.mark.parametrize("case", ["bc: missing dataset", "ppo: missing --init", "hybrid: missing preferences",
                                  "hybrid: missing pool member", "hybrid: pretrained without model.zip"])
def test_a_failed_start_leaves_no_folder(tmp_path, policy_dir, labelled, case):
    out = tmp_path / "run"
    missing = str(tmp_path / "nowhere.h5")
    args, needle = {
        "bc: missing dataset": (["bc", "--dataset", missing], missing),
        "ppo: missing --init": (["ppo", "--init", str(tmp_path / "nowhere"), "--steps", "10"], "nowhere"),
        "hybrid: missing preferences": (["hybrid", "--pool", str(policy_dir), "--preferences", missing], missing),
        "hybrid: missing pool member": (["hybrid", "--pool", str(tmp_path / "gone"), "--preferences", str(labelled)],
                                        "gone"),
        "hybrid: pretrained without model.zip": (["hybrid", "--pool", str(policy_dir), "--preferences", str(labelled),
                                                  "--pretrained", str(policy_dir)], "--pretrained"),
    }[case]
    assert_one_line(run_cli("overcooked", *args, "--out", out, "--quiet"), needle)
    assert not out.exists()


# ------------------------------------------------------------------------ 2. nonsense numbers
@pytest.mark.parametrize("args, option", [
    (["ppo", "--steps", "-5"], "--steps"),
    (["ppo", "--steps", "0"], "--steps"),
    (["ppo", "--seed", "-1"], "--seed"),
    (["bc", "--dataset", "x.h5", "--steps", "-1"], "--steps"),
    (["hybrid", "--pool", "p", "--preferences", "x.h5", "--seed", "99999999999"], "--seed"),
    (["rollouts", "--ego", "random", "--partner", "random", "--episodes", "0"], "--episodes"),
    (["eval", "--ego", "random", "--partner", "random", "--episodes", "0"], "--episodes"),
    (["eval", "--ego", "random", "--partner", "random", "--episodes", "many"], "--episodes"),
])
def test_nonsense_numbers_are_refused(tmp_path, args, option):
    writes = [] if args[0] == "eval" else ["--out", str(tmp_path / "out"), "--quiet"]  # eval writes nothing
    result = run_cli("overcooked", *args, *writes)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"argument {option}: got" in result.stderr.strip().splitlines()[-1], result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("override, needle", [
    ("ppo.lr=-1", "ppo.lr: got -1"),
    ("ppo.n_games=0", "ppo.n_games: got 0"),
    ("ppo.gamma=1.5", "ppo.gamma: got 1.5"),
    ("ppo.hidden=[0]", "ppo.hidden: got [0]"),
    ("ppo.n_steps=100", "ppo.n_steps: got 100"),
    ("ppo.minibatches=100000", "ppo.minibatches: got 100000"),
    ("ppo.lr=fast", "ppo.lr: got 'fast'"),
    ("ppo.bogus=1", "'ppo.bogus=1'"),
    ("agent.lr=1", "'agent.lr=1'"),
])
def test_ppo_set_is_checked_against_the_config_fields(tmp_path, override, needle):
    out = tmp_path / "run"
    assert_one_line(run_cli("overcooked", "ppo", "--set", override, "--out", out, "--quiet"), "--set", needle)
    assert not out.exists()


def test_hybrid_set_takes_sections_and_checks_them(tmp_path):
    out = tmp_path / "run"
    for override, needle in (("ppo.clip_range=0", "ppo.clip_range: got 0"), ("hybrid.rounds=0", "hybrid.rounds: got 0"),
                             ("rounds=0", "hybrid.rounds: got 0")):
        assert_one_line(run_cli("overcooked", "hybrid", "--pool", "p", "--preferences", "x.h5", "--set", override,
                                "--out", out), "--set", needle)
    assert not out.exists()


# ------------------------------------------------------------------------ 3. rounding said, --set recorded; 7. progress
def test_ppo_says_it_rounds_to_whole_rollouts_and_records_its_set(tiny_ppo):
    out, _, corrected = tiny_ppo
    note = [line for line in corrected.stderr.splitlines() if "whole rollouts" in line]
    assert len(note) == 1 and "--steps 300" in note[0] and "400" in note[0], corrected.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["ppo"]["n_games"] == 1 and config["ppo"]["n_epochs"] == 1 and config["ppo"]["hidden"] == [8]
    assert json.loads((out / "curve.json").read_text())["game_steps"] == [400]


def test_ppo_progress_off_a_terminal_is_plain_lines(tiny_ppo):
    """Off a terminal (stderr captured) PPO reports through pbrl.io.Progress: plain status lines, no tqdm bar."""
    _, _, corrected = tiny_ppo
    assert re.search(r"^ppo sp: 400/400 \(100%\) steps", corrected.stderr, re.MULTILINE), corrected.stderr
    assert "\r" not in corrected.stderr and "it/s" not in corrected.stderr


# ------------------------------------------------------------------------ 5. resumes on the same settings and data
def test_a_resume_with_other_settings_names_stored_and_asked_values(tiny_ppo):
    out, _, _ = tiny_ppo
    result = run_cli("overcooked", "ppo", "--steps", "300", "--seed", "1", "--out", out, *TINY_PPO[:-2], "--quiet")
    assert_one_line(result, "config.json", "seed: stored 0, asked 1", "ppo.hidden: stored [8], asked [128, 128]")


def test_bc_resumes_only_on_the_data_it_started_on(tmp_path, rollouts):
    data = tmp_path / "data.h5"
    data.write_bytes(rollouts.read_bytes())
    out = tmp_path / "bc"
    assert run_cli("overcooked", "bc", "--dataset", data, "--steps", "2", "--out", out, "--quiet").returncode == 0
    assert json.loads((out / "data.json").read_text())["trajectories"]["file"] == str(data)
    random_rollouts(data, seed=5)  # the same name, other episodes
    assert_one_line(run_cli("overcooked", "bc", "--dataset", data, "--steps", "2", "--out", out, "--quiet"),
                    str(data), "sha256")


# ------------------------------------------------------------------------ 4. an unusable --out
def _unusable_out(tmp_path: Path, kind: str, name: str) -> Path:
    if kind == "an existing file":
        path = tmp_path / name
        path.write_text("keep me")
        return path
    if kind == "a path under a file":
        (tmp_path / "file").write_text("keep me")
        return tmp_path / "file" / name
    if kind == "an existing directory":
        (tmp_path / name).mkdir()
        return tmp_path / name
    raise AssertionError(kind)


@pytest.mark.parametrize("command, name, kinds", [
    (["overcooked", "ppo", "--steps", "10"], "run", ["an existing file", "a path under a file"]),
    (["overcooked", "bc", "--dataset", "{rollouts}", "--steps", "2"], "run", ["an existing file", "a path under a file"]),
    (["overcooked", "hybrid", "--pool", "{policy}", "--preferences", "{labelled}"], "run",
     ["an existing file", "a path under a file"]),
    (["overcooked", "rollouts", "--ego", "random", "--partner", "random", "--episodes", "1"], "r.h5",
     ["an existing file", "a path under a file", "an existing directory"]),
    (["overcooked", "groups"], "g.toml", ["an existing file", "a path under a file", "an existing directory"]),
    # a missing --pickle: the old code read it first, so a refusal that names --out shows --out is checked before work
    (["data", "import-overcooked", "--layout", "cramped_room", "--pickle", "{missing}"], "t.h5",
     ["an existing file", "a path under a file", "an existing directory"]),
])
def test_an_unusable_out_is_one_line_before_any_work(tmp_path, rollouts, labelled, policy_dir, command, name, kinds):
    fill = {"{rollouts}": str(rollouts), "{labelled}": str(labelled), "{policy}": str(policy_dir),
            "{missing}": str(tmp_path / "missing.pickle")}
    for kind in kinds:
        where = tmp_path / kind.replace(" ", "-")
        where.mkdir()
        out = _unusable_out(where, kind, name)
        before = sorted(where.rglob("*"))
        result = run_cli(*[fill.get(a, a) for a in command], "--out", out)
        assert_one_line(result, "--out", str(out))
        assert sorted(where.rglob("*")) == before, kind
        if out.is_file():
            assert out.read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_is_one_line(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        assert_one_line(run_cli("overcooked", "ppo", "--steps", "10", "--out", folder / "run"), "--out")
        assert_one_line(run_cli("overcooked", "groups", "--out", folder / "g.toml"), "--out")
    finally:
        folder.chmod(0o755)


# ------------------------------------------------------------------------ 6. pickles that try to run code
class Call:
    """Unpickles as ``function(*args)``: what a hostile trials file looks like."""

    def __init__(self, function, *args) -> None:
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def global_call(module: str, name: str, *args) -> bytes:
    """A pickle that calls ``module.name(*args)`` under exactly that name, as ``__reduce__`` writes it, without importing
    the module (``pandas.io.pickle.read_pickle`` is ``pandas.read_pickle``: ``__reduce__`` would write the shorter
    name)."""
    return b"c" + f"{module}\n{name}\n".encode() + pickle.dumps(args, protocol=0)[:-1] + b"R."


def hostile_pickle(kind: str, folder: Path, marker: Path) -> tuple[bytes, str]:
    """(pickle bytes, the 'module.name' the refusal must name) for one way of running code on load."""
    touch = Call(os.system, f"touch {marker}")
    inner = folder / "inner.pickle"
    inner.write_bytes(pickle.dumps(touch))
    if kind == "builtins.eval":
        return pickle.dumps(Call(eval, f"__import__('pathlib').Path({str(marker)!r}).touch()")), "builtins.eval"
    if kind == "os.system":
        return pickle.dumps(touch), f"{os.system.__module__}.system"
    if kind == "subprocess.Popen":
        return pickle.dumps(Call(subprocess.Popen, ["touch", str(marker)])), "subprocess.Popen"
    if kind == "numpy.load":
        npy = folder / "objects.npy"
        np.save(npy, np.array([touch], dtype=object), allow_pickle=True)
        return pickle.dumps(Call(np.load, str(npy), None, True)), "numpy.load"
    if kind == "pandas.read_pickle":  # written by hand too: importing pandas to pickle it costs a second
        return global_call("pandas", "read_pickle", str(inner)), "pandas.read_pickle"
    if kind == "pandas.io.pickle.read_pickle":
        return global_call("pandas.io.pickle", "read_pickle", str(inner)), "pandas.io.pickle.read_pickle"
    if kind == "numpy runstring":
        utils = pytest.importorskip("numpy.testing._private.utils")
        if not hasattr(utils, "runstring"):
            pytest.skip("this numpy has no runstring")
        code = f"import pathlib; pathlib.Path({str(marker)!r}).touch()"
        return pickle.dumps(Call(utils.runstring, code, {})), "numpy.testing._private.utils.runstring"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["builtins.eval", "os.system", "subprocess.Popen", "numpy.load", "pandas.read_pickle",
                                  "pandas.io.pickle.read_pickle", "numpy runstring"])
def test_a_pickle_that_runs_code_is_refused_unrun(tmp_path, kind):
    marker = tmp_path / "ran"
    payload, found = hostile_pickle(kind, tmp_path, marker)
    path = tmp_path / "trials.pickle"
    path.write_bytes(payload)
    out = tmp_path / "t.h5"
    result = run_cli("data", "import-overcooked", "--layout", "cramped_room", "--pickle", path, "--out", out)
    assert_one_line(result, str(path), found)
    assert not marker.exists() and not out.exists()
