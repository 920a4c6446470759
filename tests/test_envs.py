"""Environment presets, normalized scores and vectorised evaluation in the real simulators."""

from __future__ import annotations

import numpy as np
import pytest

from pbrl.data.make import metaworld_scripted_policy
from pbrl.envs.evaluate import evaluate
from pbrl.envs.registry import get_env_spec, make_env
from pbrl.errors import ConfigError


def test_normalized_score_is_d4rl_formula():
    spec = get_env_spec("hopper")
    assert spec.id == "Hopper-v5" and get_env_spec("Hopper-v5") == spec
    assert spec.normalized_score(spec.score_random) == pytest.approx(0.0)
    assert spec.normalized_score(spec.score_expert) == pytest.approx(100.0)
    r = 1000.0
    assert spec.normalized_score(r) == pytest.approx(100 * (r - spec.score_random) / (spec.score_expert - spec.score_random))


def test_unknown_env_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"--env: environment: got 'Nope-v0', expected one of \["):
        get_env_spec("Nope-v0")


def test_vectorised_evaluation_matches_a_plain_loop():
    """The vectorised evaluator gives the same returns as stepping each seeded env by hand."""
    policy = lambda obs: np.tanh(obs[:, :3] * 0.5)  # noqa: E731
    result = evaluate(policy, "hopper", episodes=3, seed=5)
    for i in range(3):
        env = make_env("hopper")
        obs, _ = env.reset(seed=5 + i)
        total, done = 0.0, False
        while not done:
            obs, r, term, trunc, _ = env.step(policy(obs[None].astype(np.float32))[0])
            total += r
            done = term or trunc
        assert result["returns"][i] == pytest.approx(total, rel=1e-5)
    assert result["episodes"] == 3 and "success_rate" not in result


@pytest.mark.parametrize("task", ["button-press", "drawer-open", "door-open"])
def test_metaworld_scripted_policy_succeeds_and_random_does_not(task):
    spec = get_env_spec(task)
    scripted = metaworld_scripted_policy(spec)
    good = evaluate(lambda obs: np.stack([scripted(o) for o in obs]), task, episodes=2, seed=0)  # 3 of 3 at 3
    rng = np.random.default_rng(0)
    # one random episode is enough for the comparison: a random arm scores far below the scripted one on every seed
    bad = evaluate(lambda obs: rng.uniform(-1, 1, (len(obs), 4)), task, episodes=1, seed=0)
    assert good["success_rate"] == 1.0 and good["normalized_score"] > 70
    assert good["return_mean"] > bad["return_mean"]
