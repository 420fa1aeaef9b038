"""``shiftaddaug-search``: the whole job, one run directory, resumable at every step.

    0. budget check    the cheapest and dearest network of the space for the run's operator,
                       priced before any data is read (``budget_preview``, also
                       ``shiftaddaug-search --dry-run``): an impossible budget stops here, a budget
                       that does not bind is said so, both naming the shipped spaces where it binds;
                       then the price list: the space's layer shapes priced into ``lut.csv``
    1. supernet        hybrid once-for-all supernet (``supernet.pt``, ``supernet_log.json``)
    2. stage one       evolution for the depth-augmented SubNet (``stage1.json`` checkpoint,
                       ``population.csv``, ``subnet.json``)
    3. stage two       Optuna study for the TargetNet (``stage2.journal``, ``trials.csv``)
    4. training        ShiftAddAug training of the TargetNet inside the SubNet, starting from the
                       supernet's weights (``train/``) and export (``target/``)
    5. report          ``pareto.png``, ``report.md``, ``summary.json``

``state.json`` records every finished step with its result and the hash of the run's
configuration; ``--resume DIR`` skips them, and the step that was running continues from its own
checkpoint (supernet epoch, evolution generation, Optuna trial, training epoch). Before that,
``nas.rundir.heal_search_dir`` repairs what a crash or a full disk can leave (a torn journal or CSV
record, a checkpoint that no longer loads: its step is redone). Resuming a finished run changes
no file.

Steps 1-4 run through an ``Executor`` (``nas.search.executor``): ``LocalExecutor`` in this
process, or with ``ray_address`` (``--ray-address``) ``nas.search.ray_executor.RayExecutor`` on a
Ray cluster (docs/ray.md). Both write the same files, so a run can switch between local and Ray.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas.arch import TASKS, Arch
from nas.config import from_mapping, knob
from nas.cost.budget import Budget, parse_budget
from nas.errors import ConfigError, InfeasibleBudgetError, check_keys
from nas.io import atomic_savefig, atomic_write_json, atomic_write_text, load_checkpoint, note, set_aside
from nas.ops.registry import mf_kinds
from nas.rundir import check_config_hash, config_hash, heal_search_dir, is_writer, read_json, read_run_config
from nas.search.executor import DataSpec, Executor, LocalExecutor, StageTwoJob, SupernetJob, TargetJob
from nas.search.report import binds_in_text, objective_label, pareto_front, preview_text, search_report  # noqa: F401 (preview_text: public here too)
from nas.space import SearchSpace
from nas.train.loop import DEVICE_HELP
from nas.train.trainer import MethodConfig

PRESETS: dict[str, dict[str, Any]] = {
    # minutes on a 2-core CPU with the bundled dataset
    "quick": dict(space="tiny", supernet_epochs=4, population=12, generations=4, trials=30, final_epochs=8,
                  batch_size=64, lr=0.05, eval_images=500, bn_images=500, max_train_images=None),
    # the paper's scale (CIFAR-100 at 160x160, one GPU): NetAug's recipe, docs/paper-recipe.md says why
    "paper": dict(space="paper160", supernet_epochs=120, population=100, generations=20, trials=300, final_epochs=250,
                  batch_size=128, lr=0.025, eval_images=10000, bn_images=2000, max_train_images=None,
                  dataset="cifar100", warmup_epochs=5.0),
    # ImageNet (an image folder with train/ and val/, --data-root) at 224x224, 1000 classes, where
    # ImageNet-scale budgets such as 20 mJ bind for shift and add: GPU-weeks. OFA-like recipe:
    # BN re-estimated on 2000 training images, candidates ranked on 10,000 held-out images.
    "imagenet": dict(space="mobile224", dataset="folder", supernet_epochs=120, population=100, generations=20, trials=300,
                     final_epochs=150, batch_size=256, lr=0.1, eval_images=10000, bn_images=2000, max_train_images=None),
}
# --task segmentation: what changes in a preset (None: the preset has no segmentation space, give
# --space). quick: seg64 at 64 px on the bundled mnistseg, 1000 training canvases (4x the pixels
# of mnist5k's images per canvas) and 200-image evaluations, so the search stays within minutes.
TASK_PRESETS: dict[str, dict[str, dict[str, Any] | None]] = {
    "segmentation": {
        "quick": dict(space="seg64", dataset="mnistseg", max_train_images=1000, eval_images=200, bn_images=200),
        "paper": None,
        "imagenet": None,
    },
}
DEFAULT_DATASET = "mnist5k"  # when neither --dataset nor the preset names one
# Class counts of the datasets that fix theirs; a folder's is known only once it is read.
DATASET_CLASSES = {"mnist5k": 10, "cifar10": 10, "cifar100": 100, "mnistseg": 11, "voc": 21}
LOG_AXIS_SPAN = 10.0  # the Pareto plot's cost axis turns logarithmic when candidates span more than this factor
PRESET_DEFAULTS: dict[str, Any] = {"warmup_epochs": 1.0}  # what a preset that does not say uses
STATE_VERSION = 1
log = logging.getLogger(__name__)


SEARCH = "the search"
PRESET = "overrides of the preset"
DATA, WHERE = "data", "where it computes"


def _datasets() -> tuple[str, ...]:
    from nas.data import DATASETS

    return tuple(sorted(DATASETS))


@dataclass
class SearchConfig(MethodConfig):
    """Everything that defines a search (saved as ``config.json``). Fields left None take the
    preset's value (``resolved()``); the method's fields (``MethodConfig``) apply to the supernet
    and to the final ShiftAddAug training."""

    budget: str = knob("0.02mJ", metavar="BUDGET", group=SEARCH,
                       help="energy (mJ, uJ, J) or latency (ms, us, s) budget of the TargetNet, e.g. 20mJ, 300uJ, 5ms")
    op: str = knob("shift", choices=mf_kinds, group=SEARCH, help="multiplication-free operator of the TargetNet")
    preset: str = knob("quick", choices=tuple(PRESETS), group=SEARCH,
                       help="quick: minutes on a laptop CPU with the bundled data; paper: the paper's recipe on one GPU "
                       "(CIFAR-100 at 160 px, 250 epochs of final training; docs/paper-recipe.md); "
                       "imagenet: 224 px, 1000 classes, an image folder (--data-root), GPU-weeks")
    space: str | None = knob(None, metavar="FILE|NAME", group=SEARCH,
                             help="search space YAML file or shipped name (default: the preset's: tiny / paper160 / mobile224)")
    dataset: str | None = knob(None, choices=_datasets, group=DATA,
                               help="default: the preset's (cifar100 for paper, folder for imagenet), else mnist5k")
    data_root: str | None = knob(None, metavar="PATH", group=DATA, help="dataset location (CIFAR python folder or image folder)")
    hardware: str | None = knob(None, metavar="NAME|FILE", group=SEARCH,
                                help="hardware model of the energy / latency price list (default eyeriss-45nm)")
    bits: int = knob(32, choices=(32, 16, 8), group=SEARCH, help="operand width of the energy model")
    seed: int = knob(0, metavar="S", group=SEARCH, help="seed of every random stream of the search")
    supernet_epochs: int | None = knob(None, metavar="N", group=PRESET, help="epochs of supernet training")
    population: int | None = knob(None, metavar="N", group=PRESET, help="stage-one population")
    generations: int | None = knob(None, metavar="N", group=PRESET, help="stage-one generations")
    trials: int | None = knob(None, metavar="N", group=PRESET, help="stage-two Optuna trials")
    final_epochs: int | None = knob(None, metavar="N", group=PRESET, help="epochs of ShiftAddAug training")
    batch_size: int | None = knob(None, metavar="N", group=PRESET, help="batch size")
    lr: float | None = knob(None, metavar="LR", group=PRESET,
                            help="peak learning rate (default: the preset's, scaled linearly with --batch-size)")
    eval_images: int | None = knob(None, metavar="N", group=PRESET, help="validation images per evaluation")
    bn_images: int | None = knob(None, metavar="N", group=PRESET, help="images that re-estimate BatchNorm statistics per evaluation")
    max_train_images: int | None = knob(None, metavar="N", group=PRESET, help="train on the first N images")
    aug_multiples: list[float] | None = knob(None, metavar="A,B,..", group=PRESET,
                                             help="stage one: the SubNet may cost these multiples of the budget (default: the space's)")
    warmup_epochs: float | None = knob(None, metavar="E", group=PRESET, help="warm-up epochs of ShiftAddAug training")
    ray_address: str | None = knob(None, metavar="local|auto|HOST:PORT", group=WHERE,
                                   help="run the search on a Ray cluster (needs the ray extra; docs/ray.md)")
    device: str = knob("auto", metavar="DEV", group=WHERE, help=f"where to compute: {DEVICE_HELP}")
    precision: str = knob("fp32", choices=("fp32", "bf16", "fp16"), group=WHERE,
                          help="fp32, or bf16 / fp16 autocast of the multiplicative layers (faster on GPUs); "
                          "multiplication-free layers always compute in fp32; fp16 adds loss scaling")
    workers: int = knob(0, metavar="N", group=DATA, help="data loader worker processes")
    task: str = knob("classification", choices=lambda: TASKS, group=SEARCH,
                     help="segmentation: a segmentation space (quick preset: seg64, 64 px) and dataset (default mnistseg), "
                     "mIoU as the objective of both stages (docs/segmentation.md)")

    def resolved(self) -> "SearchConfig":
        """Fill every unset field from the preset and validate."""
        from nas.data.loader import check_dataset_task

        if self.preset not in PRESETS:
            raise ConfigError("--preset", self.preset, f"allowed: {', '.join(PRESETS)}")
        if self.task not in TASKS:
            raise ConfigError("--task", self.task, f"allowed: {', '.join(TASKS)}")
        if self.op not in mf_kinds():
            raise ConfigError("--op", self.op, f"allowed: {', '.join(mf_kinds())} (the TargetNet is multiplication-free)")
        parse_budget(self.budget)
        d = dataclasses.asdict(self)
        preset = {**PRESET_DEFAULTS, **PRESETS[self.preset]}
        if self.task in TASK_PRESETS:
            over = TASK_PRESETS[self.task][self.preset]
            if over is None and self.space is None:
                raise ConfigError("--space", None, f"the {self.preset} preset has no {self.task} space: give --space "
                                  f"(a YAML file with task: {self.task}; shipped: seg64, the quick preset's)")
            preset = {**preset, **(over or {"dataset": None})}
        if d["lr"] is None and d["batch_size"] not in (None, preset["batch_size"]):  # linear scaling: the preset's lr is for its batch
            d["lr"] = preset["lr"] * d["batch_size"] / preset["batch_size"]
        for k, v in preset.items():
            if d.get(k) is None:
                d[k] = v
        d["dataset"] = d["dataset"] or (DEFAULT_DATASET if self.task == "classification" else "mnistseg")
        check_dataset_task(d["dataset"], self.task)
        for k in ("supernet_epochs", "population", "generations", "trials", "final_epochs", "batch_size", "eval_images", "bn_images"):
            if not isinstance(d[k], int) or d[k] < 1:
                raise ConfigError(f"--{k.replace('_', '-')}", d[k], "expected a positive integer")
        if isinstance(d["workers"], bool) or not isinstance(d["workers"], int) or d["workers"] < 0:
            raise ConfigError("--workers", d["workers"], "expected an integer >= 0")
        from nas.train.loop import check_precision

        check_precision(d["precision"])
        c = SearchConfig(**d)
        c.check_method()
        return c

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["task"] == "classification":  # as before the field existed: runs from then still resume (config hash)
            del d["task"]
        if d["background_weight"] == 1.0:  # likewise
            del d["background_weight"]
        return d


def load_space(cfg: SearchConfig) -> SearchSpace:
    """The run's search space; one line when it is for another task than ``cfg.task``."""
    space = SearchSpace.load(cfg.space)
    if space.task != cfg.task:
        raise ConfigError("--space", cfg.space, f"a {space.task} space; --task {cfg.task} needs a {cfg.task} space"
                          + (" (shipped: seg64)" if cfg.task == "segmentation" else " (shipped: tiny, paper160, mobile224)"))
    return space


class SearchRun:
    """One search in one run directory: the steps, what they leave there, and resuming them.

    ``executor`` runs the heavy steps (default: ``make_executor``, local or Ray by
    ``cfg.ray_address``); ``run()`` does the whole job and returns the summary."""

    def __init__(self, cfg: SearchConfig, out: str | Path, progress: bool = True, executor: Executor | None = None):
        self.cfg = cfg.resolved()
        self.out = Path(out)
        self.progress = progress
        self.executor = executor  # chosen in setup() when None
        self.budget: Budget = parse_budget(self.cfg.budget)
        self.state: dict[str, Any] = {"schema_version": STATE_VERSION, "config_hash": config_hash(self.cfg.to_dict()), "done": {}}
        state_path = self.out / "state.json"
        if state_path.is_file():
            self.state = _read_state(state_path, self.cfg)

    @staticmethod
    def resume(run_dir: str | Path, progress: bool = True, executor: Executor | None = None) -> "SearchRun":
        d = read_run_config(run_dir, "search")
        return SearchRun(SearchConfig(**from_mapping(SearchConfig, d, f"{Path(run_dir) / 'config.json'}.search")), run_dir,
                         progress, executor)

    def log(self, msg: str) -> None:
        """A step's progress (logger ``nas.search.pipeline``, INFO; the CLI shows it unless -q)."""
        log.info(msg)

    def mark(self, step: str, result: dict) -> None:
        self.state["done"][step] = result
        atomic_write_json(self.out / "state.json", self.state)

    # ------------------------------------------------------------------------------ setup
    def setup(self) -> None:
        from nas.cost.tables import energy_table
        from nas.data import calibration_batches
        from nas.search.evaluator import Pricer

        from nas.train.loop import resolve_device

        c = self.cfg
        base = load_space(c)  # bad input fails here, before the run directory exists
        self.device = resolve_device(c.device)
        self.data = DataSpec(c.dataset, c.data_root, base.resolution, c.batch_size, c.seed, c.max_train_images, c.workers)
        self.loaders = self.data.build(self.device)
        self.out.mkdir(parents=True, exist_ok=True)
        if not (self.out / "config.json").is_file():
            atomic_write_json(self.out / "config.json", {"schema_version": 1, "kind": "search", "search": c.to_dict()})
        self.space = base.with_task(num_classes=self.loaders.num_classes)
        self.calib = calibration_batches(self.loaders, n_images=min(c.bn_images, self.loaders.train.num_images), batch_size=100, seed=c.seed)
        self.val = _take(self.loaders.val, c.eval_images, c.seed)
        self.table = energy_table(self.space, c.hardware, c.bits, ops=(c.op,), path=self.out / "lut.csv")
        # price from the saved file in every run, fresh or resumed (lut.csv keeps 12 significant digits;
        # the in-memory table of a fresh run has more, and a resumed run would price slightly differently)
        self.table = energy_table(self.space, c.hardware, c.bits, ops=(c.op,), path=self.out / "lut.csv")
        self.pricer = Pricer(self.budget, c.op, self.table)
        if self.executor is None:
            self.executor = make_executor(c, self.out, self.device, self.progress)
        log.debug(f"search in {self.out}: executor {type(self.executor).__name__}, device {self.device}, space "
                  f"{self.space.name} ({self.space.num_classes} classes), price list {self.out / 'lut.csv'} ({len(self.table)} rows)")

    def check_budget(self, num_classes: int | None = None) -> dict:
        """The budget against the space's cost range (``budget_preview``), before any data is read;
        raises when the budget cannot be met and says so when it does not bind, naming the shipped
        spaces where it would. ``num_classes``: the dataset's, once known."""
        info = budget_preview(self.cfg, num_classes)
        lo, hi = info["cost_range"]
        unit, op, name = info["unit"], self.cfg.op, info["space"]
        if not info["feasible"]:
            raise InfeasibleBudgetError(
                f"budget {self.budget} cannot be met: the cheapest {op} network of space {name!r} costs {lo:.4g} {unit}; "
                f"the smallest feasible budget is {lo:.4g} {unit}; {binds_in_text(info)}"
            )
        if not info["binds"]:
            note(f"note: the budget {self.budget} does not bind: the largest {op} network of space {name!r} costs "
                     f"{hi:.4g} {unit}; {binds_in_text(info)}")
        if info["num_classes_from"] == "space":
            note(f"note: priced with the space's {info['num_classes']} classes until the {self.cfg.dataset} dataset is read")
        return info

    # ------------------------------------------------------------------------------ steps
    def supernet_job(self) -> SupernetJob:
        """What supernet training needs, explicitly (the executor may send it to other machines)."""
        c, out = self.cfg, self.out.resolve()
        options = dict(epochs=c.supernet_epochs, lr=c.lr, seed=c.seed, remap=c.remap, op_options=c.op_options,
                       branch_norm=c.branch_norm, momentum=c.momentum, weight_decay=c.weight_decay,
                       label_smoothing=c.label_smoothing, background_weight=c.background_weight,
                       remap_lr_scale=c.remap_lr_scale, kl_weight=c.kl_weight,
                       precision=c.precision)
        return SupernetJob(self.space, c.op, self.data, options, out / "supernet.pt", out / "supernet_log.json")

    def run_supernet(self):
        """Train the supernet (or skip a finished one); returns it, loaded from ``supernet.pt``."""
        job = self.supernet_job()
        if "supernet" not in self.state["done"]:
            t0 = time.time()
            self.executor.train_supernet(job, self.loaders)
            self.mark("supernet", {"epochs": self.cfg.supernet_epochs, "time_s": round(time.time() - t0, 1)})
        sup = job.trainer(self.loaders, self.device)
        load_checkpoint(self.out / "supernet.pt", apply=sup.load_state_dict)
        return sup.net

    def run_stage_one(self, evaluator) -> tuple[Arch, dict]:
        from nas.search.evolution import EvolutionSearch

        if "stage1" in self.state["done"]:
            r = self.state["done"]["stage1"]
            return Arch.from_dict(r["subnet"]), r
        c = self.cfg
        evo = EvolutionSearch(self.space, fitness=evaluator.accuracy, cost=self.pricer.cost,
                              budget=self.budget.value, multiples=c.aug_multiples, population=c.population,
                              generations=c.generations, seed=c.seed, unit=self.budget.unit,
                              batch_fitness=lambda archs: self.executor.evaluate(evaluator, archs))
        t0 = time.time()
        try:
            best = evo.run(self.out / "stage1.json", self.out / "population.csv", self.progress)
        finally:
            self.executor.release()  # e.g. Ray's evaluation actors: their CPUs go to stage two
        sub = self.space.decode(best.genome, "subnet")
        sub.save(self.out / "subnet.json")
        r = {"subnet": sub.to_dict(), "multiple": best.multiple, "cost": best.cost, "accuracy": best.accuracy,
             "evaluations": evaluator.calls, "time_s": round(time.time() - t0, 1)}
        self.mark("stage1", r)
        return sub, r

    def run_stage_two(self, evaluator, subnet: Arch) -> dict:
        from nas.search.evolution import write_csv
        from nas.search.target_search import trials_rows

        if "stage2" in self.state["done"]:
            return self.state["done"]["stage2"]
        c = self.cfg
        t0 = time.time()
        job = StageTwoJob(self.space, subnet, c.op, self.pricer.cost, self.budget.value, c.trials,
                          self.out.resolve() / "stage2.journal", c.seed)
        best, study = self.executor.run_stage_two(evaluator, job)
        write_csv(self.out / "trials.csv", trials_rows(study))
        r = {"target": best.arch.to_dict(), "blocks": best.blocks, "accuracy": best.accuracy, "cost": best.cost,
             "trial": best.trial, "time_s": round(time.time() - t0, 1)}
        self.mark("stage2", r)
        return r

    def run_training(self, subnet: Arch, target: dict) -> dict:
        from nas.train.trainer import TrainConfig

        if "train" in self.state["done"]:
            return self.state["done"]["train"]
        c = self.cfg
        train_dir = self.out / "train"
        tc = TrainConfig(**c.method_dict(), model=None, op=c.op, dataset=c.dataset, data_root=c.data_root,
                         resolution=self.space.resolution, batch_size=c.batch_size, epochs=c.final_epochs, lr=c.lr,
                         seed=c.seed, max_train_images=c.max_train_images, bn_images=c.bn_images,
                         warmup_epochs=min(c.warmup_epochs, c.final_epochs), device=c.device, precision=c.precision, workers=c.workers,
                         task=c.task,
                         subnet=subnet.to_dict(), target_arch=target["target"], target_blocks=target["blocks"],
                         inherit=str(self.out / "supernet.pt"))
        if (train_dir / "config.json").is_file():  # resume it, if it trains this TargetNet
            old, keys = read_run_config(train_dir, "train"), ("subnet", "target_arch", "target_blocks")
            if config_hash({k: old.get(k) for k in keys}) == config_hash({k: getattr(tc, k) for k in keys}):
                tc = None
            else:  # stage two was redone and chose another TargetNet
                note(f"note: {train_dir} trained another TargetNet; moved it to {set_aside(train_dir, 'old')}, training starts again")
        s = self.executor.train_target(TargetJob(tc, train_dir, self.out / "target", device=c.device))
        self.write_cost(Arch.load(self.out / "target" / "arch.json"))
        self.mark("train", s)
        return s

    def write_cost(self, target: Arch) -> dict:
        """cost.json of the exported TargetNet, priced with the run's own table and hardware."""
        from nas.export import write_cost

        return write_cost(self.out / "target", target, self.pricer.price(target), hardware=self.table.header.get("hardware"),
                          bits=self.cfg.bits, budget=self.budget.to_dict())

    # ------------------------------------------------------------------------------ the job
    def run(self) -> dict:
        from nas.search.evaluator import Evaluator

        t_start = time.time()
        done = self.state["done"]
        if "report" in done and (self.out / "summary.json").is_file():  # finished: a resume changes nothing
            return read_json(self.out / "summary.json", "the run's summary is damaged: delete it and run --resume again")
        budget_info = self.check_budget()  # before any data is read
        if is_writer() and "supernet" in heal_search_dir(self.out):  # no copy of supernet.pt loads: train it again
            done.pop("supernet", None)  # (a lost train/checkpoint.pt restarts training by itself)
        self.setup()
        if self.space.num_classes != budget_info["num_classes"]:  # e.g. a folder dataset: its own class count
            budget_info = self.check_budget(self.space.num_classes)
        self.log(f"[1/4] supernet ({self.cfg.supernet_epochs} epochs, op {self.cfg.op})")
        net = self.run_supernet()
        evaluator = Evaluator(net, self.calib, self.val, self.cfg.precision)
        self.log(f"[2/4] stage one: evolution for the SubNet (budget {self.budget} x multiple)")
        subnet, s1 = self.run_stage_one(evaluator)
        self.log(f"[3/4] stage two: Optuna for the TargetNet ({self.cfg.trials} trials)")
        s2 = self.run_stage_two(evaluator, subnet)
        self.log(f"[4/4] ShiftAddAug training of the TargetNet ({self.cfg.final_epochs} epochs)")
        tr = self.run_training(subnet, s2)
        self.plot_pareto(s2, binds=budget_info["binds"])
        summary = self.summarize(budget_info, s1, s2, tr, time.time() - t_start)
        self.mark("report", {"summary": "summary.json"})
        return summary

    # ------------------------------------------------------------------------------ outputs
    def plot_pareto(self, s2: dict, binds: bool = True) -> None:
        """``pareto.png``: stage two's candidates, accuracy vs cost, with the budget line. The cost
        axis is logarithmic when the budget does not bind or the candidates span more than
        ``LOG_AXIS_SPAN`` (on a linear axis far from the budget they crowd into one column)."""
        import pandas as pd

        from nas.io import new_figure

        df = pd.read_csv(self.out / "trials.csv")
        df = df[df["state"] == "COMPLETE"]
        fig = new_figure(figsize=(6, 4))
        ax = fig.subplots()
        feas = df[df["feasible"] == True]  # noqa: E712 (pandas column of bools)
        infeas = df[df["feasible"] != True]  # noqa: E712
        ax.scatter(infeas["cost"], infeas["accuracy"], c="lightgray", label="over budget", s=18)
        ax.scatter(feas["cost"], feas["accuracy"], c="tab:blue", label="feasible", s=18)
        front = pareto_front(df[["cost", "accuracy"]].values.tolist())
        if front:
            xs, ys = zip(*front)
            ax.step(xs, ys, where="post", c="tab:blue", alpha=0.5, label="Pareto front")
        ax.axvline(self.budget.value, c="tab:red", ls="--", label=f"budget {self.budget}")
        ax.scatter([s2["cost"]], [s2["accuracy"]], marker="*", s=180, c="tab:orange", edgecolors="k", label="chosen TargetNet", zorder=5)
        costs = df["cost"].tolist() + [s2["cost"]]
        if not binds or max(costs) > LOG_AXIS_SPAN * min(costs):
            ax.set_xscale("log")
        ax.set_xlabel(f"{self.budget.metric} of the {self.cfg.op} TargetNet ({self.budget.unit})")
        ax.set_ylabel(f"supernet {objective_label(self.cfg.task)} (%)")
        ax.set_title(f"stage two: {self.cfg.op} TargetNets cut from the SubNet")
        ax.legend(fontsize=8)
        fig.tight_layout()
        atomic_savefig(fig, self.out / "pareto.png", dpi=110)

    def summarize(self, budget_info: dict, s1: dict, s2: dict, tr: dict, seconds: float) -> dict:
        cost = json.loads((self.out / "target" / "cost.json").read_text())
        target = Arch.load(self.out / "target" / "arch.json")
        value = cost["energy_mJ"] if self.budget.metric == "energy" else cost["latency_ms"]
        from nas.train.tasks import task_of

        obj = "accuracy" if self.cfg.task == "classification" else task_of(self.cfg.task).metric  # the search's objective
        m = task_of(self.cfg.task).metric
        summary = {
            "schema_version": 1,
            "budget": str(self.budget),
            "budget_binding": budget_info["binds"],
            "space_cost_range": list(budget_info["cost_range"]),
            **({} if budget_info["binds"] else {"binds_in": budget_info["binds_in"]}),
            "op": self.cfg.op,
            "energy_mJ": cost["energy_mJ"],
            "latency_ms": cost["latency_ms"],
            "meets_budget": value <= self.budget.value * (1 + 1e-9),
            "macs": cost["counts"]["macs"],
            "params": cost["counts"]["params"],
            "objective": obj,
            obj: {"val": tr[f"val_{m}"], "test": tr[f"test_{m}"], "supernet_estimate": s2["accuracy"]},
            **({} if self.cfg.task == "classification" else
               {"task": self.cfg.task, "pixel_acc": {"val": tr["val_pixel_acc"], "test": tr["test_pixel_acc"]}}),
            "subnet": {"arch_id": Arch.from_dict(s1["subnet"]).arch_id, "multiple": s1["multiple"], "cost": s1["cost"],
                       f"supernet_{obj}": s1["accuracy"]},
            "target_arch_id": target.arch_id,
            "time_s": round(seconds, 1),
            "paths": {k: str(self.out / v) for k, v in {
                "arch": "target/arch.json", "weights": "target/weights.pt", "cost": "target/cost.json",
                "pareto": "pareto.png", "report": "report.md", "population": "population.csv", "trials": "trials.csv",
                "supernet": "supernet.pt"}.items()},
        }
        atomic_write_json(self.out / "summary.json", summary)
        atomic_write_text(self.out / "report.md", search_report(self, summary, budget_info, target))
        return summary


def make_executor(cfg: SearchConfig, out: str | Path, device, progress: bool = True) -> Executor:
    """The executor of a search: local, or on the Ray cluster of ``cfg.ray_address`` (records
    under ``<out>/ray``; how much of the cluster: ``RayOptions.from_env()``)."""
    if cfg.ray_address is None:
        return LocalExecutor(device, progress)
    from nas.search.ray_executor import RayExecutor

    return RayExecutor(cfg.ray_address, Path(out) / "ray", progress=progress)


# ---------------------------------------------------------------------------------- budget preview


def space_cost_range(space: SearchSpace, op: str, budget: Budget, hardware=None, bits: int = 32) -> tuple[float, float]:
    """Cost of the cheapest and of the dearest network of ``space`` with operator ``op``, in the
    budget's unit: from the space's shipped table when it was built for this hardware and width
    (rows it lacks are priced in memory), else from the energy model. Writes nothing."""
    from nas.cost.tables import shipped_energy_table
    from nas.search.evaluator import Pricer

    pricer = Pricer(budget, op, shipped_energy_table(space, hardware, bits), hardware, bits)
    return pricer.cost(space.min_arch()), pricer.cost(space.max_arch())


def where_budget_binds(budget: Budget, op: str, hardware=None, bits: int = 32, task: str = "classification") -> list[dict]:
    """The shipped spaces of ``task`` (``search_spaces/*.yaml``, each at its own resolution and
    class count) whose cost range for ``op`` contains ``budget``, with the presets that search them."""
    from nas.paths import SEARCH_SPACES

    out = []
    for path in sorted(SEARCH_SPACES.glob("*.yaml")):
        space = SearchSpace.load(path)
        if space.task != task:
            continue
        lo, hi = space_cost_range(space, op, budget, hardware, bits)
        if lo <= budget.value < hi:
            presets = sorted(k for k, v in PRESETS.items() if _preset_space(k, task) == space.name)
            out.append({"space": space.name, "presets": presets, "cost_range": [lo, hi]})
    return out


def budget_preview(cfg: SearchConfig, num_classes: int | None = None) -> dict:
    """Where the budget of ``cfg`` lies in the cost range of its space, without reading any data.

    The space is priced at its resolution with the dataset's class count when the dataset fixes
    one (``DATASET_CLASSES``), or ``num_classes`` when given, else the space's own (an image folder:
    ``num_classes_from`` says "space"). ``cost_range``: [cheapest, dearest] network of the space for
    the run's operator in the budget's unit; ``binds``: the budget lies inside it; ``feasible``: it
    is not below it; ``binds_in`` (when it does not bind): the shipped spaces where it would.
    """
    c = cfg.resolved()
    budget = parse_budget(c.budget)
    base = load_space(c)
    if num_classes is not None:
        source = "dataset"
    elif c.dataset in DATASET_CLASSES:
        num_classes, source = DATASET_CLASSES[c.dataset], "dataset"
    else:
        num_classes, source = base.num_classes, "space"
    space = base.with_task(num_classes=num_classes)
    lo, hi = space_cost_range(space, c.op, budget, c.hardware, c.bits)
    info = {
        "schema_version": 1, "space": space.name, "preset": c.preset, "op": c.op, "dataset": c.dataset, "task": c.task,
        "resolution": space.resolution, "num_classes": num_classes, "num_classes_from": source,
        "hardware": c.hardware or "eyeriss-45nm", "bits": c.bits,
        "budget": budget.to_dict(), "metric": budget.metric, "unit": budget.unit,
        "cost_range": [lo, hi], "feasible": budget.value >= lo, "binds": lo <= budget.value < hi,
    }
    if not info["binds"]:
        info["binds_in"] = where_budget_binds(budget, c.op, c.hardware, c.bits, c.task)
    return info


def _preset_space(preset: str, task: str) -> str | None:
    """The space a preset searches for ``task`` (None: it has none)."""
    over = TASK_PRESETS.get(task, {}).get(preset, {}) if task in TASK_PRESETS else {}
    return None if over is None else over.get("space", PRESETS[preset]["space"])


def _read_state(path: Path, cfg: SearchConfig) -> dict:
    """``state.json``: damaged, foreign or another configuration's -> one ConfigError."""
    st = read_json(path, "the run's record of finished steps is damaged: delete it and run --resume again "
                         "(every step continues from its own checkpoint)")
    check_keys(st, str(path), {"schema_version", "config_hash", "done"}, {"done"})
    if st.get("schema_version") != STATE_VERSION:
        raise ConfigError(f"{path}.schema_version", st.get("schema_version"), f"this version reads {STATE_VERSION}")
    if not isinstance(st["done"], dict):
        raise ConfigError(f"{path}.done", st["done"], "a mapping of finished steps")
    current = cfg.to_dict()
    recorded = st.get("config_hash")
    if recorded is not None and recorded != config_hash(current) and (path.parent / "config.json").is_file():
        # a run begun by an earlier version: the fields added since (the method's knobs) are not in
        # its config.json, take their defaults and are not part of its hash
        written = read_run_config(path.parent, "search")
        if recorded == config_hash({k: v for k, v in current.items() if k in written}):
            return st
    check_config_hash(recorded, current, str(path))
    st.setdefault("config_hash", config_hash(current))
    return st


def _take(batches, n_images: int, seed: int = 0, batch_size: int = 250) -> list:
    """A fixed random subset of an evaluation split, cached as tensors (splits are class-sorted)."""
    import torch

    xs, ys = zip(*batches)
    x, y = torch.cat(xs), torch.cat(ys)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(y), generator=g)[: min(n_images, len(y))]
    return [(x[idx[i : i + batch_size]], y[idx[i : i + batch_size]]) for i in range(0, len(idx), batch_size)]
