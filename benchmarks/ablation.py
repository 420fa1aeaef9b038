"""Which parts of ShiftAddAug make a tiny multiplication-free network more accurate? Ablations.

For each MF operator (shift, add) one TargetNet (MobileNetV2-Tiny at 32x32) is trained on the
bundled mnist5k with a fixed, deliberately short protocol, once per arm and seed. Every arm
differs from its reference arm in one thing (the ``vs`` column), so a difference can be
attributed to it:

* ``direct``: the MF network alone (``--aug none``), no block mutation, no remap: the baseline
  every arm is also compared with;
* ``direct + mutation``: direct training with ShiftAddAug's block mutation and remap (layers start
  multiplicative and turn MF over the first third of training) but no augmented network; it is the
  matched reference of ``shiftaddaug``, whose difference to it is the hybrid augmentation alone;
* ``shiftaddaug``: the full recipe (hybrid multiplicative augmentation with NetAug's width and
  expand lists, cdf-fc remap, block mutation);
* ``no mutation``; remap ``none`` / ``cdf`` / ``pwl-kl``; ``cdf-fc + affine`` (Eq. 5's learnable
  part on 1x1 convs and linears too, ``--remap-affine``): the full recipe with one thing changed;
* ``width only`` / ``expand only`` / ``depth only``: one kind of augmentation (depth: one extra
  multiplicative block per stage, ``--aug-depth 1``, dropped progressively);
* add only: AdderNet's adaptive gradient scale eta = 0.2 (AdderNet's value) instead of 1.0, for
  direct training and for the full recipe;
* the multiplicative network (``--op mult --aug none``): the reference the protocol is sized by.

``remap cdf``, ``shiftaddaug`` (cdf-fc) and ``cdf-fc + affine`` differ only in learnable parts
that start at the identity and learn at ``remap_lr_scale`` (1%) of the learning rate; in a run
this short they barely move (about 0.01 from the identity after 25 steps), so these arms are near
copies of each other here; in Add models the k*k map exists only in the stem.

Protocol (why): 800 training images, 24x24 px, batch 32, 5 epochs (125 steps), BatchNorm
re-estimated on 400 training images, otherwise the training defaults. On all 4,000 images at
32 px the multiplicative network reaches 96-98% and every MF arm lies within a seed's spread of
it, so nothing can be told apart; with this budget the multiplicative network stays near 74%
(the table prints it), leaving room above and below. It is also what a 2-core machine can afford:
the whole grid (81 runs) is an estimated 1.5-2 hours of two training processes on a quiet machine
(the direct arms take about a minute each, the augmented ones about three). What it
cannot show: effects that need longer training (adder networks learn slowly at first, and the
mutation third is only ~40 steps here); those need the same command with ``--train-images`` /
``--epochs`` raised. Accuracy is measured on the 1,000 held-out images (mnist5k's 500
validation + 500 test images: nothing selects on the validation split, the last epoch's weights
are evaluated), so one image is 0.1 points. Each arm runs ``--seeds`` seeds (weights, data order
and augmentation all follow the seed); the reference arms (direct, mult), which every comparison
uses, run ``--ref-seeds``, and any arm whose spread over its first seeds exceeds ``--spread``
points gets ``--ref-seeds`` as well. Arms run one after another in the order of the table (all
seeds of an arm before the next), so a run stopped early leaves whole arms.

Significance: for the difference of an arm's mean to its reference's, Welch's t-test (unequal
variances) over the seeds; the difference "exceeds the seeds' spread" when p < 0.05. With 3-5
seeds this only catches differences of a few pooled standard deviations; a "no" means "not shown",
not "no effect".

Every finished run is cached in ``benchmarks/results/ablation.json`` (keyed by protocol, operator,
arm and seed) and an interrupted run resumes from its last epoch's checkpoint, so the benchmark
continues where it stopped. One line per finished run.

    python benchmarks/ablation.py --jobs 2              # the whole table (resumable)
    python benchmarks/ablation.py --report              # rewrite the tables from the cache only
    python benchmarks/ablation.py --ops add --arms direct,shiftaddaug --seeds 2   # a subset
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
STORE = RESULTS / "ablation.json"
SCHEMA_VERSION = 1

FULL = dict(aug="shiftaddaug", remap="cdf-fc", remap_affine=False)  # the recipe's defaults, spelled out


@dataclass(frozen=True)
class Arm:
    name: str
    what: str
    config: dict
    ref: str | None = None  # the arm this one is an ablation of
    ops: tuple[str, ...] = ("shift", "add")


ARMS = [
    Arm("direct", "MF network alone: no augmentation, no mutation, no remap", dict(aug="none", remap="none", mutation=0.0)),
    Arm("shiftaddaug", "hybrid augmentation (width, expand) + cdf-fc + mutation", dict(FULL), "direct + mutation"),
    Arm("direct + mutation", "direct, with block mutation and the cdf-fc remap", dict(aug="none", remap="cdf-fc", mutation=1 / 3), "direct"),
    Arm("remap none", "shiftaddaug, plain weight sharing", dict(FULL, remap="none"), "shiftaddaug"),
    Arm("no mutation", "shiftaddaug without block mutation", dict(FULL, mutation=0.0), "shiftaddaug"),
    Arm("remap cdf", "shiftaddaug, CDF remap without learnable part", dict(FULL, remap="cdf"), "shiftaddaug"),
    Arm("remap pwl-kl", "shiftaddaug, ShiftAddNAS's remap", dict(FULL, remap="pwl-kl"), "shiftaddaug"),
    Arm("cdf-fc + affine", "shiftaddaug, Eq. 5 affine on 1x1 convs / linears", dict(FULL, remap_affine=True), "shiftaddaug"),
    Arm("width only", "shiftaddaug, width augmentation alone", dict(FULL, expand_mults=(1.0,)), "shiftaddaug"),
    Arm("expand only", "shiftaddaug, expand augmentation alone", dict(FULL, width_mults=(1.0,)), "shiftaddaug"),
    Arm("depth only", "shiftaddaug, one extra block per stage alone", dict(FULL, width_mults=(1.0,), expand_mults=(1.0,), aug_depth=1),
        "shiftaddaug"),
    Arm("direct, eta 0.2", "direct with AdderNet's eta = 0.2", dict(aug="none", remap="none", mutation=0.0, eta=0.2), "direct", ("add",)),
    Arm("shiftaddaug, eta 0.2", "shiftaddaug with AdderNet's eta = 0.2", dict(FULL, eta=0.2), "shiftaddaug", ("add",)),
]
MULT = Arm("mult", "the multiplicative network (reference)", dict(aug="none", remap="none"), None, ("mult",))
REF_ARMS = ("direct", "mult")  # every comparison uses them: more seeds
DEFAULTS: dict = {}  # the command line's defaults (main fills it): the table names only what differs


@dataclass
class Protocol:
    model: str = "mbv2-tiny"
    resolution: int = 24
    max_train_images: int = 800
    epochs: int = 5
    batch_size: int = 32
    extra: dict = field(default_factory=lambda: {"bn_images": 400})

    def key(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


def run_key(protocol: Protocol, op: str, arm: str, seed: int) -> str:
    return f"{protocol.key()}|{op}|{arm}|{seed}"


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in s)


def run_one(job: dict) -> dict:
    """Train one arm x seed (resuming its own checkpoint if an earlier attempt was interrupted)."""
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT))
    from nas.train.trainer import TrainConfig, Trainer

    p = job["protocol"]
    cfg = TrainConfig(model=p["model"], op=job["op"], resolution=p["resolution"], epochs=p["epochs"], batch_size=p["batch_size"],
                      max_train_images=p["max_train_images"], seed=job["seed"], device="cpu", **{**p["extra"], **job["config"]})
    out = Path(job["workdir"])
    t0 = time.time()
    tr = Trainer(cfg, out, progress=False)
    resumed = tr.load_checkpoint()
    s = tr.fit()
    acc = (s["val_acc"] + s["test_acc"]) / 2  # 500 + 500 held-out images, nothing selected on either
    shutil.rmtree(out, ignore_errors=True)
    return {"op": job["op"], "arm": job["arm"], "seed": job["seed"], "acc": round(acc, 2), "test_acc": s["test_acc"],
            "val_acc": s["val_acc"], "seconds": round(time.time() - t0, 1), "resumed": resumed}


# ------------------------------------------------------------------------------ statistics
def welch(a: list[float], b: list[float]) -> float | None:
    """Two-sided p-value of Welch's t-test; None with fewer than 2 values on a side."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats

    if statistics.stdev(a) == 0 and statistics.stdev(b) == 0:
        return 0.0 if statistics.mean(a) != statistics.mean(b) else 1.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def mean_sd(v: list[float]) -> tuple[float, float]:
    return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


# ------------------------------------------------------------------------------ the run
def arms_for(op: str, names: list[str] | None) -> list[Arm]:
    if op == "mult":
        return [MULT]
    return [a for a in ARMS if op in a.ops and (names is None or a.name in names)]


def plan(protocol: Protocol, ops: list[str], names: list[str] | None, seeds: int, ref_seeds: int, spread: float,
         done: dict) -> list[dict]:
    """The runs still to do: first seeds of every arm (reference arms first), then extra seeds
    where the spread over the first ones demands them."""
    jobs = []
    # arm by arm (all seeds of one before the next), references first: a run stopped early leaves
    # complete arms rather than every arm with one seed
    for i in range(len(ARMS) + 1):
        for op in ["mult"] + ops:
            arms = arms_for(op, names)
            if i < len(arms):
                jobs += [(op, arms[i], seed) for seed in range(seeds)]
    for op in ["mult"] + ops:
        for arm in arms_for(op, names):
            accs = [done[k]["acc"] for s in range(seeds) if (k := run_key(protocol, op, arm.name, s)) in done]
            wide = len(accs) == seeds and seeds > 1 and statistics.stdev(accs) > spread
            if arm.name in REF_ARMS or wide:
                jobs += [(op, arm, s) for s in range(seeds, ref_seeds)]
    return [dict(op=op, arm=arm.name, config=arm.config, seed=seed, protocol=protocol.__dict__)
            for op, arm, seed in jobs if run_key(protocol, op, arm.name, seed) not in done]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", default="shift,add")
    p.add_argument("--arms", default=None, help="comma-separated arm names (default: all)")
    p.add_argument("--seeds", type=int, default=3, help="seeds of every arm (default 3)")
    p.add_argument("--ref-seeds", type=int, default=5, help="seeds of the direct / mult arms and of wide-spread arms (default 5)")
    p.add_argument("--spread", type=float, default=1.5, help="std (points) over the first seeds above which an arm gets --ref-seeds")
    p.add_argument("--train-images", type=int, default=Protocol.max_train_images)
    p.add_argument("--epochs", type=int, default=Protocol.epochs)
    p.add_argument("--jobs", type=int, default=2, help="parallel training processes, one torch thread each (default 2)")
    p.add_argument("--workdir", default="/tmp/shiftaddaug-ablation")
    p.add_argument("--report", action="store_true", help="only rewrite ablation.md from the cached runs")
    args = p.parse_args()
    DEFAULTS.update(vars(p.parse_args([])))
    sys.path.insert(0, str(ROOT))
    from nas.io import atomic_write_json, atomic_write_text

    protocol = Protocol(max_train_images=args.train_images, epochs=args.epochs)
    ops = args.ops.split(",")
    names = args.arms.split(",") if args.arms else None
    store = json.loads(STORE.read_text()) if STORE.is_file() else {"schema_version": SCHEMA_VERSION, "runs": []}
    done = {run_key(Protocol(**{k: v for k, v in r["protocol"].items()}), r["op"], r["arm"], r["seed"]): r for r in store["runs"]}

    def save() -> None:
        runs = sorted(done.values(), key=lambda r: (r["op"], r["arm"], r["seed"]))
        atomic_write_json(STORE, {"schema_version": SCHEMA_VERSION, "runs": runs})

    for round_ in range(2):  # round 2: extra seeds that the first round's spread asks for
        if args.report:
            break
        todo = plan(protocol, ops, names, args.seeds, args.ref_seeds, args.spread, done)
        if not todo:
            continue
        print(f"round {round_ + 1}: {len(todo)} runs to do, {args.jobs} at a time (cache: {STORE.relative_to(ROOT)})", flush=True)
        t_start, n_done = time.time(), 0
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futs = {}
            for j in todo:
                j["workdir"] = str(Path(args.workdir) / _slug(f"{j['op']}-{j['arm']}-s{j['seed']}-{args.train_images}-{args.epochs}"))
                futs[pool.submit(run_one, j)] = j
            for fut in as_completed(futs):
                r = fut.result()
                r["protocol"] = protocol.__dict__
                done[run_key(protocol, r["op"], r["arm"], r["seed"])] = r
                save()
                n_done += 1
                left = (time.time() - t_start) / n_done * (len(todo) - n_done)
                print(f"[{n_done}/{len(todo)}] {r['op']:<5} {r['arm']:<22} seed {r['seed']}: {r['acc']:.2f}%  "
                      f"({r['seconds']:.0f} s{', resumed' if r['resumed'] else ''}; ~{left / 60:.0f} min left)", flush=True)
    rows = [r for r in done.values() if r["protocol"] == protocol.__dict__]
    text = render(rows, protocol, ops, args)
    atomic_write_text(RESULTS / "ablation.md", text)
    print(text)


def render(rows: list[dict], protocol: Protocol, ops: list[str], args) -> str:
    def accs(op: str, arm: str) -> list[float]:
        return [r["acc"] for r in sorted(rows, key=lambda r: r["seed"]) if r["op"] == op and r["arm"] == arm]

    def diff(a: list[float], b: list[float]) -> str:
        if not a or not b:
            return "-"
        d = statistics.mean(a) - statistics.mean(b)
        pv = welch(a, b)
        if pv is None:
            return f"{d:+.2f}"
        return f"{d:+.2f} (p={pv:.2g}, {'yes' if pv < 0.05 else 'no'})"

    def fmt(v: list[float]) -> str:
        m, sd = mean_sd(v)
        return f"{m:.2f} ± {sd:.2f}"

    mult = accs("mult", "mult")
    lines = [
        f"Ablations of ShiftAddAug: {protocol.model} at {protocol.resolution}x{protocol.resolution} on mnist5k, "
        f"{protocol.max_train_images} training images, {protocol.epochs} epochs, batch {protocol.batch_size}; accuracy (%) on the "
        "1,000 held-out images (validation + test), mean ± std over seeds; Δ = difference of means, p = Welch's t-test, "
        "'yes' when p < 0.05 (the difference exceeds the seeds' spread).",
        "",
        f"Multiplicative reference (`--op mult --aug none`): {fmt(mult) if mult else '-'} (n={len(mult)})",
        "",
    ]
    for op in ops:
        lines += [f"**{op}**", "",
                  "| arm | what | accuracy | n | per seed | Δ vs direct (p, exceeds spread) | vs | Δ vs that arm (p, exceeds spread) |",
                  "|---|---|---|---|---|---|---|---|"]
        direct = accs(op, "direct")
        for arm in arms_for(op, None):
            a = accs(op, arm.name)
            if not a:
                continue
            ref = accs(op, arm.ref) if arm.ref else []
            lines.append(f"| {arm.name} | {arm.what} | {fmt(a)} | {len(a)} | {', '.join(f'{x:.1f}' for x in a)} | "
                         f"{diff(a, direct) if arm.name != 'direct' else ''} | {arm.ref or ''} | "
                         f"{diff(a, ref) if arm.ref and arm.ref != 'direct' else ''} |")
        lines.append("")
    secs = sum(r["seconds"] for r in rows)
    planned = len(plan(protocol, ops, None, args.seeds, args.ref_seeds, args.spread, {})) if args.arms is None else None
    missing = [f"{op} {arm.name}" for op in ops for arm in arms_for(op, None) if len(accs(op, arm.name)) < args.seeds]
    cmd = "python benchmarks/ablation.py" + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in vars(args).items()
        if k not in ("report", "workdir", "arms") and v != DEFAULTS[k])
    lines += [f"Command: `{cmd}` ({len(rows)} runs{f' of at least {planned} planned' if planned else ''}, "
              f"{secs / 60:.0f} min of training processes in all); machine: {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores, one torch thread per run.", ""]
    if missing:
        lines += [f"Not yet run (fewer than {args.seeds} seeds; the same command continues): {', '.join(missing)}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
