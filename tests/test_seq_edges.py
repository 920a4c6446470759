"""Issue 32's hostile-user cases for `pbrl seq train`, `seq grammar`, `seq self-play` and `seq shapes`: bad input
gets one line naming the option or file (exit 2, no traceback), a failed start leaves nothing that blocks the
corrected command, a resume on changed data is refused, and a finished run writes its final loss and reward
accuracy to metrics.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from tests.conftest import CliResult, run_cli  # noqa: E402

TINY_SELF_PLAY = ["--samples", "2", "--steps", "1", "--set", "train.batch_size=2", "--set", "run.train_steps=10"]


# rewards for `seq self-play --reward tests.test_seq_edges:NAME` (module:function, as a user passes their own)
def brightness_reward(images: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """The mean pixel: tells any two samples apart."""
    return images.mean((1, 2, 3))


def constant_reward(images: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """Every sample alike: no round can make a pair."""
    return torch.zeros(len(images))


def one_argument_reward(images: torch.Tensor) -> torch.Tensor:
    return images.mean((1, 2, 3))


def wrong_shape_reward(images: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    return images.mean(1)


def failing_reward(images: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    raise KeyError("no judge loaded")


def assert_one_line_error(result: CliResult, *needles: str) -> None:
    """Exit code 2, no traceback, and the last stderr line names every needle."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    for needle in needles:
        assert needle in last, last


@pytest.fixture(scope="module")
def grammar(tmp_path_factory) -> dict[str, Path]:
    """A few grammar pairs and a one-layer GPT-2 of 16 positions (random weights) with its tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from pbrl.sequence.lm import word_tokenizer
    from pbrl.sequence.synthetic import ADJECTIVES, NOUNS, VERBS, make_task, tiny_gpt2_config

    d = tmp_path_factory.mktemp("grammar")
    paths = make_task(seed=0, train_prompts=8, heldout_prompts=2, sft_per_prompt=1, pairs_per_prompt=1).write(d)
    tokenizer = word_tokenizer([" ".join(NOUNS + ADJECTIVES + VERBS) + " : ."])
    config = tiny_gpt2_config(len(tokenizer), layers=1, width=16, positions=16)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(**config)).save_pretrained(d / "model")
    tokenizer.save_pretrained(d / "model")
    return {**paths, "model": d / "model"}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict[str, Path]:
    """The shapes task at its smallest, with a SmallUNet of widths [8, 16]."""
    d = tmp_path_factory.mktemp("shapes")
    result = run_cli("seq", "shapes", "--out", d, "--images", "1", "--pairs", "1")
    assert result.returncode == 0, result.stderr
    config = json.loads((d / "unet.json").read_text())
    (d / "unet.json").write_text(json.dumps({**config, "widths": [8, 16], "emb_dim": 16}))
    return {k: Path(v) for k, v in json.loads(result.stdout).items()}


def seq_train(grammar: dict[str, Path], out: Path, *args: str, data: Path | None = None) -> CliResult:
    return run_cli("seq", "train", "--method", "dpo", "--model", grammar["model"], "--data", data or grammar["pairs"],
                   "--out", out, "--batch-size", "2", "--steps", "2", "--quiet", *args)


# ------------------------------------------------------------------ 1, 7: data checksums, metrics.json, --quiet
def test_finished_run_writes_metrics_hides_bars_and_refuses_changed_pairs(grammar, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes(grammar["pairs"].read_bytes())
    out = tmp_path / "run"
    result = seq_train(grammar, out, data=pairs)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # --quiet: not even transformers' "Writing model shards" bar
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"final_loss", "reward_accuracy", "evaluated_on", "steps", "pairs"} <= set(metrics)
    assert 0 <= metrics["reward_accuracy"] <= 1 and metrics["final_loss"] > 0
    assert metrics["evaluated_on"].startswith("training pairs")
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    pairs.write_text("".join(json.dumps({**r, "chosen": r["rejected"], "rejected": r["chosen"]}) + "\n" for r in rows))
    assert_one_line_error(seq_train(grammar, out, data=pairs), str(pairs), "sha256", "data.json")


# ------------------------------------------------------------------ 2: a failed start leaves nothing behind
def test_row_longer_than_the_model_is_refused_naming_max_length_and_the_fix_runs(grammar, tmp_path):
    long = tmp_path / "long.jsonl"
    row = {"prompt": "ant bee cat dog eel fox gnu hen owl pig :", "chosen": " gold ant sees red bee .",
           "rejected": " red ant sees red bee ."}  # 11 prompt tokens + 7: 18 > the model's 16 positions
    long.write_text(grammar["pairs"].read_text() + json.dumps(row) + "\n")
    out = tmp_path / "run"
    assert_one_line_error(seq_train(grammar, out, "--max-length", "40", data=long), "--max-length", "16", "long.jsonl:9")
    assert not out.exists()
    assert seq_train(grammar, out, "--max-length", "16", data=long).returncode == 0


def test_self_play_with_missing_data_leaves_nothing_and_the_fix_runs(shapes, tmp_path):
    out = tmp_path / "spro"
    command = ["seq", "self-play", "--model", shapes["unet"], "--reward", "tests.test_seq_edges:brightness_reward",
               "--out", out, "--rounds", "1", *TINY_SELF_PLAY]
    assert_one_line_error(run_cli(*command, "--data", tmp_path / "missing.h5"), "missing.h5")
    assert not out.exists()
    result = run_cli(*command, "--data", shapes["pairs"])  # not --quiet: off a terminal each round says so
    assert result.returncode == 0, result.stderr
    assert "self-play round 1/1: sampling 2 images" in result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["pairs"] > 0


# ------------------------------------------------------------------ 3: nonsense numbers, named by their option
@pytest.mark.parametrize("command, args, option", [
    ("train", ["--steps", "0"], "--steps"),
    ("train", ["--lr", "0"], "--lr"),
    ("train", ["--beta", "-1"], "--beta"),
    ("train", ["--max-length", "1"], "--max-length"),
    ("train", ["--grad-accum", "0"], "--grad-accum"),
    ("train", ["--seed", "1" + "0" * 30], "--seed"),
    ("train", ["--device", "tpu"], "--device"),
    ("self-play", ["--rounds", "0"], "--rounds"),
    ("self-play", ["--samples", "1"], "--samples"),
    ("self-play", ["--flip-rate", "0.5"], "--flip-rate"),
    ("grammar", ["--prompts", "5000"], "--prompts"),
    ("grammar", ["--width", "3"], "--width"),
    ("grammar", ["--layers", "0"], "--layers"),
    ("shapes", ["--flip", "1.5"], "--flip"),
    ("shapes", ["--pairs", "0"], "--pairs"),
])
def test_nonsense_numbers_are_refused_naming_the_option(grammar, shapes, tmp_path, command, args, option):
    out = tmp_path / "out"
    base = {"train": ["--method", "dpo", "--model", grammar["model"], "--data", grammar["pairs"], "--quiet"],
            "self-play": ["--model", shapes["unet"], "--data", shapes["pairs"], "--reward",
                          "tests.test_seq_edges:brightness_reward", "--quiet"],
            "grammar": [], "shapes": []}[command]
    result = run_cli("seq", command, *base, "--out", out, *args)
    assert_one_line_error(result, option)
    assert "--set" not in result.stderr.strip().splitlines()[-1]
    assert not out.exists()


@pytest.mark.parametrize("reward, found", [
    ("builtins:len", "signature: got len(obj, /)"),
    ("tests.test_seq_edges:one_argument_reward", "signature: got one_argument_reward(images"),
    ("tests.test_seq_edges:wrong_shape_reward", "on 2 images: got shape [2, 16, 16]"),
    ("tests.test_seq_edges:failing_reward", "KeyError: 'no judge loaded'"),
])
def test_a_reward_of_the_wrong_form_is_refused_before_sampling(shapes, tmp_path, reward, found):
    out = tmp_path / "spro"
    result = run_cli("seq", "self-play", "--model", shapes["unet"], "--data", shapes["pairs"], "--reward", reward,
                     "--out", out, "--quiet", *TINY_SELF_PLAY)
    assert_one_line_error(result, "--reward", found, "f(images [N, C, H, W]")
    assert not out.exists()


# ------------------------------------------------------------------ 4: a round without pairs stops the loop
def test_a_round_without_pairs_stops_self_play_in_one_line(shapes, tmp_path):
    out = tmp_path / "spro"
    result = run_cli("seq", "self-play", "--model", shapes["unet"], "--data", shapes["pairs"], "--reward",
                     "tests.test_seq_edges:constant_reward", "--out", out, "--quiet", *TINY_SELF_PLAY)
    assert_one_line_error(result, "--reward: round 0: got the same reward", "tells samples apart")
    assert not out.exists()  # nothing was done: nothing to resume


# ------------------------------------------------------------------ 5: an unusable --out, checked before the work
@pytest.mark.parametrize("command", ["train", "grammar"])
@pytest.mark.parametrize("kind", ["existing file", "under a file", "read-only folder"])
def test_an_unusable_out_is_one_line_before_any_work(grammar, tmp_path, command, kind):
    if kind == "read-only folder" and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    blocker = tmp_path / "blocker"
    if kind == "read-only folder":
        blocker.mkdir(mode=0o555)
        out = blocker / "out"
    else:
        blocker.write_text("not a folder")
        out = blocker if kind == "existing file" else blocker / "out"
    # train: a --model that does not exist, so only an --out checked before the model is loaded is named
    args = {"train": ["--method", "dpo", "--model", tmp_path / "no-model", "--data", grammar["pairs"], "--quiet"],
            "grammar": []}[command]
    assert_one_line_error(run_cli("seq", command, *args, "--out", out), "--out")
