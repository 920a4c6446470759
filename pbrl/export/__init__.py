"""Export a trained policy whole: one graph from observation to bounded action, as ONNX (for ``pbrl.deploy`` and
any ONNX Runtime) and / or TorchScript, beside ``metadata.json`` (spaces, bounds, provenance and each model file's
sha256, which the runtime checks).

What is exported is what the evaluation actor runs: the agent's deterministic action (observation normalisation
included: it is a buffer inside the network), clipped to the action bounds. This version exports MLP policies
(``bc``, ``sft``, ``cpl`` and the IQL family's actor); a transformer policy (its context window) or a diffusion policy
(its sampling loop) is refused in one line.
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

__all__ = ["FORMATS", "BoundedAction", "export_policy", "policy_kind"]

FORMATS = ("onnx", "torchscript")
OPSET = 17
FILES = {"onnx": "policy.onnx", "torchscript": "policy.pt"}


class BoundedAction(nn.Module):
    """``obs [N, obs_dim] -> action [N, act_dim]``: the agent's deterministic action clipped to ``[low, high]``."""

    def __init__(self, agent: nn.Module, low: Tensor, high: Tensor):
        super().__init__()
        self.agent = agent
        self.register_buffer("low", low.float())
        self.register_buffer("high", high.float())

    def forward(self, obs: Tensor) -> Tensor:
        return torch.maximum(torch.minimum(self.agent.act(obs), self.high), self.low)


def policy_kind(agent: nn.Module) -> str:
    """``mlp``, ``transformer`` (a history policy) or ``diffusion`` (an action-chunk policy)."""
    policy = getattr(agent, "policy", None)
    if getattr(policy, "is_sequence", False):
        return "transformer"
    if getattr(policy, "is_chunked", False):
        return "diffusion"
    return "mlp"


def _onnx_bytes(module: nn.Module, example: Tensor) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript-based exporter: onnxscript (the new one's need) is not required
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=OPSET, input_names=["obs"],
                          output_names=["action"], dynamic_axes={"obs": {0: "batch"}, "action": {0: "batch"}})
    return buffer.getvalue()


def _torchscript_bytes(module: nn.Module, example: Tensor) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(module, example), buffer)
    return buffer.getvalue()


def export_policy(agent: nn.Module, out: str | Path, *, obs_dim: int, act_low: Tensor, act_high: Tensor,
                  formats: tuple[str, ...] = FORMATS, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``out/`` with one model file per format (``policy.onnx``, ``policy.pt``) and ``metadata.json``; the
    folder appears whole or not at all (:func:`pbrl.io.write_folder`), and an existing ``out`` is refused.

    ``act_low`` / ``act_high`` ``[act_dim]`` bound the exported action; ``metadata`` (provenance: agent, dataset,
    env, checkpoint, config hash, ...) is stored beside the spaces and each model file's sha256."""
    out = Path(out)
    kind = policy_kind(agent)
    if kind != "mlp":
        raise ConfigError(describe("RUN_DIR", "policy", f"a {kind} policy", "an MLP policy (this version of `pbrl "
                                   "export` does not yet unroll a transformer's window or a diffusion sampler)"))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ConfigError(describe("--format", "format", unknown or "none", f"one or more of {list(FORMATS)}"))
    if out.exists():
        raise ConfigError(describe("--out", "folder", f"{out}, which exists", "a new folder (exports are never "
                                   "overwritten: remove it, or choose another)"))
    device = next(agent.parameters()).device
    module = BoundedAction(agent, act_low.to(device), act_high.to(device)).eval()
    example = torch.zeros(1, obs_dim, device=device)
    with torch.no_grad():
        blobs = {FILES["onnx"]: _onnx_bytes(module, example)} if "onnx" in formats else {}
        if "torchscript" in formats:
            blobs[FILES["torchscript"]] = _torchscript_bytes(module, example)
    meta = {**(metadata or {}), "kind": kind, "obs_dim": int(obs_dim), "act_dim": int(act_low.numel()),
            "action_low": [float(x) for x in act_low], "action_high": [float(x) for x in act_high],
            "inputs": {"obs": ["batch", int(obs_dim)]}, "outputs": {"action": ["batch", int(act_low.numel())]},
            "onnx_opset": OPSET if "onnx" in formats else None,
            "model_sha256": {name: hashlib.sha256(blob).hexdigest() for name, blob in blobs.items()}}

    def write(tmp: Path) -> None:
        for name, blob in blobs.items():
            (tmp / name).write_bytes(blob)
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")

    return write_folder(out, write)
