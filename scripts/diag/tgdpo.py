"""What TGDPO's guide says per token: the DPO guide's token log-ratios ``log π_g(y_t) − log π_ref(y_t)`` on the
training pairs, by token kind and side, and the share of tokens whose multiplier ``1 ± α β (log π_g − log π_ref)``
falls outside [0, 2] (clamped by pbrl's ``tg_clip = 1``) or below 0 (a sign flip without the clamp).

    OMP_NUM_THREADS=1 python scripts/diag/tgdpo.py runs/seq-bench/seed0/dpo/model runs/seq-bench/seed0/sft-2x64/model \\
        runs/seq-bench/task/pairs.jsonl [--beta 0.3] [--alpha 0.5]
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pbrl.sequence.data import collate_pairs, load_pairs, tokenize_pairs
from pbrl.sequence.lm import completion_logps
from pbrl.sequence.synthetic import ADJECTIVES, NOUNS, TARGET, VERBS


def kind(token: str) -> str:
    if token == "<eos>":
        return "EOS"
    if token == TARGET:
        return "target adjective"
    if token in ADJECTIVES:
        return "other adjective"
    if token in NOUNS:
        return "noun"
    if token in VERBS:
        return "verb"
    return token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("guide")
    parser.add_argument("reference")
    parser.add_argument("pairs")
    parser.add_argument("--beta", type=float, default=0.3)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--rows", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(1)
    guide = AutoModelForCausalLM.from_pretrained(args.guide).eval()
    reference = AutoModelForCausalLM.from_pretrained(args.reference).eval()
    tok = AutoTokenizer.from_pretrained(args.reference)
    rows = [json.loads(line) for line in open(args.pairs)][: args.rows]
    data = tokenize_pairs(load_pairs(rows), tok, max_length=64)
    batch = collate_pairs(data, torch.arange(len(data)), tok.pad_token_id)
    with torch.no_grad():
        g = completion_logps(guide, batch.input_ids, batch.attention_mask, batch.completion_mask)
        r = completion_logps(reference, batch.input_ids, batch.attention_mask, batch.completion_mask)
    ratio = (g.per_token - r.per_token)
    b = len(data)
    table: dict[tuple[str, str], list[float]] = {}
    for row in range(2 * b):
        side = "chosen" if row < b else "rejected"
        for t in torch.nonzero(g.mask[row]).flatten().tolist():
            token = tok.convert_ids_to_tokens(int(batch.input_ids[row, t + 1]))
            table.setdefault((side, kind(token)), []).append(float(ratio[row, t]))
    print(f"guide {args.guide}, reference {args.reference}, {b} pairs; multiplier = 1 ± α β Δ, α = {args.alpha}, "
          f"β = {args.beta}\n")
    print("| side | token | n | mean Δ = log π_g − log π_ref | multiplier mean | share < 0 | share outside [0, 2] |")
    print("|---|---|---|---|---|---|---|")
    for (side, k), values in sorted(table.items()):
        sign = 1.0 if side == "chosen" else -1.0
        mult = [1 + sign * args.alpha * args.beta * v for v in values]
        print(f"| {side} | {k} | {len(values)} | {statistics.mean(values):+.2f} | {statistics.mean(mult):.2f} | "
              f"{sum(m < 0 for m in mult) / len(mult):.2f} | {sum(m < 0 or m > 2 for m in mult) / len(mult):.2f} |")


if __name__ == "__main__":
    main()
