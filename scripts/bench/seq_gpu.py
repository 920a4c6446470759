"""The GPU check for ``pbrl seq train`` (DESIGN §7.7): one prepared script of a few minutes.

    python scripts/bench/seq_gpu.py [--device cuda] [--steps 200] [--warmup 20] [--methods dpo tgdpo]

On a GPT-2 of 6 layers × 512 (about 25M parameters with a 8,192-token vocabulary; built from a config, no
download) and the synthetic grammar's pairs, batch 64 pairs, max length 32:
1. the same DPO loss on CPU and on the device for one batch and the same weights (fp32), within tolerance;
2. steps/s of the loop's own update (:func:`pbrl.train.loop.train_step`, sampling included) in fp32, bf16
   autocast, and bf16 + ``torch.compile`` of the loss: the median over blocks of 10 steps (one synchronisation
   per block) of ``--steps`` timed steps after ``--warmup``; peak device memory of each.
Prints a markdown table for docs/benchmarks.md. ``--device cpu`` is a dry run of the same code (fp32 only).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pbrl.sequence.data import PairSampler, collate_pairs, load_pairs, tokenize_pairs
from pbrl.sequence.lm import Reference, word_tokenizer
from pbrl.sequence.objectives import MethodConfig, SequenceLearner
from pbrl.sequence.synthetic import ADJECTIVES, NOUNS, VERBS, make_task, tiny_gpt2_config
from pbrl.train.loop import Optimizers, TrainConfig, train_step

SETTINGS = (("fp32", False, False), ("bf16", True, False), ("bf16 + compile", True, True))


def build(method: str, device: torch.device, tok, guide_state: dict | None = None):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**tiny_gpt2_config(8192, layers=6, width=512, heads=8, positions=64))
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_config(config).to(device)
    frozen = {}
    if method == "tgdpo":
        guide = AutoModelForCausalLM.from_config(config)
        guide.load_state_dict(guide_state)
        frozen["guide"] = guide.to(device).eval()
    cfg = MethodConfig(name=method, beta=0.1, guide="guide" if method == "tgdpo" else "")
    return SequenceLearner(policy, cfg, Reference.frozen_copy(policy), frozen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--methods", nargs="+", default=["dpo", "tgdpo"])
    args = parser.parse_args()
    device = torch.device(args.device)
    work = Path(tempfile.mkdtemp(prefix="pbrl-seq-gpu-"))
    pairs_path = make_task(seed=0, train_prompts=500, heldout_prompts=10, sft_per_prompt=1,
                           pairs_per_prompt=4).write(work)["pairs"]
    tok = word_tokenizer([" ".join(NOUNS + ADJECTIVES + VERBS) + " : ."])
    data = tokenize_pairs(load_pairs(pairs_path), tok, max_length=32)
    torch.manual_seed(1)
    guide_state = {k: v + 0.01 * torch.randn_like(v) for k, v in build("dpo", torch.device("cpu"), tok)
                   .policy.state_dict().items()}
    rows = []
    for method in args.methods:
        # 1. the same loss on CPU and on the device, one batch, the same weights (the policy nudged off the reference)
        batch = collate_pairs(data, torch.arange(args.batch), tok.pad_token_id)
        losses = {}
        for dev in ("cpu", device.type):
            learner = build(method, torch.device(dev), tok, guide_state)
            with torch.no_grad():
                for p in learner.policy.parameters():
                    p.add_(0.01 * torch.ones_like(p))
                losses[dev] = learner.loss(batch.to(torch.device(dev)), 0).total().item()
        print(f"{method}: loss on one batch, cpu {losses['cpu']:.6f}, {device.type} {losses[device.type]:.6f}")
        # 2. steps/s per setting
        for name, amp, compiled in SETTINGS:
            if device.type != "cuda" and (amp or compiled):
                continue
            learner = build(method, device, tok, guide_state)
            opts = Optimizers(learner.optimizers(), TrainConfig(steps=10**6, lr=1e-5, weight_decay=0.0))
            sampler = PairSampler(data, args.batch, seed=0, pad_id=tok.pad_token_id, device=device)
            loss_fn = torch.compile(learner.loss) if compiled else learner.loss
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            for i in range(args.warmup):
                train_step(learner, loss_fn, sampler.sample(), opts, i, amp=amp, norms_wanted=False)
            rates = []
            for b in range(args.steps // 10):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                for i in range(10):
                    train_step(learner, loss_fn, sampler.sample(), opts, args.warmup + 10 * b + i, amp=amp,
                               norms_wanted=False)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                rates.append(10 / (time.perf_counter() - start))
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
            tokens = int(collate_pairs(data, torch.arange(args.batch), tok.pad_token_id).attention_mask.sum())
            rate = statistics.median(rates)
            rows.append(f"| {method} | {name} | {rate:.1f} | {rate * tokens:,.0f} | {peak:.2f} |")
    print(f"\nGPT-2 6x512 (vocab 8192), batch {args.batch} pairs, max length 32, {device}; median over blocks of 10 "
          f"of {args.steps} steps after {args.warmup} warm-up\n")
    print("| method | setting | steps/s | tokens/s | peak GiB |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
