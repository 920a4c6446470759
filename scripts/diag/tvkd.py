"""What TVKD's shaping does to DPO's per-pair weights, measured on the grammar's noisy pairs (issue 16).

    OMP_NUM_THREADS=1 python scripts/diag/tvkd.py TEACHER PAIRS.jsonl [--alpha 1] [--gamma 0.7] [--tau 1]

The teacher's soft values are frozen, so TVKD's shaping term α Σ_t (γ V_T(s_{t+1}) − V_T(s_t)) is a constant per
completion: TVKD is DPO whose sigmoid argument gains a fixed per-pair offset o = α (shaping(y_w) − shaping(y_l)). At
the start (policy = reference) DPO weighs every pair's gradient by σ(0) = ½; TVKD by σ(−o). This prints the offsets
and those weights on the pairs whose label is right (more ``gold`` in the chosen completion) and on the reversed
ones, for the teacher's raw logits and its log-probabilities (``method.tvkd_value``).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from torch import Tensor

from pbrl.core.alignment import potential_shaping, soft_value
from pbrl.sequence.data import collate_pairs, load_pairs, tokenize_pairs
from pbrl.sequence.lm import completion_logps
from pbrl.sequence.synthetic import target_count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("teacher", type=Path)
    parser.add_argument("pairs", type=Path)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--gamma", type=float, default=0.7)
    parser.add_argument("--tau", type=float, default=1.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(args.teacher).eval(), AutoTokenizer.from_pretrained(args.teacher)
    pairs = load_pairs(args.pairs)
    data = tokenize_pairs(pairs, tok, max_length=32)
    reversed_label = torch.tensor([target_count(p.chosen) < target_count(p.rejected) for p in pairs])
    offsets: dict[str, list[Tensor]] = {"logits": [], "log_probs": []}
    with torch.no_grad():
        for start in range(0, len(data), 64):
            batch = collate_pairs(data, torch.arange(start, min(start + 64, len(data))), tok.pad_token_id)
            out = completion_logps(model, batch.input_ids, batch.attention_mask, batch.completion_mask,
                                   keep_logits=True)
            for kind in offsets:
                logits = out.logits if kind == "logits" else out.logits.float().log_softmax(-1)
                shaping = args.alpha * potential_shaping(soft_value(logits, tau=args.tau), out.mask, gamma=args.gamma)
                chosen, rejected = shaping.chunk(2)
                offsets[kind].append(chosen - rejected)
    print(f"{len(pairs)} pairs, {int(reversed_label.sum())} with the label reversed; α {args.alpha:g}, γ {args.gamma:g}, "
          f"τ {args.tau:g}\n")
    print("| teacher value | pairs | mean offset o | TVKD weight σ(−o) at the start (DPO: 0.5) | share of the total weight |")
    print("|---|---|---|---|---|")
    for kind, parts in offsets.items():
        o = torch.cat(parts)
        weight = torch.sigmoid(-o)
        for label, rows in (("label right", ~reversed_label), ("label reversed", reversed_label)):
            print(f"| {kind} | {label} | {float(o[rows].mean()):+.3f} | {float(weight[rows].mean()):.3f} | "
                  f"{float(weight[rows].sum() / weight.sum()):.3f} |")
    print(f"\nDPO's share on the reversed pairs: {statistics.mean(reversed_label.float().tolist()):.3f}")


if __name__ == "__main__":
    main()
