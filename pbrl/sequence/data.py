"""Pairwise preference data for language models, in TRL's format.

A row holds ``prompt``, ``chosen`` and ``rejected`` (strings) and optionally ``score_chosen``,
``score_rejected`` (numbers: a reward model's or annotators' scores), ``group`` (the annotator group or user
a row comes from), ``weight`` (a per-pair loss weight >= 0), ``preference`` (the empirical probability in
(0, 1) that ``chosen`` is preferred, e.g. the share of annotators who chose it; iREPO regresses on it) and
``chosen_logps``, ``rejected_logps`` (numbers <= 0: the summed log-probabilities of the completions, EOS included, under
the policy that generated them, the column names of IS-DAA's official code; its importance weights divide by them).

Rows come from JSON Lines, Parquet, a ``datasets.Dataset`` or a list of dicts. Every row is checked before any
is used: a malformed one raises one :class:`~pbrl.errors.DatasetError` naming the file and line (or row), the
field, what was found and what was expected, so nothing half-loaded is trained on.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import pbrl.train.loop as train_loop  # the data-parallel share of a global batch (rank_share)
from pbrl.errors import DatasetError, describe
from pbrl.fields import short_repr
from pbrl.io import sha256_file

__all__ = ["IndexSampler", "PairBatch", "PairSampler", "PreferencePair", "TokenizedPairs", "collate_pairs",
           "data_file", "load_pairs", "pad_sequences", "tokenize_pairs"]

TEXT_FIELDS = ("prompt", "chosen", "rejected")


def data_file(role: str, path: str | os.PathLike) -> dict[str, tuple[Path, str]]:
    """``{role: (path, sha256)}``, the form :func:`pbrl.train.loop.run_directory` checks and records in
    ``data.json``."""
    return {role: (Path(path), sha256_file(path))}


@dataclass(frozen=True)
class PreferencePair:
    """One checked row; ``where`` names its file and line for later errors (tokenisation, length)."""

    prompt: str
    chosen: str
    rejected: str
    where: str
    score_chosen: float | None = None
    score_rejected: float | None = None
    group: str | None = None
    weight: float = 1.0
    preference: float | None = None
    chosen_logps: float | None = None
    rejected_logps: float | None = None


def _number(row: Mapping[str, Any], name: str, where: str, *, low: float | None = None, high: float | None = None,
            open_interval: bool = False) -> float | None:
    value = row.get(name)
    if value is None:
        return None
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if open_interval else value >= low
    if ok and high is not None:
        ok = value < high if open_interval else value <= high
    if not ok:
        bounds = "a finite number" + (f" in ({low:g}, {high:g})" if open_interval else f" >= {low:g}" if low is not None
                                      else f" <= {high:g}" if high is not None else "")
        raise DatasetError(describe(where, f"field '{name}'", short_repr(value), bounds))
    return float(value)


def check_row(row: Any, where: str) -> PreferencePair:
    """A raw row (a mapping) as a :class:`PreferencePair`, or one line naming what is wrong."""
    if not isinstance(row, Mapping):
        raise DatasetError(describe(where, "row", type(row).__name__, "a JSON object with prompt, chosen, rejected"))
    for name in TEXT_FIELDS:
        if name not in row:
            raise DatasetError(describe(where, f"field '{name}'", "missing",
                                        "a string (rows need prompt, chosen and rejected, TRL's pairwise format)"))
        value = row[name]
        if not isinstance(value, str):
            raise DatasetError(describe(where, f"field '{name}'", f"{short_repr(value)} ({type(value).__name__})",
                                        "a string (conversational rows are not supported yet: render them first)"))
        if name != "prompt" and not value.strip():
            raise DatasetError(describe(where, f"field '{name}'", repr(value), "a non-empty completion"))
    group = row.get("group")
    if group is not None and not isinstance(group, str | int):
        raise DatasetError(describe(where, "field 'group'", short_repr(group), "a string or an integer"))
    weight = _number(row, "weight", where, low=0.0)
    return PreferencePair(row["prompt"], row["chosen"], row["rejected"], where,
                          score_chosen=_number(row, "score_chosen", where),
                          score_rejected=_number(row, "score_rejected", where),
                          group=None if group is None else str(group),
                          weight=1.0 if weight is None else weight,
                          preference=_number(row, "preference", where, low=0.0, high=1.0, open_interval=True),
                          chosen_logps=_number(row, "chosen_logps", where, high=0.0),
                          rejected_logps=_number(row, "rejected_logps", where, high=0.0))


def _jsonl_rows(path: Path) -> Iterable[tuple[Any, str]]:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DatasetError(describe(where, "bytes", f"{raw[exc.start:exc.start + 1]!r} at column {exc.start + 1}",
                                            "UTF-8 text")) from None
            if not line.strip():
                continue
            try:
                yield json.loads(line), where
            except json.JSONDecodeError as exc:
                raise DatasetError(describe(where, "JSON", f"{exc.msg} at column {exc.colno}", "one JSON object per line")
                                   ) from None


def load_pairs(source: str | os.PathLike | Sequence[Mapping[str, Any]] | Any) -> list[PreferencePair]:
    """Every row of ``source`` (a ``.jsonl`` / ``.json`` lines file, a ``.parquet`` file, a ``datasets.Dataset``
    or a list of dicts), checked; raises :class:`DatasetError` on the first malformed row, or on no rows."""
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise DatasetError(describe(str(path), "file", "missing", "a JSON Lines or Parquet file of preference pairs"))
        if path.suffix in (".jsonl", ".json", ".ndjson"):
            rows: Iterable[tuple[Any, str]] = _jsonl_rows(path)
        elif path.suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(path)
            except Exception as exc:  # an arrow error names the damage; the file is not Parquet we can read
                raise DatasetError(describe(str(path), "Parquet", str(exc).splitlines()[0][:120], "a Parquet file")) from None
            rows = ((r, f"{path}:row {i + 1}") for i, r in enumerate(table.to_pylist()))
        else:
            raise DatasetError(describe(str(path), "suffix", repr(path.suffix), "'.jsonl', '.json' or '.parquet'"))
        name = str(path)
    else:
        name = type(source).__name__
        rows = ((r, f"{name}:row {i + 1}") for i, r in enumerate(source))
    pairs = [check_row(row, where) for row, where in rows]
    if not pairs:
        raise DatasetError(describe(name, "rows", 0, "at least one preference pair"))
    return pairs


@dataclass
class TokenizedPairs:
    """Token ids of every pair: ``prompt[i] + chosen[i]`` and ``prompt[i] + rejected[i]`` are the two sequences
    (completions end with EOS). Per-pair tensors are ``[N]``; absent scores, preferences and data-policy log-probs
    are NaN, an absent group is -1 (``groups`` lists the names of the others)."""

    prompt: list[list[int]]
    chosen: list[list[int]]
    rejected: list[list[int]]
    weight: Tensor
    score_chosen: Tensor
    score_rejected: Tensor
    preference: Tensor
    group: Tensor
    groups: list[str]
    chosen_logps: Tensor
    rejected_logps: Tensor
    truncated: int       # completions cut at max_length (the end dropped, TRL's keep_start)

    def __len__(self) -> int:
        return len(self.prompt)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def tokenize_pairs(pairs: Sequence[PreferencePair], tokenizer: Any, *, max_length: int) -> TokenizedPairs:
    """Tokenise as TRL's DPO trainer does: ``ids(prompt)`` and ``ids(prompt + completion)``, the completion being
    what follows their common prefix, then EOS. A prompt that leaves no room for a completion token within
    ``max_length``, or a completion that tokenises to nothing, raises one line naming its row; a completion past
    ``max_length`` is cut at its end (counted in ``truncated``)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DatasetError(describe("tokenizer", "eos_token", None, "a tokenizer with an end-of-sequence token"))
    prompts, chosen, rejected, truncated = [], [], [], 0

    def ids(texts: list[str]) -> list[list[int]]:  # one call per column: a fast tokenizer encodes the batch at once
        return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    columns = zip(ids([p.prompt for p in pairs]), ids([p.prompt + p.chosen for p in pairs]),
                  ids([p.prompt + p.rejected for p in pairs]))
    for pair, (p_ids, pc, pr) in zip(pairs, columns):
        start = min(_common_prefix(p_ids, pc), _common_prefix(p_ids, pr))
        if start >= max_length:
            raise DatasetError(describe(pair.where, "field 'prompt'", f"{start} tokens",
                                        f"fewer than max_length = {max_length} (room for the completion)"))
        sides = []
        for name, ids in (("chosen", pc), ("rejected", pr)):
            completion = ids[start:]
            if not completion:
                raise DatasetError(describe(pair.where, f"field '{name}'", repr(getattr(pair, name)),
                                            "a completion of at least one token"))
            completion = completion + [eos]
            room = max_length - start
            if len(completion) > room:
                completion = completion[:room]
                truncated += 1
            sides.append(completion)
        prompts.append(p_ids[:start])
        chosen.append(sides[0])
        rejected.append(sides[1])
    names = sorted({p.group for p in pairs if p.group is not None})
    index = {g: i for i, g in enumerate(names)}
    nan = float("nan")
    return TokenizedPairs(
        prompts, chosen, rejected,
        weight=torch.tensor([p.weight for p in pairs], dtype=torch.float32),
        score_chosen=torch.tensor([nan if p.score_chosen is None else p.score_chosen for p in pairs]),
        score_rejected=torch.tensor([nan if p.score_rejected is None else p.score_rejected for p in pairs]),
        preference=torch.tensor([nan if p.preference is None else p.preference for p in pairs]),
        group=torch.tensor([-1 if p.group is None else index[p.group] for p in pairs], dtype=torch.long),
        groups=names, truncated=truncated,
        chosen_logps=torch.tensor([nan if p.chosen_logps is None else p.chosen_logps for p in pairs]),
        rejected_logps=torch.tensor([nan if p.rejected_logps is None else p.rejected_logps for p in pairs]))


@dataclass
class PairBatch:
    """B pairs as one right-padded batch of 2B sequences: rows ``[:B]`` are prompt + chosen, ``[B:]`` prompt +
    rejected (TRL's layout, one forward for both).

    - ``input_ids``, ``attention_mask``, ``completion_mask``: ``[2B, T]`` (completion tokens 1, prompt and pad 0);
    - ``index``: ``[B]`` the pairs' rows in the dataset; ``weight``, ``score_*``, ``preference``, ``group``,
      ``chosen_logps``, ``rejected_logps``: ``[B]``.
    """

    input_ids: Tensor
    attention_mask: Tensor
    completion_mask: Tensor
    index: Tensor
    weight: Tensor
    score_chosen: Tensor
    score_rejected: Tensor
    preference: Tensor
    group: Tensor
    chosen_logps: Tensor
    rejected_logps: Tensor

    @property
    def pairs(self) -> int:
        return self.index.numel()

    def to(self, device: torch.device) -> PairBatch:
        return PairBatch(**{k: v.to(device, non_blocking=True) for k, v in vars(self).items()})


def pad_sequences(seqs: Sequence[tuple[list[int], list[int]]], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """(prompt ids, completion ids) pairs as right-padded ``input_ids``, ``attention_mask``, ``completion_mask``
    ``[N, T]`` (T: the longest prompt + completion)."""
    width = max(len(p) + len(c) for p, c in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    comp = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, (p, c) in enumerate(seqs):
        n = len(p) + len(c)
        ids[r, :n] = torch.tensor(p + c)
        attn[r, :n] = 1
        comp[r, len(p):n] = 1
    return ids, attn, comp


def collate_pairs(data: TokenizedPairs, index: Tensor, pad_id: int) -> PairBatch:
    """The pairs ``index`` ``[B]`` of ``data`` as a :class:`PairBatch` (CPU tensors)."""
    rows = index.tolist()
    ids, attn, comp = pad_sequences([(data.prompt[i], data.chosen[i]) for i in rows]
                                    + [(data.prompt[i], data.rejected[i]) for i in rows], pad_id)
    return PairBatch(ids, attn, comp, index.clone(), data.weight[index], data.score_chosen[index],
                     data.score_rejected[index], data.preference[index], data.group[index],
                     data.chosen_logps[index], data.rejected_logps[index])


class IndexSampler:
    """Batches of row indices without replacement within an epoch (a fresh permutation each epoch), from its own
    seeded generator; its state (generator, permutation, position) is checkpointed for an exact resume."""

    def __init__(self, rows: int, batch_size: int, *, seed: int):
        self.rows, self.batch_size = rows, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(rows, generator=self.generator)
        self.position = 0

    def next_indices(self) -> Tensor:
        picked = []
        need = self.batch_size
        while need:
            if self.position >= len(self.order):
                self.order = torch.randperm(self.rows, generator=self.generator)
                self.position = 0
            take = self.order[self.position:self.position + need]
            self.position += take.numel()
            need -= take.numel()
            picked.append(take)
        return torch.cat(picked)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "order": self.order.clone(), "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.order = state["order"].clone()
        self.position = int(state["position"])


class PairSampler(IndexSampler):
    """:class:`IndexSampler` over tokenised pairs, returning padded :class:`PairBatch` es on ``device``. Under DDP
    ``batch_size`` is the global batch: every rank draws the same indices and collates its own share of them
    (:func:`pbrl.train.loop.rank_share`), so the state checkpointed is the single-process sampler's."""

    def __init__(self, data: TokenizedPairs, batch_size: int, *, seed: int, pad_id: int, device: torch.device):
        super().__init__(len(data), batch_size, seed=seed)
        self.data, self.pad_id, self.device = data, pad_id, device

    def sample(self) -> PairBatch:
        # the share is looked up on the module at each call: the DDP test swaps in the known-bad one
        return collate_pairs(self.data, train_loop.rank_share(self.next_indices()), self.pad_id).to(self.device)
