"""Sampling from a causal LM, and what is measured on samples: completions at a temperature, the Monte-Carlo KL
to a reference, and RSO's preference pairs (statistical rejection sampling, :func:`pbrl.core.alignment.rso_accept`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from pbrl.core.alignment import rso_accept

__all__ = ["estimate_kl", "rso_pairs", "sample_completions", "sequence_logps"]


@torch.no_grad()
def sample_completions(model: nn.Module, tokenizer: Any, prompts: list[str], *, samples: int = 1,
                       max_new_tokens: int = 8, temperature: float = 1.0, seed: int = 0,
                       device: torch.device | str = "cpu") -> list[list[str]]:
    """``samples`` completions per prompt, sampled at ``temperature`` (stopping at EOS). Seeded, no global RNG use."""
    was_training = model.training
    model.eval()
    out: list[list[str]] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for prompt in prompts:
            ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]] * samples, device=device)
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0,
                                 top_p=1.0, temperature=temperature, max_new_tokens=max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            texts = []
            for row in gen[:, ids.shape[1]:]:
                tokens = row.tolist()
                if tokenizer.eos_token_id in tokens:
                    tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
                texts.append(" " + tokenizer.decode(tokens, skip_special_tokens=True))
            out.append(texts)
    model.train(was_training)
    return out


def sequence_logps(model: nn.Module, tokenizer: Any, prompts: list[str], completions: list[str],
                   device: torch.device | str, max_length: int = 256, grad: bool = False) -> Tensor:
    """``[N]`` summed log-probabilities of ``completions`` (EOS appended) after ``prompts`` under ``model`` in
    evaluation mode (``grad``: keep the graph, e.g. for a policy-gradient estimate)."""
    from pbrl.sequence.data import PreferencePair, pad_sequences, tokenize_pairs
    from pbrl.sequence.lm import completion_logps

    data = tokenize_pairs([PreferencePair(p, c, c, "sample") for p, c in zip(prompts, completions)], tokenizer,
                          max_length=max_length)
    ids, attn, comp = (t.to(torch.device(device)) for t in pad_sequences(list(zip(data.prompt, data.chosen)),
                                                                         tokenizer.pad_token_id))
    was_training = model.training
    model.eval()
    try:
        with torch.set_grad_enabled(grad):
            total = completion_logps(model, ids, attn, comp).total
    finally:
        model.train(was_training)
    return total if grad else total.cpu()


def estimate_kl(model: nn.Module, reference: nn.Module, tokenizer: Any, prompts: list[str], completions: list[list[str]],
                device: torch.device | str = "cpu") -> float:
    """Monte-Carlo KL(π ‖ π_ref) in nats per completion: the mean of ``log π(y) − log π_ref(y)`` over completions
    ``y`` sampled from π (``completions``, per prompt), EOS included."""
    flat_p = [p for p, cs in zip(prompts, completions) for _ in cs]
    flat_c = [c if c.strip() else " ." for cs in completions for c in cs]
    return float((sequence_logps(model, tokenizer, flat_p, flat_c, device)
                  - sequence_logps(reference, tokenizer, flat_p, flat_c, device)).mean())


def rso_pairs(model: nn.Module, tokenizer: Any, prompts: list[str], reward: Callable[[str, str], float], *,
              candidates: int = 16, accept: int = 8, beta: float = 0.5, seed: int = 0, max_new_tokens: int = 8,
              device: torch.device | str = "cpu") -> list[dict[str, Any]]:
    """RSO's pairs (Liu et al., 2024, Algorithm 1 and "first-round-rank"): per prompt, ``candidates`` samples from
    ``model`` (π_SFT) scored by ``reward``; ``accept`` of them kept by statistical rejection sampling at ``beta``
    (they follow π_SFT · exp(r/β) as candidates grow); consecutive accepted samples paired, the higher reward
    chosen (ties dropped). Rows in TRL's format with the rewards as ``score_chosen`` / ``score_rejected``."""
    generator = torch.Generator().manual_seed(seed)
    rows: list[dict[str, Any]] = []
    samples = sample_completions(model, tokenizer, prompts, samples=candidates, seed=seed,
                                 max_new_tokens=max_new_tokens, device=device)
    for prompt, texts in zip(prompts, samples):
        texts = [t if t.strip() else " ." for t in texts]
        scores = torch.tensor([reward(prompt, t) for t in texts], dtype=torch.float64)
        kept = rso_accept(scores, beta=beta, accept=accept, generator=generator).tolist()
        for a, b in zip(kept[0::2], kept[1::2]):
            if scores[a] == scores[b]:
                continue
            w, l_ = (a, b) if scores[a] > scores[b] else (b, a)
            rows.append({"prompt": prompt, "chosen": texts[w], "rejected": texts[l_],
                         "score_chosen": float(scores[w]), "score_rejected": float(scores[l_])})
    return rows
