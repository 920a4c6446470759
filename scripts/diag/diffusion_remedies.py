"""Remedies tried for Diffusion-DPO / Flow-DPO on the shapes task (issue 17), seed 0, each against the learn stage's
figures in docs/benchmarks.md. Needs the references of ``scripts/bench/diffusion.py`` (made on first use, by
:mod:`pbrl.sequence.shapes_bench`) and the pair sets of its ``pairs`` stage.

    OMP_NUM_THREADS=1 python scripts/diag/diffusion_remedies.py [--out runs/diff-bench]

Rows:
  gentler rates on clean labels   Diffusion-DPO / Flow-DPO at lr 1e-5 (600 steps) and 1e-6 (2,000 steps), no label
                                  reversed: does the destruction at lr 1e-4 come from the step size alone?
  v-space errors                  the ε-model's errors weighted by 1 / ᾱ_t (its v-prediction error), which lifts the
                                  noisy steps where the class is decided, at β 100 and 1,000
  SDPO safeguard                  Diffusion-SDPO (Fu et al., 2025, arXiv 2511.03317) in output space: the losers'
                                  gradient scaled by min(1, μ ‖r_w‖² / ⟨r_w, r_l⟩) (r: the output residuals on the
                                  shared noise; 1 where the inner product is ≤ 0) so that the winners' error cannot
                                  rise to first order; μ 0.9

Then what the clean-label runs' samples look like against the references' (``--stages pairs`` must have run): the
share with a shape in place (best-template IoU ≥ 0.8), the mean of the lit pixels minus the prompt's brightness
(validity allows ±0.2 on the [−1, 1] scale) and the number of lit pixels.

These are diagnostics, not pbrl methods: the two loss variants live here, as a subclass of the learner.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import Tensor

import pbrl.sequence.diffusion_train as diffusion_train
from pbrl.core.diffusion import diffusion_dpo_loss
from pbrl.core.training import LossOutput
from pbrl.sequence import shapes_bench
from pbrl.sequence.diffusion import load_denoiser
from pbrl.sequence.shapes import classify_shapes
from pbrl.stages import print_table

SDPO_MU = 0.9


class RemedyLearner(diffusion_train.DiffusionLearner):
    """Diffusion-DPO / Flow-DPO with one remedy (``variant``: ``v_space`` or ``sdpo``); other methods unchanged."""

    variant = ""

    def loss(self, batch: dict[str, Tensor], step: int) -> LossOutput:
        if self.method.name not in ("diffusion_dpo", "flow_dpo"):
            return super().loss(batch, step)
        s, cond = self.schedule, batch["cond"]
        b = len(cond)
        t = s.sample_t(b, device=cond.device)
        noise = torch.randn_like(batch["chosen"])
        x0 = torch.cat([batch["chosen"], batch["rejected"]])
        noise2, t2, cond2 = torch.cat([noise, noise]), torch.cat([t, t]), torch.cat([cond, cond])
        x_t, target = s.noisy(x0, noise2, t2), s.target(x0, noise2, t2)
        residual = (self.policy(x_t, s.model_time(t2), cond2) - target).flatten(1)
        err = (residual ** 2).mean(1)
        with torch.no_grad():
            ref = ((self.reference(x_t, s.model_time(t2), cond2) - target).flatten(1) ** 2).mean(1)
        err_w, err_l, ref_w, ref_l = err[:b], err[b:], ref[:b], ref[b:]
        metrics = {}
        if self.variant == "v_space":
            weight = 1.0 / s.alpha_bar[t]
            err_w, err_l, ref_w, ref_l = err_w * weight, err_l * weight, ref_w * weight, ref_l * weight
        elif self.variant == "sdpo":
            with torch.no_grad():
                r_w, r_l = residual[:b], residual[b:]
                inner = (r_w * r_l).sum(1)
                scale = torch.where(inner > 0, (SDPO_MU * (r_w * r_w).sum(1) / inner.clamp(min=1e-12)).clamp(max=1.0),
                                    torch.ones_like(inner))
            err_l = scale * err_l + (1 - scale) * err_l.detach()  # same value, the losers' gradient scaled
            metrics["sdpo/scale"] = scale.mean()
        losses = diffusion_dpo_loss(err_w, err_l, ref_w, ref_l, beta=self.method.beta_value)
        metrics.update(self._pair_metrics(err_w, err_l, ref_w, ref_l))
        return LossOutput(losses.mean(), metrics)


ROWS = [  # (row, variant, method, prediction, label flip, lr, steps, β (0: official))
    ("gentler rate, clean labels", "", "diffusion_dpo", "epsilon", 0.0, 1e-5, 600, 0.0),
    ("gentler rate, clean labels", "", "diffusion_dpo", "epsilon", 0.0, 1e-6, 2000, 0.0),
    ("gentler rate, clean labels", "", "flow_dpo", "flow", 0.0, 1e-5, 600, 0.0),
    ("gentler rate, clean labels", "", "flow_dpo", "flow", 0.0, 1e-6, 2000, 0.0),
    ("v-space errors", "v_space", "diffusion_dpo", "epsilon", 0.2, 1e-4, 600, 100.0),
    ("v-space errors", "v_space", "diffusion_dpo", "epsilon", 0.2, 1e-4, 600, 1000.0),
    ("SDPO safeguard", "sdpo", "diffusion_dpo", "epsilon", 0.2, 1e-4, 600, 0.0),
    ("SDPO safeguard", "sdpo", "flow_dpo", "flow", 0.2, 1e-4, 600, 0.0),
    ("SDPO safeguard, clean labels", "sdpo", "diffusion_dpo", "epsilon", 0.0, 1e-4, 600, 0.0),
]


def sample_looks(model_dir: Path, prediction: str) -> list[str]:
    """Shape in place, lit-pixel brightness against the prompt's, lit pixels: of the measure's held-out samples."""
    images, prompts = shapes_bench.heldout_samples(load_denoiser(model_dir)[0], prediction, 0)
    _, valid, iou = classify_shapes(images, prompts)
    lit = images[:, 0] > -0.5
    lit_mean = (images[:, 0] * lit).flatten(1).sum(1) / lit.flatten(1).sum(1).clamp(min=1)
    gap = lit_mean - torch.tensor([2 * b - 1 for _, b in prompts])
    return [f"{float((iou >= 0.8).float().mean()):.2f}", f"{float(gap.mean()):+.3f}",
            f"{float(lit.flatten(1).sum(1).float().mean()):.1f}", f"{float(valid.float().mean()):.3f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/diff-bench"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    refs = shapes_bench.references(args.out, shapes_bench.make_task(args.out))
    diffusion_train.DiffusionLearner = RemedyLearner  # train_diffusion builds its learner from this name
    rows = []
    for label, variant, method, prediction, flip, lr, steps, beta in ROWS:
        RemedyLearner.variant = variant
        name = f"{variant or 'plain'}-{method}-flip{flip:g}-lr{lr:g}-{steps}-beta{beta:g}"
        model_dir, _ = shapes_bench.train(refs[prediction], shapes_bench.pair_set(args.out, 50, flip),
                                          args.out / "seed0" / "remedies" / name, method, prediction=prediction,
                                          steps=steps, seed=0, lr=lr, beta=beta)
        m = shapes_bench.measure(model_dir, prediction, 0)
        rows.append([label, method, f"{lr:g}", str(steps), f"{beta:g}" if beta else "official", f"{m['preferred']:.3f}",
                     f"{m['valid']:.3f}", f"{m['diversity']:.3f}"])
        print(rows[-1], flush=True)
    print_table("remedies (seed 0, batch 16 pairs; held-out prompts, 16 samples each)",
                ["remedy", "method", "lr", "steps", "β", "preferred", "valid", "diversity"], rows)
    looks = [("reference (ε)", refs["epsilon"], "epsilon"), ("reference (flow)", refs["flow"], "flow")]
    runs = args.out / "seed0"
    for label, folder, prediction in (
            ("SFT on clean winners (flow)", "pairs/pairs-50-flip0-diffusion_sft-flow", "flow"),
            ("Diffusion-DPO, clean labels, lr 1e-4", "pairs/pairs-50-flip0-diffusion_dpo-epsilon", "epsilon"),
            ("Diffusion-DPO, clean labels, lr 1e-6", "remedies/plain-diffusion_dpo-flip0-lr1e-06-2000-beta0", "epsilon"),
            ("Flow-DPO, clean labels, lr 1e-4", "pairs/pairs-50-flip0-flow_dpo-flow", "flow"),
            ("Flow-DPO, clean labels, lr 1e-6", "remedies/plain-flow_dpo-flip0-lr1e-06-2000-beta0", "flow"),
            ("Flow-DPO, the task's labels", "pairs/pairs-50-flip0.2-flow_dpo-flow", "flow")):
        if (runs / folder / "model").is_dir():
            looks.append((label, runs / folder / "model", prediction))
    print_table("what the samples look like (seed 0, held-out prompts)",
                ["model", "shape in place (IoU ≥ 0.8)", "lit mean − prompt", "lit pixels", "valid"],
                [[label, *sample_looks(folder, prediction)] for label, folder, prediction in looks])


if __name__ == "__main__":
    main()
