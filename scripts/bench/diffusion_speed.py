"""Diffusion-DPO training throughput: pbrl's loop against a plain-PyTorch loop of the same maths (issue 17).

    OMP_NUM_THREADS=1 python scripts/bench/diffusion_speed.py [--steps 30] [--batch 8] [--device cpu|cuda] [--amp]

Both train the same tiny ``diffusers`` UNet2DConditionModel (built from a config, no download) on the same pairs:
one forward of ``[winners; losers]`` with shared noise and timesteps, the frozen reference under ``no_grad``, the
official code's loss ``−log σ(−β/2 ((e_w − e_l) − (e_ref,w − e_ref,l)))``, AdamW with gradient clipping. The plain
loop is what the official ``train.py`` does per step, written out (no data loader, no logging). Before timing, the
two losses are computed on one batch with the same noise and timesteps and must agree to float tolerance
(DESIGN §7.4). pbrl is timed through ``pbrl.train.loop.run_loop`` (its TensorBoard logging every 10 steps and one
final checkpoint included). Prints a markdown table; the ratio is pbrl / plain steps per second.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pbrl.core import diffusion_dpo_loss
from pbrl.sequence.diffusion import DiffusersDenoiser, NoiseSchedule, denoising_error, pair_denoising_errors
from pbrl.sequence.diffusion_train import DiffusionLearner, DiffusionMethodConfig, ImageBatches, ImagePairs
from pbrl.train.loop import TrainConfig, run_loop

BETA = 5000.0
UNET = dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, norm_num_groups=8, attention_head_dim=4)


def build(seed: int, device: torch.device) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**UNET).to(device)


def plain_loss(unet, ref, schedule: NoiseSchedule, w, lose, cond, generator=None) -> torch.Tensor:
    """The official train.py's step, written out: shared noise and t over the two halves, mean-over-pixels MSE."""
    b = w.shape[0]
    t = torch.randint(0, schedule.train_steps, (b,), device=w.device, generator=generator)
    noise = torch.randn(w.shape, device=w.device, dtype=w.dtype, generator=generator)
    x0, noise2, t2 = torch.cat([w, lose]), torch.cat([noise, noise]), torch.cat([t, t])
    ab = schedule.alpha_bar.to(w.device)[t2].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise2
    states = torch.cat([cond, cond])[:, None]
    pred = unet(x_t, t2, encoder_hidden_states=states).sample
    err = F.mse_loss(pred.float(), noise2.float(), reduction="none").mean([1, 2, 3])
    with torch.no_grad():
        ref_err = F.mse_loss(ref(x_t, t2, encoder_hidden_states=states).sample.float(), noise2.float(),
                             reduction="none").mean([1, 2, 3])
    model_diff = err[:b] - err[b:]
    ref_diff = ref_err[:b] - ref_err[b:]
    return -F.logsigmoid(-0.5 * BETA * (model_diff - ref_diff)).mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    schedule = NoiseSchedule("epsilon").to(device)
    g = torch.Generator().manual_seed(0)
    n = 256
    data = ImagePairs(cond=torch.randn(n, 32, generator=g), chosen=torch.randn(n, 4, 16, 16, generator=g),
                      rejected=torch.randn(n, 4, 16, 16, generator=g))

    # equal maths first: one batch, the same noise and timesteps on both sides
    unet = build(0, device)
    ref = copy.deepcopy(unet).requires_grad_(False)
    w, lose, cond = (x[: args.batch].to(device) for x in (data.chosen, data.rejected, data.cond))
    with torch.no_grad():
        unet.conv_in.weight.add_(0.01)  # policy ≠ reference, so the loss is not log 2 on both sides by construction
    plain = plain_loss(unet, ref, schedule, w, lose, cond, generator=torch.Generator(device).manual_seed(7))
    e = pair_denoising_errors(DiffusersDenoiser(unet), DiffusersDenoiser(ref), schedule, w, lose, cond,
                              generator=torch.Generator(device).manual_seed(7))
    ours = diffusion_dpo_loss(e.policy_w, e.policy_l, e.ref_w, e.ref_l, beta=BETA).mean()
    print(f"loss on one batch: pbrl {ours.item():.6f}, plain {plain.item():.6f}")
    assert torch.allclose(ours, plain, rtol=1e-4, atol=1e-6), (ours.item(), plain.item())
    if device.type == "cuda":  # the same loss on CPU, same weights, noise and timesteps (drawn on the CPU)
        g_cpu = torch.Generator().manual_seed(7)
        t = torch.randint(0, schedule.train_steps, (args.batch,), generator=g_cpu)
        noise = torch.randn(w.shape, generator=g_cpu)
        losses = {}
        for dev in ("cpu", args.device):
            u, r = copy.deepcopy(unet).to(dev), copy.deepcopy(ref).to(dev)
            x = [v.to(dev) for v in (w, lose, cond, noise)]
            sch = NoiseSchedule("epsilon").to(dev)
            errs = [denoising_error(DiffusersDenoiser(net), sch, img, x[3], t.to(dev), x[2]) for net in (u, r)
                    for img in (x[0], x[1])]
            losses[dev] = diffusion_dpo_loss(errs[0], errs[1], errs[2], errs[3], beta=BETA).mean().item()
        print(f"the same batch on cpu and {args.device}: {losses}")
        torch.cuda.reset_peak_memory_stats()

    amp = args.amp and device.type == "cuda"
    plain_rates, pbrl_rates = [], []
    for _ in range(args.repeats):
        unet = build(0, device)
        ref = copy.deepcopy(unet).requires_grad_(False)
        opt = torch.optim.AdamW(unet.parameters(), lr=1e-5, weight_decay=0.0)
        batches = ImageBatches(data, args.batch, seed=0, device=device)
        for step in range(args.warmup + args.steps):
            if step == args.warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            b = batches.sample()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = plain_loss(unet, ref, schedule, b["chosen"], b["rejected"], b["cond"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        plain_rates.append(args.steps / (time.perf_counter() - t0))

        policy = DiffusersDenoiser(build(0, device))
        learner = DiffusionLearner(policy, copy.deepcopy(policy).eval(), schedule, DiffusionMethodConfig(beta=BETA))
        batches = ImageBatches(data, args.batch, seed=0, device=device)
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig(steps=args.warmup + args.steps, batch_size=args.batch, lr=1e-5, weight_decay=0.0,
                              log_every=10, checkpoint_every=10**9, amp=args.amp, device=args.device)
            run_loop(learner, batches.sample, cfg, Path(tmp), device=device, progress=False, stop_at=args.warmup)
            t0 = time.perf_counter()
            result = run_loop(learner, batches.sample, cfg, Path(tmp), device=device, progress=False)
            pbrl_rates.append(args.steps / (time.perf_counter() - t0))
            assert result.finished
    params = sum(p.numel() for p in build(0, device).parameters())
    print(f"\nDiffusion-DPO, diffusers UNet2DConditionModel ({params / 1e6:.2f}M parameters, 4×16×16 latents), batch "
          f"{args.batch} pairs, {args.device}{' bf16' if amp else ' fp32'}, {torch.get_num_threads()} thread(s), "
          f"{args.steps} timed steps × {args.repeats} repeats (median)\n")
    print("| loop | steps/s (median) | per repeat |")
    print("|---|---|---|")
    print(f"| plain PyTorch | {statistics.median(plain_rates):.2f} | {', '.join(f'{r:.2f}' for r in plain_rates)} |")
    print(f"| pbrl (run_loop) | {statistics.median(pbrl_rates):.2f} | {', '.join(f'{r:.2f}' for r in pbrl_rates)} |")
    print(f"\npbrl / plain: {statistics.median(pbrl_rates) / statistics.median(plain_rates):.2f}")
    if device.type == "cuda":
        print(f"peak CUDA memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
