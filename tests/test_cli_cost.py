"""shiftaddaug-cost: tables, JSON, published figures, one-line errors."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nas.cli import cost_main

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "net-configs"  # real MCUNet / OFA files


def run(capsys, *argv):
    rc = cost_main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_json_published_mbv2(capsys):
    rc, out, _ = run(capsys, "--model", "mbv2-w1.0", "--resolution", "224", "--classes", "1000", "--json")
    assert rc == 0
    d = json.loads(out)
    assert abs(d["macs"] / 300e6 - 1) < 0.01 and 3.4e6 <= d["params"] < 3.55e6  # "3.4-3.5M"
    for key in ("mults", "adds", "shifts", "params", "macs", "layers", "by_kind"):
        assert key in d
    assert d["op"] == "mult" and d["shifts"] == 0


def test_shift_json(capsys):
    rc, out, _ = run(capsys, "--model", "mcunet", "--op", "shift", "--json")
    d = json.loads(out)
    assert rc == 0 and d["shifts"] > 0 and d["op"] == "shift"


def test_table_for_net_config(capsys):
    rc, out, _ = run(capsys, "--arch", str(FIXTURES / "mcunet-320kb-1mb_imagenet.json"))
    assert rc == 0 and "81.79M MACs" in out and "stem" in out


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["--model", "nope"], "error: model: got 'nope'"),
        (["--model", "mcunet", "--resolution", "0"], "error: --resolution: got 0"),
        (["--arch", "/does/not/exist.json"], "error: arch file: got '/does/not/exist.json'"),
    ],
)
def test_errors_are_one_line(capsys, argv, msg):
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and err.startswith(msg) and err.count("\n") == 1


def test_console_script_installed():
    exe = shutil.which("shiftaddaug-cost", path=str(Path(sys.executable).parent))
    assert exe, "pip install -e . should install the console script"
    r = subprocess.run([exe, "--model", "mbv2-tiny", "--json"], capture_output=True, text=True)
    assert r.returncode == 0 and abs(json.loads(r.stdout)["macs"] / 23.5e6 - 1) < 0.01
