"""Does ShiftAddAug help a tiny multiplication-free *segmentation* network? Measured on mnistseg.

For each MF operator (shift, add) and seed, trains the same segmentation TargetNet for equal epochs
(default: the smallest network of the seg64 space, ``search_spaces/seg64.yaml``: output stride 16,
LR-ASPP head with its skip at stride 4 and 32 hidden channels, 1.0M MACs; ``--arch`` takes
``seg64:min``, ``seg64:max``, an Arch JSON file or a zoo model name, which gets the default head):

* ``direct``       the MF network alone (``--aug none``)
* ``shiftaddaug``  hybrid multiplicative augmentation + weight remap (``--aug shiftaddaug``)
* ``mult``         the multiplicative network (once per seed, the reference)

and writes a mean +- std table of test mIoU (and pixel accuracy) to
``benchmarks/results/segmentation.md`` (every run to ``segmentation.json``, so an interrupted
benchmark resumes where it stopped).

    python benchmarks/segmentation.py --jobs 2                # seg64:min, 64 px, 5 epochs of 1024 canvases, 3 seeds
    python benchmarks/segmentation.py --arch mbv2-tiny --epochs 1
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
}


def run_one(job: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    from nas.train.trainer import TrainConfig, Trainer

    src = job["model"]
    if src.startswith("seg64:"):
        from nas.space import SearchSpace

        sp = SearchSpace.load("seg64")
        path = Path(job["workdir"]) / f"{src.replace(':', '-')}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        (sp.min_arch() if src.endswith("min") else sp.max_arch()).replace(name=src.replace(":", "-")).save(path)
        src = str(path)
    where = dict(arch=src, model=None) if src.endswith(".json") else dict(model=src)
    cfg = TrainConfig(task="segmentation", dataset="mnistseg", **where, op=job["op"], epochs=job["epochs"],
                      seed=job["seed"], batch_size=32, max_train_images=job["images"],
                      **METHODS.get(job["method"], dict(aug="none", remap="none")))
    out = Path(job["workdir"]) / f"{job['op']}-{job['method']}-s{job['seed']}"
    t0 = time.time()
    s = Trainer(cfg, out, progress=False).fit()
    return {**job, "test_miou": s["test_miou"], "test_pixel_acc": s["test_pixel_acc"], "val_miou": s["val_miou"],
            "seconds": round(time.time() - t0, 1)}


def key(job: dict) -> str:
    return f"{job['model']}|{job['images']}|{job['epochs']}|{job['op']}|{job['method']}|{job['seed']}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", dest="model", default="seg64:min", help="seg64:min, seg64:max, an Arch JSON file or a zoo model")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--images", type=int, default=1024, help="training canvases per epoch (of 4000)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--ops", default="shift,add")
    p.add_argument("--jobs", type=int, default=1, help="parallel training processes (one torch thread each)")
    p.add_argument("--workdir", default="/tmp/shiftaddaug-segmentation")
    args = p.parse_args()

    sys.path.insert(0, str(ROOT))
    from nas.io import atomic_write_json, atomic_write_text

    store = RESULTS / "segmentation.json"
    done = {key(r): r for r in (json.loads(store.read_text())["runs"] if store.is_file() else [])}
    base = dict(model=args.model, images=args.images, epochs=args.epochs)
    jobs = []
    for seed in range(args.seeds):
        jobs.append(dict(base, op="mult", method="mult", seed=seed))
        for op in args.ops.split(","):
            for m in METHODS:
                jobs.append(dict(base, op=op, method=m, seed=seed))
    todo = [dict(j, workdir=args.workdir) for j in jobs if key(j) not in done]
    print(f"{len(jobs)} runs, {len(todo)} to do ({args.jobs} at a time)", flush=True)
    t0 = time.time()
    ran = bool(todo)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for r in pool.map(run_one, todo):
            r.pop("workdir")
            done[key(r)] = r
            print(f"  {r['op']:<5} {r['method']:<12} seed {r['seed']}: test mIoU {r['test_miou']:.2f}%  "
                  f"pixel acc {r['test_pixel_acc']:.2f}%  ({r['seconds']:.0f}s)", flush=True)
            atomic_write_json(store, {"runs": sorted(done.values(), key=key)})
    rows = [r for r in done.values() if all(r[k] == v for k, v in base.items())]
    table = render(rows, args, time.time() - t0 if ran else 0.0)
    atomic_write_text(RESULTS / "segmentation.md", table)
    print(table)


def render(rows: list[dict], args, wall_s: float) -> str:
    def cell(op: str, method: str, col: str = "test_miou") -> str:
        v = [r[col] for r in rows if r["op"] == op and r["method"] == method]
        if not v:
            return "-"
        sd = statistics.stdev(v) if len(v) > 1 else 0.0
        return f"{statistics.mean(v):.2f} ± {sd:.2f} (n={len(v)})"

    lines = [
        f"Test mIoU (%) of {args.model} (LR-ASPP head) at 64x64 on mnistseg (500 test canvases, 11 classes), "
        f"{args.epochs} epochs of {args.images} training canvases, mean ± std over seeds (pixel accuracy in the second table).",
        "",
        "| operator | " + " | ".join(METHODS) + " |",
        "|---|" + "---|" * len(METHODS),
    ]
    for op in args.ops.split(","):
        lines.append(f"| {op} | " + " | ".join(cell(op, m) for m in METHODS) + " |")
    lines += ["", "Pixel accuracy (%):", "", "| operator | " + " | ".join(METHODS) + " |", "|---|" + "---|" * len(METHODS)]
    for op in args.ops.split(","):
        lines.append(f"| {op} | " + " | ".join(cell(op, m, "test_pixel_acc") for m in METHODS) + " |")
    lines += ["", f"Multiplicative reference (same network, `--op mult --aug none`): mIoU {cell('mult', 'mult')}, "
              f"pixel accuracy {cell('mult', 'mult', 'test_pixel_acc')}", "",
              f"Command: `python benchmarks/segmentation.py --arch {args.model} --epochs {args.epochs} --images {args.images} --seeds {args.seeds} "
              f"--jobs {args.jobs}`; machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"one torch thread per run; the runs took {sum(r['seconds'] for r in rows) / 60:.1f} min in all "
              + (f"(this invocation: {wall_s / 60:.1f} min of wall time)." if wall_s >= 1 else "(results read back, nothing run)."), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
