"""A fixed-rate control loop around an exported policy, with a watchdog: the robot gets an action at every deadline.

At each tick (period ``1 / rate``) the newest observation goes to the policy on a worker thread (ONNX Runtime
releases the GIL while it computes). If the action is ready by the deadline it is sent, clipped to the bounds; if not,
the *safe action* is sent at the deadline while inference goes on (``zeros``, or ``hold`` the last action sent), the
miss is counted, and no new inference starts until the late one ends (its action, computed from a stale observation,
is dropped). A non-finite action is replaced by the safe one too. Every step is logged as one JSON line with its
timestamps (seconds since the loop started), and a cadence report ends the run: target rate, achieved rate, p50 / p99
/ max inference time, missed deadlines.

The environment stands in for the robot: anything with gymnasium's ``reset(seed=) -> (obs, info)`` and
``step(action) -> (obs, reward, terminated, truncated, info)``. Imports numpy and the standard library only.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as InferenceLate
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pbrl.errors import ConfigError, describe

__all__ = ["CadenceReport", "ControlLoop", "SAFE_ACTIONS"]

SAFE_ACTIONS = ("zeros", "hold")


class Acting(Protocol):
    low: np.ndarray
    high: np.ndarray

    def reset(self) -> None: ...
    def act(self, obs: Any) -> np.ndarray: ...


@dataclass
class CadenceReport:
    """What the loop kept: rates in Hz, times in milliseconds."""

    target_rate_hz: float
    achieved_rate_hz: float
    steps: int
    episodes: int
    missed_deadlines: int
    nonfinite_actions: int
    clipped_actions: int
    inference_ms: dict[str, float] = field(default_factory=dict)
    returns: list[float] = field(default_factory=list)

    def line(self) -> str:
        inf = self.inference_ms
        return (f"cadence: target {self.target_rate_hz:g} Hz, achieved {self.achieved_rate_hz:.1f} Hz over "
                f"{self.steps} steps; inference p50 {inf.get('p50', float('nan')):.3f} ms, p99 "
                f"{inf.get('p99', float('nan')):.3f} ms, max {inf.get('max', float('nan')):.3f} ms; missed deadlines "
                f"{self.missed_deadlines}; non-finite actions {self.nonfinite_actions}; clipped {self.clipped_actions}")


class ControlLoop:
    """``ControlLoop(policy, env, rate_hz=50).run(episodes=1, log=Path("steps.jsonl"))``."""

    def __init__(self, policy: Acting, env: Any, *, rate_hz: float, safe_action: str = "zeros",
                 max_steps: int | None = None):
        if not (rate_hz > 0 and np.isfinite(rate_hz)):
            raise ConfigError(describe("--rate", "rate", rate_hz, "a finite number of Hz > 0"))
        if safe_action not in SAFE_ACTIONS:
            raise ConfigError(describe("--safe-action", "safe action", repr(safe_action), f"one of {list(SAFE_ACTIONS)}"))
        if getattr(policy, "low", None) is None:
            raise ConfigError(describe("EXPORT_DIR", "policy", "a discrete (Overcooked) policy", "a continuous-action "
                                       "policy for the control loop (call Policy.act in the game's own loop)"))
        self.policy, self.env, self.period = policy, env, 1.0 / float(rate_hz)
        self.rate_hz, self.safe_action, self.max_steps = float(rate_hz), safe_action, max_steps
        self.low = np.asarray(policy.low, dtype=np.float32)
        self.high = np.asarray(policy.high, dtype=np.float32)

    def _safe(self, last: np.ndarray) -> np.ndarray:
        return last.copy() if self.safe_action == "hold" else np.clip(np.zeros_like(last), self.low, self.high)

    def run(self, episodes: int = 1, *, seed: int = 0, log: str | Path | None = None) -> CadenceReport:
        if episodes < 1:
            raise ConfigError(describe("--episodes", "episodes", episodes, "an integer >= 1"))
        out = open(log, "w") if log is not None else None  # noqa: SIM115 (closed below)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pbrl-inference")
        inference, missed, nonfinite, clipped, steps, returns = [], 0, 0, 0, 0, []
        start = time.perf_counter()
        try:
            for episode in range(episodes):
                obs, _ = self.env.reset(seed=seed + episode)
                self.policy.reset()
                last = np.clip(np.zeros_like(self.low), self.low, self.high)
                pending: Future | None = None
                pending_started = 0.0
                total, done, step = 0.0, False, 0
                next_tick = time.perf_counter()
                while not done and (self.max_steps is None or step < self.max_steps):
                    tick = next_tick
                    deadline = tick + self.period
                    action, fresh, finished = None, False, None
                    if pending is not None:  # a late inference of an earlier tick: wait for it, drop its stale action
                        try:
                            pending.result(timeout=max(0.0, deadline - time.perf_counter()))
                            finished = time.perf_counter()
                            inference.append(finished - pending_started)
                            pending = None
                        except InferenceLate:
                            pass  # still running at this deadline too
                    if pending is None:  # the observation of this tick, with whatever time is left before the deadline
                        pending_started = time.perf_counter()
                        pending = pool.submit(self.policy.act, np.asarray(obs, dtype=np.float32))
                        try:
                            action = pending.result(timeout=max(0.0, deadline - time.perf_counter()))
                            finished = time.perf_counter()
                            inference.append(finished - pending_started)
                            fresh, pending = True, None
                        except InferenceLate:
                            pass
                    sent_at = time.perf_counter()
                    safe = not fresh or not np.isfinite(action).all()
                    if not fresh:
                        missed += 1
                        action = self._safe(last)
                    elif safe:
                        nonfinite += 1
                        action = self._safe(last)
                    else:
                        bounded = np.clip(action, self.low, self.high)
                        clipped += int(not np.array_equal(bounded, action))
                        action = bounded
                    obs, reward, terminated, truncated, _ = self.env.step(action)
                    total += float(reward)
                    done = bool(terminated or truncated)
                    if out is not None:
                        out.write(json.dumps({
                            "episode": episode, "step": step, "tick": round(tick - start, 6),
                            "action_sent": round(sent_at - start, 6),
                            "inference_done": None if finished is None else round(finished - start, 6),
                            "missed": not fresh, "safe": safe,
                            "action": [float(a) for a in action], "reward": float(reward)}) + "\n")
                    last, step, steps = np.asarray(action, dtype=np.float32), step + 1, steps + 1
                    next_tick = deadline
                    pause = next_tick - time.perf_counter()
                    if pause > 0:
                        time.sleep(pause)
                    else:  # behind schedule (a slow env step): restart the clock rather than burst to catch up
                        next_tick = time.perf_counter()
                if pending is not None:
                    pending.result()  # the late inference of the last step ends before the next episode starts
                returns.append(total)
        finally:
            pool.shutdown(wait=True)
            if out is not None:
                out.close()
        elapsed = time.perf_counter() - start
        ms = np.asarray(inference) * 1e3
        stats = {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "max": float(ms.max())} \
            if len(ms) else {}
        return CadenceReport(self.rate_hz, steps / elapsed if elapsed > 0 else 0.0, steps, episodes, missed, nonfinite,
                             clipped, stats, returns)
