"""LookupTable: one priced row per distinct layer shape, kept as a plain, versioned CSV file.

Two kinds of table share one format:

* ``energy``: the paper-compatible energy model (``nas.cost.energy``) on one hardware file, at one
  operand width: energy (mJ), model latency (ms), the energy breakdown and the selected tiling;
* ``latency``: latency measured on this machine (``nas.cost.latency``): median, mean and standard
  deviation over the repeats (ms) on one device with one thread count.

File format (see ``latency_tables/README.md``)::

    # schema_version: 1
    # kind: energy
    # hardware: eyeriss-45nm
    # ... (a YAML mapping, one "# " prefixed line each)
    kind,part,op,in_channels,out_channels,kernel_size,stride,groups,in_hw,bias,energy_mJ,...
    pointwise,,mult,16,48,1,1,1,16,false,0.0123,...

A row's key is the layer shape (``Layer.key()`` fields, plus ``part`` for the pieces of an SE
module and, in latency tables, the activation after the layer). A network's cost is the sum of its
layers' entries (``price``); layers that the energy model does not charge (BN, pooling, residual
adds, SE pool / gate) have no rows in energy tables and cost 0 there. Latency tables also carry the
python overhead of the containers in their header (``overhead_ms``), added once per network and
once per block.
"""

from __future__ import annotations

import csv
import datetime
import io
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from nas.cost.counting import Layer, arch_layers
from nas.errors import ConfigError

SCHEMA_VERSION = 1
TABLE_KINDS = ("energy", "latency")
SHAPE_COLUMNS = ("kind", "part", "op", "in_channels", "out_channels", "kernel_size", "stride", "groups", "in_hw", "bias")
INT_COLUMNS = ("in_channels", "out_channels", "kernel_size", "stride", "groups", "in_hw")
LAYER_KINDS = ("dense", "pointwise", "depthwise", "se", "linear", "pool", "residual")
SE_PARTS = ("pool", "reduce", "expand", "gate")
OPS = ("mult", "shift", "add")
ACTS = ("relu", "relu6", "hswish", "none")
ENERGY_VALUES = ("energy_mJ", "latency_ms", "compute_mJ", "dram_mJ", "gb_mJ", "noc_mJ", "rf_mJ", "tiling")
LATENCY_VALUES = ("latency_ms", "mean_ms", "std_ms", "repeats")
ON_MISSING = ("error", "compute")
FORMAT_NOTE = "shiftaddaug lookup table - commented YAML header, then CSV with one row per layer shape"


def _tool_version() -> str:
    try:
        from importlib.metadata import version

        return version("shiftaddaug")
    except Exception:  # noqa: BLE001
        return "unknown"


def layer_part(layer: Layer) -> str:
    """Which piece of an SE module a layer is (``pool``/``reduce``/``expand``/``gate``); '' otherwise."""
    return layer.name.rsplit(".", 1)[-1] if layer.kind == "se" else ""


def shape_key(layer: Layer, act: str | None = None) -> tuple:
    """The table key of a layer: (kind, part, op, in, out, k, stride, groups, in_hw, bias[, act])."""
    k = (layer.kind, layer_part(layer), *layer.key()[1:])
    return k if act is None else k + (act,)


def layer_from_key(key: tuple) -> tuple[Layer, str | None]:
    """A representative Layer (and activation) of a table key."""
    kind, part, op, cin, cout, k, stride, groups, in_hw, bias = key[:10]
    act = key[10] if len(key) > 10 else None
    out_hw = (in_hw + 2 * (k // 2) - k) // stride + 1
    name = {"se": f"se.{part}", "dense": "stem", "linear": "classifier", "pool": "pool", "residual": "residual"}.get(kind, kind)
    if kind == "se" and part == "pool":
        out_hw = 1
    if kind == "pool":
        out_hw = 1
    bn = kind in ("dense", "pointwise", "depthwise") and not bias
    return Layer(name, kind, op, cin, cout, k, stride, groups, in_hw, out_hw, bias, bn), act


@dataclass
class TablePrice:
    """A network priced from a table: totals and one row per layer of ``arch_layers``."""

    name: str
    kind: str
    rows: list[tuple[Layer, dict | None]]
    overhead_ms: float = 0.0
    computed: list[str] = field(default_factory=list)  # layers added to the table on the way

    def total(self, column: str) -> float:
        t = sum(r[column] for _, r in self.rows if r is not None)
        if column == "latency_ms":
            t += self.overhead_ms
        return float(t)

    @property
    def energy_mJ(self) -> float:
        if self.kind != "energy":
            raise AttributeError("a latency table has no energy")
        return self.total("energy_mJ")

    @property
    def latency_ms(self) -> float:
        return self.total("latency_ms")

    def to_json_dict(self) -> dict:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "latency_ms": self.latency_ms}
        if self.kind == "energy":
            out["energy_mJ"] = self.energy_mJ
        else:
            out["overhead_ms"] = self.overhead_ms
        cols = ("energy_mJ", "latency_ms") if self.kind == "energy" else ("latency_ms",)
        out["layers"] = [{"name": L.name, **{c: (0.0 if r is None else r[c]) for c in cols}} for L, r in self.rows]
        return out


class LookupTable:
    """A priced row per distinct layer shape, with a provenance header; see the module docstring.

    Make one with :meth:`for_energy` / :meth:`for_latency` (or :meth:`open` to resume a file),
    fill it with :meth:`build`, read it with :meth:`load`, price networks with :meth:`price`.
    """

    GROUP = 24  # latency rows are timed in turn in groups of about one network's layers

    def __init__(self, kind: str, header: dict, entries: dict[tuple, dict] | None = None, path: str | Path | None = None):
        if kind not in TABLE_KINDS:
            raise ConfigError("table kind", kind, f"allowed: {', '.join(TABLE_KINDS)}")
        self.kind = kind
        self.header = dict(header)
        self.header["kind"] = kind
        self.header.setdefault("schema_version", SCHEMA_VERSION)
        self.entries: dict[tuple, dict] = dict(entries or {})
        self.path = Path(path) if path is not None else None
        self._hw = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def for_energy(cls, hardware=None, bits: int = 32, batch: int = 1, path: str | Path | None = None, **extra: Any) -> "LookupTable":
        from nas.cost.energy import load_hardware

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
        header.update(_stamp())
        t = cls("energy", header, path=path)
        t._hw = hw
        return t

    @classmethod
    def for_latency(
        cls,
        device: str = "cpu",
        threads: int = 1,
        warmup: int = 10,
        repeats: int = 50,
        batch: int = 1,
        path: str | Path | None = None,
        overhead_ms: dict | None = None,
        **extra: Any,
    ) -> "LookupTable":
        from nas.cost.latency import check_device, device_name, measure_overhead

        check_device(device)
        for name, v, lo in (("threads", threads, 1), ("warmup", warmup, 0), ("repeats", repeats, 1), ("batch", batch, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(name, v, f"expected an integer >= {lo}")
        if overhead_ms is None:
            overhead_ms = measure_overhead(device=device, threads=threads)
        header = {
            "format": FORMAT_NOTE,
            "schema_version": SCHEMA_VERSION,
            "kind": "latency",
            "units": {"latency": "ms"},
            "device": device_name(device),
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
        header.update(_stamp())
        return cls("latency", header, path=path)

    @classmethod
    def open(cls, path: str | Path, create) -> "LookupTable":
        """Load ``path`` to resume it, or make a new table with ``create()`` when it does not exist.

        A resumed table must have been built with the same settings as the new one (hardware,
        bits, batch; device, threads, warm-up, repeats) or a ConfigError says which differs.
        """
        fresh: LookupTable = create()
        p = Path(path)
        fresh.path = p
        if not p.exists():
            return fresh
        old = cls.load(p)
        for k in _COMPATIBLE[fresh.kind] + ("kind",):
            if old.header.get(k) != fresh.header.get(k):
                raise ConfigError(
                    f"{p.name}: header {k}",
                    old.header.get(k),
                    f"this build uses {fresh.header.get(k)!r}; pass another --out or delete the file to start over",
                )
        old._hw = fresh._hw
        return old

    @classmethod
    def combine(cls, tables: Sequence["LookupTable"]) -> "LookupTable":
        """One latency table from several builds of the same shapes (e.g. at different times on a
        shared machine): per row the median of the medians, means and deviations, repeats summed;
        the header (overheads included) is the first table's, with ``passes`` set."""
        import statistics

        if not tables or any(t.kind != "latency" for t in tables):
            raise ConfigError("tables", len(tables), "combine needs one or more latency tables")
        first = tables[0]
        out = cls("latency", dict(first.header), path=first.path)
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

    # ------------------------------------------------------------------ file format
    @property
    def key_columns(self) -> tuple[str, ...]:
        return SHAPE_COLUMNS + (("act",) if self.kind == "latency" else ())

    @property
    def value_columns(self) -> tuple[str, ...]:
        return ENERGY_VALUES if self.kind == "energy" else LATENCY_VALUES

    def to_text(self) -> str:
        import yaml

        head = yaml.safe_dump(self.header, sort_keys=False, default_flow_style=None, allow_unicode=True, width=200)
        buf = io.StringIO()
        for line in head.rstrip("\n").splitlines():
            buf.write(f"# {line}\n")
        w = csv.writer(buf, lineterminator="\n")
        cols = self.key_columns + self.value_columns
        w.writerow(cols)
        for key in sorted(self.entries, key=_sort_key):
            vals = self.entries[key]
            row = [_fmt(v) for v in key] + [_fmt(vals[c]) for c in self.value_columns]
            w.writerow(row)
        return buf.getvalue()

    def save(self, path: str | Path | None = None) -> Path:
        from nas.io import atomic_write_text

        p = Path(path) if path is not None else self.path
        if p is None:
            raise ConfigError("table path", None, "give a path to save the table to")
        self.header["rows"] = len(self.entries)
        self.header["updated"] = _now()
        atomic_write_text(p, self.to_text())
        self.path = p
        return p

    @classmethod
    def load(cls, path: str | Path) -> "LookupTable":
        p = Path(path)
        if not p.is_file():
            raise ConfigError("table", str(p), "expected an existing lookup table file (.csv); build one with shiftaddaug-lut build")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(p.name, "<not UTF-8 text>", "a lookup table CSV file") from None
        return cls.from_text(text, p.name, p)

    @classmethod
    def from_text(cls, text: str, where: str = "table", path: str | Path | None = None) -> "LookupTable":
        import yaml

        lines = text.splitlines()
        head_lines, i = [], 0
        while i < len(lines) and lines[i].startswith("#"):
            head_lines.append(lines[i][2:] if lines[i].startswith("# ") else lines[i][1:])
            i += 1
        try:
            header = yaml.safe_load("\n".join(head_lines)) if head_lines else None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = (mark.line + 1) if mark is not None else 1
            raise ConfigError(f"{where}:{line}", "<invalid YAML header>", f"'# key: value' lines ({str(e).splitlines()[0]})") from None
        if not isinstance(header, dict):
            raise ConfigError(f"{where}:1", "<no header>", "a table starts with '# schema_version: 1' and '# kind: energy|latency' lines")
        if header.get("schema_version") != SCHEMA_VERSION:
            raise ConfigError(f"{where}: header schema_version", header.get("schema_version"), f"this version reads {SCHEMA_VERSION}")
        kind = header.get("kind")
        if kind not in TABLE_KINDS:
            raise ConfigError(f"{where}: header kind", kind, f"allowed: {', '.join(TABLE_KINDS)}")
        t = cls(kind, header, path=path)
        if kind == "latency":
            ov = header.get("overhead_ms", {})
            lay = ov.get("layer", 0.0) if isinstance(ov, dict) else None
            lay_ok = _finite_nonneg(lay) or (isinstance(lay, dict) and set(lay) <= set(OPS) and all(_finite_nonneg(v) for v in lay.values()))
            if not isinstance(ov, dict) or any(not _finite_nonneg(ov.get(k)) for k in ("network", "block")) or not lay_ok:
                raise ConfigError(
                    f"{where}: header overhead_ms", ov,
                    "a mapping with non-negative numbers 'network', 'block' and optionally 'layer' (a number or {op: number})",
                )
        reader = csv.reader(lines[i:])
        try:
            cols = next(reader)
        except StopIteration:
            raise ConfigError(f"{where}:{i + 1}", "<no column line>", f"a CSV header: {','.join(t.key_columns + t.value_columns)}") from None
        want = t.key_columns + t.value_columns
        missing = [c for c in want if c not in cols]
        if missing:
            raise ConfigError(f"{where}:{i + 1}", ",".join(cols), f"columns must include {', '.join(missing)} (all of: {','.join(want)})")
        unknown = [c for c in cols if c not in want]
        if unknown:
            raise ConfigError(f"{where}:{i + 1}:{unknown[0]}", unknown[0], f"unknown column; allowed: {','.join(want)}")
        pos = {c: cols.index(c) for c in want}
        for n, row in enumerate(reader, start=i + 2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(cols):
                raise ConfigError(f"{where}:{n}", f"<{len(row)} fields>", f"each row has {len(cols)} fields ({','.join(cols)})")
            key = tuple(_parse(c, row[pos[c]], f"{where}:{n}:{c}") for c in t.key_columns)
            _check_key(key, f"{where}:{n}")
            if key in t.entries:
                raise ConfigError(f"{where}:{n}", ",".join(row[: len(t.key_columns)]), "duplicate layer shape (each shape has one row)")
            t.entries[key] = {c: _parse(c, row[pos[c]], f"{where}:{n}:{c}") for c in t.value_columns}
        return t

    # ------------------------------------------------------------------ entries
    def __len__(self) -> int:
        return len(self.entries)

    def key(self, layer: Layer, act: str | None = None) -> tuple:
        return shape_key(layer, (act or "none") if self.kind == "latency" else None)

    def covers(self, layer: Layer) -> bool:
        """Whether this kind of table has (needs) a row for the layer."""
        if self.kind == "energy":
            from nas.cost.energy import is_charged

            return is_charged(layer)
        return True

    def __contains__(self, item) -> bool:
        if isinstance(item, Layer):
            item = self.key(item)
        return item in self.entries

    def hardware(self):
        """The hardware of an energy table (loaded from its name; checked against the fingerprint)."""
        from nas.cost.energy import load_hardware

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

    def compute(self, layer: Layer, act: str | None = None) -> dict:
        """The row values of ``layer`` computed now (energy model, or a measurement)."""
        if self.kind == "energy":
            from nas.cost.energy import layer_energy

            return layer_energy(layer, self.hardware(), int(self.header["bits"]), int(self.header.get("batch", 1))).as_row()
        from nas.cost.latency import measure_layer

        h = self.header
        return measure_layer(
            layer, act or "none", device=h.get("device_type", "cpu"), batch=int(h.get("batch", 1)),
            warmup=int(h["warmup"]), repeats=int(h["repeats"]), threads=int(h["threads"]),
        ).as_row()

    def add(self, layer: Layer, values: dict, act: str | None = None) -> None:
        missing = [c for c in self.value_columns if c not in values]
        if missing:
            raise ConfigError("table row", values, f"needs values for {', '.join(missing)}")
        self.entries[self.key(layer, act)] = {c: values[c] for c in self.value_columns}

    def missing(self, items: Iterable[tuple[Layer, str | None]]) -> list[tuple[Layer, str | None]]:
        """The distinct (layer, act) items whose shape has no row yet (in first-seen order)."""
        seen, out = set(), []
        for layer, act in items:
            if not self.covers(layer):
                continue
            k = self.key(layer, act)
            if k in self.entries or k in seen:
                continue
            seen.add(k)
            out.append((layer, act))
        return out

    def build(self, items: Iterable[tuple[Layer, str | None]], *, progress: bool = True, flush_every: int = 50, desc: str = "pricing layers") -> int:
        """Add a row for every shape of ``items`` (pairs of layer and activation) not yet present.

        Saves to ``self.path`` (when set) every ``flush_every`` new rows and at the end, so a killed
        build resumes where it stopped. Latency rows are measured in round-robin groups (see
        ``nas.cost.latency.measure_layers``). Returns the number of rows added.
        """
        todo = self.missing(items)
        if not todo:
            if self.path is not None and not self.path.exists():
                self.save()
            return 0
        group = 1 if self.kind == "energy" else max(1, min(flush_every, self.GROUP))
        chunks = ((c, c) for c in (todo[i : i + group] for i in range(0, len(todo), group)))
        return self._fill(chunks, len(todo), progress, flush_every, desc)

    def build_from_archs(self, archs: Iterable, *, progress: bool = True, flush_every: int = 50, total: int | None = None,
                         desc: str = "measuring layers") -> int:
        """Add the rows missing for the layers of ``archs`` (an iterable, e.g. ``space_cover_archs``).

        Latency tables time each arch's layers in turn as one group, i.e. in the company of the
        network they belong to, and keep the shapes not yet in the table; energy tables just price
        the missing shapes. Saves every ``flush_every`` new rows and at the end. Returns rows added.
        """
        from nas.cost.latency import layer_act

        def chunks():
            for arch in archs:
                items = [(L, layer_act(arch, L)) for L in arch_layers(arch)]
                new = self.missing(items)
                if new:
                    yield items, new

        return self._fill(chunks(), total, progress, flush_every, desc)

    def _fill(self, chunks: Iterable, total: int | None, progress: bool, flush_every: int, desc: str) -> int:
        """Add the rows of ``new`` for each ``(context, new)`` chunk: energy rows priced, latency rows
        taken from timing all of ``context`` in turn (``measure_layers``). Saves every
        ``flush_every`` new rows and at the end (also when interrupted); returns rows added."""
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, unit="shape", disable=not progress, leave=False)
        added = since = 0
        h = self.header
        try:
            for context, new in chunks:
                if self.kind == "energy":
                    rows = [self.compute(L, act) for L, act in new]
                else:
                    from nas.cost.latency import measure_layers

                    timings = measure_layers(
                        context, device=h.get("device_type", "cpu"), batch=int(h.get("batch", 1)),
                        warmup=int(h["warmup"]), repeats=int(h["repeats"]), threads=int(h["threads"]),
                    )
                    by_key: dict = {}
                    for (L, act), tm in zip(context, timings):
                        by_key.setdefault(self.key(L, act), tm)  # a shape's first timing in the group
                    rows = [by_key[self.key(L, act)].as_row() for L, act in new]
                for (L, act), row in zip(new, rows):
                    self.add(L, row, act)
                added += len(new)
                since += len(new)
                bar.update(len(new))
                if self.path is not None and since >= flush_every:
                    self.save()
                    since = 0
        finally:
            bar.close()
            if self.path is not None and since:
                self.save()
        return added

    def build_space(self, space, ops: Sequence[str] = OPS, *, progress: bool = True, flush_every: int = 50, seed: int = 0) -> int:
        """Add every missing layer shape of ``space`` (conventions ``ops``). Energy rows are priced
        one by one; latency rows are timed inside archs of the space (``space_cover_archs``)."""
        if self.kind == "energy":
            return self.build(space_layers(space, ops), progress=progress, flush_every=flush_every)
        todo = self.missing(space_layers(space, ops))
        if not todo and self.path is not None and not self.path.exists():
            self.save()
        archs = space_cover_archs(space, ops, skip=self.entries.keys(), seed=seed)
        return self.build_from_archs(archs, progress=progress, flush_every=flush_every, total=len(todo))

    # ------------------------------------------------------------------ pricing
    def price(self, arch, on_missing: str = "error") -> TablePrice:
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
        entries = self.entries
        if self.kind == "energy":
            from nas.cost.energy import is_charged

            for L in layers:
                if not is_charged(L):
                    rows.append((L, None))
                    continue
                k = shape_key(L)
                r = entries.get(k)
                if r is None:
                    r = self._missing(L, None, on_missing, arch, computed)
                rows.append((L, r))
            return TablePrice(arch.name, "energy", rows, 0.0, computed)
        from nas.cost.latency import layer_act

        for L in layers:
            act = layer_act(arch, L)
            k = shape_key(L, act)
            r = entries.get(k)
            if r is None:
                r = self._missing(L, act, on_missing, arch, computed)
            rows.append((L, r))
        ov = self.header["overhead_ms"]
        overhead = float(ov["network"]) + float(ov["block"]) * sum(len(s.blocks) for s in arch.stages)
        per_layer = ov.get("layer", 0.0)
        if isinstance(per_layer, dict):
            overhead += sum(float(per_layer.get(L.op, 0.0)) for L in layers)
        else:
            overhead += float(per_layer) * len(layers)
        return TablePrice(arch.name, "latency", rows, overhead, computed)

    def calibrate(self, archs: list, *, repeats: int | None = None) -> dict:
        """Measure the per-layer in-network overhead (per operator kind) on ``archs`` (latency tables
        only) and store it in the header (``overhead_ms.layer``, plus ``calibration``); see
        ``nas.cost.latency.calibrate_layer_overhead``. Use archs the table will price, not the
        ones you evaluate it on."""
        if self.kind != "latency":
            raise ConfigError("table kind", self.kind, "only latency tables are calibrated")
        if not archs:
            raise ConfigError("calibration archs", archs, "give at least one architecture")
        from nas.cost.latency import calibrate_layer_overhead

        h = self.header
        ov = dict(h["overhead_ms"])
        cal = calibrate_layer_overhead(
            list(archs), device=h.get("device_type", "cpu"), batch=int(h.get("batch", 1)), warmup=int(h["warmup"]),
            repeats=int(repeats or h["repeats"]), threads=int(h["threads"]), container_ms=ov,
        )
        ov["layer"] = {k: float(v) for k, v in cal["layer"].items()}
        h["overhead_ms"] = ov
        h["calibration"] = {"archs": cal["archs"], "per_layer_gap_ms": [float(x) for x in cal["spread"]], "created": _now()}
        return cal

    def _missing(self, L: Layer, act: str | None, on_missing: str, arch, computed: list[str]) -> dict:
        if on_missing == "error":
            where = str(self.path) if self.path is not None else "lookup table"
            k = self.key(L, act)
            shape = ",".join(_fmt(v) for v in k)
            raise ConfigError(
                f"{where}: layer {L.name} of {arch.name}",
                shape,
                "no row for this layer shape; build the table for this space / arch (shiftaddaug-lut build) "
                "or price with on_missing='compute'",
            )
        self.add(L, self.compute(L, act), act)
        computed.append(L.name)
        return self.entries[self.key(L, act)]

    def summary(self) -> str:
        lines = [f"{len(self)} rows"]
        by: dict[tuple, list[float]] = {}
        col = "energy_mJ" if self.kind == "energy" else "latency_ms"
        for k, v in self.entries.items():
            by.setdefault((k[0], k[2]), []).append(v[col])
        unit = "mJ" if self.kind == "energy" else "ms"
        for (kind, op), vals in sorted(by.items()):
            lines.append(f"  {kind:<9} {op:<5} {len(vals):>6} rows   {col} min {min(vals):.4g} {unit}, max {max(vals):.4g} {unit}")
        return "\n".join(lines)


_COMPATIBLE = {
    "energy": ("hardware", "hardware_fingerprint", "bits", "batch"),
    "latency": ("device", "device_type", "threads", "warmup", "repeats", "batch", "dtype"),
}


def energy_table(
    space,
    hardware=None,
    bits: int = 32,
    ops: Sequence[str] = OPS,
    path: str | Path | None = None,
    progress: bool = False,
) -> LookupTable:
    """The energy table of a search space on a hardware, ready to price its archs.

    Opens ``path`` (default ``./latency_tables/<space>-<hardware>-<bits>bit-energy.csv`` in the working
    directory, ``nas.paths.user_tables_dir``), prices the
    shapes it lacks (all of them the first time) and saves it; seconds for the shipped spaces.
    """
    from nas.cost.energy import load_hardware
    from nas.paths import user_tables_dir

    hw = load_hardware(hardware)
    hw.precision(bits)
    p = Path(path) if path is not None else user_tables_dir() / f"{space.name}-{hw.name}-{bits}bit-energy.csv"
    t = LookupTable.open(p, lambda: LookupTable.for_energy(hw, bits, space=space.name, ops=list(ops)))
    t.header.update(conventions_header(ops))
    t.build_space(space, ops, progress=progress)
    return t


def shipped_energy_table(space, hardware=None, bits: int = 32) -> LookupTable | None:
    """The shipped energy table of ``space`` (``latency_tables/<space>-<hardware>-<bits>bit-energy.csv``)
    when it was built for this hardware (same fingerprint), width and batch 1, detached from its
    file: rows priced on the way (e.g. another class count) stay in memory. None otherwise."""
    from nas.cost.energy import load_hardware
    from nas.paths import LATENCY_TABLES

    hw = load_hardware(hardware)
    p = LATENCY_TABLES / f"{space.name}-{hw.name}-{bits}bit-energy.csv"
    if not p.is_file():
        return None
    t = LookupTable.load(p)
    want = {"kind": "energy", "hardware": hw.name, "hardware_fingerprint": hw.fingerprint, "bits": bits, "batch": 1}
    if any(t.header.get(k) != v for k, v in want.items()):
        return None
    t.path, t._hw = None, hw
    return t


# --------------------------------------------------------------------------------------------
# layer shapes of a search space / a list of archs


def conventions_header(ops: Sequence[str]) -> dict:
    """Header entry recording the operator of every conv role under each covered convention
    (``nas.arch.op_convention``), so a table says which convention its rows were chosen for."""
    from nas.arch import op_convention

    return {"conventions": {op: op_convention(op) for op in ops}}


def _op_for(role: str, op: str) -> str:
    """The operator of a layer role under a model's convention (``Arch.with_ops``)."""
    from nas.arch import op_convention

    return op_convention(op).get(role, "mult")  # pooling, gating, residual: "mult"


def space_layers(space, ops: Sequence[str] = ("mult",)) -> list[tuple[Layer, str]]:
    """(layer, activation) for every distinct layer shape any arch of ``space`` can have.

    For each stage / block position: every reachable input width x kernel x expand ratio x width
    (the input spatial size is fixed per position), for each operator convention in ``ops``.
    """
    return [(L, act) for L, act, _, _ in _space_items(space, ops)]


def _space_items(space, ops: Sequence[str]) -> list[tuple[Layer, str, str, dict]]:
    """``space_layers`` with, per shape, the convention and genome genes of an arch that has it."""
    from nas.arch import conv_out_size
    from nas.space import mid_channels, se_channels

    for op in ops:
        if op not in OPS:
            raise ConfigError("op", op, f"allowed: {', '.join(OPS)}")
    out: list[tuple[Layer, str, str, dict]] = []
    seen: set[tuple] = set()
    last = len(space.stages) - 1

    def put(L: Layer, act: str, conv: str, genes: dict) -> None:
        k = shape_key(L, act)
        if k not in seen:
            seen.add(k)
            out.append((L, act, conv, genes))

    def into(i: int, c: int) -> dict:
        """Genes making the input of stage i (the output of stage i - 1 or the stem) ``c`` wide."""
        return {"stem_out": c} if i == 0 else {f"s{i - 1}_out": c}

    for op in ops:
        dense, dw, se = _op_for("dense", op), _op_for("dw", op), _op_for("se", op)
        st = space.stem
        hw = space.resolution
        hw_out = conv_out_size(hw, st.kernel_size, st.stride)
        for c in st.out_channels:
            put(Layer("stem", "dense", dense, space.in_channels, c, st.kernel_size, st.stride, 1, hw, hw_out, bn=True), st.act, op, {"stem_out": c})
        hw = hw_out
        prev = st.out_channels
        for i, s in enumerate(space.stages):
            hw_stage_out = conv_out_size(hw, 3, s.stride)
            for j in range(max(s.depth)):
                stride = s.stride if j == 0 else 1
                h_in = hw if j == 0 else hw_stage_out
                h_out = hw_stage_out
                p = f"s{i}.b{j}"
                for cout in s.out_channels:
                    for cin in (prev if j == 0 else (cout,)):
                        for e in s.expand_ratio:
                            mid = mid_channels(cin, e)
                            for k in s.kernel_size:
                                g = {f"s{i}_out": cout, f"s{i}_b{j}_ks": k, f"s{i}_b{j}_e": e, f"s{i}_depth>": j + 1}
                                if j == 0:
                                    g.update(into(i, cin))
                                if e != 1:
                                    put(Layer(f"{p}.expand", "pointwise", dense, cin, mid, 1, 1, 1, h_in, h_in, bn=True), s.act, op, g)
                                put(Layer(f"{p}.dw", "depthwise", dw, mid, mid, k, stride, mid, h_in, h_out, bn=True), s.act, op, g)
                                if s.se:
                                    sc = se_channels(mid)
                                    put(Layer(f"{p}.se.pool", "se", "mult", mid, mid, 1, 1, 1, h_out, 1), "none", op, g)
                                    put(Layer(f"{p}.se.reduce", "se", se, mid, sc, 1, 1, 1, 1, 1, bias=True), "none", op, g)
                                    put(Layer(f"{p}.se.expand", "se", se, sc, mid, 1, 1, 1, 1, 1, bias=True), "none", op, g)
                                    put(Layer(f"{p}.se.gate", "se", "mult", mid, mid, 1, 1, 1, h_out, h_out), "none", op, g)
                                put(Layer(f"{p}.project", "pointwise", dense, mid, cout, 1, 1, 1, h_out, h_out, bn=True), "none", op, g)
                                if stride == 1 and cin == cout:
                                    put(Layer(f"{p}.residual", "residual", "mult", cout, cout, 1, 1, 1, h_out, h_out), "none", op, g)
            hw = hw_stage_out
            prev = s.out_channels
        if space.feature_mix is not None:
            fm = space.feature_mix
            for cin in prev:
                for c in fm.out_channels:
                    put(Layer("feature_mix", "pointwise", dense, cin, c, 1, 1, 1, hw, hw, bn=True), fm.act, op, {f"s{last}_out": cin, "fm_out": c})
            head = {c: {"fm_out": c} for c in fm.out_channels}
            prev = fm.out_channels
        else:
            head = {c: {f"s{last}_out": c} for c in prev}
        for c in prev:
            put(Layer("pool", "pool", "mult", c, c, 1, 1, 1, hw, 1), "none", op, head[c])
            put(Layer("classifier", "linear", "mult", c, space.num_classes, 1, 1, 1, 1, 1, bias=True), "none", op, head[c])
    return out


def space_cover_archs(space, ops: Sequence[str] = ("mult",), skip: Iterable[tuple] = (), seed: int = 0, latency: bool = True) -> Iterator:
    """Archs of ``space`` that together contain every layer shape of ``space_layers(space, ops)``
    whose key is not in ``skip``: each is aimed at the first shape still missing and random
    elsewhere (``random.Random(seed)``), under the convention that produced that shape.

    Measuring layers inside such archs (``LookupTable.build_from_archs``) times every shape in the
    company of a real network of the space, which is what the end-to-end latency sees.
    """
    import random

    from nas.cost.latency import layer_act

    rng = random.Random(seed)
    genes = space.genes()
    todo: dict[tuple, tuple[str, dict]] = {}
    skip = set(skip)
    for L, act, conv, g in _space_items(space, ops):
        k = shape_key(L, act if latency else None)
        if k not in skip and k not in todo:
            todo[k] = (conv, g)
    while todo:
        key, (conv, target) = next(iter(todo.items()))
        genome = space.sample_genome(rng)
        for name, v in target.items():
            if name.endswith(">"):  # a depth of at least v
                name = name[:-1]
                if genome[name] < v:
                    genome[name] = rng.choice([d for d in genes[name] if d >= v])
            else:
                genome[name] = v
        arch = space.decode(genome, f"cover{len(todo)}").with_ops(conv)
        for L in arch_layers(arch):
            todo.pop(shape_key(L, layer_act(arch, L) if latency else None), None)
        if key in todo:  # cannot happen for a consistent space; never loop forever
            del todo[key]
            continue
        yield arch


def arch_list_layers(archs: Iterable, ops: Sequence[str] | None = None) -> list[tuple[Layer, str]]:
    """(layer, activation) of every distinct layer shape of ``archs`` (each under every convention
    in ``ops``; ``None``: each arch with its own operators)."""
    from nas.cost.latency import layer_act

    out, seen = [], set()
    for a in archs:
        variants = [a] if ops is None else [a.with_ops(op) for op in ops]
        for v in variants:
            for L in arch_layers(v):
                act = layer_act(v, L)
                k = shape_key(L, act)
                if k not in seen:
                    seen.add(k)
                    out.append((L, act))
    return out


# --------------------------------------------------------------------------------------------
# helpers


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def _stamp() -> dict:
    import numpy

    try:
        import torch

        tv = str(torch.__version__)
    except Exception:  # noqa: BLE001
        tv = "n/a"
    return {
        "tool": "shiftaddaug",
        "tool_version": _tool_version(),
        "created": _now(),
        "python": platform.python_version(),
        "numpy_version": numpy.__version__,
        "torch_version": tv,
        "platform": platform.platform(),
    }


def _rel(path: str) -> str:
    if not path:
        return ""
    from nas.paths import shipped_name

    return shipped_name(path)


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return format(v, ".12g")
    return str(v)


def _finite_nonneg(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _sort_key(k: tuple) -> tuple:
    return tuple((0, x, "") if isinstance(x, (int, float)) else (1, 0, str(x)) for x in k)


def _parse(col: str, raw: str, where: str) -> Any:
    s = raw.strip()
    if col in INT_COLUMNS or col == "repeats":
        try:
            v = int(s)
        except ValueError:
            raise ConfigError(where, raw, "expected an integer") from None
        if v < 1:
            raise ConfigError(where, raw, "expected an integer >= 1")
        return v
    if col == "bias":
        low = s.lower()
        if low in ("true", "1"):
            return True
        if low in ("false", "0"):
            return False
        raise ConfigError(where, raw, "expected true or false")
    if col in ("kind", "part", "op", "act", "tiling"):
        return s
    try:
        v = float(s)
    except ValueError:
        raise ConfigError(where, raw, "expected a number") from None
    if not math.isfinite(v) or v < 0:
        raise ConfigError(where, raw, "expected a finite number >= 0")
    return v


def _check_key(key: tuple, where: str) -> None:
    kind, part, op = key[0], key[1], key[2]
    if kind not in LAYER_KINDS:
        raise ConfigError(f"{where}:kind", kind, f"allowed: {', '.join(LAYER_KINDS)}")
    if kind == "se" and part not in SE_PARTS:
        raise ConfigError(f"{where}:part", part, f"an SE row names its part: {', '.join(SE_PARTS)}")
    if kind != "se" and part:
        raise ConfigError(f"{where}:part", part, "only SE rows have a part (leave it empty)")
    if op not in OPS:
        raise ConfigError(f"{where}:op", op, f"allowed: {', '.join(OPS)}")
    if len(key) > 10 and key[10] not in ACTS:
        raise ConfigError(f"{where}:act", key[10], f"allowed: {', '.join(ACTS)}")
