"""``pbrl seq train``: a sequence-level objective on a causal LM, trained by the shared loop
(:func:`pbrl.train.loop.run_loop`: gradient accumulation, bf16 autocast on CUDA, TensorBoard, progress bar,
checkpoints that resume bit-exactly).

A run directory holds ``config.toml`` (the resolved config; a resume must ask for the same), ``tokenizer/``
(when the model came without one: a word-level tokenizer built from the data), ``ref_logps.pt`` (reference
``cache``), TensorBoard events, ``checkpoints/`` and, at the end, ``model/`` (``save_pretrained``, written to a
temporary folder and renamed) and ``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pbrl.errors import ConfigError, DatasetError, describe
from pbrl.fields import check_fields, param, set_fields
from pbrl.io import atomic_write_text
from pbrl.sequence.data import PairSampler, TokenizedPairs, collate_pairs, data_file, load_pairs, tokenize_pairs
from pbrl.sequence.lm import (
    REFERENCE_MODES,
    LoraSettings,
    Reference,
    apply_lora,
    load_causal_lm,
    precompute_reference,
    save_model,
    word_tokenizer,
)
from pbrl.sequence.objectives import MethodConfig, SequenceLearner
from pbrl.train.loop import (
    LoopResult,
    TrainConfig,
    barrier,
    check_batch,
    ddp_setup,
    ddp_teardown,
    ddp_wrap,
    is_main,
    prepare_run_dir,
    resolve_device,
    run_directory,
    run_loop,
)

__all__ = ["SectionedRunConfig", "SeqRunConfig", "check_positions", "final_metrics", "load_model_and_tokenizer",
           "train_sequence"]


class SectionedRunConfig:
    """A run config of sections ``run`` (its own fields, ``model`` and ``data`` required), ``method`` and ``train``:
    the form ``config.toml`` stores. Subclasses are dataclasses with ``method`` / ``train`` fields and ``validate``."""

    def to_dict(self) -> dict[str, Any]:
        run = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("method", "train")}
        return {"run": run, "method": dataclasses.asdict(self.method), "train": dataclasses.asdict(self.train)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> Any:
        run = dict(data.get("run", {}))
        for required in ("model", "data"):
            if required not in run:
                raise ConfigError(describe(where, f"run.{required}", "missing", "a path"))
        cfg = cls(model=str(run.pop("model")), data=str(run.pop("data")))
        for section, target, items in (("run", cfg, run), ("method", cfg.method, data.get("method", {})),
                                       ("train", cfg.train, data.get("train", {}))):
            set_fields(target, [f"{k}={json.dumps(v)}" for k, v in items.items()], section=section, where=where)
        return cfg.validate(where)


@dataclass
class SeqRunConfig(SectionedRunConfig):
    """Everything a sequence run depends on; ``config.toml`` holds it (sections ``run``, ``method``, ``train``)."""

    model: str                                   # a local model folder or a config .json
    data: str                                    # JSON Lines or Parquet pairs (TRL's format)
    max_length: int = param(128, ge=2)           # prompt + completion tokens
    reference: str = param("copy", choices=REFERENCE_MODES)
    lora: bool = False
    lora_rank: int = param(8, ge=1)
    lora_alpha: float = param(16.0, gt=0)
    tokenizer: str = ""                          # a tokenizer folder; empty: the model folder's, else built from data
    dtype: str = param("float32", choices=("float32", "bfloat16"))  # weights' dtype (bf16 autocast: train.amp)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=200, batch_size=8, lr=1e-4,
                                                                   weight_decay=0.0, log_every=10,
                                                                   checkpoint_every=100))

    def validate(self, where: str = "config") -> SeqRunConfig:
        check_fields(self, "run", where)
        check_fields(self.method, "method", where)
        self.method.check(where)
        check_fields(self.train, "train", where)
        if self.method.uses_reference and self.reference == "none":
            raise ConfigError(describe(where, "run.reference", "'none'",
                                       f"'copy', 'cache' or 'adapter' ({self.method.name} compares with a reference)"))
        if self.reference == "adapter" and not self.lora:
            raise ConfigError(describe(where, "run.reference", "'adapter'", "lora = true (the base model under the "
                                       "adapters is the reference)"))
        if self.reference == "cache" and self.method.needs_token_reference:
            raise ConfigError(describe(where, "run.reference", "'cache'", f"'copy' or 'adapter' ({self.method.name} "
                                       "reads per-token reference log-probs)"))
        return self


def _fingerprint(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def load_model_and_tokenizer(cfg: SeqRunConfig, out: Path, texts: list[str]) -> tuple[nn.Module, Any, str, bool]:
    """The policy's starting model, its tokenizer (the run's ``out/tokenizer`` if there is one, else built from the
    data when neither the model nor ``run.tokenizer`` has one), a fingerprint of the weights' origin, and whether
    the tokenizer was built here (the caller saves it into the run)."""
    from transformers import AutoTokenizer

    dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
    model, tokenizer, origin = load_causal_lm(cfg.model, seed=cfg.train.seed, dtype=dtype)
    if cfg.tokenizer:
        tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer, local_files_only=True)
    built = False
    if not cfg.tokenizer and tokenizer is None:
        saved = out / "tokenizer"
        if saved.is_dir():
            tokenizer = AutoTokenizer.from_pretrained(saved, local_files_only=True)
        else:
            tokenizer, built = word_tokenizer(texts), True
    vocab = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > vocab:
        raise ConfigError(describe(cfg.model, "vocab_size", vocab, f">= the tokenizer's {len(tokenizer)} tokens"))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, origin, built


def _frozen_model(path: str, device: torch.device) -> nn.Module:
    model, _, _ = load_causal_lm(path)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device).eval()


def train_sequence(cfg: SeqRunConfig, out: str | os.PathLike, *, progress: bool = True,
                   stop_at: int | None = None) -> LoopResult:
    """Train ``cfg`` into ``out`` (resuming an unfinished run there). Every row of the data is checked and
    tokenised, and fits the model's positions, before training starts; the run directory records the data's
    sha256 (a resume on changed data is refused) and a failed start leaves it as it was (:func:`run_directory`).
    The final model lands in ``out/model``, the final loss and reward accuracy in ``out/metrics.json``."""
    cfg.validate()
    out = Path(out)
    pairs = load_pairs(cfg.data)  # a malformed row stops here
    if cfg.method.name == "irepo":
        lacking = next((p for p in pairs if p.preference is None), None)
        if lacking is not None:
            raise DatasetError(describe(lacking.where, "field 'preference'", "missing",
                                        "the empirical share of annotators preferring chosen, in (0, 1), on every "
                                        "row (iREPO regresses on its logit)"))
    files = data_file("pairs", cfg.data)
    device, created = ddp_setup(resolve_device(cfg.train.device))  # torchrun / accelerate: join the group
    try:
        check_batch(cfg.train.batch_size)
        if not is_main():  # rank 0 owns the run directory; the others train beside it, writing nothing
            return _train_in(cfg, out, pairs, files, device, progress, stop_at)
        with run_directory(out, files):
            prepare_run_dir(out, cfg.to_dict())  # a resume asking for other settings stops here, naming them
            return _train_in(cfg, out, pairs, files, device, progress, stop_at)
    finally:
        ddp_teardown(created)


def _train_in(cfg: SeqRunConfig, out: Path, pairs: list[Any], files: dict[str, tuple[Path, str]],
              device: torch.device, progress: bool, stop_at: int | None) -> LoopResult:
    main = is_main()
    if not main:
        barrier()  # until rank 0 has saved the tokenizer and the reference log-probs into the run
    texts = [t for p in pairs for t in (p.prompt, p.chosen, p.rejected)]
    policy, tokenizer, origin, built = load_model_and_tokenizer(cfg, out, texts)
    data: TokenizedPairs = tokenize_pairs(pairs, tokenizer, max_length=cfg.max_length)  # a prompt too long
    check_positions(policy, data, pairs, cfg)
    if built and main:
        tmp = out / f".tokenizer.{os.getpid()}.tmp"
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, out / "tokenizer")
    torch.manual_seed(cfg.train.seed)
    torch.set_num_threads(cfg.train.threads)
    if data.truncated and main:
        print(f"pbrl: {cfg.data}: {data.truncated} completion(s) cut at max_length = {cfg.max_length}",
              file=sys.stderr)
    if cfg.lora:
        policy = apply_lora(policy, LoraSettings(rank=cfg.lora_rank, alpha=cfg.lora_alpha))
    policy.to(device)
    reference = _reference(cfg, policy, data, tokenizer.pad_token_id, out, origin, files["pairs"][1], device,
                           progress)
    frozen = {}
    if cfg.method.name == "tgdpo":
        frozen["guide"] = _frozen_model(cfg.method.guide, device)
    if cfg.method.name == "tvkd":
        frozen["teacher"] = _frozen_model(cfg.method.teacher, device)
    if main:
        barrier()  # the tokenizer and reference cache are in the run: the other ranks may read them
    learner = SequenceLearner(policy, cfg.method, reference, frozen)
    learner.distribute(ddp_wrap(policy, device))
    sampler = PairSampler(data, cfg.train.batch_size, seed=cfg.train.seed, pad_id=tokenizer.pad_token_id,
                          device=device)
    result = run_loop(learner, sampler.sample, cfg.train, out, device=device, stateful={"sampler": sampler},
                      progress=progress, stop_at=stop_at, desc=f"seq {cfg.method.name}")
    already_done = result.step == result.start_step and (out / "metrics.json").is_file()
    if result.finished and not already_done and main:
        batch_size = max(cfg.train.batch_size, 16)
        batches = (collate_pairs(data, index, tokenizer.pad_token_id).to(device)
                   for index in evaluation_indices(len(data), batch_size))
        final = final_metrics(learner, batches, pairs=len(data), step=result.step, seed=cfg.train.seed,
                              device=device)
        save_model(policy, tokenizer, out / "model")  # after the evaluation: it merges LoRA adapters away
        atomic_write_text(out / "metrics.json", json.dumps({
            "method": cfg.method.name, "steps": result.step, "pairs": len(data),
            "steps_per_s": result.steps_per_s, "truncated": data.truncated, **final}, indent=2))
    return result


def model_positions(model: nn.Module) -> int | None:
    """How many positions a causal LM embeds (``max_position_embeddings``; GPT-2's ``n_positions``), or None."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_positions(model: nn.Module, data: TokenizedPairs, pairs: list[Any], cfg: SeqRunConfig) -> None:
    """Refuse, naming ``--max-length``, a row whose prompt + completion (already cut at ``max_length``) is longer
    than the model's positions: the model would fail on its first batch (an index error deep in its embedding).
    A ``max_length`` above the positions is fine while every row fits."""
    positions = model_positions(model)
    if positions is None or cfg.max_length <= positions:
        return
    lengths = [len(p) + max(len(c), len(r)) for p, c, r in zip(data.prompt, data.chosen, data.rejected)]
    longest = max(range(len(lengths)), key=lengths.__getitem__)
    if lengths[longest] > positions:
        raise ConfigError(describe("--max-length", "max_length", cfg.max_length,
                                   f"at most {positions}, the positions of the model {cfg.model} "
                                   f"({pairs[longest].where} needs {lengths[longest]} tokens; longer rows are cut)"))


FINAL_EVAL_PAIRS = 256
"""How many training pairs (the file's first) the final loss and reward accuracy of ``metrics.json`` are taken on."""


def evaluation_indices(pairs: int, batch_size: int) -> list[Tensor]:
    """Row indices of the first :data:`FINAL_EVAL_PAIRS` pairs, in batches of ``batch_size``."""
    n = min(pairs, FINAL_EVAL_PAIRS)
    return [torch.arange(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


@torch.no_grad()
def final_metrics(learner: nn.Module, batches: Iterable[Any], *, pairs: int, step: int, seed: int,
                  device: torch.device) -> dict[str, Any]:
    """The trained learner's objective (``final_loss``) and its implicit reward's accuracy (``reward_accuracy``:
    the share of pairs whose chosen side it rewards more; None for objectives without one) on ``batches`` of the
    training pairs, in eval mode, with the global RNG forked and seeded (a diffusion loss draws noise and times).
    ``evaluated_on`` says which pairs: pbrl's sequence runs have no held-out pairs."""
    was_training = learner.training
    learner.eval()
    loss_sum, loss_rows, accuracy_sum, accuracy_rows = 0.0, 0, 0.0, 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for batch in batches:
            rows = len(batch["cond"]) if isinstance(batch, dict) else batch.pairs
            output = learner.loss(batch, step)
            loss_sum += float(output.loss) * rows
            loss_rows += rows
            accuracy = output.metrics.get("rewards/accuracies")
            if accuracy is not None:
                accuracy_sum += float(accuracy) * rows
                accuracy_rows += rows
    learner.train(was_training)
    return {"final_loss": loss_sum / loss_rows if loss_rows else None,
            "reward_accuracy": accuracy_sum / accuracy_rows if accuracy_rows else None,
            "evaluated_on": f"training pairs: the first {loss_rows} of {pairs} (no held-out pairs)" if loss_rows
            else "nothing (this objective is not evaluated on the file's pairs)"}


def _reference(cfg: SeqRunConfig, policy: nn.Module, data: TokenizedPairs, pad_id: int, out: Path, origin: str,
               data_sha256: str, device: torch.device, progress: bool) -> Reference:
    if cfg.reference == "none" or not cfg.method.uses_reference:  # sft / isq read no reference: none is built
        return Reference("none")
    if cfg.reference == "adapter":
        return Reference("adapter", policy=policy)
    if cfg.reference == "copy":
        return Reference.frozen_copy(policy)
    fingerprint = _fingerprint(origin, data_sha256[:16], str(cfg.max_length), cfg.dtype)
    cached = precompute_reference(policy, data, pad_id, path=out / "ref_logps.pt", fingerprint=fingerprint,
                                  batch_size=max(cfg.train.batch_size, 16), device=device, progress=progress)
    return Reference("cache", cached={k: v.to(device) for k, v in cached.items()})
