"""The operator registry: each operator kind (``mult``, ``shift``, ``add``) declared once.

An :class:`OpKind` holds everything the toolkit knows about one kind of convolution / linear
layer, and every part of the toolkit reads it from here instead of testing ``op == "shift"``:

===================  ==========================================================================
field                read by
===================  ==========================================================================
``conv``, ``linear``  ``create_conv`` / ``create_linear`` (static networks, latency tables);
                     module classes with the ``nn.Conv2d`` / ``nn.Linear`` signature plus keyword
                     options; the C export recognises a layer's kind by its class
``conv_fn``,         hybrid layers (``nas.ops.hybrid``): the ``F.conv2d`` / ``F.linear`` signature
``linear_fn``,       plus options, for weights that are not a module's own parameter;
``store_fn``         ``store_fn`` gives the weight a static layer stores (shift: powers of two)
``counting``         ``nas.cost.counting`` and every module's ``count_ops`` (:class:`CountRule`)
``energy``           the Eyeriss-like energy model ``nas.cost.energy`` (:class:`EnergyRule`)
``options``          the kind's option dataclass (:class:`OpOptions`: validated, JSON round trip);
                     ``hybrid_options`` the ones hybrid layers pass on, ``runtime_options`` keyword
                     options of the modules that are not configuration (a ``torch.Generator``)
``roles``            the operator convention (``nas.arch.op_convention``, ``Arch.with_ops``):
                     the conv roles a model of this kind computes with it; the rest multiply
===================  ==========================================================================

The Arch schema, the command line's ``--op`` choices, the training and search configurations and
the lookup tables validate operator names against :data:`OPS`.

Implementations are named by import path (``"package.module:attribute"``) and loaded on first
use, so this module imports no torch: the Arch schema, the command line and the cost model read
the registry without loading it.

Adding an operator kind: write its module (classes with the ``nn.Conv2d`` / ``nn.Linear``
signature whose ``count_ops`` follows its :class:`CountRule`, and functional forms), its option
dataclass and an :class:`OpKind` entry here, then run ``tests/test_registry.py``, which checks
every registered kind against this contract. Only the integer C export (``nas/codegen``) needs
code of its own per kind; it refuses a kind it cannot lower with one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import math
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

from nas.errors import ConfigError, check_keys
from nas.ops._common import check_choice, check_int

if TYPE_CHECKING:  # pragma: no cover
    import torch
    import torch.nn as nn

MULT = "mult"  # the multiplicative kind: pooling, gating, residual adds and every augmented channel use it
ROLES = ("dense", "dw", "se", "classifier")  # conv roles of an operator convention (nas.arch.op_convention)
UNITS = ("mult", "add", "shift")  # arithmetic units a hardware file prices (precisions.<bits>.<unit>_pJ)


# ------------------------------------------------------------------------------------------------
# rules


@dataclass(frozen=True)
class CountRule:
    """Operations per output element of a conv / linear layer whose outputs each sum K terms:
    ``mults * K`` multiplications, ``shifts * K`` shifts and ``adds * K - 1`` additions, plus one
    addition with a bias. ``macs = K`` per output for every kind (the positions papers count)."""

    mults: int = 0
    shifts: int = 0
    adds: int = 1

    def counts(self, terms: int, out_numel: int, bias: bool) -> dict[str, int]:
        """``macs``, ``mults``, ``adds``, ``shifts`` of ``out_numel`` outputs of ``terms`` terms each."""
        k, n = int(terms), int(out_numel)
        return {
            "macs": k * n,
            "mults": self.mults * k * n,
            "adds": (self.adds * k - 1) * n + (n if bias else 0),
            "shifts": self.shifts * k * n,
        }


@dataclass(frozen=True)
class EnergyRule:
    """How the Eyeriss-like energy model (``nas.cost.energy``) charges a layer of a kind.

    ``unit``: the arithmetic unit each operation uses (the hardware's ``<unit>_pJ``);
    ``shift_words``: operands move as the hardware's ``shift.word_bits``-bit words at every
    precision and the layer runs ``shift.latency_speedup`` times faster (the hardware file's
    ``shift`` section); ``on_chip``: the layer pays no access energy at the hardware's
    ``add.free_levels`` (DRAM, global buffer, NoC: the ``add`` section).
    """

    unit: str
    shift_words: bool = False
    on_chip: bool = False

    def __post_init__(self) -> None:
        check_choice("energy.unit", self.unit, UNITS)


# ------------------------------------------------------------------------------------------------
# options


@dataclass(frozen=True)
class OpOptions:
    """Base of the option dataclasses: fields validated at construction (``ConfigError`` naming
    the field), ``to_dict`` / ``from_dict`` round-trip JSON."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, d: Any, where: str = "options") -> "OpOptions":
        check_keys(d, where, set(cls.names()), ())
        try:
            return cls(**d)
        except ConfigError as e:
            raise ConfigError(f"{where}.{e.field}", e.value, e.allowed) from None


@dataclass(frozen=True)
class MultOptions(OpOptions):
    """Multiplicative layers (``nn.Conv2d`` / ``nn.Linear``) take no options."""


SHIFT_TYPES = ("Q", "PS")
ROUNDINGS = ("deterministic", "stochastic")
MAX_WEIGHT_BITS = 8  # 2**-127 is the smallest power of two float32 still holds (as a subnormal)
DEFAULT_ETA = 0.2  # AdderNet's adaptive gradient scale


def check_weight_bits(weight_bits: Any) -> int:
    return check_int("weight_bits", weight_bits, 2, MAX_WEIGHT_BITS)


def check_max_shift(max_shift: Any) -> int:
    return check_int("max_shift", max_shift, -16, 16)


def check_act_bits(integer_bits: Any, fraction_bits: Any) -> tuple[int | None, int | None]:
    """Fixed-point activation format: both widths or neither, I + F <= 32."""
    if integer_bits is None and fraction_bits is None:
        return None, None
    if integer_bits is None or fraction_bits is None:
        field = "act_integer_bits" if integer_bits is None else "act_fraction_bits"
        raise ConfigError(field, None, "allowed: set act_integer_bits and act_fraction_bits together, or neither")
    check_int("act_integer_bits", integer_bits, 1, 32)
    check_int("act_fraction_bits", fraction_bits, 0, 31)
    if integer_bits + fraction_bits > 32:
        raise ConfigError(
            "act_fraction_bits", fraction_bits, f"allowed: act_integer_bits + act_fraction_bits <= 32 (integer bits {integer_bits})"
        )
    return integer_bits, fraction_bits


def check_eta(eta: Any) -> float | None:
    if eta is None:
        return None
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta <= 0:
        raise ConfigError("eta", eta, "allowed: a positive finite number, or None to turn gradient scaling off")
    return float(eta)


@dataclass(frozen=True)
class ShiftOptions(OpOptions):
    """DeepShift options (``nas.ops.shift`` explains each): weight encoding ``shift_type`` (Q or
    PS), ``weight_bits``, ``rounding``, the highest shift ``max_shift`` and optional fixed-point
    activations (``act_integer_bits`` and ``act_fraction_bits`` together)."""

    shift_type: str = "Q"
    weight_bits: int = 5
    rounding: str = "deterministic"
    act_integer_bits: int | None = None
    act_fraction_bits: int | None = None
    max_shift: int = 0

    def __post_init__(self) -> None:
        check_choice("shift_type", self.shift_type, SHIFT_TYPES)
        check_weight_bits(self.weight_bits)
        check_choice("rounding", self.rounding, ROUNDINGS)
        check_act_bits(self.act_integer_bits, self.act_fraction_bits)
        check_max_shift(self.max_shift)


@dataclass(frozen=True)
class AddOptions(OpOptions):
    """AdderNet options: ``eta``, the adaptive gradient scale of the weights (None: off)."""

    eta: float | None = DEFAULT_ETA

    def __post_init__(self) -> None:
        object.__setattr__(self, "eta", check_eta(self.eta))


# ------------------------------------------------------------------------------------------------
# kinds


@cache
def load(ref: str) -> Any:
    """The object an import path ``"package.module:attribute"`` names (imported on first use)."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class OpKind:
    """One operator kind: its modules, functional forms, rules, options and convention (see the
    module docstring). Implementations are import paths ``"package.module:attribute"``."""

    name: str
    description: str
    conv: str
    linear: str
    conv_fn: str
    linear_fn: str
    counting: CountRule
    energy: EnergyRule
    options: type[OpOptions] = MultOptions
    store_fn: str | None = None
    hybrid_options: tuple[str, ...] = ()
    runtime_options: tuple[str, ...] = ()
    roles: tuple[str, ...] = ROLES

    _NAME_CHARS: ClassVar[str] = "abcdefghijklmnopqrstuvwxyz0123456789_"

    def __post_init__(self) -> None:
        if not self.name or not set(self.name) <= set(self._NAME_CHARS) or self.name == "all":
            raise ConfigError("op kind name", self.name, "lower-case letters, digits and '_' (not 'all')")
        for role in self.roles:
            check_choice(f"{self.name}.roles", role, ROLES)
        for opt in self.hybrid_options:
            check_choice(f"{self.name}.hybrid_options", opt, self.options.names())

    @property
    def multiplication_free(self) -> bool:
        """No multiplication in its layers (its counting rule has none)."""
        return self.counting.mults == 0

    @property
    def convention(self) -> dict[str, str]:
        """The operator of every conv role in a model of this kind (the others multiply)."""
        return {role: self.name if role in self.roles else MULT for role in ROLES}

    def select(self, options: dict[str, Any], known: set[str]) -> dict[str, Any]:
        """The options of ``options`` this kind takes; names no kind knows (``known``) are errors."""
        for name in options:
            if name not in known:
                raise ConfigError("options", name, f"allowed: {', '.join(sorted(known))}")
        mine = set(self.options.names()) | set(self.runtime_options)
        return {k: v for k, v in options.items() if k in mine}

    def conv_class(self) -> type[nn.Module]:
        return load(self.conv)

    def linear_class(self) -> type[nn.Module]:
        return load(self.linear)

    def apply_conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: Any = 1,
                   padding: Any = 0, dilation: Any = 1, groups: int = 1, **options: Any) -> torch.Tensor:
        """Functional convolution of this kind (``F.conv2d``'s signature plus hybrid options)."""
        return load(self.conv_fn)(x, weight, bias, stride, padding, dilation, groups, **options)

    def apply_linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, **options: Any) -> torch.Tensor:
        """Functional linear layer of this kind (``F.linear``'s signature plus hybrid options)."""
        return load(self.linear_fn)(x, weight, bias, **options)

    def stored_weight(self, weight: torch.Tensor, **options: Any) -> torch.Tensor:
        """The weight a static layer of this kind stores for a weight computed in the forward."""
        return weight if self.store_fn is None else load(self.store_fn)(weight, **options)


class Registry:
    """Operator kinds by name, in registration order (``mult`` first: it is the fallback kind)."""

    def __init__(self) -> None:
        self._kinds: dict[str, OpKind] = {}

    def register(self, kind: OpKind) -> OpKind:
        if kind.name in self._kinds:
            raise ConfigError("op kind", kind.name, f"a new name (registered: {', '.join(self._kinds)})")
        self._kinds[kind.name] = kind
        return kind

    def get(self, name: Any, field: str = "op") -> OpKind:
        """The kind called ``name``; a ConfigError naming ``field`` when there is none."""
        kind = self._kinds.get(name) if isinstance(name, str) else None
        if kind is None:
            raise ConfigError(field, name, f"allowed: {', '.join(self._kinds)}")
        return kind

    def names(self) -> tuple[str, ...]:
        return tuple(self._kinds)

    def mf_names(self) -> tuple[str, ...]:
        """The multiplication-free kinds (what a TargetNet may compute with)."""
        return tuple(k.name for k in self._kinds.values() if k.multiplication_free)

    def option_names(self) -> set[str]:
        """Every option name some kind takes (one options dict may serve a whole network)."""
        return {n for k in self._kinds.values() for n in (*k.options.names(), *k.runtime_options)}

    def kind_of_module(self, module: Any) -> tuple[OpKind, bool] | None:
        """(kind, is linear) of a conv / linear module by its exact class; None for other modules."""
        for kind in self._kinds.values():
            if type(module) is kind.conv_class():
                return kind, False
            if type(module) is kind.linear_class():
                return kind, True
        return None

    @contextlib.contextmanager
    def scoped(self) -> Iterator["Registry"]:
        """Registrations made inside the block are undone after it (tests, experiments)."""
        saved = dict(self._kinds)
        try:
            yield self
        finally:
            self._kinds = saved

    def __iter__(self) -> Iterator[OpKind]:
        return iter(list(self._kinds.values()))

    def __len__(self) -> int:
        return len(self._kinds)

    def __contains__(self, name: object) -> bool:
        return name in self._kinds


OPS = Registry()

OPS.register(OpKind(
    name=MULT,
    description="multiplicative (nn.Conv2d / nn.Linear)",
    conv="torch.nn:Conv2d",
    linear="torch.nn:Linear",
    conv_fn="torch.nn.functional:conv2d",
    linear_fn="torch.nn.functional:linear",
    counting=CountRule(mults=1, adds=1),
    energy=EnergyRule("mult"),
))
OPS.register(OpKind(
    name="shift",
    description="DeepShift: power-of-two weights, a product is a bit shift (nas.ops.shift)",
    conv="nas.ops.shift:ShiftConv2d",
    linear="nas.ops.shift:ShiftLinear",
    conv_fn="nas.ops.shift:shift_conv2d",
    linear_fn="nas.ops.shift:shift_linear",
    store_fn="nas.ops.shift:shift_weight_q",
    counting=CountRule(shifts=1, adds=1),
    energy=EnergyRule("shift", shift_words=True),
    options=ShiftOptions,
    hybrid_options=("weight_bits", "rounding", "max_shift"),
    runtime_options=("generator",),
    roles=("dense", "dw", "se"),  # every conv shifts; the classifier multiplies
))
OPS.register(OpKind(
    name="add",
    description="AdderNet: -sum |x - w|, additions only (nas.ops.adder)",
    conv="nas.ops.adder:AdderConv2d",
    linear="nas.ops.adder:AdderLinear",
    conv_fn="nas.ops.adder:adder_conv2d",
    linear_fn="nas.ops.adder:adder_linear",
    counting=CountRule(adds=2),  # K subtractions + K - 1 accumulations; |.| clears a sign bit
    energy=EnergyRule("add", on_chip=True),
    options=AddOptions,
    hybrid_options=("eta",),
    roles=("dense", "se"),  # stem and every 1x1 conv add; depthwise convs and the classifier multiply
))


# ------------------------------------------------------------------------------------------------
# the entry points


def get_kind(name: Any, field: str = "op") -> OpKind:
    """The registered kind ``name`` (ConfigError naming ``field`` and the allowed names otherwise)."""
    return OPS.get(name, field)


def op_kinds() -> tuple[str, ...]:
    """Names of the registered kinds, ``mult`` first."""
    return OPS.names()


def mf_kinds() -> tuple[str, ...]:
    """Names of the registered multiplication-free kinds."""
    return OPS.mf_names()


def create_conv(op: str, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1,
                bias: bool = False, **options: Any) -> nn.Module:
    """A 2-d convolution of kind ``op`` with 'same' padding (kernel_size // 2).

    ``options`` go to the operator (shift: ``shift_type``, ``weight_bits``, ``rounding``,
    ``act_integer_bits``, ``act_fraction_bits``, ``max_shift``, ``generator``; add: ``eta``) and are
    validated there. Options of the other kinds are ignored, so one dict can serve a whole network;
    a name no kind knows is a ConfigError.
    """
    kind = get_kind(op)
    opts = kind.select(options, OPS.option_names())
    return kind.conv_class()(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=bias, **opts)


def create_linear(op: str, in_features: int, out_features: int, bias: bool = True, **options: Any) -> nn.Module:
    """A fully connected layer of kind ``op`` (options as for ``create_conv``)."""
    kind = get_kind(op)
    opts = kind.select(options, OPS.option_names())
    return kind.linear_class()(in_features, out_features, bias=bias, **opts)


def op_counts(op: str, terms: int, out_numel: int, bias: bool) -> dict[str, int]:
    """Operation counts of one layer of kind ``op`` whose ``out_numel`` outputs each sum ``terms`` (K) terms."""
    return get_kind(op).counting.counts(terms, out_numel, bias)


def options_for(op: str, op_options: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    """The options of kind ``op`` in a per-kind mapping ``{"shift": {...}, "add": {...}}``."""
    return dict((op_options or {}).get(op, {}))


__all__ = [
    "MULT", "ROLES", "UNITS", "CountRule", "EnergyRule", "OpOptions", "MultOptions", "ShiftOptions", "AddOptions", "OpKind",
    "Registry", "OPS", "get_kind", "op_kinds", "mf_kinds", "create_conv", "create_linear", "op_counts", "options_for", "load",
    "SHIFT_TYPES", "ROUNDINGS", "MAX_WEIGHT_BITS", "DEFAULT_ETA", "check_weight_bits", "check_max_shift", "check_act_bits",
    "check_eta",
]
