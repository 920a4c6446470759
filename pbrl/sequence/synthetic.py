"""A small synthetic grammar with a known preference, for learning checks of sequence objectives (DESIGN §7.5).

A prompt is three distinct nouns and a colon (``"fox owl cat :"``); a completion is
``ADJ NOUN VERB ADJ NOUN .`` whose nouns come from the prompt. A tiny LM first learns the grammar (SFT); the
preference is for completions that contain the target adjective (``gold`` by default), which the grammar
produces in about 23 % of completions (two of eight adjectives per slot). Preference pairs compare two grammar
samples by their number of target words (ties dropped), and a share ``flip`` of the labels is reversed, as a
noisy annotator would; each row also carries ``preference``, the smoothed share of ``annotators`` simulated
annotators (each flipping with that rate) who chose the chosen completion.

Prompts are split by noun triple, so held-out prompts are triples never seen in training.
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pbrl.errors import ConfigError, describe
from pbrl.sequence.sampling import estimate_kl, sample_completions

NOUNS = ("ant", "bee", "cat", "dog", "eel", "fox", "gnu", "hen", "owl", "pig", "ram", "yak", "elk", "cod", "bat", "emu")
ADJECTIVES = ("gold", "red", "big", "old", "shy", "wet", "odd", "tiny")
VERBS = ("sees", "likes", "hugs", "finds", "hears", "calls")
TARGET = "gold"
PROMPTS = len(NOUNS) * (len(NOUNS) - 1) * (len(NOUNS) - 2)
"""How many distinct prompts (ordered noun triples) the grammar has: training and held-out prompts together."""

__all__ = ["GrammarTask", "BagOfWordsReward", "completion_is_valid", "completion_metrics",
           "evaluate_policy", "grammar_completion", "make_task",
           "tiny_gpt2_config"]


def tiny_gpt2_config(vocab_size: int, *, layers: int = 2, width: int = 64, heads: int = 2, positions: int = 32
                     ) -> dict[str, Any]:
    """A GPT-2 config small enough for CPU tests (about 0.1M parameters at the defaults), no dropout."""
    return {"model_type": "gpt2", "vocab_size": vocab_size, "n_layer": layers, "n_embd": width, "n_head": heads,
            "n_positions": positions, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
            "bos_token_id": 1, "eos_token_id": 1, "pad_token_id": 0}


def write_tiny_model(folder: str | Path, *, layers: int = 1, width: int = 32, seed: int = 0) -> dict[str, Any]:
    """A tiny GPT-2 with random weights (seeded) and the grammar's word tokenizer, saved into ``folder`` as
    Hugging Face writes them; returns the model's config (tests and CPU checks train it)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from pbrl.sequence.lm import word_tokenizer

    tok = word_tokenizer([" ".join(NOUNS + ADJECTIVES + VERBS) + " : ."])
    config = tiny_gpt2_config(len(tok), layers=layers, width=width)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return config


def grammar_completion(rng: random.Random, nouns: tuple[str, ...]) -> str:
    """One completion of the grammar for a prompt's ``nouns``, every choice uniform."""
    a, b = rng.sample(nouns, 2)
    return f" {rng.choice(ADJECTIVES)} {a} {rng.choice(VERBS)} {rng.choice(ADJECTIVES)} {b} ."


def completion_is_valid(prompt: str, completion: str) -> bool:
    """Whether ``completion`` follows the grammar for ``prompt``."""
    nouns = prompt.replace(":", " ").split()
    words = completion.split()
    return (len(words) == 6 and words[0] in ADJECTIVES and words[1] in nouns and words[2] in VERBS
            and words[3] in ADJECTIVES and words[4] in nouns and words[5] == ".")


def target_count(completion: str, target: str = TARGET) -> int:
    return completion.split().count(target)


@dataclass
class GrammarTask:
    train_prompts: list[str]
    heldout_prompts: list[str]
    sft: list[dict[str, str]]           # {"prompt", "completion"} grammar samples (the SFT data)
    pairs: list[dict[str, Any]]         # TRL-format preference rows

    def write(self, directory: str | Path) -> dict[str, Path]:
        """``sft.jsonl`` (prompt/chosen/rejected rows whose chosen is the SFT sample: ``seq train --method sft``
        reads chosen only), ``pairs.jsonl``, ``heldout.json``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        paths = {"sft": d / "sft.jsonl", "pairs": d / "pairs.jsonl", "heldout": d / "heldout.json"}
        with open(paths["sft"], "w") as f:
            for row in self.sft:
                f.write(json.dumps({"prompt": row["prompt"], "chosen": row["completion"],
                                    "rejected": row["completion"]}) + "\n")
        with open(paths["pairs"], "w") as f:
            for row in self.pairs:
                f.write(json.dumps(row) + "\n")
        paths["heldout"].write_text(json.dumps(self.heldout_prompts))
        return paths


def make_task(*, seed: int = 0, train_prompts: int = 300, heldout_prompts: int = 100, sft_per_prompt: int = 4,
              pairs_per_prompt: int = 4, flip: float = 0.2, annotators: int = 5, target: str = TARGET) -> GrammarTask:
    """Prompts, SFT samples and noisy preference pairs of the grammar (see the module docstring). Asking for more
    prompts than the grammar has (:data:`PROMPTS`) is refused, not silently cut."""
    if train_prompts + heldout_prompts > PROMPTS:
        raise ConfigError(describe("make_task", "train_prompts + heldout_prompts", train_prompts + heldout_prompts,
                                   f"at most {PROMPTS} (the grammar's distinct prompts)"))
    rng = random.Random(seed)
    triples = list(itertools.permutations(NOUNS, 3))
    rng.shuffle(triples)
    prompts = [" ".join(t) + " :" for t in triples[: train_prompts + heldout_prompts]]
    train, heldout = prompts[:train_prompts], prompts[train_prompts:]
    sft = [{"prompt": p, "completion": grammar_completion(rng, tuple(p[:-2].split()))}
           for p in train for _ in range(sft_per_prompt)]
    pairs = []
    for p in train:
        nouns = tuple(p[:-2].split())
        made = 0
        while made < pairs_per_prompt:
            a, b = grammar_completion(rng, nouns), grammar_completion(rng, nouns)
            ca, cb = target_count(a, target), target_count(b, target)
            if ca == cb:
                continue
            better, worse = (a, b) if ca > cb else (b, a)
            votes = sum(rng.random() >= flip for _ in range(annotators))  # annotators who chose `better`
            shown_better = rng.random() >= flip
            chosen, rejected = (better, worse) if shown_better else (worse, better)
            agree = votes if shown_better else annotators - votes
            pairs.append({"prompt": p, "chosen": chosen, "rejected": rejected,
                          "score_chosen": float(target_count(chosen, target)),
                          "score_rejected": float(target_count(rejected, target)),
                          "preference": (agree + 0.5) / (annotators + 1)})
            made += 1
    return GrammarTask(train, heldout, sft, pairs)


def distinct_n(completions: list[list[str]], n: int = 2) -> float:
    """Mean over prompts of the share of distinct word n-grams among the n-grams of that prompt's samples (the
    diversity of what the policy says for one input)."""
    shares = []
    for samples in completions:
        grams = [tuple(w[i:i + n]) for c in samples for w in [c.split()] for i in range(len(w) - n + 1)]
        if grams:
            shares.append(len(set(grams)) / len(grams))
    return sum(shares) / len(shares) if shares else 0.0


def completion_metrics(prompts: list[str], completions: list[list[str]], target: str = TARGET) -> dict[str, float]:
    """Scores of sampled ``completions`` (one list per prompt): the share that contain ``target`` (``preferred``),
    follow the grammar (``valid``), both (``preferred_valid``); distinct completions among all samples
    (``distinct_completions``) and distinct grammatical (prompt, completion) pairs among the grammatical samples
    (``distinct_valid``: broken completions do not count as diversity); :func:`distinct_n` with n = 2."""
    flat = [(p, c) for p, cs in zip(prompts, completions) for c in cs]
    preferred = [target_count(c, target) > 0 for _, c in flat]
    valid = [completion_is_valid(p, c) for p, c in flat]
    return {"preferred": sum(preferred) / len(flat), "valid": sum(valid) / len(flat),
            "preferred_valid": sum(a and b for a, b in zip(preferred, valid)) / len(flat),
            "distinct_completions": len({c for _, c in flat}) / len(flat),
            "distinct_valid": len({pc for pc, ok in zip(flat, valid) if ok}) / max(sum(valid), 1),
            "distinct_2": distinct_n(completions, 2)}


def evaluate_policy(model: nn.Module, tokenizer: Any, prompts: list[str], *, reference: nn.Module | None = None,
                    samples: int = 4, seed: int = 0, target: str = TARGET, device: torch.device | str = "cpu"
                    ) -> dict[str, float]:
    """:func:`completion_metrics` of ``samples`` completions per prompt sampled at temperature 1, and the KL to
    ``reference`` (when given)."""
    completions = sample_completions(model, tokenizer, prompts, samples=samples, seed=seed, device=device)
    result = completion_metrics(prompts, completions, target)
    if reference is not None:
        result["kl"] = estimate_kl(model, reference, tokenizer, prompts, completions, device)
    return result


class BagOfWordsReward:
    """A Bradley-Terry reward model over word counts, fitted by logistic regression (float64, L2 1e-3) to
    preference rows: ``r(x, y) = Σ_w θ_w · count_w(y)``. The RSO stage's reward model on the grammar: learned from
    the same noisy pairs the other methods see, not the hidden scorer."""

    def __init__(self, rows: list[dict[str, Any]], *, steps: int = 300):
        words = sorted({w for r in rows for side in ("chosen", "rejected") for w in r[side].split()})
        self.index = {w: i for i, w in enumerate(words)}
        diff = torch.stack([self._counts(r["chosen"]) - self._counts(r["rejected"]) for r in rows])
        theta = torch.zeros(len(words), dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([theta], max_iter=steps, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = torch.nn.functional.softplus(-(diff @ theta)).mean() + 1e-3 * theta.square().sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        self.theta = theta.detach()

    def _counts(self, text: str) -> torch.Tensor:
        c = torch.zeros(len(self.index), dtype=torch.float64)
        for w in text.split():
            if w in self.index:
                c[self.index[w]] += 1
        return c

    def __call__(self, prompt: str, completion: str) -> float:
        return float(self._counts(completion) @ self.theta)

    def weight(self, word: str) -> float:
        return float(self.theta[self.index[word]])
