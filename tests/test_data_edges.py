"""Issue 32 for `pbrl data ...` and `pbrl annotate`: unusable output paths, failed starts that leave folders, label
files that were accepted but wrong (control characters in a name, a timestamp that is no time, a segment compared
with itself), a report that would have trained an expert for hours, nonsense numbers, and errors that name the
option the user typed. Each case gets one line (exit code 2, the option or file named, no traceback) and leaves the
disk as it was."""

from __future__ import annotations

import http.client
import json
import os
import threading
from pathlib import Path

import pytest

from pbrl.data.formats import export_d4rl
from pbrl.data.pairing import make_preferences
from pbrl.data.preferences import write_preferences
from pbrl.data.store import TrajectoryDataset, write_trajectories
from pbrl.errors import PbrlError
from tests.conftest import make_episodes, run_cli, write_episodes

ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0  # root writes into read-only folders: that case cannot fail

ROW = {"query_id": 0, "a_episode": 0, "a_start": 0, "a_length": 4, "b_episode": 2, "b_start": 0, "b_length": 4,
       "choice": "a", "annotator": "ann", "group": 0, "timestamp": "2024-05-01T12:00:00Z"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """A small trajectory file (episodes of 30, 5, 50 and 12 steps), its labels, and a labels file of one row."""
    root = tmp_path_factory.mktemp("data")
    traj = write_episodes(root / "traj.h5", [30, 5, 50, 12])
    prefs = root / "traj.prefs.h5"
    write_preferences(prefs, make_preferences(traj, pairs=6, segment=4, seed=0), traj, teacher={"name": "x"}, seed=0)
    labels = root / "labels.jsonl"
    labels.write_text(json.dumps(ROW) + "\n")
    return {"traj": traj.path, "prefs": prefs, "labels": labels}


def tree(root: Path) -> list[str]:
    """Every path under ``root``, sorted."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def assert_one_line(result, *needles: str) -> str:
    """Exit code 2, no traceback, and a last stderr line naming every needle; returns that line."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    for needle in needles:
        assert needle in line, line
    return line


# ------------------------------------------------------------------------- 1. unusable --out (and --json)
def out_command(command: str, data: dict[str, Path], out: Path) -> tuple[list, str]:
    """The arguments of ``command`` writing to ``out``, and the option that names it."""
    traj, labels = data["traj"], data["labels"]
    return {
        "agreement": (["data", "agreement", labels, "--dataset", traj, "--json", out], "--json"),
        "export-d4rl": (["data", "export-d4rl", traj, "--out", out], "--out"),
        "export-labels": (["data", "export-labels", data["prefs"], "--out", out], "--out"),
        "import-labels": (["data", "import-labels", labels, "--dataset", traj, "--out", out], "--out"),
        "import-d4rl": (["data", "import-d4rl", traj, "--env", "hopper", "--out", out], "--out"),
        "label": (["data", "label", traj, "--pairs", "2", "--segment", "3", "--force", "--out", out], "--out"),
        "topk": (["data", "topk", traj, "--pairs", "2", "--segment", "3", "--out", out.with_suffix("")], "--out"),
        "annotate": (["annotate", traj, "--pairs", "1", "--segment", "3", "--prepare-only", "--out", out], "--out"),
    }[command]


SUFFIX = {"agreement": ".json", "export-labels": ".jsonl", "annotate": ".jsonl", "topk": ".h5"}


@pytest.mark.parametrize("state", ["directory", "unrelated file", "under a file", "read-only folder"])
@pytest.mark.parametrize("command", ["agreement", "export-d4rl", "export-labels", "import-labels", "import-d4rl",
                                     "label", "topk", "annotate"])
def test_an_unusable_out_is_one_line_and_writes_nothing(tmp_path, data, command, state):
    if state == "read-only folder" and ROOT_USER:
        pytest.skip("root writes into read-only folders")
    out = tmp_path / f"out{SUFFIX.get(command, '.h5')}"
    if state == "directory":
        out.mkdir()
    elif state == "unrelated file":
        out.write_text("someone's notes\n")
    elif state == "under a file":
        (tmp_path / "notes").write_text("x")
        out = tmp_path / "notes" / out.name
    else:
        (tmp_path / "ro").mkdir()
        out = tmp_path / "ro" / out.name
        os.chmod(out.parent, 0o555)
    before = tree(tmp_path)
    args, option = out_command(command, data, out)
    assert_one_line(run_cli(*args), option)
    assert tree(tmp_path) == before
    if state == "unrelated file":
        assert out.read_text() == "someone's notes\n"


def test_export_d4rl_never_replaces_a_file_another_export_wrote(tmp_path, data):
    """Two exports to one --out: the check before the work cannot see a file the other run writes meanwhile, so
    the file is put in place with an exclusive create: the second export is refused and the first file stays."""
    out = tmp_path / "x.hdf5"
    with TrajectoryDataset(data["traj"]) as trajectories:
        export_d4rl(trajectories, out)
        first = out.read_bytes()
        with pytest.raises(PbrlError, match="--out"):
            export_d4rl(trajectories, out)
    assert out.read_bytes() == first and tree(tmp_path) == ["x.hdf5"]
    assert_one_line(run_cli("data", "export-d4rl", data["traj"], "--out", out), "--out", "exists")


def test_an_agreement_report_replaces_its_previous_report_and_says_so(tmp_path, data):
    report = tmp_path / "report.json"
    assert run_cli("data", "agreement", data["labels"], "--dataset", data["traj"], "--json", report).returncode == 0
    again = run_cli("data", "agreement", data["labels"], "--dataset", data["traj"], "--json", report)
    assert again.returncode == 0 and f"replaced the previous report {report}" in again.stdout
    assert json.loads(report.read_text())["labels"] == str(data["labels"])


# ------------------------------------------------------------------------- 2. a failed start leaves nothing
@pytest.mark.parametrize("args, option", [
    (["--pairs", "0"], "--pairs"), (["--segment", "-1"], "--segment"), (["--port", "70000"], "--port"),
    (["--size", "8"], "--size"), (["--workers", "0"], "--workers"), (["--group", "-1"], "--group"),
    (["--annotator", "a\nb"], "--annotator"),
])
def test_annotate_refuses_bad_numbers_before_making_its_folder(tmp_path, data, args, option):
    base = {"--pairs": "1", "--segment": "3"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    flags = [s for kv in base.items() for s in kv]
    assert_one_line(run_cli("annotate", data["traj"], *flags, "--out", tmp_path / "x.jsonl"), option)
    assert tree(tmp_path) == []


@pytest.mark.parametrize("labels", ["not labels", ""])
def test_annotate_checks_an_existing_labels_file_before_any_video(tmp_path, data, labels):
    """A .jsonl that is not this session's labels is refused before the folder or a video is made; so is a start
    on a dataset that does not exist."""
    out = tmp_path / "x.jsonl"
    if labels:
        out.write_text('{"some": "other file"}\n')
        assert_one_line(run_cli("annotate", data["traj"], "--pairs", "1", "--segment", "3", "--out", out), "--out")
        assert tree(tmp_path) == ["x.jsonl"]
    else:
        assert_one_line(run_cli("annotate", tmp_path / "missing.h5", "--pairs", "1", "--segment", "3", "--out", out),
                        "missing.h5")
        assert tree(tmp_path) == []


# ------------------------------------------------------------------------- 3. accepted but wrong label rows
def write_rows(path: Path, *changes: dict) -> Path:
    path.write_text("".join(json.dumps({**ROW, **change}) + "\n" for change in changes))
    return path


@pytest.mark.parametrize("command", ["import-labels", "agreement"])
@pytest.mark.parametrize("change, needles", [
    ({"annotator": "ann\nx"}, ["field 'annotator'", "control character"]),
    ({"annotator": "ann\u0007"}, ["field 'annotator'", "control character"]),
    ({"timestamp": "yesterday"}, ["field 'timestamp'", "'yesterday'", "ISO 8601"]),
    ({"b_episode": 0}, ["compare a segment with itself"]),
])
def test_label_rows_accepted_before_but_wrong_are_refused(tmp_path, data, command, change, needles):
    labels = write_rows(tmp_path / "l.jsonl", change)
    out = ["--out", tmp_path / "p.h5"] if command == "import-labels" else ["--json", tmp_path / "r.json"]
    line = assert_one_line(run_cli("data", command, labels, "--dataset", data["traj"], *out), *needles)
    assert "l.jsonl" in line
    assert tree(tmp_path) == ["l.jsonl"]


def test_self_pairs_among_good_rows_are_left_out_with_a_warning(tmp_path, data):
    labels = write_rows(tmp_path / "l.jsonl", {}, {"query_id": 1, "b_episode": 0}, {"query_id": 2, "annotator": "b"})
    result = run_cli("data", "import-labels", labels, "--dataset", data["traj"], "--out", tmp_path / "p.h5")
    assert result.returncode == 0 and "imported 2 labels" in result.stdout, result.stderr
    assert "warning" in result.stderr and "line 2" in result.stderr and "with itself" in result.stderr


def test_the_annotate_server_refuses_control_characters_in_a_name(tmp_path, data):
    from pbrl.annotate.log import LabelLog
    from pbrl.annotate.queries import make_query_set
    from pbrl.annotate.server import Session, make_server

    with TrajectoryDataset(data["traj"]) as trajectories:
        query_set = make_query_set(trajectories, pairs=2, segment=3, seed=0)
    session = Session(query_set, LabelLog(tmp_path / "l.jsonl", query_set), tmp_path / "videos")
    server = make_server(session, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        answer = {"query_id": 0, "choice": "a", "annotator": "a\tb"}
        for method, path, body in [("GET", "/api/next?annotator=a%0Ab", None),
                                   ("POST", "/api/answer", json.dumps(answer)),
                                   ("POST", "/api/undo", json.dumps({"annotator": "a\u2028b"}))]:
            conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            reply = conn.getresponse()
            status, error = reply.status, json.loads(reply.read())["error"]
            conn.close()
            assert status == 400 and "field 'annotator'" in error and "control character" in error, (path, error)
        assert (tmp_path / "l.jsonl").read_bytes() == b""
    finally:
        server.shutdown()
        server.server_close()
        session.close()


# ------------------------------------------------------------------------- 4. a report never trains an expert
def test_agreement_refuses_to_train_a_missing_expert(tmp_path, data):
    traj = tmp_path / "made.h5"
    write_trajectories(traj, make_episodes([30, 5, 50, 12]), env_id="Hopper-v5", behaviour_policy="b", seed=0,
                       metadata={"expert_steps": 1_000_000, "algo": "ppo", "seed": 0})
    labels = write_rows(tmp_path / "l.jsonl", {})
    before = tree(tmp_path)
    result = run_cli("data", "agreement", labels, "--dataset", traj, "--teacher", "regret", "--critic", "expert",
                     "--behaviour-dir", tmp_path / "behaviour")
    assert_one_line(result, "--critic expert", "pbrl data label", "--expert DIR")
    assert tree(tmp_path) == before


# ------------------------------------------------------------------------- 5. nonsense numbers
@pytest.mark.parametrize("args, option", [
    (["data", "make", "--env", "button-press", "--noise", "0.1,x"], "--noise"),
    (["data", "make", "--env", "button-press", "--transitions", "0"], "--transitions"),
    (["data", "make", "--env", "hopper", "--mixture", "medium", "--medium-steps", "0"], "--medium-steps"),
    (["data", "make", "--env", "button-press", "--seed", "-1"], "--seed"),
    (["data", "label", "TRAJ", "--pairs", "1", "--equal-margin", "nan"], "--equal-margin"),
    (["data", "label", "TRAJ", "--pairs", "1", "--discount", "5"], "--discount"),
    (["data", "label", "TRAJ", "--pairs", "1", "--skip-threshold", "inf"], "--skip-threshold"),
    (["data", "label", "TRAJ", "--pairs", "1", "--beta", "inf"], "--beta"),
    (["data", "label", "TRAJ", "--pairs", "1", "--rank", "1"], "--rank"),
    (["data", "agreement", "LABELS", "--dataset", "TRAJ", "--teacher", "return", "--discount", "-1"], "--discount"),
    (["data", "agreement", "LABELS", "--dataset", "TRAJ", "--teacher", "regret", "--critic-steps", "0"],
     "--critic-steps"),
])
def test_nonsense_numbers_are_one_line_naming_the_option(tmp_path, data, args, option):
    args = [{"TRAJ": data["traj"], "LABELS": data["labels"]}.get(a, a) for a in args]
    assert_one_line(run_cli(*args, "--out", tmp_path / "out.h5") if args[1] != "agreement" else run_cli(*args), option)
    assert tree(tmp_path) == []


# ------------------------------------------------------------------------- 6. errors name what the user typed
@pytest.mark.parametrize("args", [["data", "info", "nope"], ["data", "label", "nope", "--pairs", "1", "--out", "OUT"],
                                  ["data", "export-d4rl", "nope", "--out", "OUT"],
                                  ["data", "topk", "nope", "--out", "OUT"],
                                  ["annotate", "nope", "--pairs", "1", "--segment", "2", "--out", "OUT.jsonl"]])
def test_a_missing_positional_dataset_is_named_as_typed(tmp_path, args):
    args = [str(tmp_path / a) if a.startswith("OUT") else a for a in args]
    line = assert_one_line(run_cli(*args), "dataset: got 'nope'")
    assert "--dataset" not in line
    assert tree(tmp_path) == []
