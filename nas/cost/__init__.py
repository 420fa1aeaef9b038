"""Costs of architectures: exact op counts, the paper's energy model, latency tables, budgets."""

from nas.cost.budget import Budget, parse_budget
from nas.cost.counting import CostReport, Layer, LayerCost, arch_layers, count_module_ops, count_ops, layer_cost
from nas.cost.energy import ArchPrice, Hardware, LayerEnergy, layer_energy, load_hardware, price_arch
from nas.cost.lut import LookupTable, TablePrice, arch_list_layers, energy_table, space_layers

__all__ = [
    "ArchPrice",
    "Budget",
    "CostReport",
    "Hardware",
    "Layer",
    "LayerCost",
    "LayerEnergy",
    "LookupTable",
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
    "space_layers",
]
