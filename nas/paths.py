"""Where the toolkit reads its own data and where it writes the user's.

Shipped data is package data, read with ``importlib.resources`` from the installed package:

* ``SEARCH_SPACES``: the search spaces (``*.yaml``) and, under ``baselines/``, the zoo (``*.json``);
* ``LATENCY_TABLES``: hardware files (``*.yaml``) and the shipped lookup tables (``*.csv``).

In the source repository they are the top-level folders ``search_spaces/`` and ``latency_tables/``
(the copies people browse and edit); ``nas/resources/`` holds two symbolic links to them, which
an editable install reads through and which building a wheel replaces by the files themselves
(``setup.cfg``, ``[options.package_data]``). The package never writes there.

What the user computes goes to the working directory: runs to ``./runs`` (``runs_dir``), lookup
tables built with ``shiftaddaug lut build`` to ``./latency_tables`` (``user_tables_dir``) unless
``--out`` says otherwise.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def _resource_dir(name: str) -> Path:
    d = files("nas") / "resources" / name
    if not isinstance(d, Path):  # e.g. imported from a zip archive: the data must be files on disk
        raise RuntimeError(f"shiftaddaug reads its data from files on disk; {d} is not one (install the wheel unpacked)")
    return d


SEARCH_SPACES = _resource_dir("search_spaces")
BASELINES = SEARCH_SPACES / "baselines"
LATENCY_TABLES = _resource_dir("latency_tables")


def runs_dir() -> Path:
    """Where new runs go by default: ``./runs`` of the working directory."""
    return Path.cwd() / "runs"


def new_run_dir(name: str) -> Path:
    """``./runs/<timestamp>-<name>``: where a new run goes when no directory is given."""
    import time

    return runs_dir() / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"


def user_tables_dir() -> Path:
    """Where lookup tables a user builds go by default: ``./latency_tables`` of the working directory."""
    return Path.cwd() / "latency_tables"


def shipped_name(path: str | Path) -> str:
    """``latency_tables/<file>`` or ``search_spaces/<file>`` for a shipped data file (the same text in a
    checkout and in an installed package), else the path as given."""
    p = Path(path).resolve()
    for d in (LATENCY_TABLES, SEARCH_SPACES):
        try:
            return str(Path(d.name) / p.relative_to(d.resolve()))
        except ValueError:
            continue
    return str(path)
