"""Online policy optimisation of a causal LM with PPO on the shared loop: RTO's DPO token rewards, and PAMA's
closed-form combination of several objectives.

A rollout samples completions for a batch of prompts from the current policy, scores them, and turns the scores
into per-token rewards:

``r_t = [RTO] clip(β₁ (log π_dpo(y_t) − log π_ref(y_t)), ±c) − β₂ (log π_old(y_t) − log π_ref(y_t)) + [t = last] R_i(x, y)``

(:func:`pbrl.core.alignment.rto_token_rewards`; without a DPO guide, PPO on the sequence reward with the KL penalty),
one reward stream per objective ``R_i``. Advantages come from GAE against a value head per objective on the
policy's last hidden state; with several objectives each is whitened, clipped at 0 (PAMA's "Noon" PPO) and combined
by :func:`pbrl.core.alignment.pama_advantage`. The loop then takes ``epochs`` passes of minibatches over the rollout
with the clipped surrogate and a value loss. The rollout buffer is checkpointed with its generator (exact resume).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from pbrl.core.alignment import gae_advantages, pama_advantage, ppo_clip_loss, rto_token_rewards
from pbrl.core.training import LossOutput, OptimizerSpec
from pbrl.fields import param
from pbrl.sequence.data import pad_sequences
from pbrl.sequence.lm import completion_logps, next_token_logps, save_model

__all__ = ["OnlineConfig", "OnlinePolicy", "Rollouts", "pareto_stationarity"]

Reward = Callable[[str, str], float]


@dataclass
class OnlineConfig:
    prompts_per_rollout: int = param(64, ge=1)
    epochs: int = param(2, ge=1)              # PPO passes over each rollout
    minibatch: int = param(32, ge=1)          # completions per PPO step
    clip: float = param(0.2, gt=0)            # ε of the clipped surrogate
    gamma: float = param(1.0, ge=0, le=1)
    lam: float = param(0.95, ge=0, le=1)
    value_coef: float = param(0.5, ge=0)
    beta_kl: float = param(0.05, ge=0)        # β₂: the per-token KL penalty to the reference
    beta_dpo: float = param(0.05, ge=0)       # β₁: RTO's DPO token reward (needs a guide); the official script's 0.05
    dpo_clip: float = param(0.05, ge=0)       # c: clip of the scaled DPO token reward (0: none); official script: 0.05
    max_new_tokens: int = param(8, ge=1)
    temperature: float = param(1.0, gt=0)


class OnlinePolicy(nn.Module):
    """The policy LM with one value head per objective on its last hidden state."""

    def __init__(self, policy: nn.Module, width: int, objectives: int):
        super().__init__()
        self.policy = policy
        self.value_head = nn.Linear(width, objectives)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        self.rollouts: Rollouts | None = None
        self.cfg: OnlineConfig | None = None

    def optimizers(self) -> dict[str, OptimizerSpec]:
        return {"policy": OptimizerSpec([p for p in self.parameters() if p.requires_grad])}

    def forward_tokens(self, input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor
                       ) -> tuple[Tensor, Tensor]:
        """(``[N, T−1]`` log-probabilities of each next token, ``[N, T−1, K]`` values of the state before it)."""
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False)
        logps, _, _ = next_token_logps(out.logits, input_ids, completion_mask)
        return logps, self.value_head(out.hidden_states[-1][:, :-1].float())

    def loss(self, batch: dict[str, Tensor], step: int) -> LossOutput:
        assert self.cfg is not None
        mask = batch["completion_mask"][:, 1:].float()
        logps, values = self.forward_tokens(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        policy_loss = ppo_clip_loss(logps, batch["old_logps"], batch["advantages"], mask, clip=self.cfg.clip)
        value_error = ((values - batch["returns"]) ** 2 * mask.unsqueeze(-1)).sum() / (
            mask.sum().clamp(min=1) * values.shape[-1])
        metrics = {f"rollout/{k[5:]}": v.mean() for k, v in batch.items() if k.startswith("stat_")}
        return LossOutput(policy_loss + self.cfg.value_coef * value_error,
                          {"ppo/policy_loss": policy_loss.detach(), "ppo/value_error": value_error.detach(), **metrics})


class Rollouts:
    """Rollouts of ``learner``'s policy on ``prompts``, scored by ``rewards`` (one per objective), served as PPO
    minibatches; a new rollout is drawn when ``epochs`` passes are done. ``reference`` and ``guide`` are frozen LMs
    (the guide only for RTO)."""

    def __init__(self, learner: OnlinePolicy, tokenizer: Any, prompts: Sequence[str], rewards: Sequence[Reward],
                 cfg: OnlineConfig, *, reference: nn.Module, guide: nn.Module | None = None, seed: int = 0):
        self.learner, self.tokenizer, self.prompts = learner, tokenizer, list(prompts)
        self.rewards, self.cfg, self.reference, self.guide = list(rewards), cfg, reference, guide
        learner.rollouts, learner.cfg = self, cfg
        self.generator = torch.Generator().manual_seed(seed)
        self.buffer: dict[str, Tensor] | None = None
        self.order = torch.zeros(0, dtype=torch.long)
        self.position = 0
        self.rollouts = 0

    @torch.no_grad()
    def _collect(self) -> dict[str, Tensor]:
        cfg, tok = self.cfg, self.tokenizer
        policy = self.learner.policy
        pick = torch.randperm(len(self.prompts), generator=self.generator)[: cfg.prompts_per_rollout].tolist()
        seqs, texts, prompts = [], [], []
        was_training = policy.training
        policy.eval()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=self.generator)))
            for i in pick:
                prompt_ids = tok(self.prompts[i], add_special_tokens=False)["input_ids"]
                ids = torch.tensor([prompt_ids])
                gen = policy.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0,
                                      top_p=1.0, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)[0, len(prompt_ids):]
                completion = gen.tolist()
                if tok.eos_token_id in completion:
                    completion = completion[: completion.index(tok.eos_token_id) + 1]
                seqs.append((prompt_ids, completion))
                texts.append(" " + tok.decode([t for t in completion if t != tok.eos_token_id], skip_special_tokens=True))
                prompts.append(self.prompts[i])
        policy.train(was_training)
        ids, attn, comp = pad_sequences(seqs, tok.pad_token_id)
        batch = {"input_ids": ids, "attention_mask": attn, "completion_mask": comp}
        mask = batch["completion_mask"][:, 1:].float()
        old_logps, values = self.learner.forward_tokens(batch["input_ids"], batch["attention_mask"],
                                                        batch["completion_mask"])
        ref_logps = self._logps(self.reference, batch)
        policy_log_ratio = (old_logps - ref_logps) * mask
        dpo_log_ratio = (self._logps(self.guide, batch) - ref_logps) * mask if self.guide is not None else None
        scores = torch.tensor([[r(p, t) for r in self.rewards] for p, t in zip(prompts, texts)], dtype=torch.float32)
        advantages = []
        returns = []
        for k in range(len(self.rewards)):
            token_rewards = rto_token_rewards(dpo_log_ratio if dpo_log_ratio is not None else torch.zeros_like(mask),
                                              policy_log_ratio, scores[:, k], mask,
                                              beta_dpo=cfg.beta_dpo if dpo_log_ratio is not None else 0.0,
                                              beta_kl=cfg.beta_kl, clip=cfg.dpo_clip)
            adv, ret = gae_advantages(token_rewards, values[..., k], mask, gamma=cfg.gamma, lam=cfg.lam)
            valid = mask.bool()
            adv = (adv - adv[valid].mean()) / (adv[valid].std() + 1e-8) * mask
            advantages.append(adv)
            returns.append(ret)
        if len(advantages) == 1:
            combined = advantages[0]
        else:  # PAMA: Noon PPO's non-negative advantages, then the closed-form min-norm combination
            combined = pama_advantage(torch.stack([a.clamp(min=0) for a in advantages])) * mask
        stats = {f"stat_reward_{k}": scores[:, k].mean().expand(len(seqs)) for k in range(len(self.rewards))}
        stats["stat_kl"] = policy_log_ratio.sum(-1).mean().expand(len(seqs))
        return {**batch, "old_logps": old_logps, "advantages": combined, "returns": torch.stack(returns, -1),
                **stats}

    @torch.no_grad()
    def _logps(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        return completion_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"]).per_token

    def sample(self) -> dict[str, Tensor]:
        if self.buffer is None or self.position >= len(self.order):
            self.buffer = self._collect()
            n = self.buffer["input_ids"].shape[0]
            self.order = torch.cat([torch.randperm(n, generator=self.generator) for _ in range(self.cfg.epochs)])
            self.position = 0
            self.rollouts += 1
        idx = self.order[self.position:self.position + self.cfg.minibatch]
        self.position += self.cfg.minibatch
        return {k: v[idx] for k, v in self.buffer.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "buffer": self.buffer, "order": self.order,
                "position": self.position, "rollouts": self.rollouts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.buffer, self.order = state["buffer"], state["order"]
        self.position, self.rollouts = int(state["position"]), int(state["rollouts"])


def pareto_stationarity(policy: nn.Module, tokenizer: Any, prompts: Sequence[str], rewards: Sequence[Reward], *,
                        samples: int = 8, seed: int = 0, max_new_tokens: int = 8, split: bool = False,
                        reference: nn.Module | None = None, kl_beta: float = 0.0) -> dict[str, float]:
    """How far ``policy`` is from Pareto-stationary for two objectives: REINFORCE estimates (with a mean baseline)
    of each objective's gradient ``g_i`` over the policy's parameters, and MGDA's min-norm convex combination
    ``min_c ‖c g_1 + (1 − c) g_2‖`` (closed form for two) relative to ``max_i ‖g_i‖``: 0 at a Pareto-stationary
    point (the objectives' gradients oppose), 1 where they agree. ``split`` estimates each gradient on its own
    half of the samples, so that ``[r, −r]`` measures the estimate's noise floor instead of giving exactly 0.
    With ``reference`` and ``kl_beta`` > 0, each objective is the KL-regularised one PAMA's PPO optimises,
    ``E[r_i − β log π(y)/π_ref(y)]`` (the sampled sequence's log-ratio in the REINFORCE weight)."""
    if len(rewards) != 2:
        raise ValueError(f"pareto_stationarity: rewards: got {len(rewards)}, expected 2 objectives")
    from pbrl.sequence.sampling import sample_completions, sequence_logps

    completions = sample_completions(policy, tokenizer, list(prompts), samples=samples, seed=seed,
                                     max_new_tokens=max_new_tokens)
    flat_p = [p for p, cs in zip(prompts, completions) for _ in cs]
    flat_c = [c if c.strip() else " ." for cs in completions for c in cs]
    params = [p for p in policy.parameters() if p.requires_grad]
    grads = []
    half = len(flat_p) // 2
    for i, reward in enumerate(rewards):
        part = slice(i * half, (i + 1) * half) if split else slice(None)
        ps, cs = flat_p[part], flat_c[part]
        r = torch.tensor([reward(p, c) for p, c in zip(ps, cs)])
        with torch.enable_grad():
            logps = sequence_logps(policy, tokenizer, ps, cs, "cpu", grad=True)
            if reference is not None and kl_beta > 0:  # the KL term in the REINFORCE weight, no gradient of its own
                with torch.no_grad():
                    log_ratio = logps.detach() - sequence_logps(reference, tokenizer, ps, cs, "cpu")
                r = r - kl_beta * log_ratio.to(r.dtype)
            objective = ((r - r.mean()) * logps).mean()
            g = torch.autograd.grad(objective, params)
        grads.append(torch.cat([x.flatten() for x in g]))
    g1, g2 = grads
    diff = g1 - g2
    c = float(torch.clamp((g2 - g1) @ g2 / diff.dot(diff).clamp(min=1e-20), 0.0, 1.0))
    combined = c * g1 + (1 - c) * g2
    scale = max(float(g1.norm()), float(g2.norm()), 1e-20)
    return {"min_norm_ratio": float(combined.norm()) / scale, "weight_1": c, "cosine": float(
        g1 @ g2 / (g1.norm() * g2.norm()).clamp(min=1e-20)), "grad_norm_1": float(g1.norm()),
        "grad_norm_2": float(g2.norm())}


def train_online(model_dir: str, prompts: Sequence[str], rewards: Sequence[Reward], cfg: OnlineConfig, out: str, *,
                 steps: int, seed: int = 0, lr: float = 1e-4, guide_dir: str | None = None, progress: bool = False,
                 stop_at: int | None = None) -> nn.Module:
    """PPO (RTO with ``guide_dir``, PAMA with several ``rewards``) from the model folder ``model_dir`` (also the
    reference) into ``out``; resumes there (``stop_at``: end this call at that step, with a checkpoint); saves
    ``out/model`` at the end. Returns the policy as it stands."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pbrl.sequence.lm import Reference
    from pbrl.train.loop import TrainConfig, run_directory, run_loop

    out_path = Path(out)
    with run_directory(out_path):  # locked; a failed start leaves out as it was
        torch.manual_seed(seed)
        policy = AutoModelForCausalLM.from_pretrained(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        reference = Reference.frozen_copy(policy).model
        guide = None
        if guide_dir is not None:
            guide = AutoModelForCausalLM.from_pretrained(guide_dir).eval()
            for p in guide.parameters():
                p.requires_grad_(False)
        learner = OnlinePolicy(policy, policy.config.hidden_size, len(rewards))
        rollouts = Rollouts(learner, tokenizer, prompts, rewards, cfg, reference=reference, guide=guide, seed=seed)
        tc = TrainConfig(steps=steps, batch_size=cfg.minibatch, lr=lr, weight_decay=0.0, seed=seed, log_every=10,
                         checkpoint_every=max(steps // 4, 1), device="cpu")
        result = run_loop(learner, rollouts.sample, tc, out_path, device=torch.device("cpu"),
                          stateful={"rollouts": rollouts}, progress=progress, desc="ppo", stop_at=stop_at)
        if result.finished:
            save_model(policy, tokenizer, out_path / "model")
        return policy
