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
