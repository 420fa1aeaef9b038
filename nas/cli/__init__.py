"""The command line: ``shiftaddaug search|train|cost|lut|export ...``, one module per verb.

``main`` is the ``shiftaddaug`` console script; ``shiftaddaug-search`` and the other four
``shiftaddaug-<verb>`` scripts are aliases that call the same verb functions (``search_main`` ...),
so both spellings parse, run and explain (``--help``) identically.

Every command turns a failure into one line on stderr (``common._friendly``): a ``ConfigError``
(bad user input, a damaged or foreign file) exits with code 2, an infeasible budget with 3, and the
environment (``OSError``: a full disk, a read-only or busy run directory, naming the file) or a
training run that diverged with code 1. Library code logs (``logging``, logger ``nas``); the
commands send its records to stderr (``common.configure_logging``, ``-v`` / ``-q``).
"""

from __future__ import annotations

import sys
from typing import Callable, Sequence

from nas.cli import cost, export, lut, search, train
from nas.cli.common import _friendly, add_arch_args, default_run_dir, resolve_arch  # noqa: F401 (public here too)

cost_main = cost.main
lut_main = lut.main
train_main = train.main
search_main = search.main
export_main = export.main

VERBS: dict[str, tuple[Callable[[Sequence[str] | None], int], str]] = {
    "search": (search_main, "find a multiplication-free TargetNet under a budget and train it (the whole job)"),
    "train": (train_main, "train one network: directly, NetAug or ShiftAddAug; checkpoints, --resume, export"),
    "cost": (cost_main, "exact op counts, energy and latency of a zoo model, an Arch JSON or a net.config"),
    "lut": (lut_main, "build / show / price with lookup tables"),
    "export": (export_main, "re-export a finished run (json, onnx) or generate integer-only C code"),
}


def usage() -> str:
    from nas._version import __version__

    lines = [f"usage: shiftaddaug {{{','.join(VERBS)}}} ... [-h]", "",
             f"shiftaddaug {__version__}: find and train tiny multiplication-free neural networks.", "", "commands:"]
    lines += [f"  {verb:<8}{text}" for verb, (_, text) in VERBS.items()]
    lines += ["", "`shiftaddaug COMMAND --help` explains a command, with examples. Each command is also installed as",
              "shiftaddaug-COMMAND (e.g. shiftaddaug-search)."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``shiftaddaug VERB ARGS...``: the verb's own command with ``ARGS``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    if args[0] == "--version":
        from nas._version import __version__

        print(f"shiftaddaug {__version__}")
        return 0
    if args[0] not in VERBS:
        print(f"error: command: got {args[0]!r}; allowed: {', '.join(VERBS)} (shiftaddaug --help)", file=sys.stderr)
        return 2
    return VERBS[args[0]][0](args[1:])
