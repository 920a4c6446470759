"""Agreement of human preference labels: between annotators (Cohen's and Fleiss' kappa, raw agreement) and
with a scripted teacher's noise-free preference.

An *item* is one pair of segments of one query, whichever way round it was shown: an annotator who saw
``(a, b)`` and answered ``a`` agrees with one who saw ``(b, a)`` and answered ``b``. Answers fall into three
categories, ``a``, ``b`` and ``equal`` (named for the item's canonical order: the two segments' ``(episode,
start, length)`` sorted). Skipped answers carry no label and are left out of every agreement figure.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from pbrl.data.preferences import PreferenceDataset
from pbrl.data.store import TrajectoryDataset
from pbrl.data.teachers import AdvantageCritic, Teacher, agreement

CATEGORIES = ("a", "b", "equal")


def cohen_kappa(x: Sequence[Any], y: Sequence[Any], categories: Sequence[Any] = CATEGORIES) -> float:
    """Cohen's (1960) kappa of two raters' answers on the same N items: ``κ = (p_o − p_e) / (1 − p_e)``.

    ``x``, ``y``: ``[N]`` answers, each one of ``categories``; ``p_o`` is the share of items both raters put in
    one category, ``p_e = Σ_j p_x(j) p_y(j)`` the agreement expected from each rater's own category shares.
    When ``p_e == 1`` (both raters always gave the same single category) κ is undefined; this returns 1.0 if
    ``p_o == 1`` and 0.0 otherwise. Raises ``ValueError`` for unequal lengths, no items or unknown answers.
    """
    index = {c: j for j, c in enumerate(categories)}
    if len(index) != len(categories):
        raise ValueError(f"categories {list(categories)!r} repeat a name")
    if len(x) != len(y):
        raise ValueError(f"the two raters answered {len(x)} and {len(y)} items; expected the same items")
    if len(x) == 0:
        raise ValueError("no items: Cohen's kappa needs at least one item both raters answered")
    unknown = [v for v in (*x, *y) if v not in index]
    if unknown:
        raise ValueError(f"answer {unknown[0]!r} is not one of the categories {list(categories)!r}")
    k = len(categories)
    confusion = np.zeros((k, k), np.float64)                          # [K, K]: rater x's category, rater y's
    np.add.at(confusion, ([index[v] for v in x], [index[v] for v in y]), 1.0)
    confusion /= confusion.sum()
    p_o = float(np.trace(confusion))
    p_e = float(confusion.sum(1) @ confusion.sum(0))
    if np.isclose(p_e, 1.0, rtol=0.0, atol=1e-12):
        return 1.0 if np.isclose(p_o, 1.0, rtol=0.0, atol=1e-12) else 0.0
    return (p_o - p_e) / (1.0 - p_e)


def _fleiss_parts(counts: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Items kept (``[I', K]`` counts of those with ≥ 2 raters), observed agreement P̄ and chance agreement P̄_e."""
    counts = np.asarray(counts, np.float64)
    if counts.ndim != 2:
        raise ValueError(f"counts has shape {counts.shape}; expected [items, categories]")
    if not np.all(np.isfinite(counts)) or np.any(counts < 0) or np.any(counts != np.round(counts)):
        raise ValueError("counts must be non-negative integers (raters per item and category)")
    n = counts.sum(1)                                                 # [I] raters per item
    counts = counts[n >= 2]
    n = n[n >= 2]
    if len(counts) == 0:
        raise ValueError("no item has 2 or more raters: Fleiss' kappa is undefined")
    p_item = (counts * (counts - 1)).sum(1) / (n * (n - 1))           # [I'] P_i: share of rater pairs that agree
    p_cat = counts.sum(0) / n.sum()                                   # [K] p_j
    return counts, float(p_item.mean()), float((p_cat**2).sum())


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' (1971) kappa of ``counts`` ``[items, categories]``: how many raters put item i in category j.

    Items with fewer than 2 raters are dropped. Fleiss' formula assumes the same n raters per item; this uses
    its standard generalisation to varying ``n_i = Σ_j n_ij``, which equals Fleiss' formula when every n_i
    is the same: ``P_i = Σ_j n_ij (n_ij − 1) / (n_i (n_i − 1))``, ``P̄ = mean_i P_i``,
    ``p_j = Σ_i n_ij / Σ_i n_i``, ``P̄_e = Σ_j p_j²``, ``κ = (P̄ − P̄_e) / (1 − P̄_e)``.
    When ``P̄_e == 1`` (every answer in one category) this returns 1.0 if ``P̄ == 1``, else 0.0, as
    :func:`cohen_kappa` does. Raises ``ValueError`` when no item has 2 raters or counts are not counts.
    """
    _, p_bar, p_e = _fleiss_parts(counts)
    if np.isclose(p_e, 1.0, rtol=0.0, atol=1e-12):
        return 1.0 if np.isclose(p_bar, 1.0, rtol=0.0, atol=1e-12) else 0.0
    return (p_bar - p_e) / (1.0 - p_e)


def label_categories(label: np.ndarray) -> np.ndarray:
    """Category index (0 ``a``, 1 ``b``, 2 ``equal``) of labels ``[P]`` (probability that a is preferred).

    A probability other than 1, 0 or 0.5 goes to the nearest of them: above 0.75 ``a``, below 0.25 ``b``,
    otherwise ``equal`` (0.25 and 0.75 themselves count as ``equal``). Returns ``[P]`` int64.
    """
    label = np.asarray(label, np.float64)
    return np.where(label > 0.75, 0, np.where(label < 0.25, 1, 2)).astype(np.int64)


def _canonical(prefs: PreferenceDataset) -> tuple[list[tuple], np.ndarray]:
    """Item key ``(query, first segment, second segment)`` of every pair ``[P]`` with the segments sorted, and
    whether the pair was shown the other way round (``[P]`` bool: swap a and b to read it canonically)."""
    seg_a = [tuple(int(v) for v in s) for s in prefs.segments_a]
    seg_b = [tuple(int(v) for v in s) for s in prefs.segments_b]
    swapped = np.array([b < a for a, b in zip(seg_a, seg_b)], bool)
    keys = [(int(q), *((b, a) if s else (a, b))) for q, a, b, s in zip(prefs.query, seg_a, seg_b, swapped)]
    return keys, swapped


def agreement_report(prefs: PreferenceDataset, trajectories: TrajectoryDataset | None = None,
                     teacher: Teacher | None = None, *, critic: AdvantageCritic | None = None) -> dict[str, Any]:
    """Agreement of the annotators of ``prefs`` (e.g. from :func:`pbrl.data.formats.import_labels`) with each
    other and, given ``teacher`` and ``trajectories``, with the teacher's noise-free preference.

    Skipped answers are left out. Items are (query, unordered pair of segments); an answer to a pair shown as
    (b, a) is read with a and b swapped. Labels map to ``a`` (1), ``b`` (0), ``equal`` (0.5); other probabilities
    go to the nearest of these (see :func:`label_categories`). Should one annotator have answered one item more
    than once (``import_labels`` keeps only the later answer), the last answer counts.

    The teacher is ``teacher`` stripped of its noise (no β, mistakes, skips or equal margin; utility, weights,
    myopic weighting, discount and critic kept): it prefers the segment with the higher score
    (:meth:`Teacher.scores`, as :meth:`Teacher.label` computes them) and says ``equal`` only on exactly equal
    scores. ``critic`` is the regret teacher's advantage critic (``pbrl.train.critics.regret_advantages``).

    Returns a JSON-ready dict: ``annotators`` (names, sorted), ``counts`` (per annotator: ``answers``,
    ``skipped``), ``items``, ``items_multi`` (items with ≥ 2 annotators), ``pairwise`` (for every pair of
    annotators with a shared item: ``annotators``, ``shared``, ``kappa``), ``mean_pairwise_kappa``,
    ``fleiss_kappa`` and ``raw_agreement`` (Fleiss' P̄: mean over items with ≥ 2 annotators of the share of
    annotator pairs that agree) — None where undefined — and with a teacher, ``teacher``: ``{"teacher": its
    settings, "annotators": {name: {"answers", "decided", "agreement", "kappa"}}}`` where ``agreement`` is the
    share of the annotator's a/b answers on pairs the teacher does not tie that follow the teacher, ``decided``
    their number, and ``kappa`` Cohen's kappa of all the annotator's answers against the teacher's (both read
    in each item's canonical order, as between annotators: a/b kappa depends on which segment is called a).
    """
    if teacher is not None and trajectories is None:
        raise ValueError("a teacher needs the trajectories its segments come from")
    names = sorted({str(a) for a in prefs.annotator})
    keys, swapped = _canonical(prefs)
    category = label_categories(prefs.label)                             # [P] as shown
    canonical = np.where(swapped & (category < 2), 1 - category, category)  # [P] in the item's own order
    answers: dict[tuple, dict[str, int]] = {}                            # item -> annotator -> category
    for i in np.flatnonzero(~prefs.skipped):
        answers.setdefault(keys[i], {})[str(prefs.annotator[i])] = int(canonical[i])
    counts = {n: {"answers": 0, "skipped": 0} for n in names}
    for item in answers.values():
        for who in item:
            counts[who]["answers"] += 1
    for i in np.flatnonzero(prefs.skipped):
        counts[str(prefs.annotator[i])]["skipped"] += 1

    pairwise = []
    for x, y in itertools.combinations(names, 2):
        shared = [item for item in answers.values() if x in item and y in item]
        if shared:
            pairwise.append({"annotators": [x, y], "shared": len(shared),
                             "kappa": cohen_kappa([it[x] for it in shared], [it[y] for it in shared], range(3))})
    table = np.zeros((len(answers), len(CATEGORIES)), np.int64)          # [items, categories]
    for r, item in enumerate(answers.values()):
        for c in item.values():
            table[r, c] += 1
    multi = int((table.sum(1) >= 2).sum())
    report: dict[str, Any] = {
        "annotators": names, "counts": counts, "items": len(answers), "items_multi": multi, "pairwise": pairwise,
        "mean_pairwise_kappa": float(np.mean([p["kappa"] for p in pairwise])) if pairwise else None,
        "fleiss_kappa": fleiss_kappa(table) if multi else None,
        "raw_agreement": _fleiss_parts(table)[1] if multi else None,
    }
    if teacher is not None and trajectories is not None:
        report["teacher"] = teacher_agreement(prefs, trajectories, teacher, critic=critic)
    return report


def teacher_agreement(prefs: PreferenceDataset, trajectories: TrajectoryDataset, teacher: Teacher, *,
                      critic: AdvantageCritic | None = None) -> dict[str, Any]:
    """Per annotator, agreement of the answers (skips left out) with ``teacher``'s noise-free preference; see
    :func:`agreement_report`, whose ``teacher`` entry this is. Every answered row counts (``import_labels``
    leaves one answer per annotator, query and pair)."""
    clean = dataclasses.replace(teacher, beta=None, mistake=0.0, skip_threshold=None, equal_margin=0.0)
    used = prefs.used
    u = clean.utilities(trajectories, critic)                            # [N] per-step utility
    score_a = clean.scores(trajectories, prefs.segments_a[used], u)      # [P'] as shown, like Teacher.label
    score_b = clean.scores(trajectories, prefs.segments_b[used], u)
    answered = label_categories(prefs.label[used])                      # [P'] the annotators' categories, as shown
    label = np.array([1.0, 0.0, 0.5])[answered]                          # [P'] their labels, rounded
    taught = label_categories(clean.probability(score_a, score_b))       # [P'] the teacher's category, as shown
    swap = _canonical(prefs)[1][used]                                    # κ in each item's canonical order, so that
    answered = np.where(swap & (answered < 2), 1 - answered, answered)   # it does not depend on how pairs were shown
    taught = np.where(swap & (taught < 2), 1 - taught, taught)
    who = np.array([str(a) for a in prefs.annotator[used]], dtype=object)
    out = {}
    for name in sorted(set(who)):
        rows = who == name
        decided = (label[rows] != 0.5) & (score_a[rows] != score_b[rows])
        out[name] = {"answers": int(rows.sum()), "decided": int(decided.sum()),
                     "agreement": agreement(label[rows], score_a[rows], score_b[rows]),
                     "kappa": cohen_kappa(answered[rows].tolist(), taught[rows].tolist(), range(3))}
    return {"teacher": clean.as_dict(), "annotators": out}


def format_agreement(report: dict[str, Any], title: str = "") -> str:
    """A readable table of :func:`agreement_report`'s result."""
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    show = lambda n: n or "(blank)"  # noqa: E731
    teach = report.get("teacher")
    width = max([12, *(len(show(n)) for n in report["annotators"])]) + 2
    lines = [(f"{title}: " if title else "") + f"{len(report['annotators'])} annotators, {report['items']} items, "
             f"{report['items_multi']} with 2 or more annotators", ""]
    head = f"{'annotator':<{width}}{'answers':>8}{'skipped':>8}"
    if teach:
        head += f"{'decided':>9}{'agree w/ teacher':>18}{'kappa vs teacher':>18}"
    lines.append(head)
    for n in report["annotators"]:
        row = f"{show(n):<{width}}{report['counts'][n]['answers']:>8}{report['counts'][n]['skipped']:>8}"
        if teach:
            t = teach["annotators"].get(n)
            row += (f"{t['decided']:>9}{fmt(t['agreement']):>18}{fmt(t['kappa']):>18}" if t else
                    f"{0:>9}{'–':>18}{'–':>18}")
        lines.append(row)
    lines += ["", "pairwise Cohen's kappa (items both answered):"]
    if report["pairwise"]:
        lines.append(f"{'annotator':<{width}}{'annotator':<{width}}{'shared':>7}{'kappa':>8}")
        for p in report["pairwise"]:
            x, y = p["annotators"]
            lines.append(f"{show(x):<{width}}{show(y):<{width}}{p['shared']:>7}{fmt(p['kappa']):>8}")
        lines.append(f"mean pairwise kappa {fmt(report['mean_pairwise_kappa'])}")
    else:
        lines.append("  none: no two annotators answered a common item")
    raw = report["raw_agreement"]
    lines.append(f"Fleiss' kappa {fmt(report['fleiss_kappa'])} over {report['items_multi']} items with 2 or more "
                 f"annotators; raw agreement " + ("–" if raw is None else f"{100 * raw:.1f}%"))
    if teach:
        lines.append(f"teacher: {teach['teacher']['name']}, noise-free (agree w/ teacher: share of the a/b answers "
                     "on pairs it does not tie)")
    return "\n".join(lines)
