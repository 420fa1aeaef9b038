"""Console scripts. Each ``*_main`` is an entry point declared in setup.cfg.

Every command turns a ``ConfigError`` (bad user input) into one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from typing import Callable, Sequence

from nas.errors import ConfigError, InfeasibleBudgetError


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
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper


def add_arch_args(p: argparse.ArgumentParser, op_default: str | None = None) -> None:
    """--model / --arch and the overrides shared by commands that take one architecture."""
    from nas.models.zoo import list_zoo

    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="NAME", help=f"a zoo model: {', '.join(list_zoo())}")
    src.add_argument("--arch", metavar="FILE", help="an Arch JSON file, or an OFA / MCUNet net.config")
    p.add_argument(
        "--op",
        choices=("mult", "shift", "add"),
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

    p = argparse.ArgumentParser(
        prog="shiftaddaug-cost",
        description="Exact per-layer operation counts (MACs, multiplications, additions, shifts, parameters, "
        "activation sizes) of one architecture.",
        epilog="examples:\n  shiftaddaug-cost --model mbv2-w1.0 --resolution 224 --classes 1000 --json\n"
        "  shiftaddaug-cost --arch net.config --op shift",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arch_args(p)
    p.add_argument("--batch", type=int, default=1, help="batch size the counts are for (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args(argv)
    if args.batch < 1:
        raise ConfigError("--batch", args.batch, "expected a positive integer")
    arch = resolve_arch(args)
    report = count_ops(arch, batch=args.batch)
    if args.json:
        out = report.to_json_dict()
        out.update({"resolution": arch.resolution, "num_classes": arch.num_classes, "op": arch.op_kind, "arch_id": arch.arch_id})
        print(json.dumps(out, sort_keys=True))
    else:
        print(f"{arch.name} ({arch.op_kind}) at {arch.resolution}x{arch.resolution}, {arch.num_classes} classes, batch {args.batch}")
        print(report.table())
    return 0
