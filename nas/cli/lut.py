"""``shiftaddaug lut`` (also ``shiftaddaug-lut``): build, show and price with lookup tables."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from nas.cli.common import EXAMPLES, _friendly, add_arch_args, add_verbosity_args, configure_logging, resolve_arch, verbosity
from nas.errors import ConfigError
from nas.ops.registry import op_kinds


@_friendly
def main(argv: Sequence[str] | None = None) -> int:
    from nas.cost.energy import DEFAULT_HARDWARE

    p = argparse.ArgumentParser(
        prog="shiftaddaug lut",
        description="Build, inspect and use lookup tables: one priced row per distinct layer shape of a search space "
        "(energy on an accelerator model, or latency measured on this machine). Tables are plain CSV with a YAML "
        "header (see latency_tables/README.md). Tables you build go to ./latency_tables of the working directory "
        "(or --out). Also installed as shiftaddaug-lut.",
        epilog="examples:\n"
        "  shiftaddaug lut build --space tiny --hardware eyeriss-45nm\n"
        "  shiftaddaug lut build --space tiny --kind latency --op mult --threads 1\n"
        "  shiftaddaug lut show latency_tables/tiny-eyeriss-45nm-32bit-energy.csv\n"
        "  shiftaddaug lut price latency_tables/tiny-eyeriss-45nm-32bit-energy.csv --arch target.json",
        formatter_class=EXAMPLES,
    )
    sub = p.add_subparsers(dest="command", metavar="{build,show,price}")
    sub.required = True

    b = sub.add_parser("build", help="price every layer shape of a space (or of some archs) into a table; rerun to resume")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--space", metavar="FILE|NAME", help="a search space: a YAML file or a name under search_spaces/")
    src.add_argument("--arch", metavar="FILE", action="append", help="an Arch JSON / net.config (repeat for several)")
    b.add_argument("--kind", choices=("energy", "latency"), default="energy", help="energy model or measured latency (default energy)")
    b.add_argument("--hardware", metavar="NAME|FILE", default=DEFAULT_HARDWARE, help=f"energy tables: hardware file (default {DEFAULT_HARDWARE})")
    b.add_argument("--bits", type=int, choices=(32, 16, 8), default=32, help="energy tables: operand width (default 32)")
    b.add_argument("--op", choices=(*op_kinds(), "all"), default="all", help="operator convention(s) to cover (default all)")
    b.add_argument("--out", metavar="FILE", help="table file (default: ./latency_tables/<space>-<hardware|device>-...csv "
                   "in the working directory)")
    b.add_argument("--threads", type=int, default=1, help="latency tables: torch threads (default 1)")
    b.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="latency tables: device (default cpu)")
    b.add_argument("--warmup", type=int, default=10, help="latency tables: untimed calls per shape (default 10)")
    b.add_argument("--repeats", type=int, default=50, help="latency tables: timed calls per shape, median kept (default 50)")
    b.add_argument("--calibrate", type=int, default=12, metavar="N",
                   help="latency tables: archs used to measure the per-layer in-network overhead (default 12; 0 = skip)")
    b.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    b.add_argument("--flush-every", type=int, default=50, metavar="N", help="save the table every N new rows (default 50)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")

    s = sub.add_parser("show", help="print a table's header, a summary and its first rows")
    s.add_argument("table", metavar="FILE")
    s.add_argument("--rows", type=int, default=10, help="rows to print (default 10)")

    pr = sub.add_parser("price", help="price one architecture from a table (sum of its layers' rows)")
    pr.add_argument("table", metavar="FILE")
    add_arch_args(pr)
    pr.add_argument("--compute-missing", action="store_true", help="compute / measure layers missing from the table (and save them)")
    pr.add_argument("--json", action="store_true", help="print one JSON object")

    add_verbosity_args(p)
    args = p.parse_args(argv)
    configure_logging(verbosity(args))
    if args.command == "build":
        return _lut_build(args)
    if args.command == "show":
        return _lut_show(args)
    return _lut_price(args)


def _lut_build(args: argparse.Namespace) -> int:
    import random

    from nas.arch import Arch
    from nas.cost.shapes import arch_list_layers, conventions_header
    from nas.cost.tables import LookupTable
    from nas.paths import user_tables_dir
    from nas.space import SearchSpace

    for name in ("threads", "repeats", "batch", "flush_every"):
        v = getattr(args, name)
        if v < 1:
            raise ConfigError(f"--{name.replace('_', '-')}", v, "expected a positive integer")
    for name in ("warmup", "calibrate"):
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name}", getattr(args, name), "expected a non-negative integer")
    ops = op_kinds() if args.op == "all" else (args.op,)
    if args.space:
        space = SearchSpace.load(args.space)
        source_name = space.name
        extra = {"space": space.name, "ops": list(ops)}
        archs = None
    else:
        archs = [Arch.load(a) for a in args.arch]
        source_name = archs[0].name if len(archs) == 1 else "archs"
        extra = {"archs": [a.name for a in archs], "ops": list(ops)}
        space = None
    if args.kind == "energy":
        from nas.cost.energy import load_hardware

        hw = load_hardware(args.hardware)
        hw.precision(args.bits)
        out = Path(args.out) if args.out else user_tables_dir() / f"{source_name}-{hw.name}-{args.bits}bit-energy.csv"

        def create():
            return LookupTable.for_energy(hw, args.bits, args.batch, **extra)
    else:
        from nas.cost.latency import check_device, device_name

        check_device(args.device)
        out = Path(args.out) if args.out else user_tables_dir() / f"{source_name}-{device_name(args.device)}-{args.threads}t-latency.csv"

        def create():
            return LookupTable.for_latency(args.device, args.threads, args.warmup, args.repeats, args.batch, **extra)

    table = LookupTable.open(out, create)
    # how the rows were chosen: the (last) build command and the operator conventions it covered
    table.header.update(conventions_header(ops), command=_lut_command(args))
    before = len(table)
    progress = not (args.no_progress or args.quiet)
    if space is not None:  # energy rows priced one by one, latency rows timed inside archs of the space
        added = table.build_space(space, ops, progress=progress, flush_every=args.flush_every)
    else:
        variants = [a.with_ops(op) for a in archs for op in ops]
        total = len(table.missing(arch_list_layers(variants)))
        added = table.build_from_archs(variants, progress=progress, flush_every=args.flush_every, total=total)
    calibrated = ""
    if table.kind == "latency" and args.calibrate and "layer" not in table.header.get("overhead_ms", {}):
        rng = random.Random(0)
        if space is not None:
            cal = [space.sample(rng, f"calibration-{i}").with_ops(ops[i % len(ops)]) for i in range(args.calibrate)]
        else:
            cal = [a.with_ops(ops[i % len(ops)]) for i, a in enumerate(archs[: args.calibrate])]
        c = table.calibrate(cal)
        table.save()
        per_op = ", ".join(f"{k} {v * 1e3:.2f}" for k, v in c["layer"].items())
        calibrated = f"; in-network overhead per layer (us): {per_op} (calibrated on {c['archs']} archs)"
    if added == 0 and table.path is not None and not table.path.exists():
        table.save()
    print(f"{out}: {len(table)} rows ({added} added, {before} already there){calibrated}")
    return 0


def _lut_command(args: argparse.Namespace) -> str:
    """The ``shiftaddaug-lut build`` command line of ``args`` (options that change the rows only)."""
    src = f"--space {args.space}" if args.space else " ".join(f"--arch {a}" for a in args.arch)
    parts = ["shiftaddaug-lut build", src, f"--kind {args.kind}", f"--op {args.op}", f"--batch {args.batch}"]
    if args.kind == "energy":
        parts += [f"--hardware {args.hardware}", f"--bits {args.bits}"]
    else:
        parts += [f"--device {args.device}", f"--threads {args.threads}", f"--warmup {args.warmup}", f"--repeats {args.repeats}"]
    return " ".join(parts)


def _lut_show(args: argparse.Namespace) -> int:
    import yaml

    from nas.cost.tables import LookupTable

    if args.rows < 0:
        raise ConfigError("--rows", args.rows, "expected a non-negative integer")
    t = LookupTable.load(args.table)
    print(f"# {args.table}")
    print(yaml.safe_dump(t.header, sort_keys=False, default_flow_style=None, allow_unicode=True, width=200).rstrip())
    print()
    print(t.summary())
    print()
    text = t.to_text().splitlines()
    body = [line for line in text if not line.startswith("#")]
    for line in body[: args.rows + 1]:
        print(line)
    if len(body) - 1 > args.rows:
        print(f"... {len(body) - 1 - args.rows} more rows")
    return 0


def _lut_price(args: argparse.Namespace) -> int:
    from nas.cost.tables import LookupTable

    t = LookupTable.load(args.table)
    arch = resolve_arch(args)
    n = len(t)
    res = t.price(arch, on_missing="compute" if args.compute_missing else "error")
    if len(t) != n:
        t.save()
    if args.json:
        d = res.to_json_dict()
        d.update({"table": str(args.table), "arch_id": arch.arch_id, "computed": res.computed})
        print(json.dumps(d, sort_keys=True))
        return 0
    unit_cols = t.price_columns
    print(f"{arch.name} ({arch.op_kind}) from {args.table} ({t.kind} table, {len(t)} rows)")
    for L, r in res.rows:
        if r is None:
            continue
        vals = "  ".join(f"{c} {r[c]:.6g}" for c in unit_cols)
        print(f"  {L.name:<16} {L.kind:<9} {L.op:<5} {vals}")
    if res.overhead_ms is not None:
        print(f"  {'(overhead)':<16} {'':<9} {'':<5} latency_ms {res.overhead_ms:.6g}")
    tot = "  ".join(f"{c} {res.total(c):.6g}" for c in unit_cols)
    print(f"total: {tot}" + (f"  ({len(res.computed)} layers computed and added)" if res.computed else ""))
    return 0
