"""What is in a dataset: size, returns and label statistics (``pbrl data info``), and the user groups' consistency
table that ``pbrl data label --groups`` prints.

numpy and the dataset modules are imported inside the functions: the ``pbrl`` command imports this module to
build its parser, and ``pbrl --help`` should not wait for them.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pbrl.data.teachers import AdvantageCritic, Group


def recorded_groups(attrs: dict[str, Any]) -> list[Group] | None:
    """The user groups recorded in a preference file's ``teacher`` attribute by `pbrl data label --groups`
    (None when the labels came from one teacher, or the attribute is unreadable)."""
    from pbrl.data.teachers import Group, Teacher

    try:
        recorded = json.loads(attrs.get("teacher", "{}")).get("groups")
    except (json.JSONDecodeError, AttributeError):
        return None
    if not recorded:
        return None
    fields = set(Teacher.__dataclass_fields__)
    return [Group(g["name"], g["share"], Teacher(**{k: v for k, v in g.items() if k in fields})) for g in recorded]


def dataset_info(name: str, *, critic: AdvantageCritic | None = None, option: str = "--dataset") -> dict[str, Any]:
    """Size, return distribution and (when labelled) label statistics of the dataset ``name`` (a name in
    datasets/ or an .h5 path). ``critic`` computes regret advantages for the consistency table of labels made by
    user groups (``pbrl.train.critics.regret_advantages``; data does not import train, so the caller passes it).
    ``option`` names where the user gave ``name`` (see :func:`~pbrl.data.registry.load_dataset`)."""
    import numpy as np

    from pbrl.data.registry import load_dataset
    from pbrl.data.teachers import agreement, segment_returns, source_quality

    data = load_dataset(name, option=option)
    traj = data.trajectories
    returns = traj.episode_returns()
    info: dict[str, Any] = {
        "name": data.name, "env": data.env, "env_id": traj.env_id, "episodes": traj.num_episodes,
        "transitions": traj.num_transitions, "obs_dim": traj.obs_dim, "act_dim": traj.act_dim,
        "behaviour_policy": traj.metadata.get("behaviour_policy", ""),
        "return": {"mean": float(returns.mean()), "std": float(returns.std()), "min": float(returns.min()),
                   "p25": float(np.percentile(returns, 25)), "median": float(np.median(returns)),
                   "p75": float(np.percentile(returns, 75)), "max": float(returns.max())},
        "episode_length": {"mean": float(traj.episode_lengths.mean()), "min": int(traj.episode_lengths.min()),
                           "max": int(traj.episode_lengths.max())},
        "pairs": 0,
        "splits": {k: len(v) for k, v in traj.splits.items()},
        "cameras": traj.cameras,
    }
    if data.preferences is not None:
        p = data.preferences
        ra, rb = segment_returns(traj, p.segments_a), segment_returns(traj, p.segments_b)
        used = ~p.skipped
        lab = p.label[used]
        info.update({"pairs": len(p), "labelled_pairs": int(used.sum()), "queries": int(len(np.unique(p.query))),
                     "labels_made": data.card.get("labels", ""),
                     "segment_length": int(p.segments_a[:, 2].max()),
                     "label_counts": {"a": int((lab > 0.5).sum()), "b": int((lab < 0.5).sum()),
                                      "equal": int((lab == 0.5).sum()), "skip": int(p.skipped.sum())},
                     "tie_fraction": float((lab == 0.5).mean()) if used.any() else 0.0,
                     "skip_fraction": float(p.skipped.mean()),
                     "label_agreement": agreement(lab, ra[used], rb[used]),
                     "label_agreement_episode_return": agreement(lab, returns[p.segments_a[used, 0]],
                                                                 returns[p.segments_b[used, 0]]),
                     "label_agreement_teacher": None if p.score_a is None else
                     agreement(lab, p.score_a[used], p.score_b[used]),
                     "groups": {int(g): int((p.group[used] == g).sum()) for g in np.unique(p.group)},
                     "annotators": int(len(set(p.annotator[used]) - {""}))})
        quality = source_quality(traj)
        if quality is not None:
            qa, qb = quality[p.segments_a[used, 0]], quality[p.segments_b[used, 0]]
            info["label_agreement_source"] = agreement(lab, qa, qb)
            info["cross_source_pairs"] = int(((qa != qb) & (lab != 0.5)).sum())
        groups = recorded_groups(p.attrs)
        if groups:
            from pbrl.data.teachers import consistency_report

            info["consistency"] = consistency_report(traj, p.segments_a, p.segments_b, p.label, p.group, groups, p.skipped,
                                                     critic=critic)
    return info


def format_consistency(report: dict[str, Any]) -> str:
    """The user groups' consistency table: each group's labels against each group's utility."""
    names = report["groups"]
    fmt = lambda v: "  –  " if v is None else f"{v:.3f}"  # noqa: E731
    lines = ["consistency: row = whose labels, column = whose utility (fraction of decided labels that agree)",
             f"{'':<14}{'labels':>8} " + " ".join(f"{n[:10]:>10}" for n in names)]
    for i, n in enumerate(names):
        lines.append(f"{n[:14]:<14}{report['labels'][i]:>8} " + " ".join(f"{fmt(v):>10}" for v in report["cross_agreement"][i]))
    return "\n".join(lines)


def format_dataset_info(info: dict[str, Any]) -> str:
    """The human-readable form of :func:`dataset_info` (``pbrl data info`` without ``--json``)."""
    r = info["return"]
    lines = [f"{info['name']}  ({info['env_id']})",
             f"  episodes     {info['episodes']:>10}   transitions {info['transitions']:>10}",
             f"  behaviour    {info['behaviour_policy']}",
             f"  return       mean {r['mean']:.1f} ± {r['std']:.1f}   min {r['min']:.1f}  p25 {r['p25']:.1f}  "
             f"median {r['median']:.1f}  p75 {r['p75']:.1f}  max {r['max']:.1f}"]
    if info.get("splits"):
        lines.append("  splits       " + "   ".join(f"{k} {n} episodes" for k, n in info["splits"].items()))
    if info.get("cameras"):
        lines.append(f"  cameras      {', '.join(info['cameras'])} (frames by reference, decoded on demand)")
    if not info["pairs"]:
        lines.append("  pairs        none (label some with `pbrl data label`)")
        return "\n".join(lines)
    c = info["label_counts"]
    lines.append(f"  pairs        {info['pairs']:>10}   segment {info['segment_length']}")
    if info["labels_made"]:
        lines.append(f"  labelled     {info['labels_made']}")
    agree = "–" if info["label_agreement"] is None else f"{info['label_agreement']:.3f}"
    lines.append(f"  labels       a {c['a']}  b {c['b']}  equal {c['equal']}  skip {c['skip']}   tie fraction "
                 f"{info['tie_fraction']:.3f}   skip fraction {info['skip_fraction']:.3f}")
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    lines += [f"  agreement    {fmt(info['label_agreement_teacher'])} of decided labels follow the teacher's own "
              "noise-free scores",
              f"               {agree} follow the true segment return",
              f"               {fmt(info['label_agreement_episode_return'])} follow the return of the episode each "
              "segment comes from"]
    if "label_agreement_source" in info:
        lines.append(f"               {fmt(info['label_agreement_source'])} follow the known order of the policies "
                     f"that produced them ({info['cross_source_pairs']} pairs from different policies)")
    lines.append(f"  groups       {info['groups']}   annotators {info['annotators']}   queries {info['queries']}")
    if "consistency" in info:
        lines.append(format_consistency(info["consistency"]))
    return "\n".join(lines)
