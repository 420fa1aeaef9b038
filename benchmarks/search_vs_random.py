"""Is the searched TargetNet better than a random one of the same budget, trained the same way?

1. runs the default search (``shiftaddaug-search``, quick preset, bundled data) or reuses ``--run``;
2. samples ``--random`` architectures of the same space whose MF cost meets the same budget
   (seeded rejection sampling, priced by the same energy model);
3. trains the searched TargetNet and each random one with the identical recipe
   (``shiftaddaug-train --arch A --op OP --aug shiftaddaug``, from scratch, same epochs and seeds)
   and prints / writes the test accuracies to ``benchmarks/results/search_vs_random.md``.

    python benchmarks/search_vs_random.py [--budget 0.02mJ] [--op shift] [--random 3] [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", default="0.02mJ")
    p.add_argument("--op", default="shift")
    p.add_argument("--run", help="reuse a finished shiftaddaug-search run directory")
    p.add_argument("--random", type=int, default=3)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--workdir", default="/tmp/shiftaddaug-search-vs-random", help="scratch folder; rerunning with the same one reuses finished trainings")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(2)
    from nas.arch import Arch
    from nas.cost.budget import parse_budget
    from nas.io import atomic_write_text
    from nas.search.evaluator import Pricer
    from nas.search.pipeline import SearchConfig, SearchRun
    from nas.space import SearchSpace
    from nas.train.trainer import TrainConfig, Trainer, resume_trainer

    work = Path(args.workdir)
    t0 = time.time()
    if args.run:
        run_dir = Path(args.run)
        summary = json.loads((run_dir / "summary.json").read_text())
    else:
        run_dir = work / "search"
        summary = SearchRun(SearchConfig(budget=args.budget, op=args.op), run_dir, progress=False).run()
    search_s = time.time() - t0
    searched = Arch.load(run_dir / "target" / "arch.json")
    budget = parse_budget(summary["budget"].replace(" ", ""))
    pricer = Pricer(budget, args.op)
    space = SearchSpace.load("tiny").with_task(num_classes=searched.num_classes)
    rng = random.Random(1234)
    randoms = []
    for _ in range(10000):
        a = space.sample(rng, f"random{len(randoms)}")
        if pricer.cost(a) <= budget.value:
            randoms.append(a)
            if len(randoms) == args.random:
                break

    def train(arch: Arch, seed: int) -> float:
        out = work / f"train-{arch.name}-s{seed}"
        if (out / "summary.json").is_file():  # finished by an earlier, interrupted invocation
            return json.loads((out / "summary.json").read_text())["test_acc"]
        if (out / "checkpoint.pt").is_file():
            return resume_trainer(out, progress=False).fit()["test_acc"]
        path = work / "archs" / f"{arch.name}.json"
        arch.with_ops("mult").save(path)
        cfg = TrainConfig(model=None, arch=str(path), op=args.op, aug="shiftaddaug", epochs=args.epochs, seed=seed)
        return Trainer(cfg, out, progress=False).fit()["test_acc"]

    rows = []
    for arch in [searched.replace(name="searched")] + randoms:
        accs = [train(arch, s) for s in range(args.seeds)]
        rows.append((arch.name, pricer.cost(arch), statistics.mean(accs), accs))
        print(f"{arch.name:<10} {pricer.cost(arch):.4g} {budget.unit}  test {statistics.mean(accs):.2f}%  {accs}", flush=True)
    rand = [r[2] for r in rows[1:]]
    lines = [
        f"Searched vs random TargetNets of the same budget ({budget}, {args.op}, space tiny, mnist5k), each trained from scratch "
        f"with `shiftaddaug-train --arch A --op {args.op} --aug shiftaddaug --epochs {args.epochs}`, {args.seeds} seeds.",
        "",
        "| TargetNet | cost | test accuracy (mean of seeds) | per seed |",
        "|---|---|---|---|",
    ]
    for name, cost, mean, accs in rows:
        lines.append(f"| {name} | {cost:.4g} {budget.unit} | {mean:.2f}% | {', '.join(f'{a:.1f}' for a in accs)} |")
    lines += [
        "",
        f"Searched: {rows[0][2]:.2f}%; random (mean of {len(rand)} archs): {statistics.mean(rand):.2f}%. "
        f"The search run itself (supernet weights inherited, {summary.get('time_s', search_s):.0f} s end to end) reached "
        f"{summary['accuracy']['test']:.2f}% test accuracy.",
        "",
        f"Command: `python benchmarks/search_vs_random.py --budget {args.budget} --op {args.op} --random {args.random} "
        f"--epochs {args.epochs} --seeds {args.seeds}`",
        "",
    ]
    text = "\n".join(lines)
    atomic_write_text(ROOT / "benchmarks" / "results" / "search_vs_random.md", text)
    print(text)


if __name__ == "__main__":
    main()
