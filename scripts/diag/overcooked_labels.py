"""What do a style's labels say about the labelled player's own actions? (issue 15 diagnostics)

    python scripts/diag/overcooked_labels.py [--root runs/overcooked/cramped_room] [--styles cook deliverer]

For each labelled rollout file ``data/with-STYLE.prefs.h5`` (written by ``scripts/bench/overcooked_ai.py``) and each event,
prints on what share of the decided pairs the two segments' counts differ, and on what share of those the
preferred segment has more of it: the player's own events (what the labels teach the ego) against its partner's
(what the style scores).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pbrl.data.registry import load_dataset
from pbrl.data.teachers import segment_scores

EVENTS = ("potting_onion", "useful_dish_pickup", "soup_delivery")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="runs/overcooked/cramped_room")
    p.add_argument("--styles", nargs="+", default=["cook", "deliverer"])
    args = p.parse_args()
    print("| labels of | event | whose | pairs where counts differ | preferred has more |\n|---|---|---|---|---|")
    for style in args.styles:
        data = load_dataset(Path(args.root) / "data" / f"with-{style}.prefs.h5")
        t, prefs = data.trajectories, data.preferences
        used = prefs.used
        label = prefs.label[used]
        decided = label != 0.5
        for event in EVENTS:
            for whose, key in (("the labelled player (ego)", event), ("its partner (the proxy)", f"partner_{event}")):
                counts = t.info(key).astype(np.float64)
                diff = (segment_scores(t, counts, prefs.segments_a[used])
                        - segment_scores(t, counts, prefs.segments_b[used]))[decided]
                differs = diff != 0
                more = ((diff[differs] > 0) == (label[decided][differs] > 0.5)).mean() if differs.any() else float("nan")
                print(f"| {style} | {event} | {whose} | {differs.mean():.2f} | {more:.2f} |")


if __name__ == "__main__":
    main()
