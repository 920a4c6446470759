"""Issue 13's hostile-user cases, one test per case (named after it), and fuzz tests of the label importers and
of `--set` through `pbrl train --dry-run`: bad input gets one line (option or file, got, expected), exit 2, and
nothing written."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pbrl.agents import AGENTS
from pbrl.cli import main
from pbrl.data.formats import export_minari, import_labels
from pbrl.data.pairing import make_preferences
from pbrl.data.store import TrajectoryDataset
from pbrl.errors import DatasetError, NonFiniteError, PbrlError
from pbrl.fields import Bounds
from pbrl.train.config import build_config
from pbrl.train.loop import Checkpoints, TrainConfig
from pbrl.train.trainer import train
from tests.conftest import write_episodes
from tests.test_train import two_behaviour_dataset

QUICK = ["--set", "train.eval_episodes=0", "--set", "agent.hidden_layers=[16]", "--set", "train.device=cpu",
         "--scale", "cpu", "--quiet"]


def cli(capsys, *args) -> tuple[int, list[str]]:
    """``pbrl ARGS`` in this process: (exit code, stderr lines)."""
    code = main(list(args))
    return code, capsys.readouterr().err.strip().splitlines()


def assert_one_line_error(code, err, *needles):
    assert code == 2, err
    assert not any("Traceback" in line for line in err), err
    assert err[-1].startswith("pbrl: error: "), err
    for needle in needles:
        assert needle in err[-1], err[-1]


@pytest.fixture
def prefs_file(tmp_path):
    return two_behaviour_dataset(tmp_path)


@pytest.fixture
def hopper_prefs(tmp_path):
    """A few random episodes with Hopper-v5's sizes (11 observations, 3 actions) and labels: runs `pbrl eval`."""
    from pbrl.data.preferences import write_preferences
    from pbrl.data.store import Episode, write_trajectories

    rng = np.random.default_rng(0)
    eps = [Episode(rng.standard_normal((40, 11)).astype(np.float32), rng.uniform(-1, 1, (40, 3)).astype(np.float32),
                   rng.standard_normal(40).astype(np.float32), True, np.zeros(11, np.float32), "r") for _ in range(6)]
    ds = TrajectoryDataset(write_trajectories(tmp_path / "hop.h5", eps, env_id="Hopper-v5", behaviour_policy="r", seed=0))
    prefs = make_preferences(ds, pairs=50, segment=8, seed=0)
    return str(write_preferences(tmp_path / "hop.prefs.h5", prefs, ds, teacher={"name": "scripted"}, seed=0))


# ------------------------------------------------------------------------------------------------ case 1
@pytest.mark.parametrize("args, needle", [
    (["--steps", "-5"], "--steps: train.steps: got -5, expected an integer >= 1"),
    (["--set", "train.steps=-5"], "--set: train.steps: got -5"),
    (["--batch-size", "0"], "--batch-size: train.batch_size: got 0"),
    (["--set", "agent.hidden_layers=[0]"], "agent.hidden_layers: got [0]"),
    (["--set", "agent.hidden=0"], "agent.hidden: got unknown field"),
    (["--set", "train.lr=-1"], "train.lr: got -1.0, expected a finite number > 0"),
    (["--set", "train.lr=inf"], "train.lr: got inf"),
    (["--set", "agent.dropout=1.5"], "agent.dropout: got 1.5, expected a finite number >= 0 and < 1"),
    (["--set", "train.checkpoint_every=0"], "train.checkpoint_every: got 0"),
    (["--set", "train.log_every=0"], "train.log_every: got 0"),
    (["--set", "train.threads=0"], "train.threads: got 0"),
    (["--set", "train.device=tpu"], "train.device: got 'tpu'"),
    (["--set", "agent.alpha=nan"], "agent.alpha: got nan"),
    (["--set", "agent.policy=foo"], "agent.policy: got 'foo', expected one of"),
    (["--set", "agent.log_std_min=3"], "agent.log_std_min: got 3.0, expected less than log_std_max"),
    (["--set", "train.seed=" + "9" * 5001], "train.seed: got '9999"), (["--set", "train.seed=" + "9" * 30], "expected an integer >= 0 and < 9223372036854775808"),
])
def test_case1_config_values_that_make_no_sense_are_refused_before_anything_is_written(tmp_path, capsys, prefs_file,
                                                                                      args, needle):
    out = tmp_path / "run"
    code, err = cli(capsys, "train", "--agent", "cpl", "--dataset", prefs_file, "--out", str(out), *QUICK, *args)
    assert_one_line_error(code, err, needle)
    assert not out.exists()


def test_case1_every_config_field_declares_its_bounds_in_one_place():
    numeric = []
    for cls in {TrainConfig, *(a.Config for a in AGENTS.values())}:
        for f in dataclasses.fields(cls):
            if f.type in ("int", "float", "list[int]", "str") and f.name not in ("amp", "compile"):
                numeric.append((cls.__name__, f.name, "bounds" in f.metadata))
    undeclared = [(c, n) for c, n, has in numeric if not has]
    assert not undeclared, f"fields without declared bounds: {undeclared}"
    assert Bounds(gt=0).accepts(1e-9) and not Bounds(gt=0).accepts(0.0) and not Bounds().accepts(float("nan"))


# ------------------------------------------------------------------------------------------------ case 2
def test_case2_a_failed_run_leaves_nothing_to_block_the_corrected_command(tmp_path, capsys, prefs_file, monkeypatch):
    out = tmp_path / "run"
    code, err = cli(capsys, "train", "--agent", "cpl", "--dataset", prefs_file, "--out", str(out), *QUICK,
                    "--set", "agent.dropout=1.5", "--steps", "4")
    assert_one_line_error(code, err, "agent.dropout")
    assert not out.exists()
    # a failure after the directory was made (here: building the agent) takes the directory back too
    import pbrl.train.trainer as trainer

    def broken(*a, **k):
        raise DatasetError("synthetic failure while building the agent")

    monkeypatch.setattr(trainer, "build_agent", broken)
    code, err = cli(capsys, "train", "--agent", "cpl", "--dataset", prefs_file, "--out", str(out), *QUICK, "--steps", "4")
    assert code == 2 and not out.exists()
    monkeypatch.undo()
    code, err = cli(capsys, "train", "--agent", "cpl", "--dataset", prefs_file, "--out", str(out), *QUICK,
                    "--set", "agent.dropout=0.2", "--steps", "4")
    assert code == 0 and (out / "eval.json").exists()


# ------------------------------------------------------------------------------------------------ case 3
def test_case3_a_dataset_its_simulator_cannot_run_is_refused_before_training(tmp_path, capsys, prefs_file):
    out = tmp_path / "run"
    code, err = cli(capsys, "train", "--agent", "bc", "--dataset", prefs_file, "--out", str(out), "--scale", "cpu",
                    "--steps", "2", "--quiet")
    assert_one_line_error(code, err, "observation and action sizes: got (3, 1), expected (11, 3)")
    assert not out.exists()


def test_case3_out_paths_that_cannot_be_run_directories(tmp_path, capsys, prefs_file):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for out, needle in ((a_file, "--out: got an existing file"), (a_file / "sub", "--out: got a path under the file"),
                        (Path("/proc/pbrl-test/run"), "expected a directory this user can write to")):
        code, err = cli(capsys, "train", "--agent", "bc", "--dataset", prefs_file, "--out", str(out), *QUICK, "--steps", "2")
        assert_one_line_error(code, err, str(out), needle)
    assert a_file.read_text() == "x"


def test_case3_a_relative_dataset_path_is_stored_resolved(tmp_path, capsys, prefs_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rel = os.path.relpath(prefs_file, tmp_path)
    assert cli(capsys, "train", "--agent", "bc", "--dataset", rel, "--out", "run", *QUICK, "--steps", "2")[0] == 0
    stored = (tmp_path / "run" / "config.toml").read_text()
    assert f'dataset = "{Path(prefs_file).resolve()}"' in stored
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = build_config("bc", "hopper-medium-replay-small", scale="cpu")
    assert cfg.dataset == "hopper-medium-replay-small"  # a card name stays a name
    from pbrl.train.trainer import load_run

    _, agent, data = load_run(tmp_path / "run", "cpu")  # found from another directory
    assert data.trajectories.num_episodes > 0


# ------------------------------------------------------------------------------------------------ case 4
def test_case4_a_nan_between_log_steps_never_reaches_a_checkpoint(tmp_path, prefs_file, monkeypatch):
    from pbrl.agents.bc import BC

    real = BC.loss

    def poisoned(self, batch, step):
        out = real(self, batch, step)
        return dataclasses.replace(out, loss=out.loss * float("nan")) if step == 6 else out

    monkeypatch.setattr(BC, "loss", poisoned)
    cfg = build_config("bc", prefs_file, scale="cpu", steps=20, overrides=[
        "train.eval_episodes=0", "agent.hidden_layers=[16]", "train.device=cpu", "train.log_every=100",
        "train.checkpoint_every=5"])
    with pytest.raises(NonFiniteError, match="non-finite value at or before step 10"):
        train(cfg, tmp_path / "run", progress=False)
    names = [p.name for p in Checkpoints(tmp_path / "run" / "checkpoints", 9).all()]
    assert names == ["step_00000005.pt"]  # step 10's checkpoint (after the NaN at step 7) was refused


def test_case4_a_checkpoint_with_nan_weights_is_not_evaluated(tmp_path, capsys, hopper_prefs):
    out = tmp_path / "run"
    assert cli(capsys, "train", "--agent", "bc", "--dataset", hopper_prefs, "--out", str(out), *QUICK, "--steps", "3")[0] == 0
    path = Checkpoints(out / "checkpoints", 1).latest()
    state = torch.load(path, weights_only=False)
    key = next(k for k, v in state["agent"].items() if v.is_floating_point())
    state["agent"][key] = state["agent"][key] * float("nan")
    torch.save(state, path)
    code, err = cli(capsys, "eval", str(out), "--episodes", "1")
    assert_one_line_error(code, err, str(path), "non-finite values")
    assert not list(out.glob("eval-step*.json"))


# ------------------------------------------------------------------------------------------------ case 5
def test_case5_a_truncated_newest_checkpoint_falls_back_and_stale_temporaries_go(tmp_path, capsys, hopper_prefs):
    out = tmp_path / "run"
    sets = ["train.eval_episodes=0", "agent.hidden_layers=[16]", "train.device=cpu", "train.checkpoint_every=2",
            "train.keep_checkpoints=3"]
    args = ["train", "--agent", "bc", "--dataset", hopper_prefs, "--out", str(out), "--scale", "cpu", "--quiet",
            "--steps", "8", *[a for x in sets for a in ("--set", x)]]
    assert train(build_config("bc", hopper_prefs, scale="cpu", overrides=sets, steps=8), out, progress=False,
                 stop_at=6) is None  # stopped at step 6 (a time-boxed session)
    ckpts = Checkpoints(out / "checkpoints", 3)
    newest = ckpts.latest()
    newest.write_bytes(newest.read_bytes()[:100])
    stale = out / "checkpoints" / ".step_00000008.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    code, err = cli(capsys, "eval", str(out), "--episodes", "1")
    assert code == 0 and any("unreadable" in line and newest.name in line for line in err), err
    assert json.loads(next(out.glob("eval-step4-*.json")).read_text())["checkpoint"] == "step_00000004.pt"
    code, err = cli(capsys, *args)
    assert code == 0 and any("resuming from step_00000004.pt" in line for line in err), err
    assert not stale.exists()
    assert [p.name for p in ckpts.all()][-1] == "step_00000008.pt"
    for p in ckpts.all():
        p.write_bytes(b"")
    code, err = cli(capsys, "eval", str(out), "--episodes", "1")
    assert_one_line_error(code, err, "none readable")


# ------------------------------------------------------------------------------------------------ case 6
HOLDER = """
import sys, time
from pathlib import Path
from pbrl.io import exclusive_lock
with exclusive_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_case6_a_second_writer_is_refused_naming_the_holder(tmp_path, capsys, prefs_file):
    """Fails when the trainer stops taking the lock: the second command would then train and exit 0."""
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, err = cli(capsys, "train", "--agent", "bc", "--dataset", prefs_file, "--out", str(out), *QUICK, "--steps", "2")
        assert_one_line_error(code, err, f"locked by pid {holder.pid}", "no other process training into it")
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    assert cli(capsys, "train", "--agent", "bc", "--dataset", prefs_file, "--out", str(out), *QUICK, "--steps", "2")[0] == 0


# ------------------------------------------------------------------------------------------------ case 7
ROW = {"query_id": "q1", "a_episode": 0, "a_start": 0, "a_length": 5, "b_episode": 2, "b_start": 10, "b_length": 5,
       "choice": "a", "annotator": "bob", "group": 1, "timestamp": "2026-11-23T10:00:00Z"}
HEADER = ",".join(ROW)


def csv_text(*rows) -> str:
    return HEADER + "\n" + "".join(",".join(str(r[k]) for k in ROW) + "\n" for r in rows)


@pytest.mark.parametrize("name, content, needle", [
    ("latin1.jsonl", json.dumps({**ROW, "annotator": "Zoë"}, ensure_ascii=False).encode("latin-1") + b"\n",
     "latin1.jsonl:1: encoding: got byte 0xeb"),
    ("group.jsonl", json.dumps({**ROW, "group": 2**31}) + "\n", "field 'group': got 2147483648, expected an integer from 0"),
    ("digits.jsonl", '{"query_id": "q", "a_episode": ' + "9" * 5001 + "}\n", "labels"),
    ("digits.csv", csv_text({**ROW, "a_start": "9" * 5001}), "field 'a_start': got '99999"),
    ("nested.jsonl", "[" * 100_000 + "]" * 100_000 + "\n", "row: got 200,000 characters"),
    ("nested2.jsonl", '{"a": ' + "[" * 500 + "]" * 500 + "}\n", "JSON nested deeper than 8 levels"),
    ("bigfield.csv", csv_text({**ROW, "annotator": "x" * (130 * 1024)}), "row: got 133,"),
    ("bigname.jsonl", json.dumps({**ROW, "annotator": "y" * 1000}) + "\n", "field 'annotator': got 1,000 characters"),
])
def test_case7_label_import_edge_cases_get_one_line(tmp_path, capsys, traj_file, name, content, needle):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "h.prefs.h5"
    code, err = cli(capsys, "data", "import-labels", str(path), "--dataset", str(traj_file), "--out", str(out))
    assert_one_line_error(code, err, name)
    if needle != "labels":
        assert needle in err[-1], err[-1]
    assert not out.exists()


def test_case7_a_csv_saved_with_a_byte_order_mark_is_accepted(tmp_path, traj_file):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + csv_text(ROW, {**ROW, "query_id": "q2", "choice": "b"}).encode())
    prefs = import_labels(path, TrajectoryDataset(traj_file))
    assert len(prefs) == 2 and list(prefs.label) == [1.0, 0.0]


# ------------------------------------------------------------------------------------------------ case 8
def test_case8_conflicting_answers_and_undo(tmp_path, capsys, traj_file):
    ds = TrajectoryDataset(traj_file)
    path = tmp_path / "answers.jsonl"
    swapped = {**ROW, "a_episode": 2, "a_start": 10, "b_episode": 0, "b_start": 0, "choice": "a"}  # same pair, other way
    rows = [ROW, {**ROW, "annotator": "carol", "choice": "b"}, swapped]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prefs = import_labels(path, ds)
    err = capsys.readouterr().err
    assert "answers.jsonl:3: annotator 'bob' answered this pair of query 'q1' before (line 1); the later answer wins" in err
    assert list(prefs.annotator) == ["carol", "bob"] and list(prefs.label) == [0.0, 1.0]
    assert list(prefs.segments_a[1]) == [2, 10, 5]  # kept as the annotator saw it
    undo = {"query_id": "q1", "annotator": "carol", "undo": True}
    path.write_text("".join(json.dumps(r) + "\n" for r in [*rows, undo]))
    assert list(import_labels(path, ds).annotator) == ["bob"]
    path.write_text("".join(json.dumps(r) + "\n" for r in [ROW, {**undo, "annotator": "dave"}]))
    with pytest.raises(DatasetError, match=r"answers.jsonl:2: undo: got query 'q1' by annotator 'dave'"):
        import_labels(path, ds)


# ------------------------------------------------------------------------------------------------ case 9
def test_case9_minari_export_records_the_env_spec_and_refuses_bad_ids(tmp_path, hopper_prefs):
    import minari

    ds = write_episodes(tmp_path / "hop.h5", [20, 15], seed=0)
    hop = TrajectoryDataset(Path(hopper_prefs).with_name("hop.h5"))
    root = tmp_path / "minari"
    export_minari(hop, "pbrl/spec-v0", root=root)
    env = minari.load_dataset("pbrl/spec-v0").recover_environment()
    assert env.spec.id == "Hopper-v5"
    env.close()
    with pytest.raises(DatasetError, match=r"--dataset-id: Minari dataset id: got 'pbrl/spec-v0', which exists"):
        export_minari(hop, "pbrl/spec-v0", root=root)
    with pytest.raises(DatasetError, match=r"Minari dataset id: got 'no version here!', expected \(namespace/\)name-vN"):
        export_minari(ds, "no version here!", root=root)


# ------------------------------------------------------------------------------------------------ case 10
def test_case10_pairs_of_a_segment_with_itself_are_left_out_or_refused(tmp_path, capsys):
    ds = write_episodes(tmp_path / "t.h5", [20, 20, 20], seed=0)
    prefs = make_preferences(ds, pairs=10, segment=20, rank=3, seed=0)  # 3 windows: each ranking redrawn until distinct
    assert not (prefs.segments_a == prefs.segments_b).all(1).any() and len(prefs) == 30
    prefs = make_preferences(ds, pairs=20, segment=20, seed=0)  # uniform: a self-paired partner is drawn again
    assert not (prefs.segments_a == prefs.segments_b).all(1).any() and len(prefs) == 20
    prefs = make_preferences(ds, pairs=20, segment=20, pairing="stratified", seed=0)  # stratified: left out, said
    assert "pairs of a segment with itself" in capsys.readouterr().err
    assert not (prefs.segments_a == prefs.segments_b).all(1).any() and len(prefs) < 20
    one = write_episodes(tmp_path / "one.h5", [20], seed=0)
    with pytest.raises(DatasetError, match="every pair compares a segment with itself"):
        make_preferences(one, pairs=5, segment=20, seed=0)


# ------------------------------------------------------------------------------------------------ fuzz
FIELDS = [f"{k}" for k in ROW]


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(
    st.binary(max_size=400),
    st.lists(st.dictionaries(st.sampled_from([*FIELDS, "undo"]),
                             st.one_of(st.integers(), st.text(max_size=20), st.floats(), st.booleans(), st.none(),
                                       st.sampled_from(["a", "b", "equal", "skip"]), st.integers(0, 60)),
                             max_size=12), max_size=5).map(lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode()),
    st.lists(st.dictionaries(st.sampled_from(FIELDS), st.one_of(st.integers(-2, 60), st.text(max_size=6), st.floats()),
                             max_size=2).map(lambda d: {**ROW, **d}), min_size=1, max_size=4).map(
        lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode()),
    st.lists(st.dictionaries(st.sampled_from(FIELDS), st.one_of(st.integers(-2, 60), st.text(max_size=6)),
                             max_size=2).map(lambda d: {**ROW, **d}), min_size=1, max_size=4).map(lambda rows: csv_text(*rows).encode()),
), st.sampled_from([".jsonl", ".csv"]))
def test_fuzz_label_importers_import_cleanly_or_say_one_line(tmp_path, traj_file, content, suffix):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(content)
    try:
        prefs = import_labels(path, TrajectoryDataset(traj_file))
    except PbrlError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(str(path)), str(exc)
    else:
        assert len(prefs) >= 1


def field_values(cls):
    """(section, field, strategy) for every field of a config class."""
    out = []
    for f in dataclasses.fields(cls):
        hint = f.type
        any_value = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                              st.booleans(), st.text(max_size=8))
        if hint == "list[int]":
            out.append((f.name, st.lists(st.integers(-4, 40), max_size=3)))
        elif hint == "str":
            b = f.metadata.get("bounds")
            choices = list(b.choices) if b is not None and b.choices else ["cpu"]
            out.append((f.name, st.one_of(st.sampled_from(choices), st.text(max_size=8))))
        else:
            out.append((f.name, any_value))
    return out


@pytest.fixture(scope="module")
def fuzz_data(tmp_path_factory):
    return two_behaviour_dataset(tmp_path_factory.mktemp("fuzz"), episodes=8, length=12)


@pytest.mark.parametrize("agent", ["cpl", "iql-mr"])
def test_fuzz_set_through_dry_run_gives_a_step_or_one_line(agent, fuzz_data, tmp_path_factory, capsys):
    cls = AGENTS[agent].Config
    candidates = [("train", n, s) for n, s in field_values(TrainConfig) if n not in ("device", "threads", "compile")] + \
                 [("agent", n, s) for n, s in field_values(cls)]
    # keep the model and the run tiny whatever else is drawn
    base = ["train.eval_episodes=0", "train.device=cpu", "agent.hidden_layers=[8]", "train.batch_size=4"]
    if agent == "iql-mr":
        base += ["agent.critic_layers=[8]", "agent.reward_hidden_layers=[8]", "agent.reward_members=1"]

    outcomes = []

    @settings(max_examples=25, deadline=None, derandomize=True)
    @given(st.data())
    def one(data):
        section, name, strategy = data.draw(st.sampled_from(candidates))
        value = data.draw(strategy)
        if section == "agent" and name in ("hidden_layers", "critic_layers", "reward_hidden_layers", "reward_dim",
                                           "members", "reward_members", "reward_layers", "dim", "layers") and \
                isinstance(value, int | list) and not isinstance(value, bool) and \
                (max(value) if isinstance(value, list) and value else value if isinstance(value, int) else 0) > 64:
            value = 8
        out = tmp_path_factory.mktemp("dry") / "run"
        literal = json.dumps(value) if not isinstance(value, float) or np.isfinite(value) else \
            ("nan" if np.isnan(value) else "inf" if value > 0 else "-inf")
        code = main(["train", "--agent", agent, "--dataset", fuzz_data, "--out", str(out), "--scale", "cpu",
                     "--dry-run", *[a for s in base for a in ("--set", s)], "--set", f"{section}.{name}={literal}"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code in (0, 2), err
        outcomes.append(code)
        if code == 2:
            assert err[-1].startswith("pbrl: error: ") and not any("Traceback" in e for e in err), err
        assert not out.exists()

    one()
    assert outcomes.count(0) >= 3 and outcomes.count(2) >= 3, outcomes  # both kinds of draw were exercised


def test_dry_run_writes_nothing_and_reports_the_agent(tmp_path, capsys, prefs_file):
    out = tmp_path / "run"
    assert main(["train", "--agent", "cpl", "--dataset", prefs_file, "--out", str(out), *QUICK, "--dry-run"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["steps_run"] == 2 and report["parameters"] > 0 and report["written"] == "nothing"
    assert not out.exists()


def test_case4_json_files_never_hold_nan(tmp_path):
    from pbrl.train.trainer import write_json

    def refuse(constant):
        raise AssertionError(f"non-JSON constant {constant}")

    write_json(tmp_path / "eval.json", {"normalized_score": float("nan"), "returns": [1.0, float("inf")], "n": 3})
    back = json.loads((tmp_path / "eval.json").read_text(), parse_constant=refuse)
    assert back == {"normalized_score": None, "returns": [1.0, None], "n": 3}
