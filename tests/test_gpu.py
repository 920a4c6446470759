"""CUDA paths: batches sampled on the GPU, bf16 autocast training, torch.compile. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from pbrl.data.preferences import PreferenceSampler
from pbrl.data.registry import load_dataset
from pbrl.train.config import build_config
from pbrl.train.trainer import Checkpoints, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_sampler_on_gpu_matches_cpu():
    data = load_dataset("hopper-medium-replay-small")
    cpu = PreferenceSampler(data.trajectories, data.preferences, device="cpu", seed=0)
    gpu = PreferenceSampler(data.trajectories, data.preferences, device="cuda", seed=0)
    index = torch.arange(0, 2000, 7)
    a, b = cpu.batch(index), gpu.batch(index.cuda())
    assert b.obs.is_cuda and b.mask.is_cuda
    torch.testing.assert_close(a.obs, b.obs.cpu())
    torch.testing.assert_close(a.mask, b.mask.cpu())


@pytest.mark.parametrize("compile_", [False, True])
def test_cpl_trains_on_cuda_with_bf16(tmp_path, compile_):
    cfg = build_config("cpl", "hopper-medium-replay-small", scale="paper", steps=300, seed=0,
                       overrides=["train.device=cuda", "train.eval_episodes=2", "agent.bc_steps=100",
                                  "train.log_every=50", f"train.compile={str(compile_).lower()}"])
    assert cfg.scale == "paper" and cfg.train.amp
    result = train(cfg, tmp_path / "run", progress=False)
    assert result["normalized_score"] is not None and result["steps"] == 300
    state = torch.load(Checkpoints(tmp_path / "run" / "checkpoints", 1).latest(), weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["agent"].values() if v.is_floating_point())


@pytest.mark.parametrize("agent", ["iql-oracle", "iql-pt"])
def test_transition_agents_train_on_cuda_with_bf16(tmp_path, agent):
    cfg = build_config(agent, "hopper-medium-replay-small", scale="paper", steps=200, seed=0,
                       overrides=["train.device=cuda", "train.eval_episodes=2", "train.log_every=50",
                                  "agent.reward_steps=50"] if agent == "iql-pt" else
                       ["train.device=cuda", "train.eval_episodes=2", "train.log_every=50"])
    result = train(cfg, tmp_path / "run", progress=False)
    assert result["normalized_score"] is not None and result["steps"] == 200
    state = torch.load(Checkpoints(tmp_path / "run" / "checkpoints", 1).latest(), weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["agent"].values() if v.is_floating_point())
