"""Throughput of ``pbrl seq train --method dpo`` against TRL's DPOTrainer (issue 16), equal work (DESIGN §7.4).

    OMP_NUM_THREADS=1 python scripts/bench/seq_speed.py [--steps 60] [--warmup 10] [--device cpu]

TRL runs in its own virtual environment (``.venv-trl``, made here on first use: torch 2.13.0, trl 1.16.0 and
transformers 5.24 from the local index), as a yardstick, never a dependency. Both sides train the same GPT-2
(built from a config, saved once to a folder both load), on the same pairs (the synthetic grammar), with the same
batch of pairs, max length, fp32 (TRL's default bf16 turned off), AdamW at the same learning rate, one thread, no
gradient clipping difference (both 1.0), and in each of the settings:

- reference ``live`` on both (pbrl ``--reference copy``; TRL ``precompute_ref_log_probs=False``);
- reference ``cached`` on both (pbrl ``cache``; TRL ``precompute_ref_log_probs=True``), the caching pass not timed;
- LoRA (rank 8, on ``c_attn``) on both, reference = the base model with adapters off.

Before timing, each side's DPO loss on the same 16 pairs is printed, with a perturbed copy of the weights as the
policy and the saved model as the reference (at the start the two are equal and any implementation gives log 2);
they must agree to float tolerance. Reported:
median steps/s over 3 repeats of ``--steps`` timed steps after ``--warmup``, tokens/s (non-pad tokens of prompt +
chosen + rejected per step), and the ratio pbrl / TRL measured in this one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository root (this file is scripts/bench/NAME.py)
TRL_VENV = ROOT / ".venv-trl"
TRL_PINS = ["torch==2.13.0", "trl==1.16.0", "transformers==5.24.*", "peft==0.21.2", "datasets", "tokenizers"]
SIZES = {"tiny": {"layers": 2, "width": 64, "vocab": None}, "small": {"layers": 4, "width": 256, "vocab": 8192},
         "medium": {"layers": 6, "width": 512, "vocab": 8192}}  # medium: the GPU check's size

WORKER = r'''
import json, sys, time, torch
from datasets import Dataset
from transformers import AutoTokenizer, TrainerCallback
from trl import DPOConfig, DPOTrainer
spec = json.loads(sys.argv[1])
torch.set_num_threads(1)
rows = [json.loads(line) for line in open(spec["data"])]
tok = AutoTokenizer.from_pretrained(spec["model"])
dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
times = []
class Clock(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if spec["device"] != "cpu" and state.global_step in (spec["warmup"], spec["steps"]):
            torch.cuda.synchronize()  # the clock's two ends only, as pbrl's loop synchronises at its last step
        times.append(time.perf_counter())
peft_config = None
if spec["lora"]:
    from peft import LoraConfig
    peft_config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["c_attn"], task_type="CAUSAL_LM")
args = DPOConfig(output_dir=spec["out"], per_device_train_batch_size=spec["batch"], max_steps=spec["steps"],
                 learning_rate=spec["lr"], beta=0.5, loss_type=["sigmoid"], bf16=False, use_cpu=spec["device"] == "cpu",
                 report_to=[], logging_steps=10**6, save_strategy="no", max_length=spec["max_length"],
                 precompute_ref_log_probs=spec["cached"], max_grad_norm=1.0, weight_decay=0.0, lr_scheduler_type="constant",
                 warmup_steps=0, dataloader_num_workers=0, seed=0, disable_tqdm=True)
trainer = DPOTrainer(model=spec["model"], args=args, train_dataset=dataset, processing_class=tok, peft_config=peft_config,
                     callbacks=[Clock()])
check = trainer.get_train_dataloader().collate_fn([trainer.train_dataset[i] for i in range(16)])
original = {k: v.clone() for k, v in trainer.model.state_dict().items()}
if spec["check_weights"]:  # the perturbed policy; the reference keeps the saved weights
    missing = trainer.model.load_state_dict(torch.load(spec["check_weights"]), strict=False)
    assert not missing.unexpected_keys, missing.unexpected_keys
trainer.model.eval()
with torch.no_grad():
    first = trainer.compute_loss(trainer.model, {k: v.to(trainer.model.device) for k, v in check.items()}).item()
trainer.model.load_state_dict(original)
trainer.model.train()
tokens = sum(int(trainer.train_dataset[i]["prompt_ids"].__len__() * 2 + len(trainer.train_dataset[i]["chosen_ids"])
                 + len(trainer.train_dataset[i]["rejected_ids"])) for i in range(len(trainer.train_dataset)))
trainer.train()
w = spec["warmup"]
print(json.dumps({"loss_first16": first, "steps_per_s": (len(times) - w) / (times[-1] - times[w - 1]),
                  "tokens_per_pair": tokens / len(trainer.train_dataset)}))
'''


def ensure_trl_venv() -> Path:
    python = TRL_VENV / "bin" / "python"
    stamp = TRL_VENV / ".ready"
    if not stamp.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *TRL_PINS], check=True)
        stamp.touch()
    return python


def make_model(folder: Path, size: str, tokenizer_dir: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from pbrl.sequence.synthetic import tiny_gpt2_config

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    s = SIZES[size]
    config = tiny_gpt2_config(s["vocab"] or len(tok), layers=s["layers"], width=s["width"])
    import torch

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    # a perturbed copy of the weights: both sides' loss on the same 16 pairs is compared with it as the policy
    # (at the initial weights the policy equals the reference and every implementation gives log 2)
    with torch.no_grad():
        torch.save({k: v + 0.05 * torch.randn_like(v) for k, v in model.state_dict().items()
                    if k.endswith("weight") and "wte" not in k}, folder / "check.pt")


def pbrl_run(model: Path, data: Path, out: Path, *, batch: int, steps: int, warmup: int, lr: float, cached: bool,
             lora: bool, device: str) -> dict[str, float]:
    import torch

    from pbrl.sequence.data import collate_pairs, load_pairs, tokenize_pairs
    from pbrl.sequence.lm import Reference, completion_logps
    from pbrl.sequence.train import SeqRunConfig, train_sequence

    cfg = SeqRunConfig(model=str(model), data=str(data), max_length=32, reference="cache" if cached else
                       ("adapter" if lora else "copy"), lora=lora, lora_rank=8, lora_alpha=16.0)
    cfg.method.name, cfg.method.beta = "dpo", 0.5
    cfg.train.steps, cfg.train.batch_size, cfg.train.lr, cfg.train.weight_decay = steps + warmup, batch, lr, 0.0
    cfg.train.log_every, cfg.train.checkpoint_every, cfg.train.device = 10**6, 10**6, device
    # the loss on the same first 16 pairs as TRL's check, before training
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    reference = AutoModelForCausalLM.from_pretrained(model).eval()
    policy = AutoModelForCausalLM.from_pretrained(model).eval()
    if not lora:  # LoRA: the adapters start at zero, so the check runs at the initial weights (log 2 on both sides)
        policy.load_state_dict(torch.load(model / "check.pt"), strict=False)
    rows = [json.loads(line) for line in open(data)][:16]
    pairs = tokenize_pairs(load_pairs(rows), tok, max_length=32)
    b = collate_pairs(pairs, torch.arange(16), tok.pad_token_id)
    with torch.no_grad():
        pol = completion_logps(policy, b.input_ids, b.attention_mask, b.completion_mask).total
        ref = Reference.frozen_copy(reference).sequence_logps(b)
    from pbrl.core import dpo_loss

    first = dpo_loss(*pol.chunk(2), *ref.chunk(2), beta=0.5)[0].mean().item()
    train_sequence(cfg, out, progress=False, stop_at=warmup)
    timed = train_sequence(cfg, out, progress=False)  # resumes after the warm-up: the loop's clock, steps only
    return {"loss_first16": first, "steps_per_s": timed.steps_per_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=list(SIZES))
    parser.add_argument("--settings", nargs="+", default=["live", "cached", "lora"])
    parser.add_argument("--trl-python", default="", help="a Python that imports trl 1.16.0 (default: make .venv-trl "
                        "here); on a GPU machine that can fetch nothing, the wheels carried there")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    trl_python = Path(args.trl_python) if args.trl_python else ensure_trl_venv()
    from pbrl.sequence.lm import word_tokenizer
    from pbrl.sequence.synthetic import ADJECTIVES, NOUNS, VERBS, make_task

    work = Path(tempfile.mkdtemp(prefix="pbrl-seq-speed-"))
    task = make_task(seed=0, train_prompts=500, heldout_prompts=10, sft_per_prompt=1, pairs_per_prompt=2)
    data = task.write(work / "task")["pairs"]
    word_tokenizer([" ".join(NOUNS + ADJECTIVES + VERBS) + " : ."]).save_pretrained(work / "tokenizer")
    lines = []
    for size in args.sizes:
        model = work / f"model-{size}"
        make_model(model, size, work / "tokenizer")
        params = sum(p.numel() for p in __import__("transformers").AutoModelForCausalLM.from_pretrained(model).parameters())
        for setting in args.settings:
            cached, lora = setting == "cached", setting == "lora"
            ours, theirs = [], []
            for r in range(args.repeats):
                mine = pbrl_run(model, data, work / f"pbrl-{size}-{setting}-{r}", batch=args.batch, steps=args.steps,
                                warmup=args.warmup, lr=1e-4, cached=cached, lora=lora, device=args.device)
                ours.append(mine["steps_per_s"])
                spec = {"model": str(model), "data": str(data), "out": str(work / f"trl-{size}-{setting}-{r}"),
                        "batch": args.batch, "steps": args.steps + args.warmup, "warmup": args.warmup, "lr": 1e-4,
                        "cached": cached, "lora": lora, "device": args.device, "max_length": 32,
                        "check_weights": "" if lora else str(model / "check.pt")}
                proc = subprocess.run([str(trl_python), "-c", WORKER, json.dumps(spec)], capture_output=True, text=True,
                                      env={**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
                if proc.returncode != 0:
                    sys.exit(f"TRL worker failed:\n{proc.stderr[-3000:]}")
                trl = json.loads(proc.stdout.strip().splitlines()[-1])
                theirs.append(trl["steps_per_s"])
                print(f"{size} {setting} repeat {r}: pbrl {ours[-1]:.2f} steps/s, TRL {theirs[-1]:.2f} steps/s; loss on "
                      f"the same 16 pairs: pbrl {mine['loss_first16']:.6f}, TRL {trl['loss_first16']:.6f}",
                      file=sys.stderr)
            tokens = trl["tokens_per_pair"] * args.batch
            mo, mt = statistics.median(ours), statistics.median(theirs)
            lines.append(f"| {size} ({params / 1e6:.2f}M) | {setting} | {mo:.2f} | {mt:.2f} | {mo * tokens:,.0f} | "
                         f"{mt * tokens:,.0f} | {mo / mt:.2f} | {mine['loss_first16']:.6f} / {trl['loss_first16']:.6f} |")
    print(f"\nDPO steps/s, batch {args.batch} pairs, max length 32, fp32, 1 thread, {args.device}; median of "
          f"{args.repeats} × {args.steps} steps after {args.warmup} warm-up\n")
    print("| model | reference | pbrl steps/s | TRL steps/s | pbrl tokens/s | TRL tokens/s | pbrl / TRL | loss, same 16 pairs (pbrl / TRL) |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
