"""The paper-compatible energy model: an Eyeriss-like row-stationary accelerator, per layer.

This is the analytical model the ShiftAddAug paper priced its networks with (method.md section 9):
the loop-nest model of ShiftAddNAS ``CV/retraining_hybrid/hw_utils.py`` (Eyeriss, Chen et al.
JSSC'17, in the style of DNN-Chip Predictor, Zhao et al. ICASSP'20), reimplemented here from its
description and vectorised with NumPy. Every number comes from a hardware file
(``latency_tables/<name>.yaml``, see :class:`Hardware`).

Per conv / linear layer with batch N, input C x H x W (C = in_channels / groups, so a depthwise
conv has C = 1), kernel R = S, M outputs of E x F:

* Tilings: every ordered factorisation N = N0*N3, M = M0*M1*M2*M3, C = C0*C1*C2*C3 (C3 = 1),
  E = E1*E3 (E1 != 1 unless the layer is FC-like: a linear, or a conv on a 1x1 map giving 1x1).
  F is not tiled. Candidates are enumerated in the reference's order.
* A tiling is valid when (m = memory factor, c = compute factor of the precision)
  M0 <= rf_out*m;  M1*C1*E1*R < rows*cols*c;  C0*S < rf_in*m;  M0*C0*S < rf_weight*m;
  N0*C1*C0*((E1-1)s+R)*((F-1)s+S) + N0*M2*M1*M0*E1*F < buffer*m.
* Energy = compute (N*E*F*M*R*S*C operations x unit energy) + access counts x access energies:
  DRAM  ifmap*M3 + weight*N3*E3 + ofmap*max(2*C3-1, 1);
  GB    ifmap*M3*M2 + ofmap*max(2*C3*(C2-1), 1);
  NoC   ifmap*M3*M2*M1*R*E/H + weight*N3*E3*E1, psum ofmap*max(C3*C2*(C1*R-1), 1);
  RF    ifmap*M3*M2*M1*R*E/H*M0*S*F/W + psum ofmap*max(2*C3*C2*C1*R*(C0*S-1), 1),
        weight*N3*E3*E1*F*N0.
  Access energies are per ``word_bits`` word scaled by bits / word_bits. Shift layers are charged
  as ``shift.word_bits`` (10-bit) words at every precision; add layers pay nothing at the
  ``add.free_levels`` (DRAM, buffer, NoC: "on chip").
* Latency = N3*N0*M3*M2*M0*C3*C2*C0*E3*F*S cycles at the clock (shift layers ``latency_speedup``
  times faster).
* Selected tiling: the first minimiser of (E - E_min)/E_max + (L - L_min)/L_max.

Conventions of the paper's accounting: only convs and linears are charged (SE convs as 1x1 convs
on a 1x1 map); BN, activations, pooling, SE gating and residual adds cost nothing. A network's
energy / latency is the sum over its layers (``nas.cost.counting.arch_layers``), each priced with
its own operator; which conv computes with which operator is the Arch's (``nas.arch.op_convention``
for mult / shift / add models: Add models add in the stem and every 1x1 conv, SE convs included,
and multiply in depthwise convs and the classifier).

Departures from the reference, all documented in ``latency_tables/README.md``: latency is reported
in ms (the reference's "ms" is seconds); 16-bit operands get parameters from the hardware file (the
reference has 32 and 8 only); a layer with no valid tiling under the E1 != 1 rule (a conv shrinking
the map to 1x1) is retried as FC-like instead of crashing, and flagged ``relaxed``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from nas.cost.counting import Layer, arch_layers
from nas.errors import ConfigError, check_keys

HARDWARE_SCHEMA_VERSION = 1
DEFAULT_HARDWARE = "eyeriss-45nm"
ACCESS_LEVELS = ("dram", "dram_gb", "gb", "noc", "noc_psum", "rf", "rf_weight")
BITS = (32, 16, 8)


# --------------------------------------------------------------------------------------------
# hardware description


@dataclass(frozen=True)
class PrecisionCosts:
    """Unit energies (pJ per operation) and capacity / parallelism factors for one operand width."""

    mult_pJ: float
    add_pJ: float
    shift_pJ: float
    memory_factor: float = 1.0
    compute_factor: float = 1.0


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
    v = d.get(key)
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


# --------------------------------------------------------------------------------------------
# tiling enumeration (the reference's candidate order)


def _prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while n % p == 0:
        out.append(p)
        n //= p
    p = 3
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 2
    if n > 1:
        out.append(n)
    return out


@lru_cache(maxsize=4096)
def _divisors_in_order(n: int) -> tuple[int, ...]:
    """Divisors of n in the reference's order: products of the prime-factor multiset, walking a
    binary include/exclude tree (include first) over the sorted primes, first occurrence kept."""
    primes = _prime_factors(n) if n > 1 else [1]
    seq: list[int] = [1]
    # Leaves of the tree in order: the choice for the first prime is the most significant bit.
    for p in reversed(primes):
        seq = [x * p for x in seq] + seq
    return tuple(dict.fromkeys(seq))


@lru_cache(maxsize=4096)
def ordered_factorizations(n: int, parts: int) -> tuple[tuple[int, ...], ...]:
    """Every ordered tuple of ``parts`` positive integers whose product is ``n``, in the
    enumeration order of the reference simulator (first factor outermost)."""
    if parts == 1:
        return ((n,),)
    return tuple((d,) + rest for d in _divisors_in_order(n) for rest in ordered_factorizations(n // d, parts - 1))


def _skip_remove(items: tuple[tuple[int, ...], ...], bad) -> list[tuple[int, ...]]:
    """The reference's ``for t in lst: if bad(t): lst.remove(t)``: removing while iterating skips
    the element right after each removed one (it survives unchecked)."""
    out = list(items)
    i = 0
    while i < len(out):
        if bad(out[i]):
            del out[i]
        i += 1
    return out


# --------------------------------------------------------------------------------------------
# one layer


@dataclass(frozen=True)
class LayerEnergy:
    """Energy (mJ) and latency (ms) of one layer on one hardware, with the selected tiling."""

    name: str
    charged: bool
    energy_mJ: float = 0.0
    latency_ms: float = 0.0
    compute_mJ: float = 0.0
    dram_mJ: float = 0.0
    gb_mJ: float = 0.0
    noc_mJ: float = 0.0
    rf_mJ: float = 0.0
    cycles: int = 0
    tiling: str = ""
    candidates: int = 0
    relaxed: bool = False

    def as_row(self) -> dict:
        return {k: getattr(self, k) for k in ("energy_mJ", "latency_ms", "compute_mJ", "dram_mJ", "gb_mJ", "noc_mJ", "rf_mJ", "tiling")}


def is_charged(layer: Layer) -> bool:
    """Whether the paper's accounting charges energy to ``layer`` (convs and linears only)."""
    return layer.is_conv or layer.kind == "linear"


def layer_dims(layer: Layer, batch: int = 1) -> tuple[int, int, int, int, int, int, int, bool]:
    """(N, C, H, R, M, E, stride, fc_like) of a charged layer as the model sees it.

    Depthwise convs are entered with C = in_channels / groups = 1; linears as 1x1 convs on a 1x1 map.
    """
    if layer.kind == "linear":
        return batch, layer.in_channels, 1, 1, layer.out_channels, 1, 1, True
    c = layer.in_channels // layer.groups
    fc = layer.in_hw == 1 and layer.out_hw == 1
    return batch, c, layer.in_hw, layer.kernel_size, layer.out_channels, layer.out_hw, layer.stride, fc


def layer_energy(layer: Layer, hw: Hardware | str | None = None, bits: int = 32, batch: int = 1) -> LayerEnergy:
    """Energy and latency of one layer (zero for the layers the paper does not charge)."""
    if not is_charged(layer):
        return LayerEnergy(layer.name, False)
    hw = load_hardware(hw)
    if layer.op not in ("mult", "shift", "add"):
        raise ConfigError(f"layer {layer.name}.op", layer.op, "allowed: mult, shift, add")
    hw.precision(bits)
    N, C, H, R, M, E, stride, fc = layer_dims(layer, batch)
    res = _search(hw, layer.op, bits, N, C, H, R, M, E, stride, fc)
    if res is None and not fc:
        res = _search(hw, layer.op, bits, N, C, H, R, M, E, stride, True)
        if res is not None:
            res = dict(res, relaxed=True)
    if res is None:
        raise ConfigError(
            f"layer {layer.name}",
            f"{layer.kind} {layer.in_channels}->{layer.out_channels} k{layer.kernel_size} s{layer.stride} at {layer.in_hw}x{layer.in_hw}",
            f"no tiling fits hardware {hw.name!r} (register files / buffer too small for this layer at {bits} bits)",
        )
    return LayerEnergy(layer.name, True, **res)


def _unit_energies(hw: Hardware, op: str, bits: int) -> tuple[float, dict[str, float], float]:
    """(compute mJ per op, access mJ per access for each level, seconds per cycle)."""
    p = hw.precision(bits)
    comp = {"mult": p.mult_pJ, "shift": p.shift_pJ, "add": p.add_pJ}[op] / 1e9
    data_bits = hw.shift_word_bits if op == "shift" else bits
    scale = data_bits / hw.word_bits
    acc = {}
    for level, pj in hw.access_pJ:
        acc[level] = 0.0 if (op == "add" and level in hw.add_free_levels) else pj / 1e9 * scale
    cycle = 1.0 / (hw.clock_MHz * 1e6)
    if op == "shift":
        cycle = cycle / hw.shift_latency_speedup
    return comp, acc, cycle


@lru_cache(maxsize=65536)
def _search(hw: Hardware, op: str, bits: int, N: int, C: int, H: int, R: int, M: int, E: int, stride: int, fc: bool) -> dict | None:
    W, S, F = H, R, E
    prec = hw.precision(bits)
    mem, cmpf = prec.memory_factor, prec.compute_factor

    n_t = np.array(ordered_factorizations(N, 2), dtype=np.int64)  # (N0, N3)
    m_all = ordered_factorizations(M, 4)  # (M0, M1, M2, M3)
    if hw.reference_m0_prefilter:
        m_all = _skip_remove(m_all, lambda t: t[0] > hw.rf_output_words)
    m_t = np.array([t for t in m_all if t[0] <= hw.rf_output_words * mem], dtype=np.int64).reshape(-1, 4)
    c_t = np.array([t for t in ordered_factorizations(C, 4) if t[3] == 1 and t[0] * S < hw.rf_input_words * mem], dtype=np.int64).reshape(-1, 4)
    e_t = np.array([t for t in ordered_factorizations(E, 2) if fc or t[0] != 1], dtype=np.int64).reshape(-1, 2)
    if not (len(n_t) and len(m_t) and len(c_t) and len(e_t)):
        return None

    # broadcast axes: N (0), M (1), C (2), E (3): C-order flattening = the reference's loop order
    N0, N3 = (n_t[:, i].reshape(-1, 1, 1, 1) for i in range(2))
    M0, M1, M2, M3 = (m_t[:, i].reshape(1, -1, 1, 1) for i in range(4))
    C0, C1, C2, C3 = (c_t[:, i].reshape(1, 1, -1, 1) for i in range(4))
    E1, E3 = (e_t[:, i].reshape(1, 1, 1, -1) for i in range(2))
    valid = (M1 * C1 * E1 * R < hw.pe_rows * hw.pe_cols * cmpf) & (M0 * C0 * S < hw.rf_weight_words * mem)
    valid = valid & (
        N0 * C1 * C0 * ((E1 - 1) * stride + R) * ((F - 1) * stride + S) + N0 * M2 * M1 * M0 * E1 * F < hw.buffer_words * mem
    )
    idx = np.nonzero(valid)
    if len(idx[0]) == 0:
        return None
    n_i, m_i, c_i, e_i = idx
    N0, N3 = n_t[n_i, 0], n_t[n_i, 1]
    M0, M1, M2, M3 = (m_t[m_i, i] for i in range(4))
    C0, C1, C2, C3 = (c_t[c_i, i] for i in range(4))
    E1, E3 = e_t[e_i, 0], e_t[e_i, 1]

    ifmap, weight, ofmap = N * H * W * C, R * S * C * M, N * E * F * M
    ops = N * E * F * M * R * S * C
    dram_if = M3 * ifmap
    dram_w = N3 * E3 * weight
    dram_of = np.maximum(2 * C3 - 1, 1) * ofmap
    gb = M3 * M2 * ifmap + np.maximum(2 * C3 * (C2 - 1), 1) * ofmap
    noc = M3 * M2 * M1 * R * E / H * ifmap + N3 * E3 * E1 * weight
    noc_psum = np.maximum(C3 * C2 * (C1 * R - 1), 1) * ofmap
    rf = M3 * M2 * M1 * R * E / H * M0 * S * F / W * ifmap + np.maximum(C3 * C2 * C1 * R * (C0 * S - 1) * 2, 1) * ofmap
    rf_w = N3 * E3 * E1 * F * N0 * weight

    u_comp, u, cycle = _unit_energies(hw, op, bits)
    e_comp = ops * u_comp
    e_dram = (dram_if + dram_w + dram_of) * u["dram"] + (dram_if + dram_of) * u["dram_gb"]
    e_gb = gb * u["gb"]
    e_noc = noc * u["noc"] + noc_psum * u["noc_psum"]
    e_rf = rf * u["rf"] + rf_w * u["rf_weight"]
    energy = e_comp + (dram_if + dram_w + dram_of) * u["dram"] + (dram_if + dram_of) * u["dram_gb"] + gb * u["gb"]
    energy = energy + noc * u["noc"] + noc_psum * u["noc_psum"] + rf * u["rf"] + rf_w * u["rf_weight"]
    cycles = N3 * N0 * M3 * M2 * M0 * C3 * C2 * C0 * E3 * F * S
    latency = cycles * cycle

    e_min, e_max, l_min, l_max = energy.min(), energy.max(), latency.min(), latency.max()
    best = int(np.argmin((energy - e_min) / e_max + (latency - l_min) / l_max))
    tiling = (
        f"N0={N0[best]} N3={N3[best]} M0={M0[best]} M1={M1[best]} M2={M2[best]} M3={M3[best]} "
        f"C0={C0[best]} C1={C1[best]} C2={C2[best]} E1={E1[best]} E3={E3[best]}"
    )
    return {
        "energy_mJ": float(energy[best]),
        "latency_ms": float(latency[best]) * 1e3,
        "compute_mJ": float(e_comp),
        "dram_mJ": float(np.broadcast_to(e_dram, energy.shape)[best]),
        "gb_mJ": float(np.broadcast_to(e_gb, energy.shape)[best]),
        "noc_mJ": float(np.broadcast_to(e_noc, energy.shape)[best]),
        "rf_mJ": float(np.broadcast_to(e_rf, energy.shape)[best]),
        "cycles": int(cycles[best]),
        "tiling": tiling,
        "candidates": int(len(energy)),
    }


# --------------------------------------------------------------------------------------------
# whole networks


@dataclass
class ArchPrice:
    """Energy and latency of one architecture on one hardware, with per-layer rows."""

    name: str
    hardware: str
    bits: int
    batch: int
    rows: list[tuple[Layer, LayerEnergy]]

    @property
    def energy_mJ(self) -> float:
        return float(sum(e.energy_mJ for _, e in self.rows))

    @property
    def latency_ms(self) -> float:
        return float(sum(e.latency_ms for _, e in self.rows))

    def by_op(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for L, e in self.rows:
            if e.charged:
                acc = out.setdefault(L.op, {"energy_mJ": 0.0, "latency_ms": 0.0})
                acc["energy_mJ"] += e.energy_mJ
                acc["latency_ms"] += e.latency_ms
        return out

    def breakdown(self) -> dict[str, float]:
        keys = ("compute_mJ", "dram_mJ", "gb_mJ", "noc_mJ", "rf_mJ")
        return {k: float(sum(getattr(e, k) for _, e in self.rows)) for k in keys}

    def to_json_dict(self) -> dict:
        return {
            "name": self.name,
            "hardware": self.hardware,
            "bits": self.bits,
            "batch": self.batch,
            "energy_mJ": self.energy_mJ,
            "latency_ms": self.latency_ms,
            "breakdown": self.breakdown(),
            "by_op": self.by_op(),
            "layers": [{"name": L.name, **e.as_row()} for L, e in self.rows],
        }


def price_layers(layers: Iterable[Layer], hw: Hardware | str | None = None, bits: int = 32, batch: int = 1, name: str = "") -> ArchPrice:
    hw = load_hardware(hw)
    hw.precision(bits)
    rows = [(L, layer_energy(L, hw, bits, batch)) for L in layers]
    return ArchPrice(name, hw.name, bits, batch, rows)


def price_arch(arch, hw: Hardware | str | None = None, bits: int = 32, batch: int = 1) -> ArchPrice:
    """Energy (mJ) and latency (ms) of ``arch`` with the paper's model: the sum over its layers."""
    if not isinstance(batch, int) or batch < 1:
        raise ConfigError("batch", batch, "expected a positive integer")
    return price_layers(arch_layers(arch), hw, bits, batch, arch.name)


def clear_cache() -> None:
    """Forget cached per-layer tiling searches (e.g. after editing a hardware file in place)."""
    _search.cache_clear()
    _load_hardware_cached.cache_clear()
