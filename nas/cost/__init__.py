"""Costs of architectures: exact op counts, the paper's energy model, latency tables, budgets.

Modules, one concept each: ``layers`` (the per-layer decomposition every cost reads),
``counting`` (op counts), ``hardware`` (the accelerator description), ``energy`` (the energy
model), ``latency`` (measurements on this machine), ``pricing`` (the ``CostModel`` protocol),
``tablefile`` (the lookup-table file format), ``tables`` (energy and latency tables), ``build``
(building tables, resumable), ``shapes`` (the layer shapes a space can produce), ``budget``.
"""

from nas.cost.budget import Budget, parse_budget
from nas.cost.counting import CostReport, LayerCost, count_module_ops, count_ops, layer_cost
from nas.cost.energy import ArchPrice, EnergyModel, LayerEnergy, layer_energy, price_arch
from nas.cost.hardware import Hardware, load_hardware
from nas.cost.layers import PARTS, Layer, arch_layers
from nas.cost.pricing import CostModel, Price, TablePrice
from nas.cost.shapes import arch_list_layers, space_layers
from nas.cost.tablefile import RowKey
from nas.cost.tables import EnergyTable, LatencyTable, LookupTable, energy_table, shipped_energy_table

__all__ = [
    "ArchPrice",
    "Budget",
    "CostModel",
    "CostReport",
    "EnergyModel",
    "EnergyTable",
    "Hardware",
    "LatencyTable",
    "Layer",
    "LayerCost",
    "LayerEnergy",
    "LookupTable",
    "PARTS",
    "Price",
    "RowKey",
    "TablePrice",
    "arch_layers",
    "arch_list_layers",
    "count_module_ops",
    "count_ops",
    "energy_table",
    "layer_cost",
    "layer_energy",
    "load_hardware",
    "parse_budget",
    "price_arch",
    "shipped_energy_table",
    "space_layers",
]
