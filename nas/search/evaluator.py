"""Evaluator and Pricer: what the searches see of a network (its accuracy, its cost).

``Evaluator`` measures a configuration of a trained DynamicNet the way OFA does: BatchNorm
statistics re-estimated on a fixed set of cached training batches, then the task's metric on
cached validation batches (top-1 accuracy; mIoU for a segmentation network: the objective of both
search stages), on the device the network and the batches live on, under the run's precision.
Results are cached by the canonical architecture id (plus the block indices), so a search never
pays twice for the same network.

``Pricer`` prices the MF version of a network for a budget, from the space's lookup table (layer
shapes it lacks are computed and added), in the budget's unit (mJ or ms).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from nas.arch import Arch
from nas.cost.budget import Budget
from nas.train.bn import reset_bn
from nas.train.loop import autocast

if TYPE_CHECKING:  # pragma: no cover
    from nas.cost.hardware import Hardware
    from nas.cost.pricing import Price
    from nas.cost.tables import LookupTable
    from nas.supernet.net import DynamicNet

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]  # (images, labels) batches on the network's device


class Evaluator:
    """Accuracy of a configuration of a trained DynamicNet: BN re-estimated on ``calib_batches``,
    then scored on ``val_batches``; cached by architecture id and block indices (module docstring).
    """

    def __init__(self, net: DynamicNet, calib_batches: Batches, val_batches: Batches, precision: str = "fp32"):
        self.net = net
        self.calib = calib_batches
        self.val = val_batches
        self.precision = precision
        self.cache: dict[str, float] = {}
        self.calls = 0
        from nas.train.tasks import task_of

        self.task = task_of(net.max_arch.task)

    @staticmethod
    def key(arch: Arch, blocks: list[list[int]] | None = None) -> str:
        b = "" if blocks is None else "|" + ";".join(",".join(map(str, s)) for s in blocks)
        return f"{arch.arch_id}{b}"

    @torch.no_grad()
    def accuracy(self, arch: Arch, blocks: list[list[int]] | None = None) -> float:
        k = self.key(arch, blocks)
        if k in self.cache:
            return self.cache[k]
        self.calls += 1
        self.net.set_active_subnet(arch, blocks)
        with autocast(next(self.net.parameters()).device, self.precision):
            reset_bn(self.net, self.calib)
            self.net.eval()
            if self.task.name == "classification":
                correct = total = 0
                for x, y in self.val:
                    correct += (self.net(x).argmax(1) == y).sum().item()
                    total += y.numel()
                acc = 100.0 * correct / total
            else:  # the task's metric over the whole validation set (mIoU: one confusion matrix)
                meter = self.task.meter(arch.num_classes)
                for x, y in self.val:
                    meter.update(self.net(x).float(), y)
                acc = meter.result("val")[f"val_{self.task.metric}"]
        self.cache[k] = acc
        return acc


class Pricer:
    """Cost of a network for a budget: its MF version (``op``) priced from ``table`` or, without one, by the energy model."""

    def __init__(self, budget: Budget, op: str, table: LookupTable | None = None, hardware: Hardware | str | None = None,
                 bits: int = 32):
        self.budget, self.op, self.table, self.hardware, self.bits = budget, op, table, hardware, bits

    def price(self, arch: Arch) -> Price:
        """Energy / latency of ``arch`` with the search's MF convention applied."""
        mf = arch.with_ops(self.op)
        if self.table is not None:
            return self.table.price(mf, on_missing="compute")
        from nas.cost.energy import price_arch

        return price_arch(mf, self.hardware, self.bits)

    def cost(self, arch: Arch) -> float:
        return self.budget.cost_of(self.price(arch))
