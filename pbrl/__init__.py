"""pbrl: offline preference-based reinforcement learning and robotics."""

__version__ = "0.1.0"
