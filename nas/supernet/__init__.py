"""Elastic hybrid networks: supernet, SubNet and augmented model in one ``DynamicNet``."""

from nas.supernet.net import DynamicBatchNorm2d, DynamicNet, sort_channels

__all__ = ["DynamicBatchNorm2d", "DynamicNet", "sort_channels"]
