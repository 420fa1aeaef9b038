"""Console scripts. Each ``*_main`` is an entry point declared in setup.cfg.

Every command turns a failure into one line on stderr: a ``ConfigError`` (bad user input, a
damaged or foreign file) exits with code 2, an infeasible budget with 3, and the environment
(``OSError``: a full disk, a read-only or busy run directory, naming the file) or a training run
that diverged with code 1.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from nas.errors import ConfigError, InfeasibleBudgetError, TrainingDivergedError
from nas.ops.registry import mf_kinds, op_kinds


def _friendly(fn: Callable[[Sequence[str] | None], int]) -> Callable[[Sequence[str] | None], int]:
    @functools.wraps(fn)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        try:
            return fn(argv)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except InfeasibleBudgetError as e:
            print(f"infeasible: {e}", file=sys.stderr)
            return 3
        except OSError as e:  # the environment: full disk, permissions, a busy run directory
            from nas.rundir import describe_os_error

            line, code = describe_os_error(e)
            print(f"error: {line}", file=sys.stderr)
            return code
        except TrainingDivergedError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper


def _ignored_on_resume(p: argparse.ArgumentParser, args: argparse.Namespace, honoured=("resume", "quiet")) -> None:
    """--resume continues a run with its recorded configuration: name the options it ignores."""
    ignored = [f"--{k.replace('_', '-')}" for k, v in vars(args).items() if k not in honoured and v != p.get_default(k)]
    if ignored:
        from nas.io import note

        note(f"note: --resume continues {args.resume} with its recorded configuration; ignored: {', '.join(ignored)}")


def add_arch_args(p: argparse.ArgumentParser, op_default: str | None = None) -> None:
    """--model / --arch and the overrides shared by commands that take one architecture."""
    from nas.models.zoo import list_zoo

    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="NAME", help=f"a zoo model: {', '.join(list_zoo())}")
    src.add_argument("--arch", metavar="FILE", help="an Arch JSON file, or an OFA / MCUNet net.config")
    p.add_argument(
        "--op",
        choices=op_kinds(),
        default=op_default,
        help="operator convention: shift = every conv ShiftConv, classifier mult; add = stem and 1x1 convs "
        "AddConv, depthwise and classifier mult (default: mult for --model, the file's own ops for --arch)",
    )
    p.add_argument("--resolution", type=int, metavar="R", help="input resolution (default: the arch's)")
    p.add_argument("--classes", type=int, metavar="K", help="number of classes (default: the arch's)")


def resolve_arch(args: argparse.Namespace):
    from nas.arch import Arch
    from nas.models.zoo import resize, zoo_arch

    for name in ("resolution", "classes"):
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise ConfigError(f"--{name}", v, "expected a positive integer")
    if args.model:
        return zoo_arch(args.model, args.op or "mult", args.resolution, args.classes)
    arch: Arch = Arch.load(args.arch)
    if args.op:
        arch = arch.with_ops(args.op)
    return resize(arch, args.resolution, args.classes)


@_friendly
def cost_main(argv: Sequence[str] | None = None) -> int:
    from nas.cost.counting import count_ops
    from nas.cost.energy import DEFAULT_HARDWARE, load_hardware, price_arch

    p = argparse.ArgumentParser(
        prog="shiftaddaug-cost",
        description="Exact per-layer operation counts (MACs, multiplications, additions, shifts, parameters, "
        "activation sizes) of one architecture, and its energy (mJ) and latency (ms) on the paper's "
        "Eyeriss-like accelerator model (or another hardware file).",
        epilog="examples:\n  shiftaddaug-cost --model mbv2-w0.35 --op mult --resolution 160 --classes 100 --json\n"
        "  shiftaddaug-cost --model mbv2-w1.0 --resolution 224 --classes 1000 --bits 8\n"
        "  shiftaddaug-cost --arch net.config --op shift --hardware my-accelerator.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arch_args(p)
    p.add_argument("--batch", type=int, default=1, help="batch size the counts are for (default 1)")
    p.add_argument(
        "--hardware", metavar="NAME|FILE", default=DEFAULT_HARDWARE,
        help=f"hardware file of the energy model: a name under latency_tables/ or a YAML path (default {DEFAULT_HARDWARE})",
    )
    p.add_argument("--bits", type=int, choices=(32, 16, 8), default=32, help="operand width of the energy model (default 32)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--deploy", action="store_true",
                   help="also generate the integer C code (nas.codegen) and report the operations its loops execute, "
                   "layer by layer, against these counts (docs/deploy.md)")
    args = p.parse_args(argv)
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


@_friendly
def lut_main(argv: Sequence[str] | None = None) -> int:
    from nas.cost.energy import DEFAULT_HARDWARE

    p = argparse.ArgumentParser(
        prog="shiftaddaug-lut",
        description="Build, inspect and use lookup tables: one priced row per distinct layer shape of a search space "
        "(energy on an accelerator model, or latency measured on this machine). Tables are plain CSV with a YAML "
        "header (see latency_tables/README.md).",
        epilog="examples:\n"
        "  shiftaddaug-lut build --space tiny --hardware eyeriss-45nm\n"
        "  shiftaddaug-lut build --space tiny --kind latency --op mult --threads 1\n"
        "  shiftaddaug-lut show latency_tables/tiny-eyeriss-45nm-32bit-energy.csv\n"
        "  shiftaddaug-lut price latency_tables/tiny-eyeriss-45nm-32bit-energy.csv --arch target.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    b.add_argument("--out", metavar="FILE", help="table file (default: latency_tables/<space>-<hardware|device>-...csv)")
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

    args = p.parse_args(argv)
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
    from nas.paths import LATENCY_TABLES
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
        out = Path(args.out) if args.out else LATENCY_TABLES / f"{source_name}-{hw.name}-{args.bits}bit-energy.csv"

        def create():
            return LookupTable.for_energy(hw, args.bits, args.batch, **extra)
    else:
        from nas.cost.latency import check_device, device_name

        check_device(args.device)
        out = Path(args.out) if args.out else LATENCY_TABLES / f"{source_name}-{device_name(args.device)}-{args.threads}t-latency.csv"

        def create():
            return LookupTable.for_latency(args.device, args.threads, args.warmup, args.repeats, args.batch, **extra)

    table = LookupTable.open(out, create)
    # how the rows were chosen: the (last) build command and the operator conventions it covered
    table.header.update(conventions_header(ops), command=_lut_command(args))
    before = len(table)
    progress = not args.no_progress
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


def default_run_dir(name: str) -> "Path":
    """``runs/<timestamp>-<name>`` next to the package (the toolkit runs from a checkout)."""
    import time
    from pathlib import Path

    from nas.paths import RUNS

    return Path(RUNS) / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


@_friendly
def train_main(argv: Sequence[str] | None = None) -> int:
    from nas.data import DATASETS
    from nas.ops.remap import REMAP_KINDS
    from nas.train.trainer import AUG_KINDS, TrainConfig, Trainer, resume_trainer

    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="shiftaddaug-train",
        description="Train a multiplication-free TargetNet, directly or with augmentation (NetAug / ShiftAddAug), "
        "and export it. A run directory gets config.json, a checkpoint every epoch, metrics.csv, curves.png, "
        "summary.json and target/ (arch.json, weights.pt, cost.json, meta.json).",
        epilog="examples:\n"
        "  shiftaddaug-train --model mbv2-tiny --op shift --aug shiftaddaug --epochs 10\n"
        "  shiftaddaug-train --task segmentation --dataset mnistseg --model mbv2-tiny --op add --epochs 5   # LR-ASPP head, mIoU\n"
        "  shiftaddaug-train --model mcunet --op add --aug none --dataset cifar10 --data-root ~/data/cifar-10-batches-py\n"
        "  shiftaddaug-train --model mbv2-w0.35 --op add --dataset cifar100 --data-root ~/data --resolution 160 \\\n"
        "      --device cuda --precision bf16 --workers 4\n"
        "  torchrun --nproc-per-node 2 --no-python shiftaddaug-train --model mbv2-tiny --op add --out runs/ddp\n"
        "  shiftaddaug-train --resume runs/20261127-120000-train-mbv2-tiny-shift-shiftaddaug\n"
        "  shiftaddaug-train --model mbv2-tiny --out runs/mine --overwrite   # start over; the old run moves to runs/mine.old-<time>",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group()
    from nas.models.zoo import list_zoo

    src.add_argument("--model", metavar="NAME", help=f"a zoo model: {', '.join(list_zoo())}")
    src.add_argument("--arch", metavar="FILE", help="an Arch JSON file or OFA / MCUNet net.config")
    src.add_argument("--resume", metavar="DIR", help="continue an interrupted run from its directory")
    p.add_argument("--op", choices=op_kinds(), default=d.op, help=f"operator of the TargetNet (default {d.op})")
    p.add_argument("--aug", choices=AUG_KINDS, default=d.aug,
                   help="none: direct training; netaug: augmented part with the target's operator; "
                   f"shiftaddaug: multiplicative augmented part + block mutation (default {d.aug})")
    p.add_argument("--remap", choices=REMAP_KINDS, default=d.remap, help=f"weight remapping into the MF domain (default {d.remap})")
    p.add_argument("--dataset", choices=sorted(DATASETS),
                   help=f"default {d.dataset} (segmentation: mnistseg); " + "; ".join(f"{k}: {v}" for k, v in sorted(DATASETS.items())))
    p.add_argument("--data-root", metavar="PATH", help="dataset location (CIFAR python folder or image folder)")
    p.add_argument("--task", choices=("classification", "segmentation"), default=d.task,
                   help="segmentation: per-pixel classes from a segmentation dataset (mnistseg, voc, segfolder); a zoo model "
                   "gets an LR-ASPP head (docs/segmentation.md); metric mIoU (default classification)")
    p.add_argument("--resolution", type=int, metavar="R", help="input resolution (default 32; segmentation 64)")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"default {d.epochs}")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"default {d.batch_size}")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate, cosine schedule with warm-up (default {d.lr})")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--aug-depth", type=int, default=d.aug_depth, help="extra blocks per stage that only the augmented pass runs")
    p.add_argument("--width-mults", type=_floats, default=d.width_mults, metavar="A,B,..", help="width augmentation factors (NetAug: 1.0,1.8,2.6)")
    p.add_argument("--expand-mults", type=_floats, default=d.expand_mults, metavar="A,B,..", help="expand augmentation factors (NetAug: 1.0,1.6,2.2,2.8)")
    p.add_argument("--hybrid", choices=("mf", "mult"), default=d.hybrid, help="target channels of the augmented pass computed with MF (hybrid, default) or multiplication")
    p.add_argument("--branch-norm", action=argparse.BooleanOptionalAction, default=d.branch_norm,
                   help="rescale the multiplicative partial sums of target channels to the MF ones (default on)")
    p.add_argument("--mutation", type=float, metavar="F", help="fraction of training over which target layers turn MF (default: 1/3 with shiftaddaug, else 0)")
    p.add_argument("--eta", type=float, default=d.eta, help=f"AdderNet adaptive gradient scale for add layers, 0 = off (default {d.eta})")
    p.add_argument("--weight-bits", type=int, default=d.weight_bits, help=f"shift weight bits (default {d.weight_bits})")
    p.add_argument("--workers", type=int, default=d.workers,
                   help="data loader worker processes: decode image folders, gather / resize in-memory images (default 0)")
    p.add_argument("--max-train-images", type=int, metavar="N", help="train on the first N images of the training split")
    add_device_args(p, resume_note=True)
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/<time>-train-<model>-<op>-<aug>); "
                   "an existing run is refused unless --overwrite")
    p.add_argument("--overwrite", action="store_true", help="start over in an --out that holds a run (the old one is moved to DIR.old-<time>)")
    p.add_argument("--ray-address", metavar="local|auto|HOST:PORT",
                   help="data-parallel training with Ray Train on that cluster (needs the ray extra; docs/ray.md)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    from nas.train.distributed import init_from_env, launched_by_torchrun
    from nas.train.loop import resolve_device

    if args.ray_address:
        from nas.search.ray_adapter import check_ray

        check_ray(args.ray_address)  # before anything runs: a one-line error without ray
        if launched_by_torchrun():
            raise ConfigError("--ray-address", args.ray_address, "not under torchrun: Ray Train starts its own workers")
    from nas.rundir import claim, heal_train_dir, is_writer, read_run_config

    if args.resume:
        if args.overwrite:
            raise ConfigError("--overwrite", True, "not with --resume (it continues the run)")
        _ignored_on_resume(p, args, honoured=("resume", "quiet", "ray_address", "device"))
        out = Path(args.resume)
    else:
        if not (args.model or args.arch):
            raise ConfigError("--model", None, "give --model NAME, --arch FILE or --resume DIR")
        cfg = TrainConfig(
            model=args.model, arch=args.arch, op=args.op, resolution=args.resolution, aug=args.aug, remap=args.remap,
            hybrid=args.hybrid, branch_norm=args.branch_norm, aug_depth=args.aug_depth, width_mults=args.width_mults,
            expand_mults=args.expand_mults, mutation=args.mutation, eta=args.eta or None, weight_bits=args.weight_bits,
            dataset=args.dataset or ("mnistseg" if args.task == "segmentation" else d.dataset), data_root=args.data_root,
            batch_size=args.batch_size, workers=args.workers,
            max_train_images=args.max_train_images, epochs=args.epochs, lr=args.lr, seed=args.seed,
            device=args.device or "auto", precision=args.precision, task=args.task,
        ).validate()
        name = f"train-{args.model or Path(args.arch).stem}-{args.op}-{args.aug}"
        out = Path(args.out or default_run_dir(name))
    dist = None
    if not args.ray_address:
        # torchrun: join the process group (one process: nothing); the device of this rank
        spec = args.device or (_run_device(args.resume) if args.resume else None) or "auto"
        dist, device = init_from_env(resolve_device(spec))
        out = Path(dist.broadcast_object(str(out)))  # rank 0's (time-stamped) run directory for every rank
    quiet = args.quiet or (dist is not None and not dist.is_writer)
    try:
        with claim(out, "shiftaddaug-train", resume=bool(args.resume), overwrite=args.overwrite):
            if args.resume:
                read_run_config(out, "train")  # a damaged, foreign or search directory: one line
                if is_writer():
                    heal_train_dir(out)
            if args.resume and args.ray_address:
                from nas.search.ray_adapter import train as ray_train

                print(f"resuming {args.resume} on Ray ({args.ray_address})")
                s = ray_train(args.ray_address, args.resume)["summary"]
            elif args.resume:
                # a --device given here moves the run there (and is recorded); torchrun's per-rank GPU is not recorded
                trainer = resume_trainer(args.resume, progress=not quiet, device=device if dist.active else args.device, dist=dist)
                if dist.is_writer:
                    print(f"resuming {args.resume} at epoch {trainer.epoch}/{trainer.cfg.epochs} on {trainer.device}")
                s = trainer.fit()
            elif args.ray_address:
                from nas.search.ray_adapter import train as ray_train

                s = ray_train(args.ray_address, out, cfg)["summary"]
            else:
                s = Trainer(cfg, out, progress=not quiet, device=device, dist=dist).fit()
    finally:
        if dist is not None:
            dist.shutdown()
    if dist is not None and not dist.is_writer:
        return 0  # rank 0 reports
    print()
    print(f"run directory   {out}")
    print(f"TargetNet       {s['target']} ({s['op']}, trained with aug={s['aug']}, remap={s['remap']}, {s['epochs']} epochs)")
    if s.get("task") == "segmentation":
        print(f"mIoU            val {s['val_miou']:.2f}%   test {s['test_miou']:.2f}%   "
              f"(pixel accuracy val {s['val_pixel_acc']:.2f}%, test {s['test_pixel_acc']:.2f}%)")
    else:
        print(f"accuracy        val {s['val_acc']:.2f}%   test {s['test_acc']:.2f}%")
    ex = s["export"]
    cost = f"{ex['macs'] / 1e6:.2f}M MACs" + (f", {ex['energy_mJ']:.4f} mJ" if "energy_mJ" in ex else "")
    print(f"exported        {ex['dir']}  ({cost}; max |logit diff| vs trained model {ex['max_abs_logit_diff']:.1e})")
    print(f"time            {s['train_time_s']:.0f}s")
    return 0


def add_device_args(p: argparse.ArgumentParser, resume_note: bool = False) -> None:
    """--device and --precision (shiftaddaug-train and shiftaddaug-search)."""
    from nas.train.loop import DEVICE_HELP, PRECISIONS

    p.add_argument("--device", metavar="DEV", help=f"where to compute: {DEVICE_HELP} (default auto"
                   + ("; with --resume: the run's own, or move it here" if resume_note else "") + "); under torchrun "
                   "cuda / auto put each rank on its LOCAL_RANK GPU")
    p.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32",
                   help="fp32 (default), or bf16 / fp16 autocast of the multiplicative layers (faster on GPUs); "
                   "multiplication-free layers always compute in fp32; fp16 adds loss scaling")


def _run_device(run_dir: str) -> str | None:
    """The --device a training run was started with (None when its config cannot be read here)."""
    try:
        return json.loads((Path(run_dir) / "config.json").read_text())["train"].get("device")
    except (OSError, ValueError, KeyError):
        return None


@_friendly
def search_main(argv: Sequence[str] | None = None) -> int:
    from nas.data import DATASETS
    from nas.search.pipeline import PRESETS, SearchConfig, SearchRun, budget_preview, preview_text

    d = SearchConfig()
    p = argparse.ArgumentParser(
        prog="shiftaddaug-search",
        description="Find a multiplication-free TargetNet under an energy or latency budget and train it with "
        "ShiftAddAug: hybrid supernet -> stage one (evolution, depth-augmented SubNet) -> stage two (Optuna, "
        "TargetNet cut from the SubNet, priced from a lookup table) -> ShiftAddAug training -> export. "
        "Everything lands in one run directory; --resume continues a killed run.",
        epilog="examples:\n"
        "  shiftaddaug-search                               # the default job: quick preset, bundled data\n"
        "  shiftaddaug-search --budget 0.015mJ --op add\n"
        "  shiftaddaug-search --task segmentation --budget 0.05mJ --op add   # space seg64, mnistseg, mIoU objective\n"
        "  shiftaddaug-search --budget 20mJ --preset paper --dataset cifar100 --data-root ~/data/cifar-100-python\n"
        "  shiftaddaug-search --budget 20mJ --preset imagenet --op add --dry-run   # where the budget lies, no data read\n"
        "  shiftaddaug-search --budget 20mJ --preset imagenet --data-root ~/data/imagenet   # train/ and val/ class folders\n"
        "  shiftaddaug-search --resume runs/20261127-130000-search-shift-0.02mJ\n"
        "  shiftaddaug-search --out runs/mine --overwrite   # start over; the old run moves to runs/mine.old-<time>",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--budget", default=d.budget, help=f"energy (mJ, uJ, J) or latency (ms, us, s) budget of the TargetNet, e.g. 20mJ, 300uJ, 5ms (default {d.budget})")
    p.add_argument("--op", choices=mf_kinds(), default=d.op, help=f"multiplication-free operator of the TargetNet (default {d.op})")
    p.add_argument("--preset", choices=sorted(PRESETS), default=d.preset,
                   help="quick: minutes on a laptop CPU with the bundled data; paper: the paper's recipe on one GPU "
                   "(CIFAR-100 at 160 px, 250 epochs of final training; docs/paper-recipe.md); "
                   "imagenet: 224 px, 1000 classes, an image folder (--data-root), GPU-weeks")
    p.add_argument("--space", help="search space YAML file or shipped name (default: the preset's: tiny / paper160 / mobile224)")
    p.add_argument("--dataset", choices=sorted(DATASETS), default=d.dataset,
                   help="default: the preset's (cifar100 for paper, folder for imagenet), else mnist5k; "
                   + "; ".join(f"{k}: {v}" for k, v in sorted(DATASETS.items())))
    p.add_argument("--data-root", metavar="PATH", help="dataset location (CIFAR python folder or image folder)")
    p.add_argument("--task", choices=("classification", "segmentation"), default=d.task,
                   help="segmentation: a segmentation space (quick preset: seg64, 64 px) and dataset (default mnistseg), "
                   "mIoU as the objective of both stages (docs/segmentation.md; default classification)")
    add_device_args(p)
    p.add_argument("--workers", type=int, default=d.workers, help="data loader worker processes (default 0)")
    p.add_argument("--hardware", metavar="NAME|FILE", help="hardware model of the energy / latency price list (default eyeriss-45nm)")
    p.add_argument("--bits", type=int, choices=(32, 16, 8), default=d.bits, help="operand width of the energy model (default 32)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/<time>-search-<op>-<budget>); an existing run is refused unless --overwrite")
    p.add_argument("--resume", metavar="DIR", help="continue a killed run from its directory (other options but --device are ignored)")
    p.add_argument("--overwrite", action="store_true", help="start over in an --out that holds a run (the old one is moved to DIR.old-<time>)")
    p.add_argument("--ray-address", metavar="local|auto|HOST:PORT", help="run the search on a Ray cluster (needs the ray extra)")
    g = p.add_argument_group("overrides of the preset")
    for name, help_ in (("supernet-epochs", "epochs of supernet training"), ("population", "stage-one population"),
                        ("generations", "stage-one generations"), ("trials", "stage-two Optuna trials"),
                        ("final-epochs", "epochs of ShiftAddAug training"), ("batch-size", "batch size"),
                        ("max-train-images", "train on the first N images"), ("eval-images", "validation images per evaluation"),
                        ("bn-images", "images that re-estimate BatchNorm statistics per evaluation")):
        g.add_argument(f"--{name}", type=int, help=help_)
    p.add_argument("--dry-run", action="store_true",
                   help="only price the space: its cheapest and dearest network for --op against the budget, and whether the "
                   "budget binds (and where it would, if not); reads no data, writes nothing")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: the --dry-run preview, or the run's summary (implies --quiet)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    from nas.train.distributed import launched_by_torchrun

    if launched_by_torchrun():
        raise ConfigError("torchrun", "shiftaddaug-search", "the search runs data-parallel through --ray-address; "
                          "torchrun takes shiftaddaug-train")
    if args.dry_run:
        if args.resume:
            cfg = SearchRun.resume(args.resume, progress=False).cfg
        else:
            cfg = SearchConfig(budget=args.budget, op=args.op, preset=args.preset, space=args.space, dataset=args.dataset,
                               data_root=args.data_root, hardware=args.hardware, bits=args.bits, task=args.task)
        info = budget_preview(cfg)
        print(json.dumps(info, sort_keys=True) if args.json else preview_text(info))
        return 0
    args.quiet = args.quiet or args.json  # stdout carries the JSON object only
    from nas.rundir import claim

    if args.resume:
        if args.overwrite:
            raise ConfigError("--overwrite", True, "not with --resume (it continues the run)")
        _ignored_on_resume(p, args, honoured=("resume", "quiet", "json", "device"))
        out = Path(args.resume)
    else:
        cfg = SearchConfig(budget=args.budget, op=args.op, preset=args.preset, space=args.space, dataset=args.dataset,
                           data_root=args.data_root, hardware=args.hardware, bits=args.bits, seed=args.seed,
                           ray_address=args.ray_address, device=args.device or "auto", precision=args.precision,
                           workers=args.workers, task=args.task,
                           **{k: getattr(args, k) for k in ("supernet_epochs", "population", "generations", "trials", "final_epochs",
                                                             "batch_size", "max_train_images", "eval_images", "bn_images")})
        cfg.resolved()  # bad options fail before the run directory is touched
        if args.ray_address:
            from nas.search.ray_adapter import check_ray

            check_ray(args.ray_address)
        out = Path(args.out or default_run_dir(f"search-{args.op}-{args.budget.replace(' ', '')}"))
    with claim(out, "shiftaddaug-search", resume=bool(args.resume), overwrite=args.overwrite):
        if args.resume:
            run = SearchRun.resume(args.resume, progress=not args.quiet)
            if args.device:  # continue the remaining steps on another device
                run.cfg.device = args.device
            print(f"resuming {args.resume}; finished steps: {', '.join(run.state['done']) or 'none'}",
                  file=sys.stderr if args.json else sys.stdout)
        else:
            run = SearchRun(cfg, out, progress=not args.quiet)
        s = run.run()
    if args.json:
        print(json.dumps(s, sort_keys=True))
        return 0
    print()
    print(_search_table(run, s))
    return 0


def _search_table(run, s: dict) -> str:
    from nas.search.pipeline import binds_in_text

    obj = s.get("objective", "accuracy")
    label = "mIoU" if obj == "miou" else obj
    rows = [
        ("run directory", str(run.out)),
        ("budget", f"{s['budget']}" + ("" if s["budget_binding"] else f"  (does not bind: the largest network costs {s['space_cost_range'][1]:.4g}; "
                                                                      f"{binds_in_text({'binds_in': s['binds_in'], 'op': s['op'], 'unit': run.budget.unit})})")),
        ("TargetNet cost", f"{s['energy_mJ']:.4g} mJ, {s['latency_ms']:.4g} ms  ({'meets' if s['meets_budget'] else 'MISSES'} the budget)"),
        ("TargetNet size", f"{s['macs'] / 1e6:.3f} M MACs, {s['params'] / 1e6:.4f} M params, operator {s['op']}"),
        (label, f"test {s[obj]['test']:.2f}%  val {s[obj]['val']:.2f}%  (supernet estimate {s[obj]['supernet_estimate']:.2f}%)"),
        ("SubNet", f"x{s['subnet']['multiple']} budget, {s['subnet']['cost']:.4g}, supernet {label} {s['subnet'][f'supernet_{obj}']:.2f}%"),
        ("exported", s["paths"]["arch"].rsplit("/", 1)[0] + "/  (arch.json, weights.pt, cost.json)"),
        ("report", f"{s['paths']['report']}, {s['paths']['pareto']}"),
        ("wall time", f"{s['time_s']:.0f} s"),
    ]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


@_friendly
def export_main(argv: Sequence[str] | None = None) -> int:
    from pathlib import Path

    p = argparse.ArgumentParser(
        prog="shiftaddaug-export",
        description="Re-export the TargetNet of a finished run (shiftaddaug-search or shiftaddaug-train): "
        "json rebuilds target/ (arch.json, weights.pt, cost.json, meta.json) from the run's last training "
        "checkpoint with freshly re-estimated BatchNorm statistics; onnx writes target/model.onnx (standard "
        "ONNX operators only, the adder as Pad/Slice/Sub/Abs/ReduceSum) and checks it with onnxruntime.",
        epilog="examples:\n  shiftaddaug-export runs/20261127-130000-search-shift-0.02mJ --format all\n"
        "  shiftaddaug-export runs/20261127-130000-search-shift-0.02mJ --format c --check",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory")
    p.add_argument("--format", choices=("json", "onnx", "all", "c"), default="all",
                   help="what to write (default all = json + onnx); c: integer-only C99 code in target/c/ (docs/deploy.md)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    c = p.add_argument_group("C code (--format c)")
    c.add_argument("--check", action="store_true",
                   help="compile with the system C compiler, run on the run's test images and random ones, compare with "
                   "the Python integer reference (bit for bit) and the float model, count the executed operations")
    c.add_argument("--check-images", type=int, metavar="N", help="test images for --check (default: the whole test split)")
    c.add_argument("--act-bits", choices=("auto", "8", "16"), default="auto",
                   help="activation width: auto = 8-bit except the fewest tensors (lowest 8-bit SQNR first) that must be "
                   "16-bit for --agree (default auto)")
    c.add_argument("--agree", type=float, default=99.5, metavar="PCT",
                   help="auto: top-1 agreement with the float model, simulated on the calibration images (default 99.5)")
    c.add_argument("--mult-bits", type=int, default=8, help="significant bits of requantisation multipliers (default 8)")
    c.add_argument("--requant", choices=("csd", "mul"), default="csd",
                   help="apply requantisation multipliers as shift-adds (csd, multiplication-free) or multiplies; same results")
    c.add_argument("--calib-images", type=int, default=512, metavar="N", help="training images that calibrate the formats (default 512)")
    args = p.parse_args(argv)
    from nas.rundir import claim

    if args.check and args.format != "c":
        raise ConfigError("--check", True, "only with --format c")
    run = Path(args.run_dir)
    if not (run / "config.json").is_file():
        raise ConfigError("RUN_DIR", str(run), "a finished shiftaddaug-search or shiftaddaug-train run directory (no config.json)")
    with claim(run, "shiftaddaug-export", resume=True):  # it rewrites target/: not while the run itself is busy
        if args.format == "c":
            return _export_c(args)
        train_dir = run / "train" if (run / "train" / "config.json").is_file() else run
        if not (train_dir / "checkpoint.pt").is_file():
            raise ConfigError("RUN_DIR", str(run), "a finished shiftaddaug-search or shiftaddaug-train run directory (no training checkpoint found)")
        return _export(run, train_dir, args)


def _export(run: Path, train_dir: Path, args: argparse.Namespace) -> int:
    target_dir = run / "target"
    if args.format in ("json", "all"):
        from nas.train.trainer import resume_trainer

        trainer = resume_trainer(train_dir, progress=False, export_dir=target_dir)
        if trainer.epoch < trainer.cfg.epochs:
            raise ConfigError("RUN_DIR", str(run), f"a finished run (training stopped at epoch {trainer.epoch}/{trainer.cfg.epochs}; use --resume)")
        info = trainer.export()
        if (run / "state.json").is_file():  # a search run: price with its own table
            from nas.arch import Arch
            from nas.search.pipeline import SearchRun

            sr = SearchRun.resume(run, progress=False)
            sr.setup()
            sr.write_cost(Arch.load(target_dir / "arch.json"))
        print(f"json  {target_dir}  (max |logit diff| vs trained model {info['max_abs_logit_diff']:.1e})")
    if args.format in ("onnx", "all"):
        from nas.export import load_exported
        from nas.onnx_export import export_onnx

        model = load_exported(target_dir)
        r = export_onnx(model, target_dir / "model.onnx", model.arch.resolution, opset=args.opset)
        print(f"onnx  {r['path']}  (onnxruntime vs PyTorch max |diff| {r['max_abs_diff']:.1e}; ops: {', '.join(r['ops'])})")
    return 0


def _export_c(args: argparse.Namespace) -> int:
    from nas.codegen.check import check_c, export_c, format_report

    if args.check_images is not None and args.check_images < 1:
        raise ConfigError("--check-images", args.check_images, "a positive integer")
    if not 0 <= args.agree <= 100:
        raise ConfigError("--agree", args.agree, "a percentage in [0, 100]")
    ex = export_c(args.run_dir, act_bits=args.act_bits, agree=args.agree, mult_bits=args.mult_bits,
                  requant=args.requant, calib_images=args.calib_images)
    files = ", ".join(sorted(p.name for p in ex.out_dir.iterdir() if p.is_file()))
    print(f"c     {ex.out_dir}  ({files}; flash {ex.program.flash_bytes:,} B, SRAM peak {ex.program.memory.peak_live_bytes:,} B)")
    if not args.check:
        return 0
    rep = check_c(ex, args.check_images)
    print(format_report(ex, rep))
    return 0 if rep["ok"] else 1
