"""`pbrl bench`: the grid resumes after a kill, reuses only cells whose config and data match, reruns a changed
cell, writes results.csv / .md / .png, and refuses unknown agents or datasets before writing anything."""

from __future__ import annotations

import csv
import json

import pytest

from pbrl.cli import main
from pbrl.errors import ConfigError, DatasetError
from pbrl.train import bench as bench_mod
from pbrl.train.bench import bench
from pbrl.train.config import build_config
from tests.test_train import two_behaviour_dataset


class Killed(Exception):
    """Stands for the process being killed mid-cell (the cell has a checkpoint, no eval.json)."""


SETS = ["train.eval_episodes=0", "agent.hidden_layers=[16, 16]", "train.batch_size=8", "train.log_every=5",
        "iql-oracle:agent.critic_layers=[16, 16]"]


def test_bench_resumes_after_a_kill_and_reruns_a_changed_cell(tmp_path, monkeypatch):
    data = two_behaviour_dataset(tmp_path, episodes=8)
    out = tmp_path / "bench"
    from pbrl.train import trainer

    calls, killed = [], []
    original = trainer.train

    def killed_on_third(cfg, run_dir, **kw):
        calls.append((cfg.agent, cfg.train.seed))
        if len(calls) == 3 and not killed:
            killed.append(True)
            original(cfg, run_dir, stop_at=5, **kw)   # half-way through the cell, then the process dies
            raise Killed
        return original(cfg, run_dir, **kw)

    monkeypatch.setattr(trainer, "train", killed_on_third)
    with pytest.raises(Killed):
        bench(["bc", "iql-oracle"], [data], [0, 1], out, steps=10, overrides=SETS, progress=False)
    first = out / "runs" / "two" / "bc" / "seed0"
    mtime = (first / "eval.json").stat().st_mtime_ns
    calls.clear()
    rows = bench(["bc", "iql-oracle"], [data], [0, 1], out, steps=10, overrides=SETS, progress=False)
    assert calls == [("iql-oracle", 0), ("iql-oracle", 1), ("iql-oracle", 0)]  # the rest, and the 2x ceiling cell
    assert (first / "eval.json").stat().st_mtime_ns == mtime
    assert [(r["agent"], r["seed"]) for r in rows] == [("bc", 0), ("bc", 1), ("iql-oracle", 0), ("iql-oracle", 1)]
    assert all(r["steps"] == 10 for r in rows)
    assert rows[0]["settings"] == SETS[:-1] and rows[-1]["settings"] == [*SETS[:-1], "agent.critic_layers=[16, 16]"]  # per agent, for the card
    # a second run changes nothing
    calls.clear()
    bench(["bc", "iql-oracle"], [data], [0, 1], out, steps=10, overrides=SETS, progress=False)
    assert calls == []
    # a changed config reruns that agent's cells only, moving the stale ones aside
    bench(["bc", "iql-oracle"], [data], [0, 1], out, steps=10, overrides=[*SETS, "bc:train.lr=0.001"], progress=False)
    assert calls == [("bc", 0), ("bc", 1)]
    assert list((out / "runs" / "two" / "bc").glob("seed0.stale-*"))
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 and {"ratio_to_oracle", "gap_closed", "config_hash", "pbrl_version", "wall_time_s"} <= set(table[0])
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert "ceiling" in (out / "results.md").read_text()
    assert json.loads((out / "ceiling.json").read_text())["two"]["steps_2x"] == 20


def test_ratios_and_gap_closed():
    rows = [{"dataset": "d", "agent": a, "seed": 0, "normalized_score": s, "steps": 1, "scale": "cpu"}
            for a, s in (("bc", 20.0), ("iql-oracle", 80.0), ("cpl", 50.0))]
    bench_mod.add_ratios(rows)
    cpl = rows[2]
    assert cpl["ratio_to_oracle"] == pytest.approx(50 / 80) and cpl["gap_closed"] == pytest.approx(0.5)
    assert bench_mod.above_ceiling(rows) == {}
    rows.append({"dataset": "d", "agent": "iql-mr", "seed": 0, "normalized_score": 90.0, "steps": 1, "scale": "cpu"})
    assert bench_mod.above_ceiling(rows) == {"d": ["iql-mr (90.0)"]}
    assert "the oracle is no ceiling at this budget" in bench_mod.markdown(rows, {}, "cmd")
    assert bench_mod.control_margins(rows) == {}
    rows += [{"dataset": "d", "agent": "iql-constant", "seed": k, "normalized_score": v, "steps": 1, "scale": "cpu"}
             for k, v in ((0, 88.0), (1, 90.0))]
    line = bench_mod.control_margins(rows)["d"]
    assert "scores 89.0 ± 1.0" in line and "iql-mr +1.0" in line and "cpl -39.0" in line and "bc -69.0" in line
    report = bench_mod.markdown(rows, {}, "cmd")
    assert line in report and "a positive reward alone beats the true one on this data" in report


@pytest.mark.parametrize("args, error", [
    (["--agents", "cpl,ppo", "--datasets", "hopper-medium-replay-small"], "--agents: agent: got 'ppo'"),
    (["--agents", "cpl", "--datasets", "no-such-set"], "dataset: got 'no-such-set'"),
    (["--agents", "cpl", "--datasets", "hopper-medium-replay-small", "--seeds", "a"], "--seeds: seeds: got 'a'"),
])
def test_bad_bench_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, error):
    out = tmp_path / "bench"
    assert main(["bench", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and error in err
    assert not out.exists()


def test_bench_refuses_agents_the_dataset_cannot_serve_before_training(tmp_path):
    from tests.test_agents import rewardless_dataset

    data = rewardless_dataset(tmp_path)
    with pytest.raises(DatasetError, match="rewards: got none"):
        bench(["iql-oracle"], [data], [0], tmp_path / "b", steps=2, progress=False)
    with pytest.raises(DatasetError, match="preferences: got none"):
        bench(["cpl", "iql-oracle"], [data], [0], tmp_path / "b", steps=2, progress=False)
    assert not (tmp_path / "b").exists()
    with pytest.raises(ConfigError, match="agent prefix"):
        bench(["bc"], ["hopper-medium-replay-small"], [0], tmp_path / "b", overrides=["cpl:agent.alpha=1"], progress=False)


def test_report_only_trains_nothing_and_names_the_missing_cells(tmp_path):
    data = two_behaviour_dataset(tmp_path, episodes=8)
    out = tmp_path / "bench"
    sets = SETS[:-1]  # no iql-oracle here
    bench(["bc"], [data], [0], out, steps=4, overrides=sets, progress=False)
    rows = bench(["bc", "sft"], [data], [0, 1], out, steps=4, overrides=sets, progress=False, report_only=True)
    assert [(r["agent"], r["seed"]) for r in rows] == [("bc", 0)]
    assert not (out / "runs" / "two" / "sft").exists()
    assert "not yet run (`--report-only`): two bc seed 1; two sft seed 0; two sft seed 1" in \
        (out / "results.md").read_text()
    with pytest.raises(ConfigError, match="finished cells: got none of the grid's 2"):
        bench(["sft"], [data], [0, 1], tmp_path / "empty", steps=4, overrides=sets, progress=False, report_only=True)


def test_an_oracle_cell_does_not_depend_on_the_other_agents_of_the_grid(tmp_path, monkeypatch):
    from pbrl.train import trainer

    data = two_behaviour_dataset(tmp_path, episodes=8)
    out = tmp_path / "bench"
    bench(["iql-oracle"], [data], [0], out, steps=4, overrides=SETS[:-1], ceiling_check=False, progress=False)
    calls, original = [], trainer.train
    monkeypatch.setattr(trainer, "train", lambda cfg, d, **kw: calls.append(cfg.agent) or original(cfg, d, **kw))
    bench(["bc", "iql-oracle"], [data], [0], out, steps=4, overrides=SETS[:-1], ceiling_check=False, progress=False)
    assert calls == ["bc"]


def test_label_sets_of_the_same_trajectories_share_the_cells_of_agents_that_read_no_pairs(tmp_path, monkeypatch):
    """Relabelling a dataset reruns only the agents that read its pairs (BC trains on the labelled segments): oracle
    IQL and the survival control read the trajectories alone, so every label set of them shares their cells, and
    its table has the oracle row."""
    from pbrl.data.pairing import make_preferences
    from pbrl.data.preferences import write_preferences
    from pbrl.data.store import TrajectoryDataset
    from pbrl.train import trainer

    data = two_behaviour_dataset(tmp_path, episodes=8)
    ds = TrajectoryDataset(tmp_path / "two.h5")
    other = str(write_preferences(tmp_path / "relabelled.prefs.h5", make_preferences(ds, pairs=100, segment=8, seed=1),
                                  ds, teacher={"name": "scripted"}, seed=1))
    out = tmp_path / "bench"
    calls, original = [], trainer.train
    monkeypatch.setattr(trainer, "train", lambda cfg, d, **kw: calls.append((cfg.agent, d.parent.parent.name))
                        or original(cfg, d, **kw))
    bench(["bc", "sft", "iql-oracle"], [data], [0], out, steps=4, overrides=SETS, ceiling_check=False, progress=False)
    assert sorted(calls) == [("bc", "two"), ("iql-oracle", "two"), ("sft", "two")]
    calls.clear()
    rows = bench(["bc", "sft", "iql-oracle"], [other], [0], out, steps=4, overrides=SETS, ceiling_check=False,
                 progress=False)
    assert calls == [("bc", "relabelled"), ("sft", "relabelled")]
    assert [(r["dataset"], r["agent"]) for r in rows] == [("relabelled", "bc"), ("relabelled", "sft"),
                                                          ("relabelled", "iql-oracle")]


def test_record_stores_the_oracle_and_the_survival_control_in_the_card(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import tomllib

    monkeypatch.setenv("PBRL_HOME", str(tmp_path))
    (tmp_path / "datasets").mkdir()
    card = tmp_path / "datasets" / "x.toml"
    card.write_text('name = "x"\nenv = "hopper"\ntrajectories = "x.h5"\n')
    raw = ["agent.observations=raw"]
    rows = [{"dataset": "x", "agent": a, "seed": k, "normalized_score": v, "steps": 50, "scale": "cpu",
             "settings": raw if a == "iql-oracle" else []}
            for a, k, v in (("iql-oracle", 0, 40.0), ("iql-oracle", 1, 50.0), ("iql-constant", 0, 80.0), ("bc", 0, 10.0))]
    assert bench_mod.record_in_card(SimpleNamespace(name="x"), rows, None, "cmd") == card
    written = tomllib.loads(card.read_text())
    assert written["oracle"]["normalized_score"] == 45.0 and written["oracle"]["per_seed"] == [40.0, 50.0]
    assert written["oracle"]["exceeded_by"] == ["iql-constant (80.0)"]
    assert written["control"]["agent"] == "iql-constant" and written["control"]["normalized_score"] == 80.0
    assert written["oracle"]["settings"] == raw and written["control"]["settings"] == []  # the preset it was measured at
    assert written["name"] == "x" and written["trajectories"] == "x.h5"


def test_cpu_cells_hash_the_same_whatever_the_autocast_flag_which_cpus_ignore(tmp_path):
    from pbrl.train.bench import config_hash

    data = two_behaviour_dataset(tmp_path, episodes=4)
    on_cpu = [build_config("bc", data, scale="cpu", overrides=["train.device=cpu", f"train.amp={flag}"])
              for flag in ("true", "false")]
    assert config_hash(on_cpu[0]) == config_hash(on_cpu[1])
    assert config_hash(build_config("bc", data, scale="cpu", overrides=["train.device=cpu", "train.lr=0.5"])) != \
        config_hash(on_cpu[0])
    on_gpu = [build_config("bc", data, scale="paper", overrides=["train.device=cuda", f"train.amp={flag}"])
              for flag in ("true", "false")]
    assert config_hash(on_gpu[0]) != config_hash(on_gpu[1])  # on CUDA autocast is a real difference


def test_a_label_set_finds_its_base_card_by_path_or_by_the_recorded_checksum(tmp_path, monkeypatch):
    import shutil

    from pbrl.data.preferences import sha256_file
    from pbrl.data.registry import load_dataset
    from pbrl.train.bench import trajectories_source

    data = load_dataset(two_behaviour_dataset(tmp_path, episodes=4))
    assert trajectories_source(data) == ("two", str((tmp_path / "two.h5").resolve()))  # no card: the file
    home = tmp_path / "home"
    (home / "datasets").mkdir(parents=True)
    shutil.copy(tmp_path / "two.h5", home / "datasets" / "two.h5")   # the same trajectories in another checkout
    card = home / "datasets" / "two.toml"
    card.write_text(f'env = "hopper"\ntrajectories = "two.h5"\n[checksums]\n"two.h5" = "{sha256_file(tmp_path / "two.h5")}"\n')
    monkeypatch.setenv("PBRL_HOME", str(home))
    assert trajectories_source(data) == ("two", "two")
    card.write_text('env = "hopper"\ntrajectories = "two.h5"\n[checksums]\n"two.h5" = "0000"\n')  # other trajectories
    assert trajectories_source(data)[1] != "two"
