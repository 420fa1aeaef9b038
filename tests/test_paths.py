"""Shipped data is package data (read with importlib.resources, inside the installed package); what
the user computes goes to the working directory (./runs, ./latency_tables)."""

import configparser
import fnmatch
import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import nas
from nas import paths

REPO = Path(__file__).resolve().parents[1]


def _shipped_files() -> set[str]:
    """The data files of the two top-level folders, as package paths (``nas/resources/...``)."""
    out = set()
    for folder in ("search_spaces", "latency_tables"):
        for p in (REPO / folder).rglob("*"):
            if p.is_file() and "__pycache__" not in p.parts:
                out.add(f"nas/resources/{folder}/{p.relative_to(REPO / folder).as_posix()}")
    return out


def test_shipped_data_is_read_from_the_package():
    pkg = Path(nas.__file__).resolve().parent
    for d in (paths.SEARCH_SPACES, paths.BASELINES, paths.LATENCY_TABLES):
        assert d.is_dir() and pkg / "resources" in d.parents
    assert (paths.SEARCH_SPACES / "tiny.yaml").is_file() and (paths.BASELINES / "mcunet.json").is_file()
    assert (paths.LATENCY_TABLES / "eyeriss-45nm.yaml").is_file()
    assert paths.shipped_name(paths.LATENCY_TABLES / "eyeriss-45nm.yaml") == "latency_tables/eyeriss-45nm.yaml"
    assert paths.shipped_name("/elsewhere/x.csv") == "/elsewhere/x.csv"


def test_every_data_file_is_declared_package_data():
    """setup.cfg's package_data patterns cover every file of search_spaces/ and latency_tables/
    (a new kind of file there would otherwise be missing from a wheel)."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    patterns = [f"nas/{line.strip()}" for line in cfg["options.package_data"]["nas"].splitlines() if line.strip()]
    missing = sorted(f for f in _shipped_files() if not any(fnmatch.fnmatchcase(f, pat) for pat in patterns))
    assert not missing, f"not in setup.cfg [options.package_data]: {missing}"


def test_runs_and_user_tables_go_to_the_working_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert paths.runs_dir() == tmp_path / "runs" and paths.new_run_dir("x").parent == tmp_path / "runs"
    assert paths.user_tables_dir() == tmp_path / "latency_tables"
    from nas.cli import main

    assert main(["cost", "--model", "mcunet", "--json"]) == 0  # zoo and hardware from the package, from anywhere
    assert '"op": "mult"' in capsys.readouterr().out and not any(tmp_path.iterdir())  # and nothing written


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None or shutil.which("git") is None,
                    reason="building a wheel here needs setuptools in this environment")
def test_a_wheel_holds_the_data_files_themselves(tmp_path):
    """The links in nas/resources become the files in a wheel (CI also installs one and runs it)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("nas", "search_spaces", "latency_tables"):
        shutil.copytree(REPO / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp_path / "wheel"), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = (tmp_path / "wheel").glob("shiftaddaug-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    assert _shipped_files() <= names, sorted(_shipped_files() - names)
    assert "nas/cli/__main__.py" in names and "nas/py.typed" in names
    entry = zipfile.ZipFile(whl).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    for verb in ("", "-search", "-train", "-cost", "-lut", "-export"):
        assert f"shiftaddaug{verb} = nas.cli:" in entry
