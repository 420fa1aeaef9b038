"""The hardware an energy table is priced on: an Eyeriss-like accelerator described in YAML.

A hardware file (``latency_tables/<name>.yaml``; ``latency_tables/README.md`` documents every
field) holds the parameters of the energy model ``nas.cost.energy``: the PE array, register-file
and buffer capacities, the clock, access energies per memory level, unit energies per operand
width, and the ``shift`` / ``add`` sections read by the operator kinds' energy rules
(``nas.ops.registry.EnergyRule``). ``load_hardware`` validates a file (one ``ConfigError`` naming
the field) into a frozen, hashable ``Hardware``; ``Hardware.fingerprint`` hashes every number the
model reads, and lookup tables record it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from nas.errors import ConfigError, check_keys

HARDWARE_SCHEMA_VERSION = 1
DEFAULT_HARDWARE = "eyeriss-45nm"
ACCESS_LEVELS = ("dram", "dram_gb", "gb", "noc", "noc_psum", "rf", "rf_weight")
BITS = (32, 16, 8)


@dataclass(frozen=True)
class PrecisionCosts:
    """Unit energies (pJ per operation) and capacity / parallelism factors for one operand width."""

    mult_pJ: float
    add_pJ: float
    shift_pJ: float
    memory_factor: float = 1.0
    compute_factor: float = 1.0

    def unit_pJ(self, unit: str) -> float:
        """Energy of one operation on arithmetic ``unit`` (``mult``, ``add``, ``shift``: the
        operator kinds' ``EnergyRule.unit``)."""
        return {"mult": self.mult_pJ, "add": self.add_pJ, "shift": self.shift_pJ}[unit]


@dataclass(frozen=True)
class Hardware:
    """An Eyeriss-like accelerator: the parameters of the energy model, loaded from a YAML file.

    Hashable (tuples only), so per-layer results are cached per hardware. ``fingerprint`` is a hash
    of every number the model reads; lookup tables record it.
    """

    name: str
    pe_rows: int = 16
    pe_cols: int = 12
    rf_output_words: int = 16
    rf_input_words: int = 12
    rf_weight_words: int = 960
    buffer_words: int = 65536
    clock_MHz: float = 250.0
    word_bits: int = 16
    access_pJ: tuple[tuple[str, float], ...] = (
        ("dram", 200.0), ("dram_gb", 0.0), ("gb", 22.2), ("noc", 7.4), ("noc_psum", 3.7), ("rf", 3.7), ("rf_weight", 7.4)
    )
    precisions: tuple[tuple[int, PrecisionCosts], ...] = (
        (32, PrecisionCosts(3.7, 0.9, 0.13, 1, 1)),
        (16, PrecisionCosts(1.1, 0.4, 0.057, 1, 2)),
        (8, PrecisionCosts(0.2, 0.03, 0.024, 2, 4)),
    )
    shift_word_bits: int = 10
    shift_latency_speedup: float = 3.2
    add_free_levels: tuple[str, ...] = ("dram", "dram_gb", "gb", "noc")
    reference_m0_prefilter: bool = True
    description: str = field(default="", compare=False)
    provenance: str = field(default="", compare=False)  # JSON text of the file's provenance block
    path: str = field(default="", compare=False)

    # ------------------------------------------------------------------ views
    @property
    def access(self) -> dict[str, float]:
        return dict(self.access_pJ)

    @property
    def bits(self) -> tuple[int, ...]:
        return tuple(b for b, _ in self.precisions)

    def precision(self, bits: int) -> PrecisionCosts:
        for b, p in self.precisions:
            if b == bits:
                return p
        raise ConfigError("bits", bits, f"hardware {self.name!r} defines: {', '.join(map(str, self.bits))}")

    def model_dict(self) -> dict:
        """Every parameter the model reads (what ``fingerprint`` hashes)."""
        return {
            "pe_array": {"rows": self.pe_rows, "cols": self.pe_cols},
            "register_file_words": {"output": self.rf_output_words, "input": self.rf_input_words, "weight": self.rf_weight_words},
            "buffer_words": self.buffer_words,
            "clock_MHz": self.clock_MHz,
            "word_bits": self.word_bits,
            "access_pJ": dict(self.access_pJ),
            "precisions": {str(b): dataclasses.asdict(p) for b, p in self.precisions},
            "shift": {"word_bits": self.shift_word_bits, "latency_speedup": self.shift_latency_speedup},
            "add": {"free_levels": list(self.add_free_levels)},
            "reference_m0_prefilter": self.reference_m0_prefilter,
        }

    @property
    def fingerprint(self) -> str:
        return hashlib.sha1(json.dumps(self.model_dict(), sort_keys=True).encode()).hexdigest()[:12]

    def to_dict(self) -> dict:
        d = {"schema_version": HARDWARE_SCHEMA_VERSION, "kind": "hardware", "name": self.name, "description": self.description}
        d.update(self.model_dict())
        d["precisions"] = {b: dataclasses.asdict(p) for b, p in self.precisions}
        if self.provenance:
            d["provenance"] = json.loads(self.provenance)
        return d

    # ------------------------------------------------------------------ loading
    @staticmethod
    def from_dict(d: Any, where: str = "hardware") -> "Hardware":
        return _hardware_from_dict(d, where)

    @staticmethod
    def load(name_or_path: str | Path | None = None) -> "Hardware":
        """A hardware file by path, or by name from ``latency_tables/`` (default: eyeriss-45nm)."""
        return load_hardware(name_or_path)


def list_hardware() -> list[str]:
    from nas.paths import LATENCY_TABLES

    out = []
    for p in sorted(LATENCY_TABLES.glob("*.yaml")):
        try:
            import yaml

            if (yaml.safe_load(p.read_text()) or {}).get("kind") == "hardware":
                out.append(p.stem)
        except Exception:  # noqa: BLE001 - listing must not fail on a broken user file
            continue
    return out


@lru_cache(maxsize=32)
def _load_hardware_cached(path: str, mtime: float) -> Hardware:
    import yaml

    p = Path(path)
    try:
        d = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(p.name, "<invalid YAML>", f"a hardware mapping ({str(e).splitlines()[0]})") from None
    hw = _hardware_from_dict(d, p.name)
    return dataclasses.replace(hw, path=str(p))


def load_hardware(name_or_path: str | Path | Hardware | None = None) -> Hardware:
    """Load a hardware file: a path, or a name under ``latency_tables/`` (``None``: the default)."""
    if isinstance(name_or_path, Hardware):
        return name_or_path
    from nas.paths import LATENCY_TABLES

    name = DEFAULT_HARDWARE if name_or_path is None else str(name_or_path)
    p = Path(name)
    if not p.is_file():
        alt = LATENCY_TABLES / f"{name}.yaml"
        if alt.is_file():
            p = alt
        else:
            raise ConfigError("hardware", name, f"expected a hardware YAML file or one of: {', '.join(list_hardware()) or '(none)'}")
    return _load_hardware_cached(str(p.resolve()), p.stat().st_mtime)


def _num(d: dict, key: str, where: str, integer: bool = False, positive: bool = True) -> Any:
    v: Any = d.get(key)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
    if ok and integer:
        ok = float(v).is_integer()
    if ok:
        ok = v > 0 if positive else v >= 0
    if not ok:
        what = "integer" if integer else "number"
        raise ConfigError(f"{where}.{key}", v if key in d else "<missing>", f"expected a {'positive' if positive else 'non-negative'} {what}")
    return int(v) if integer else float(v)


def _hardware_from_dict(d: Any, where: str) -> Hardware:
    top = {
        "schema_version", "kind", "name", "description", "pe_array", "register_file_words", "buffer_words", "clock_MHz",
        "word_bits", "access_pJ", "precisions", "shift", "add", "reference_m0_prefilter", "provenance",
    }
    check_keys(d, where, top, {"name", "pe_array", "register_file_words", "buffer_words", "clock_MHz", "access_pJ", "precisions"})
    if d.get("schema_version", HARDWARE_SCHEMA_VERSION) != HARDWARE_SCHEMA_VERSION:
        raise ConfigError(f"{where}.schema_version", d.get("schema_version"), f"this version reads {HARDWARE_SCHEMA_VERSION}")
    if d.get("kind", "hardware") != "hardware":
        raise ConfigError(f"{where}.kind", d.get("kind"), "expected 'hardware'")
    pe = check_keys(d["pe_array"], f"{where}.pe_array", {"rows", "cols"}, {"rows", "cols"})
    rf = check_keys(d["register_file_words"], f"{where}.register_file_words", {"output", "input", "weight"}, {"output", "input", "weight"})
    acc = check_keys(d["access_pJ"], f"{where}.access_pJ", set(ACCESS_LEVELS), set(ACCESS_LEVELS))
    access = tuple((k, _num(acc, k, f"{where}.access_pJ", positive=False)) for k in ACCESS_LEVELS)
    precs = d["precisions"]
    if not isinstance(precs, dict) or not precs:
        raise ConfigError(f"{where}.precisions", precs, "expected a mapping bits -> {mult_pJ, add_pJ, shift_pJ, memory_factor, compute_factor}")
    plist = []
    for b, p in precs.items():
        w = f"{where}.precisions.{b}"
        try:
            bits = int(b)
        except (TypeError, ValueError):
            raise ConfigError(w, b, "keys are operand widths in bits, e.g. 32, 16, 8") from None
        if bits < 1 or str(bits) != str(b).strip():
            raise ConfigError(w, b, "keys are operand widths in bits, e.g. 32, 16, 8")
        check_keys(p, w, {"mult_pJ", "add_pJ", "shift_pJ", "memory_factor", "compute_factor"}, {"mult_pJ", "add_pJ", "shift_pJ"})
        p = {"memory_factor": 1, "compute_factor": 1, **p}
        plist.append((bits, PrecisionCosts(*(_num(p, k, w, positive=k.endswith("factor")) for k in ("mult_pJ", "add_pJ", "shift_pJ", "memory_factor", "compute_factor")))))
    plist.sort(key=lambda t: -t[0])
    shift = check_keys(d.get("shift", {"word_bits": 10, "latency_speedup": 3.2}), f"{where}.shift", {"word_bits", "latency_speedup"}, {"word_bits", "latency_speedup"})
    add = check_keys(d.get("add", {"free_levels": ["dram", "dram_gb", "gb", "noc"]}), f"{where}.add", {"free_levels"}, {"free_levels"})
    free = add["free_levels"]
    if not isinstance(free, list) or any(x not in ACCESS_LEVELS for x in free):
        raise ConfigError(f"{where}.add.free_levels", free, f"a list of access levels from: {', '.join(ACCESS_LEVELS)}")
    quirk = d.get("reference_m0_prefilter", True)
    if not isinstance(quirk, bool):
        raise ConfigError(f"{where}.reference_m0_prefilter", quirk, "expected true or false")
    name = d["name"]
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}.name", name, "expected a non-empty string")
    prov = d.get("provenance")
    return Hardware(
        name=name,
        pe_rows=_num(pe, "rows", f"{where}.pe_array", integer=True),
        pe_cols=_num(pe, "cols", f"{where}.pe_array", integer=True),
        rf_output_words=_num(rf, "output", f"{where}.register_file_words", integer=True),
        rf_input_words=_num(rf, "input", f"{where}.register_file_words", integer=True),
        rf_weight_words=_num(rf, "weight", f"{where}.register_file_words", integer=True),
        buffer_words=_num(d, "buffer_words", where, integer=True),
        clock_MHz=_num(d, "clock_MHz", where),
        word_bits=_num(d, "word_bits", where, integer=True) if "word_bits" in d else 16,
        access_pJ=access,
        precisions=tuple(plist),
        shift_word_bits=_num(shift, "word_bits", f"{where}.shift", integer=True),
        shift_latency_speedup=_num(shift, "latency_speedup", f"{where}.shift"),
        add_free_levels=tuple(free),
        reference_m0_prefilter=quirk,
        description=str(d.get("description", "") or ""),
        provenance=json.dumps(prov, sort_keys=True) if prov is not None else "",
    )


def clear_cache() -> None:
    """Forget loaded hardware files (e.g. after editing one in place)."""
    _load_hardware_cached.cache_clear()
