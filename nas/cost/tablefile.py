"""The lookup-table file format: a commented YAML header, then CSV with one row per layer shape.

::

    # schema_version: 1
    # kind: energy
    # hardware: eyeriss-45nm
    # ... (a YAML mapping, one "# " prefixed line each)
    kind,part,op,in_channels,out_channels,kernel_size,stride,groups,in_hw,bias,energy_mJ,...
    pointwise,,mult,16,48,1,1,1,16,false,0.0123,...

A row's key (:class:`RowKey`) is the layer shape: kind, ``part`` (the SE piece: pool, reduce,
expand, gate; empty for other layers), operator, channels, kernel, stride, groups, input size,
bias, and in latency tables the activation after the layer (``act``). Energy tables keep the
energy model's values (``ENERGY_VALUES``), latency tables the measured statistics
(``LATENCY_VALUES``). ``latency_tables/README.md`` documents every header field.

``read_table`` validates a file (one ``ConfigError`` naming the file, line and column);
``write_table`` writes rows sorted by key with 12 significant digits, so that a table reads back to
the same text.
"""

from __future__ import annotations

import csv
import datetime
import io
import math
import platform
from typing import Any, NamedTuple

from nas.arch import ACTS
from nas.cost.layers import KINDS, SE_TABLE_PARTS, Layer
from nas.errors import ConfigError
from nas.ops.registry import op_kinds

SCHEMA_VERSION = 1
TABLE_KINDS = ("energy", "latency")
SHAPE_COLUMNS = ("kind", "part", "op", "in_channels", "out_channels", "kernel_size", "stride", "groups", "in_hw", "bias")
INT_COLUMNS = ("in_channels", "out_channels", "kernel_size", "stride", "groups", "in_hw")
ENERGY_VALUES = ("energy_mJ", "latency_ms", "compute_mJ", "dram_mJ", "gb_mJ", "noc_mJ", "rf_mJ", "tiling")
LATENCY_VALUES = ("latency_ms", "mean_ms", "std_ms", "repeats")
# key and value columns of each table kind
COLUMNS = {"energy": (SHAPE_COLUMNS, ENERGY_VALUES), "latency": (SHAPE_COLUMNS + ("act",), LATENCY_VALUES)}
FORMAT_NOTE = "shiftaddaug lookup table - commented YAML header, then CSV with one row per layer shape"


class RowKey(NamedTuple):
    """The key of a table row: a layer shape (``act`` only in latency tables, else None)."""

    kind: str
    part: str
    op: str
    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int
    groups: int
    in_hw: int
    bias: bool
    act: str | None = None

    @classmethod
    def of(cls, layer: Layer, with_act: bool) -> "RowKey":
        """The key of ``layer`` (with its activation for latency tables)."""
        L = layer
        return cls(L.kind, L.table_part, L.op, L.in_channels, L.out_channels, L.kernel_size, L.stride, L.groups, L.in_hw,
                   L.bias, L.act if with_act else None)

    def sort_key(self) -> tuple:
        """Numbers before strings, each in its own order (the row order of a written table)."""
        return tuple((0, x, "") if isinstance(x, (int, float)) else (1, 0, str(x)) for x in self)


# --------------------------------------------------------------------------------------------
# writing


def write_table(kind: str, header: dict, entries: dict[RowKey, dict]) -> str:
    """The text of a table: ``header`` as commented YAML, then the rows sorted by key."""
    import yaml

    key_cols, value_cols = COLUMNS[kind]
    head = yaml.safe_dump(header, sort_keys=False, default_flow_style=None, allow_unicode=True, width=200)
    buf = io.StringIO()
    for line in head.rstrip("\n").splitlines():
        buf.write(f"# {line}\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(key_cols + value_cols)
    for key in sorted(entries, key=RowKey.sort_key):
        vals = entries[key]
        w.writerow([fmt(v) for v in key[: len(key_cols)]] + [fmt(vals[c]) for c in value_cols])
    return buf.getvalue()


def fmt(v: Any) -> str:
    """A cell: booleans as true / false, floats with 12 significant digits."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return format(v, ".12g")
    return str(v)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def stamp() -> dict:
    """Provenance fields of a new table's header: tool and library versions, platform, time."""
    import numpy

    try:
        import torch

        tv = str(torch.__version__)
    except Exception:  # noqa: BLE001
        tv = "n/a"
    return {
        "tool": "shiftaddaug",
        "tool_version": _tool_version(),
        "created": now(),
        "python": platform.python_version(),
        "numpy_version": numpy.__version__,
        "torch_version": tv,
        "platform": platform.platform(),
    }


def _tool_version() -> str:
    try:
        from importlib.metadata import version

        return version("shiftaddaug")
    except Exception:  # noqa: BLE001
        return "unknown"


# --------------------------------------------------------------------------------------------
# reading


def read_table(text: str, where: str = "table") -> tuple[str, dict, dict[RowKey, dict]]:
    """(kind, header, entries) of a table's text; a ConfigError names the first problem."""
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
    if kind == "latency":
        _check_overhead(header.get("overhead_ms", {}), where)
    key_cols, value_cols = COLUMNS[kind]
    want = key_cols + value_cols
    reader = csv.reader(lines[i:])
    try:
        cols = next(reader)
    except StopIteration:
        raise ConfigError(f"{where}:{i + 1}", "<no column line>", f"a CSV header: {','.join(want)}") from None
    missing = [c for c in want if c not in cols]
    if missing:
        raise ConfigError(f"{where}:{i + 1}", ",".join(cols), f"columns must include {', '.join(missing)} (all of: {','.join(want)})")
    unknown = [c for c in cols if c not in want]
    if unknown:
        raise ConfigError(f"{where}:{i + 1}:{unknown[0]}", unknown[0], f"unknown column; allowed: {','.join(want)}")
    pos = {c: cols.index(c) for c in want}
    entries: dict[RowKey, dict] = {}
    for n, row in enumerate(reader, start=i + 2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(cols):
            raise ConfigError(f"{where}:{n}", f"<{len(row)} fields>", f"each row has {len(cols)} fields ({','.join(cols)})")
        key = RowKey(*(_parse(c, row[pos[c]], f"{where}:{n}:{c}") for c in key_cols))
        _check_key(key, f"{where}:{n}")
        if key in entries:
            raise ConfigError(f"{where}:{n}", ",".join(row[: len(key_cols)]), "duplicate layer shape (each shape has one row)")
        entries[key] = {c: _parse(c, row[pos[c]], f"{where}:{n}:{c}") for c in value_cols}
    return kind, header, entries


def _check_overhead(ov: Any, where: str) -> None:
    """A latency header's ``overhead_ms``: network, block and optionally layer (a number or per kind)."""
    lay = ov.get("layer", 0.0) if isinstance(ov, dict) else None
    lay_ok = _finite_nonneg(lay) or (isinstance(lay, dict) and set(lay) <= set(op_kinds()) and all(_finite_nonneg(v) for v in lay.values()))
    if not isinstance(ov, dict) or any(not _finite_nonneg(ov.get(k)) for k in ("network", "block")) or not lay_ok:
        raise ConfigError(
            f"{where}: header overhead_ms", ov,
            "a mapping with non-negative numbers 'network', 'block' and optionally 'layer' (a number or {op: number})",
        )


def _finite_nonneg(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


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
        x = float(s)
    except ValueError:
        raise ConfigError(where, raw, "expected a number") from None
    if not math.isfinite(x) or x < 0:
        raise ConfigError(where, raw, "expected a finite number >= 0")
    return x


def _check_key(key: RowKey, where: str) -> None:
    if key.kind not in KINDS:
        raise ConfigError(f"{where}:kind", key.kind, f"allowed: {', '.join(KINDS)}")
    if key.kind == "se" and key.part not in SE_TABLE_PARTS:
        raise ConfigError(f"{where}:part", key.part, f"an SE row names its part: {', '.join(SE_TABLE_PARTS)}")
    if key.kind != "se" and key.part:
        raise ConfigError(f"{where}:part", key.part, "only SE rows have a part (leave it empty)")
    if key.op not in op_kinds():
        raise ConfigError(f"{where}:op", key.op, f"allowed: {', '.join(op_kinds())}")
    if key.act is not None and key.act not in ACTS:
        raise ConfigError(f"{where}:act", key.act, f"allowed: {', '.join(ACTS)}")
