"""One exception family for pbrl. Messages name the file or option, what was found and what was expected."""

from __future__ import annotations


class PbrlError(Exception):
    """Base class of every error pbrl raises on purpose."""


class DatasetError(PbrlError):
    """A dataset file or card is missing, corrupt or inconsistent."""


class ConfigError(PbrlError):
    """A configuration value, preset, override or command-line option is invalid."""


def describe(where: str, field: str, got: object, expected: str) -> str:
    """Build the standard one-line message: `<where>: <field>: got <got>, expected <expected>`."""
    return f"{where}: {field}: got {got}, expected {expected}"


class NonFiniteError(PbrlError):
    """A loss or parameter became NaN or infinite during training; nothing non-finite is written."""


class CheckpointError(PbrlError):
    """A checkpoint does not fit the model it is loaded into (another version of the agent or config)."""


class RunLockedError(PbrlError):
    """Another process holds the run directory's lock (two writers would interleave its files)."""
