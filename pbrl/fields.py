"""Config fields that declare their valid values where they are defined.

    steps: int = param(10_000, ge=1)
    policy: str = param("tanh_gaussian", choices=("tanh_gaussian", "deterministic", "gaussian"))
    hidden_layers: list[int] = param([256, 256], ge=1)          # every item ≥ 1

:func:`check_fields` reads those declarations back and raises one :class:`ConfigError` line naming the field,
what was given and what was expected. Every float must be finite (NaN and ±inf are refused everywhere) unless
its field says ``finite=False``. Cross-field rules (``log_std_min < log_std_max``) live in the config class's
``check()`` method, which :func:`check_fields` calls after the per-field checks.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tomllib

from pbrl.errors import ConfigError, describe


@dataclass(frozen=True)
class Bounds:
    """What values a field accepts; ``None`` means no bound of that kind."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[str, ...] | None = None
    pattern: str | None = None        # a full-match regular expression for strings
    finite: bool = True               # floats must be finite

    def expected(self, integer: bool = False) -> str:
        if self.choices is not None:
            return f"one of {list(self.choices)}"
        if self.pattern is not None:
            return f"a string matching {self.pattern}"
        parts = [f"{op} {_number(v)}" for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                 if v is not None]
        kind = "an integer" if integer else "a finite number" if self.finite else "a number"
        return kind + (" " + " and ".join(parts) if parts else "")

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or value is None:
            return True                          # the type check has already passed; optional fields may be None
        if isinstance(value, str):
            if self.choices is not None:
                return value in self.choices
            return self.pattern is None or re.fullmatch(self.pattern, value) is not None
        if isinstance(value, int | float):
            if isinstance(value, float) and self.finite and not math.isfinite(value):
                return False
            if math.isnan(value):
                return False
            return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                    and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))
        return True


def param(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
          lt: float | None = None, choices: tuple[str, ...] | None = None, pattern: str | None = None,
          finite: bool = True) -> Any:
    """A dataclass field with its valid values (a list default is copied per instance; bounds apply to items)."""
    meta = {"bounds": Bounds(ge, gt, le, lt, tuple(choices) if choices is not None else None, pattern, finite)}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def check_fields(obj: Any, section: str, where: str | Callable[[str], str]) -> None:
    """Raise a one-line :class:`ConfigError` for the first field of dataclass ``obj`` outside its bounds, then run
    the object's own ``check()`` (cross-field rules: ``(field, got, expected)`` or None). ``where`` names the
    source of the values, or maps ``"section.field"`` to the source that set it (a flag, ``--set``, a preset)."""
    source = where if callable(where) else (lambda key: where)
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        bounds = f.metadata.get("bounds", Bounds())
        items = value if isinstance(value, list) else [value]
        if not all(bounds.accepts(v) for v in items):
            integer = all(isinstance(v, int) and not isinstance(v, bool) for v in items)
            expected = bounds.expected(integer)
            key = f"{section}.{f.name}"
            raise ConfigError(describe(source(key), key, short_repr(value),
                                       f"a list of items each {expected}" if isinstance(value, list) else expected))
    check = getattr(obj, "check", None)
    if check is not None:
        problem = check()
        if problem is not None:
            name, got, expected = problem
            raise ConfigError(describe(source(f"{section}.{name}"), f"{section}.{name}", got, expected))


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (a 5,000-digit integer stays one line)."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**40 else f"an integer of {len(str(abs(value)))} digits"
    return text if len(text) <= limit else text[: limit - 1] + "…"


INVALID = object()


def type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def coerce(value: Any, hint: Any) -> Any:
    """``value`` checked against a field's type hint (int, float, bool, str, ``list[X]``, ``X | None``); ints are
    accepted for floats; anything else is ``INVALID``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            if option is type(None):
                if value is None or (isinstance(value, str) and value.lower() == "none"):
                    return None
                continue
            got = coerce(value, option)
            if got is not INVALID:
                return got
        return INVALID
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        if not isinstance(value, list):
            return INVALID
        items = [coerce(v, item) for v in value]
        return INVALID if any(i is INVALID for i in items) else items
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        return INVALID
    return value if isinstance(value, hint) else INVALID


def set_fields(obj: Any, overrides: list[str], *, section: str, where: str = "--set") -> None:
    """Apply ``key=value`` overrides (values read as TOML) to a config dataclass, typed and bounds-checked."""
    fields = {f.name for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    for text in overrides:
        key, _, raw = (t.strip() for t in text.partition("="))
        if not _ or key not in fields:
            raise ConfigError(describe(where, "override", repr(text), f"key=value with key in {sorted(fields)}"))
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except ValueError:
            value = raw
        coerced = coerce(value, hints[key])
        if coerced is INVALID:
            raise ConfigError(describe(where, f"{section}.{key}", f"{short_repr(value)} ({type(value).__name__})",
                                       type_name(hints[key])))
        setattr(obj, key, coerced)
    check_fields(obj, section, where)
