"""Costs of architectures: exact op counts, the paper's energy model, latency tables, budgets."""

from nas.cost.counting import CostReport, Layer, LayerCost, arch_layers, count_module_ops, count_ops, layer_cost

__all__ = ["CostReport", "Layer", "LayerCost", "arch_layers", "count_module_ops", "count_ops", "layer_cost"]
