"""``shiftaddaug cost`` (also ``shiftaddaug-cost``): op counts, energy and latency of one architecture."""

from __future__ import annotations

import argparse
import json
from typing import Sequence

from nas.cli.common import EXAMPLES, _friendly, add_arch_args, add_verbosity_args, configure_logging, resolve_arch, verbosity
from nas.errors import ConfigError


@_friendly
def main(argv: Sequence[str] | None = None) -> int:
    from nas.cost.counting import count_ops
    from nas.cost.energy import price_arch
    from nas.cost.hardware import DEFAULT_HARDWARE, list_hardware, load_hardware

    p = argparse.ArgumentParser(
        prog="shiftaddaug cost",
        description="Exact per-layer operation counts (MACs, multiplications, additions, shifts, parameters, "
        "activation sizes) of one architecture, and its energy (mJ) and latency (ms) on the paper's "
        "Eyeriss-like accelerator model (or another hardware file). Also installed as shiftaddaug-cost.",
        epilog="examples:\n  shiftaddaug cost --model mbv2-w0.35 --op mult --resolution 160 --classes 100 --json\n"
        "  shiftaddaug cost --model mbv2-w1.0 --resolution 224 --classes 1000 --bits 8\n"
        "  shiftaddaug cost --arch net.config --op shift --hardware my-accelerator.yaml",
        formatter_class=EXAMPLES,
    )
    add_arch_args(p)
    p.add_argument("--batch", type=int, default=1, help="batch size the counts are for (default 1)")
    p.add_argument(
        "--hardware", metavar="NAME|FILE", default=DEFAULT_HARDWARE,
        help=f"hardware file of the energy model: a shipped name ({', '.join(list_hardware())}) or a YAML path (default {DEFAULT_HARDWARE})",
    )
    p.add_argument("--bits", type=int, choices=(32, 16, 8), default=32, help="operand width of the energy model (default 32)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--deploy", action="store_true",
                   help="also generate the integer C code (nas.codegen) and report the operations its loops execute, "
                   "layer by layer, against these counts (docs/deploy.md)")
    add_verbosity_args(p)
    args = p.parse_args(argv)
    configure_logging(verbosity(args))
    if args.batch < 1:
        raise ConfigError("--batch", args.batch, "expected a positive integer")
    arch = resolve_arch(args)
    if args.deploy:  # refused before any output
        from nas.codegen.intnet import check_task

        check_task(arch)
    hw = load_hardware(args.hardware)
    report = count_ops(arch, batch=args.batch)
    price = price_arch(arch, hw, bits=args.bits, batch=args.batch)
    if args.json:
        out = report.to_json_dict()
        out.update({"resolution": arch.resolution, "num_classes": arch.num_classes, "op": arch.op_kind, "arch_id": arch.arch_id})
        out.update(
            {
                "energy_mJ": price.energy_mJ,
                "latency_ms": price.latency_ms,
                "hardware": hw.name,
                "hardware_fingerprint": hw.fingerprint,
                "bits": args.bits,
                "energy_breakdown_mJ": price.breakdown(),
                "energy_by_op": price.by_op(),
            }
        )
        for row, (_, e) in zip(out["layers"], price.rows):
            row.update({"energy_mJ": e.energy_mJ, "latency_ms": e.latency_ms, "tiling": e.tiling})
        if args.deploy:
            prog, rows = _deploy_counts(arch, args.batch)
            out["deploy"] = {"layers": [lo.to_json() for lo in prog.ops], "counter_agreement": rows,
                             "flash_bytes": prog.flash_bytes, "memory": prog.memory.to_json()}
        print(json.dumps(out, sort_keys=True))
    else:
        print(
            f"{arch.name} ({arch.op_kind}) at {arch.resolution}x{arch.resolution}, {arch.num_classes} classes, batch {args.batch}; "
            f"energy model: {hw.name}, {args.bits} bit"
        )
        print(_cost_table(report, price))
        if args.deploy:
            from nas.codegen.check import format_deploy_table

            prog, rows = _deploy_counts(arch, args.batch)
            print()
            print(format_deploy_table(prog, rows))
            return 0 if all(r["ok"] for r in rows) else 1
    return 0


def _deploy_counts(arch, batch: int):
    from nas.codegen.check import deploy_counts

    if batch != 1:
        raise ConfigError("--batch", batch, "--deploy counts one image (batch 1)")
    return deploy_counts(arch)


def _cost_table(report, price) -> str:
    """The op-count table of ``CostReport.table`` with energy (uJ) and model latency (us) columns."""
    extra = [f" {e.energy_mJ * 1e3:>10.3f} {e.latency_ms * 1e3:>8.2f}" for _, e in price.rows]
    b = price.breakdown()
    lines = [report.table(f" {'energy uJ':>10} {'lat. us':>8}", extra)]
    lines.append(
        f"energy: {price.energy_mJ:.4f} mJ (compute {b['compute_mJ']:.4f}, DRAM {b['dram_mJ']:.4f}, buffer {b['gb_mJ']:.4f}, "
        f"NoC {b['noc_mJ']:.4f}, RF {b['rf_mJ']:.4f}); latency {price.latency_ms:.4f} ms "
        f"({price.hardware}, {price.bits} bit; BN, activations, pooling, residual adds and upsampling are not charged)"
    )
    return "\n".join(lines)
