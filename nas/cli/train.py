"""``shiftaddaug train`` (also ``shiftaddaug-train``): train one TargetNet, directly or with
augmentation, and export it. One flag per ``TrainConfig`` field (generated), or ``--config FILE``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from nas.cli.common import (
    EXAMPLES,
    _friendly,
    add_config_arg,
    add_config_flags,
    add_verbosity_args,
    config_overrides,
    configure_logging,
    default_run_dir,
    ignored_on_resume,
    verbosity,
)
from nas.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    from nas.train.trainer import TrainConfig

    p = argparse.ArgumentParser(
        prog="shiftaddaug train",
        description="Train a multiplication-free TargetNet, directly or with augmentation (NetAug / ShiftAddAug), "
        "and export it. A run directory gets config.json, a checkpoint every epoch, metrics.csv, curves.png, "
        "summary.json and target/ (arch.json, weights.pt, cost.json, meta.json). Every field of the run's "
        "configuration is a flag below, or a key of --config FILE; a run's own config.json given to --config "
        "trains the same run again. Also installed as shiftaddaug-train.",
        epilog="examples:\n"
        "  shiftaddaug train --model mbv2-tiny --op shift --aug shiftaddaug --epochs 10\n"
        "  shiftaddaug train --task segmentation --dataset mnistseg --model mbv2-tiny --op add --epochs 5   # LR-ASPP head, mIoU\n"
        "  shiftaddaug train --model mcunet --op add --aug none --dataset cifar10 --data-root ~/data/cifar-10-batches-py\n"
        "  shiftaddaug train --model mbv2-w0.35 --op add --dataset cifar100 --data-root ~/data --resolution 160 \\\n"
        "      --device cuda --precision bf16 --workers 4\n"
        "  shiftaddaug train --model mbv2-tiny --op add --stop-width 0.3 --no-sort-channels --kl-weight 5\n"
        "  shiftaddaug train --config runs/X/config.json --out runs/X-again     # the same run again\n"
        "  shiftaddaug train --config recipe.yaml --epochs 20                   # a file, one field overridden\n"
        "  torchrun --nproc-per-node 2 --no-python shiftaddaug-train --model mbv2-tiny --op add --out runs/ddp\n"
        "  shiftaddaug train --resume runs/20261127-120000-train-mbv2-tiny-shift-shiftaddaug\n"
        "  shiftaddaug train --model mbv2-tiny --out runs/mine --overwrite   # start over; the old run moves to runs/mine.old-<time>",
        formatter_class=EXAMPLES,
    )
    p.add_argument("--resume", metavar="DIR", help="continue an interrupted run from its directory (other options but "
                   "--device and --ray-address are ignored)")
    add_config_arg(p, "train")
    p.add_argument("--out", metavar="DIR", help="run directory (default ./runs/<time>-train-<model>-<op>-<aug>); "
                   "an existing run is refused unless --overwrite")
    p.add_argument("--overwrite", action="store_true", help="start over in an --out that holds a run (the old one is moved to DIR.old-<time>)")
    p.add_argument("--ray-address", metavar="local|auto|HOST:PORT",
                   help="data-parallel training with Ray Train on that cluster (needs the ray extra; docs/ray.md)")
    add_verbosity_args(p, quiet_help="no progress bars; only warnings and errors")
    add_config_flags(p, TrainConfig)
    return p


def train_config(args: argparse.Namespace):
    """The run's ``TrainConfig``: defaults, then ``--config FILE``, then the flags given
    (``TrainConfig.from_layers``)."""
    from nas.config import config_layers
    from nas.train.trainer import TrainConfig

    return TrainConfig.from_layers(config_layers(TrainConfig, args.config, "train", "search", config_overrides(args, TrainConfig),
                                                 check_overrides=False))


@_friendly
def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    configure_logging(verbosity(args))
    from nas.train.distributed import init_from_env, launched_by_torchrun
    from nas.train.loop import resolve_device
    from nas.train.trainer import TrainConfig, Trainer, resume_trainer

    if args.ray_address:
        from nas.train.ray_train import check_ray

        check_ray(args.ray_address)  # before anything runs: a one-line error without ray
        if launched_by_torchrun():
            raise ConfigError("--ray-address", args.ray_address, "not under torchrun: Ray Train starts its own workers")
    from nas.rundir import claim, heal_train_dir, is_writer, read_run_config

    device_flag = getattr(args, "device", None)
    if args.resume:
        ignored_on_resume(p, args, TrainConfig, honoured=("resume", "quiet", "verbose", "ray_address", "device"))
        out = Path(args.resume)
    else:
        cfg = train_config(args)
        name = f"train-{cfg.model or (Path(cfg.arch).stem if cfg.arch else 'subnet')}-{cfg.op}-{cfg.aug}"
        out = Path(args.out or default_run_dir(name))
    ray = None
    if args.ray_address:  # Ray Train: rank 0 writes the run directory, Ray's records go to <run>/ray
        from nas.train.ray_train import RayTrain

        ray = RayTrain(args.ray_address, out / "ray")
    dist = None
    if ray is None:
        # torchrun: join the process group (one process: nothing); the device of this rank
        spec = device_flag or (_run_device(args.resume) if args.resume else cfg.device) or "auto"
        dist, device = init_from_env(resolve_device(spec))
        out = Path(dist.broadcast_object(str(out)))  # rank 0's (time-stamped) run directory for every rank
    quiet = args.quiet or (dist is not None and not dist.is_writer)
    try:
        with claim(out, "shiftaddaug-train", resume=bool(args.resume), overwrite=args.overwrite):
            if args.resume:
                read_run_config(out, "train")  # a damaged, foreign or search directory: one line
                if is_writer():
                    heal_train_dir(out)
            if args.resume and ray is not None:
                print(f"resuming {args.resume} on Ray ({args.ray_address})")
                s = ray.target(None, out)["summary"]
            elif args.resume:
                # a --device given here moves the run there (and is recorded); torchrun's per-rank GPU is not recorded
                trainer = resume_trainer(args.resume, progress=not quiet, device=device if dist.active else device_flag, dist=dist)
                if dist.is_writer:
                    print(f"resuming {args.resume} at epoch {trainer.epoch}/{trainer.cfg.epochs} on {trainer.device}")
                s = trainer.fit()
            elif ray is not None:
                s = ray.target(cfg, out)["summary"]
            else:
                s = Trainer(cfg, out, progress=not quiet, device=device, dist=dist).fit()
    finally:
        if dist is not None:
            dist.shutdown()
    if dist is not None and not dist.is_writer:
        return 0  # rank 0 reports
    print()
    print(summary_text(out, s))
    return 0


def summary_text(out: Path, s: dict) -> str:
    ex = s["export"]
    cost = f"{ex['macs'] / 1e6:.2f}M MACs" + (f", {ex['energy_mJ']:.4f} mJ" if ex.get("energy_mJ") is not None else "")
    return "\n".join([
        f"run directory   {out}",
        f"TargetNet       {s['target']} ({s['op']}, trained with aug={s['aug']}, remap={s['remap']}, {s['epochs']} epochs)",
        (f"mIoU            val {s['val_miou']:.2f}%   test {s['test_miou']:.2f}%   "
         f"(pixel accuracy val {s['val_pixel_acc']:.2f}%, test {s['test_pixel_acc']:.2f}%)"
         if s.get("task") == "segmentation" else f"accuracy        val {s['val_acc']:.2f}%   test {s['test_acc']:.2f}%"),
        f"exported        {ex['dir']}  ({cost}; max |logit diff| vs trained model {ex['max_abs_logit_diff']:.1e})",
        f"time            {s['train_time_s']:.0f}s",
    ])


def _run_device(run_dir: str) -> str | None:
    """The --device a training run was started with (None when its config cannot be read here)."""
    try:
        return json.loads((Path(run_dir) / "config.json").read_text())["train"].get("device")
    except (OSError, ValueError, KeyError):
        return None
