"""``shiftaddaug export`` (also ``shiftaddaug-export``): re-export a finished run (json, onnx) or
generate integer-only C code."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from nas.cli.common import EXAMPLES, _friendly, add_verbosity_args, configure_logging, verbosity
from nas.errors import ConfigError


@_friendly
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="shiftaddaug export",
        description="Re-export the TargetNet of a finished run (shiftaddaug-search or shiftaddaug-train): "
        "json rebuilds target/ (arch.json, weights.pt, cost.json, meta.json) from the run's last training "
        "checkpoint with freshly re-estimated BatchNorm statistics; onnx writes target/model.onnx (standard "
        "ONNX operators only, the adder as Pad/Slice/Sub/Abs/ReduceSum) and checks it with onnxruntime. "
        "Also installed as shiftaddaug-export.",
        epilog="examples:\n  shiftaddaug export runs/20261127-130000-search-shift-0.02mJ --format all\n"
        "  shiftaddaug export runs/20261127-130000-search-shift-0.02mJ --format c --check",
        formatter_class=EXAMPLES,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory")
    p.add_argument("--format", choices=("json", "onnx", "all", "c"), default="all",
                   help="what to write (default all = json + onnx); c: integer-only C99 code in target/c/ (docs/deploy.md)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    c = p.add_argument_group("C code (--format c)")
    c.add_argument("--check", action="store_true",
                   help="compile with the system C compiler, run on the run's test images and random ones, compare with "
                   "the Python integer reference (bit for bit) and the float model, count the executed operations")
    c.add_argument("--check-images", type=int, metavar="N", help="test images for --check (default: the whole test split)")
    c.add_argument("--act-bits", choices=("auto", "8", "16"), default="auto",
                   help="activation width: auto = 8-bit except the fewest tensors (lowest 8-bit SQNR first) that must be "
                   "16-bit for --agree (default auto)")
    c.add_argument("--agree", type=float, default=99.5, metavar="PCT",
                   help="auto: top-1 agreement with the float model, simulated on the calibration images (default 99.5)")
    c.add_argument("--mult-bits", type=int, default=8, help="significant bits of requantisation multipliers (default 8)")
    c.add_argument("--requant", choices=("csd", "mul"), default="csd",
                   help="apply requantisation multipliers as shift-adds (csd, multiplication-free) or multiplies; same results")
    c.add_argument("--calib-images", type=int, default=512, metavar="N", help="training images that calibrate the formats (default 512)")
    add_verbosity_args(p)
    args = p.parse_args(argv)
    configure_logging(verbosity(args))
    from nas.rundir import claim

    if args.check and args.format != "c":
        raise ConfigError("--check", True, "only with --format c")
    run = Path(args.run_dir)
    if not (run / "config.json").is_file():
        raise ConfigError("RUN_DIR", str(run), "a finished shiftaddaug-search or shiftaddaug-train run directory (no config.json)")
    with claim(run, "shiftaddaug-export", resume=True):  # it rewrites target/: not while the run itself is busy
        if args.format == "c":
            return _export_c(args)
        train_dir = run / "train" if (run / "train" / "config.json").is_file() else run
        if not (train_dir / "checkpoint.pt").is_file():
            raise ConfigError("RUN_DIR", str(run), "a finished shiftaddaug-search or shiftaddaug-train run directory (no training checkpoint found)")
        return _export(run, train_dir, args)


def _export(run: Path, train_dir: Path, args: argparse.Namespace) -> int:
    target_dir = run / "target"
    if args.format in ("json", "all"):
        from nas.train.trainer import resume_trainer

        trainer = resume_trainer(train_dir, progress=False, export_dir=target_dir)
        if trainer.epoch < trainer.cfg.epochs:
            raise ConfigError("RUN_DIR", str(run), f"a finished run (training stopped at epoch {trainer.epoch}/{trainer.cfg.epochs}; use --resume)")
        info = trainer.export()
        if (run / "state.json").is_file():  # a search run: price with its own table
            from nas.arch import Arch
            from nas.search.pipeline import SearchRun

            sr = SearchRun.resume(run, progress=False)
            sr.setup()
            sr.write_cost(Arch.load(target_dir / "arch.json"))
        print(f"json  {target_dir}  (max |logit diff| vs trained model {info['max_abs_logit_diff']:.1e})")
    if args.format in ("onnx", "all"):
        from nas.export import load_exported
        from nas.onnx_export import export_onnx

        model = load_exported(target_dir)
        r = export_onnx(model, target_dir / "model.onnx", model.arch.resolution, opset=args.opset)
        print(f"onnx  {r['path']}  (onnxruntime vs PyTorch max |diff| {r['max_abs_diff']:.1e}; ops: {', '.join(r['ops'])})")
    return 0


def _export_c(args: argparse.Namespace) -> int:
    from nas.codegen.check import check_c, export_c, format_report

    if args.check_images is not None and args.check_images < 1:
        raise ConfigError("--check-images", args.check_images, "a positive integer")
    if not 0 <= args.agree <= 100:
        raise ConfigError("--agree", args.agree, "a percentage in [0, 100]")
    ex = export_c(args.run_dir, act_bits=args.act_bits, agree=args.agree, mult_bits=args.mult_bits,
                  requant=args.requant, calib_images=args.calib_images)
    files = ", ".join(sorted(p.name for p in ex.out_dir.iterdir() if p.is_file()))
    print(f"c     {ex.out_dir}  ({files}; flash {ex.program.flash_bytes:,} B, SRAM peak {ex.program.memory.peak_live_bytes:,} B)")
    if not args.check:
        return 0
    rep = check_c(ex, args.check_images)
    print(format_report(ex, rep))
    return 0 if rep["ok"] else 1
