"""Log-probabilities of completions under any Hugging Face causal LM, and the reference they are compared with.

Sequences are prompt + completion, right-padded, with a ``completion_mask`` of 1 on completion tokens (see
:class:`pbrl.sequence.data.PairBatch`). Position ``t`` of the results scores token ``t + 1`` given tokens
``<= t``, so every per-token tensor is ``[N, T − 1]``.

The reference is one of:

- ``copy``: a frozen copy of the starting model (the SFT model), evaluated live;
- ``cache``: its summed log-probabilities computed once for every pair and stored in the run directory
  (``ref_logps.pt``, keyed by a fingerprint of model and data, written atomically), so training runs one model;
- ``adapter``: with LoRA, the base model with the adapters switched off (no second copy in memory);
- ``none``: for reference-free objectives.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pbrl.errors import ConfigError, DatasetError, describe
from pbrl.io import Progress, atomic_path, commit_atomic, write_folder

REFERENCE_MODES = ("copy", "cache", "adapter", "none")

__all__ = ["REFERENCE_MODES", "LoraSettings", "Reference", "SequenceLogps", "apply_lora", "completion_logps",
           "load_causal_lm", "next_token_logps", "save_model", "word_tokenizer"]


@dataclass
class SequenceLogps:
    """Per-token log-probabilities of completion tokens.

    - ``per_token``: ``[N, T−1]``, 0 outside the completion;
    - ``mask``: ``[N, T−1]`` float, 1 on completion tokens;
    - ``logits``: ``[N, T−1, V]`` when asked for (objectives that read the whole distribution), else None.
    """

    per_token: Tensor
    mask: Tensor
    logits: Tensor | None = None

    @property
    def total(self) -> Tensor:
        """``[N]`` summed log-probability of each completion."""
        return self.per_token.sum(-1)

    @property
    def lengths(self) -> Tensor:
        """``[N]`` completion tokens."""
        return self.mask.sum(-1)

    @property
    def mean(self) -> Tensor:
        """``[N]`` length-normalised (per-token mean) log-probability."""
        return self.total / self.lengths.clamp(min=1)

    def halves(self) -> tuple[SequenceLogps, SequenceLogps]:
        """(chosen, rejected): rows ``[:B]`` and ``[B:]`` of a pair batch."""
        b = self.per_token.shape[0] // 2
        lg = (None, None) if self.logits is None else (self.logits[:b], self.logits[b:])
        return (SequenceLogps(self.per_token[:b], self.mask[:b], lg[0]),
                SequenceLogps(self.per_token[b:], self.mask[b:], lg[1]))


def next_token_logps(logits: Tensor, input_ids: Tensor, completion_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """From a causal LM's ``logits`` ``[N, T, V]``: (``[N, T−1]`` log-probabilities of each next token, 0 outside
    the completion; the ``[N, T−1]`` float completion mask; the shifted logits ``[N, T−1, V]``, float32 at least)."""
    logits = logits[:, :-1]
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    labels = input_ids[:, 1:]
    mask = completion_mask[:, 1:].to(logits.dtype)
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
    return -nll.view_as(labels) * mask, mask, logits


def completion_logps(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor, *,
                     keep_logits: bool = False) -> SequenceLogps:
    """Log-probabilities of the completion tokens of ``input_ids`` ``[N, T]`` under ``model``.

    The log-softmax is taken in float32 at least, whatever the model's dtype (bf16 logits lose the small log-probabilities
    DPO's margins are made of). ``keep_logits`` also returns the shifted logits ``[N, T−1, V]`` (float32).
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    per_token, mask, shifted = next_token_logps(logits, input_ids, completion_mask)
    return SequenceLogps(per_token, mask, shifted if keep_logits else None)


def load_causal_lm(spec: str | Path, *, seed: int = 0, dtype: torch.dtype | None = None) -> tuple[nn.Module, Any | None, str]:
    """A causal LM from a local Hugging Face model folder (weights + config, and a tokenizer when the folder
    has one) or from a config file (``config.json`` of any causal-LM architecture: new weights, seeded). Nothing
    is downloaded. Returns (model, tokenizer or None, a fingerprint of the weights' origin)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(spec)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(describe(str(path), "--model", "a folder without config.json",
                                       "a Hugging Face model folder (save_pretrained) or a config .json file"))
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
        has_tokenizer = any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True) if has_tokenizer else None
        weights = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin"))
        digest = hashlib.sha256()
        for w in weights:  # every byte: the fingerprint keys the reference cache, which must never match another model
            digest.update(w.name.encode())
            with open(w, "rb") as f:
                for chunk in iter(lambda f=f: f.read(1 << 24), b""):
                    digest.update(chunk)
        return model, tokenizer, f"folder:{path.resolve()}:{digest.hexdigest()[:16]}"
    if path.is_file() and path.suffix == ".json":
        try:
            config_dict = json.loads(path.read_text())
            config = AutoConfig.for_model(**config_dict)
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(describe(str(path), "--model", str(exc).splitlines()[0][:120],
                                       "a transformers config (with model_type) as JSON")) from None
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        return model, None, f"config:{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}:seed{seed}"
    raise ConfigError(describe(str(path), "--model", "missing" if not path.exists() else "not a folder or .json",
                               "a local Hugging Face model folder or a config .json file"))


def word_tokenizer(texts: list[str]) -> Any:
    """A word-level tokenizer over the words of ``texts`` (``tokenizers``' WordLevel with a whitespace and
    punctuation pre-tokenizer), with ``<pad>``, ``<eos>`` and ``<unk>``: for synthetic grammars and configs that
    come without a tokenizer. Deterministic: the vocabulary is sorted."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    words = sorted({w for t in texts for w, _ in pre.pre_tokenize_str(t)})
    vocab = {tok: i for i, tok in enumerate(["<pad>", "<eos>", "<unk>", *words])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


@dataclass
class LoraSettings:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | None = None   # None: peft's default for the architecture


def apply_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """``model`` with LoRA adapters (``peft``); only the adapters train."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=settings.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


class Reference:
    """The reference policy's log-probabilities for a pair batch (see the module docstring for the modes).
    Held outside the learner's modules, so checkpoints carry only the trained weights."""

    def __init__(self, mode: str, *, policy: nn.Module | None = None, model: nn.Module | None = None,
                 cached: dict[str, Tensor] | None = None):
        if mode not in REFERENCE_MODES:
            raise ConfigError(describe("--reference", "mode", repr(mode), f"one of {list(REFERENCE_MODES)}"))
        self.mode, self.policy, self.model, self.cached = mode, policy, model, cached

    @classmethod
    def frozen_copy(cls, model: nn.Module) -> Reference:
        ref = copy.deepcopy(model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        return cls("copy", model=ref)

    @contextmanager
    def _evaluating(self) -> Iterator[nn.Module]:
        if self.mode == "copy":
            yield self.model
            return
        assert self.policy is not None
        adapters = self.policy.disable_adapter() if self.mode == "adapter" else nullcontext()
        was_training = self.policy.training
        self.policy.eval()  # the reference is deterministic: no dropout
        try:
            with adapters:
                yield self.policy
        finally:
            self.policy.train(was_training)

    @torch.no_grad()
    def token_logps(self, input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor, *,
                    keep_logits: bool = False) -> SequenceLogps:
        """Per-token reference log-probabilities (modes ``copy`` and ``adapter``)."""
        if self.mode not in ("copy", "adapter"):
            raise ConfigError(describe("--reference", "mode", repr(self.mode),
                                       "'copy' or 'adapter' (this objective needs per-token reference log-probs)"))
        with self._evaluating() as model:
            return completion_logps(model, input_ids, attention_mask, completion_mask, keep_logits=keep_logits)

    def sequence_logps(self, batch: Any) -> Tensor | None:
        """``[2B]`` summed reference log-probabilities of a pair batch (chosen rows, then rejected), or None."""
        if self.mode == "none":
            return None
        if self.mode == "cache":
            assert self.cached is not None
            idx = batch.index.to(self.cached["chosen"].device)
            return torch.cat([self.cached["chosen"][idx], self.cached["rejected"][idx]]).to(batch.input_ids.device)
        return self.token_logps(batch.input_ids, batch.attention_mask, batch.completion_mask).total


@torch.no_grad()
def precompute_reference(model: nn.Module, data: Any, pad_id: int, *, path: Path, fingerprint: str,
                         batch_size: int, device: torch.device, progress: bool = True) -> dict[str, Tensor]:
    """Summed log-probabilities of every pair's chosen and rejected completion under ``model`` (evaluation
    mode), stored at ``path`` with ``fingerprint``; an existing file with the same fingerprint is reused, one with
    another is refused (it belongs to another model or data). Returns ``{"chosen": [N], "rejected": [N]}``."""
    from pbrl.sequence.data import collate_pairs

    if path.is_file():
        stored = torch.load(path, map_location="cpu", weights_only=True)
        if stored.get("fingerprint") != fingerprint:
            raise DatasetError(describe(str(path), "fingerprint", stored.get("fingerprint"),
                                        f"{fingerprint} (cached for another model or data: use a new --out)"))
        return {"chosen": stored["chosen"], "rejected": stored["rejected"]}
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    n = len(data)
    # a bar on a terminal, a status line at least every 30 s off one (a long cache must not look hung)
    bar = Progress(n, desc="reference log-probs", unit="pair", enabled=progress)
    for start in range(0, n, batch_size):
        batch = collate_pairs(data, torch.arange(start, min(start + batch_size, n)), pad_id).to(device)
        total = completion_logps(model, batch.input_ids, batch.attention_mask, batch.completion_mask).total.cpu()
        c, r = total.chunk(2)
        chosen.append(c)
        rejected.append(r)
        bar.update(len(c))
    bar.close()
    model.train(was_training)
    result = {"chosen": torch.cat(chosen), "rejected": torch.cat(rejected)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    torch.save({"fingerprint": fingerprint, **result}, tmp)
    commit_atomic(tmp, path)
    return result


def save_model(model: nn.Module, tokenizer: Any, path: Path) -> None:
    """``save_pretrained`` of ``model`` and ``tokenizer`` into a temporary folder beside ``path``, renamed into place
    (LoRA adapters are merged first), so a reader never sees half a model."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    write_folder(path, write)
