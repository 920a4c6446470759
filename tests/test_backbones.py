"""Backbones (issue 14): the transformer policy on the project's causal trunk — shapes, masking, causality, a save /
load round trip, its evaluation actor, and a learning check an MLP fails."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from pbrl.agents.actors import HistoryActor
from pbrl.data.pairing import make_preferences
from pbrl.data.preferences import write_preferences
from pbrl.data.store import Episode, TrajectoryDataset, write_trajectories
from pbrl.nets.mlp import POLICY_HEADS, PolicyHead
from pbrl.nets.transformer import TransformerPolicy
from pbrl.train.config import build_config
from pbrl.train.trainer import load_run, train
from tests.test_train import two_behaviour_dataset

OBS, ACT, T = 5, 2, 12


def window(b=3, t=T, seed=0):
    g = torch.Generator().manual_seed(seed)
    obs, act = torch.randn(b, t, OBS, generator=g), torch.rand(b, t, ACT, generator=g) * 2 - 1
    timestep = torch.arange(t).expand(b, t) + 7
    mask = torch.ones(b, t, dtype=torch.bool)
    return obs, act, timestep, mask


@pytest.mark.parametrize("head", sorted(POLICY_HEADS))
def test_transformer_policy_shapes_for_every_head(head):
    torch.manual_seed(0)
    policy = TransformerPolicy(OBS, ACT, head=head, dim=16, layers=2, heads=2).eval()
    obs, act, ts, mask = window()
    assert policy.log_prob(obs, act, ts, mask).shape == (3, T)
    pairs = [x[:, None].expand(-1, 2, *x.shape[1:]) for x in (obs, act, ts, mask)]  # [B, 2, T, ...]
    assert policy.log_prob(*pairs).shape == (3, 2, T)
    assert policy(obs, act, ts, mask).shape == (3, ACT)
    assert torch.isfinite(policy.score_log_prob(obs, act, ts, mask)).all()


def test_policy_head_matches_the_mlp_policies_likelihoods():
    """The head on a trunk scores actions exactly as the MLP policy of the same family does."""
    from pbrl.nets.mlp import TanhGaussianPolicy

    torch.manual_seed(0)
    mlp = TanhGaussianPolicy(OBS, ACT, hidden_layers=[8])
    head = PolicyHead(8, ACT, "tanh_gaussian")
    head.linear.load_state_dict(mlp.net[-1].state_dict())
    obs, act = torch.randn(6, OBS), torch.rand(6, ACT) * 2 - 1
    h = mlp.net[:-1](mlp.normalizer(obs))
    torch.testing.assert_close(head.log_prob(h, act), mlp.log_prob(obs, act))
    torch.testing.assert_close(head.score_log_prob(h, act), mlp.score_log_prob(obs, act))
    torch.testing.assert_close(head.mean(h), mlp(obs))


def test_transformer_policy_is_causal_and_ignores_padded_steps():
    torch.manual_seed(0)
    policy = TransformerPolicy(OBS, ACT, dim=16, layers=2, heads=2).eval()
    obs, act, ts, mask = window()
    base = policy.features(obs, act, ts, mask)
    t = 6
    obs2, act2 = obs.clone(), act.clone()
    obs2[:, t + 1:] += 5.0
    act2[:, t:] = -act2[:, t:]  # a_t itself must not shape the feature that predicts a_t
    torch.testing.assert_close(policy.features(obs2, act2, ts, mask)[:, : t + 1], base[:, : t + 1])
    assert not torch.allclose(policy.features(obs2, act2, ts, mask)[:, t + 1:], base[:, t + 1:])
    # padded steps (mask False) change no real step's output, wherever they sit
    mask_pad = mask.clone()
    mask_pad[:, 9:] = False
    ref = policy.log_prob(obs, act, ts, mask_pad)[:, :9]
    obs3, act3 = obs.clone(), act.clone()
    obs3[:, 9:], act3[:, 9:] = 100.0, 0.3
    torch.testing.assert_close(policy.log_prob(obs3, act3, ts, mask_pad)[:, :9], ref)
    left = mask.clone()
    left[:, :4] = False  # the evaluation actor pads on the left of a young episode
    out = policy(obs, act, ts, left)
    obs4 = obs.clone()
    obs4[:, :4] = -50.0
    torch.testing.assert_close(policy(obs4, act, ts, left), out)


def test_causal_trunk_encodes_a_whole_trajectory_at_its_last_real_step():
    """OPPO's I(τ) from the same trunk: one vector per sequence, blind to padding, moved by its first step."""
    from pbrl.nets.transformer import CausalTransformer

    torch.manual_seed(0)
    trunk = CausalTransformer(OBS, ACT, dim=32, layers=2, heads=4).eval()
    obs, act, ts, mask = window(b=3, t=12)
    mask = mask.clone()
    mask[1, 9:] = False                    # trailing padding
    mask[2, :3] = False                    # leading padding
    code = trunk.encode(obs, act, ts, mask)
    assert code.shape == (3, 32)
    torch.testing.assert_close(code[0], trunk(obs, act, ts, mask)[0, -1])
    torch.testing.assert_close(code[1], trunk(obs, act, ts, mask)[1, 8])
    padded = obs.clone()
    padded[1, 9:] += 5.0
    padded[2, :3] += 5.0
    torch.testing.assert_close(trunk.encode(padded, act, ts, mask), code)
    first = obs.clone()
    first[:, 3] += 1.0
    assert not torch.allclose(trunk.encode(first, act, ts, mask), code, atol=1e-4)


def test_a_contextual_transformer_policy_reads_its_latent_at_every_step_and_stays_causal():
    """π(a | s, z): ``cond_dim`` > 0 adds a projection of each sequence's z to all its tokens; every step's feature
    moves with z, none with later steps; a pair's windows ``[B, 2, T]`` take one z per window or one for all."""
    torch.manual_seed(0)
    policy = TransformerPolicy(OBS, ACT, dim=16, layers=2, heads=2, cond_dim=4).eval()
    obs, act, ts, mask = window()
    z = torch.randn(obs.shape[0], 4)
    base = policy.features(obs, act, ts, mask, z)
    other = policy.features(obs, act, ts, mask, z + 1.0)
    assert (base - other).abs().amax(-1).min() > 1e-4          # every step of every window moved
    t = 6
    obs2 = obs.clone()
    obs2[:, t + 1:] += 5.0
    torch.testing.assert_close(policy.features(obs2, act, ts, mask, z)[:, : t + 1], base[:, : t + 1])
    pairs = lambda x: torch.stack([x, x], 1)  # noqa: E731
    shared = policy.log_prob(pairs(obs), pairs(act), pairs(ts), pairs(mask), z[0])          # one z for all
    torch.testing.assert_close(shared[1, 0], policy.log_prob(obs, act, ts, mask, z[0].expand(len(z), 4))[1])
    each = policy.log_prob(pairs(obs), pairs(act), pairs(ts), pairs(mask), pairs(z))       # one per window
    torch.testing.assert_close(each[:, 1], policy.log_prob(obs, act, ts, mask, z))
    with pytest.raises(ValueError, match=r"cond: got none, expected \[B, 4\]"):
        policy.features(obs, act, ts, mask)
    with pytest.raises(ValueError, match=r"expected none \(cond_dim 0\)"):
        TransformerPolicy(OBS, ACT, dim=16, layers=1, heads=2).features(obs, act, ts, mask, z)


def test_transformer_policy_save_load_round_trip_is_identical():
    torch.manual_seed(0)
    policy = TransformerPolicy(OBS, ACT, head="tanh_gaussian", dim=16, layers=1, heads=4).eval()
    buf = io.BytesIO()
    torch.save(policy.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(1)
    other = TransformerPolicy(OBS, ACT, head="tanh_gaussian", dim=16, layers=1, heads=4).eval()
    other.load_state_dict(torch.load(buf))
    obs, act, ts, mask = window()
    assert torch.equal(other.log_prob(obs, act, ts, mask), policy.log_prob(obs, act, ts, mask))
    assert torch.equal(other(obs, act, ts, mask), policy(obs, act, ts, mask))


def test_history_actor_acts_like_the_policy_on_the_full_window_and_resets_one_env():
    torch.manual_seed(0)
    policy = TransformerPolicy(OBS, ACT, dim=16, layers=1, heads=2, context=4).eval()
    actor = HistoryActor(policy, 2, OBS, ACT, context=4, seed=0)
    actor.reset()
    g = torch.Generator().manual_seed(3)
    seen_obs, taken = [], []
    for _ in range(6):
        o = torch.randn(2, OBS, generator=g)
        seen_obs.append(o)
        taken.append(actor(o))
    # the last call saw steps 2..5: the policy on that window (with the actions actually taken) agrees
    obs = torch.stack(seen_obs[2:], 1)
    act = torch.stack([*taken[2:5], torch.zeros(2, ACT)], 1)
    ts = torch.arange(2, 6).expand(2, 4)
    torch.testing.assert_close(policy(obs, act, ts, torch.ones(2, 4, dtype=torch.bool)), taken[-1])
    actor.reset(torch.tensor([True, False]))
    assert not actor.mask[0].any() and actor.mask[1].all() and actor.t.tolist() == [0, 6]


def alternating_dataset(tmp_path, episodes=30, length=40, seed=0):
    """The action flips sign every step from a random first sign; the observation is pure noise. Only the
    history tells the next action (a_t = −a_{t−1}): an MLP on s_t can only average ±0.7 to about 0."""
    rng = np.random.default_rng(seed)
    eps = []
    for i in range(episodes):
        sign = 1.0 if rng.random() < 0.5 else -1.0
        act = (0.7 * sign * (-1.0) ** np.arange(length))[:, None].repeat(ACT, 1).astype(np.float32)
        eps.append(Episode(rng.standard_normal((length, OBS)).astype(np.float32), act, np.zeros(length, np.float32),
                           False, rng.standard_normal(OBS).astype(np.float32), f"e{i}"))
    path = write_trajectories(tmp_path / "alt.h5", eps, env_id="Hopper-v5", behaviour_policy="alt", seed=seed)
    ds = TrajectoryDataset(path)
    prefs = make_preferences(ds, pairs=200, segment=16, seed=seed)
    return str(write_preferences(tmp_path / "alt.prefs.h5", prefs, ds, teacher={"name": "scripted"}, seed=seed))


@pytest.mark.learning
@pytest.mark.parametrize("backbone", ["transformer", "mlp"])
def test_transformer_bc_uses_history_an_mlp_cannot(tmp_path, backbone, learned, learning_seed):
    data = alternating_dataset(tmp_path, seed=learning_seed)
    extra = ["agent.backbone=transformer", "agent.seq_dim=32", "agent.seq_layers=1", "agent.seq_heads=2",
             "agent.context=16"] if backbone == "transformer" else []
    cfg = build_config("bc", data, scale="cpu", steps=300, seed=learning_seed, overrides=[
        "train.eval_episodes=0", "train.device=cpu", "agent.hidden_layers=[32]", "agent.dropout=0.0",
        "train.batch_size=16", *extra])
    train(cfg, tmp_path / backbone, progress=False)
    _, agent, loaded = load_run(tmp_path / backbone, "cpu")
    traj = loaded.trajectories
    obs = torch.as_tensor(traj.observations[:16])[None]
    act = torch.as_tensor(traj.actions[:16])[None]
    ts, mask = torch.arange(16)[None], torch.ones(1, 16, dtype=torch.bool)
    from pbrl.agents.base import steps_log_prob

    with torch.no_grad():
        nll = -steps_log_prob(agent.policy, obs, act, ts, mask)[0, 1:].mean().item()  # −log π = ‖μ − a‖² per step
    if backbone == "transformer":  # predicts ±0.7 from the previous action: squared error near 0
        learned.check("transformer BC nll", nll, "<", 0.1)
    else:                          # the known-bad variant: the MLP averages the two signs, about 2 × 0.7² per step
        learned.check("MLP BC nll", nll, ">", 0.7, bad=True)


# ------------------------------------------------------------------------------------------------ diffusion
from pbrl.agents.actors import ChunkActor  # noqa: E402
from pbrl.nets.diffusion import DiffusionPolicy, cosine_alpha_bar, diffusion_windows  # noqa: E402
from pbrl.nets.mlp import GaussianPolicy  # noqa: E402


def test_cosine_schedule_against_its_formula_in_float64():
    ab = cosine_alpha_bar(50).numpy()
    k = np.arange(51)
    f = np.cos((k / 50 + 0.008) / 1.008 * np.pi / 2) ** 2
    ref = np.cumprod(1 - np.minimum(1 - f[1:] / f[:-1], 0.999))
    np.testing.assert_allclose(ab, ref, rtol=1e-12)
    assert ab[0] > 0.99 and ab[-1] < 1e-3 and np.all(np.diff(ab) < 0)


@pytest.mark.parametrize("denoiser, prediction", [("mlp", "epsilon"), ("unet1d", "v")])
def test_diffusion_policy_shapes_round_trip_and_generator(denoiser, prediction):
    torch.manual_seed(0)
    make = lambda: DiffusionPolicy(OBS, ACT, horizon=8, n_obs=2, denoiser=denoiser, prediction=prediction,  # noqa: E731
                                   train_steps=20, sample_steps=5, hidden_layers=[32], channels=(16, 32)).eval()
    policy = make()
    obs, chunk = torch.randn(3, 2, OBS), torch.rand(3, 8, ACT) * 2 - 1
    assert policy.loss(obs, chunk).shape == (3,)
    before = torch.get_rng_state()
    a = policy.sample(obs, generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), before)  # sampling never touches the global RNG
    assert a.shape == (3, 8, ACT) and a.abs().max() <= 1.0
    assert torch.equal(a, policy.sample(obs, generator=torch.Generator().manual_seed(5)))
    noise = torch.randn(3, 8, ACT, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, policy(obs, noise))  # the export form takes the noise as an input
    buf = io.BytesIO()
    torch.save(policy.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(1)
    other = make()
    other.load_state_dict(torch.load(buf))
    assert torch.equal(other(obs, noise), a)
    k = torch.tensor([0, 7, 19])
    assert torch.equal(other.denoising_error(obs, chunk, noise, k), policy.denoising_error(obs, chunk, noise, k))


def test_diffusion_windows_pair_each_step_with_its_history_and_chunk():
    obs = torch.arange(6.0).view(1, 6, 1).expand(1, 6, 1)
    act = torch.arange(6.0).view(1, 6, 1) * 10
    mask = torch.tensor([[True] * 5 + [False]])
    hist, chunk, valid = diffusion_windows(obs, act, mask, n_obs=2, horizon=3)
    assert hist[0].flatten().tolist() == [0.0, 0.0] and hist[3].flatten().tolist() == [2.0, 3.0]
    assert chunk[1].flatten().tolist() == [10.0, 20.0, 30.0]
    assert valid.tolist() == [True, True, True, False, False, False]  # chunks running into padding are left out


def bimodal_fit(steps=1500, seed=0):
    """A 1-D action from a constant observation: ±0.6 with probability ½ each (σ 0.02)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    obs = torch.zeros(512, 1, 1)
    diffusion = DiffusionPolicy(1, 1, horizon=1, n_obs=1, train_steps=50, sample_steps=50, hidden_layers=[64, 64])
    gaussian = GaussianPolicy(1, 1, hidden_layers=[64, 64])
    opt = torch.optim.Adam([*diffusion.parameters(), *gaussian.parameters()], lr=2e-3)
    for _ in range(steps):
        sign = torch.where(torch.rand(512, 1, 1, generator=g) < 0.5, -1.0, 1.0)
        act = 0.6 * sign + 0.02 * torch.randn(512, 1, 1, generator=g)
        loss = diffusion.loss(obs, act).mean() - gaussian.log_prob(obs[:, 0], act[:, 0]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return diffusion.eval(), gaussian.eval()


@pytest.mark.learning
def test_ddim_recovers_both_modes_a_gaussian_cannot(learned, learning_seed):
    diffusion, gaussian = bimodal_fit(seed=learning_seed)
    obs = torch.zeros(2000, 1, 1)
    a = diffusion.sample(obs, generator=torch.Generator().manual_seed(1)).flatten()
    upper, lower = a[a > 0], a[a < 0]
    learned.check("DDIM upper mode's distance from +0.6", abs(upper.mean().item() - 0.6), "<", 0.08)
    learned.check("DDIM lower mode's distance from -0.6", abs(lower.mean().item() + 0.6), "<", 0.08)
    learned.check("DDIM share of the upper mode's distance from 1/2", abs(len(upper) / len(a) - 0.5), "<", 0.2)
    g = gaussian.sample(obs[:, 0], generator=torch.Generator().manual_seed(1)).flatten()
    near = lambda x: ((x - 0.6).abs() < 0.05) | ((x + 0.6).abs() < 0.05)  # noqa: E731
    learned.check("DDIM samples near a mode", near(a).float().mean(), ">", 0.3)
    # the known-bad variant: the Gaussian spreads over the gap, and its mean sits between the modes
    learned.check("Gaussian samples near a mode", near(g).float().mean(), "<", 0.3, bad=True)
    learned.check("Gaussian |mean|", abs(gaussian(obs[:, 0]).mean().item()), "<", 0.2, bad=True)


def test_chunk_actor_runs_n_action_steps_per_chunk_and_resets_one_env():
    calls = []

    def sample(obs, noise):
        calls.append(obs.shape[0])
        assert noise.shape == (obs.shape[0], 4, 1)
        return torch.arange(4.0).view(1, 4, 1).expand(obs.shape[0], 4, 1) + 100 * len(calls)

    actor = ChunkActor(sample, 2, 3, 1, n_obs=2, horizon=4, n_action=2)
    actor.reset()
    out = [actor(torch.full((2, 3), float(i))) for i in range(3)]
    assert [o[0, 0].item() for o in out] == [100.0, 101.0, 200.0] and calls == [2, 2]
    assert actor.obs[0, :, 0].tolist() == [1.0, 2.0]  # the last n_obs observations
    actor.reset(torch.tensor([True, False]))
    action = actor(torch.full((2, 3), 9.0))
    assert calls == [2, 2, 1] and actor.obs[0, :, 0].tolist() == [9.0, 9.0] and actor.obs[1, :, 0].tolist() == [2.0, 9.0]
    assert action[:, 0].tolist() == [300.0, 201.0]  # env 0 starts a new chunk, env 1 goes on with its own


def test_chain_score_puts_one_elbo_term_per_chunk_and_shares_a_pairs_draw():
    from pbrl.nets.diffusion import chain_log_prob

    torch.manual_seed(0)
    policy = DiffusionPolicy(OBS, ACT, horizon=4, n_obs=2, train_steps=20, hidden_layers=[16])
    obs, act, _, mask = window(b=3, t=12)
    pair = lambda x: torch.stack([x, x], 1)  # noqa: E731  identical segments on both sides
    mask = mask.clone()
    mask[2, 10:] = False
    score, chunk_mask = chain_log_prob(policy, pair(obs), pair(act), pair(mask), shared=(1,),
                                       generator=torch.Generator().manual_seed(0))
    assert score.shape == chunk_mask.shape == (3, 2, 12)
    assert chunk_mask[0, 0].nonzero().flatten().tolist() == [0, 4, 8]
    assert chunk_mask[2, 0].nonzero().flatten().tolist() == [0, 4]  # the chunk over padded steps is left out
    assert torch.equal(score[:, 0], score[:, 1])                    # one draw per pair: a zero margin
    assert (score[chunk_mask] < 0).all() and (score[~chunk_mask] == 0).all()
    unshared, _ = chain_log_prob(policy, pair(obs), pair(act), pair(mask), generator=torch.Generator().manual_seed(0))
    assert not torch.equal(unshared[:, 0], unshared[:, 1])


def test_a_policy_and_its_frozen_reference_score_on_one_draw_when_it_is_passed():
    """``draw_chain`` then ``chain_log_prob(..., draw=)``: the draw made inside from a generator equals the one passed
    from the same generator state; a copy of the policy scores identically on it, and a changed policy's score
    moves by its own error alone, checked against the denoising errors computed by hand in float64."""
    import copy

    from pbrl.nets.diffusion import chain_log_prob, chunk_starts, draw_chain

    torch.manual_seed(0)
    policy = DiffusionPolicy(OBS, ACT, horizon=4, n_obs=2, train_steps=20, hidden_layers=[16]).double()
    reference = copy.deepcopy(policy)
    obs, act, _, mask = window(b=3, t=12)
    obs, act = obs.double(), act.double()
    pair = lambda x: torch.stack([x, x + 0.1 * torch.randn_like(x)], 1) if x.is_floating_point() else torch.stack([x, x], 1)  # noqa: E731
    o, a, m = pair(obs), pair(act), pair(mask)
    draw = draw_chain(policy, (3, 2), 12, shared=(1,), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert draw.k.shape == (3, 1, 3) and draw.noise.shape == (3, 1, 3, 4, ACT)
    inside, _ = chain_log_prob(policy, o, a, m, shared=(1,), generator=torch.Generator().manual_seed(5))
    passed, chunk_mask = chain_log_prob(policy, o, a, m, draw=draw)
    torch.testing.assert_close(inside, passed, rtol=0, atol=0)
    torch.testing.assert_close(chain_log_prob(reference, o, a, m, draw=draw)[0], passed, rtol=0, atol=0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    moved, _ = chain_log_prob(policy, o, a, m, draw=draw)
    hist, chunk, _ = diffusion_windows(o, a, m, policy.n_obs, policy.horizon)
    hist, chunk = hist.view(3, 2, 12, *hist.shape[1:]), chunk.view(3, 2, 12, *chunk.shape[1:])
    starts = chunk_starts(12, policy.horizon, "cpu")
    for model, got in ((policy, moved), (reference, passed)):
        for b in range(3):
            for side in range(2):
                rows = torch.arange(12)[starts]
                err = model.denoising_error(hist[b, side, rows], chunk[b, side, rows], draw.noise[b, 0], draw.k[b, 0])
                expected = -(policy.horizon * ACT) * err * chunk_mask[b, side, rows]
                torch.testing.assert_close(got[b, side, rows], expected)
    assert not torch.allclose(moved, passed)


@pytest.mark.learning
def test_cpl_on_a_diffusion_policy_learns_the_preferred_mode_bc_keeps_both(tmp_path, learned, learning_seed):
    data = two_behaviour_dataset(tmp_path, episodes=40, length=24, seed=learning_seed)
    common = ["train.eval_episodes=0", "train.device=cpu", "agent.hidden_layers=[64, 64]", "agent.dropout=0.0",
              "agent.backbone=diffusion", "agent.horizon=4", "agent.n_obs=1", "agent.diffusion_steps=20",
              "agent.sample_steps=20", "train.batch_size=16", "train.lr=1e-3"]
    train(build_config("cpl", data, scale="cpu", steps=500, seed=learning_seed, overrides=[
        *common, "agent.bc_steps=200", "agent.alpha=0.5"]), tmp_path / "cpl", progress=False)
    train(build_config("bc", data, scale="cpu", steps=500, seed=learning_seed, overrides=common), tmp_path / "bc",
          progress=False)
    means = {}
    for name in ("cpl", "bc"):
        _, agent, _ = load_run(tmp_path / name, "cpu")
        obs = torch.randn(256, 1, 3, generator=torch.Generator().manual_seed(1))
        means[name] = agent.ema.sample(obs, generator=torch.Generator().manual_seed(2)).mean().item()
    # preferred actions are ≈ +0.6, the others ≈ −0.6: BC on both (the known-bad variant) keeps both
    learned.check("diffusion CPL mean action", means["cpl"], ">", 0.2)
    learned.check("diffusion BC |mean action|", abs(means["bc"]), "<", 0.2, bad=True)
