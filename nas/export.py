"""Write and read an exported TargetNet: the MF-only static network, nothing else.

A target directory holds

* ``arch.json``: the canonical Arch (every conv's operator kind);
* ``weights.pt``: the static network's state_dict (remap folded in, shift weights stored as signed
  powers of two, BN statistics re-estimated for the TargetNet); load with ``weights_only=True``;
* ``cost.json``: exact op counts per layer and totals, plus energy / latency when a hardware
  model is available;
* ``meta.json``: operator options, toolkit and torch versions, the export check (largest logit
  difference between the exported network and the trained hybrid network in target mode) and
  whatever the caller adds (training config, seeds).

``load_exported(dir)`` rebuilds the network with ``nas.models.build_model``: no toolkit-specific
runtime beyond the operators themselves.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

import nas
from nas.arch import Arch
from nas.errors import ConfigError
from nas.io import atomic_torch_save, atomic_write_json, read_torch

EXPORT_VERSION = 1


def arch_cost(arch: Arch) -> dict:
    """Op counts and, where the cost package provides it, the paper's energy / latency."""
    from nas.cost.counting import count_ops

    out = {"schema_version": 1, "counts": count_ops(arch).to_json_dict()}
    try:
        from nas.cost.energy import price_arch  # the energy model (issue 5) when installed

        price = price_arch(arch)
        out["energy_mJ"] = price.energy_mJ
        out["latency_ms"] = price.latency_ms
    except ImportError:
        pass
    return out


@torch.no_grad()
def export_target(net, out_dir: str | Path, sample: torch.Tensor, op_options: dict, meta: dict | None = None) -> dict:
    """Export the active (target) configuration of a DynamicNet; returns a small summary dict."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arch = net.active_arch
    static = net.get_active_subnet().eval()
    was_training = net.training
    net.eval()
    diff = (net(sample) - static(sample)).abs().max().item()
    net.train(was_training)
    mult_layers = multiplicative_layers(static)
    arch.save(out / "arch.json")
    atomic_torch_save(static.state_dict(), out / "weights.pt")
    cost = arch_cost(arch)
    atomic_write_json(out / "cost.json", cost)
    info = {
        "schema_version": EXPORT_VERSION,
        "arch_id": arch.arch_id,
        "op": arch.op_kind,
        "op_options": op_options,
        "bn_recalibrated": True,
        "export_max_abs_logit_diff": diff,
        "multiplicative_layers": mult_layers,
        "toolkit_version": nas.__version__,
        "torch_version": torch.__version__,
        **(meta or {}),
    }
    atomic_write_json(out / "meta.json", info)
    return {"dir": str(out), "arch_id": arch.arch_id, "max_abs_logit_diff": diff, "macs": cost["counts"]["macs"],
            **({"energy_mJ": cost["energy_mJ"]} if "energy_mJ" in cost else {})}


def multiplicative_layers(model: nn.Module) -> list[str]:
    """Names of the layers of ``model`` that multiply (plain nn.Conv2d / nn.Linear)."""
    return [name for name, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]


def load_exported(path: str | Path) -> nn.Module:
    """Rebuild an exported TargetNet (eval mode)."""
    from nas.models import build_model
    from nas.rundir import read_json

    p = Path(path)
    for name in ("arch.json", "weights.pt", "meta.json"):
        if not (p / name).is_file():
            raise ConfigError("export dir", str(p), f"an exported TargetNet directory (missing {name})")
    arch = Arch.load(p / "arch.json")
    meta = read_json(p / "meta.json", _REBUILD)
    model = build_model(arch, meta.get("op_options") if isinstance(meta, dict) else None)
    try:
        model.load_state_dict(read_torch(p / "weights.pt"))
    except ConfigError as e:
        raise ConfigError(e.field, e.value, _REBUILD) from None
    except (RuntimeError, TypeError, AttributeError) as e:  # loads, but is not these weights
        raise ConfigError(str(p / "weights.pt"), f"<not the weights of arch.json: {str(e).splitlines()[0][:120]}>", _REBUILD) from None
    return model.eval()


_REBUILD = "an exported TargetNet file; rebuild target/ from the run's checkpoint with shiftaddaug-export RUN_DIR --format json"
