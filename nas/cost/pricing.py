"""Pricing: one small protocol behind every way the toolkit prices a network.

A :class:`CostModel` prices an Arch (``price(arch) -> Price``) and reduces it to the one number a
budget compares (``cost(arch) -> float``, in the unit of its ``metric``: mJ for ``energy``, ms
for ``latency``). Implementations:

* ``nas.cost.tables.EnergyTable``: the energy model's rows of a lookup table (``metric`` energy);
* ``nas.cost.tables.LatencyTable``: measured latencies of a lookup table (``metric`` latency);
* ``nas.cost.energy.EnergyModel``: the energy model itself, layer by layer, no table.

A :class:`Price` is what ``price`` returns: a per-layer breakdown with totals
(``TablePrice`` from the tables, ``nas.cost.energy.ArchPrice`` from the model), ``to_json_dict``
for reports. ``Budget.cost_of(price)`` reads the quantity a budget is written in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from nas.arch import Arch
from nas.cost.layers import Layer

METRICS = ("energy", "latency")


@runtime_checkable
class Price(Protocol):
    """A priced network: its name, latency (ms; and ``energy_mJ`` when the metric is energy)."""

    name: str

    @property
    def latency_ms(self) -> float: ...

    def to_json_dict(self) -> dict: ...


@runtime_checkable
class CostModel(Protocol):
    """Something that prices networks: ``price(arch)`` in full, ``cost(arch)`` as the one number a
    budget of ``metric`` ("energy": mJ, "latency": ms) compares."""

    metric: str

    def price(self, arch: Arch) -> Price: ...

    def cost(self, arch: Arch) -> float: ...


@dataclass
class TablePrice:
    """A network priced from a lookup table: one row per layer of ``arch_layers`` (None where the
    table has no row because the layer costs nothing there), totals over ``columns``."""

    name: str
    kind: str  # the table's kind: energy | latency
    rows: list[tuple[Layer, dict | None]]
    overhead_ms: float | None = None  # latency tables: container and per-layer overheads of the header
    computed: list[str] = field(default_factory=list)  # layers added to the table on the way
    columns: tuple[str, ...] = ("latency_ms",)  # the summable value columns of the table

    def total(self, column: str) -> float:
        t = sum(r[column] for _, r in self.rows if r is not None)
        if column == "latency_ms" and self.overhead_ms is not None:
            t += self.overhead_ms
        return float(t)

    @property
    def energy_mJ(self) -> float:
        if "energy_mJ" not in self.columns:
            raise AttributeError(f"a {self.kind} table has no energy")
        return self.total("energy_mJ")

    @property
    def latency_ms(self) -> float:
        return self.total("latency_ms")

    def to_json_dict(self) -> dict:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, **{c: self.total(c) for c in self.columns}}
        if self.overhead_ms is not None:
            out["overhead_ms"] = self.overhead_ms
        out["layers"] = [{"name": L.name, **{c: (0.0 if r is None else r[c]) for c in self.columns}} for L, r in self.rows]
        return out
