"""The Python API: ``nas.search``, ``nas.train`` and ``nas.load``.

    import nas

    result = nas.search(budget="0.02mJ", supernet_epochs=1, trials=4, final_epochs=1)
    result.model            # the exported TargetNet, a torch.nn.Module (eval mode, CPU, float32)
    result.arch, result.cost["energy_mJ"], result.accuracy, result.run_dir

    result = nas.train(model="mbv2-tiny", op="add", epochs=1)
    result = nas.load("runs/20261127-130000-search-shift-0.02mJ")

``search`` and ``train`` take the fields of ``SearchConfig`` / ``TrainConfig`` as keyword arguments
(the same names as the command-line flags, with ``_`` for ``-``), or ``config=FILE`` (the same
files ``--config`` reads; keyword arguments override it). They write the same run directory as the
commands (``out``, default ``./runs/<time>-...``), take its lock, and return ``load(run_dir)``.
Progress bars are drawn unless ``progress=False``; messages go through ``logging`` (logger ``nas``),
so they appear where the application's logging configuration sends them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from nas.arch import Arch
from nas.errors import ConfigError


@dataclass
class Result:
    """A finished run: the exported TargetNet, its architecture and cost, and where the files are."""

    model: nn.Module  # the exported multiplication-free TargetNet (eval mode, CPU, float32)
    arch: Arch  # its architecture (operators included)
    cost: dict  # target/cost.json: op counts, energy_mJ, latency_ms, per-layer rows
    summary: dict  # the run's summary.json (a search's or a training's)
    run_dir: Path

    @property
    def accuracy(self) -> float | None:
        """Test accuracy of the exported TargetNet (%), as the run measured it."""
        acc = self.summary.get("accuracy")
        return acc["test"] if isinstance(acc, dict) else self.summary.get("test_acc")

    @property
    def paths(self) -> dict[str, Path]:
        """The run's files: arch, weights, cost, meta, summary (and, for a search, report and pareto)."""
        t = self.run_dir / "target"
        out = {"arch": t / "arch.json", "weights": t / "weights.pt", "cost": t / "cost.json", "meta": t / "meta.json",
               "summary": self.run_dir / "summary.json"}
        out.update({k: Path(v) for k, v in self.summary.get("paths", {}).items()})
        return out


def load(run_dir: str | Path) -> Result:
    """The exported TargetNet of a finished run directory (a search's or a training's), with its
    architecture, cost and summary. ``run_dir`` may also be an exported ``target/`` directory."""
    from nas.export import load_exported
    from nas.rundir import read_json

    run_dir = Path(run_dir)
    target = run_dir if (run_dir / "arch.json").is_file() and not (run_dir / "target").is_dir() else run_dir / "target"
    if not (target / "arch.json").is_file():
        raise ConfigError("run_dir", str(run_dir), "a finished shiftaddaug run directory (no target/arch.json: "
                          "the run has not exported its TargetNet yet; finish it with --resume)")
    root = target.parent if target.name == "target" else target
    model = load_exported(target)
    cost = read_json(target / "cost.json", "rebuild target/ with shiftaddaug export RUN_DIR --format json") \
        if (target / "cost.json").is_file() else {}
    summary = read_json(root / "summary.json", "the run's summary is damaged: resume the run") \
        if (root / "summary.json").is_file() else {}
    return Result(model=model, arch=Arch.load(target / "arch.json"), cost=cost, summary=summary, run_dir=root)


def search(budget: str | None = None, *, out: str | Path | None = None, config: str | Path | None = None,
           overwrite: bool = False, progress: bool = True, **options: Any) -> Result:
    """Run a whole search (``shiftaddaug search``) and return its exported TargetNet.

    ``budget`` ("0.02mJ", "5us", ...) and ``options`` are ``SearchConfig`` fields (``op="add"``,
    ``preset="paper"``, ``supernet_epochs=1`` ...); ``config``: a YAML / JSON file of them.
    ``out``: the run directory (default ``./runs/<time>-search-<op>-<budget>``); an existing run is
    refused unless ``overwrite`` (it is moved aside). Resume a killed run with
    ``shiftaddaug search --resume DIR``."""
    from nas.paths import new_run_dir
    from nas.rundir import claim
    from nas.search.pipeline import SearchConfig, SearchRun

    from nas.config import config_layers, merged

    if budget is not None:
        options["budget"] = budget
    cfg = SearchConfig(**merged(config_layers(SearchConfig, config, "search", "train", options)))
    cfg.resolved()  # bad options fail before the run directory is touched
    out = Path(out) if out is not None else new_run_dir(f"search-{cfg.op}-{cfg.budget.replace(' ', '')}")
    with claim(out, "nas.search", overwrite=overwrite, flag="out"):
        SearchRun(cfg, out, progress=progress).run()
    return load(out)


def train(model: str | None = None, *, out: str | Path | None = None, config: str | Path | None = None,
          overwrite: bool = False, progress: bool = True, **options: Any) -> Result:
    """Train one TargetNet (``shiftaddaug train``) and return it exported.

    ``model`` (a zoo name) or ``arch=FILE``, and ``options``: ``TrainConfig`` fields (``op="add"``,
    ``aug="shiftaddaug"``, ``epochs=10`` ...); ``config``: a YAML / JSON file of them (a run's own
    ``config.json`` trains that run again). ``out``: the run directory (default
    ``./runs/<time>-train-<model>-<op>-<aug>``); an existing run is refused unless ``overwrite``."""
    from nas.paths import new_run_dir
    from nas.rundir import claim
    from nas.train.trainer import TrainConfig, Trainer

    from nas.config import config_layers

    if model is not None:
        options["model"] = model
    cfg = TrainConfig.from_layers(config_layers(TrainConfig, config, "train", "search", options))
    name = cfg.model or (Path(cfg.arch).stem if cfg.arch else "subnet")
    out = Path(out) if out is not None else new_run_dir(f"train-{name}-{cfg.op}-{cfg.aug}")
    with claim(out, "nas.train", overwrite=overwrite, flag="out"):
        Trainer(cfg, out, progress=progress).fit()
    return load(out)
