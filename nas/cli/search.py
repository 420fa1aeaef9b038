"""``shiftaddaug search`` (also ``shiftaddaug-search``): the whole job, one run directory. One flag per
``SearchConfig`` field (generated), or ``--config FILE``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from nas.cli.common import (
    EXAMPLES,
    _friendly,
    add_config_arg,
    add_config_flags,
    add_verbosity_args,
    config_values,
    configure_logging,
    default_run_dir,
    ignored_on_resume,
    verbosity,
)
from nas.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    from nas.search.pipeline import SearchConfig

    p = argparse.ArgumentParser(
        prog="shiftaddaug search",
        description="Find a multiplication-free TargetNet under an energy or latency budget and train it with "
        "ShiftAddAug: hybrid supernet -> stage one (evolution, depth-augmented SubNet) -> stage two (Optuna, "
        "TargetNet cut from the SubNet, priced from a lookup table) -> ShiftAddAug training -> export. "
        "Everything lands in one run directory; --resume continues a killed run. Every field of the search's "
        "configuration is a flag below, or a key of --config FILE. Also installed as shiftaddaug-search.",
        epilog="examples:\n"
        "  shiftaddaug search                               # the default job: quick preset, bundled data\n"
        "  shiftaddaug search --budget 0.015mJ --op add\n"
        "  shiftaddaug search --task segmentation --budget 0.05mJ --op add   # space seg64, mnistseg, mIoU objective\n"
        "  shiftaddaug search --budget 20mJ --preset paper --dataset cifar100 --data-root ~/data/cifar-100-python\n"
        "  shiftaddaug search --budget 20mJ --preset imagenet --op add --dry-run   # where the budget lies, no data read\n"
        "  shiftaddaug search --budget 20mJ --preset imagenet --data-root ~/data/imagenet   # train/ and val/ class folders\n"
        "  shiftaddaug search --config search.yaml --trials 50   # a file, one field overridden\n"
        "  shiftaddaug search --resume runs/20261127-130000-search-shift-0.02mJ\n"
        "  shiftaddaug search --out runs/mine --overwrite   # start over; the old run moves to runs/mine.old-<time>",
        formatter_class=EXAMPLES,
    )
    p.add_argument("--resume", metavar="DIR", help="continue a killed run from its directory (other options but --device are ignored)")
    add_config_arg(p, "search")
    p.add_argument("--out", metavar="DIR", help="run directory (default ./runs/<time>-search-<op>-<budget>); an existing run "
                   "is refused unless --overwrite")
    p.add_argument("--overwrite", action="store_true", help="start over in an --out that holds a run (the old one is moved to DIR.old-<time>)")
    p.add_argument("--dry-run", action="store_true",
                   help="only price the space: its cheapest and dearest network for --op against the budget, and whether the "
                   "budget binds (and where it would, if not); reads no data, writes nothing")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: the --dry-run preview, or the run's summary (implies --quiet)")
    add_verbosity_args(p, quiet_help="no progress bars; only warnings and errors")
    add_config_flags(p, SearchConfig)
    return p


@_friendly
def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    args.quiet = args.quiet or args.json  # stdout carries the JSON object only
    configure_logging(verbosity(args))
    from nas.search.pipeline import SearchConfig, SearchRun, budget_preview
    from nas.search.report import preview_text
    from nas.train.distributed import launched_by_torchrun

    if launched_by_torchrun():
        raise ConfigError("torchrun", "shiftaddaug-search", "the search runs data-parallel through --ray-address; "
                          "torchrun takes shiftaddaug-train")
    if args.dry_run:
        if args.resume:
            cfg = SearchRun.resume(args.resume, progress=False).cfg
        else:
            cfg = SearchConfig(**config_values(args, SearchConfig, "search", "train"))
        info = budget_preview(cfg)
        print(json.dumps(info, sort_keys=True) if args.json else preview_text(info))
        return 0
    from nas.rundir import claim

    if args.resume:
        ignored_on_resume(p, args, SearchConfig, honoured=("resume", "quiet", "verbose", "json", "device"))
        out = Path(args.resume)
    else:
        cfg = SearchConfig(**config_values(args, SearchConfig, "search", "train"))
        cfg.resolved()  # bad options fail before the run directory is touched
        if cfg.ray_address:
            from nas.train.ray_train import check_ray

            check_ray(cfg.ray_address)
        out = Path(args.out or default_run_dir(f"search-{cfg.op}-{cfg.budget.replace(' ', '')}"))
    with claim(out, "shiftaddaug-search", resume=bool(args.resume), overwrite=args.overwrite):
        if args.resume:
            run = SearchRun.resume(args.resume, progress=not args.quiet)
            if getattr(args, "device", None):  # continue the remaining steps on another device
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
    from nas.search.report import binds_in_text

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
