"""The baseline zoo: Arch files under ``search_spaces/baselines/`` (NetAug's base models).

``zoo_arch("mbv2-w0.35", op="shift", resolution=32, num_classes=10)`` gives the Arch with the
paper's operator convention for that kind (see ``Arch.with_ops``). Any ``<name>.json`` a user
drops into that folder becomes a zoo entry.
"""

from __future__ import annotations

from nas.arch import Arch
from nas.errors import ConfigError
from nas.paths import BASELINES


def list_zoo() -> list[str]:
    return sorted(p.stem for p in BASELINES.glob("*.json"))


def zoo_arch(name: str, op: str = "mult", resolution: int | None = None, num_classes: int | None = None) -> Arch:
    names = list_zoo()
    if name not in names:
        raise ConfigError("model", name, f"available models: {', '.join(names)}")
    arch = Arch.load(BASELINES / f"{name}.json").with_ops(op)
    return resize(arch, resolution, num_classes)


def resize(arch: Arch, resolution: int | None = None, num_classes: int | None = None) -> Arch:
    """The same arch for another input resolution and / or number of classes (validated)."""
    d = arch.to_dict()
    if resolution is not None:
        d["resolution"] = resolution
    if num_classes is not None:
        d["num_classes"] = num_classes
    return Arch.from_dict(d)
