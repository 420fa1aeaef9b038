"""Configuration fields: one declaration per knob, read from the command line and from files.

``TrainConfig`` and ``SearchConfig`` declare every field with ``knob(default, help=..., ...)``:
the help text, the allowed values and the help group live in the field's metadata, next to its
type and default. From that one place

* the CLI generates one flag per field (``nas.cli.common.add_config_flags``: ``--stop-width``,
  ``--branch-norm / --no-branch-norm``, ``--width-mults 1,1.5``), so a new field is a new flag;
* ``from_mapping`` reads a configuration from a mapping (``--config FILE``, YAML or JSON, or a
  run's own ``config.json``), checks every value against the field's annotation and allowed
  values, and names the key of anything it refuses (one ``ConfigError``).

Fields whose type has no command-line form (mappings, nested lists: the SubNet the search hands
to its training step) are set from files only.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from nas.errors import ConfigError

# kinds of field, from the annotation: how a value is written on the command line and in a file
KINDS = ("bool", "int", "float", "str", "floats", "json")


def knob(default: Any = dataclasses.MISSING, *, help: str | Callable[[], str], choices: tuple | Callable[[], tuple] | None = None,
         metavar: str | None = None, group: str | None = None, parse: Callable[[str], Any] | None = None,
         cli: bool | None = None) -> Any:
    """A dataclass field with its user-facing description.

    ``help``: one sentence for ``--help`` (or a function giving it); ``choices``: the allowed values (or a function giving
    them, read when the flags are built); ``group``: the ``--help`` section; ``parse``: how the
    flag's text becomes a value (default: from the annotation); ``cli=False``: settable from a
    ``--config`` file only (the default for types without a command-line form).
    """
    md = {"help": help, "choices": choices, "metavar": metavar, "group": group, "parse": parse, "cli": cli}
    return dataclasses.field(default=default, metadata=md)


@dataclass(frozen=True)
class FieldInfo:
    """What the CLI and the file reader need to know about one configuration field."""

    name: str
    kind: str  # one of KINDS
    optional: bool  # None is allowed
    container: type | None  # tuple or list for kind "floats"
    default: Any
    help: str
    choices: tuple | None
    metavar: str | None
    group: str | None
    parse: Callable[[str], Any] | None
    cli: bool

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _kind(tp: Any) -> tuple[str, bool, type | None]:
    """(kind, optional, container) of an annotation."""
    args = typing.get_args(tp)
    optional = False
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        optional = True
        rest = [a for a in args if a is not type(None)]
        tp = rest[0] if len(rest) == 1 else Any
    origin = typing.get_origin(tp)
    if tp in (bool, int, float, str):
        return tp.__name__, optional, None
    if origin in (tuple, list) and set(typing.get_args(tp)) - {Ellipsis} <= {float, int} and typing.get_args(tp):
        return "floats", optional, origin
    return "json", optional, None


def field_infos(cls: type) -> list[FieldInfo]:
    """Every field of the configuration dataclass ``cls``, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind, optional, container = _kind(hints[f.name])
        md = f.metadata
        choices = md.get("choices")
        if callable(choices):
            choices = choices()
        default = f.default if f.default is not dataclasses.MISSING else None
        help_ = md.get("help", "")
        out.append(FieldInfo(f.name, kind, optional, container, default, help_() if callable(help_) else help_,
                             tuple(choices) if choices is not None else None, md.get("metavar"), md.get("group"),
                             md.get("parse"), kind != "json" if md.get("cli") is None else md["cli"]))
    return out


def _yaml_number(v: Any) -> Any:
    """``v``, or the number it spells when it is a string like ``4e-05``: YAML 1.1 (PyYAML) reads
    exponents without a dot as strings, and a run's own ``config.json`` is full of them."""
    if isinstance(v, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", v.strip()):
        return float(v)
    return v


def coerce(info: FieldInfo, value: Any, where: str) -> Any:
    """``value`` read from a file for the field ``info``, checked against its type and choices;
    numbers normalised (an int where a float is expected becomes a float, lists of factors the
    field's container) so that a file and the command line give the same configuration."""
    def bad(expected: str):
        raise ConfigError(where, value, f"expected {expected}" + (" or null" if info.optional else ""))

    if value is None:
        if not info.optional:
            bad({"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string",
                 "floats": "a list of numbers", "json": "a value"}[info.kind])
        return None
    if info.kind == "bool" and not isinstance(value, bool):
        bad("true or false")
    if info.kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        bad("an integer")
    if info.kind == "float":
        value = _yaml_number(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            bad("a number")
        value = float(value)
    if info.kind == "str" and not isinstance(value, str):
        bad("a string")
    if info.kind == "floats":
        if isinstance(value, (list, tuple)):
            value = [_yaml_number(v) for v in value]
        if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
            bad("a list of numbers")
        value = (info.container or tuple)(float(v) for v in value)
    if info.choices is not None and value not in info.choices:
        raise ConfigError(where, value, f"allowed: {', '.join(map(str, info.choices))}")
    return value


def normalise(cfg: Any) -> None:
    """Give the numbers of a configuration dataclass the form a file read back gives them (an int
    in a float field becomes a float, a list of factors the field's container), so that a
    configuration built in Python hashes like its ``config.json`` (``nas.rundir.config_hash``).
    Wrong types are left for the configuration's own checks."""
    for info in field_infos(type(cfg)):
        v = getattr(cfg, info.name)
        if info.kind == "float" and isinstance(v, int) and not isinstance(v, bool):
            setattr(cfg, info.name, float(v))
        elif info.kind == "floats" and isinstance(v, (list, tuple)) and all(isinstance(x, (int, float)) for x in v):
            setattr(cfg, info.name, (info.container or tuple)(float(x) for x in v))


def from_mapping(cls: type, mapping: Any, where: str) -> dict[str, Any]:
    """The fields of ``cls`` that ``mapping`` sets, checked (``coerce``); an unknown key or a bad
    value -> one ConfigError naming ``where.key``."""
    if not isinstance(mapping, dict):
        raise ConfigError(where, mapping, f"a mapping of {cls.__name__} fields")
    infos = {i.name: i for i in field_infos(cls)}
    out = {}
    for key, value in mapping.items():
        if key not in infos:
            close = difflib.get_close_matches(str(key), list(infos), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"the fields of {cls.__name__} are listed by --help"
            raise ConfigError(f"{where}.{key}", value, f"unknown key; {hint}")
        out[key] = coerce(infos[key], value, f"{where}.{key}")
    return out


def read_config_file(path: str | Path, section: str, other: str) -> tuple[dict, str]:
    """The ``section`` ("train" or "search") mapping of a configuration file and where it is.

    The file (YAML, or JSON when it ends in ``.json``) holds either ``{section: {...}}`` (a run's
    own ``config.json`` also has ``schema_version``, ``kind`` and ``runtime``, which are skipped)
    or the plain field mapping. A file of the ``other`` command says so."""
    from nas.arch import read_bounded

    p = Path(path)
    if not p.is_file():
        raise ConfigError("--config", str(path), "a YAML or JSON file")
    text = read_bounded(p)
    if p.suffix == ".json":
        try:
            d = json.loads(text)
        except ValueError as e:
            raise ConfigError(str(p), "<not valid JSON>", f"a configuration file ({str(e).splitlines()[0]})") from None
    else:
        import yaml

        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(str(p), "<not valid YAML>", f"a configuration file ({str(e).splitlines()[0]})") from None
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(str(p), d, f"a mapping: {{{section}: {{field: value}}}} or {{field: value}}")
    if other in d or d.get("kind") == other:
        raise ConfigError("--config", str(p), f"a {section} configuration; this file holds a {other} one "
                          f"(use it with shiftaddaug {other} --config)")
    if section in d:
        for k in d:
            if k not in (section, "schema_version", "kind", "runtime"):
                raise ConfigError(f"{p}.{k}", d[k], f"unknown key next to {section!r}; allowed: {section}, schema_version, kind, runtime")
        return d[section], f"{p}.{section}"
    return d, str(p)


def config_layers(cls: type, config_file: str | Path | None, section: str, other: str, overrides: dict[str, Any],
                  check_overrides: bool = True) -> list[dict[str, Any]]:
    """The sources of a configuration, lowest priority first: the fields of ``config_file`` (YAML or
    JSON, ``read_config_file``), then ``overrides`` (command-line flags or Python keyword
    arguments; checked like a file's unless argparse parsed them already). The one way the
    commands and the Python API read ``--config`` / ``config=``."""
    layers = []
    if config_file is not None:
        mapping, where = read_config_file(config_file, section, other)
        layers.append(from_mapping(cls, mapping, where))
    layers.append(from_mapping(cls, overrides, section) if check_overrides else dict(overrides))
    return layers


def merged(layers: list[dict[str, Any]]) -> dict[str, Any]:
    """The layers of ``config_layers`` as one mapping, later layers winning."""
    out: dict[str, Any] = {}
    for layer in layers:
        out.update(layer)
    return out
