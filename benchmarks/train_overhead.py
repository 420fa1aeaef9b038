"""What ShiftAddAug costs at training time, against direct MF training of the same TargetNet.

In one process with one torch thread, for shift and add: the median time of a training step
(``Trainer.train_step``: direct = one pass; ShiftAddAug = target pass + one sampled hybrid
augmented pass) and the training memory of a step: parameters, gradients and momentum of the
trained network plus the largest set of tensors saved for backward in any one pass (counted with
``torch.autograd.graph.saved_tensors_hooks``, unique storages; the target pass's graph is freed by
its backward before the augmented pass runs). Targets: <= 2.2x time, <= 2x memory.

    python benchmarks/train_overhead.py [--model mbv2-tiny] [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def saved_bytes_of_pass(fn) -> int:
    import torch

    seen: dict[int, int] = {}

    def pack(t):
        try:
            ptr = t.untyped_storage().data_ptr()
            seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
        except RuntimeError:
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def measure(trainer, x, y, steps: int) -> dict:
    net = trainer.net
    times = []
    for i in range(steps + 3):
        t0 = time.perf_counter()
        trainer.train_step(x, y)
        if i >= 3:  # warm-up: first calls build kernels and caches
            times.append(time.perf_counter() - t0)
    # memory: parameters + grads + momentum of what is trained, plus the largest saved-activation set
    state = 3 * sum(p.numel() * p.element_size() for p in net.parameters())
    target = trainer.target_now()
    net.set_active_subnet(target, trainer.target_blocks)
    act = saved_bytes_of_pass(lambda: net(x).sum().backward())
    if trainer.augmenter is not None:
        import random

        rng = random.Random(0)
        worst = 0
        for _ in range(5):  # sampled augmented networks vary: take the largest of a few
            a, b = trainer.augmenter.sample(rng, 0.0)
            net.set_active_subnet(a, b, target=target, target_blocks=trainer.target_blocks)
            worst = max(worst, saved_bytes_of_pass(lambda: net(x).sum().backward()))
        act = max(act, worst)
    net.zero_grad(set_to_none=True)
    return {"step_s": statistics.median(times), "memory_MB": (state + act) / 2**20, "params_MB": state / 2**20, "activations_MB": act / 2**20}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mbv2-tiny")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(1)
    from nas.data import build_loaders
    from nas.io import atomic_write_text
    from nas.train.trainer import TrainConfig, Trainer

    loaders = build_loaders("mnist5k", resolution=args.resolution, batch_size=args.batch, seed=0)
    x, y = next(iter(loaders.train))
    rows = []
    lists = {"NetAug lists": {}, "lite lists": dict(width_mults=(1.0, 1.4), expand_mults=(1.0, 1.4))}
    for op in ("shift", "add"):
        cfg = TrainConfig(model=args.model, op=op, epochs=1, batch_size=args.batch, resolution=args.resolution, aug="none", remap="none",
                          device="cpu")
        d = measure(Trainer(cfg, "/tmp/shiftaddaug-overhead", loaders=loaders, progress=False), x, y, args.steps)
        for name, kw in lists.items():
            cfg = TrainConfig(model=args.model, op=op, epochs=1, batch_size=args.batch, resolution=args.resolution, aug="shiftaddaug",
                              device="cpu", **kw)
            tr = Trainer(cfg, "/tmp/shiftaddaug-overhead", loaders=loaders, progress=False)
            tr.total_steps = 10**9  # progress ~ 0: width augmentation on, as in the first half of training
            s = measure(tr, x, y, args.steps)
            rows.append((f"{op}, {name}", d, s, s["step_s"] / d["step_s"], s["memory_MB"] / d["memory_MB"]))
    lines = [
        f"ShiftAddAug training step vs direct MF training, {args.model} at {args.resolution}px, batch {args.batch}, "
        f"one torch thread, median of {args.steps} steps, width augmentation on (first half of training). NetAug lists: "
        "width x1.0/1.8/2.6, expand x1.0/1.6/2.2/2.8 (the default); lite lists: width and expand x1.0/1.4 "
        "(`--width-mults 1,1.4 --expand-mults 1,1.4`).",
        "",
        "| op, augmentation | direct step | ShiftAddAug step | time ratio (target <= 2.2x) | direct memory | ShiftAddAug memory | memory ratio (target <= 2x) |",
        "|---|---|---|---|---|---|---|",
    ]
    for op, d, s, tr_, mr in rows:
        lines.append(f"| {op} | {1000 * d['step_s']:.0f} ms | {1000 * s['step_s']:.0f} ms | {tr_:.2f}x | {d['memory_MB']:.1f} MB | {s['memory_MB']:.1f} MB | {mr:.2f}x |")
    lines += ["", "Memory = parameters, gradients and momentum of the trained network + the largest set of tensors saved for backward in one pass.",
              f"Command: `python benchmarks/train_overhead.py`; machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores.", ""]
    text = "\n".join(lines)
    out = ROOT / "benchmarks" / "results" / "train_overhead.md"
    atomic_write_text(out, text)
    print(text)


if __name__ == "__main__":
    main()
