"""``pbrl seq``: sequence-level preference objectives for causal language models and image / video diffusion or
flow models (train, self-play), and the two synthetic tasks that exercise them (grammar, shapes)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pbrl.cli.common import FORMATTER


def apply_sections(cfg: Any, overrides: dict[str, list[str]], set_args: list[str] | None) -> None:
    """Apply ``KEY=VALUE`` overrides per section and every ``--set SECTION.KEY=VALUE`` to a run config of sections
    run / method / train, then validate it."""
    from pbrl.errors import ConfigError, describe
    from pbrl.fields import set_fields
    from pbrl.train.config import parse_override

    for text in set_args or []:
        section, _, _ = parse_override(text)
        if section not in overrides:
            raise ConfigError(describe("--set", "section", repr(section), "run, method or train"))
        overrides[section].append(text.split(".", 1)[1])
    for section, target in (("run", cfg), ("method", cfg.method), ("train", cfg.train)):
        set_fields(target, overrides[section], section=section)
    cfg.validate("command line")


def cmd_seq_train(args: argparse.Namespace) -> int:
    from pbrl.errors import ConfigError, describe
    from pbrl.sequence.diffusion_train import DIFFUSION_METHODS, DiffusionRunConfig, train_diffusion

    diffusion = args.method in DIFFUSION_METHODS
    if diffusion:
        cfg = DiffusionRunConfig(model=args.model, data=args.data)
        for option in ("loss_type", "reference", "max_length"):
            if getattr(args, option) is not None:
                raise ConfigError(describe("command line", f"--{option.replace('_', '-')}", getattr(args, option),
                                           f"nothing for {args.method} (a language-model option)"))
        if args.lora:
            raise ConfigError(describe("command line", "--lora", "set", f"nothing for {args.method} (LoRA is for "
                                       "language models here)"))
    else:
        from pbrl.sequence.train import SeqRunConfig

        cfg = SeqRunConfig(model=args.model, data=args.data)
    overrides = {"method": [f"name={args.method!r}"], "run": [], "train": []}
    for option, section, key in (("beta", "method", "beta"), ("loss_type", "method", "loss_type"),
                                 ("reference", "run", "reference"), ("max_length", "run", "max_length"),
                                 ("steps", "train", "steps"), ("batch_size", "train", "batch_size"),
                                 ("grad_accum", "train", "grad_accum"), ("lr", "train", "lr"),
                                 ("seed", "train", "seed"), ("device", "train", "device")):
        value = getattr(args, option)
        if value is not None:
            overrides[section].append(f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}")
    if args.lora:
        overrides["run"].append("lora=true")
    if args.amp:
        overrides["train"].append("amp=true")
    apply_sections(cfg, overrides, args.set)
    train = train_diffusion if diffusion else train_sequence_lazy
    result = train(cfg, args.out, progress=not args.quiet)
    print(json.dumps({"method": cfg.method.name, "step": result.step, "finished": result.finished,
                      "steps_per_s": result.steps_per_s, "model": str(Path(args.out) / "model")}))
    return 0


def train_sequence_lazy(cfg: Any, out: str, *, progress: bool) -> Any:
    """:func:`pbrl.sequence.train.train_sequence`, imported only when a language model is trained."""
    from pbrl.sequence.train import train_sequence

    return train_sequence(cfg, out, progress=progress)


def cmd_seq_grammar(args: argparse.Namespace) -> int:
    from pbrl.sequence.lm import word_tokenizer
    from pbrl.sequence.synthetic import ADJECTIVES, NOUNS, VERBS, make_task, tiny_gpt2_config

    task = make_task(seed=args.seed, train_prompts=args.prompts, flip=args.flip)
    out = Path(args.out)
    paths = task.write(out)
    tokenizer = word_tokenizer([" ".join(NOUNS + ADJECTIVES + VERBS) + " : ."])
    tokenizer.save_pretrained(out / "tokenizer")
    config = tiny_gpt2_config(len(tokenizer), layers=args.layers, width=args.width)
    (out / "gpt2-tiny.json").write_text(json.dumps(config, indent=2))
    print(json.dumps({k: str(v) for k, v in {**paths, "tokenizer": out / "tokenizer",
                                             "model_config": out / "gpt2-tiny.json"}.items()}))
    return 0


def cmd_seq_self_play(args: argparse.Namespace) -> int:
    from pbrl.sequence.diffusion_train import DiffusionRunConfig
    from pbrl.sequence.self_play import load_reward_fn, self_play

    cfg = DiffusionRunConfig(model=args.model, data=args.data)
    overrides = {"run": [], "method": [f"name={args.method!r}"], "train": [f"steps={args.steps}"]}
    apply_sections(cfg, overrides, args.set)
    rounds = self_play(cfg, load_reward_fn(args.reward), args.out, rounds=args.rounds, samples=args.samples,
                       flip_rate=args.flip_rate, progress=not args.quiet)
    for r in rounds:
        print(json.dumps(vars(r)))
    return 0


def cmd_seq_shapes(args: argparse.Namespace) -> int:
    from pbrl.sequence.shapes import write_shapes_task

    paths = write_shapes_task(args.out, seed=args.seed, images_per_prompt=args.images, pairs_per_prompt=args.pairs,
                              flip_rate=args.flip)
    print(json.dumps({k: str(v) for k, v in paths.items()}))
    return 0


def add_seq_train_parser(sqs: argparse._SubParsersAction) -> None:
    from pbrl.sequence.diffusion_train import DIFFUSION_METHODS
    from pbrl.sequence.objectives import METHODS

    st = sqs.add_parser("train", help="train a causal LM, or an image / video diffusion or flow model, on preference "
                        "pairs (resumes when --out holds an unfinished run)", formatter_class=FORMATTER,
                        epilog="example: pbrl seq grammar --out runs/grammar && pbrl seq train --method sft --model "
                        "runs/grammar/gpt2-tiny.json --set run.tokenizer=runs/grammar/tokenizer --data "
                        "runs/grammar/sft.jsonl --out runs/sft;  pbrl seq shapes --out runs/shapes && pbrl seq train "
                        "--method diffusion_sft --model runs/shapes/unet.json --data runs/shapes/sft.h5 --out runs/ref")
    st.add_argument("--method", required=True, choices=METHODS + DIFFUSION_METHODS,
                    help="the objective: language models " + ", ".join(METHODS) + "; diffusion / flow models "
                    + ", ".join(DIFFUSION_METHODS))
    st.add_argument("--model", required=True, help="a local model folder, or a config .json (new weights): a Hugging "
                    "Face causal LM; for diffusion methods pbrl's SmallUNet or a diffusers model class")
    st.add_argument("--data", required=True, help="pairs: JSON Lines or Parquet with prompt, chosen, rejected; for "
                    "diffusion methods an HDF5 file with cond, chosen, rejected (and weight, label, reward)")
    st.add_argument("--out", required=True, help="run directory: config.toml, TensorBoard events, checkpoints/, model/")
    st.add_argument("--beta", type=float, default=None, help="β of the implicit reward (default 0.1)")
    st.add_argument("--loss-type", default=None, help="DPO loss type for dpo / is_daa / rso (default sigmoid)")
    st.add_argument("--reference", default=None, help="copy | cache | adapter | none (default copy)")
    st.add_argument("--lora", action="store_true", help="train LoRA adapters (peft) instead of all weights")
    st.add_argument("--max-length", type=int, default=None, help="prompt + completion tokens (default 128)")
    st.add_argument("--steps", type=int, default=None, help="gradient steps (default 200)")
    st.add_argument("--batch-size", type=int, default=None, help="pairs per micro-batch (default 8)")
    st.add_argument("--grad-accum", type=int, default=None, help="micro-batches per step (default 1)")
    st.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default 1e-4)")
    st.add_argument("--seed", type=int, default=None, help="seed (default 0)")
    st.add_argument("--device", default=None, help="auto | cpu | cuda | mps")
    st.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    st.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                    help="override any field: run.*, method.* (e.g. method.tg_alpha=0.5), train.*")
    st.add_argument("--quiet", action="store_true", help="no progress bar")
    st.set_defaults(func=cmd_seq_train)


def add_seq_task_parsers(sqs: argparse._SubParsersAction) -> None:
    sg = sqs.add_parser("grammar", help="write the synthetic grammar task: SFT data, noisy preference pairs, held-out "
                        "prompts, a word tokenizer and a tiny GPT-2 config", formatter_class=FORMATTER)
    sg.add_argument("--out", required=True)
    sg.add_argument("--seed", type=int, default=0)
    sg.add_argument("--prompts", type=int, default=300, help="training prompts")
    sg.add_argument("--flip", type=float, default=0.2, help="share of preference labels reversed")
    sg.add_argument("--layers", type=int, default=2)
    sg.add_argument("--width", type=int, default=64)
    sg.set_defaults(func=cmd_seq_grammar)
    sh = sqs.add_parser("shapes", help="write the synthetic 16x16 shapes task (the cross preferred over the square): "
                        "SFT images, noisy pairs (HDF5), held-out prompts and a SmallUNet config",
                        formatter_class=FORMATTER)
    sh.add_argument("--out", required=True)
    sh.add_argument("--seed", type=int, default=0)
    sh.add_argument("--images", type=int, default=100, help="SFT images per training prompt")
    sh.add_argument("--pairs", type=int, default=50, help="preference pairs per training prompt")
    sh.add_argument("--flip", type=float, default=0.2, help="share of preference labels reversed")
    sh.set_defaults(func=cmd_seq_shapes)


def add_self_play_parser(sqs: argparse._SubParsersAction) -> None:
    sp = sqs.add_parser("self-play", help="SPRO-style self-play for a diffusion / flow model: each round generates "
                        "samples per prompt, scores them, pairs best with worst and trains DPO on them",
                        formatter_class=FORMATTER, epilog="example: pbrl seq self-play --model runs/ref/model --data "
                        "runs/shapes/pairs.h5 --reward pbrl.sequence.shapes:shape_reward --out runs/spro")
    sp.add_argument("--model", required=True, help="the starting model folder")
    sp.add_argument("--data", required=True, help="an HDF5 file whose cond rows are the prompts")
    sp.add_argument("--reward", required=True, help="module:function (images, cond) -> [N], or a reward-model folder")
    sp.add_argument("--out", required=True)
    sp.add_argument("--method", default="diffusion_dpo", choices=("diffusion_dpo", "flow_dpo", "diffusion_sft"),
                    help="the trainer of each round (diffusion_sft: the winners only, a RAFT-style baseline)")
    sp.add_argument("--rounds", type=int, default=3)
    sp.add_argument("--samples", type=int, default=8, help="samples per prompt per round")
    sp.add_argument("--steps", type=int, default=200, help="training steps per round")
    sp.add_argument("--flip-rate", type=float, default=0.0, help="a noisy annotator: share of pairs reversed")
    sp.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="run.*, method.*, train.*")
    sp.add_argument("--quiet", action="store_true")
    sp.set_defaults(func=cmd_seq_self_play)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``pbrl seq`` and its subcommands, in the order `pbrl seq --help` lists them."""
    sq = sub.add_parser("seq", help="sequence-level objectives: language models (DPO family, RSO, IS-DAA, TGDPO, "
                        "TVKD, iREPO, inverse soft-Q) and diffusion / flow models (Diffusion-DPO, Flow-DPO, ABC, "
                        "self-supervised DPO, DRO, RPO, Flow-RWR)", formatter_class=FORMATTER)
    sqs = sq.add_subparsers(dest="seq_command", required=True)
    add_seq_train_parser(sqs)
    add_seq_task_parsers(sqs)
    add_self_play_parser(sqs)
