"""Agreement of human labels: Cohen's and Fleiss' kappa against published values and independent loops, the
agreement report on a small labels file (swapped pair, skip, undo, a probability) and `pbrl data agreement`."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from pbrl.cli import main
from pbrl.data.agreement import agreement_report, cohen_kappa, fleiss_kappa
from pbrl.data.formats import import_labels
from pbrl.data.store import Episode, TrajectoryDataset, write_trajectories
from pbrl.data.teachers import Teacher

# ---------------------------------------------------------------------------------------------------------
# Cohen's kappa
# ---------------------------------------------------------------------------------------------------------


def cohen_by_loops(x, y, categories):
    """Cohen's kappa from an explicit K x K confusion matrix filled by loops, in Python floats."""
    k = len(categories)
    table = [[0.0] * k for _ in range(k)]
    for u, v in zip(x, y):
        table[categories.index(u)][categories.index(v)] += 1.0
    n = float(len(x))
    p_o = sum(table[j][j] for j in range(k)) / n
    p_e = 0.0
    for j in range(k):
        row = sum(table[j][m] for m in range(k)) / n
        col = sum(table[m][j] for m in range(k)) / n
        p_e += row * col
    return (p_o - p_e) / (1.0 - p_e)


def test_cohen_kappa_matches_an_independent_loop_on_random_data():
    rng = np.random.default_rng(0)
    cats = ["a", "b", "equal"]
    for trial in range(30):
        n = int(rng.integers(2, 60))
        x = [cats[i] for i in rng.integers(0, 3, n)]
        y = [cats[i] if rng.random() < 0.6 else u for i, u in zip(rng.integers(0, 3, n), x)]  # correlated
        if len(set(x)) == len(set(y)) == 1 and x[0] == y[0]:
            continue
        assert cohen_kappa(x, y) == pytest.approx(cohen_by_loops(x, y, cats), abs=1e-12), trial


def rater_lists(yes_yes, yes_no, no_yes, no_no):
    """Two raters' answers from a 2 x 2 table (rater A's answer first)."""
    cells = [("yes", "yes")] * yes_yes + [("yes", "no")] * yes_no + [("no", "yes")] * no_yes + [("no", "no")] * no_no
    return [c[0] for c in cells], [c[1] for c in cells]


@pytest.mark.parametrize("table, kappa", [
    ((20, 5, 10, 15), 0.4),        # Wikipedia "Cohen's kappa", worked example: p_o 0.7, p_e 0.5
    ((45, 15, 25, 15), 0.1304),    # same article, "same percentages but different numbers"
    ((25, 35, 5, 35), 0.2593),
])
def test_cohen_kappa_textbook_examples(table, kappa):
    x, y = rater_lists(*table)
    assert cohen_kappa(x, y, categories=("yes", "no")) == pytest.approx(kappa, abs=5e-5)


def test_cohen_kappa_degenerate_and_bad_input():
    assert cohen_kappa(["a"] * 4, ["a"] * 4) == 1.0                      # p_e == 1, p_o == 1
    assert cohen_kappa(["a", "b"], ["a", "b"]) == 1.0
    assert cohen_kappa(["a", "b"], ["b", "a"]) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="same items"):
        cohen_kappa(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="no items"):
        cohen_kappa([], [])
    with pytest.raises(ValueError, match="'maybe' is not one of"):
        cohen_kappa(["a", "maybe"], ["a", "b"])


# ---------------------------------------------------------------------------------------------------------
# Fleiss' kappa
# ---------------------------------------------------------------------------------------------------------

# Wikipedia "Fleiss' kappa", worked example: 10 items, 14 raters, 5 categories; P̄ 0.378, P̄_e 0.213, κ 0.210
WIKIPEDIA = np.array([[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
                      [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]])


def fleiss_by_loops(counts):
    """The varying-raters generalisation, item by item and category by category, in Python floats."""
    rows = [[int(c) for c in row] for row in counts if sum(int(c) for c in row) >= 2]
    agree, totals, raters = [], [0.0] * len(rows[0]), 0.0
    for row in rows:
        n = sum(row)
        pairs = 0.0
        for c in row:
            pairs += c * (c - 1)
        agree.append(pairs / (n * (n - 1)))
        for j, c in enumerate(row):
            totals[j] += c
        raters += n
    p_bar = sum(agree) / len(agree)
    p_e = sum((t / raters) ** 2 for t in totals)
    if p_e == 1.0:  # every answer in one category: the documented convention
        return 1.0 if p_bar == 1.0 else 0.0
    return (p_bar - p_e) / (1.0 - p_e)


def test_fleiss_kappa_wikipedia_example():
    assert fleiss_kappa(WIKIPEDIA) == pytest.approx(0.210, abs=5e-4)
    # the standard fixed-n formula, written out: P_i = (Σ_j n_ij² − n) / (n (n − 1)), p_j = Σ_i n_ij / (N n)
    n, items = 14, len(WIKIPEDIA)
    p_i = ((WIKIPEDIA**2).sum(1) - n) / (n * (n - 1))
    p_j = WIKIPEDIA.sum(0) / (items * n)
    assert p_i.mean() == pytest.approx(0.378, abs=5e-4) and (p_j**2).sum() == pytest.approx(0.213, abs=5e-4)
    expected = (p_i.mean() - (p_j**2).sum()) / (1 - (p_j**2).sum())
    assert fleiss_kappa(WIKIPEDIA) == pytest.approx(expected, abs=1e-12)


def test_fleiss_kappa_varying_raters_matches_loops():
    rng = np.random.default_rng(1)
    for trial in range(30):
        items, cats = int(rng.integers(2, 25)), int(rng.integers(2, 5))
        counts = np.stack([rng.multinomial(int(rng.integers(0, 7)), rng.dirichlet(np.ones(cats)))
                           for _ in range(items)])
        if (counts.sum(1) >= 2).sum() == 0:
            continue
        assert fleiss_kappa(counts) == pytest.approx(fleiss_by_loops(counts), abs=1e-12), trial


def test_fleiss_kappa_edge_cases():
    assert fleiss_kappa(np.array([[3, 0], [2, 0], [1, 0]])) == 1.0       # every answer in one category
    assert fleiss_kappa(np.array([[1, 1], [2, 0], [0, 1]])) == fleiss_kappa(np.array([[1, 1], [2, 0]]))  # 1 rater dropped
    with pytest.raises(ValueError, match="2 or more raters"):
        fleiss_kappa(np.array([[1, 0], [0, 1]]))
    with pytest.raises(ValueError, match="non-negative integers"):
        fleiss_kappa(np.array([[1.5, 1.0]]))


# ---------------------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------------------

# Segments (episode, start, length), with known returns under the trajectories below:
S1, S4 = (0, 0, 5), (0, 10, 5)   # episode 0 pays reward t at step t: S1 scores 0+…+4 = 10, S4 10+…+14 = 60
S2 = (2, 10, 5)                  # episode 2 pays 2 per step: 10 (a tie with S1)
S3 = (3, 0, 5)                   # episode 3 pays −1 per step: −5


def row(query, a, b, choice, who):
    return {"query_id": query, "a_episode": a[0], "a_start": a[1], "a_length": a[2], "b_episode": b[0],
            "b_start": b[1], "b_length": b[2], "choice": choice, "annotator": who}


ROWS = [
    row("q1", S1, S2, "a", "alice"),
    row("q1", S2, S1, "b", "bob"),        # the same pair shown the other way round: agrees with alice
    row("q1", S1, S2, "b", "carol"),
    row("q2", S3, S4, "equal", "alice"),
    row("q2", S4, S3, "equal", "bob"),
    row("q3", S1, S3, "b", "alice"),
    row("q3", S1, S3, "skip", "bob"),     # left out
    row("q3", S3, S1, "a", "carol"),      # swapped: S3 preferred, as alice says
    row("q4", S2, S4, "a", "alice"),
    row("q4", S2, S4, "b", "bob"),
    {"query_id": "q4", "annotator": "alice", "undo": True},  # withdraws alice's q4 answer
    row("q5", S1, S4, 0.8, "carol"),      # a probability: nearest category "a"
    row("q6", S2, S3, "a", "alice"),
    row("q6", S2, S3, "a", "carol"),
]


@pytest.fixture
def labelled(tmp_path):
    lengths, per_step = [30, 5, 50, 12], [None, 0.0, 2.0, -1.0]
    rng = np.random.default_rng(0)
    episodes = []
    for n, r in zip(lengths, per_step):
        rewards = np.arange(n, dtype=np.float32) if r is None else np.full(n, r, np.float32)
        episodes.append(Episode(rng.standard_normal((n, 3)).astype(np.float32),
                                rng.uniform(-1, 1, (n, 2)).astype(np.float32), rewards, False,
                                rng.standard_normal(3).astype(np.float32), "synthetic"))
    traj = write_trajectories(tmp_path / "traj.h5", episodes, env_id="Hopper-v5", behaviour_policy="b", seed=0)
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return traj, labels


EXPECTED_PAIRWISE = [
    # alice-bob share q1 (a, a) and q2 (equal, equal): p_o 1, p_e 1/2 -> 1
    {"annotators": ["alice", "bob"], "shared": 2, "kappa": 1.0},
    # alice-carol share q1 (a, b), q3 (b, b), q6 (a, a): p_o 2/3, p_e 2/3·1/3 + 1/3·2/3 = 4/9 -> 0.4
    {"annotators": ["alice", "carol"], "shared": 3, "kappa": 0.4},
    # bob-carol share q1 (a, b): p_o 0, p_e 0 -> 0
    {"annotators": ["bob", "carol"], "shared": 1, "kappa": 0.0},
]
# items with >= 2 annotators, counts (a, b, equal): q1 (2, 1, 0), q2 (0, 0, 2), q3 (0, 2, 0), q6 (2, 0, 0)
# P_i 1/3, 1, 1, 1 -> P̄ 5/6; p = (4, 3, 2)/9 -> P̄_e 29/81; κ = (5/6 − 29/81) / (52/81) = 38.5/52
FLEISS = 38.5 / 52


def test_agreement_report_exact_numbers(labelled):
    traj, labels = labelled
    ds = TrajectoryDataset(traj)
    report = agreement_report(import_labels(labels, ds))
    assert report["annotators"] == ["alice", "bob", "carol"]
    assert report["counts"] == {"alice": {"answers": 4, "skipped": 0}, "bob": {"answers": 3, "skipped": 1},
                                "carol": {"answers": 4, "skipped": 0}}
    assert report["items"] == 6 and report["items_multi"] == 4
    assert len(report["pairwise"]) == 3
    for got, want in zip(report["pairwise"], EXPECTED_PAIRWISE):
        assert got["annotators"] == want["annotators"] and got["shared"] == want["shared"]
        assert got["kappa"] == pytest.approx(want["kappa"], abs=1e-12)
    assert report["mean_pairwise_kappa"] == pytest.approx(1.4 / 3, abs=1e-12)
    assert report["fleiss_kappa"] == pytest.approx(FLEISS, abs=1e-12)
    assert report["raw_agreement"] == pytest.approx(5 / 6, abs=1e-12)
    assert "teacher" not in report


def test_agreement_report_with_the_scripted_teacher(labelled):
    traj, labels = labelled
    ds = TrajectoryDataset(traj)
    noisy = Teacher(beta=0.1, mistake=0.3, equal_margin=100.0)  # its noise is stripped: the scores decide
    report = agreement_report(import_labels(labels, ds), ds, noisy)
    teach = report["teacher"]["annotators"]
    # teacher, per item in its canonical order: q1 tie (equal), q2 a, q3 a, q4 a, q5 b, q6 a
    # alice: q1 a/equal, q2 equal/a, q3 b/a, q6 a/a -> decided on untied pairs: q3 no, q6 yes -> 1/2;
    #   κ: p_o 1/4, p_e 2/4·3/4 + 1/4·1/4 = 7/16 -> (4 − 7)/9 = −1/3
    # bob: q1 a/equal, q2 equal/a, q4 a/a -> q4 yes -> 1/1; κ: p_o 1/3, p_e 4/9 + 1/9 -> (3 − 5)/4 = −1/2
    # carol: q1 b/equal, q3 b/a, q5 a/b, q6 a/a -> q3 no, q5 no, q6 yes -> 1/3;
    #   κ: p_o 1/4, p_e 2/4·2/4 + 2/4·1/4 = 6/16 -> (4 − 6)/10 = −1/5
    want = {"alice": (4, 2, 0.5, -1 / 3), "bob": (3, 1, 1.0, -0.5), "carol": (4, 3, 1 / 3, -0.2)}
    assert sorted(teach) == sorted(want)
    for name, (answers, decided, share, kappa) in want.items():
        assert teach[name]["answers"] == answers and teach[name]["decided"] == decided, name
        assert teach[name]["agreement"] == pytest.approx(share, abs=1e-12), name
        assert teach[name]["kappa"] == pytest.approx(kappa, abs=1e-12), name
    assert report["teacher"]["teacher"]["name"] == "return" and "beta" not in report["teacher"]["teacher"]
    # annotator-vs-annotator figures do not depend on the teacher
    assert report["fleiss_kappa"] == pytest.approx(FLEISS, abs=1e-12)


@pytest.mark.parametrize("flip_every", [1, 2, 3])
def test_agreement_report_does_not_depend_on_which_way_round_pairs_were_shown(labelled, flip_every):
    traj, labels = labelled
    ds = TrajectoryDataset(traj)
    prefs = import_labels(labels, ds)
    flip = np.arange(len(prefs)) % flip_every == 0                       # some rows shown the other way round
    flipped = import_labels(labels, ds)
    flipped.segments_a = np.where(flip[:, None], prefs.segments_b, prefs.segments_a)
    flipped.segments_b = np.where(flip[:, None], prefs.segments_a, prefs.segments_b)
    flipped.label = np.where(flip & ~prefs.skipped, 1.0 - prefs.label, prefs.label).astype(np.float32)
    a = agreement_report(prefs, ds, Teacher())
    b = agreement_report(flipped, ds, Teacher())
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_pairwise_kappa_matches_cohen_on_shared_items(labelled):
    """Every pairwise κ equals cohen_kappa on the hand-listed shared answers (canonical orientation)."""
    traj, labels = labelled
    report = agreement_report(import_labels(labels, TrajectoryDataset(traj)))
    shared = {("alice", "bob"): (["a", "equal"], ["a", "equal"]),
              ("alice", "carol"): (["a", "b", "a"], ["b", "b", "a"]),
              ("bob", "carol"): (["a"], ["b"])}
    for p in report["pairwise"]:
        assert p["kappa"] == pytest.approx(cohen_kappa(*shared[tuple(p["annotators"])]), abs=1e-12)
    assert list(itertools.combinations(report["annotators"], 2)) == [tuple(p["annotators"]) for p in report["pairwise"]]


# ---------------------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------------------

def test_cli_agreement_with_and_without_teacher(labelled, tmp_path, capsys):
    traj, labels = labelled
    out = tmp_path / "agreement.json"
    assert main(["data", "agreement", str(labels), "--dataset", str(traj), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 annotators, 6 items, 4 with 2 or more annotators" in text
    assert "Fleiss' kappa 0.740" in text and "raw agreement 83.3%" in text and "mean pairwise kappa 0.467" in text
    assert "teacher" not in text
    saved = json.loads(out.read_text())
    assert saved["fleiss_kappa"] == pytest.approx(FLEISS) and "teacher" not in saved
    assert saved["labels"] == str(labels) and saved["counts"]["bob"] == {"answers": 3, "skipped": 1}

    assert main(["data", "agreement", str(labels), "--dataset", str(traj), "--teacher", "scripted",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "agree w/ teacher" in text and "kappa vs teacher" in text
    saved = json.loads(out.read_text())
    assert saved["teacher"]["annotators"]["alice"]["agreement"] == pytest.approx(0.5)
    assert saved["teacher"]["annotators"]["carol"]["kappa"] == pytest.approx(-0.2)
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically: no temporary file left


def test_cli_agreement_bad_labels_is_one_line(labelled, tmp_path, capsys):
    traj, _ = labelled
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(row("q1", S1, (2, 48, 5), "a", "x")) + "\n")
    assert main(["data", "agreement", str(bad), "--dataset", str(traj)]) == 2
    assert "bad.jsonl:1: segment b" in capsys.readouterr().err


def test_cli_agreement_regret_teacher_and_critic_without_teacher(labelled, tmp_path, capsys):
    traj, labels = labelled
    out = tmp_path / "regret.json"
    assert main(["data", "agreement", str(labels), "--dataset", str(traj), "--teacher", "regret", "--critic",
                 "behaviour", "--critic-steps", "20", "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["teacher"]["teacher"]["name"] == "regret" and saved["teacher"]["teacher"]["critic"] == "behaviour"
    assert sorted(saved["teacher"]["annotators"]) == ["alice", "bob", "carol"]
    capsys.readouterr()
    assert main(["data", "agreement", str(labels), "--dataset", str(traj), "--critic", "iql"]) == 2
    assert "given without --teacher" in capsys.readouterr().err
