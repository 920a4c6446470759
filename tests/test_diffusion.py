"""Diffusion / flow preference objectives: every loss against a float64 reference (and failing on a flipped sign),
the shared-noise invariant, a frozen reference, every objective for a step on a diffusers UNet2DConditionModel and on
video, the shapes judge, bad input, and exact resume through the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pbrl.core import diffusion_dpo_loss
from pbrl.core.diffusion import (
    abc_loss,
    clipped_ratio_dpo_loss,
    dro_loss,
    gaussian_step_logp,
    gradspo_score,
    lambda_harmonic_reward,
    rao_kupper_loss,
    reward_weighted_loss,
    rpo_loss,
)
from pbrl.errors import ConfigError, DatasetError
from pbrl.sequence.diffusion import (
    PREDICTIONS,
    DiffusersDenoiser,
    NoiseSchedule,
    SmallUNet,
    denoising_error,
    load_denoiser,
    pair_denoising_errors,
    sample,
)
from pbrl.sequence.diffusion_reward import ImageRewardModel
from pbrl.sequence.diffusion_train import (
    DIFFUSION_METHODS,
    DiffusionLearner,
    DiffusionMethodConfig,
    DiffusionRunConfig,
    load_image_pairs,
    train_diffusion,
    write_image_pairs,
)
from pbrl.sequence.shapes import (
    KINDS,
    classify_shapes,
    heldout_prompts,
    make_shape_pairs,
    prompt_condition,
    render_shapes,
    train_prompts,
    write_shapes_task,
)
from tests.conftest import CliResult, run_cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _errors(seed: int, n: int = 6) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, generator=g, dtype=torch.float64) for _ in range(4)]


# ---------------------------------------------------------------- losses against float64 references


@pytest.mark.parametrize("beta", [1.0, 50.0, 5000.0])
def test_diffusion_dpo_loss_reference_and_flipped_sign(beta):
    pw, pl, rw, rl = _errors(0)
    got = diffusion_dpo_loss(pw, pl, rw, rl, beta=beta)
    want = [-math.log(_sigmoid(-beta / 2 * ((a - b) - (c - d)))) if abs(beta / 2 * ((a - b) - (c - d))) < 30 else
            max(beta / 2 * ((a - b) - (c - d)), 0.0) for a, b, c, d in zip(*(x.tolist() for x in (pw, pl, rw, rl)))]
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), rtol=1e-10, atol=1e-10)
    flipped = [-math.log(_sigmoid(+beta / 2 * ((a - b) - (c - d)))) if abs(beta / 2 * ((a - b) - (c - d))) < 30
               else 0.0 for a, b, c, d in zip(*(x.tolist() for x in (pw, pl, rw, rl)))]
    assert not torch.allclose(got, torch.tensor(flipped, dtype=torch.float64), atol=1e-3)
    # without the ½ the official code has, it would be another loss
    assert not torch.allclose(got, diffusion_dpo_loss(pw, pl, rw, rl, beta=2 * beta), atol=1e-3)


def test_clipped_ratio_dpo_reference_and_clip_stops_gradient():
    lw, ll, rw, rl = (x - 0.5 for x in _errors(1))
    lw.requires_grad_(True)
    got = clipped_ratio_dpo_loss(lw, ll, rw, rl, beta=10.0, clip=0.1)
    want = []
    for a, b, c, d in zip(*(x.tolist() for x in (lw, ll, rw, rl))):
        ra = min(max(math.exp(a - c), 0.9), 1.1)
        rb = min(max(math.exp(b - d), 0.9), 1.1)
        want.append(-math.log(_sigmoid(10 * math.log(ra) - 10 * math.log(rb))))
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), rtol=1e-10)
    got.sum().backward()
    outside = ((lw - rw).abs() > math.log(1.1)).detach()
    assert outside.any() and (lw.grad[outside] == 0).all() and (lw.grad[~outside] != 0).all()


def test_gaussian_step_logp_and_gradspo_score_reference():
    g = torch.Generator().manual_seed(2)
    x, mean = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64), torch.randn(3, 2, 4, 4, generator=g,
                                                                                      dtype=torch.float64)
    std = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64).view(3, 1, 1, 1)
    want = [sum(-((xi - mi) ** 2) / (2 * s**2) - math.log(s) - 0.5 * math.log(2 * math.pi)
                for xi, mi in zip(x[b].flatten().tolist(), mean[b].flatten().tolist())) / 32
            for b, s in enumerate([0.5, 1.0, 2.0])]
    assert torch.allclose(gaussian_step_logp(x, mean, std), torch.tensor(want, dtype=torch.float64), rtol=1e-10)
    eps, ema, z = (torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    scale = torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64).view(3, 1, 1, 1)
    want = [-sum((e - (m - 0.5 * s * zz)) ** 2 for e, m, zz in zip(eps[b].flatten().tolist(),
                                                                      ema[b].flatten().tolist(),
                                                                      z[b].flatten().tolist())) / 32
            for b, s in enumerate([0.3, 0.6, 0.9])]
    eps.requires_grad_(True)
    ema.requires_grad_(True)
    got = gradspo_score(eps, ema, z, scale, guidance=0.5)
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), rtol=1e-10)
    got.sum().backward()
    assert ema.grad is None  # the target is stop-gradient


def test_dro_abc_rpo_reference():
    pe, re, po, ro = _errors(3)
    want = [max(0.0, (a - b) - (c - d) + 0.001) for a, b, c, d in zip(*(x.tolist() for x in (pe, re, po, ro)))]
    assert torch.allclose(dro_loss(pe, re, po, ro, margin=0.001), torch.tensor(want, dtype=torch.float64))
    assert not torch.allclose(dro_loss(po, ro, pe, re, margin=0.001), torch.tensor(want, dtype=torch.float64))
    label = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.5, 0.25], dtype=torch.float64)
    want = []
    for e, r, y in zip(pe.tolist(), re.tolist(), label.tolist()):
        s = -0.5 * 40 * (e - r)
        want.append(-y * math.log(_sigmoid(s)) - (1 - y) * math.log(1 - _sigmoid(s)))
    assert torch.allclose(abc_loss(pe, re, label, beta=40.0), torch.tensor(want, dtype=torch.float64), rtol=1e-10)
    want = []
    for a, b, c, d, y in zip(*(x.tolist() for x in (pe, re, po, ro)), label.tolist()):
        h = (b - a) - (d - c)
        want.append(a - y * math.log(_sigmoid(3 * h)) - (1 - y) * math.log(_sigmoid(-3 * h)))
    assert torch.allclose(rpo_loss(pe, re, po, ro, label, beta=3.0), torch.tensor(want, dtype=torch.float64),
                          rtol=1e-10)


def test_lambda_harmonic_reward_weighted_and_rao_kupper_reference():
    img = torch.tensor([0.9, 0.5, 0.2], dtype=torch.float64)
    txt = torch.tensor([0.3, 0.5, 0.8], dtype=torch.float64)
    want = [1 / (0.3 / a + 0.7 / b) for a, b in zip(img.tolist(), txt.tolist())]
    assert torch.allclose(lambda_harmonic_reward(img, txt, lam=0.3), torch.tensor(want, dtype=torch.float64))
    # λ = 1 and λ = 0 give each similarity alone
    assert torch.allclose(lambda_harmonic_reward(img, txt, lam=1.0), img)
    err = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64)
    reward = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    z = sum(math.exp(r / 0.5) for r in reward.tolist())
    want = [3 * math.exp(r / 0.5) / z * e for r, e in zip(reward.tolist(), err.tolist())]
    assert torch.allclose(reward_weighted_loss(err, reward, temperature=0.5), torch.tensor(want, dtype=torch.float64))
    ra = torch.tensor([1.0, 0.2, -0.5, 0.3], dtype=torch.float64)
    rb = torch.tensor([0.0, 0.9, -0.5, 0.1], dtype=torch.float64)
    label = torch.tensor([1.0, 0.0, 0.5, 0.5], dtype=torch.float64)
    theta = 5.0
    want = []
    for a, b, y in zip(ra.tolist(), rb.tolist(), label.tolist()):
        pa, pb = _sigmoid(a - b - math.log(theta)), _sigmoid(b - a - math.log(theta))
        p = pa if y == 1 else pb if y == 0 else (theta**2 - 1) * pa * pb
        want.append(-math.log(p))
    assert torch.allclose(rao_kupper_loss(ra, rb, label, theta=theta), torch.tensor(want, dtype=torch.float64))
    # the three outcomes' probabilities sum to 1
    d = torch.linspace(-3, 3, 7, dtype=torch.float64)
    total = sum(torch.exp(-rao_kupper_loss(d, 0 * d, torch.full_like(d, y))) for y in (1.0, 0.0, 0.5))
    assert torch.allclose(total, torch.ones_like(d))


# ---------------------------------------------------------------- errors, shared noise, frozen reference


class _Spy(torch.nn.Module):
    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net, self.calls = net, []

    def forward(self, x, t, c):
        self.calls.append((x.detach().clone(), t.detach().clone()))
        return self.net(x, t, c)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_winner_and_loser_share_noise_and_time(prediction):
    torch.manual_seed(0)
    schedule = NoiseSchedule(prediction, 100)
    policy, reference = _Spy(SmallUNet(1, 2, (8, 16))), _Spy(SmallUNet(1, 2, (8, 16)))
    w, lose, cond = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8), torch.randn(3, 2)
    e = pair_denoising_errors(policy, reference, schedule, w, lose, cond)
    (x, t), = policy.calls
    assert torch.equal(t[:3], t[3:]) and torch.equal(policy.calls[0][0], reference.calls[0][0])
    # x_t − a·x0 = s·ε: the same ε on both halves
    a, s = schedule.coefficients(e.t, w)
    assert torch.allclose((x[:3] - a * w) / s, (x[3:] - a * lose) / s, atol=1e-5)
    assert e.policy_w.requires_grad and not e.ref_w.requires_grad
    # the errors are those of denoising_error at that noise and time
    assert torch.allclose(e.policy_w, denoising_error(policy, schedule, w, e.noise, e.t, cond), atol=1e-6)


def test_schedule_targets_reconstruct_x0_and_noise():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g)
    for prediction in PREDICTIONS:
        s = NoiseSchedule(prediction, 100)
        t = s.sample_t(4, generator=g)
        x = s.noisy(x0, noise, t)
        x0_hat, eps_hat = s.to_x0_eps(s.target(x0, noise, t), x, t)
        assert torch.allclose(x0_hat, x0, atol=1e-4) and torch.allclose(eps_hat, noise, atol=1e-4), prediction


def _tiny_diffusers(path: Path) -> Path:
    config = {"_class_name": "UNet2DConditionModel", "sample_size": 8, "in_channels": 1, "out_channels": 1,
              "layers_per_block": 1, "block_out_channels": [8, 16], "norm_num_groups": 4, "attention_head_dim": 2,
              "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
              "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "cross_attention_dim": 2}
    path.write_text(json.dumps(config))
    return path


def _batch(n: int = 4, shape: tuple[int, ...] = (1, 8, 8)) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"cond": torch.rand(n, 2, generator=g) * 2 - 1, "chosen": torch.rand(n, *shape, generator=g) * 2 - 1,
            "rejected": torch.rand(n, *shape, generator=g) * 2 - 1, "label": torch.ones(n),
            "reward": torch.randn(n, 2, generator=g)}


@pytest.mark.parametrize("backbone", ["diffusers", "smallunet-video"])
def test_every_objective_runs_a_step_and_leaves_the_reference_frozen(backbone, tmp_path):
    pytest.importorskip("diffusers")
    from pbrl.sequence.diffusion import load_denoiser

    for method in DIFFUSION_METHODS:
        prediction = "flow" if method == "flow_dpo" else "epsilon"
        if backbone == "diffusers":
            net, _ = load_denoiser(_tiny_diffusers(tmp_path / "unet.json"))
            assert isinstance(net, DiffusersDenoiser)
            batch = _batch()
        else:
            torch.manual_seed(0)
            net, batch = SmallUNet(1, 2, (8, 16)), _batch(2, (1, 3, 8, 8))
        reference = type(net)(net.model.__class__.from_config(net.model.config)) if backbone == "diffusers" else \
            SmallUNet(1, 2, (8, 16))
        reference.load_state_dict(net.state_dict())
        before = {k: v.clone() for k, v in reference.state_dict().items()}
        cfg = DiffusionMethodConfig(name=method, beta=100.0, sample_steps=3, reward_weights=[1.0, 0.5],
                                    spo_threshold=0.0)
        learner = DiffusionLearner(net, reference, NoiseSchedule(prediction, 50), cfg,
                                   image_shape=tuple(batch["chosen"].shape[1:]), ema_decay=0.9,
                                   preference=ImageRewardModel(1, 2, heads=2, width=8, noisy=True))
        opt = torch.optim.SGD(net.parameters(), lr=1e-2)
        out = learner.loss(batch, 0)
        assert torch.isfinite(out.loss), method
        out.loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters()), method
        opt.step()
        learner.after_step(0)
        assert all(torch.equal(before[k], v) for k, v in reference.state_dict().items()), method
        assert all(not p.requires_grad for p in reference.parameters())
        assert not torch.equal(next(learner.ema.parameters()), next(net.parameters()))


def test_flow_and_ddim_sampling_shapes_and_guidance():
    torch.manual_seed(0)
    net = SmallUNet(1, 2, (8, 16))
    cond = torch.zeros(2, 2)
    for prediction in PREDICTIONS:
        s = NoiseSchedule(prediction, 50)
        noise = torch.randn(2, 1, 8, 8)
        plain = sample(net, s, cond, (1, 8, 8), steps=3, noise=noise)
        pushed = sample(net, s, cond, (1, 8, 8), steps=3, noise=noise,
                        guidance=lambda x, t, x0: -torch.ones_like(x))
        assert plain.shape == (2, 1, 8, 8)
        # a negative push on ε (DDIM) or v (flow) moves x̂₀ up in both parameterisations
        assert pushed.mean() > plain.mean(), prediction


# ---------------------------------------------------------------- the shapes task


def test_shapes_judge_is_exact_and_prompts_are_split():
    g = torch.Generator().manual_seed(0)
    prompts = train_prompts() + heldout_prompts()
    assert not set(train_prompts()) & set(heldout_prompts()) and len(prompts) == 24
    for kind in KINDS:
        kinds, valid, iou = classify_shapes(render_shapes([kind] * len(prompts), prompts, generator=g), prompts)
        assert set(kinds) == {kind} and valid.all() and (iou == 1).all()
    noise = torch.rand(24, 1, 16, 16, generator=g) * 2 - 1
    kinds, valid, _ = classify_shapes(noise, prompts)
    assert not valid.any() and set(kinds) == {"none"}  # no shape is no square (issue 37: the old tie-break)
    blank = -torch.ones(24, 1, 16, 16)
    assert set(classify_shapes(blank, prompts)[0]) == {"none"}
    # the prompt must be followed: another size or another brightness is not valid
    crosses = render_shapes(["cross"] * 24, prompts, generator=g)
    other_size = [((h - 2) % 3 + 3, b) for h, b in prompts]
    assert not classify_shapes(crosses, other_size)[1].any()
    other_brightness = [(h, 1.3 - b if abs(0.65 - b) > 0.1 else b + 0.3) for h, b in prompts]
    assert not classify_shapes(crosses, other_brightness)[1].any()
    pairs = make_shape_pairs(train_prompts(), 10, flip_rate=0.2, seed=0)
    kinds, _, _ = classify_shapes(pairs.chosen, pairs.prompts)
    assert [k == "square" for k in kinds] == pairs.flipped.tolist()
    # same_position: the two images differ only in the square's corners (the cross's pixels are lit in both)
    same = make_shape_pairs(train_prompts(), 10, flip_rate=0.0, seed=0, same_position=True)
    lit_w, lit_l = same.chosen > -1, same.rejected > -1
    assert (lit_w <= lit_l).all() and (lit_l.flatten(1).sum(1) > lit_w.flatten(1).sum(1)).all()
    apart = make_shape_pairs(train_prompts(), 10, flip_rate=0.0, seed=0)
    assert not ((apart.chosen > -1) <= (apart.rejected > -1)).flatten(1).all(1).all()


# ---------------------------------------------------------------- data checks, CLI, resume


def _seq(*args: str) -> CliResult:
    return run_cli("seq", *args)


@pytest.fixture(scope="module")
def shapes_task(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("shapes")
    proc = _seq("shapes", "--out", str(d), "--images", "2", "--pairs", "2")
    assert proc.returncode == 0, proc.stderr
    config = json.loads((d / "unet.json").read_text())
    (d / "unet.json").write_text(json.dumps({**config, "widths": [8, 16]}))
    return {k: Path(v) for k, v in json.loads(proc.stdout).items()}


@pytest.mark.parametrize("fields, method, found", [
    ({"rejected": None}, "diffusion_dpo", "field 'rejected': got missing"),
    ({"chosen": torch.zeros(4, 3, 16, 16), "rejected": torch.zeros(4, 3, 16, 16)}, "diffusion_dpo",
     "field 'chosen': got 3 channels, expected 1"),
    ({"chosen": torch.zeros(4, 1, 12, 12), "rejected": torch.zeros(4, 1, 12, 12)}, "diffusion_dpo",
     "field 'chosen': got size [12, 12]"),
    ({"rejected": torch.zeros(4, 1, 8, 8)}, "diffusion_dpo", "field 'rejected': got shape [4, 1, 8, 8]"),
    ({"chosen": torch.full((4, 1, 16, 16), float("nan"))}, "diffusion_sft", "field 'chosen': got non-finite values"),
    ({"cond": torch.zeros(4, 3)}, "diffusion_sft", "field 'cond': got width 3, expected 2"),
    ({}, "flow_rwr", "field 'reward': got missing"),
])
def test_bad_image_data_is_named_and_nothing_is_trained(tmp_path, shapes_task, fields, method, found):
    base = {"cond": torch.zeros(4, 2), "chosen": torch.zeros(4, 1, 16, 16), "rejected": torch.zeros(4, 1, 16, 16)}
    merged = {k: v for k, v in {**base, **fields}.items() if v is not None}
    bad = write_image_pairs(tmp_path / "bad.h5", **merged)
    model = _tiny_diffusers(tmp_path / "unet.json") if "size" in found else shapes_task["unet"]
    if "size" in found:
        config = json.loads(model.read_text())
        model.write_text(json.dumps({**config, "sample_size": 16, "in_channels": 1}))
    out = tmp_path / "run"
    proc = _seq("train", "--method", method, "--model", str(model), "--data", str(bad), "--out", str(out), "--quiet")
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and last.startswith(f"pbrl: error: {bad}: {found}") and "Traceback" not in proc.stderr, \
        proc.stderr
    assert not out.exists()


def test_load_refuses_a_file_that_is_not_hdf5_or_empty(tmp_path):
    path = tmp_path / "pairs.h5"
    path.write_text("not hdf5")
    with pytest.raises(DatasetError, match=rf"^{path}: file: got unreadable"):
        load_image_pairs(path, "diffusion_dpo")
    empty = write_image_pairs(tmp_path / "empty.h5", cond=torch.zeros(0, 2), chosen=torch.zeros(0, 1, 8, 8))
    with pytest.raises(DatasetError, match="field 'cond': got 0 rows, expected at least one row"):
        load_image_pairs(empty, "diffusion_sft")


def test_diffusion_train_resumes_bit_exactly_and_writes_a_model(shapes_task, tmp_path):
    def config(method: str) -> DiffusionRunConfig:
        cfg = DiffusionRunConfig(model=str(shapes_task["unet"]), data=str(shapes_task["pairs"]), train_steps=50,
                                 ema_decay=0.5)
        cfg.method.name, cfg.method.sample_steps, cfg.method.dro_refresh = method, 2, 2
        cfg.train.steps, cfg.train.batch_size, cfg.train.checkpoint_every = 6, 4, 3
        return cfg

    for method in ("diffusion_dpo", "dro"):
        train_diffusion(config(method), tmp_path / f"{method}-straight", progress=False)
        train_diffusion(config(method), tmp_path / f"{method}-split", progress=False, stop_at=3)
        train_diffusion(config(method), tmp_path / f"{method}-split", progress=False)
        a = torch.load(tmp_path / f"{method}-straight/checkpoints/step_00000006.pt", weights_only=False)["agent"]
        b = torch.load(tmp_path / f"{method}-split/checkpoints/step_00000006.pt", weights_only=False)["agent"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), method
        assert any(k.startswith("ema.") for k in a)
    assert (tmp_path / "dro-straight/model/weights.pt").is_file()
    with pytest.raises(ConfigError, match="method.beta: stored 0.0, asked 10.0"):
        changed = config("diffusion_dpo")
        changed.method.beta = 10.0
        train_diffusion(changed, tmp_path / "diffusion_dpo-split", progress=False)
    with pytest.raises(ConfigError, match="run.prediction: got 'epsilon', expected 'flow' for flow_dpo"):
        config("flow_dpo").validate()


def test_seq_cli_trains_a_diffusion_method_with_tensorboard_images(shapes_task, tmp_path):
    out = tmp_path / "flow"
    proc = _seq("train", "--method", "flow_dpo", "--model", str(shapes_task["unet"]), "--data",
                str(shapes_task["pairs"]), "--out", str(out), "--steps", "4", "--batch-size", "2", "--beta", "100",
                "--set", "run.prediction='flow'", "--set", "run.sample_every=2", "--set", "train.log_every=2",
                "--set", "run.gradient_checkpointing=true", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["finished"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out))
    events.Reload()
    assert {"rewards/margins", "rewards/accuracies", "train/loss"} <= set(events.Tags()["scalars"])
    assert "samples" in events.Tags()["images"]
    proc = _seq("train", "--method", "diffusion_dpo", "--model", str(shapes_task["unet"]), "--data",
                str(shapes_task["pairs"]), "--out", str(tmp_path / "x"), "--lora", "--quiet")
    assert proc.returncode != 0 and "--lora: got set" in proc.stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------- reward models, guidance, self-play, early stop


@pytest.mark.learning
def test_reward_model_learns_two_heads_with_ties_on_images_and_video(tmp_path, learned, learning_seed):
    from pbrl.sequence.diffusion_reward import load_reward_model, reward_scores, save_reward_model, train_reward_model
    from pbrl.train.loop import TrainConfig

    g = torch.Generator().manual_seed(learning_seed)
    torch.manual_seed(learning_seed)
    prompts = train_prompts() * 12
    kinds_a = [KINDS[int(i)] for i in torch.randint(2, (len(prompts),), generator=g)]
    kinds_b = [KINDS[int(i)] for i in torch.randint(2, (len(prompts),), generator=g)]
    a, b = render_shapes(kinds_a, prompts, generator=g), render_shapes(kinds_b, prompts, generator=g)
    cross = torch.tensor([(x == "cross") - (y == "cross") for x, y in zip(kinds_a, kinds_b)], dtype=torch.float32)
    bright = (a > -0.5).float().mean((1, 2, 3)) - (b > -0.5).float().mean((1, 2, 3))  # more lit pixels
    label = torch.stack([0.5 + cross / 2, torch.where(bright.abs() < 0.01, 0.5, (bright > 0).float())], 1)
    cond = prompt_condition(prompts)
    model = ImageRewardModel(1, 2, heads=2, width=8)
    cfg = TrainConfig(steps=150, batch_size=32, lr=3e-3, weight_decay=0.0, log_every=50, checkpoint_every=150,
                      seed=learning_seed)
    train_reward_model(model, cond, a, b, label, tmp_path / "rm", cfg)
    save_reward_model(model, tmp_path / "rm" / "model")
    loaded = load_reward_model(tmp_path / "rm" / "model")
    ra, rb = reward_scores(loaded, a, cond), reward_scores(loaded, b, cond)
    decided = label[:, 0] != 0.5
    accuracy = ((ra[:, 0] > rb[:, 0]) == (label[:, 0] > 0.5))[decided].float().mean()
    learned.check("cross head's accuracy on decided pairs", accuracy, ">", 0.9)
    assert (label[:, 0] == 0.5).any()
    video = torch.stack([a[:4], a[:4], a[:4]], 2)  # [4, 1, 3, 16, 16]: the same frame thrice scores as the frame
    assert torch.allclose(reward_scores(loaded, video, cond[:4]), ra[:4], atol=1e-5)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_reward_guidance_raises_the_guiding_reward(prediction):
    from pbrl.sequence.diffusion_reward import reward_guidance

    torch.manual_seed(0)
    net, schedule = SmallUNet(1, 2, (8, 16)), NoiseSchedule(prediction, 50)
    bright = ImageRewardModel(1, 2, heads=1, width=4, noisy=True, schedule=schedule)
    cond, noise = torch.zeros(8, 2), torch.randn(8, 1, 8, 8)
    plain = sample(net, schedule, cond, (1, 8, 8), steps=4, noise=noise, clip=None)
    guide = reward_guidance([bright, bright], cond, weights=[0.5, 0.5], scale=5.0, schedule=schedule)
    pushed = sample(net, schedule, cond, (1, 8, 8), steps=4, noise=noise, guidance=guide, clip=None)
    t0 = torch.zeros(8, dtype=torch.long)
    assert bright(pushed, t0, cond).mean() > bright(plain, t0, cond).mean()


def test_x0_drift_is_zero_at_the_reference_and_measure_reports_the_classes_apart():
    import copy

    from pbrl.sequence.shapes_bench import measure_net, x0_drift

    torch.manual_seed(0)
    for prediction in ("epsilon", "flow"):
        net = SmallUNet(1, 2, (8, 16))
        reference = copy.deepcopy(net)
        assert x0_drift(net, reference, prediction, seed=0) == 0.0
        with torch.no_grad():
            next(net.parameters()).add_(0.05)
        assert x0_drift(net, reference, prediction, seed=0) > 0.0
    m = measure_net(SmallUNet(1, 2, (8, 16)), "epsilon", seed=0)  # an untrained net: noise, no shape at all
    assert m["cross"] + m["square"] + m["invalid"] == pytest.approx(1.0)
    assert m["invalid"] == 1.0 and m["preferred"] == 0.0 and m["preferred_among_valid"] == 0.0


def test_self_play_rounds_and_checkpoint_selection(shapes_task, tmp_path):
    from pbrl.sequence.self_play import load_reward_fn, select_checkpoint, self_play

    cfg = DiffusionRunConfig(model=str(shapes_task["unet"]), data=str(shapes_task["pairs"]), train_steps=50)
    cfg.method.name, cfg.method.beta = "diffusion_dpo", 100.0
    cfg.train.steps, cfg.train.batch_size, cfg.train.checkpoint_every, cfg.train.keep_checkpoints = 4, 4, 2, 5
    reward = load_reward_fn("pbrl.sequence.shapes:shape_reward")
    brightness = lambda images, cond: images.mean((1, 2, 3))  # noqa: E731
    rounds = self_play(cfg, brightness, tmp_path / "spro", rounds=2, samples=3, sample_steps=2)
    assert [r.round for r in rounds] == [0, 1] and rounds[1].model.endswith("round_0/run/model")
    assert json.loads((tmp_path / "spro/rounds.json").read_text())[1]["pairs"] == rounds[1].pairs > 0
    # resuming the loop reuses the finished rounds
    again = self_play(cfg, brightness, tmp_path / "spro", rounds=2, samples=3, sample_steps=2)
    assert [vars(r) for r in again] == [vars(r) for r in rounds]
    best, scores = select_checkpoint(tmp_path / "spro/round_0/run", shapes_task["unet"],
                                     lambda net: -sum(p.abs().sum().item() for p in net.parameters()))
    assert set(scores) == {2, 4} and best in scores
    assert reward(render_shapes(["cross"], [(4, 0.6)], generator=torch.Generator()),
                  prompt_condition([(4, 0.6)])).tolist() == [2.0]
    with pytest.raises(ConfigError, match="reward: got 'nope'"):
        load_reward_fn("nope")
    # a reward that ties every sample makes no pair: the round trains nothing and hands its model on
    flat = self_play(cfg, lambda images, cond: torch.zeros(len(images)), tmp_path / "flat", rounds=2, samples=2,
                     sample_steps=2)
    assert [r.pairs for r in flat] == [0, 0] and flat[1].result == flat[0].model == str(shapes_task["unet"])
    assert not (tmp_path / "flat/round_0/run").exists()
    # the RAFT-style baseline: the same rounds, SFT on each round's winners
    cfg.method.name = "diffusion_sft"
    raft = self_play(cfg, brightness, tmp_path / "raft", rounds=1, samples=3, sample_steps=2)
    assert raft[0].pairs > 0 and json.loads((tmp_path / "raft/round_0/run/metrics.json").read_text())["method"] == \
        "diffusion_sft"
    # a noisy annotator reverses pairs: some winners are then the darker image
    noisy = self_play(cfg, brightness, tmp_path / "noisy", rounds=1, samples=8, sample_steps=2, flip_rate=0.4)
    clean, flipped = (load_image_pairs(tmp_path / name / "round_0/pairs.h5", "diffusion_dpo") for name in ("raft", "noisy"))
    margin = lambda d: d.chosen.mean((1, 2, 3)) - d.rejected.mean((1, 2, 3))  # noqa: E731
    assert (margin(clean) > 0).all() and 0 < (margin(flipped) < 0).sum() < noisy[0].pairs
    with pytest.raises(ConfigError, match=r"self_play.flip_rate: stored 0.4, asked 0.2"):  # resumed otherwise
        self_play(cfg, brightness, tmp_path / "noisy", rounds=2, samples=8, sample_steps=2, flip_rate=0.2)
    with pytest.raises(ConfigError, match=r"flip_rate: got 0.5, expected in \[0, 0.5\)"):
        self_play(cfg, brightness, tmp_path / "bad", rounds=1, flip_rate=0.5)
    # the controls keep the samples and break the signal; epochs size each round by its own pairs
    swapped = self_play(cfg, brightness, tmp_path / "swapped", rounds=1, samples=8, sample_steps=2, labels="swapped",
                        epochs=2.0)
    reversed_pairs = load_image_pairs(tmp_path / "swapped/round_0/pairs.h5", "diffusion_dpo")
    assert (margin(reversed_pairs) < 0).all()
    net = SmallUNet(1, 2, (8, 16))  # run.warmup_steps reaches the learner's optimiser (the retest's warm-up)
    learner = DiffusionLearner(net, SmallUNet(1, 2, (8, 16)), NoiseSchedule("epsilon", 50), cfg.method, warmup_steps=7)
    assert learner.optimizers()["policy"].warmup_steps == 7
    assert swapped[0].steps == math.ceil(2.0 * swapped[0].pairs / cfg.train.batch_size) and \
        json.loads((tmp_path / "swapped/round_0/run/metrics.json").read_text())["steps"] == swapped[0].steps
    self_play(cfg, brightness, tmp_path / "random", rounds=1, samples=8, sample_steps=2, labels="random", epochs=1.0)
    coin = margin(load_image_pairs(tmp_path / "random/round_0/pairs.h5", "diffusion_dpo"))
    assert (coin < 0).any() and (coin > 0).any()
    with pytest.raises(ConfigError, match=r"labels: got 'shuffled', expected one of \['reward', 'swapped', 'random'\]"):
        self_play(cfg, brightness, tmp_path / "bad", rounds=1, labels="shuffled")
    with pytest.raises(ConfigError, match=r"epochs: got 0.0, expected a number > 0"):
        self_play(cfg, brightness, tmp_path / "bad", rounds=1, epochs=0.0)
    assert not (tmp_path / "bad").exists()
    cfg.method.name = "spo"
    with pytest.raises(ConfigError, match=r"method.name: got 'spo', expected one of \['diffusion_dpo'"):
        self_play(cfg, brightness, tmp_path / "spo", rounds=1, samples=3, sample_steps=2)


# ---------------------------------------------------------------- learning check of the objective (DESIGN §7.5)


@pytest.mark.slow
@pytest.mark.learning
def test_diffusion_dpo_learns_the_preference_in_its_implicit_reward(tmp_path, learned, learning_seed):
    """A SmallUNet is first fitted to both shapes (the reference), then trained by Diffusion-DPO on noisy pairs (the
    cross chosen, 20 % reversed). On fresh clean pairs at held-out prompts its implicit reward
    −((e_θ^w − e_θ^l) − (e_ref^w − e_ref^l)) (averaged over 8 noise / time draws) ranks the cross first in most
    pairs; with chosen and rejected swapped in the data (the known-bad variant) it ranks the square first. Whether
    samples follow is the benchmark's question (scripts/bench_diffusion.py): on this task they do not. Thresholds from
    scripts/diag/test_margins.py (DESIGN §7.8)."""
    threads = torch.get_num_threads()  # train_diffusion sets train.threads: keep the margin study's float order
    task = write_shapes_task(tmp_path / "task", seed=learning_seed, images_per_prompt=40, pairs_per_prompt=30,
                             widths=(8, 16))
    ref_cfg = DiffusionRunConfig(model=str(task["unet"]), data=str(task["sft"]))
    ref_cfg.method.name = "diffusion_sft"
    ref_cfg.train.steps, ref_cfg.train.batch_size, ref_cfg.train.lr, ref_cfg.train.log_every = 100, 32, 3e-3, 100
    ref_cfg.train.seed, ref_cfg.train.threads = learning_seed, threads
    train_diffusion(ref_cfg, tmp_path / "ref", progress=False)
    pairs = load_image_pairs(task["pairs"], "diffusion_dpo")
    swapped = write_image_pairs(tmp_path / "swapped.h5", cond=pairs.cond, chosen=pairs.rejected, rejected=pairs.chosen)
    fresh = make_shape_pairs(heldout_prompts(), 24, flip_rate=0.0, seed=99 + learning_seed)
    schedule = NoiseSchedule("epsilon")
    accuracy = {}
    for name, data in (("pairs", task["pairs"]), ("swapped", swapped)):
        cfg = DiffusionRunConfig(model=str(tmp_path / "ref" / "model"), data=str(data))
        cfg.method.name = "diffusion_dpo"
        cfg.train.steps, cfg.train.batch_size, cfg.train.lr, cfg.train.log_every = 100, 16, 6e-4, 100
        cfg.train.seed, cfg.train.threads = learning_seed, threads
        train_diffusion(cfg, tmp_path / name, progress=False)
        policy, _ = load_denoiser(tmp_path / name / "model")
        reference, _ = load_denoiser(tmp_path / "ref" / "model")
        g = torch.Generator().manual_seed(learning_seed)
        margins = []
        with torch.no_grad():
            for _ in range(8):
                t, noise = schedule.sample_t(len(fresh.cond), generator=g), torch.randn(fresh.chosen.shape, generator=g)
                e = [denoising_error(net, schedule, x, noise, t, fresh.cond) for net in (policy, reference)
                     for x in (fresh.chosen, fresh.rejected)]
                margins.append(-((e[0] - e[1]) - (e[2] - e[3])))
        accuracy[name] = float((torch.stack(margins).mean(0) > 0).float().mean())
    learned.check("implicit reward accuracy", accuracy["pairs"], ">=", 0.75, context=accuracy)
    learned.check("swapped implicit reward accuracy", accuracy["swapped"], "<", 0.5, bad=True, context=accuracy)


def test_sft_anchor_adds_the_winners_error_to_diffusion_dpo():
    """``method.sft_weight`` λ: the loss is Diffusion-DPO's (float64, from the core function) plus λ · the winners'
    denoising error, on the same t and ε."""
    torch.manual_seed(0)
    net, reference = SmallUNet(1, 2, (8, 16)), SmallUNet(1, 2, (8, 16))
    batch, schedule = _batch(), NoiseSchedule("epsilon", 50)

    def learner_loss(weight: float) -> torch.Tensor:
        cfg = DiffusionMethodConfig(name="diffusion_dpo", beta=100.0, sft_weight=weight)
        learner = DiffusionLearner(net, reference, schedule, cfg, image_shape=(1, 8, 8))
        torch.manual_seed(7)
        return learner.loss(batch, 0).loss

    torch.manual_seed(7)
    e = pair_denoising_errors(net, reference, schedule, batch["chosen"], batch["rejected"], batch["cond"])
    dpo = diffusion_dpo_loss(*(x.double() for x in (e.policy_w, e.policy_l, e.ref_w, e.ref_l)), beta=100.0)
    for weight in (0.0, 3.0):
        expected = (dpo + weight * e.policy_w.double()).mean()
        assert torch.allclose(learner_loss(weight).double(), expected, rtol=1e-5, atol=1e-7)
