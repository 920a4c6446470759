"""Diffusion and flow preference objectives on the synthetic shapes task (issue 17): learning checks and each
method's own claim.

    OMP_NUM_THREADS=1 python scripts/bench/diffusion.py [--out runs/diff-bench] [--seeds 0 1 2] [--steps 600]
        [--stages learn]

A small conditional U-Net (pbrl's ``SmallUNet``, widths 16/32) is first trained on both shapes at the training
prompts (SFT: it becomes the reference, ~50 % crosses), once as an ε-model and once as a rectified flow. Each method
then trains from it at equal steps on the same noisy pairs (the cross chosen, 20 % of labels reversed). Everything
is measured on the 16 held-out prompts, 16 samples each (DDIM / Euler, 20 steps): ``preferred`` (share of samples
the exact judge calls a cross), ``valid`` (a clean shape where the prompt put it), ``diversity`` (mean pairwise RMS
distance among a prompt's samples, as a ratio to the reference's).

Stages:
  learn   SFT on the winners, Diffusion-DPO, ABC, self-supervised DPO (shuffle losers), Diffusion-DRO (ε); SFT on the
          winners and Flow-DPO (flow); per seed
  sweep   seed 0: β, rate, length, time range, the SFT anchor; SPO, DRO, GradSPO
  pairs   seed 0: SFT, Diffusion-DPO, Flow-DPO on other pair sets (clean labels, one position, 10× the pairs)
  position  the learning check on an area-neutral preference (the higher of two shapes of one kind)
  scale   seed 0, flow: a 4× wider denoiser, its own reference, SFT on the winners and Flow-DPO
  reward, spro, rpo   each remaining method's own claim (spro: self-play with Diffusion-DPO and with SFT on the
          rounds' winners, ε)
  spro_flow  self-play with Flow-DPO and with SFT on the rounds' winners (flow): the learning check on own samples
  spro_ablation  the offline pairs in self-play's rounds; self-play with 20 % of its pairs reversed
  spro_beta  seed 0: self-play with Diffusion-DPO at β 1,000 and 20,000 (ε), 1,000 and 300 (v)
  spro_v  self-play with Diffusion-DPO and SFT on a v-prediction model (its own reference)
  dro_clean  seed 0: Diffusion-DRO and SFT with clean winners as the expert
  retest  issue 37: Diffusion-DPO and ABC on their own samples under the official recipe's shape (32 samples per
          prompt: hundreds of pairs per round, 5 epochs, a warm-up, β 5,000 and 50,000), swapped- and random-label
          controls, SFT on the same winners; cross / square / invalid reported apart, the check on the preferred
          share among valid samples, and every model's drift of x̂₀ at the first sampling step from the reference

The protocol every stage shares (the task, the references, a run trained once, the measure) is
:mod:`pbrl.sequence.shapes_bench`. Runs are reused when finished (resumable). Writes ``OUT/results.json`` and prints
markdown tables.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pbrl.core.diffusion import lambda_harmonic_reward
from pbrl.sequence.diffusion import NoiseSchedule, load_denoiser, sample
from pbrl.sequence.diffusion_reward import (
    ImageRewardModel,
    load_reward_model,
    reward_guidance,
    reward_scores,
    save_reward_model,
    train_reward_model,
)
from pbrl.sequence.diffusion_train import DiffusionRunConfig, load_image_pairs, train_diffusion, write_image_pairs
from pbrl.sequence.self_play import select_checkpoint, self_play
from pbrl.sequence.shapes import (
    KINDS,
    PREFERRED,
    classify_shapes,
    heldout_prompts,
    image_diversity,
    prompt_condition,
    render_shapes,
    shape_reward,
    shape_row,
    train_prompts,
)
from pbrl.sequence.shapes_bench import (
    BATCH,
    LR,
    SAMPLES,
    SFT_BATCH,
    SFT_LR,
    SFT_STEPS,
    heldout_samples,
    make_task,
    measure,
    measure_net,
    pair_set,
    reference,
    references,
    train,
    x0_drift,
)
from pbrl.stages import ms, new_axes, print_table, read_curve, record, run_stages, save_figure
from pbrl.train.loop import TrainConfig

NRG_SCALES = (0.02, 0.1, 2.0)  # Flow-NRG's guidance scales
RWR_TAU = 1.0     # Flow-RWR's temperature
SPRO_ROUNDS = 4
SPRO_LR = 2e-5    # at 1e-4, 200 Diffusion-DPO steps per round on ≤ 18 pairs collapsed the model by round 3 (measured)


def step_aware_model(out: Path, task: dict[str, Path]) -> Path:
    """SPO's step-aware preference model: a noisy (time-conditioned) reward model fitted to the noisy pairs, under
    the ε-model's schedule (Bradley-Terry, winner and loser on one noise and time)."""
    folder = out / "task" / "step-aware"
    if not (folder / "model" / "weights.pt").is_file():
        pairs = load_image_pairs(task["pairs"], "diffusion_dpo")
        model = ImageRewardModel(1, 2, heads=1, width=32, noisy=True)
        train_reward_model(model, pairs.cond, pairs.chosen, pairs.rejected, torch.ones(len(pairs)), folder,
                           TrainConfig(steps=2000, batch_size=64, lr=1e-3, weight_decay=0.0, log_every=100,
                                       checkpoint_every=2000))
        save_reward_model(model, folder / "model")
    return folder / "model"


LEARN = [  # (label, method, prediction, fields)
    ("SFT on chosen (ε)", "diffusion_sft", "epsilon", {}),
    ("Diffusion-DPO", "diffusion_dpo", "epsilon", {}),
    ("ABC", "abc", "epsilon", {}),
    ("self-supervised DPO (shuffle)", "sudo", "epsilon", {}),
    ("Diffusion-DRO", "dro", "epsilon", {}),
    ("SPO", "spo", "epsilon", {"sample_steps": 10, "spo_start": 2}),
    ("SFT on chosen (flow)", "diffusion_sft", "flow", {}),
    ("Flow-DPO", "flow_dpo", "flow", {}),
]


def stage_learn(out: Path, seeds: list[int], steps: int) -> dict[str, Any]:
    task = make_task(out)
    refs = references(out, task)
    preference = step_aware_model(out, task)
    results: dict[str, dict[str, list[float]]] = {}
    for prediction, ref in refs.items():
        m = measure(ref, prediction, 0)
        results[f"reference ({prediction})"] = {k: [v] * len(seeds) for k, v in m.items()}
        print(f"reference {prediction}: {m}", flush=True)
    for seed in seeds:
        for label, method, prediction, fields in LEARN:
            extra = {"preference_model": str(preference)} if method == "spo" else {}
            model_dir, seconds = train(refs[prediction], task["pairs"], out / f"seed{seed}" / f"{method}-{prediction}",
                                       method, prediction=prediction, steps=steps, seed=seed, **fields, **extra)
            m = measure(model_dir, prediction, seed)
            m["diversity_ratio"] = m["diversity"] / results[f"reference ({prediction})"]["diversity"][0]
            m["train_s"] = seconds
            record(results, label, m)
            print(f"seed {seed} {label}: {m}", flush=True)
    rows = [[label, *(ms(r[k]) for k in ("preferred", "valid", "preferred_valid")),
             ms(r.get("diversity_ratio", [1.0] * len(seeds))), ms(r.get("train_s", [0.0]))]
            for label, r in results.items()]
    print_table(f"learning check ({steps} steps from the reference, batch {BATCH} pairs, {len(seeds)} seeds)",
                ["method", "preferred", "valid", "preferred & valid", "diversity / reference's", "train s"], rows)
    for label, r in results.items():
        print(f"{label}: preferred per seed {[round(v, 3) for v in r['preferred']]}")
    return results


def reward_pairs(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Pairs of reference-like images (random kinds and positions at training prompts) with two labels each, ties
    included (VideoReward's setting): ``cross`` (a cross beats a square; same kind: tie) and ``top`` (the shape
    higher in the image wins; rows within 1 pixel: tie)."""
    g = torch.Generator().manual_seed(seed)
    prompts = [train_prompts()[int(i)] for i in torch.randint(len(train_prompts()), (n,), generator=g)]
    kinds = [[KINDS[int(i)] for i in torch.randint(2, (n,), generator=g)] for _ in range(2)]
    a, b = (render_shapes(k, prompts, generator=g) for k in kinds)
    cross = torch.tensor([(x == PREFERRED) - (y == PREFERRED) for x, y in zip(*kinds)], dtype=torch.float32)
    dr = shape_row(b) - shape_row(a)   # > 0: a higher
    top = torch.where(dr.abs() < 1, 0.5, (dr > 0).float())
    return {"cond": prompt_condition(prompts), "a": a, "b": b, "label": torch.stack([0.5 + cross / 2, top], 1)}


def fit_reward(folder: Path, pairs: dict[str, torch.Tensor], heads: list[int], *, noisy: bool, prediction: str,
               steps: int = 2000) -> ImageRewardModel:
    if not (folder / "model" / "weights.pt").is_file():
        model = ImageRewardModel(1, 2, heads=len(heads), width=32, noisy=noisy, prediction=prediction)
        train_reward_model(model, pairs["cond"], pairs["a"], pairs["b"], pairs["label"][:, heads], folder,
                           TrainConfig(steps=steps, batch_size=64, lr=1e-3, weight_decay=0.0, log_every=100,
                                       checkpoint_every=steps))
        save_reward_model(model, folder / "model")
    return load_reward_model(folder / "model")


def measure_rewards(images: torch.Tensor, prompts: list, clean: ImageRewardModel, weights: list[float]) -> dict:
    kinds, valid, _ = classify_shapes(images, prompts)
    r = reward_scores(clean, images, prompt_condition(prompts))
    return {"reward": float((r @ torch.tensor(weights)).mean()), "r_cross": float(r[:, 0].mean()),
            "r_top": float(r[:, 1].mean()), "cross": sum(k == PREFERRED for k in kinds) / len(kinds),
            "valid": float(valid.float().mean()), "row": float(shape_row(images).mean()),
            "diversity": image_diversity(images, len(heldout_prompts()))}


def stage_reward(out: Path, seeds: list[int], steps: int) -> dict[str, Any]:
    """VideoReward-style two-head reward with ties; Flow-RWR and Flow-NRG with several weighted rewards."""
    task = make_task(out)
    refs = references(out, task)
    folder = out / "reward"
    train_pairs, test_pairs = reward_pairs(4000, 0), reward_pairs(1000, 1)
    clean = fit_reward(folder / "clean", train_pairs, [0, 1], noisy=False, prediction="flow")
    ra = reward_scores(clean, test_pairs["a"], test_pairs["cond"])
    rb = reward_scores(clean, test_pairs["b"], test_pairs["cond"])
    accuracy = {}
    for h, name in enumerate(("cross", "top")):
        label = test_pairs["label"][:, h]
        decided = label != 0.5
        accuracy[name] = float(((ra[:, h] > rb[:, h]) == (label > 0.5))[decided].float().mean())
        accuracy[f"{name}_tie_gap"] = float((ra[:, h] - rb[:, h])[~decided].abs().mean())
        accuracy[f"{name}_decided_gap"] = float((ra[:, h] - rb[:, h])[decided].abs().mean())
    print(f"clean two-head reward on held-out pairs: {accuracy}", flush=True)
    noisy = [fit_reward(folder / f"noisy-{name}", train_pairs, [h], noisy=True, prediction="flow", steps=3000)
             for h, name in enumerate(("cross", "top"))]
    weights = [1.0, 0.5]
    # Flow-RWR's data: the SFT images with both clean rewards
    sft = load_image_pairs(task["sft"], "diffusion_sft")
    rwr_data = folder / "rwr.h5"
    if not rwr_data.is_file():
        write_image_pairs(rwr_data, cond=sft.cond, chosen=sft.chosen, reward=reward_scores(clean, sft.chosen, sft.cond))
    prompts = [p for p in heldout_prompts() for _ in range(SAMPLES)]
    cond = prompt_condition(prompts)
    schedule = NoiseSchedule("flow")
    results: dict[str, dict[str, list[float]]] = {}
    for seed in seeds:
        noise = torch.randn(len(prompts), 1, 16, 16, generator=torch.Generator().manual_seed(10_000 + seed))
        net, _ = load_denoiser(refs["flow"])
        runs = {"reference (flow)": sample(net, schedule, cond, (1, 16, 16), steps=20, noise=noise)}
        for scale in NRG_SCALES:
            for name, w in (("(1, 0.5)", weights), ("(1, 0)", [1.0, 0.0]), ("(0, 1)", [0.0, 1.0])):
                guide = reward_guidance(noisy, cond, weights=w, scale=scale, schedule=schedule)
                runs[f"Flow-NRG, scale {scale:g}, weights {name}"] = sample(net, schedule, cond, (1, 16, 16), steps=20,
                                                                              noise=noise, guidance=guide)
        model_dir, _ = train(refs["flow"], rwr_data, out / f"seed{seed}" / "flow_rwr", "flow_rwr", prediction="flow",
                             steps=steps, seed=seed, reward_weights=weights, rwr_temperature=RWR_TAU)
        rwr, _ = load_denoiser(model_dir)
        runs["Flow-RWR, weights (1, 0.5)"] = sample(rwr, schedule, cond, (1, 16, 16), steps=20, noise=noise)
        for label, images in runs.items():
            m = measure_rewards(images, prompts, clean, weights)
            record(results, label, m)
            print(f"seed {seed} {label}: {m}", flush=True)
    keys = ("reward", "r_cross", "r_top", "cross", "valid", "row", "diversity")
    print_table(f"Flow-RWR ({steps} steps, τ {RWR_TAU}) and Flow-NRG on the flow reference; "
                f"held-out prompts, {len(seeds)} seeds", ["samples", "weighted reward (1, 0.5)", "r_cross", "r_top",
                                                        "cross share", "valid", "mean row", "diversity"],
                [[label, *(ms(r[k]) for k in keys)] for label, r in results.items()])
    return {"reward_accuracy": accuracy, **results}


def spro(out: Path, seeds: list[int], prediction: str, method: str, flip_rate: float = 0.0,
         **method_fields: Any) -> dict[str, Any]:
    """SPRO-style self-play from the ``prediction`` reference with the exact judge as the reward (1 valid, 2 valid
    cross): 4 rounds of 8 samples per training prompt (up to 4 pairs each) and 200 steps of ``method`` at lr 2e-5
    (``diffusion_sft``: on the pairs' winners alone, RAFT-style); the reward of each round's own samples, and the
    held-out measurement of each round's model."""
    task = make_task(out)
    start = reference(out, task, prediction)
    suffix = "" if prediction == "epsilon" else f"-{prediction}"
    suffix += "-sft" if method == "diffusion_sft" else ""
    suffix += f"-flip{flip_rate:g}" if flip_rate else ""
    suffix += "".join(f"-{k}{v:g}" for k, v in method_fields.items())
    results: dict[str, Any] = {}
    for seed in seeds:
        cfg = DiffusionRunConfig(model=str(start), data=str(task["sft"]), prediction=prediction)
        cfg.method.name = method
        for key, value in method_fields.items():
            setattr(cfg.method, key, value)
        cfg.train.steps, cfg.train.batch_size, cfg.train.lr, cfg.train.seed = 200, BATCH, SPRO_LR, seed
        cfg.train.log_every, cfg.train.checkpoint_every = 50, 200
        folder = out / f"seed{seed}" / f"spro{suffix}"
        rounds = self_play(cfg, shape_reward, folder, rounds=SPRO_ROUNDS, samples=8, flip_rate=flip_rate)
        models = [rounds[0].model] + [r.result for r in rounds]
        held = [measure(Path(m), prediction, seed) for m in models]
        results[f"seed{seed}"] = {"train_reward": [r.reward_mean for r in rounds],
                                  "heldout": held, "pairs": [r.pairs for r in rounds]}
        print(f"seed {seed}: own-sample reward by round {[round(r.reward_mean, 3) for r in rounds]}; held-out "
              f"preferred&valid by model {[round(h['preferred_valid'], 3) for h in held]}", flush=True)
    rows = []
    for r in range(SPRO_ROUNDS + 1):
        own = [results[f"seed{s}"]["train_reward"][r] for s in seeds] if r < SPRO_ROUNDS else None
        rows.append([str(r), ms(own) if own else "–",
                     *(ms([results[f"seed{s}"]["heldout"][r][k] for s in seeds])
                       for k in ("preferred", "valid", "preferred_valid", "diversity"))])
    shown = ", ".join(f"{k} {v:g}" for k, v in {**method_fields, "reversed": flip_rate}.items() if v)
    print_table(f"self-play (SPRO-style), {SPRO_ROUNDS} rounds × 200 {method} steps{', ' + shown if shown else ''}, "
                f"{len(seeds)} seeds",
                ["model after round", "own-sample reward (of 2)", "held-out preferred", "valid", "preferred & valid",
                 "diversity"], rows)
    return results


def spro_against_sft(out: Path, seeds: list[int], prediction: str) -> dict[str, Any]:
    """Self-play with the DPO objective of ``prediction`` (Flow-DPO for flow, Diffusion-DPO otherwise), and with SFT
    on the same loop's winners: the learning check on the model's own samples."""
    method = "flow_dpo" if prediction == "flow" else "diffusion_dpo"
    return {method: spro(out, seeds, prediction, method), "diffusion_sft": spro(out, seeds, prediction, "diffusion_sft")}


def stage_spro(out: Path, seeds: list[int], steps: int) -> dict[str, Any]:
    """Self-play on the ε reference."""
    return spro_against_sft(out, seeds, "epsilon")


def stage_spro_ablation(out: Path, seeds: list[int], steps: int) -> dict[str, Any]:
    """Why self-play moves Flow-DPO and the offline pairs do not: (1) the offline pairs in self-play's schedule (4
    rounds × 200 steps, each round's reference the model it starts from), (2) self-play with 20 % of its pairs
    reversed, as the offline pairs are, for Flow-DPO and for SFT on the winners."""
    task = make_task(out)
    refs = references(out, task)
    results: dict[str, Any] = {"offline, rounds": {}}
    for seed in seeds:
        model, held = refs["flow"], [measure(refs["flow"], "flow", seed)]
        for r in range(SPRO_ROUNDS):
            model, _ = train(model, task["pairs"], out / f"seed{seed}" / "offline-rounds" / f"round_{r}", "flow_dpo",
                             prediction="flow", steps=200, seed=seed + r, lr=SPRO_LR)
            held.append(measure(model, "flow", seed))
        results["offline, rounds"][f"seed{seed}"] = held
        print(f"seed {seed}: offline pairs in rounds, held-out preferred&valid by model "
              f"{[round(h['preferred_valid'], 3) for h in held]}", flush=True)
    print_table(f"the task's offline pairs (20 % reversed), Flow-DPO in {SPRO_ROUNDS} rounds × 200 steps, lr "
                f"{SPRO_LR:g}, the reference refreshed each round; {len(seeds)} seeds",
                ["model after round", "held-out preferred", "valid", "preferred & valid", "diversity"],
                [[str(r), *(ms([results["offline, rounds"][f"seed{s}"][r][k] for s in seeds])
                            for k in ("preferred", "valid", "preferred_valid", "diversity"))]
                 for r in range(SPRO_ROUNDS + 1)])
    results["self-play, 20 % reversed"] = {m: spro(out, seeds, "flow", m, flip_rate=0.2)
                                           for m in ("flow_dpo", "diffusion_sft")}
    return results


def stage_spro_v(out: Path, seeds: list[int], steps: int) -> dict[str, Any]:
    """Self-play on a v-prediction reference (v = √ᾱ ε − √(1−ᾱ) x₀; the ε-model's schedule and sampler): is
    Diffusion-DPO's failure the ε parameterisation?"""
    return spro_against_sft(out, seeds, "v")


def stage_spro_beta(out: Path, seeds: list[int], steps: int) -> dict[str, Any]:
    """Self-play with Diffusion-DPO at other β than the official 5,000: ε at 1,000 and 20,000 (the offline sweep's
    range), v at 1,000 and 300."""
    return {**{f"epsilon, beta {b:g}": spro(out, seeds, "epsilon", "diffusion_dpo", beta=b) for b in (1000.0, 20000.0)},
            **{f"v, beta {b:g}": spro(out, seeds, "v", "diffusion_dpo", beta=b) for b in (1000.0, 300.0)}}


def stage_spro_flow(out: Path, seeds: list[int], steps: int) -> dict[str, Any]:
    """Self-play on the rectified-flow reference."""
    return spro_against_sft(out, seeds, "flow")


SWEEP = [  # (method, prediction, lr, steps, fields): seed-0 runs behind the settings docs/benchmarks.md cites
    ("diffusion_sft", "epsilon", 1e-4, 600, {}),
    *(("diffusion_dpo", "epsilon", 1e-4, 600, {"beta": b}) for b in (100.0, 300.0, 1000.0, 5000.0, 20000.0)),
    ("diffusion_dpo", "epsilon", 1e-3, 600, {"beta": 5000.0}), ("diffusion_dpo", "epsilon", 2e-5, 600, {"beta": 5000.0}),
    ("diffusion_dpo", "epsilon", 1e-4, 3000, {"beta": 5000.0}),
    ("diffusion_dpo", "epsilon", 1e-4, 600, {"beta": 5000.0, "t_min": 0.6}),
    ("diffusion_sft", "flow", 1e-4, 600, {}),
    *(("flow_dpo", "flow", 1e-4, 600, {"beta": b}) for b in (30.0, 100.0, 1000.0)),
    ("flow_dpo", "flow", 1e-3, 600, {"beta": 100.0}), ("flow_dpo", "flow", 2e-5, 600, {"beta": 100.0}),
    ("flow_dpo", "flow", 1e-4, 2000, {"beta": 100.0}), ("flow_dpo", "flow", 1e-4, 600, {"beta": 100.0, "t_min": 0.6}),
    ("spo", "epsilon", 1e-4, 600, {}), ("spo", "epsilon", 2e-5, 600, {}),
    ("dro", "epsilon", 1e-4, 600, {}), ("dro", "epsilon", 2e-5, 600, {}), ("dro", "epsilon", 2e-5, 2000, {}),
    ("gradspo", "epsilon", 2e-5, 600, {}),
    # an SFT anchor on the winners beside the DPO term (λ · e_θ^w; DPO's gradient on e_θ^w is of order β/4)
    *(("diffusion_dpo", "epsilon", 1e-4, 600, {"beta": 5000.0, "sft_weight": w}) for w in (2500.0, 10000.0)),
    *(("flow_dpo", "flow", 1e-4, 600, {"beta": 100.0, "sft_weight": w}) for w in (50.0, 200.0)),
]


def stage_sweep(out: Path, seeds: list[int], steps: int) -> dict[str, Any]:
    """Seed 0: β, learning rate, length and the trained time range of Diffusion-DPO and Flow-DPO; SPO and DRO at two
    learning rates, GradSPO (EMA 0.9) at one; SFT on the winners at 600 steps for comparison."""
    task = make_task(out)
    refs = references(out, task)
    preference = step_aware_model(out, task)
    results, rows = {}, []
    for method, prediction, lr, n, fields in SWEEP:
        fields = dict(fields)
        t_min = fields.pop("t_min", 0.0)
        ema = 0.9 if method == "gradspo" else 0.0  # GradSPO samples with the EMA and guides towards it (official 0.9)
        if method in ("spo", "gradspo"):
            fields.update(sample_steps=10, spo_start=2, preference_model=str(preference))
        shown = {k: v for k, v in fields.items() if k not in ("sample_steps", "spo_start", "preference_model")}
        name = f"{method}-{prediction}-lr{lr:g}-{n}-" + "-".join(f"{k}{v:g}" for k, v in shown.items()) + \
            (f"-tmin{t_min:g}" if t_min else "")
        model_dir, _ = train(refs[prediction], task["pairs"], out / "seed0" / "sweep" / name, method,
                             prediction=prediction, steps=n, seed=0, lr=lr, t_min=t_min, ema_decay=ema, **fields)
        m = measure(model_dir, prediction, 0)
        results[name] = m
        names = {"beta": "β", "sft_weight": "+ SFT λ"}
        settings = ", ".join([f"{names.get(k, k)} {v:g}" for k, v in shown.items()] + ([f"t ≥ {t_min:g}"] if t_min else []))
        rows.append([method, prediction, f"{lr:g}", str(n), settings, f"{m['preferred']:.3f}", f"{m['valid']:.3f}",
                     f"{m['diversity']:.3f}"])
        print(rows[-1], flush=True)
    print_table("sweep (seed 0, batch 16 pairs; held-out prompts, 16 samples each)",
                ["method", "model", "lr", "steps", "settings", "preferred", "valid", "diversity"], rows)
    return results


PAIR_SETS = {  # name: (pairs per training prompt, flip rate, same position)
    "task (900, 20 % reversed)": (50, 0.2, False),
    "clean labels (900, none reversed)": (50, 0.0, False),
    "same position (900, 20 % reversed)": (50, 0.2, True),
    "10x the pairs (9,000, 20 % reversed)": (500, 0.2, False),
}


def stage_pairs(out: Path, seeds: list[int], steps: int) -> dict[str, Any]:
    """Seed 0: SFT on the winners, Diffusion-DPO and Flow-DPO at their official β on other pair sets than the task's
    (clean labels; the two images at one position, so they differ only in the class; ten times the pairs): is the
    failure of the learn stage the labels' noise, the nuisance of position, or too few pairs?"""
    task = make_task(out)
    refs = references(out, task)
    results, rows = {}, []
    for label, (per_prompt, flip, same) in PAIR_SETS.items():
        data = pair_set(out, per_prompt, flip, same)
        for method, prediction in (("diffusion_sft", "epsilon"), ("diffusion_dpo", "epsilon"),
                                   ("diffusion_sft", "flow"), ("flow_dpo", "flow")):
            model_dir, _ = train(refs[prediction], data, out / "seed0" / "pairs" / f"{data.stem}-{method}-{prediction}",
                                 method, prediction=prediction, steps=steps, seed=0)
            m = measure(model_dir, prediction, 0)
            results[f"{label} {method} {prediction}"] = m
            rows.append([label, method, prediction, f"{m['preferred']:.3f}", f"{m['valid']:.3f}",
                         f"{m['diversity']:.3f}"])
            print(rows[-1], flush=True)
    print_table(f"pair sets (seed 0, {steps} steps, batch {BATCH} pairs, lr {LR:g}; held-out prompts)",
                ["pairs", "method", "model", "preferred", "valid", "diversity"], rows)
    return results


def position_pairs(per_prompt: int, flip: float, seed: int) -> dict[str, torch.Tensor]:
    """An area-neutral preference: two shapes of one kind (random) at the same training prompt, the higher one
    chosen (rows within 1 pixel: dropped), ``flip`` of the labels reversed. Winner and loser light the same number of
    pixels, so dimming or shrinking cannot separate them."""
    g = torch.Generator().manual_seed(seed)
    prompts = [p for p in train_prompts() for _ in range(per_prompt)]
    kinds = [KINDS[int(i)] for i in torch.randint(2, (len(prompts),), generator=g)]
    a, b = render_shapes(kinds, prompts, generator=g), render_shapes(kinds, prompts, generator=g)
    dr = shape_row(b) - shape_row(a)                 # > 0: a is higher
    keep = dr.abs() >= 1
    a_wins = (dr > 0) != (torch.rand(len(prompts), generator=g) < flip)
    chosen = torch.where(a_wins[:, None, None, None], a, b)[keep]
    rejected = torch.where(a_wins[:, None, None, None], b, a)[keep]
    return {"cond": prompt_condition(prompts)[keep], "chosen": chosen, "rejected": rejected}


def stage_position(out: Path, seeds: list[int], steps: int) -> dict[str, Any]:
    """The learning check on an area-neutral preference (the higher of two shapes of one kind; 20 % reversed): SFT on
    the winners, Diffusion-DPO and Flow-DPO at their official β; ``top`` = the share of held-out samples whose lit
    pixels' mean row is above the middle (the reference's ≈ 0.5)."""
    task = make_task(out)
    refs = references(out, task)
    data = out / "task" / "pairs-position.h5"
    if not data.is_file():
        write_image_pairs(data, **position_pairs(50, 0.2, seed=3))
    results: dict[str, dict[str, list[float]]] = {}

    def judge(model_dir: Path, prediction: str, seed: int) -> dict[str, float]:
        images, prompts = heldout_samples(load_denoiser(model_dir)[0], prediction, seed)
        _, valid, _ = classify_shapes(images, prompts)
        top = shape_row(images) < (16 - 1) / 2
        return {"top": float(top.float().mean()), "valid": float(valid.float().mean()),
                "top_valid": float((top & valid).float().mean()),
                "diversity": image_diversity(images, len(heldout_prompts()))}

    for prediction, ref in refs.items():
        m = judge(ref, prediction, 0)
        results[f"reference ({prediction})"] = {k: [v] * len(seeds) for k, v in m.items()}
    for seed in seeds:
        for label, method, prediction in (("SFT on chosen (ε)", "diffusion_sft", "epsilon"),
                                          ("Diffusion-DPO", "diffusion_dpo", "epsilon"),
                                          ("SFT on chosen (flow)", "diffusion_sft", "flow"),
                                          ("Flow-DPO", "flow_dpo", "flow")):
            model_dir, seconds = train(refs[prediction], data, out / f"seed{seed}" / "position" / f"{method}-{prediction}",
                                       method, prediction=prediction, steps=steps, seed=seed)
            m = judge(model_dir, prediction, seed)
            m["train_s"] = seconds
            record(results, label, m)
            print(f"seed {seed} {label}: {m}", flush=True)
    print_table(f"area-neutral preference: the higher shape ({steps} steps, batch {BATCH} pairs, {len(seeds)} seeds)",
                ["method", "top", "valid", "top & valid", "diversity", "train s"],
                [[label, *(ms(r[k]) for k in ("top", "valid", "top_valid", "diversity")), ms(r.get("train_s", [0.0]))]
                 for label, r in results.items()])
    for label, r in results.items():
        print(f"{label}: top per seed {[round(v, 3) for v in r['top']]}")
    return results


def stage_scale(out: Path, seeds: list[int], steps: int) -> dict[str, Any]:
    """Seed 0, flow only: does a 4× wider denoiser (widths 32/64) change the ranking of SFT on the winners and
    Flow-DPO? Its own reference is trained as the small one's (3,000 steps, batch 64, lr 1e-3)."""
    task = make_task(out)
    config = out / "task" / "unet-wide.json"
    if not config.is_file():
        config.write_text(json.dumps({**json.loads(task["unet"].read_text()), "widths": [32, 64]}, indent=2))
    ref, ref_s = train(config, task["sft"], out / "reference-wide" / "flow", "diffusion_sft", prediction="flow",
                       steps=SFT_STEPS, seed=0, lr=SFT_LR, batch=SFT_BATCH)
    runs = [("reference (flow, wide)", ref, ref_s),
            *((label, *train(ref, task["pairs"], out / "seed0" / "scale" / method, method, prediction="flow",
                             steps=steps, seed=0))
              for label, method in (("SFT on chosen (flow, wide)", "diffusion_sft"), ("Flow-DPO (wide)", "flow_dpo")))]
    results, rows = {}, []
    for label, model, seconds in runs:
        m = measure(model, "flow", 0)
        results[label] = {**m, "train_s": seconds}
        rows.append([label, f"{m['preferred']:.3f}", f"{m['valid']:.3f}", f"{m['diversity']:.3f}", f"{seconds:.0f}"])
        print(rows[-1], flush=True)
    net, _ = load_denoiser(ref)
    params = sum(p.numel() for p in net.parameters())
    print_table(f"a 4x wider denoiser ({params:,} parameters; seed 0, {steps} steps, batch {BATCH} pairs)",
                ["model", "preferred", "valid", "diversity", "train s"], rows)
    return results


def stage_dro_clean(out: Path, seeds: list[int], steps: int) -> dict[str, Any]:
    """Diffusion-DRO's data term is the winners alone (the expert): with the task's reversed labels they are 80 %
    crosses, the distribution its ranking drives the model towards. Seed 0: DRO and SFT on the clean-label pairs'
    winners (all crosses), at DRO's best rate (2e-5) and at 1e-4."""
    task = make_task(out)
    refs = references(out, task)
    data = pair_set(out, 50, 0.0)
    results, rows = {}, []
    for method in ("diffusion_sft", "dro"):
        for lr in (2e-5, 1e-4):
            model_dir, seconds = train(refs["epsilon"], data, out / "seed0" / "dro-clean" / f"{method}-lr{lr:g}", method,
                                       prediction="epsilon", steps=steps, seed=0, lr=lr)
            m = measure(model_dir, "epsilon", 0)
            results[f"{method} lr {lr:g}"] = {**m, "train_s": seconds}
            rows.append([method, f"{lr:g}", f"{m['preferred']:.3f}", f"{m['valid']:.3f}", f"{m['diversity']:.3f}"])
            print(rows[-1], flush=True)
    print_table(f"clean winners as the expert (seed 0, {steps} steps, batch {BATCH})",
                ["method", "lr", "preferred", "valid", "diversity"], rows)
    return results


def prompt_pairs(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Pairs for a prompt-following scorer: an image drawn for prompt p beats one drawn for another prompt, both
    judged under p."""
    g = torch.Generator().manual_seed(seed)
    pool = train_prompts()
    own = [pool[int(i)] for i in torch.randint(len(pool), (n,), generator=g)]
    other = [pool[(pool.index(p) + 1 + int(torch.randint(len(pool) - 1, (), generator=g))) % len(pool)] for p in own]
    kinds = [KINDS[int(i)] for i in torch.randint(2, (n,), generator=g)]
    return {"cond": prompt_condition(own), "a": render_shapes(kinds, own, generator=g),
            "b": render_shapes(kinds, other, generator=g), "label": torch.ones(n, 1)}


def stage_rpo(out: Path, seeds: list[int], steps: int) -> dict[str, Any]:
    """RPO with the λ-Harmonic reward and its early stop. Subject = the cross: 2 crosses per training prompt are the
    reference images, 2 reference samples per prompt the generated ones; both similarity scorers are small models
    trained here (image similarity: σ of the cross head of the reward stage's clean model; text similarity: σ of a
    prompt-following Bradley-Terry model). Labels ~ Bernoulli(σ(R_a − R_b)), R = λ-Harmonic (λ 0.5). RPO trains
    1,500 steps with a checkpoint every 100; the early stop keeps the checkpoint whose samples at the training
    prompts score the highest mean λ-Harmonic reward; the judge then scores every checkpoint on held-out prompts."""
    task = make_task(out)
    refs = references(out, task)
    folder = out / "rpo"
    clean = fit_reward(out / "reward" / "clean", reward_pairs(4000, 0), [0, 1], noisy=False, prediction="flow")
    follow = fit_reward(folder / "prompt-scorer", prompt_pairs(4000, 2), [0], noisy=False, prediction="flow")

    def harmonic(images: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        i2i = torch.sigmoid(reward_scores(clean, images, cond)[:, 0])
        t2i = torch.sigmoid(reward_scores(follow, images, cond)[:, 0])
        return lambda_harmonic_reward(i2i, t2i, lam=0.5)

    results: dict[str, Any] = {}
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        prompts = [p for p in train_prompts() for _ in range(2)]
        cond = prompt_condition(prompts)
        subject = render_shapes(["cross"] * len(prompts), prompts, generator=g)
        net, _ = load_denoiser(refs["epsilon"])
        generated = sample(net, NoiseSchedule("epsilon"), cond, (1, 16, 16), steps=20, generator=g)
        label = torch.bernoulli(torch.sigmoid(harmonic(subject, cond) - harmonic(generated, cond)), generator=g)
        data = folder / f"seed{seed}-pairs.h5"
        write_image_pairs(data, cond=cond, chosen=subject, rejected=generated, label=label)
        run = folder / f"seed{seed}"
        cfg = DiffusionRunConfig(model=str(refs["epsilon"]), data=str(data))
        cfg.method.name = "rpo"
        cfg.train.steps, cfg.train.batch_size, cfg.train.lr, cfg.train.seed = 1500, BATCH, LR, seed
        cfg.train.checkpoint_every, cfg.train.keep_checkpoints, cfg.train.log_every = 100, 100, 50
        if not (run / "metrics.json").is_file():
            train_diffusion(cfg, run, progress=False)
        val_prompts = [p for p in train_prompts() for _ in range(4)]
        val_cond = prompt_condition(val_prompts)

        def score(policy: torch.nn.Module, val_cond: torch.Tensor = val_cond, seed: int = seed) -> float:
            images = sample(policy, NoiseSchedule("epsilon"), val_cond, (1, 16, 16), steps=20,
                            generator=torch.Generator().manual_seed(500 + seed))
            return float(harmonic(images, val_cond).mean())

        best, scores = select_checkpoint(run, refs["epsilon"], score)
        judged = {}
        for step in sorted(scores):
            state = torch.load(run / "checkpoints" / f"step_{step:08d}.pt", map_location="cpu", weights_only=False)
            net.load_state_dict({k[len("policy."):]: v for k, v in state["agent"].items() if k.startswith("policy.")})
            judged[step] = measure_net(net, "epsilon", seed)
        results[f"seed{seed}"] = {"best": best, "harmonic": scores, "judged": judged, "label_mean": float(label.mean())}
        top = max(judged, key=lambda k: judged[k]["preferred_valid"])
        print(f"seed {seed}: early stop at {best} (λ-Harmonic {scores[best]:.3f}, held-out preferred&valid "
              f"{judged[best]['preferred_valid']:.3f}); final {judged[max(judged)]['preferred_valid']:.3f}; best by "
              f"the judge {top} ({judged[top]['preferred_valid']:.3f})", flush=True)
    steps_seen = sorted(results[f"seed{seeds[0]}"]["harmonic"])
    rows = [[str(k), ms([results[f"seed{s}"]["harmonic"][k] for s in seeds]),
             *(ms([results[f"seed{s}"]["judged"][k][m] for s in seeds]) for m in ("preferred", "valid",
                                                                                   "preferred_valid"))]
            for k in steps_seen]
    print_table(f"RPO checkpoints ({len(seeds)} seeds): the λ-Harmonic reward at the training prompts (the early "
                "stop's score) and the judge on held-out prompts", ["step", "λ-Harmonic", "preferred", "valid",
                                                                    "preferred & valid"], rows)
    return results


RETEST_SAMPLES = 32   # samples per training prompt and round: up to 16 pairs per prompt, about 250-290 per round
RETEST_EPOCHS = 5     # passes over each round's pairs (the official Diffusion-DPO recipe: about 5 over 851k pairs)
RETEST_WARMUP = 20    # linear warm-up steps of each round (the official: 500 of about 2,000)
RETEST = [  # (label, method, labels, β); SFT on the winners ignores β
    ("SFT on the winners", "diffusion_sft", "reward", 0.0),
    ("Diffusion-DPO, β 5,000", "diffusion_dpo", "reward", 5000.0),
    ("Diffusion-DPO, β 50,000", "diffusion_dpo", "reward", 50000.0),
    ("Diffusion-DPO, β 50,000, swapped labels", "diffusion_dpo", "swapped", 50000.0),
    ("Diffusion-DPO, β 50,000, random labels", "diffusion_dpo", "random", 50000.0),
    ("ABC, β 5,000", "abc", "reward", 5000.0),
    ("ABC, β 50,000", "abc", "reward", 50000.0),
]
RETEST_KEYS = ("cross", "square", "invalid", "preferred_among_valid", "valid", "diversity", "drift")


def retest_run(out: Path, seed: int, method: str, labels: str, beta: float) -> dict[str, Any]:
    """One self-play loop of the retest (ε reference, shape reward, :data:`RETEST_SAMPLES` samples per prompt,
    :data:`RETEST_EPOCHS` epochs per round at lr 2e-5 after :data:`RETEST_WARMUP` warm-up steps, batch 16): every
    round's model measured on the held-out prompts, with its x̂₀ drift from the reference."""
    task = make_task(out)
    start = reference(out, task, "epsilon")
    ref_net, _ = load_denoiser(start)
    cfg = DiffusionRunConfig(model=str(start), data=str(task["sft"]), prediction="epsilon",
                             warmup_steps=RETEST_WARMUP)
    cfg.method.name = method
    if method != "diffusion_sft":
        cfg.method.beta = beta
    cfg.train.batch_size, cfg.train.lr, cfg.train.seed = BATCH, SPRO_LR, seed
    cfg.train.log_every, cfg.train.checkpoint_every = 50, 1000
    tag = f"{method}-{labels}" + (f"-beta{beta:g}" if method != "diffusion_sft" else "")
    rounds = self_play(cfg, shape_reward, out / f"seed{seed}" / "retest" / tag, rounds=SPRO_ROUNDS,
                       samples=RETEST_SAMPLES, labels=labels, epochs=RETEST_EPOCHS)
    held = []
    for model in [rounds[0].model] + [r.result for r in rounds]:
        net, _ = load_denoiser(model)
        held.append({**measure_net(net, "epsilon", seed), "drift": x0_drift(net, ref_net, "epsilon", seed)})
    return {"own_reward": [r.reward_mean for r in rounds], "pairs": [r.pairs for r in rounds],
            "steps": [r.steps for r in rounds], "heldout": held}


def plot_retest(results: dict[str, Any], path: Path) -> None:
    """Preferred among valid against the drift of x̂₀, one line per objective through its rounds (mean of seeds)."""
    fig, ax = new_axes(6, 4)
    for label, per_seed in results.items():
        if label == "at equal drift":
            continue
        runs = list(per_seed.values())
        rounds = range(len(runs[0]["heldout"]))
        drift = [sum(r["heldout"][k]["drift"] for r in runs) / len(runs) for k in rounds]
        share = [sum(r["heldout"][k]["preferred_among_valid"] for r in runs) / len(runs) for k in rounds]
        ax.plot(drift, share, "o-", label=label, lw=2.5 if label == "SFT on the winners" else 1.2)
    ax.set_xlabel("drift of x̂₀ from the reference at the first sampling step")
    ax.set_ylabel("preferred (cross) among valid samples")
    ax.set_title("self-play rounds, held-out prompts (issue 37's retest)", fontsize=9)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def stage_retest(out: Path, seeds: list[int], steps: int) -> dict[str, Any]:
    """Issue 37's retest of the self-play verdicts under the official recipe's shape (:func:`retest_run` for every
    row of :data:`RETEST`), with SFT read at each objective's final drift."""
    results: dict[str, Any] = {}
    for label, method, labels, beta in RETEST:
        results[label] = {f"seed{s}": retest_run(out, s, method, labels, beta) for s in seeds}
        last = [results[label][f"seed{s}"]["heldout"][-1] for s in seeds]
        print(f"{label}: after {SPRO_ROUNDS} rounds preferred among valid "
              f"{[round(h['preferred_among_valid'], 3) for h in last]}, valid {[round(h['valid'], 3) for h in last]}, "
              f"drift {[round(h['drift'], 4) for h in last]}", flush=True)
    for label in results:
        rows = []
        for r in range(SPRO_ROUNDS + 1):
            own = [results[label][f"seed{s}"]["own_reward"][r] for s in seeds] if r < SPRO_ROUNDS else None
            pairs = [results[label][f"seed{s}"]["pairs"][r] for s in seeds] if r < SPRO_ROUNDS else None
            rows.append([str(r), ms(own) if own else "–", ms(pairs) if pairs else "–",
                         *(ms([results[label][f"seed{s}"]["heldout"][r][k] for s in seeds]) for k in RETEST_KEYS)])
        print_table(f"{label}: self-play, {SPRO_ROUNDS} rounds × {RETEST_EPOCHS} epochs of each round's pairs "
                    f"({RETEST_SAMPLES} samples per prompt), lr {SPRO_LR:g}, warm-up {RETEST_WARMUP}; {len(seeds)} seeds",
                    ["model after round", "own-sample reward (of 2)", "pairs", *RETEST_KEYS], rows)
    sft = results["SFT on the winners"]
    rows = []
    for label in results:
        if label == "SFT on the winners":
            continue
        final, sft_at = [], []
        for s in seeds:
            held = results[label][f"seed{s}"]["heldout"]
            curve = [(h["drift"], h["preferred_among_valid"]) for h in sft[f"seed{s}"]["heldout"]]
            final.append(held[-1]["preferred_among_valid"])
            sft_at.append(read_curve(curve, held[-1]["drift"]))
        drift = [results[label][f"seed{s}"]["heldout"][-1]["drift"] for s in seeds]
        known = [v for v in sft_at if v is not None]
        rows.append([label, ms(drift), ms(final), ms(known) if known else "beyond SFT's range",
                     f"{len(known)} of {len(seeds)}"])
    results["at equal drift"] = rows
    plot_retest(results, out / "retest.png")
    print_table("after the last round: each objective against SFT on the winners read at the same x̂₀ drift",
                ["objective", "drift of x̂₀ (t = 999)", "preferred among valid", "SFT at that drift",
                 "seeds within SFT's range"], rows)
    return results


STAGES = {"learn": stage_learn, "sweep": stage_sweep, "pairs": stage_pairs, "position": stage_position,
          "scale": stage_scale, "dro_clean": stage_dro_clean, "reward": stage_reward, "rpo": stage_rpo,
          "spro": stage_spro, "spro_flow": stage_spro_flow, "spro_ablation": stage_spro_ablation,
          "spro_beta": stage_spro_beta, "spro_v": stage_spro_v, "retest": stage_retest}


def main() -> None:
    run_stages(__doc__, STAGES, out="runs/diff-bench", steps=600)


if __name__ == "__main__":
    main()
