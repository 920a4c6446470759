"""``pbrl seq``: sequence-level preference objectives for causal language models and image / video diffusion or
flow models (train, self-play), and the two synthetic tasks that exercise them (grammar, shapes)."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pbrl.cli.common import FORMATTER, float_in, int_at_least

# The choices of `seq train`, written out so that building the parser (`pbrl --help`) imports no torch; the test
# tests/test_cli_options.py::test_the_parsers_names_are_the_packages keeps them equal to the package's.
LM_METHODS = ('dpo', 'ipo', 'rso', 'is_daa', 'tgdpo', 'tvkd', 'irepo', 'sft', 'isq')
DIFFUSION_METHODS = ('diffusion_dpo', 'flow_dpo', 'diffusion_sft', 'sudo', 'abc', 'dro', 'rpo', 'flow_rwr', 'spo', 'gradspo')
DPO_LOSS_TYPES = ('sigmoid', 'hinge', 'ipo', 'robust', 'sigmoid_norm', 'exo_pair', 'nca_pair', 'bco_pair', 'sppo_hard', 'apo_zero', 'apo_down', 'discopop')
REFERENCE_MODES = ('copy', 'cache', 'adapter', 'none')


def seed_value(text: str) -> int:
    """An argparse ``type`` for ``--seed``: an integer in [0, 2**63) (torch's generators take no larger seed)."""
    value = int_at_least(0)(text)
    if value >= 2**63:
        raise argparse.ArgumentTypeError(f"got {value}, expected an integer >= 0 and < 2**63")
    return value


seed_value.__name__ = "seed"
SEED = seed_value
POSITIVE = float_in(0.0, math.inf, low_open=True, high_open=True)
SHARE_REVERSED = float_in(0.0, 0.5, high_open=True)  # a share of labels reversed: 0.5 and above is no signal


def device_name(text: str) -> str:
    """An argparse ``type`` for ``--device``: auto | cpu | cuda[:N] | mps (train.device's pattern)."""
    if re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", text) is None:
        raise argparse.ArgumentTypeError(f"got {text!r}, expected auto, cpu, cuda, cuda:N or mps")
    return text


device_name.__name__ = "device"


def apply_sections(cfg: Any, flags: list[tuple[str, str, str]], set_args: list[str] | None) -> None:
    """Apply the options the user typed (``(option, section, "KEY=VALUE")``) and every ``--set SECTION.KEY=VALUE`` to a
    run config of sections run / method / train, then validate it. A value out of bounds is reported under the
    option that set it (``--steps``, ``--set``); the method's fields go in together, since its cross-field check
    (tgdpo's guide, …) needs the name and the ``--set`` values at once."""
    from pbrl.errors import ConfigError, describe
    from pbrl.fields import set_fields
    from pbrl.train.config import parse_override

    overrides: dict[str, list[str]] = {"run": [], "method": [], "train": []}
    for text in set_args or []:
        section, _, _ = parse_override(text)
        if section not in overrides:
            raise ConfigError(describe("--set", "section", repr(section), "run, method or train"))
        overrides[section].append(text.split(".", 1)[1])
    targets = {"run": cfg, "method": cfg.method, "train": cfg.train}
    for option, section, text in flags:
        if section != "method":
            set_fields(targets[section], [text], section=section, where=option)
    method_flags = [text for _, section, text in flags if section == "method"]
    set_fields(cfg.method, method_flags + overrides["method"], section="method",
               where="--set" if overrides["method"] else "command line")
    for section in ("run", "train"):
        set_fields(targets[section], overrides[section], section=section)
    cfg.validate("command line")


def flag_override(key: str, value: Any) -> str:
    """``KEY=VALUE`` with the value in TOML (strings quoted)."""
    return f"{key}={json.dumps(value)}" if isinstance(value, str) else f"{key}={value}"


@contextmanager
def library_bars_hidden(hidden: bool, libraries: tuple[str, ...]) -> Iterator[None]:
    """With ``hidden`` (``--quiet``), switch off the progress bars of the Hugging Face ``libraries`` (transformers'
    "Loading weights", "Writing model shards", …) for the command, and back on after it (``pbrl`` may run in a
    process that goes on: the tests, a notebook)."""
    switched = []
    if hidden:
        for name in libraries:
            logging = importlib.import_module(f"{name}.utils.logging")
            if logging.is_progress_bar_enabled():
                logging.disable_progress_bar()
                switched.append(logging)
    try:
        yield
    finally:
        for logging in switched:
            logging.enable_progress_bar()


def diffusers_model(model: str) -> tuple[str, ...]:
    """``("diffusers",)`` when ``model`` names a diffusers class (its bars then need hiding), else ``()``: importing
    diffusers only to silence it would cost seconds."""
    from pbrl.errors import PbrlError
    from pbrl.sequence.diffusion import read_model_config

    try:
        _, config = read_model_config(model)
    except (PbrlError, OSError, ValueError):  # the loader reports a bad --model in its own line
        return ()
    return () if config.get("_class_name") == "SmallUNet" else ("diffusers",)


def cmd_seq_train(args: argparse.Namespace) -> int:
    from pbrl.errors import ConfigError, describe
    from pbrl.sequence.diffusion_train import DiffusionRunConfig, train_diffusion

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
    flags = [("--method", "method", flag_override("name", args.method))]
    for option, section, key in (("beta", "method", "beta"), ("loss_type", "method", "loss_type"),
                                 ("reference", "run", "reference"), ("max_length", "run", "max_length"),
                                 ("steps", "train", "steps"), ("batch_size", "train", "batch_size"),
                                 ("grad_accum", "train", "grad_accum"), ("lr", "train", "lr"),
                                 ("seed", "train", "seed"), ("device", "train", "device")):
        value = getattr(args, option)
        if value is not None:
            flags.append((f"--{option.replace('_', '-')}", section, flag_override(key, value)))
    if args.lora:
        flags.append(("--lora", "run", "lora=true"))
    if args.amp:
        flags.append(("--amp", "train", "amp=true"))
    apply_sections(cfg, flags, args.set)
    from pbrl.train.loop import ddp_launched

    if diffusion and ddp_launched():
        raise ConfigError(describe("WORLD_SIZE", "processes", os.environ["WORLD_SIZE"], f"1 for {args.method}: the "
                                   "diffusion trainers run in one process (torchrun / accelerate: the language-model "
                                   "methods)"))
    train = train_diffusion if diffusion else train_sequence_lazy
    with library_bars_hidden(args.quiet, diffusers_model(args.model) if diffusion else ("transformers",)):
        result = train(cfg, args.out, progress=not args.quiet)
    if os.environ.get("RANK", "0") == "0":  # under torchrun / accelerate: rank 0 reports, as it alone writes
        print(json.dumps({"method": cfg.method.name, "step": result.step, "finished": result.finished,
                          "steps_per_s": result.steps_per_s, "model": str(Path(args.out) / "model")}))
    return 0


def train_sequence_lazy(cfg: Any, out: str, *, progress: bool) -> Any:
    """:func:`pbrl.sequence.train.train_sequence`, imported only when a language model is trained."""
    from pbrl.sequence.train import train_sequence

    return train_sequence(cfg, out, progress=progress)


def cmd_seq_grammar(args: argparse.Namespace) -> int:
    from pbrl.errors import ConfigError, describe
    from pbrl.sequence.lm import word_tokenizer
    from pbrl.sequence.synthetic import ADJECTIVES, NOUNS, PROMPTS, VERBS, make_task, tiny_gpt2_config
    from pbrl.train.loop import run_directory

    heldout = 100
    if args.prompts + heldout > PROMPTS:
        raise ConfigError(describe("--prompts", "training prompts", args.prompts,
                                   f"at most {PROMPTS - heldout} (the grammar has {PROMPTS} prompts, {heldout} held out)"))
    heads = 2
    if args.width % heads:
        raise ConfigError(describe("--width", "width", args.width, f"a multiple of the model's {heads} heads"))
    out = Path(args.out)
    with run_directory(out, resumable=()):  # --out checked first; a failure leaves nothing half-written behind
        task = make_task(seed=args.seed, train_prompts=args.prompts, heldout_prompts=heldout, flip=args.flip)
        paths = task.write(out)
        tokenizer = word_tokenizer([" ".join(NOUNS + ADJECTIVES + VERBS) + " : ."])
        tokenizer.save_pretrained(out / "tokenizer")
        config = tiny_gpt2_config(len(tokenizer), layers=args.layers, width=args.width, heads=heads)
        (out / "gpt2-tiny.json").write_text(json.dumps(config, indent=2))
    print(json.dumps({k: str(v) for k, v in {**paths, "tokenizer": out / "tokenizer",
                                             "model_config": out / "gpt2-tiny.json"}.items()}))
    return 0


def cmd_seq_self_play(args: argparse.Namespace) -> int:
    from pbrl.sequence.diffusion_train import DiffusionRunConfig
    from pbrl.sequence.self_play import load_reward_fn, self_play

    cfg = DiffusionRunConfig(model=args.model, data=args.data)
    flags = [("--method", "method", flag_override("name", args.method)),
             ("--steps", "train", flag_override("steps", args.steps))]
    apply_sections(cfg, flags, args.set)
    reward = load_reward_fn(args.reward)
    with library_bars_hidden(args.quiet, diffusers_model(args.model)):
        rounds = self_play(cfg, reward, args.out, rounds=args.rounds, samples=args.samples, flip_rate=args.flip_rate,
                           labels=args.labels, epochs=args.epochs, progress=not args.quiet, stop_without_pairs=True)
    for r in rounds:
        print(json.dumps(vars(r)))
    return 0


def cmd_seq_shapes(args: argparse.Namespace) -> int:
    from pbrl.sequence.shapes import write_shapes_task
    from pbrl.train.loop import run_directory

    with run_directory(Path(args.out), resumable=()):  # --out checked first; a failure leaves nothing behind
        paths = write_shapes_task(args.out, seed=args.seed, images_per_prompt=args.images,
                                  pairs_per_prompt=args.pairs, flip_rate=args.flip)
    print(json.dumps({k: str(v) for k, v in paths.items()}))
    return 0


def add_seq_train_parser(sqs: argparse._SubParsersAction) -> None:
    st = sqs.add_parser("train", help="train a causal LM, or an image / video diffusion or flow model, on preference "
                        "pairs (resumes when --out holds an unfinished run)", formatter_class=FORMATTER,
                        epilog="example: pbrl seq grammar --out runs/grammar && pbrl seq train --method sft --model "
                        "runs/grammar/gpt2-tiny.json --set run.tokenizer=runs/grammar/tokenizer --data "
                        "runs/grammar/sft.jsonl --out runs/sft;  pbrl seq shapes --out runs/shapes && pbrl seq train "
                        "--method diffusion_sft --model runs/shapes/unet.json --data runs/shapes/sft.h5 --out runs/ref")
    st.add_argument("--method", required=True, choices=LM_METHODS + DIFFUSION_METHODS,
                    help="the objective: language models " + ", ".join(LM_METHODS) + "; diffusion / flow models "
                    + ", ".join(DIFFUSION_METHODS))
    st.add_argument("--model", required=True, help="a local model folder, or a config .json (new weights): a Hugging "
                    "Face causal LM; for diffusion methods pbrl's SmallUNet or a diffusers model class")
    st.add_argument("--data", required=True, help="pairs: JSON Lines or Parquet with prompt, chosen, rejected; for "
                    "diffusion methods an HDF5 file with cond, chosen, rejected (and weight, label, reward)")
    st.add_argument("--out", required=True, help="run directory: config.toml, TensorBoard events, checkpoints/, model/")
    st.add_argument("--beta", type=POSITIVE, default=None, help="β of the implicit reward (default 0.1)")
    st.add_argument("--loss-type", default=None, choices=DPO_LOSS_TYPES, metavar="TYPE",
                    help="DPO loss type for dpo / is_daa / rso (default sigmoid): " + ", ".join(DPO_LOSS_TYPES))
    st.add_argument("--reference", default=None, choices=REFERENCE_MODES, help="copy | cache | adapter | none "
                    "(default copy)")
    st.add_argument("--lora", action="store_true", help="train LoRA adapters (peft) instead of all weights")
    st.add_argument("--max-length", type=int_at_least(2), default=None, help="prompt + completion tokens (default "
                    "128); a row longer than the model's positions is refused")
    st.add_argument("--steps", type=int_at_least(1), default=None, help="gradient steps (default 200)")
    st.add_argument("--batch-size", type=int_at_least(1), default=None, help="pairs per micro-batch (default 8)")
    st.add_argument("--grad-accum", type=int_at_least(1), default=None, help="micro-batches per step (default 1)")
    st.add_argument("--lr", type=POSITIVE, default=None, help="AdamW learning rate (default 1e-4)")
    st.add_argument("--seed", type=SEED, default=None, help="seed (default 0)")
    st.add_argument("--device", type=device_name, default=None, help="auto | cpu | cuda | mps")
    st.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    st.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                    help="override any field: run.*, method.* (e.g. method.tg_alpha=0.5), train.*")
    st.add_argument("--quiet", action="store_true", help="no progress bars (Hugging Face's loading bars included)")
    st.set_defaults(func=cmd_seq_train)


def add_seq_task_parsers(sqs: argparse._SubParsersAction) -> None:
    sg = sqs.add_parser("grammar", help="write the synthetic grammar task: SFT data, noisy preference pairs, held-out "
                        "prompts, a word tokenizer and a tiny GPT-2 config", formatter_class=FORMATTER)
    sg.add_argument("--out", required=True)
    sg.add_argument("--seed", type=SEED, default=0)
    sg.add_argument("--prompts", type=int_at_least(1), default=300, help="training prompts")
    sg.add_argument("--flip", type=SHARE_REVERSED, default=0.2, help="share of preference labels reversed")
    sg.add_argument("--layers", type=int_at_least(1), default=2)
    sg.add_argument("--width", type=int_at_least(2), default=64, help="embedding width (even: 2 heads)")
    sg.set_defaults(func=cmd_seq_grammar)
    sh = sqs.add_parser("shapes", help="write the synthetic 16x16 shapes task (the cross preferred over the square): "
                        "SFT images, noisy pairs (HDF5), held-out prompts and a SmallUNet config",
                        formatter_class=FORMATTER)
    sh.add_argument("--out", required=True)
    sh.add_argument("--seed", type=SEED, default=0)
    sh.add_argument("--images", type=int_at_least(1), default=100, help="SFT images per training prompt")
    sh.add_argument("--pairs", type=int_at_least(1), default=50, help="preference pairs per training prompt")
    sh.add_argument("--flip", type=SHARE_REVERSED, default=0.2, help="share of preference labels reversed")
    sh.set_defaults(func=cmd_seq_shapes)


def add_self_play_parser(sqs: argparse._SubParsersAction) -> None:
    sp = sqs.add_parser("self-play", help="SPRO-style self-play for a diffusion / flow model: each round generates "
                        "samples per prompt, scores them, pairs best with worst and trains DPO on them",
                        formatter_class=FORMATTER, epilog="example: pbrl seq self-play --model runs/ref/model --data "
                        "runs/shapes/pairs.h5 --reward pbrl.sequence.shapes:shape_reward --out runs/spro")
    sp.add_argument("--model", required=True, help="the starting model folder")
    sp.add_argument("--data", required=True, help="an HDF5 file whose cond rows are the prompts")
    sp.add_argument("--reward", required=True, help="module:function f(images, cond) -> rewards [N] (checked on two "
                    "of the data's images first), or a reward-model folder; a round in which every prompt's samples "
                    "score alike makes no pair and stops the loop with an error")
    sp.add_argument("--out", required=True)
    sp.add_argument("--method", default="diffusion_dpo", choices=("diffusion_dpo", "flow_dpo", "diffusion_sft", "abc"),
                    help="the trainer of each round (diffusion_sft: the winners only, a RAFT-style baseline)")
    sp.add_argument("--rounds", type=int_at_least(1), default=3)
    sp.add_argument("--samples", type=int_at_least(2), default=8, help="samples per prompt per round")
    length = sp.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int_at_least(1), default=200, help="training steps per round")
    length.add_argument("--epochs", type=float_in(0.0, 1000.0, low_open=True), default=None,
                        help="passes over each round's own pairs instead of a fixed --steps (ceil(E · pairs / batch) "
                        "steps; the official Diffusion-DPO recipe: about 5)")
    sp.add_argument("--flip-rate", type=SHARE_REVERSED, default=0.0, help="a noisy annotator: share of pairs reversed")
    sp.add_argument("--labels", default="reward", choices=("reward", "swapped", "random"),
                    help="reward: the reward's order; the controls keep the samples and break the signal: swapped "
                    "(every pair reversed), random (each pair reversed with probability 0.5)")
    sp.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="run.*, method.*, train.*")
    sp.add_argument("--quiet", action="store_true", help="no progress bars or round lines")
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
