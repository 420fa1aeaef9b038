"""Does ShiftAddAug help a tiny multiplication-free network? Measured on the bundled dataset.

For each MF operator (shift, add) and seed, trains the same TargetNet with equal epochs:

* ``direct``           the MF network alone (``--aug none``)
* ``shiftaddaug``      hybrid multiplicative augmentation + weight remap + block mutation
* ``shiftaddaug-noremap``  the same without remapping (``--remap none``)
* ``netaug-mf``        NetAug with MF augmentation (the augmented part uses the MF operator too)
* ``mult``             the multiplicative network (once per seed, the reference)

and writes a mean +- std table of test accuracy to ``benchmarks/results/accuracy.md`` (and every
run to ``accuracy.json``, so an interrupted benchmark resumes where it stopped).

    python benchmarks/accuracy.py                       # mbv2-tiny, 32 px, 8 epochs, 3 seeds
    python benchmarks/accuracy.py --jobs 2 --epochs 4   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

METHODS = {
    "direct": dict(aug="none", remap="none"),
    "shiftaddaug": dict(aug="shiftaddaug", remap="cdf-fc"),
    "shiftaddaug-noremap": dict(aug="shiftaddaug", remap="none"),
    "netaug-mf": dict(aug="netaug", remap="none"),
}


def run_one(job: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    from nas.train.trainer import TrainConfig, Trainer

    cfg = TrainConfig(model=job["model"], op=job["op"], epochs=job["epochs"], seed=job["seed"], batch_size=64,
                      resolution=job["resolution"], **METHODS.get(job["method"], dict(aug="none", remap="none")))
    out = Path(job["workdir"]) / f"{job['op']}-{job['method']}-s{job['seed']}"
    t0 = time.time()
    s = Trainer(cfg, out, progress=False).fit()
    return {**job, "test_acc": s["test_acc"], "val_acc": s["val_acc"], "seconds": round(time.time() - t0, 1)}


def key(job: dict) -> str:
    return f"{job['model']}|{job['resolution']}|{job['epochs']}|{job['op']}|{job['method']}|{job['seed']}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mbv2-tiny")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--ops", default="shift,add")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--jobs", type=int, default=1, help="parallel training processes (one torch thread each)")
    p.add_argument("--workdir", default="/tmp/shiftaddaug-accuracy")
    args = p.parse_args()

    sys.path.insert(0, str(ROOT))
    from nas.io import atomic_write_json, atomic_write_text

    store = RESULTS / "accuracy.json"
    done = {key(r): r for r in (json.loads(store.read_text())["runs"] if store.is_file() else [])}
    jobs = []
    for seed in range(args.seeds):
        jobs.append(dict(model=args.model, resolution=args.resolution, epochs=args.epochs, op="mult", method="mult", seed=seed))
        for op in args.ops.split(","):
            for m in args.methods.split(","):
                jobs.append(dict(model=args.model, resolution=args.resolution, epochs=args.epochs, op=op, method=m, seed=seed))
    todo = [dict(j, workdir=args.workdir) for j in jobs if key(j) not in done]
    print(f"{len(jobs)} runs, {len(todo)} to do ({args.jobs} at a time)", flush=True)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for r in pool.map(run_one, todo):
            r.pop("workdir")
            done[key(r)] = r
            print(f"  {r['op']:<5} {r['method']:<20} seed {r['seed']}: test {r['test_acc']:.2f}%  ({r['seconds']:.0f}s)", flush=True)
            atomic_write_json(store, {"runs": sorted(done.values(), key=key)})
    rows = [r for r in done.values() if r["model"] == args.model and r["resolution"] == args.resolution and r["epochs"] == args.epochs]
    table = render(rows, args)
    atomic_write_text(RESULTS / "accuracy.md", table)
    print(table)


def render(rows: list[dict], args) -> str:
    def cell(op: str, method: str) -> str:
        acc = [r["test_acc"] for r in rows if r["op"] == op and r["method"] == method]
        if not acc:
            return "-"
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        return f"{statistics.mean(acc):.2f} ± {sd:.2f} (n={len(acc)})"

    methods = args.methods.split(",")
    lines = [
        f"Test accuracy (%) of {args.model} at {args.resolution}x{args.resolution} on mnist5k (500 test images), "
        f"{args.epochs} epochs, mean ± std over seeds.",
        "",
        "| operator | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for op in args.ops.split(","):
        lines.append(f"| {op} | " + " | ".join(cell(op, m) for m in methods) + " |")
    lines += ["", f"Multiplicative reference (same network, `--op mult --aug none`): {cell('mult', 'mult')}", "",
              f"Command: `python benchmarks/accuracy.py --epochs {args.epochs} --seeds {args.seeds}`; "
              f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, one torch thread per run.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
