"""Write and read an exported TargetNet: the MF-only static network, nothing else.

A target directory holds

* ``arch.json``: the canonical Arch (every conv's operator kind);
* ``weights.pt``: the static network's state_dict (remap folded in, shift weights stored as signed
  powers of two, BN statistics re-estimated for the TargetNet); load with ``weights_only=True``;
* ``cost.json``: exact op counts per layer and totals, energy and latency (``cost_record``: one
  schema, whether the energy model or a search's lookup table priced it);
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

from nas._version import __version__
from nas.arch import Arch
from nas.errors import ConfigError
from nas.io import atomic_torch_save, atomic_write_json, read_torch

EXPORT_VERSION = 1


COST_VERSION = 2


def cost_record(arch: Arch, price=None, *, hardware=None, bits: int = 32, budget: dict | None = None) -> dict:
    """``target/cost.json``, the one schema (version 2) whoever writes it (``write_cost``).

    ``price``: the network's price (an energy-model or lookup-table price with ``energy_mJ``,
    ``latency_ms`` and per-layer rows); None prices ``arch`` with the energy model on ``hardware``
    at ``bits``. Fields: ``arch_id``, ``op``, ``counts`` (exact op counts, ``nas.cost.counting``),
    ``energy_mJ`` and ``latency_ms`` (None where the price has none), ``hardware``, ``bits``,
    ``priced_with`` ("energy model" or "lookup table"), ``layers`` (name, energy_mJ, latency_ms
    per layer) and ``budget`` (the search's, or None).
    """
    from nas.cost.counting import count_ops
    from nas.cost.energy import price_arch

    source = "lookup table" if price is not None else "energy model"
    if price is None:
        price = price_arch(arch, hardware, bits)
        hardware = price.hardware
    elif hardware is None:
        hardware = getattr(price, "hardware", None)

    def value(name: str) -> float | None:
        try:
            return float(getattr(price, name))
        except AttributeError:  # e.g. a latency table has no energy
            return None

    layers = [{"name": r["name"], "energy_mJ": r.get("energy_mJ"), "latency_ms": r.get("latency_ms")}
              for r in price.to_json_dict()["layers"]]
    return {"schema_version": COST_VERSION, "arch_id": arch.arch_id, "op": arch.op_kind,
            "counts": count_ops(arch).to_json_dict(), "energy_mJ": value("energy_mJ"), "latency_ms": value("latency_ms"),
            "hardware": hardware, "bits": bits, "priced_with": source, "layers": layers, "budget": budget}


def write_cost(target_dir: str | Path, arch: Arch, price=None, *, hardware=None, bits: int = 32,
               budget: dict | None = None) -> dict:
    """Write ``target_dir/cost.json`` (``cost_record``); the one writer of that file."""
    cost = cost_record(arch, price, hardware=hardware, bits=bits, budget=budget)
    atomic_write_json(Path(target_dir) / "cost.json", cost)
    return cost


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
    cost = write_cost(out, arch)
    info = {
        "schema_version": EXPORT_VERSION,
        "arch_id": arch.arch_id,
        "op": arch.op_kind,
        "op_options": op_options,
        "bn_recalibrated": True,
        "export_max_abs_logit_diff": diff,
        "multiplicative_layers": mult_layers,
        "toolkit_version": __version__,
        "torch_version": torch.__version__,
        **(meta or {}),
    }
    atomic_write_json(out / "meta.json", info)
    return {"dir": str(out), "arch_id": arch.arch_id, "max_abs_logit_diff": diff, "macs": cost["counts"]["macs"],
            "energy_mJ": cost["energy_mJ"]}


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
