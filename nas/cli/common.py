"""What every command shares: one-line errors, logging and -v/-q, flags generated from configuration
dataclasses, --config files, architecture arguments and run directories."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from typing import Any, Callable, Sequence

from nas.errors import ConfigError, InfeasibleBudgetError, TrainingDivergedError
from nas.ops.registry import op_kinds
from nas.paths import new_run_dir as default_run_dir  # noqa: F401 (./runs/<time>-<name>; the commands' default)

EXAMPLES = argparse.RawDescriptionHelpFormatter
# --help sections of the generated flags, in this order (others after them)
GROUP_ORDER = ("the network", "the search", "data", "overrides of the preset", "the method (ShiftAddAug)", "optimisation",
               "where it computes")


def _friendly(fn: Callable[[Sequence[str] | None], int]) -> Callable[[Sequence[str] | None], int]:
    """Every failure of a command as one line on stderr and an exit code: ``ConfigError`` (bad user
    input, a damaged or foreign file) 2, an infeasible budget 3, the environment (``OSError``: a
    full disk, a read-only or busy run directory, naming the file) or a diverged training run 1."""
    @functools.wraps(fn)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        try:
            return fn(argv)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except InfeasibleBudgetError as e:
            print(f"infeasible: {e}", file=sys.stderr)
            return 3
        except OSError as e:  # the environment: full disk, permissions, a busy run directory
            from nas.rundir import describe_os_error

            line, code = describe_os_error(e)
            print(f"error: {line}", file=sys.stderr)
            return code
        except TrainingDivergedError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper


# ---------------------------------------------------------------------------------- logging
class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (redirections, test capture)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ sets it; the property always answers sys.stderr
        pass


def configure_logging(verbosity: int = 0) -> None:
    """The commands' logging: the ``nas`` logger's records as plain lines on stderr; INFO and up
    (progress of the steps, notes), WARNING and up with ``-q`` (notes only), DEBUG with ``-v``.
    Library code only logs; this is the one place that decides where records go."""
    logger = logging.getLogger("nas")
    for h in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(h)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbosity > 0 else logging.INFO if verbosity == 0 else logging.WARNING)
    logger.propagate = False  # one line per record, whatever the root logger has


def add_verbosity_args(p: argparse.ArgumentParser, quiet_help: str = "only warnings and errors") -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="more detail (debug messages)")
    p.add_argument("-q", "--quiet", action="store_true", help=quiet_help)


def verbosity(args: argparse.Namespace) -> int:
    return -1 if getattr(args, "quiet", False) else 1 if getattr(args, "verbose", False) else 0


# ---------------------------------------------------------------------------------- flags from configurations
def add_config_flags(p: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """One flag per field of the configuration dataclass ``cls`` (``nas.config.knob`` metadata:
    help, choices, group), in ``--help`` groups; fields without a command-line form (``cli=False``)
    are listed under "set from --config only". A flag that is not given leaves its field unset in
    the parsed arguments (``config_overrides``), so a --config file keeps its value."""
    from nas.config import field_infos

    groups: dict[str, Any] = {}
    file_only = []
    infos = field_infos(cls)
    rank = {g: i for i, g in enumerate(GROUP_ORDER)}
    for info in sorted(infos, key=lambda i: rank.get(i.group or "", len(rank))):  # stable: declaration order within a group
        if info.name in skip:
            continue
        if not info.cli:
            file_only.append(info.name)
            continue
        title = info.group or "other options"
        g = groups.get(title) or groups.setdefault(title, p.add_argument_group(title))
        default = "" if info.default is None else f" (default {_show(info.default)})"
        kw: dict[str, Any] = dict(dest=info.name, default=argparse.SUPPRESS, help=(info.help + default).replace("%", "%%"))
        if info.kind == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = info.parse or {"int": int, "float": float, "str": str, "floats": _floats(info.container)}[info.kind]
            if info.choices is not None:
                kw["choices"] = info.choices
            elif info.metavar:
                kw["metavar"] = info.metavar
        g.add_argument(info.flag, **kw)
    if file_only:
        p.add_argument_group("set from --config only", ", ".join(file_only))


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, (tuple, list)):
        return ",".join(f"{x:g}" for x in v)
    return str(v)


def _floats(container: type | None) -> Callable[[str], Any]:
    def parse(text: str):
        try:
            return (container or tuple)(float(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None

    return parse


def add_config_arg(p: argparse.ArgumentParser, section: str) -> None:
    p.add_argument("--config", metavar="FILE",
                   help=f"a YAML or JSON file of {section} configuration fields (a mapping of the field names below, "
                   f"as in --help with _ for -, or {{{section}: {{...}}}}, e.g. a run's own config.json); "
                   "flags given on the command line override it")


def config_overrides(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` given as flags."""
    import dataclasses

    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}


def config_values(args: argparse.Namespace, cls: type, section: str, other: str) -> dict[str, Any]:
    """The configuration fields of a command: ``--config FILE``'s, then the flags given."""
    from nas.config import config_layers, merged

    return merged(config_layers(cls, getattr(args, "config", None), section, other, config_overrides(args, cls),
                                check_overrides=False))


def ignored_on_resume(p: argparse.ArgumentParser, args: argparse.Namespace, cls: type, honoured=("resume", "quiet")) -> None:
    """--resume continues a run with its recorded configuration: refuse --overwrite, name the
    options it ignores (all but ``honoured``)."""
    import dataclasses

    if args.overwrite:
        raise ConfigError("--overwrite", True, "not with --resume (it continues the run)")

    fields = {f.name for f in dataclasses.fields(cls)}
    ignored = [f"--{k.replace('_', '-')}" for k, v in vars(args).items()
               if k not in honoured and (k in fields or v != p.get_default(k))]
    if ignored:
        from nas.io import note

        note(f"note: --resume continues {args.resume} with its recorded configuration; ignored: {', '.join(ignored)}")


# ---------------------------------------------------------------------------------- architectures
def add_arch_args(p: argparse.ArgumentParser, op_default: str | None = None) -> None:
    """--model / --arch and the overrides shared by commands that take one architecture."""
    from nas.models.zoo import list_zoo

    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="NAME", help=f"a zoo model: {', '.join(list_zoo())}")
    src.add_argument("--arch", metavar="FILE", help="an Arch JSON file, or an OFA / MCUNet net.config")
    p.add_argument(
        "--op",
        choices=op_kinds(),
        default=op_default,
        help="operator convention: shift = every conv ShiftConv, classifier mult; add = stem and 1x1 convs "
        "(SE convs included) AddConv, depthwise and classifier mult (default: mult for --model, the file's own ops for --arch)",
    )
    p.add_argument("--resolution", type=int, metavar="R", help="input resolution (default: the arch's)")
    p.add_argument("--classes", type=int, metavar="K", help="number of classes (default: the arch's)")


def resolve_arch(args: argparse.Namespace):
    from nas.arch import Arch
    from nas.models.zoo import resize, zoo_arch

    for name in ("resolution", "classes"):
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise ConfigError(f"--{name}", v, "expected a positive integer")
    if args.model:
        return zoo_arch(args.model, args.op or "mult", args.resolution, args.classes)
    arch: Arch = Arch.load(args.arch)
    if args.op:
        arch = arch.with_ops(args.op)
    return resize(arch, args.resolution, args.classes)
