"""Agents: each a config dataclass, ``loss(batch, step)`` and ``act(obs)``. ``AGENTS`` maps CLI names to classes."""

from pbrl.agents.base import Agent, AgentConfig, LossOutput
from pbrl.agents.bc import BC, BCConfig
from pbrl.agents.cpl import CPL, CPLConfig

AGENTS: dict[str, type[Agent]] = {"bc": BC, "cpl": CPL}

__all__ = ["AGENTS", "BC", "CPL", "Agent", "AgentConfig", "BCConfig", "CPLConfig", "LossOutput"]
