"""One error type for everything a user can get wrong.

A ``ConfigError`` carries a single line: the field path, the value that was given and what is
allowed. Command-line entry points catch it and print that line instead of a traceback.
"""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """Invalid user input (architecture, search space, table, budget, dataset path...)."""

    def __init__(self, field: str, value: Any, allowed: str):
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}: got {value!r}; {allowed}")


class InfeasibleBudgetError(RuntimeError):
    """No architecture of the search space can meet the budget."""


def check_keys(d: Any, where: str, allowed, required=()) -> dict:
    """``d`` must be a mapping with only ``allowed`` keys and every ``required`` one."""
    if not isinstance(d, dict):
        raise ConfigError(where, d, "expected a mapping")
    for k in d:
        if k not in allowed:
            raise ConfigError(f"{where}.{k}", d[k], f"unknown key; allowed keys: {', '.join(sorted(allowed))}")
    for k in sorted(required):
        if k not in d:
            raise ConfigError(f"{where}.{k}", "<missing>", "required")
    return d
