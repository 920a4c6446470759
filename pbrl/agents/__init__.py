"""Agents: each a config dataclass, the batches it trains on, its loss and its actor. ``AGENTS`` maps CLI names to
classes."""

from pbrl.agents.base import Agent, AgentConfig, DataSpec, LossOutput, PolicyConfig
from pbrl.agents.bc import BC, BCConfig
from pbrl.agents.cpl import CPL, CPLConfig
from pbrl.agents.diff_uapa import DiffUAPA, DiffUAPAConfig
from pbrl.agents.iql import IQL, IQLConfig, IQLConstant
from pbrl.agents.oppo import OPPO, OPPOConfig
from pbrl.agents.reward_model import IQLMR, IQLPT, IQLMRConfig, RewardModel, RewardModelConfig
from pbrl.agents.sft import SFT, SFTConfig

AGENTS: dict[str, type[Agent]] = {"bc": BC, "cpl": CPL, "sft": SFT, "oppo": OPPO, "diff-uapa": DiffUAPA,
                                  "iql-oracle": IQL,
                                  "iql-constant": IQLConstant, "iql-mr": IQLMR, "iql-pt": IQLPT}

__all__ = ["AGENTS", "BC", "CPL", "IQL", "IQLMR", "OPPO", "SFT", "Agent", "AgentConfig", "BCConfig", "CPLConfig", "DiffUAPA",
           "DiffUAPAConfig",
           "DataSpec", "IQLConfig", "IQLConstant", "IQLMRConfig", "IQLPT", "LossOutput", "OPPOConfig", "PolicyConfig",
           "RewardModel", "RewardModelConfig", "SFTConfig"]
