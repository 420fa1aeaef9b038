"""What ShiftAddAug costs at training time, measured on the steps of a real training schedule.

For shift and add, the TargetNet (default mbv2-tiny at 32 px, batch 64, bundled mnist5k) is set
up for a real ``--epochs``-epoch ShiftAddAug run with NetAug's augmentation lists (width x1.0 /
1.8 / 2.6, expand x1.0 / 1.6 / 2.2 / 2.8) and its training step (``Trainer.step``: learning rate,
target pass forward + backward, one sampled hybrid augmented pass forward + backward, optimizer
step) is measured at three points of that schedule:

* ``start``   (progress 0): block mutation has turned only the stem MF, the rest of the TargetNet
  still computes with multiplication;
* ``all MF``  (just after the mutation third): the whole TargetNet is MF, width augmentation on;
* ``late``    (progress 0.6): width augmentation has stopped (at 0.5), expand augmentation goes on;

against direct training of the same TargetNet with the same operator (``--aug none``, whose step
does not change over the schedule). Every ShiftAddAug point is measured with and without
``aug_checkpoint`` (activation checkpointing of the augmented pass's blocks). The anchor is
NetAug itself: a multiplicative TargetNet with multiplicative augmentation (``--op mult --aug
netaug``, same lists) against direct multiplicative training, at ``start`` (width augmentation
on) and ``late`` (off). Goals: memory ratio <= 2x, time ratio <= NetAug's ratio at the same point
+ 10%.

Time: one process, one torch thread; all configurations are measured in interleaved rounds
(``--rounds`` rounds of ``--steps`` steps each, the first step of every round discarded), so that
a load change on a shared machine hits all of them alike; the median step time is reported.
Before each round the step counter is put back to the point (steps advance it), as a resumed run
at that point would be.

Memory: the peak of the bytes of all live tensors during one whole step with the largest
augmented network of that point of the schedule (what a run must have room for), from the allocator
events recorded by ``torch.profiler`` (``profile_memory=True``; its memory timeline replays every
allocation and free of the CPU allocator: parameters, gradients, momentum buffers, the batch,
activations saved for backward and every temporary, the C++ adder kernel's buffers included).
``tracemalloc`` sees none of this (torch allocates outside Python's allocator) and the process's
RSS keeps freed memory in the C library's heap, so neither measures a step's peak. A pass's
activations are freed by its backward before the next pass's forward, so the peak is that of the
larger pass, not the sum (the table shows it: ``peak of passes`` is each pass measured alone).

    python benchmarks/train_overhead.py                 # writes benchmarks/results/train_overhead.md
    python benchmarks/train_overhead.py --rounds 3      # quicker, noisier
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

ROOT = Path(__file__).resolve().parents[1]
POINTS = {"start": 0.0, "all MF": None, "late": 0.6}  # None: just after block mutation has finished


def peak_tensor_bytes(fn) -> int:
    """Peak bytes of live CPU tensors while ``fn()`` runs (torch.profiler's memory timeline).

    Tensors alive before ``fn`` count from the start if ``fn`` uses them (parameters, momentum,
    the batch); tensors freed without being used (last step's gradients, zeroed at the start of
    the step) are not counted.
    """
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    sizes: dict = {}
    live = peak = 0
    for _, action, (key, _version), size in prof._memory_profile().timeline:
        if action in (Action.PREEXISTING, Action.CREATE) and key not in sizes:
            sizes[key] = size
            live += size
        elif action == Action.DESTROY and key in sizes:
            live -= sizes.pop(key)
        peak = max(peak, live)
    return peak


class Largest(random.Random):
    """Every random choice of the augmentation sampler at its largest: the biggest augmented
    network of that point of the schedule (widest width and expand multiples, every extra block
    kept). Memory is measured with it: a run must have room for its largest step, not a median one."""

    def choice(self, seq):
        return max(seq)

    def random(self) -> float:
        return 0.0


class Case:
    """One configuration to measure: a trainer, a point of its schedule, checkpointing on / off."""

    def __init__(self, label: str, trainer, progress: float, checkpoint: bool = False):
        self.label, self.trainer, self.progress, self.checkpoint = label, trainer, progress, checkpoint
        self.times: list[float] = []

    def place(self) -> None:
        tr = self.trainer
        tr.global_step = int(round(self.progress * tr.total_steps))
        tr.cfg.aug_checkpoint = self.checkpoint

    def run(self, x, y, steps: int) -> None:
        self.place()
        for i in range(steps):
            t0 = time.perf_counter()
            self.trainer.step(x, y)
            if i > 0:  # the first step after switching configuration pays for cold caches
                self.times.append(time.perf_counter() - t0)

    def memory(self, x, y) -> dict:
        tr = self.trainer
        self.place()
        rng = tr.py_rngs.get("aug")
        tr.py_rngs["aug"] = Largest()
        try:
            step = peak_tensor_bytes(lambda: tr.step(x, y))
        finally:
            if rng is not None:
                tr.py_rngs["aug"] = rng
        # each pass alone (forward + backward of the target pass, of an augmented pass), for the record
        self.place()
        target = tr.target_now()
        tr.net.set_active_subnet(target, tr.target_blocks)
        tr.optimizer.zero_grad(set_to_none=True)
        passes = [peak_tensor_bytes(lambda: tr.forward_backward(x, lambda o: tr._loss(o, y)))]
        if tr.augmenter is not None:
            a, b = tr.augmenter.sample(Largest(), self.progress)
            if tr.cfg.aug == "netaug":
                tr.net.set_active_subnet(a.with_ops(tr.cfg.op), b)
            else:
                tr.net.set_active_subnet(a, b, target=target, target_blocks=tr.target_blocks)
            tr.optimizer.zero_grad(set_to_none=True)
            passes.append(peak_tensor_bytes(lambda: tr._augmented_pass(x, y)))
        tr.optimizer.zero_grad(set_to_none=True)
        return {"step_MB": step / 2**20, "passes_MB": [p / 2**20 for p in passes]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mbv2-tiny")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=30, help="length of the schedule the points lie on (default 30)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=4, help="steps per configuration and round; the first is discarded")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(1)
    from nas.data import build_loaders
    from nas.io import atomic_write_text
    from nas.train.trainer import TrainConfig, Trainer

    loaders = build_loaders("mnist5k", resolution=args.resolution, batch_size=args.batch, seed=0)
    x, y = next(iter(loaders.train))

    def trainer(op: str, aug: str) -> Trainer:
        cfg = TrainConfig(model=args.model, op=op, epochs=args.epochs, batch_size=args.batch, resolution=args.resolution, aug=aug,
                          remap="cdf-fc" if aug == "shiftaddaug" else "none", device="cpu")
        return Trainer(cfg, "/tmp/shiftaddaug-overhead", loaders=loaders, progress=False)

    cases: dict[tuple, Case] = {}
    for op in ("mult", "shift", "add"):
        direct = trainer(op, "none")
        cases[(op, "direct")] = Case(f"{op} direct", direct, 0.0)
        aug = trainer(op, "netaug" if op == "mult" else "shiftaddaug")
        mutated = aug.cfg.mutation_fraction + 1.0 / aug.total_steps  # the step after the last unit turned MF
        for point, prog in POINTS.items():
            if op == "mult" and point == "all MF":
                continue
            prog = mutated if prog is None else prog
            for ckpt in ((False,) if op == "mult" else (False, True)):
                cases[(op, point, ckpt)] = Case(f"{op} {point}{' ckpt' if ckpt else ''}", aug, prog, ckpt)
    for c in cases.values():  # warm-up: kernels, caches, optimizer state
        c.run(x, y, 2)
        c.times.clear()
    t0 = time.time()
    for r in range(args.rounds):
        for c in cases.values():
            c.run(x, y, args.steps)
        print(f"round {r + 1}/{args.rounds} ({time.time() - t0:.0f} s)", flush=True)
    mem = {k: c.memory(x, y) for k, c in cases.items()}
    med = {k: statistics.median(c.times) for k, c in cases.items()}
    def iqr(t: list[float]) -> tuple[float, float]:
        if len(t) < 2:
            return t[0], t[0]
        q = statistics.quantiles(t, n=4)
        return q[0], q[2]

    spread = {k: iqr(c.times) for k, c in cases.items()}

    def units(op: str, point: str) -> str:
        c = cases[(op, point, False)]
        tr = c.trainer
        return f"{tr.mutation.converted(c.progress)}/{len(tr.mutation.units)}"

    lines = [
        f"Training step cost of ShiftAddAug vs direct training of the same TargetNet, {args.model} at {args.resolution} px, "
        f"batch {args.batch}, NetAug's augmentation lists, at points of a {args.epochs}-epoch schedule "
        f"({cases[('shift', 'start', False)].trainer.total_steps} steps); one process, one torch thread, median of "
        f"{args.rounds * (args.steps - 1)} steps per configuration measured in {args.rounds} interleaved rounds "
        "(interquartile range in brackets). Memory: peak bytes of live tensors in one whole step with the largest augmented network "
        "of that point (torch.profiler memory timeline); "
        "'passes' = target pass / augmented pass, each forward + backward alone.",
        "",
        "| op | point | MF units | direct step | augmented step (IQR) | time ratio | NetAug ratio + 10% | goal | "
        "direct memory | augmented memory (passes) | memory ratio (goal <= 2x) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    anchor = {}
    for point in ("start", "late"):
        k = ("mult", point, False)
        tr_ = med[k] / med[("mult", "direct")]
        anchor[point] = tr_
        mr = mem[k]["step_MB"] / mem[("mult", "direct")]["step_MB"]
        lines.append(f"| mult (NetAug anchor) | {point} | - | {1000 * med[('mult', 'direct')]:.0f} ms | {1000 * med[k]:.0f} ms "
                     f"({1000 * spread[k][0]:.0f}-{1000 * spread[k][1]:.0f}) | {tr_:.2f}x | - | - | "
                     f"{mem[('mult', 'direct')]['step_MB']:.1f} MB | {mem[k]['step_MB']:.1f} MB "
                     f"({' / '.join(f'{v:.1f}' for v in mem[k]['passes_MB'])}) | {mr:.2f}x |")
    for op in ("shift", "add"):
        d = (op, "direct")
        for point in POINTS:
            for ckpt in (False, True):
                k = (op, point, ckpt)
                tr_ = med[k] / med[d]
                goal_t = 1.1 * anchor["late" if point == "late" else "start"]
                mr = mem[k]["step_MB"] / mem[d]["step_MB"]
                ok = "met" if tr_ <= goal_t and mr <= 2 else ("time missed" if mr <= 2 else ("memory missed" if tr_ <= goal_t else "both missed"))
                lines.append(f"| {op} | {point}{', aug_checkpoint' if ckpt else ''} | {units(op, point)} | {1000 * med[d]:.0f} ms | "
                             f"{1000 * med[k]:.0f} ms ({1000 * spread[k][0]:.0f}-{1000 * spread[k][1]:.0f}) | {tr_:.2f}x | "
                             f"{goal_t:.2f}x | {ok} | {mem[d]['step_MB']:.1f} MB | {mem[k]['step_MB']:.1f} MB "
                             f"({' / '.join(f'{v:.1f}' for v in mem[k]['passes_MB'])}) | {mr:.2f}x |")
    lines += ["", f"Command: `python benchmarks/train_overhead.py --rounds {args.rounds} --steps {args.steps}`; machine: "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}.", ""]
    text = "\n".join(lines)
    atomic_write_text(ROOT / "benchmarks" / "results" / "train_overhead.md", text)
    print(text)


if __name__ == "__main__":
    main()
