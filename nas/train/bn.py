"""BatchNorm re-estimation (NetAug's ``reset_bn``, OFA's ``set_running_statistics``).

Under augmentation and weight sharing the running BN statistics describe a mixture of networks,
so before every evaluation and before export they are recomputed for the active network on a
fixed set of training batches: cumulative averages over the batches, everything else in eval mode.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn


@torch.no_grad()
def reset_bn(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    was_training = model.training
    saved = [(m, m.momentum) for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the calibration batches
        m.train()
    try:
        for x, _ in batches:
            model(x)
    finally:
        for m, mom in saved:
            m.momentum = mom
        model.train(was_training)
