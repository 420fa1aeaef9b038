"""Stop a training run the moment it diverges, naming the layer.

A NaN or infinite loss poisons every weight at the next optimizer step, and a diverged shift or
adder layer can look healthy afterwards; training on would waste the rest of the run and
checkpoint garbage over the last good state. So:

* ``check_losses`` (every step, before the optimizer step; the losses are Python floats the step
  computed anyway, so the check is free): a non-finite loss raises ``TrainingDivergedError``
  naming the first parameter that is already non-finite or, when all weights are still finite,
  the first layer whose output turns non-finite on the same batch;
* ``check_weights`` (before every checkpoint): a non-finite parameter raises, so the last good
  checkpoint is never overwritten by a diverged one.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from nas.errors import TrainingDivergedError

_ADVICE = "the last good checkpoint is kept; lower the learning rate (--lr) and start over, or resume from it"


def first_nonfinite_parameter(net: nn.Module) -> str | None:
    """Name of the first parameter (in registration order) holding a NaN or an infinity."""
    for name, p in net.named_parameters():
        if not torch.isfinite(p).all():
            return name
    return None


@torch.no_grad()
def first_nonfinite_output(net: nn.Module, x: torch.Tensor) -> str | None:
    """Name of the first leaf module whose output on ``x`` holds a NaN or an infinity."""
    found: list[str] = []
    hooks = []

    def hook(name):
        def fn(module, inputs, output):
            if not found and isinstance(output, torch.Tensor) and not torch.isfinite(output).all():
                found.append(name)
        return fn

    for name, m in net.named_modules():
        if name and not any(True for _ in m.children()):
            hooks.append(m.register_forward_hook(hook(name)))
    was_training = net.training
    try:
        net.eval()  # leave the BatchNorm statistics alone
        net(x)
    except Exception:  # a forward that fails outright on NaNs: the hooks have seen what they saw
        pass
    finally:
        net.train(was_training)
        for h in hooks:
            h.remove()
    return found[0] if found else None


def check_losses(net: nn.Module, losses: dict, x: torch.Tensor | None = None, where: str = "") -> None:
    """Raise ``TrainingDivergedError`` when a loss of this step is not finite."""
    bad = {k: v for k, v in losses.items() if isinstance(v, float) and not math.isfinite(v)}
    if not bad:
        return
    k, v = next(iter(bad.items()))
    layer = first_nonfinite_parameter(net)
    if layer is not None:
        culprit = f"first non-finite weight: {layer}"
    else:
        out = first_nonfinite_output(net, x) if x is not None else None
        culprit = f"weights finite, first non-finite output: layer {out}" if out else "weights and layer outputs finite"
    raise TrainingDivergedError(f"training diverged{' at ' + where if where else ''}: {k} is {v} ({culprit}); {_ADVICE}")


def check_weights(net: nn.Module, where: str = "") -> None:
    """Raise ``TrainingDivergedError`` when a parameter holds a NaN or an infinity."""
    layer = first_nonfinite_parameter(net)
    if layer is not None:
        raise TrainingDivergedError(f"training diverged{' at ' + where if where else ''}: weight {layer} is not finite; {_ADVICE}")
