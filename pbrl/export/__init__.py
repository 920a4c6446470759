"""Export a trained policy whole: one graph from observation to bounded action, as ONNX (for ``pbrl.deploy`` and
any ONNX Runtime) and / or TorchScript, beside ``metadata.json`` (spaces, bounds, provenance and each model file's
sha256, which the runtime checks).

What is exported is what the evaluation actor runs: the agent's deterministic action (observation normalisation
included: it is a buffer inside the network), clipped to the action bounds. MLP policies (``bc``, ``sft``, ``cpl``, the
IQL family's actor) export as ``obs [N, do] -> action [N, da]``; a transformer policy as its window, ``(obs [N, K, do],
act [N, K, da], timestep [N, K], mask [N, K]) -> (action [N, da], raw [N, da])``, whose state (the last ``K`` steps)
``pbrl.deploy`` keeps as the evaluation's ``HistoryActor`` does (``raw``, the unclipped action, goes back into the
window, as there). A diffusion policy exports its acting module (the EMA copy) with its whole DDIM loop unrolled
and the initial noise as an input, ``(obs [N, n_obs, do], noise [N, H, da]) -> chunk [N, H, da]``; the runtime keeps
the observation ring and the action queue as ``ChunkActor`` does and draws the noise from the same seeded numpy
streams (:mod:`pbrl.deploy.noise`). The SB3 actor-critic policies of the
Overcooked commands (PPO, the hybrid agent, the BC human model) export as ``obs [N, do] -> probs [N, n_actions]``
(:func:`export_sb3_policy`); the runtime samples from the probabilities as ``PolicyPartner`` does.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pbrl.errors import ConfigError, describe
from pbrl.io import write_folder

__all__ = ["FORMATS", "BoundedAction", "BoundedChunk", "BoundedWindowAction", "CategoricalProbs", "check_request", "export_policy",
           "export_sb3_policy", "policy_kind"]

FORMATS = ("onnx", "torchscript")
OPSET = 17
FILES = {"onnx": "policy.onnx", "torchscript": "policy.pt"}


class Bounded(nn.Module):
    """The action bounds ``[act_dim]`` as buffers (they travel with the graph) and the clip to them."""

    def __init__(self, low: Tensor, high: Tensor):
        super().__init__()
        self.register_buffer("low", low.float())
        self.register_buffer("high", high.float())

    def clip(self, action: Tensor) -> Tensor:
        return torch.maximum(torch.minimum(action, self.high), self.low)


class BoundedAction(Bounded):
    """``obs [N, obs_dim] -> action [N, act_dim]``: the agent's deterministic action clipped to ``[low, high]``."""

    def __init__(self, agent: nn.Module, low: Tensor, high: Tensor):
        super().__init__(low, high)
        self.agent = agent

    def forward(self, obs: Tensor) -> Tensor:
        return self.clip(self.agent.act(obs))


class BoundedWindowAction(Bounded):
    """A history policy's window -> (its action clipped to ``[low, high]``, the action itself)."""

    def __init__(self, policy: nn.Module, low: Tensor, high: Tensor):
        super().__init__(low, high)
        self.policy = policy

    def forward(self, obs: Tensor, act: Tensor, timestep: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        raw = self.policy(obs, act, timestep, mask)
        return self.clip(raw), raw


class BoundedChunk(Bounded):
    """An action-chunk policy's sampler, unrolled: ``(obs [N, n_obs, do], noise [N, H, da]) -> chunk [N, H, da]``, the
    fixed-length DDIM loop from the given noise, clipped to ``[low, high]``."""

    def __init__(self, policy: nn.Module, low: Tensor, high: Tensor):
        super().__init__(low, high)
        self.policy = policy

    def forward(self, obs: Tensor, noise: Tensor) -> Tensor:
        return self.clip(self.policy(obs, noise))


class CategoricalProbs(nn.Module):
    """An SB3 actor-critic policy's action probabilities: features -> actor latent -> action logits -> softmax."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy

    def forward(self, obs: Tensor) -> Tensor:
        p = self.policy
        features = p.features_extractor(obs) if p.share_features_extractor else p.pi_features_extractor(obs)
        return torch.softmax(p.action_net(p.mlp_extractor.forward_actor(features)), dim=-1)


def check_request(out: Path, formats: tuple[str, ...]) -> None:
    """Refuse unknown formats and an existing ``out`` (an export is never overwritten), before any work."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ConfigError(describe("--format", "format", unknown or "none", f"one or more of {list(FORMATS)}"))
    if out.exists():
        raise ConfigError(describe("--out", "folder", f"{out}, which exists", "a new folder (exports are never "
                                   "overwritten: remove it, or choose another)"))


def _write_export(out: Path, blobs: dict[str, bytes], meta: dict[str, Any]) -> Path:
    """``out/`` with the model files and ``metadata.json`` (each file's sha256 added), whole or not at all."""
    meta = {**meta, "model_sha256": {name: hashlib.sha256(blob).hexdigest() for name, blob in blobs.items()}}

    def write(tmp: Path) -> None:
        for name, blob in blobs.items():
            (tmp / name).write_bytes(blob)
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")

    return write_folder(out, write)


def policy_kind(agent: nn.Module) -> str:
    """``mlp``, ``transformer`` (a history policy) or ``diffusion`` (an action-chunk policy)."""
    policy = getattr(agent, "policy", None)
    if getattr(policy, "is_sequence", False):
        return "transformer"
    if getattr(policy, "is_chunked", False):
        return "diffusion"
    return "mlp"


def _onnx_bytes(module: nn.Module, example: tuple[Tensor, ...], inputs: list[str], outputs: list[str]) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript-based exporter: onnxscript (the new one's need) is not required
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, buffer, dynamo=False, opset_version=OPSET, input_names=inputs,
                          output_names=outputs, dynamic_axes={name: {0: "batch"} for name in inputs + outputs})
    return buffer.getvalue()


def _torchscript_bytes(module: nn.Module, example: tuple[Tensor, ...]) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(module, example, check_trace=False), buffer)  # the tests compare outputs
    return buffer.getvalue()


def export_policy(agent: nn.Module, out: str | Path, *, obs_dim: int, act_low: Tensor, act_high: Tensor,
                  formats: tuple[str, ...] = FORMATS, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``out/`` with one model file per format (``policy.onnx``, ``policy.pt``) and ``metadata.json``; the
    folder appears whole or not at all (:func:`pbrl.io.write_folder`), and an existing ``out`` is refused.

    ``act_low`` / ``act_high`` ``[act_dim]`` bound the exported action; ``metadata`` (provenance: agent, dataset,
    env, checkpoint, config hash, ...) is stored beside the spaces and each model file's sha256."""
    out = Path(out)
    kind = policy_kind(agent)
    check_request(out, formats)
    device = next(agent.parameters()).device
    low, high, act_dim = act_low.to(device), act_high.to(device), int(act_low.numel())
    io_shapes: dict[str, Any] = {}
    if kind == "mlp":
        module: nn.Module = BoundedAction(agent, low, high).eval()
        example: tuple[Tensor, ...] = (torch.zeros(1, obs_dim, device=device),)
        inputs, outputs = ["obs"], ["action"]
        io_shapes = {"inputs": {"obs": ["batch", obs_dim]}, "outputs": {"action": ["batch", act_dim]}}
    elif kind == "diffusion":
        acting, n_action = agent.chunk_acting()
        p = agent.policy
        module = BoundedChunk(acting, low, high).eval()
        example = (torch.zeros(1, p.n_obs, obs_dim, device=device), torch.zeros(1, p.horizon, act_dim, device=device))
        inputs, outputs = ["obs", "noise"], ["chunk"]
        io_shapes = {"n_obs": p.n_obs, "horizon": p.horizon, "n_action": int(n_action),
                     "sample_steps": p.sample_steps, "prediction": p.prediction,
                     "acting_module": "ema" if acting is not p else "policy",
                     "noise": "standard normal, float32: numpy.random.default_rng([seed, env]).standard_normal("
                              "[horizon, act_dim]) per chunk (pbrl.deploy.noise.ChunkNoise)",
                     "inputs": {"obs": ["batch", p.n_obs, obs_dim], "noise": ["batch", p.horizon, act_dim]},
                     "outputs": {"chunk": ["batch", p.horizon, act_dim]}}
    else:
        context = int(agent.policy.context)
        module = BoundedWindowAction(agent.policy, low, high).eval()
        example = (torch.zeros(1, context, obs_dim, device=device), torch.zeros(1, context, act_dim, device=device),
                   torch.zeros(1, context, dtype=torch.long, device=device),
                   torch.ones(1, context, dtype=torch.bool, device=device))
        inputs, outputs = ["obs", "act", "timestep", "mask"], ["action", "raw"]
        io_shapes = {"context": context,
                     "inputs": {"obs": ["batch", context, obs_dim], "act": ["batch", context, act_dim],
                                "timestep": ["batch", context], "mask": ["batch", context]},
                     "outputs": {"action": ["batch", act_dim], "raw": ["batch", act_dim]}}
    with torch.no_grad():
        blobs = {FILES["onnx"]: _onnx_bytes(module, example, inputs, outputs)} if "onnx" in formats else {}
        if "torchscript" in formats:
            blobs[FILES["torchscript"]] = _torchscript_bytes(module, example)
    meta = {**(metadata or {}), "kind": kind, "obs_dim": int(obs_dim), "act_dim": act_dim,
            "action_low": [float(x) for x in act_low], "action_high": [float(x) for x in act_high], **io_shapes,
            "onnx_opset": OPSET if "onnx" in formats else None}

    return _write_export(out, blobs, meta)


def export_sb3_policy(policy: nn.Module, out: str | Path, *, formats: tuple[str, ...] = FORMATS,
                      metadata: dict[str, Any] | None = None) -> Path:
    """An SB3 ``ActorCriticPolicy`` over a discrete action space (the Overcooked runs' ``model.zip`` / ``policy.pt``) as
    ``obs [N, do] -> probs [N, n_actions]``, written as :func:`export_policy` writes."""
    out = Path(out)
    check_request(out, formats)
    obs_dim, n_actions = int(policy.observation_space.shape[0]), int(policy.action_space.n)
    module = CategoricalProbs(policy).eval()
    example = (torch.zeros(1, obs_dim),)
    with torch.no_grad():
        blobs = {FILES["onnx"]: _onnx_bytes(module, example, ["obs"], ["probs"])} if "onnx" in formats else {}
        if "torchscript" in formats:
            blobs[FILES["torchscript"]] = _torchscript_bytes(module, example)
    meta = {**(metadata or {}), "kind": "categorical", "obs_dim": obs_dim, "n_actions": n_actions,
            "inputs": {"obs": ["batch", obs_dim]}, "outputs": {"probs": ["batch", n_actions]},
            "onnx_opset": OPSET if "onnx" in formats else None}

    return _write_export(out, blobs, meta)
