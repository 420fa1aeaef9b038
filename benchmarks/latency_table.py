"""How well does a measured latency table predict end-to-end latency on this machine?

Builds a latency table for the default search space (search_spaces/tiny.yaml) with 1 torch thread
(``LookupTable.build_space``, the code behind ``shiftaddaug-lut build --kind latency``: every layer
shape timed inside an arch of the space that contains it), calibrates its
per-layer in-network overhead on 12 archs of the space, then compares the table's prediction (sum of
the layers' entries + overheads) with the measured end-to-end latency of the built static model
(same threads, warm-up and repeats) on 30 other random archs of the space, for each operator
convention. Prints the median absolute % error (target <= 10%) and writes
benchmarks/results/latency_table.md.

    python benchmarks/latency_table.py [--ops mult shift add] [--archs 30] [--passes 3] [--threads 1]

On a machine shared with other processes the speed of the CPU drifts by tens of percent over
seconds (the load average is recorded). A table measured at one moment and networks timed at
another then differ by that drift, whatever the table's quality. The benchmark therefore runs
``--passes`` rounds; in each, for each operator convention, it builds that convention's rows and
then times its networks, and it compares the per-row median of the passes' tables
(``LookupTable.combine``) with the median of the passes' end-to-end times. ``--passes 1`` gives
the plain single build.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main(argv=None) -> int:
    import torch

    from nas.cost.latency import device_name, measure_archs, measure_overhead
    from nas.cost import LookupTable, space_layers
    from nas.space import SearchSpace

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space", default="tiny")
    p.add_argument("--ops", nargs="+", default=["mult", "shift", "add"], choices=["mult", "shift", "add"])
    p.add_argument("--archs", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--calibrate", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(HERE / "results" / "latency_table.md"))
    p.add_argument("--table", default="", help="also save the (combined) table to this CSV path")
    args = p.parse_args(argv)

    space = SearchSpace.load(args.space)
    load0 = os.getloadavg()
    t_start = time.perf_counter()
    overhead = measure_overhead(threads=args.threads)
    items = space_layers(space, args.ops)
    evals = {}
    for op in args.ops:
        rng = random.Random(args.seed)
        evals[op] = [space.sample(rng, f"{op}{i}").with_ops(op) for i in range(args.archs)]

    # Each pass, for each op: build that op's rows, then time that op's networks (seconds apart).
    tables: dict[str, list] = {op: [] for op in args.ops}
    e2e_runs = []
    for _ in range(args.passes):
        run = {}
        for op in args.ops:
            t = LookupTable.for_latency("cpu", args.threads, args.warmup, args.repeats, overhead_ms=overhead,
                                        space=space.name, ops=[op])
            t.build_space(space, [op], progress=False, seed=len(tables[op]))
            tables[op].append(t)
            run[op] = measure_archs(evals[op], warmup=args.warmup, repeats=args.repeats, threads=args.threads)
        e2e_runs.append(run)
    per_op = {op: LookupTable.combine(ts) for op, ts in tables.items()}
    # one table for the space: each op's rows (shapes shared by several ops: the first op's)
    table = LookupTable.for_latency("cpu", args.threads, args.warmup, args.repeats, overhead_ms=overhead,
                                    space=space.name, ops=list(args.ops))
    for op in reversed(args.ops):
        table.entries.update(per_op[op].entries)
    table.header["passes"] = args.passes
    assert len(table) == len({k for k in (table.key(L, a) for L, a in items)})
    cal_rng = random.Random(args.seed + 1000)
    cal_archs = [space.sample(cal_rng, f"cal{i}").with_ops(args.ops[i % len(args.ops)]) for i in range(args.calibrate)]
    cal = table.calibrate(cal_archs, repeats=args.repeats) if cal_archs else {"layer": {}}
    if args.table:
        table.save(args.table)
    total_s = time.perf_counter() - t_start
    load1 = os.getloadavg()

    rows, summary = [], []
    per_layer = table.header["overhead_ms"].get("layer", {})
    for op in args.ops:
        per_op[op].header["overhead_ms"] = table.header["overhead_ms"]
        errs, errs_raw, errs_single = [], [], []
        for i, a in enumerate(evals[op]):
            measured = statistics.median(run[op][i].median_ms for run in e2e_runs)
            price = per_op[op].price(a)
            pred = price.latency_ms
            layer_ov = sum(per_layer.get(L.op, 0.0) for L, _ in price.rows)
            pred_raw = pred - layer_ov
            single = tables[op][0].price(a).latency_ms + layer_ov
            errs.append((pred / measured - 1) * 100)
            errs_raw.append((pred_raw / measured - 1) * 100)
            errs_single.append((single / e2e_runs[0][op][i].median_ms - 1) * 100)
            rows.append((op, a.arch_id, len(price.rows), measured, pred, errs[-1]))
        med = statistics.median(abs(e) for e in errs)
        summary.append(
            (op, len(errs), med, statistics.fmean(errs), max(abs(e) for e in errs),
             statistics.median(abs(e) for e in errs_raw), statistics.median(abs(e) for e in errs_single))
        )
        print(f"{op:5s}: median |error| {med:.1f}% (mean {statistics.fmean(errs):+.1f}%, max |error| {max(abs(e) for e in errs):.1f}%) "
              f"over {len(errs)} archs; without the per-layer overhead {summary[-1][5]:.1f}%; first pass alone {summary[-1][6]:.1f}%")

    lines = [
        "# Latency table vs end-to-end latency",
        "",
        f"Command: `python benchmarks/latency_table.py --ops {' '.join(args.ops)} --archs {args.archs} --threads {args.threads} "
        f"--warmup {args.warmup} --repeats {args.repeats} --passes {args.passes}`",
        "",
        f"- machine: {device_name('cpu')} ({os.cpu_count()} CPUs), {platform.platform()}, torch {torch.__version__}",
        f"- load average at start / end: {load0[0]:.2f} / {load1[0]:.2f} (other processes shared the CPUs); total {total_s:.0f} s",
        f"- space: {space.name}; table: {len(table)} layer shapes ({', '.join(args.ops)}); threads {args.threads}, "
        f"warm-up {args.warmup}, repeats {args.repeats}, statistic: median; {args.passes} passes (per op: its table rows, then its networks), "
        "rows and end-to-end times are medians over the passes",
        f"- container overhead (empty modules): network {overhead['network'] * 1e3:.2f} us, block {overhead['block'] * 1e3:.2f} us; "
        f"calibrated in-network overhead per layer ({', '.join(f'{k} {v * 1e3:.2f} us' for k, v in cal['layer'].items())}) on {len(cal_archs)} archs "
        f"(seed {args.seed + 1000}, not the evaluated ones)",
        "- prediction = sum of the table entries of the arch's layers + overheads; measured = median end-to-end latency of "
        "`build_model(arch)` (eval, no_grad, batch 1; `measure_archs`: in each round every network runs twice back to back "
        "and the second, warm call is timed)",
        "",
        "| op | archs | median abs error | mean error | max abs error | without per-layer overhead | first pass alone |",
        "|---|---|---|---|---|---|---|",
    ]
    for op, n, med, mean, mx, med_raw, med_single in summary:
        lines.append(f"| {op} | {n} | {med:.1f}% | {mean:+.1f}% | {mx:.1f}% | {med_raw:.1f}% | {med_single:.1f}% |")
    lines += ["", "Target: median absolute error <= 10%.", "", "<details><summary>per arch</summary>", "",
              "| op | arch_id | layers | measured ms | predicted ms | error |", "|---|---|---|---|---|---|"]
    for op, aid, n, m, pr, e in rows:
        lines.append(f"| {op} | {aid} | {n} | {m:.4f} | {pr:.4f} | {e:+.1f}% |")
    lines += ["", "</details>", ""]
    from nas.io import atomic_write_text

    out = Path(args.out)
    atomic_write_text(out, "\n".join(lines))  # makes the folder
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
