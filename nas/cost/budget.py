"""Budgets: ``parse_budget("20mJ")`` -> ``Budget(metric="energy", value=20.0, unit="mJ")``.

An energy budget is kept in mJ and a latency budget in ms, whatever unit it was written in:

=========  ============================  ==========================
metric     units accepted                canonical
=========  ============================  ==========================
energy     J, mJ, uJ (µJ, μJ), nJ        mJ
latency    s, ms, us (µs, μs), ns        ms
=========  ============================  ==========================

A number (``20``, ``0.5``, ``2e-3``), optional spaces, then a unit spelt as above (case matters:
``MJ`` would be megajoules and is rejected). Zero, negative, NaN, infinite and unit-less budgets are
rejected with one line listing valid examples.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from nas.errors import ConfigError

EXAMPLES = "valid budgets look like 20mJ, 0.5 mJ, 300uJ, 2e-3 J, 5ms, 800 us, 1.5s"

# unit (micro signs replaced by 'u') -> (metric, canonical unit, factor to the canonical unit)
_UNITS: dict[str, tuple[str, str, Decimal]] = {
    "J": ("energy", "mJ", Decimal(1000)),
    "mJ": ("energy", "mJ", Decimal(1)),
    "uJ": ("energy", "mJ", Decimal("0.001")),
    "nJ": ("energy", "mJ", Decimal("0.000001")),
    "s": ("latency", "ms", Decimal(1000)),
    "ms": ("latency", "ms", Decimal(1)),
    "us": ("latency", "ms", Decimal("0.001")),
    "ns": ("latency", "ms", Decimal("0.000001")),
}
UNITS = ("J", "mJ", "uJ", "µJ", "nJ", "s", "ms", "us", "µs", "ns")
METRICS = ("energy", "latency")
CANONICAL_UNIT = {"energy": "mJ", "latency": "ms"}

_NUMBER = r"[+-]?(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d+)?"
_PATTERN = re.compile(rf"^\s*(?P<num>{_NUMBER}|[+-]?(?:nan|inf(?:inity)?))\s*(?P<unit>[A-Za-zµμ]+)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Budget:
    """A hardware budget: ``metric`` 'energy' (value in mJ) or 'latency' (value in ms)."""

    metric: str
    value: float
    unit: str

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError("budget.metric", self.metric, f"allowed: {', '.join(METRICS)}")
        if self.unit != CANONICAL_UNIT[self.metric]:
            raise ConfigError("budget.unit", self.unit, f"a {self.metric} budget is kept in {CANONICAL_UNIT[self.metric]}")
        v = self.value
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ConfigError("budget", v, f"expected a positive finite number; {EXAMPLES}")

    def __str__(self) -> str:
        v = repr(float(self.value))
        return f"{v[:-2] if v.endswith('.0') else v} {self.unit}"

    def scaled(self, factor: float) -> "Budget":
        """The same budget times ``factor`` (e.g. ShiftAddAug's stage-one multiples 2.2 ... 3.2)."""
        return Budget(self.metric, self.value * factor, self.unit)

    def satisfied_by(self, value: float) -> bool:
        """Whether a cost in this budget's unit (mJ or ms) fits."""
        return value <= self.value

    def cost_of(self, price: Any) -> float:
        """The budgeted quantity of a priced network (anything with ``energy_mJ`` / ``latency_ms``)."""
        return float(price.energy_mJ if self.metric == "energy" else price.latency_ms)

    def to_dict(self) -> dict:
        return {"metric": self.metric, "value": self.value, "unit": self.unit}

    @staticmethod
    def from_dict(d: dict) -> "Budget":
        if not isinstance(d, dict) or set(d) != {"metric", "value", "unit"}:
            raise ConfigError("budget", d, "expected a mapping with metric, value, unit")
        return Budget(d["metric"], d["value"], d["unit"])


def parse_budget(text: str | Budget) -> Budget:
    """Parse a budget string such as ``"20mJ"``, ``"300 µJ"``, ``"2e-3 J"``, ``"5ms"``, ``"1.5s"``."""
    if isinstance(text, Budget):
        return text
    if not isinstance(text, str):
        raise ConfigError("budget", text, f"expected a string with a unit; {EXAMPLES}")
    m = _PATTERN.match(text)
    if not m:
        if text.strip() and re.fullmatch(rf"\s*{_NUMBER}\s*", text):
            raise ConfigError("budget", text, f"missing unit (J, mJ, uJ, nJ, s, ms, us, ns); {EXAMPLES}")
        raise ConfigError("budget", text, EXAMPLES)
    unit_raw = m.group("unit")
    unit = unit_raw.replace("µ", "u").replace("μ", "u")
    if unit not in _UNITS:
        raise ConfigError("budget", text, f"unknown unit {unit_raw!r} (allowed: {', '.join(UNITS)}); {EXAMPLES}")
    metric, canon, factor = _UNITS[unit]
    try:
        num = Decimal(m.group("num").replace("_", ""))
    except InvalidOperation:
        raise ConfigError("budget", text, EXAMPLES) from None
    if num.is_nan() or num.is_infinite():
        raise ConfigError("budget", text, f"expected a finite number; {EXAMPLES}")
    if num <= 0:
        raise ConfigError("budget", text, f"a budget must be greater than zero; {EXAMPLES}")
    value = float(num * factor)
    if not math.isfinite(value) or value <= 0:
        raise ConfigError("budget", text, f"out of range; {EXAMPLES}")
    return Budget(metric, value, canon)
