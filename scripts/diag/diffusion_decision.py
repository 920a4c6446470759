"""Where along the sampling chain does a diffusion model decide a sample's class, and where does a preference
objective change the model? (issue 17 diagnostic)

    OMP_NUM_THREADS=1 python scripts/diag/diffusion_decision.py REFERENCE [POLICY] [--prediction epsilon] [--data PAIRS.h5]

1. Decision: clean shapes of each kind at the held-out prompts are noised to level t and denoised back by DDIM
   (η = 0) from t; the share that comes back as the same kind, by t. Where it falls to the model's prior share is
   where the sampler decides the class.
2. With a POLICY (trained from REFERENCE): its implicit reward margin ``−((e_θ^w − e_θ^l) − (e_ref^w − e_ref^l))``
   on fresh clean pairs (cross chosen), and the change of the winners' and losers' errors, by t.
"""

from __future__ import annotations

import argparse

import torch

from pbrl.sequence.diffusion import NoiseSchedule, ddim_step, denoising_error, load_denoiser
from pbrl.sequence.shapes import (
    KINDS,
    classify_shapes,
    heldout_prompts,
    make_shape_pairs,
    prompt_condition,
    render_shapes,
)


@torch.no_grad()
def denoise_from(net, schedule: NoiseSchedule, x: torch.Tensor, t_start: float, cond: torch.Tensor, steps: int = 20):
    b = len(x)
    if schedule.is_flow:
        times = torch.linspace(t_start, 0.0, steps + 1)
        for i in range(steps):
            x = x + (times[i + 1] - times[i]) * net(x, schedule.model_time(times[i].expand(b)), cond)
        return x
    times = torch.linspace(t_start, 0, steps).round().long()
    for i in range(steps):
        t = times[i].expand(b)
        t_prev = times[i + 1].expand(b) if i + 1 < steps else torch.full((b,), -1)
        x, _, _ = ddim_step(schedule, net(x, t, cond), x, t, t_prev, eta=0.0)
    return x.clamp(-1, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reference")
    parser.add_argument("policy", nargs="?")
    parser.add_argument("--prediction", default="epsilon")
    args = parser.parse_args()
    torch.set_num_threads(1)
    schedule = NoiseSchedule(args.prediction)
    ref, _ = load_denoiser(args.reference)
    ref.eval()
    g = torch.Generator().manual_seed(0)
    prompts = [p for p in heldout_prompts() for _ in range(16)]
    cond = prompt_condition(prompts)
    levels = [0.1, 0.3, 0.5, 0.7, 0.9] if schedule.is_flow else [100, 300, 500, 700, 900]
    print("| t | " + " | ".join(f"{k} kept" for k in KINDS) + " |\n|---|---|---|")
    for level in levels:
        kept = []
        for kind in KINDS:
            clean = render_shapes([kind] * len(prompts), prompts, generator=g)
            t = torch.full((len(prompts),), level if schedule.is_flow else int(level))
            x = schedule.noisy(clean, torch.randn(clean.shape, generator=g), t)
            kinds, _, _ = classify_shapes(denoise_from(ref, schedule, x, level, cond), prompts)
            kept.append(sum(k == kind for k in kinds) / len(kinds))
        print(f"| {level} | " + " | ".join(f"{v:.2f}" for v in kept) + " |")
    if not args.policy:
        return
    policy, _ = load_denoiser(args.policy)
    policy.eval()
    pairs = make_shape_pairs(heldout_prompts(), 32, flip_rate=0.0, seed=99)
    print("\n| t range | implicit margin (mean) | accuracy | e_ref, winners | e_θ − e_ref, winners | losers |\n"
          "|---|---|---|---|---|---|")
    bounds = [(0, .2), (.2, .4), (.4, .6), (.6, .8), (.8, 1.0)]
    with torch.no_grad():
        for lo, hi in bounds:
            n = len(pairs.chosen)
            u = lo + (hi - lo) * torch.rand(n, generator=g)
            t = u if schedule.is_flow else (u * schedule.train_steps).long().clamp(max=schedule.train_steps - 1)
            noise = torch.randn(pairs.chosen.shape, generator=g)
            e = {name: denoising_error(net, schedule, x, noise, t, pairs.cond) for name, net, x in (
                ("pw", policy, pairs.chosen), ("pl", policy, pairs.rejected), ("rw", ref, pairs.chosen),
                ("rl", ref, pairs.rejected))}
            margin = -((e["pw"] - e["pl"]) - (e["rw"] - e["rl"]))
            print(f"| {lo:.1f}–{hi:.1f} | {margin.mean():+.5f} | {(margin > 0).float().mean():.2f} | {e['rw'].mean():.4f} | "
                  f"{(e['pw'] - e['rw']).mean():+.5f} | {(e['pl'] - e['rl']).mean():+.5f} |")


if __name__ == "__main__":
    main()
