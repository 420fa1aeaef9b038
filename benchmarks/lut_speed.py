"""How fast is pricing an architecture from a built lookup table? (target: <= 1 ms per arch)

Loads (or builds, in memory) the energy table of the default space, then prices random archs of
the space (all three operator conventions) from it and reports the time per arch, split into
``arch_layers`` (the per-layer decomposition) and the lookups. Also times the direct energy model
with a cold and a warm per-layer cache for comparison. Writes benchmarks/results/lut_speed.md.

    python benchmarks/lut_speed.py [--archs 2000]
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main(argv=None) -> int:
    from nas.cost.counting import arch_layers
    from nas.cost.energy import clear_cache, price_arch
    from nas.cost import LookupTable, space_layers
    from nas.paths import LATENCY_TABLES
    from nas.space import SearchSpace

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space", default="tiny")
    p.add_argument("--archs", type=int, default=2000)
    p.add_argument("--out", default=str(HERE / "results" / "lut_speed.md"))
    args = p.parse_args(argv)

    space = SearchSpace.load(args.space)
    path = LATENCY_TABLES / f"{space.name}-eyeriss-45nm-32bit-energy.csv"
    t0 = time.perf_counter()
    if path.exists():
        table = LookupTable.load(path)
        how = f"loaded {path.name}"
    else:
        table = LookupTable.for_energy("eyeriss-45nm", 32)
        table.build(space_layers(space, ("mult", "shift", "add")), progress=False)
        how = "built in memory"
    load_s = time.perf_counter() - t0

    rng = random.Random(0)
    archs = [space.sample(rng, f"a{i}").with_ops(rng.choice(["mult", "shift", "add"])) for i in range(args.archs)]
    table.price(archs[0])  # warm imports
    t0 = time.perf_counter()
    for a in archs:
        table.price(a)
    per_arch_us = (time.perf_counter() - t0) / len(archs) * 1e6
    t0 = time.perf_counter()
    for a in archs:
        arch_layers(a)
    layers_us = (time.perf_counter() - t0) / len(archs) * 1e6

    n_model = min(200, len(archs))
    clear_cache()
    t0 = time.perf_counter()
    for a in archs[:n_model]:
        price_arch(a)
    cold_us = (time.perf_counter() - t0) / n_model * 1e6
    t0 = time.perf_counter()
    for a in archs[:n_model]:
        price_arch(a)
    warm_us = (time.perf_counter() - t0) / n_model * 1e6

    verdict = "meets" if per_arch_us <= 1000 else "MISSES"
    print(f"price from table: {per_arch_us:.1f} us per arch ({verdict} the 1 ms target); arch_layers alone {layers_us:.1f} us")
    print(f"energy model directly: {cold_us:.0f} us per arch with a cold cache, {warm_us:.1f} us warm")
    lines = [
        "# Pricing speed from a lookup table",
        "",
        f"Command: `python benchmarks/lut_speed.py --archs {args.archs}`",
        "",
        f"- machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}",
        f"- table: {how} ({len(table)} rows, {load_s * 1e3:.0f} ms); space {space.name}; {len(archs)} random archs, ops mixed",
        "",
        "| what | time per arch |",
        "|---|---|",
        f"| `LookupTable.price(arch)` (energy table) | {per_arch_us:.1f} us |",
        f"| of which `arch_layers(arch)` | {layers_us:.1f} us |",
        f"| `price_arch(arch)` energy model, cold per-layer cache | {cold_us:.0f} us |",
        f"| `price_arch(arch)` energy model, warm per-layer cache | {warm_us:.1f} us |",
        "",
        f"Target: <= 1 ms per arch from a built table: {verdict}.",
        "",
    ]
    from nas.io import atomic_write_text

    out = Path(args.out)
    atomic_write_text(out, "\n".join(lines))  # makes the folder
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
