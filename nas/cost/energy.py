"""The paper-compatible energy model: an Eyeriss-like row-stationary accelerator, per layer.

This is the analytical model the ShiftAddAug paper priced its networks with (latency_tables/README.md):
the loop-nest model of ShiftAddNAS ``CV/retraining_hybrid/hw_utils.py`` (Eyeriss, Chen et al.
JSSC'17, in the style of DNN-Chip Predictor, Zhao et al. ICASSP'20), reimplemented here from its
description and vectorised with NumPy. Every number comes from a hardware file
(``latency_tables/<name>.yaml``, loaded by ``nas.cost.hardware``).

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
  Access energies are per ``word_bits`` word scaled by bits / word_bits. What differs per operator
  kind is its energy rule (``nas.ops.registry.EnergyRule``): the unit energy of its operations
  (``mult_pJ``, ``shift_pJ``, ``add_pJ``); shift layers are charged as ``shift.word_bits`` (10-bit)
  words at every precision; add layers pay nothing at the ``add.free_levels`` (DRAM, buffer, NoC:
  "on chip").
* Latency = N3*N0*M3*M2*M0*C3*C2*C0*E3*F*S cycles at the clock (shift layers ``latency_speedup``
  times faster).
* Selected tiling: the first minimiser of (E - E_min)/E_max + (L - L_min)/L_max.

Conventions of the paper's accounting: only convs and linears are charged (SE convs as 1x1 convs
on a 1x1 map); BN, activations, pooling, SE gating, residual adds and bilinear upsampling cost nothing. A network's
energy / latency is the sum over its layers (``nas.cost.layers.arch_layers``), each priced with
its own operator; which conv computes with which operator is the Arch's (``nas.arch.op_convention``
for mult / shift / add models: Add models add in the stem and every 1x1 conv, SE convs included,
and multiply in depthwise convs and the classifier).

Departures from the reference, all documented in ``latency_tables/README.md``: latency is reported
in ms (the reference's "ms" is seconds); 16-bit operands get parameters from the hardware file (the
reference has 32 and 8 only); a layer with no valid tiling under the E1 != 1 rule (a conv shrinking
the map to 1x1) is retried as FC-like instead of crashing, and flagged ``relaxed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable

import numpy as np

from nas.arch import Arch
from nas.cost.hardware import DEFAULT_HARDWARE, Hardware, load_hardware
from nas.cost.hardware import clear_cache as clear_hardware_cache
from nas.cost.layers import Layer, arch_layers
from nas.errors import ConfigError
from nas.ops.registry import EnergyRule, get_kind

__all__ = [
    "DEFAULT_HARDWARE", "Hardware", "load_hardware", "LayerEnergy", "ArchPrice", "EnergyModel", "is_charged", "layer_dims",
    "layer_energy", "ordered_factorizations", "price_layers", "price_arch", "clear_cache",
]


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


def _skip_remove(items: Iterable[tuple[int, ...]], bad) -> list[tuple[int, ...]]:
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
    return layer.has_weights


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
    rule = get_kind(layer.op, f"layer {layer.name}.op").energy
    hw.precision(bits)
    N, C, H, R, M, E, stride, fc = layer_dims(layer, batch)
    res = _search(hw, rule, bits, N, C, H, R, M, E, stride, fc)
    if res is None and not fc:
        res = _search(hw, rule, bits, N, C, H, R, M, E, stride, True)
        if res is not None:
            res = dict(res, relaxed=True)
    if res is None:
        raise ConfigError(
            f"layer {layer.name}",
            f"{layer.kind} {layer.in_channels}->{layer.out_channels} k{layer.kernel_size} s{layer.stride} at {layer.in_hw}x{layer.in_hw}",
            f"no tiling fits hardware {hw.name!r} (register files / buffer too small for this layer at {bits} bits)",
        )
    return LayerEnergy(layer.name, True, **res)


def _unit_energies(hw: Hardware, rule: EnergyRule, bits: int) -> tuple[float, dict[str, float], float]:
    """(compute mJ per op, access mJ per access for each level, seconds per cycle) of a layer
    charged by ``rule`` (its operator kind's energy rule)."""
    p = hw.precision(bits)
    comp = p.unit_pJ(rule.unit) / 1e9
    data_bits = hw.shift_word_bits if rule.shift_words else bits
    scale = data_bits / hw.word_bits
    acc = {}
    for level, pj in hw.access_pJ:
        acc[level] = 0.0 if (rule.on_chip and level in hw.add_free_levels) else pj / 1e9 * scale
    cycle = 1.0 / (hw.clock_MHz * 1e6)
    if rule.shift_words:
        cycle = cycle / hw.shift_latency_speedup
    return comp, acc, cycle


@lru_cache(maxsize=65536)
def _search(hw: Hardware, rule: EnergyRule, bits: int, N: int, C: int, H: int, R: int, M: int, E: int, stride: int,
            fc: bool) -> dict | None:
    W, S, F = H, R, E
    prec = hw.precision(bits)
    mem, cmpf = prec.memory_factor, prec.compute_factor

    n_t = np.array(ordered_factorizations(N, 2), dtype=np.int64)  # (N0, N3)
    m_all: Iterable[tuple[int, ...]] = ordered_factorizations(M, 4)  # (M0, M1, M2, M3)
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

    u_comp, u, cycle = _unit_energies(hw, rule, bits)
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
    """Energy and latency of ``layers`` (the sum of ``layer_energy``)."""
    hw = load_hardware(hw)
    hw.precision(bits)
    rows = [(L, layer_energy(L, hw, bits, batch)) for L in layers]
    return ArchPrice(name, hw.name, bits, batch, rows)


def price_arch(arch: Arch, hw: Hardware | str | None = None, bits: int = 32, batch: int = 1) -> ArchPrice:
    """Energy (mJ) and latency (ms) of ``arch`` with the paper's model: the sum over its layers."""
    if not isinstance(batch, int) or batch < 1:
        raise ConfigError("batch", batch, "expected a positive integer")
    return price_layers(arch_layers(arch), hw, bits, batch, arch.name)


class EnergyModel:
    """The energy model as a cost model (``nas.cost.pricing.CostModel``): prices an arch layer by
    layer on ``hardware`` at ``bits`` without a table (``cost``: energy in mJ)."""

    metric = "energy"

    def __init__(self, hardware: Hardware | str | None = None, bits: int = 32, batch: int = 1):
        self.hardware = load_hardware(hardware)
        self.hardware.precision(bits)
        self.bits, self.batch = bits, batch

    def price(self, arch: Arch) -> ArchPrice:
        return price_arch(arch, self.hardware, self.bits, self.batch)

    def cost(self, arch: Arch) -> float:
        return self.price(arch).energy_mJ


def clear_cache() -> None:
    """Forget cached per-layer tiling searches (e.g. after editing a hardware file in place)."""
    _search.cache_clear()
    clear_hardware_cache()
