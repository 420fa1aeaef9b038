"""Lookup tables: one priced row per distinct layer shape, kept as a plain, versioned CSV file.

Two kinds of table, one class each, both cost models (``nas.cost.pricing.CostModel``):

* :class:`EnergyTable`: the paper-compatible energy model (``nas.cost.energy``) on one hardware
  file, at one operand width: energy (mJ), model latency (ms), the energy breakdown and the
  selected tiling; ``cost`` is the energy;
* :class:`LatencyTable`: latency measured on this machine (``nas.cost.latency``): median, mean and
  standard deviation over the repeats (ms) on one device with one thread count; ``cost`` is the
  latency.

:class:`LookupTable` is their base: rows keyed by ``RowKey`` (file format: ``nas.cost.tablefile``),
loading (``load`` returns the class of the file's kind), resuming (``open``), pricing (``price``:
the sum of a network's layers' rows) and building (``nas.cost.build.TableBuilder``). Layers the
energy model does not charge (BN, pooling, residual adds, SE pool / gate, upsampling) have no rows in energy
tables and cost 0 there. Latency tables also carry the python overhead of the containers in
their header (``overhead_ms``), added once per network, once per block and once per layer.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence, cast

from nas.arch import Arch
from nas.cost import energy, latency
from nas.cost.build import TableBuilder
from nas.cost.hardware import Hardware, load_hardware
from nas.cost.layers import Layer, arch_layers
from nas.cost.pricing import TablePrice
from nas.cost.shapes import space_cover_archs, space_layers
from nas.cost.tablefile import COLUMNS, FORMAT_NOTE, SCHEMA_VERSION, TABLE_KINDS, RowKey, fmt, now, read_table, stamp, write_table
from nas.errors import ConfigError

ON_MISSING = ("error", "compute")


class LookupTable(TableBuilder):
    """A priced row per distinct layer shape, with a provenance header; see the module docstring.

    Make one with :meth:`for_energy` / :meth:`for_latency` (or :meth:`open` to resume a file),
    fill it with ``build`` / ``build_space``, read one with :meth:`load`, price networks with
    :meth:`price` / :meth:`cost`.
    """

    kind: ClassVar[str]
    metric: ClassVar[str]  # what ``cost`` returns: energy (mJ) or latency (ms)
    key_columns: ClassVar[tuple[str, ...]]
    value_columns: ClassVar[tuple[str, ...]]
    unit: ClassVar[str]  # of the metric
    price_columns: ClassVar[tuple[str, ...]]  # the value columns a TablePrice totals; the first is the metric
    compatible: ClassVar[tuple[str, ...]]  # header fields a resumed build must share with the new one
    with_act: ClassVar[bool]  # whether row keys carry the activation after the layer

    def __init__(self, header: dict, entries: dict[RowKey, dict] | None = None, path: str | Path | None = None):
        self.header = dict(header)
        self.header["kind"] = self.kind
        self.header.setdefault("schema_version", SCHEMA_VERSION)
        self.entries: dict[RowKey, dict] = dict(entries or {})
        self.path = Path(path) if path is not None else None

    # ------------------------------------------------------------------ construction
    @staticmethod
    def for_energy(hardware: Hardware | str | None = None, bits: int = 32, batch: int = 1, path: str | Path | None = None,
                   **extra: Any) -> "EnergyTable":
        """A new, empty energy table on ``hardware`` at ``bits`` (``extra``: header fields)."""
        return EnergyTable.create(hardware, bits, batch, path, **extra)

    @staticmethod
    def for_latency(device: str = "cpu", threads: int = 1, warmup: int = 10, repeats: int = 50, batch: int = 1,
                    path: str | Path | None = None, overhead_ms: dict | None = None, **extra: Any) -> "LatencyTable":
        """A new, empty latency table measured on ``device`` with ``threads`` torch threads."""
        return LatencyTable.create(device, threads, warmup, repeats, batch, path, overhead_ms, **extra)

    @classmethod
    def open(cls, path: str | Path, create: Callable[[], "LookupTable"]) -> "LookupTable":
        """Load ``path`` to resume it, or make a new table with ``create()`` when it does not exist.

        A resumed table must have been built with the same settings as the new one (hardware,
        bits, batch; device, threads, warm-up, repeats) or a ConfigError says which differs.
        """
        fresh = create()
        p = Path(path)
        fresh.path = p
        if not p.exists():
            return fresh
        old = cls.load(p)
        for k in fresh.compatible + ("kind",):
            if old.header.get(k) != fresh.header.get(k):
                raise ConfigError(
                    f"{p.name}: header {k}",
                    old.header.get(k),
                    f"this build uses {fresh.header.get(k)!r}; pass another --out or delete the file to start over",
                )
        old.resume_from(fresh)
        return old

    def resume_from(self, fresh: "LookupTable") -> None:
        """Take over what a freshly created table of the same build knows beyond its header."""

    # ------------------------------------------------------------------ file
    def to_text(self) -> str:
        return write_table(self.kind, self.header, self.entries)

    def save(self, path: str | Path | None = None) -> Path:
        """Write the table atomically (to ``path``, else where it came from) and remember the path."""
        from nas.io import atomic_write_text

        p = Path(path) if path is not None else self.path
        if p is None:
            raise ConfigError("table path", None, "give a path to save the table to")
        self.header["rows"] = len(self.entries)
        self.header["updated"] = now()
        atomic_write_text(p, self.to_text())
        self.path = p
        return p

    @staticmethod
    def load(path: str | Path) -> "LookupTable":
        """The table in file ``path``, as the class of its kind."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError("table", str(p), "expected an existing lookup table file (.csv); build one with shiftaddaug-lut build")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(p.name, "<not UTF-8 text>", "a lookup table CSV file") from None
        return LookupTable.from_text(text, p.name, p)

    @staticmethod
    def from_text(text: str, where: str = "table", path: str | Path | None = None) -> "LookupTable":
        kind, header, entries = read_table(text, where)
        return _CLASSES[kind](header, entries, path)

    # ------------------------------------------------------------------ rows
    def __len__(self) -> int:
        return len(self.entries)

    def key(self, layer: Layer) -> RowKey:
        return RowKey.of(layer, self.with_act)

    def covers(self, layer: Layer) -> bool:
        """Whether this kind of table has (needs) a row for the layer."""
        return True

    def __contains__(self, item: Layer | RowKey) -> bool:
        if isinstance(item, Layer):
            item = self.key(item)
        return item in self.entries

    @abstractmethod
    def compute(self, layer: Layer) -> dict:
        """The row values of ``layer`` computed now (energy model, or a measurement)."""

    def add(self, layer: Layer, values: dict) -> None:
        missing = [c for c in self.value_columns if c not in values]
        if missing:
            raise ConfigError("table row", values, f"needs values for {', '.join(missing)}")
        self.entries[self.key(layer)] = {c: values[c] for c in self.value_columns}

    # ------------------------------------------------------------------ pricing
    def price(self, arch: Arch, on_missing: str = "error") -> TablePrice:
        """Cost of ``arch``: the sum of its layers' rows (plus container overhead for latency).

        ``on_missing="error"`` raises a ConfigError naming the first layer without a row;
        ``"compute"`` computes (energy model) or measures it, adds it to the table and goes on
        (save the table afterwards to keep it).
        """
        if on_missing not in ON_MISSING:
            raise ConfigError("on_missing", on_missing, f"allowed: {', '.join(ON_MISSING)}")
        layers = arch_layers(arch)
        rows: list[tuple[Layer, dict | None]] = []
        computed: list[str] = []
        entries, with_act = self.entries, self.with_act
        for L in layers:
            if not self.covers(L):
                rows.append((L, None))
                continue
            r = entries.get(RowKey.of(L, with_act))
            if r is None:
                r = self._missing(L, on_missing, arch, computed)
            rows.append((L, r))
        return TablePrice(arch.name, self.kind, rows, self.overhead(arch, layers), computed, self.price_columns)

    def cost(self, arch: Arch) -> float:
        """The table's metric of ``arch``: energy (mJ) or latency (ms); a missing row is an error."""
        return self.price(arch).total(self.price_columns[0])

    def overhead(self, arch: Arch, layers: list[Layer]) -> float | None:
        """What a network costs beyond its layers' rows (latency tables); None: nothing."""
        return None

    def _missing(self, L: Layer, on_missing: str, arch: Arch, computed: list[str]) -> dict:
        if on_missing == "error":
            where = str(self.path) if self.path is not None else "lookup table"
            shape = ",".join(fmt(v) for v in self.key(L)[: len(self.key_columns)])
            raise ConfigError(
                f"{where}: layer {L.name} of {arch.name}",
                shape,
                "no row for this layer shape; build the table for this space / arch (shiftaddaug-lut build) "
                "or price with on_missing='compute'",
            )
        self.add(L, self.compute(L))
        computed.append(L.name)
        return self.entries[self.key(L)]

    def summary(self) -> str:
        lines = [f"{len(self)} rows"]
        by: dict[tuple, list[float]] = {}
        col = self.price_columns[0]
        for k, v in self.entries.items():
            by.setdefault((k.kind, k.op), []).append(v[col])
        for (kind, op), vals in sorted(by.items()):
            lines.append(f"  {kind:<9} {op:<5} {len(vals):>6} rows   {col} min {min(vals):.4g} {self.unit}, max {max(vals):.4g} {self.unit}")
        return "\n".join(lines)


class EnergyTable(LookupTable):
    """Rows of the energy model on one hardware at one operand width; ``cost``: energy (mJ)."""

    kind = "energy"
    metric = "energy"
    key_columns, value_columns = COLUMNS["energy"]
    unit = "mJ"
    price_columns = ("energy_mJ", "latency_ms")
    compatible = ("hardware", "hardware_fingerprint", "bits", "batch")
    with_act = False
    build_group = 1  # rows are priced one by one

    def __init__(self, header: dict, entries: dict[RowKey, dict] | None = None, path: str | Path | None = None):
        super().__init__(header, entries, path)
        self._hw: Hardware | None = None

    @classmethod
    def create(cls, hardware: Hardware | str | None = None, bits: int = 32, batch: int = 1, path: str | Path | None = None,
               **extra: Any) -> "EnergyTable":
        hw = load_hardware(hardware)
        hw.precision(bits)
        header = {
            "format": FORMAT_NOTE,
            "schema_version": SCHEMA_VERSION,
            "kind": "energy",
            "units": {"energy": "mJ", "latency": "ms"},
            "hardware": hw.name,
            "hardware_fingerprint": hw.fingerprint,
            "hardware_file": _rel(hw.path),
            "bits": bits,
            "batch": batch,
            "source": "nas.cost.energy: Eyeriss-like row-stationary model of ShiftAddNAS hw_utils.py (reimplemented)",
            **extra,
        }
        header.update(stamp())
        t = cls(header, path=path)
        t._hw = hw
        return t

    def resume_from(self, fresh: LookupTable) -> None:
        self._hw = fresh._hw if isinstance(fresh, EnergyTable) else None

    def detach(self, hw: Hardware) -> "EnergyTable":
        """This table without its file (rows priced later stay in memory), on ``hw``."""
        self.path, self._hw = None, hw
        return self

    def covers(self, layer: Layer) -> bool:
        return energy.is_charged(layer)

    def hardware(self) -> Hardware:
        """The hardware of the table (loaded from its name; checked against the fingerprint)."""
        if self._hw is None:
            name = self.header.get("hardware_file") or self.header.get("hardware")
            try:
                hw = load_hardware(name)
            except ConfigError:
                hw = load_hardware(self.header.get("hardware"))
            if hw.fingerprint != self.header.get("hardware_fingerprint"):
                raise ConfigError(
                    "hardware",
                    hw.name,
                    f"the table was built with a hardware file of fingerprint {self.header.get('hardware_fingerprint')}, "
                    f"this one is {hw.fingerprint}; rebuild the table",
                )
            self._hw = hw
        return self._hw

    def compute(self, layer: Layer) -> dict:
        h = self.header
        return energy.layer_energy(layer, self.hardware(), int(h["bits"]), int(h.get("batch", 1))).as_row()

    def _rows(self, context: list[Layer], new: list[Layer]) -> list[dict]:
        return [self.compute(L) for L in new]


class LatencyTable(LookupTable):
    """Measured latency rows (median, mean, deviation, repeats) on one device; ``cost``: latency (ms)."""

    kind = "latency"
    metric = "latency"
    key_columns, value_columns = COLUMNS["latency"]
    unit = "ms"
    price_columns = ("latency_ms",)
    compatible = ("device", "device_type", "threads", "warmup", "repeats", "batch", "dtype")
    with_act = True

    @classmethod
    def create(cls, device: str = "cpu", threads: int = 1, warmup: int = 10, repeats: int = 50, batch: int = 1,
               path: str | Path | None = None, overhead_ms: dict | None = None, **extra: Any) -> "LatencyTable":
        latency.check_device(device)
        for name, v, lo in (("threads", threads, 1), ("warmup", warmup, 0), ("repeats", repeats, 1), ("batch", batch, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(name, v, f"expected an integer >= {lo}")
        if overhead_ms is None:
            overhead_ms = latency.measure_overhead(device=device, threads=threads)
        header = {
            "format": FORMAT_NOTE,
            "schema_version": SCHEMA_VERSION,
            "kind": "latency",
            "units": {"latency": "ms"},
            "device": latency.device_name(device),
            "device_type": device,
            "dtype": "float32",
            "threads": threads,
            "warmup": warmup,
            "repeats": repeats,
            "statistic": "median",
            "batch": batch,
            "overhead_ms": {k: float(v) for k, v in overhead_ms.items()},
            "source": "measured: nas.cost.latency (real PyTorch modules, eval, no_grad)",
            **extra,
        }
        header.update(stamp())
        return cls(header, path=path)

    def _settings(self) -> dict[str, Any]:
        h = self.header
        return {"device": h.get("device_type", "cpu"), "batch": int(h.get("batch", 1)), "warmup": int(h["warmup"]),
                "repeats": int(h["repeats"]), "threads": int(h["threads"])}

    def compute(self, layer: Layer) -> dict:
        return latency.measure_layer(layer, **self._settings()).as_row()

    def build_space(self, space: Any, ops: Sequence[str] | None = None, *, progress: bool = True, flush_every: int = 50,
                    seed: int = 0) -> int:
        """Add every missing layer shape of ``space`` (conventions ``ops``), each timed inside an arch
        of the space that has it (``space_cover_archs``), i.e. in the company of a real network."""
        todo = self.missing(space_layers(space, ops))
        if not todo and self.path is not None and not self.path.exists():
            self.save()
        archs = space_cover_archs(space, ops, skip=self.entries.keys(), seed=seed)
        return self.build_from_archs(archs, progress=progress, flush_every=flush_every, total=len(todo))

    def _rows(self, context: list[Layer], new: list[Layer]) -> list[dict]:
        timings = latency.measure_layers(context, **self._settings())
        by_key: dict[RowKey, latency.Timing] = {}
        for L, tm in zip(context, timings):
            by_key.setdefault(self.key(L), tm)  # a shape's first timing in the group
        return [by_key[self.key(L)].as_row() for L in new]

    def overhead(self, arch: Arch, layers: list[Layer]) -> float:
        ov = self.header["overhead_ms"]
        total = float(ov["network"]) + float(ov["block"]) * sum(len(s.blocks) for s in arch.stages)
        per_layer = ov.get("layer", 0.0)
        if isinstance(per_layer, dict):
            return total + sum(float(per_layer.get(L.op, 0.0)) for L in layers)
        return total + float(per_layer) * len(layers)

    @staticmethod
    def combine(tables: Sequence["LookupTable"]) -> "LatencyTable":
        """One latency table from several builds of the same shapes (e.g. at different times on a
        shared machine): per row the median of the medians, means and deviations, repeats summed;
        the header (overheads included) is the first table's, with ``passes`` set."""
        import statistics

        if not tables or any(not isinstance(t, LatencyTable) for t in tables):
            raise ConfigError("tables", len(tables), "combine needs one or more latency tables")
        first = tables[0]
        out = LatencyTable(dict(first.header), path=first.path)
        for key in first.entries:
            vals = [t.entries[key] for t in tables if key in t.entries]
            out.entries[key] = {
                "latency_ms": statistics.median(v["latency_ms"] for v in vals),
                "mean_ms": statistics.median(v["mean_ms"] for v in vals),
                "std_ms": statistics.median(v["std_ms"] for v in vals),
                "repeats": sum(int(v["repeats"]) for v in vals),
            }
        out.header["passes"] = len(tables)
        return out

    def calibrate(self, archs: list[Arch], *, repeats: int | None = None) -> dict:
        """Measure the per-layer in-network overhead (per operator kind) on ``archs`` and store it in
        the header (``overhead_ms.layer``, plus ``calibration``); see
        ``nas.cost.latency.calibrate_layer_overhead``. Use archs the table will price, not the
        ones you evaluate it on."""
        if not archs:
            raise ConfigError("calibration archs", archs, "give at least one architecture")
        h = self.header
        ov = dict(h["overhead_ms"])
        settings = dict(self._settings(), repeats=int(repeats or h["repeats"]))
        cal = latency.calibrate_layer_overhead(list(archs), container_ms=ov, **settings)
        ov["layer"] = {k: float(v) for k, v in cal["layer"].items()}
        h["overhead_ms"] = ov
        h["calibration"] = {"archs": cal["archs"], "per_layer_gap_ms": [float(x) for x in cal["spread"]], "created": now()}
        return cal


_CLASSES: dict[str, type[LookupTable]] = {"energy": EnergyTable, "latency": LatencyTable}
assert tuple(_CLASSES) == TABLE_KINDS


def shipped_energy_table(space: Any, hardware: Hardware | str | None = None, bits: int = 32) -> EnergyTable | None:
    """The shipped energy table of ``space`` (``latency_tables/<space>-<hardware>-<bits>bit-energy.csv``)
    when it was built for this hardware (same fingerprint), width and batch 1, detached from its
    file: rows priced on the way (e.g. another class count) stay in memory. None otherwise."""
    from nas.paths import LATENCY_TABLES

    hw = load_hardware(hardware)
    p = LATENCY_TABLES / f"{space.name}-{hw.name}-{bits}bit-energy.csv"
    if not p.is_file():
        return None
    t = LookupTable.load(p)
    want = {"kind": "energy", "hardware": hw.name, "hardware_fingerprint": hw.fingerprint, "bits": bits, "batch": 1}
    if not isinstance(t, EnergyTable) or any(t.header.get(k) != v for k, v in want.items()):
        return None
    return t.detach(hw)


def energy_table(space: Any, hardware: Hardware | str | None = None, bits: int = 32, ops: Sequence[str] | None = None,
                 path: str | Path | None = None, progress: bool = False) -> EnergyTable:
    """The energy table of a search space on a hardware, ready to price its archs.

    Opens ``path`` (default ``./latency_tables/<space>-<hardware>-<bits>bit-energy.csv`` of the working
    directory, ``nas.paths.user_tables_dir``), prices the
    shapes it lacks (all of them the first time) for the conventions ``ops`` (default: every
    operator kind) and saves it; seconds for the shipped spaces.
    """
    from nas.cost.shapes import conventions_header
    from nas.ops.registry import op_kinds
    from nas.paths import user_tables_dir

    ops = tuple(op_kinds() if ops is None else ops)
    hw = load_hardware(hardware)
    hw.precision(bits)
    p = Path(path) if path is not None else user_tables_dir() / f"{space.name}-{hw.name}-{bits}bit-energy.csv"
    t = LookupTable.open(p, lambda: EnergyTable.create(hw, bits, space=space.name, ops=list(ops)))
    t.header.update(conventions_header(ops))
    t.build_space(space, ops, progress=progress)
    return cast(EnergyTable, t)  # open() checks the file is an energy table


def _rel(path: str) -> str:
    if not path:
        return ""
    from nas.paths import shipped_name

    return shipped_name(path)
