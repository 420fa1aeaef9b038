"""setup.cfg's lower bounds are the versions tools/check_lower_bounds.sh installs and tests."""

import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _requires() -> dict[str, str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    out = {}
    for line in cfg["options"]["install_requires"].strip().splitlines():
        m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)\s*", line)
        assert m, f"setup.cfg: {line!r} is not NAME>=VERSION (every core dependency has a tested lower bound)"
        out[m[1].lower()] = m[2]
    return out


def _pinned() -> dict[str, str]:
    out = {}
    for line in (ROOT / "tools" / "lower_bounds.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            out[name.strip().lower()] = version.strip()
    return out


def _release(v: str) -> tuple[int, ...]:
    parts = [int(p) for p in v.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def test_every_lower_bound_is_the_tested_version():
    req, pinned = _requires(), _pinned()
    assert set(req) == set(pinned)
    assert {k: _release(v) for k, v in req.items()} == {k: _release(v) for k, v in pinned.items()}


def test_installed_versions_meet_the_lower_bounds():
    from importlib.metadata import version

    for name, low in _requires().items():
        have = re.match(r"[0-9.]*[0-9]", version(name))[0]
        assert _release(have) >= _release(low), f"{name} {have} is below setup.cfg's {low}"


def test_optuna_has_what_stage_two_uses():
    """Stage two's budget is a constraint (``Trial.set_constraint``), which needs Optuna 5."""
    import optuna

    assert hasattr(optuna.trial.Trial, "set_constraint")
