"""pbrl.sequence on a CUDA device (skipped without one): ``pbrl seq train``'s language-model and diffusion paths
in bf16 autocast, with bf16 weights, EMA and gradient checkpointing, resuming from a checkpoint; the same loss on
CPU and on the device. Apart from ``test_gpu.py`` because these need no simulator, only the ``sequence`` extra."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
pytest.importorskip("transformers")

from pbrl.sequence.data import collate_pairs, load_pairs, tokenize_pairs  # noqa: E402
from pbrl.sequence.lm import Reference  # noqa: E402
from pbrl.sequence.objectives import MethodConfig, SequenceLearner  # noqa: E402
from pbrl.sequence.synthetic import make_task, write_tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def grammar(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("grammar")
    paths = make_task(seed=0, train_prompts=40, heldout_prompts=10, sft_per_prompt=2, pairs_per_prompt=2).write(d)
    write_tiny_model(d / "model", layers=2, width=64)
    return {**paths, "model": d / "model"}


def _straight_and_resumed(train, config, out: Path) -> dict[str, torch.Tensor]:
    """``train`` for 20 steps in one go and in two calls (stopped at 10, resumed); both finish on finite weights
    that agree (cuBLAS picks the same kernels for the same shapes). Returns the straight run's final state."""
    straight = train(config(), out / "straight", progress=False)
    train(config(), out / "split", progress=False, stop_at=10)
    split = train(config(), out / "split", progress=False)
    assert straight.finished and split.finished and split.start_step == 10
    a, b = (torch.load(out / run / "checkpoints/step_00000020.pt", weights_only=False)["agent"]
            for run in ("straight", "split"))
    assert all(torch.isfinite(v).all() for v in a.values() if v.is_floating_point())
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-3) for k in a)
    return a


@pytest.mark.parametrize("method", ["dpo", "tgdpo", "isq"])
def test_lm_loss_is_the_same_on_cpu_and_cuda(grammar, method):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(grammar["model"])
    batch = collate_pairs(tokenize_pairs(load_pairs(grammar["pairs"]), tok, max_length=32), torch.arange(8),
                          tok.pad_token_id)
    losses = []
    for device in ("cpu", "cuda"):
        policy = AutoModelForCausalLM.from_pretrained(grammar["model"]).to(device)
        reference = Reference.frozen_copy(policy)
        torch.manual_seed(1)
        with torch.no_grad():  # move the policy off the reference, the same way on both devices
            for p in policy.parameters():
                p.add_(0.05 * torch.randn(p.shape).to(device))
        frozen = {"guide": Reference.frozen_copy(policy).model} if method == "tgdpo" else {}
        learner = SequenceLearner(policy, MethodConfig(name=method, guide="guide" if frozen else ""), reference, frozen)
        torch.manual_seed(2)
        losses.append(learner.loss(batch.to(torch.device(device)), 0).total().item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_seq_train_runs_on_cuda_in_bf16_and_resumes(grammar, tmp_path, dtype):
    from pbrl.sequence.train import SeqRunConfig, train_sequence

    def config() -> SeqRunConfig:
        cfg = SeqRunConfig(model=str(grammar["model"]), data=str(grammar["pairs"]), max_length=32, dtype=dtype)
        cfg.method.name = "dpo"
        cfg.train.steps, cfg.train.batch_size, cfg.train.checkpoint_every, cfg.train.grad_accum = 20, 8, 10, 2
        cfg.train.device, cfg.train.amp, cfg.train.log_every = "cuda", True, 5
        return cfg

    _straight_and_resumed(train_sequence, config, tmp_path)
    assert json.loads((tmp_path / "straight/metrics.json").read_text())["steps"] == 20


def _unet_json(path: Path, diffusers: bool) -> Path:
    if diffusers:
        config = {"_class_name": "UNet2DConditionModel", "sample_size": 16, "in_channels": 1, "out_channels": 1,
                  "layers_per_block": 1, "block_out_channels": [16, 32], "norm_num_groups": 8,
                  "attention_head_dim": 4, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "cross_attention_dim": 2}
    else:
        config = {"_class_name": "SmallUNet", "channels": 1, "cond_dim": 2, "widths": [16, 32], "emb_dim": 64}
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("method, diffusers", [("diffusion_dpo", True), ("flow_dpo", False), ("dro", False)])
def test_diffusion_train_runs_on_cuda_with_bf16_ema_and_checkpointing(tmp_path, method, diffusers):
    if diffusers:
        pytest.importorskip("diffusers")
    from pbrl.sequence.diffusion_train import DiffusionRunConfig, train_diffusion
    from pbrl.sequence.shapes import write_shapes_task

    task = write_shapes_task(tmp_path / "shapes", images_per_prompt=2, pairs_per_prompt=4)

    def config() -> DiffusionRunConfig:
        cfg = DiffusionRunConfig(model=str(_unet_json(tmp_path / "unet.json", diffusers)), data=str(task["pairs"]),
                                 ema_decay=0.9, gradient_checkpointing=True, sample_every=10,
                                 prediction="flow" if method == "flow_dpo" else "epsilon")
        cfg.method.name, cfg.method.sample_steps, cfg.method.dro_refresh = method, 4, 5
        cfg.train.steps, cfg.train.batch_size, cfg.train.checkpoint_every = 20, 8, 10
        cfg.train.device, cfg.train.amp, cfg.train.log_every = "cuda", True, 5
        return cfg

    state = _straight_and_resumed(train_diffusion, config, tmp_path)
    assert any(k.startswith("ema.") for k in state)
    assert list((tmp_path / "straight").glob("**/events.out.tfevents.*"))  # scalars and the image grid
