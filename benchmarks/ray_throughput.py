"""Stage-one evaluation throughput on Ray: candidates per second with 1 and 2 actors (target: >= 1.7x).

Scores a fixed list of SubNets of the default space (``tiny``, the quick preset's 500 calibration
and 500 validation images of mnist5k) in a random supernet, through the stage-one actors of
``nas.search.ray_executor.RayExecutor.evaluate`` (one CPU and one torch thread each) on an in-process
Ray cluster of this machine (``--ray-address local``), and in this process with one torch thread
for reference. Every repeat uses fresh actors (their evaluation cache would answer a second
pass) warmed up on other SubNets first, alternates the order of the 1- and 2-actor runs, and the
table reports medians. Writes benchmarks/results/ray_throughput.md.

    python benchmarks/ray_throughput.py [--candidates 48] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) the processes have used so far; NaN where /proc is missing."""
    total = 0.0
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        total += (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    return total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space", default="tiny")
    p.add_argument("--candidates", type=int, default=48)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--images", type=int, default=500, help="calibration and validation images (quick preset: 500)")
    p.add_argument("--out", default=str(HERE / "results" / "ray_throughput.md"))
    args = p.parse_args(argv)

    import torch

    from nas.io import atomic_torch_save
    from nas.search.evaluator import Evaluator
    from nas.search.ray_executor import RayExecutor, RayOptions, connect
    from nas.search.pipeline import SearchConfig, SearchRun

    torch.set_num_threads(1)
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    with tempfile.TemporaryDirectory() as tmp:
        run = SearchRun(SearchConfig(space=args.space, ray_address="local", eval_images=args.images, bn_images=args.images),
                        Path(tmp) / "run", progress=False)
        run.setup()
        sup = run.supernet_job().trainer(run.loaders)
        atomic_torch_save(sup.state_dict(), run.out / "supernet.pt")  # a random supernet
        rng = random.Random(0)
        pool = list({a.arch_id: a for a in (run.space.sample(rng, "subnet") for _ in range(20 * args.candidates))}.values())
        archs, spare = pool[: args.candidates], pool[args.candidates :]

        # reference: this process, one torch thread
        ev = Evaluator(sup.net, run.calib, run.val)
        ev.accuracy(spare[-1])
        t0 = time.perf_counter()
        reference = [ev.accuracy(a) for a in archs]
        local_s = time.perf_counter() - t0

        t_connect = time.perf_counter()
        connect("local")
        t_connect = time.perf_counter() - t_connect
        times: dict[int, list[float]] = {1: [], 2: []}
        cores: dict[int, list[float]] = {1: [], 2: []}  # CPU seconds of the actors / wall seconds
        for r in range(args.repeats):
            for n in ((1, 2) if r % 2 == 0 else (2, 1)):
                ex = RayExecutor("local", Path(tmp) / "ray", RayOptions(eval_workers=n), progress=False)
                remote = Evaluator(sup.net, run.calib, run.val)  # fresh: its cache would answer a second pass
                try:
                    ex.evaluate(remote, [])  # starts the actors
                    pids = ex.eval_pids()
                    ex.evaluate(remote, spare[r * 8 : r * 8 + 2 * n])  # warm-up: every actor loads the payload, scores a net
                    c0, t0 = _cpu_seconds(pids), time.perf_counter()
                    scores = ex.evaluate(remote, archs)
                    times[n].append(time.perf_counter() - t0)
                    cores[n].append((_cpu_seconds(pids) - c0) / times[n][-1])
                finally:
                    ex.release()
                assert scores == reference, "Ray scores differ from the local ones"
                print(f"repeat {r + 1}/{args.repeats}: {n} actor(s) {len(archs) / times[n][-1]:.1f} candidates/s, "
                      f"{cores[n][-1]:.2f} cores busy", flush=True)
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    import ray

    med = {n: statistics.median(t) for n, t in times.items()}
    rate = {n: len(archs) / med[n] for n in med}
    speedup = rate[2] / rate[1]
    busy = {n: statistics.median(c) for n, c in cores.items()}
    rows = [
        ("this process, 1 torch thread (no Ray)", len(archs) / local_s, "-", "1 (by construction)"),
        ("Ray, 1 actor", rate[1], "1.00x", f"{busy[1]:.2f}"),
        ("Ray, 2 actors", rate[2], f"{speedup:.2f}x", f"{busy[2]:.2f}"),
    ]
    table = ["| evaluation | candidates/s | speed-up vs 1 actor | cores the actors got |", "|---|---|---|---|"]
    table += [f"| {name} | {r:.1f} | {s} | {c} |" for name, r, s, c in rows]
    spread = {n: f"{len(archs) / max(t):.1f} .. {len(archs) / min(t):.1f}" for n, t in times.items()}
    verdict = "meets" if speedup >= 1.7 else "misses"
    text = "\n".join([
        "# Stage-one evaluation throughput on Ray",
        "",
        f"Command: `python benchmarks/ray_throughput.py --candidates {args.candidates} --repeats {args.repeats}`",
        "",
        f"- machine: {_cpu_model()}, {os.cpu_count()} logical CPUs, {platform.machine()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, ray {ray.__version__}; load average {load0:.2f} before, {load1:.2f} after",
        f"- work: {len(archs)} distinct SubNets of space `{args.space}` scored in a random supernet (BN re-estimated on "
        f"{args.images} images, accuracy on {args.images} images of mnist5k), the same scores as in-process",
        f"- Ray: in-process local cluster (`--ray-address local`, started in {t_connect:.1f} s), actors of "
        f"`batch_fitness` with 1 CPU and 1 torch thread each, fresh and warmed up for each of {args.repeats} repeats; "
        "medians (range: 1 actor " + spread[1] + ", 2 actors " + spread[2] + " candidates/s)",
        "",
        *table,
        "",
        f"Target: >= 1.7x with 2 actors: {verdict} ({speedup:.2f}x). \"Cores the actors got\" is the actors' CPU "
        "time over the wall time of the batch: 2 actors can only run 2x as fast when they get 2 cores; on a shared "
        "machine whose other jobs hold a core they get about 1.",
        "",
    ])
    print()
    print("\n".join(table))
    print(f"speed-up with 2 actors: {speedup:.2f}x (target >= 1.7x: {verdict})")
    from nas.io import atomic_write_text

    atomic_write_text(args.out, text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
