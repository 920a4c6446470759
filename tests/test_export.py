"""`pbrl export` and the torch-free runtime `pbrl.deploy` (issue 33: MLP, transformer, diffusion and Overcooked SB3 policies): the exported graph
acts as the trained agent does, the runtime refuses what it cannot trust, and it imports without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, run_cli

SHIPPED = "hopper-medium-replay-small"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """A 20-step BC run (tanh-Gaussian head: bounded actions) and its export in both formats."""
    folder = tmp_path_factory.mktemp("export")
    run = folder / "bc"
    r = run_cli("train", "--agent", "bc", "--dataset", SHIPPED, "--steps", "20", "--out", str(run), "--scale", "cpu",
                "--set", "train.eval_episodes=0", "--quiet")
    assert r.returncode == 0, r.stderr
    r = run_cli("export", str(run), "--out", str(folder / "exp"))
    assert r.returncode == 0, r.stderr
    return {"run": run, "export": folder / "exp"}


def test_onnx_and_torchscript_act_as_the_agent_does(exported):
    """ONNX Runtime (through pbrl.deploy) and TorchScript against the agent's own deterministic action, float32,
    on 1,000 observations drawn around the dataset's: max abs difference <= 1e-5."""
    from pbrl.deploy import Policy
    from pbrl.train.trainer import load_run

    _, agent, data = load_run(exported["run"], "cpu")
    rng = np.random.default_rng(0)
    obs = data.trajectories.observations[rng.choice(len(data.trajectories.observations), 1000)]
    obs = (obs + 0.1 * rng.standard_normal(obs.shape)).astype(np.float32)
    with torch.no_grad():
        expected = agent.act(torch.as_tensor(obs)).clamp(-1, 1).numpy()
    policy = Policy.load(exported["export"])
    assert np.abs(policy.act(obs) - expected).max() <= 1e-5
    assert np.abs(policy.act(obs[0]) - expected[0]).max() <= 1e-5 and policy.act(obs[0]).shape == (3,)
    scripted = torch.jit.load(str(exported["export"] / "policy.pt"))
    with torch.no_grad():
        assert np.abs(scripted(torch.as_tensor(obs)).numpy() - expected).max() <= 1e-5
    meta = json.loads((exported["export"] / "metadata.json").read_text())
    assert meta["kind"] == "mlp" and meta["obs_dim"] == 11 and meta["act_dim"] == 3 and meta["env_id"] == "Hopper-v5"
    assert meta["control_rate_hz"] == pytest.approx(125.0) and meta["checkpoint"] == "step_00000020.pt"
    assert set(meta["model_sha256"]) == {"policy.onnx", "policy.pt"} and meta["dataset_sha256"]["trajectories"]


@pytest.mark.parametrize("obs, needle", [(np.zeros(5), "obs: shape: got (5,)"),
                                         (np.full(11, np.nan), "obs: values: got non-finite"),
                                         (np.array(["a"] * 11), "obs: dtype")])
def test_the_runtime_refuses_bad_observations_in_one_line(exported, obs, needle):
    from pbrl.deploy import Policy
    from pbrl.errors import PbrlError

    with pytest.raises(PbrlError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        Policy.load(exported["export"]).act(obs)


def test_a_changed_model_or_missing_file_is_refused(exported, tmp_path):
    import shutil

    from pbrl.deploy import Policy
    from pbrl.errors import PbrlError

    copy = tmp_path / "copy"
    shutil.copytree(exported["export"], copy)
    with open(copy / "policy.onnx", "r+b") as f:  # one byte flipped: a damaged or swapped model
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(PbrlError, match="policy.onnx: sha256: got"):
        Policy.load(copy)
    (copy / "policy.onnx").unlink()
    with pytest.raises(PbrlError, match="policy.onnx: file: got missing"):
        Policy.load(copy)


def test_export_refuses_an_existing_out_a_run_without_a_checkpoint_and_a_missing_step(exported, tmp_path):
    before = sorted(p.name for p in exported["export"].iterdir())
    r = run_cli("export", str(exported["run"]), "--out", str(exported["export"]))
    assert r.returncode == 2 and "--out: folder" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in exported["export"].iterdir()) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.toml").write_text((exported["run"] / "config.toml").read_text())
    r = run_cli("export", str(empty), "--out", str(tmp_path / "exp"))
    assert r.returncode == 2 and "checkpoint: got none" in r.stderr and not (tmp_path / "exp").exists()
    r = run_cli("export", str(exported["run"]), "--checkpoint", "5", "--out", str(tmp_path / "exp"))
    assert r.returncode == 2 and "--checkpoint: step: got 5, expected one of the run's checkpoints [20]" in r.stderr
    assert not (tmp_path / "exp").exists()
    r = run_cli("export", str(exported["run"]), "--checkpoint", "20", "--format", "onnx", "--out", str(tmp_path / "exp"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "exp" / "metadata.json").read_text())["checkpoint"] == "step_00000020.pt"


def test_the_runtime_imports_and_acts_without_torch(exported):
    """pbrl.deploy on a machine without torch: a process where `import torch` raises loads and runs the export."""
    code = ("import sys, importlib.abc\n"
            "class NoTorch(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch' or name.startswith('torch.'):\n"
            "            raise ImportError('torch is not installed here')\n"
            "sys.meta_path.insert(0, NoTorch())\n"
            "import numpy as np\n"
            "from pbrl.deploy import Policy\n"
            f"p = Policy.load({str(exported['export'])!r})\n"
            "p.reset()\n"
            "a = p.act(np.zeros(11, dtype=np.float32))\n"
            "assert a.shape == (3,) and 'torch' not in sys.modules\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_the_readme_robot_loop_runs(exported, monkeypatch):
    """The README's robot-loop example, as printed there, on this export: it loads this export, asks the policy for
    an action at every one of its 1,000 steps, and sends the simulator finite actions within the bounds."""
    from pbrl.deploy import Policy

    sent: list[np.ndarray] = []
    act = Policy.act
    monkeypatch.setattr(Policy, "act", lambda self, obs: sent.append(act(self, obs)) or sent[-1])
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- robot-loop -->")[1].split("<!-- /robot-loop -->")[0]
    code = block.split("```python")[1].split("```")[0].replace('"exports/cpl"', repr(str(exported["export"])))
    namespace: dict = {}
    exec(compile(code, "README.md (robot loop)", "exec"), namespace)
    assert namespace["policy"].path == exported["export"]
    assert len(sent) == 1000 and all(a.shape == (3,) and np.isfinite(a).all() for a in sent)
    actions = np.stack(sent)
    assert actions.min() >= -1 and actions.max() <= 1 and np.ptp(actions, axis=0).min() > 0  # they follow the state
    assert namespace["observation"].shape == (11,)


def test_deploy_runs_the_loop_and_writes_its_log_and_report(exported, tmp_path):
    log = tmp_path / "steps.jsonl"
    r = run_cli("deploy", str(exported["export"]), "--env", "hopper", "--rate", "250", "--max-steps", "25",
                "--log", str(log))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert 1 <= len(rows) <= 25 and all(-1 <= a <= 1 for row in rows for a in row["action"])
    assert all(row["action_sent"] >= row["tick"] for row in rows)
    report = json.loads((tmp_path / "steps.report.json").read_text())
    assert report["steps"] == len(rows) and report["target_rate_hz"] == 250 and "p99" in report["inference_ms"]
    assert "cadence: target 250 Hz" in r.stdout
    r = run_cli("deploy", str(exported["export"]), "--env", "hopper", "--log", str(log))  # an existing log
    assert r.returncode == 2 and "--log" in r.stderr


def test_the_watchdog_sends_the_safe_action_at_the_deadline_while_inference_runs(exported, tmp_path):
    """Inference slowed to 60 ms on steps 3 and 4 of a 50-Hz loop (20-ms deadlines): those ticks send the safe
    action (zeros) at their deadline, before the late inference ends, and the misses are counted."""
    import time

    import gymnasium as gym

    from pbrl.deploy import ControlLoop, Policy

    policy = Policy.load(exported["export"])
    calls = {"n": 0}
    fast = policy.act

    def slow_act(obs):
        calls["n"] += 1
        if calls["n"] in (4, 5):
            time.sleep(0.06)
        return fast(obs)

    policy.act = slow_act
    env = gym.make("Hopper-v5")
    log = tmp_path / "steps.jsonl"
    report = ControlLoop(policy, env, rate_hz=50, max_steps=12).run(1, seed=0, log=log)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    missed = [r for r in rows if r["missed"]]
    assert report.missed_deadlines == len(missed) >= 2
    for row in missed:
        assert row["action"] == [0.0, 0.0, 0.0]  # the safe action
        # at the deadline (20 ms; slack for a busy machine), not when the 60-ms inference ended
        assert row["action_sent"] - row["tick"] <= 0.045
    late_done = [r["inference_done"] for r in rows if r["inference_done"] is not None
                 and r["step"] > missed[0]["step"]]
    assert late_done and min(late_done) > missed[0]["action_sent"]  # inference was still running when it was sent


def test_eval_of_the_export_gives_the_runs_returns_on_the_same_seeds(exported):
    """`pbrl eval EXPORT_DIR` (ONNX Runtime) against `pbrl eval RUN_DIR` (PyTorch), 3 episodes on the same env seeds:
    the same returns within 2 % (float differences may grow through the simulator's chaos)."""
    r = run_cli("eval", str(exported["export"]), "--episodes", "3")
    assert r.returncode == 0, r.stderr
    ours = json.loads((exported["export"] / "eval-export-3ep-seed100000.json").read_text())
    r = run_cli("eval", str(exported["run"]), "--episodes", "3")
    assert r.returncode == 0, r.stderr
    run = json.loads((exported["run"] / "eval-step20-3ep-seed100000.json").read_text())
    assert ours["runtime"] == "onnxruntime" and len(ours["returns"]) == 3
    np.testing.assert_allclose(ours["returns"], run["returns"], rtol=0.02)


def side_by_side(actor, policy, *, episodes: int, max_steps: int) -> tuple[float, int, np.ndarray]:
    """Hopper episodes (seeds 0, 1, ...) driven by the evaluation actor, the runtime ``policy`` asked at every step
    too, both reset at each episode's start: (the largest action difference, steps, the last observation)."""
    import gymnasium as gym

    env = gym.make("Hopper-v5")
    worst, steps = 0.0, 0
    for episode in range(episodes):
        obs, _ = env.reset(seed=episode)
        policy.reset()
        actor.reset(np.ones(1, dtype=bool))
        for _ in range(max_steps):
            expected = np.clip(actor(obs[None].astype(np.float32))[0], -1, 1)
            action = policy.act(obs)
            worst, steps = max(worst, float(np.abs(action - expected).max())), steps + 1
            obs, _, terminated, truncated, _ = env.step(expected)
            if terminated or truncated:
                break
    env.close()
    return worst, steps, obs


@pytest.mark.parametrize("agent, sets", [
    ("bc", ["agent.backbone=transformer", "agent.seq_layers=1"]),
    ("oppo", ["agent.seq_layers=1", "agent.encoder_layers=1", "agent.seq_heads=2"])])  # π(a | s, z*), z* folded in
def test_a_transformer_policy_exports_with_its_window_and_acts_as_the_history_actor(tmp_path, agent, sets):
    """A transformer run (context 8; BC, and OPPO's contextual policy): through whole Hopper episodes, the runtime's
    own window (pbrl.deploy) gives the evaluation's HistoryActor's actions within 1e-5 at every step, across a
    reset."""

    from pbrl.deploy import Policy
    from pbrl.train.trainer import actor_policy, load_run

    run = tmp_path / "tf"
    r = run_cli("train", "--agent", agent, "--dataset", SHIPPED, "--steps", "10", "--out", str(run), "--scale", "cpu",
                "--set", "train.eval_episodes=0", "--set", "agent.context=8", "--set", "agent.seq_dim=32",
                *[arg for kv in sets for arg in ("--set", kv)], "--quiet")
    assert r.returncode == 0, r.stderr
    r = run_cli("export", str(run), "--out", str(tmp_path / "exp"))
    assert r.returncode == 0, r.stderr
    _, agent, _ = load_run(run, "cpu")
    actor = actor_policy(agent, 1, torch.device("cpu"))
    policy = Policy.load(tmp_path / "exp")
    assert policy.context == 8
    worst, steps, _ = side_by_side(actor, policy, episodes=2, max_steps=40)
    assert steps > 16 and worst <= 1e-5


def test_an_overcooked_ppo_policy_exports_and_samples_as_the_partner_does(tmp_path):
    """An SB3 PPO policy of `pbrl overcooked ppo` (a tiny run): the export's probabilities equal SB3's within 1e-5 on
    1,000 observations, and the runtime's sampled actions, on the same seed, are PolicyPartner's."""
    pytest.importorskip("overcooked")
    from pbrl.deploy import Policy
    from pbrl.train.overcooked import PolicyPartner

    run = tmp_path / "ppo"
    r = run_cli("overcooked", "ppo", "--layout", "cramped_room", "--steps", "300", "--out", run, "--quiet",
                "--set", "ppo.n_games=1", "--set", "ppo.n_epochs=1", "--set", "ppo.hidden=[8]")
    assert r.returncode == 0, r.stderr
    r = run_cli("export", str(run), "--out", str(tmp_path / "exp"))
    assert r.returncode == 0, r.stderr
    partner = PolicyPartner.load(run, seed=3)
    policy = Policy.load(tmp_path / "exp", seed=3)
    obs = np.random.default_rng(0).standard_normal((1000, policy.obs_dim)).astype(np.float32)
    probs = policy.session.run(None, {"obs": obs})[0]
    assert np.abs(probs - partner.probabilities(obs)).max() <= 1e-5
    assert np.array_equal(policy.act(obs), partner(obs))
    meta = json.loads((tmp_path / "exp" / "metadata.json").read_text())
    assert meta["kind"] == "categorical" and meta["n_actions"] == 6 and meta["layout"] == "cramped_room"


def diffusion_agent(*overrides: str):
    """A BC agent with a small diffusion policy (horizon 8, 10 DDIM steps) at its initial weights: the exported
    graph's equality does not depend on what the weights learned."""
    from pbrl.data.registry import load_dataset
    from pbrl.train.config import build_config
    from pbrl.train.trainer import build_agent

    torch.manual_seed(0)
    cfg = build_config("bc", SHIPPED, scale="cpu", steps=1, overrides=[
        "agent.backbone=diffusion", "agent.horizon=8", "agent.n_action=4", "train.eval_episodes=0", *overrides])
    return build_agent(cfg, load_dataset(SHIPPED, preferences=False)).eval()


def float64_chunks(policy, obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """The same DDIM chain in float64: the yardstick of float32's own rounding."""
    import copy

    import pbrl.nets.diffusion as nets

    embed = nets.timestep_embedding
    policy64 = copy.deepcopy(policy).double()
    try:  # the step embedding is built in float32 on purpose; here it follows the float64 chain
        nets.timestep_embedding = lambda k, dim: embed(k, dim).double()
        with torch.no_grad():
            return policy64.sample(torch.as_tensor(obs).double(), noise=torch.as_tensor(noise).double()).numpy()
    finally:
        nets.timestep_embedding = embed


def test_a_diffusion_policy_exports_its_whole_sampler_with_the_noise_as_input(tmp_path):
    """The EMA policy's DDIM loop in one graph, ``(obs, noise) -> chunk``, over 1,000 observations with the same noise.
    v-prediction (the U-Net denoiser, 4 DDIM steps: its unrolled export takes seconds a step): ONNX Runtime and TorchScript within 1e-5 of PyTorch. ε-prediction: the first DDIM step divides
    by √ᾱ of the last training step (cosine schedule: √2.4e-7 ≈ 5e-4), so float32 rounding (the denoiser's outputs
    agree within 1e-5) grows ~2,000× in any float32 runtime, PyTorch's own included: there (the MLP denoiser) the
    ONNX export is held to PyTorch's own float32 error against the float64 chain, and TorchScript (the same kernels)
    to 1e-5."""
    import onnxruntime as ort

    from pbrl.export import export_policy

    rng = np.random.default_rng(0)
    obs = rng.standard_normal((1000, 2, 11)).astype(np.float32)
    noise = rng.standard_normal((1000, 8, 3)).astype(np.float32)
    for prediction, denoiser in (("v", ["agent.denoiser=unet1d", "agent.channels=[16, 32]", "agent.sample_steps=4"]),
                                 ("epsilon", ["agent.hidden_layers=[64, 64]"])):
        agent = diffusion_agent(f"agent.prediction={prediction}", *denoiser)
        out = export_policy(agent, tmp_path / prediction, obs_dim=11, act_low=-torch.ones(3), act_high=torch.ones(3),
                            metadata={"env": "hopper"})
        meta = json.loads((out / "metadata.json").read_text())
        assert meta["kind"] == "diffusion" and meta["acting_module"] == "ema" and meta["n_action"] == 4
        assert (meta["n_obs"], meta["horizon"], meta["sample_steps"]) == (2, 8, 4 if prediction == "v" else 10)
        with torch.no_grad():
            expected = agent.ema.sample(torch.as_tensor(obs), noise=torch.as_tensor(noise)).clamp(-1, 1).numpy()
            scripted = torch.jit.load(str(out / "policy.pt"))(torch.as_tensor(obs), torch.as_tensor(noise)).numpy()
        session = ort.InferenceSession(str(out / "policy.onnx"), providers=["CPUExecutionProvider"])
        onnx = session.run(None, {"obs": obs, "noise": noise})[0]
        if prediction == "v":
            assert np.abs(onnx - expected).max() <= 1e-5 and np.abs(scripted - expected).max() <= 1e-5
        else:
            reference = float64_chunks(agent.ema, obs, noise)
            torch_error = np.abs(expected - reference).max()
            assert np.abs(onnx - reference).max() <= 2 * torch_error + 1e-6
            assert np.abs(scripted - expected).max() <= 1e-5


def test_a_diffusion_run_exports_and_acts_as_the_chunk_actor_on_the_same_seed(tmp_path):
    """A diffusion BC run (horizon 8, 4 actions per chunk): through whole Hopper episodes the runtime's own ring, queue
    and seeded noise streams give the evaluation's ChunkActor's actions within 1e-5 at every step, across a reset;
    `pbrl eval EXPORT_DIR` gives the run's returns on the same seeds; bad noise is refused before any state changes."""

    from pbrl.deploy import Policy
    from pbrl.envs.evaluate import evaluate
    from pbrl.errors import PbrlError
    from pbrl.train.trainer import actor_policy, load_run

    run = tmp_path / "diffusion"
    r = run_cli("train", "--agent", "bc", "--dataset", SHIPPED, "--steps", "10", "--out", str(run), "--scale", "cpu",
                "--set", "train.eval_episodes=0", "--set", "agent.backbone=diffusion", "--set", "agent.prediction=v",
                "--set", "agent.hidden_layers=[64, 64]", "--set", "train.batch_size=8", "--set", "agent.horizon=8",
                "--set", "agent.n_action=4", "--quiet")
    assert r.returncode == 0, r.stderr
    r = run_cli("export", str(run), "--out", str(tmp_path / "exp"), "--format", "onnx")
    assert r.returncode == 0, r.stderr
    _, agent, _ = load_run(run, "cpu")
    actor = actor_policy(agent, 1, torch.device("cpu"), seed=7)
    policy = Policy.load(tmp_path / "exp", seed=7)
    worst, steps, obs = side_by_side(actor, policy, episodes=2, max_steps=30)
    assert steps > 12 and worst <= 1e-5
    with pytest.raises(PbrlError, match=r"noise: array: got shape \(8, 2\)"):
        policy.act(obs, noise=np.zeros((8, 2)))
    policy.reset()
    chunk = policy.act(obs, noise=np.zeros((8, 3)))  # the caller's noise: the chunk from zero noise, deterministic
    assert np.array_equal(chunk, Policy.load(tmp_path / "exp", seed=99).act(obs, noise=np.zeros((1, 8, 3))))
    r = run_cli("eval", str(tmp_path / "exp"), "--episodes", "2")
    assert r.returncode == 0, r.stderr
    ours = json.loads((tmp_path / "exp" / "eval-export-2ep-seed100000.json").read_text())
    theirs = evaluate(actor_policy(agent, 2, torch.device("cpu"), 100_000), "hopper", episodes=2, seed=100_000)
    np.testing.assert_allclose(ours["returns"], theirs["returns"], rtol=0.02)
