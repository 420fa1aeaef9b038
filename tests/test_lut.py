"""Lookup tables: space enumeration, round trips, resumable builds, pricing, malformed files, commands."""

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nas.cli import lut_main
from nas.cost.energy import price_arch
from nas.cost.hardware import load_hardware
from nas.cost.layers import arch_layers
from nas.cost.shapes import arch_list_layers, space_layers
from nas.cost.tablefile import RowKey
from nas.cost.tables import EnergyTable, LookupTable
from nas.errors import ConfigError
from nas.models.zoo import zoo_arch
from nas.paths import LATENCY_TABLES
from nas.space import SearchSpace

TINY = SearchSpace.load("tiny")
PREBUILT = LATENCY_TABLES / "tiny-eyeriss-45nm-32bit-energy.csv"


def sample(n, seed=0, ops=("mult", "shift", "add")):
    rng = random.Random(seed)
    return [TINY.sample(rng, f"a{i}").with_ops(rng.choice(ops)) for i in range(n)]


def test_space_layers_cover_every_sampled_arch():
    keys = {RowKey.of(L, True) for L in space_layers(TINY, ("mult", "shift", "add"))}
    used = set()
    for a in sample(150, seed=1):
        for L in arch_layers(a):
            k = RowKey.of(L, True)
            assert k in keys, L
            used.add(k)
    assert len(used) > 0.9 * len(keys)  # the enumeration is tight: (almost) every shape is reachable
    mins = {RowKey.of(L, True) for L in arch_layers(TINY.min_arch())}
    maxs = {RowKey.of(L, True) for L in arch_layers(TINY.max_arch())}
    assert mins <= keys and maxs <= keys


def test_space_layers_with_se_and_paper_space():
    d = TINY.to_dict()
    d["stages"][2]["se"] = True
    space = SearchSpace.from_dict(d)
    keys = {RowKey.of(L, True) for L in space_layers(space, ("shift",))}
    rng = random.Random(3)
    for _ in range(30):
        a = space.sample(rng).with_ops("shift")
        for L in arch_layers(a):
            assert RowKey.of(L, True) in keys
    paper = SearchSpace.load("paper160")
    assert len(space_layers(paper, ("mult",))) > 100
    with pytest.raises(ConfigError, match="op: got 'div'"):
        space_layers(TINY, ("div",))


def energy_table(archs, path=None, **kw):
    t = LookupTable.for_energy("eyeriss-45nm", 32, path=path, **kw)
    t.build(arch_list_layers(archs), progress=False)
    return t


def test_energy_round_trip_and_price_matches_model(tmp_path):
    archs = sample(6)
    t = energy_table(archs, tmp_path / "t.csv")
    assert t.path.exists() and len(t) > 10
    u = LookupTable.load(t.path)
    assert isinstance(u, EnergyTable) and u.kind == u.metric == "energy" and u.header["hardware"] == "eyeriss-45nm" and u.header["bits"] == 32
    assert u.header["schema_version"] == 1 and u.header["tool_version"] and u.header["created"]
    assert u.entries.keys() == t.entries.keys()
    for k, v in t.entries.items():
        for c, x in v.items():
            assert u.entries[k][c] == (pytest.approx(x, rel=1e-11) if isinstance(x, float) else x)
    saved = u.save(tmp_path / "u.csv")  # stamps header["updated"] with the time of this save
    assert LookupTable.load(saved).to_text() == u.to_text()  # stable once written
    for a in archs:
        p = u.price(a)
        direct = price_arch(a)
        assert p.energy_mJ == pytest.approx(direct.energy_mJ, rel=1e-9)
        assert p.latency_ms == pytest.approx(direct.latency_ms, rel=1e-9)
        assert [L.name for L, _ in p.rows] == [L.name for L in arch_layers(a)]
        assert u.cost(a) == p.energy_mJ
        row = p.to_json_dict()["layers"]
        assert sum(r["energy_mJ"] for r in row) == pytest.approx(p.energy_mJ)


def test_missing_layer_error_or_compute(tmp_path):
    t = energy_table(sample(2, seed=5, ops=("mult",)), tmp_path / "t.csv")
    other = zoo_arch("mbv2-tiny", "shift", 32, 10)
    with pytest.raises(ConfigError) as e:
        t.price(other)
    msg = str(e.value)
    assert "layer stem of mbv2-tiny" in msg and "shiftaddaug-lut build" in msg and "\n" not in msg
    n = len(t)
    p = t.price(other, on_missing="compute")
    assert len(t) > n and "stem" in p.computed
    assert p.energy_mJ == pytest.approx(price_arch(other).energy_mJ, rel=1e-9)
    assert t.price(other).computed == []  # now in the table
    with pytest.raises(ConfigError, match="on_missing"):
        t.price(other, on_missing="ignore")


def test_build_is_incremental_and_resumable(tmp_path, monkeypatch):
    items = arch_list_layers(sample(8, seed=2))
    path = tmp_path / "t.csv"
    t = LookupTable.for_energy(path=path)
    calls = {"n": 0}
    real = EnergyTable.compute

    def flaky(self, layer):
        calls["n"] += 1
        if calls["n"] == 23:
            raise KeyboardInterrupt  # killed mid-build
        return real(self, layer)

    monkeypatch.setattr(EnergyTable, "compute", flaky)
    with pytest.raises(KeyboardInterrupt):
        t.build(items, progress=False, flush_every=10)
    monkeypatch.setattr(EnergyTable, "compute", real)
    saved = LookupTable.load(path)
    assert len(saved) >= 20  # flushed rows survive (and the file is valid)
    resumed = LookupTable.open(path, lambda: LookupTable.for_energy())
    added = resumed.build(items, progress=False)
    total = len(resumed.missing(items)) + len(resumed)
    assert added == total - len(saved) and len(LookupTable.load(path)) == total
    assert resumed.build(items, progress=False) == 0


def test_energy_table_for_a_space(tmp_path):
    from nas.cost.tables import energy_table

    path = tmp_path / "e.csv"
    t = energy_table(TINY, ops=("add",), path=path)
    assert path.exists() and t.header["space"] == "tiny" and t.header["ops"] == ["add"]
    a = TINY.sample(random.Random(4)).with_ops("add")
    assert t.price(a).energy_mJ == pytest.approx(price_arch(a).energy_mJ, rel=1e-9)
    assert len(energy_table(TINY, ops=("add",), path=path)) == len(t)  # reopened, nothing to add


def test_open_refuses_a_table_built_differently(tmp_path):
    path = tmp_path / "t.csv"
    energy_table(sample(1), path)
    with pytest.raises(ConfigError, match="header bits: got 32; this build uses 8"):
        LookupTable.open(path, lambda: LookupTable.for_energy(bits=8))


def test_prebuilt_tiny_table_is_current():
    t = LookupTable.load(PREBUILT)
    assert t.header["hardware_fingerprint"] == load_hardware().fingerprint
    charged = [L for L in space_layers(TINY, ("mult", "shift", "add")) if t.covers(L)]
    assert t.header["space"] == "tiny" and len(t) == len({t.key(L) for L in charged})
    for a in sample(20, seed=9):
        assert t.price(a).energy_mJ == pytest.approx(price_arch(a).energy_mJ, rel=1e-9)
    paper = SearchSpace.load("paper160")
    t = LookupTable.load(LATENCY_TABLES / "paper160-eyeriss-45nm-32bit-energy.csv")
    assert t.header["hardware_fingerprint"] == load_hardware().fingerprint
    rng = random.Random(0)
    for op in ("mult", "shift", "add"):
        a = paper.sample(rng).with_ops(op)
        assert t.price(a).energy_mJ == pytest.approx(price_arch(a).energy_mJ, rel=1e-9)


GOOD = """# schema_version: 1
# kind: energy
# hardware: eyeriss-45nm
# hardware_fingerprint: x
# bits: 32
kind,part,op,in_channels,out_channels,kernel_size,stride,groups,in_hw,bias,energy_mJ,latency_ms,compute_mJ,dram_mJ,gb_mJ,noc_mJ,rf_mJ,tiling
pointwise,,mult,8,16,1,1,1,8,false,0.001,0.002,0.0001,0.0005,0.0001,0.0001,0.0002,N0=1
"""


@pytest.mark.parametrize(
    "edit, where",
    [
        (lambda s: s.replace("# schema_version: 1\n", ""), "schema_version"),
        (lambda s: s.replace("schema_version: 1", "schema_version: 7"), "schema_version: got 7"),
        (lambda s: s.replace("kind: energy", "kind: power"), "kind: got 'power'"),
        (lambda s: "\n".join(line for line in s.splitlines() if not line.startswith("#")), ":1"),
        (lambda s: s.replace("# bits: 32", "# bits: [32"), "t.csv:5"),
        (lambda s: s.replace(",rf_mJ,", ","), "t.csv:6"),
        (lambda s: s.replace("0.001,0.002", "0.001,fast"), "t.csv:7:latency_ms"),
        (lambda s: s.replace("0.001,0.002", "-0.001,0.002"), "t.csv:7:energy_mJ"),
        (lambda s: s.replace("0.001,0.002", "nan,0.002"), "t.csv:7:energy_mJ"),
        (lambda s: s.replace(",8,16,", ",eight,16,"), "t.csv:7:in_channels"),
        (lambda s: s.replace(",false,", ",maybe,"), "t.csv:7:bias"),
        (lambda s: s.replace(",mult,", ",div,"), "t.csv:7:op"),
        (lambda s: s.replace("pointwise,,", "warp,,"), "t.csv:7:kind"),
        (lambda s: s.replace(",N0=1", ""), "t.csv:7"),
        (lambda s: s + s.splitlines()[-1] + "\n", "t.csv:8"),
        (lambda s: s.replace("tiling", "tiling,extra") .replace("N0=1", "N0=1,3"), "t.csv:6:extra"),
    ],
)
def test_malformed_tables_rejected_clearly(tmp_path, edit, where):
    p = tmp_path / "t.csv"
    p.write_text(GOOD)
    LookupTable.load(p)  # the unedited file is valid
    p.write_text(edit(GOOD))
    with pytest.raises(ConfigError) as e:
        LookupTable.load(p)
    assert where in str(e.value) and "\n" not in str(e.value)


def test_load_missing_file_and_binary(tmp_path):
    with pytest.raises(ConfigError, match="table: got '/nope.csv'"):
        LookupTable.load("/nope.csv")
    p = tmp_path / "b.csv"
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not UTF-8"):
        LookupTable.load(p)


def test_fingerprint_mismatch_blocks_compute(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text(GOOD)
    t = LookupTable.load(p)
    with pytest.raises(ConfigError, match="fingerprint"):
        t.price(zoo_arch("mbv2-tiny"), on_missing="compute")


# -------------------------------------------------------------------------------- commands


def run(capsys, *argv):
    rc = lut_main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_build_resume_show_price(capsys, tmp_path):
    out_csv = tmp_path / "tiny.csv"
    rc, out, _ = run(capsys, "build", "--space", "tiny", "--hardware", "eyeriss-45nm", "--op", "shift", "--out", str(out_csv), "--no-progress")
    assert rc == 0 and "added" in out and out_csv.exists()
    n = len(LookupTable.load(out_csv))
    rc, out, _ = run(capsys, "build", "--space", "tiny", "--op", "shift", "--out", str(out_csv), "--no-progress")
    assert rc == 0 and f"{n} rows (0 added, {n} already there)" in out
    rc, out, _ = run(capsys, "show", str(out_csv), "--rows", "3")
    assert rc == 0 and "kind: energy" in out and "hardware: eyeriss-45nm" in out and "more rows" in out
    arch_file = tmp_path / "a.json"
    TINY.sample(random.Random(0), "mine").save(arch_file)
    rc, out, _ = run(capsys, "price", str(out_csv), "--arch", str(arch_file), "--op", "shift", "--json")
    d = json.loads(out)
    assert rc == 0 and d["energy_mJ"] == pytest.approx(price_arch(TINY.sample(random.Random(0)).with_ops("shift")).energy_mJ)
    rc, out, err = run(capsys, "price", str(out_csv), "--arch", str(arch_file), "--op", "add")
    assert rc == 2 and "no row for this layer shape" in err and err.count("\n") == 1
    rc, out, _ = run(capsys, "price", str(out_csv), "--arch", str(arch_file), "--op", "add", "--compute-missing")
    assert rc == 0 and "computed and added" in out


def test_cli_build_from_archs(capsys, tmp_path):
    a = tmp_path / "a.json"
    zoo_arch("mbv2-tiny", "mult", 32, 10).save(a)
    out_csv = tmp_path / "x.csv"
    rc, out, _ = run(capsys, "build", "--arch", str(a), "--op", "add", "--bits", "8", "--out", str(out_csv), "--no-progress")
    t = LookupTable.load(out_csv)
    assert rc == 0 and t.header["bits"] == 8 and t.header["archs"] == ["mbv2-tiny"]
    assert t.price(zoo_arch("mbv2-tiny", "add", 32, 10)).energy_mJ == pytest.approx(
        price_arch(zoo_arch("mbv2-tiny", "add", 32, 10), bits=8).energy_mJ, rel=1e-9
    )


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["build", "--space", "nope"], "error: space: got 'nope'"),
        (["build", "--space", "tiny", "--hardware", "nope"], "error: hardware: got 'nope'"),
        (["show", "/does/not/exist.csv"], "error: table: got '/does/not/exist.csv'"),
        (["build", "--space", "tiny", "--kind", "latency", "--device", "cuda"], None),
    ],
)
def test_cli_errors_one_line(capsys, argv, msg):
    import torch

    if msg is None:
        if torch.cuda.is_available():
            pytest.skip("CUDA present")
        msg = "error: device: got 'cuda'"
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and err.startswith(msg) and err.count("\n") == 1


def test_console_script_installed():
    exe = shutil.which("shiftaddaug-lut", path=str(Path(sys.executable).parent))
    assert exe, "pip install -e . should install the console script"
    r = subprocess.run([exe, "show", str(PREBUILT), "--rows", "1"], capture_output=True, text=True)
    assert r.returncode == 0 and "schema_version: 1" in r.stdout
