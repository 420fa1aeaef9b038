"""One error type for everything a user can get wrong.

A ``ConfigError`` carries a single line: the field path, the value that was given and what is
allowed. Command-line entry points catch it and print that line instead of a traceback.
"""

from __future__ import annotations

import reprlib
from typing import Any, Collection

# repr of the offending value, bounded: a value with a million entries or nested a hundred
# thousand levels deep still makes a short single line (and no RecursionError)
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 3, 8, 8, 6, 8
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 300, 300, 60


def short_repr(value: Any) -> str:
    text = " ".join(_REPR.repr(value).splitlines())  # one line, even for a multi-line repr
    return text if len(text) <= 400 else text[:397] + "..."


class ConfigError(ValueError):
    """Invalid user input (architecture, search space, table, budget, dataset path...)."""

    def __init__(self, field: str, value: Any, allowed: str):
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(" ".join(f"{field}: got {short_repr(value)}; {allowed}".splitlines()))  # always one line


class InfeasibleBudgetError(RuntimeError):
    """No architecture of the search space can meet the budget."""


class RunEnvironmentError(OSError):
    """The machine, not the input, stops the run: a busy run directory (another process holds its
    lock), a full disk, a read-only folder. Its message is one line that names the file and what to
    do; command-line entry points print it and exit with code 1."""


class RunLockedError(RunEnvironmentError):
    """Another process holds the run directory's lock."""


class TrainingDivergedError(RuntimeError):
    """A loss or a weight turned NaN / infinite; the message names the layer."""


def check_keys(d: Any, where: str, allowed: Collection[str], required: Collection[str] = ()) -> dict:
    """``d`` must be a mapping with only ``allowed`` keys and every ``required`` one."""
    if not isinstance(d, dict):
        raise ConfigError(where, d, "expected a mapping")
    for k in d:
        if k not in allowed:
            name = k if isinstance(k, str) and k.isprintable() and len(k) <= 100 else short_repr(k)[:100]
            raise ConfigError(f"{where}.{name}", d[k], f"unknown key; allowed keys: {', '.join(sorted(allowed))}")
    for k in sorted(required):
        if k not in d:
            raise ConfigError(f"{where}.{k}", "<missing>", "required")
    return d
