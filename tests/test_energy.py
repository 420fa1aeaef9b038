"""The paper-compatible energy model: calibration, paper points, hand-computed layers, conventions."""

import dataclasses
import json

import pytest

from nas.cli import cost_main
from nas.cost.counting import layer_cost
from nas.cost.energy import _skip_remove, is_charged, layer_energy, ordered_factorizations, price_arch
from nas.cost.hardware import Hardware, load_hardware
from nas.cost.layers import Layer, arch_layers
from nas.errors import ConfigError
from nas.models.zoo import list_zoo, zoo_arch

# The paper's CIFAR-100 energy plot (docs/method-notes.md, section 7.1) at 160x160, 100 classes, FP32, batch 1.
PAPER = [
    ("mbv2-w0.35", "mult", 2.345),  # the calibration point
    ("mbv3-w0.35", "mult", 1.726),
    ("proxyless-w0.35", "mult", 2.471),
    ("mcunet", "mult", 4.28),
    ("mbv2-w0.35", "add", 1.091),  # AdderNet series
    ("proxyless-w0.35", "add", 1.281),
]
# Published with three digits: 0.697 (AdderNet, MobileNetV3-w0.35), reproduced with the SE convs
# as AddConv (0.6986 mJ; 0.7803 with multiplicative SE convs).
PAPER_3_DIGITS = [("mbv3-w0.35", "add", 0.697)]


def test_calibration_mbv2_mult_2345():
    p = price_arch(zoo_arch("mbv2-w0.35", "mult", 160, 100), bits=32)
    assert abs(p.energy_mJ / 2.345 - 1) < 0.01
    assert round(p.energy_mJ, 3) == 2.345  # reproduces all four published digits


@pytest.mark.parametrize("model, op, paper", PAPER)
def test_paper_points(model, op, paper):
    e = price_arch(zoo_arch(model, op, 160, 100)).energy_mJ
    assert abs(e / paper - 1) < 0.001, e


@pytest.mark.parametrize("model, op, paper", PAPER_3_DIGITS)
def test_paper_points_three_digits(model, op, paper):
    e = price_arch(zoo_arch(model, op, 160, 100)).energy_mJ
    assert abs(e / paper - 1) < 0.01, e
    assert round(e, 3) == 0.699


def test_add_se_convs_priced_as_add():
    a = zoo_arch("mbv3-w0.35", "add", 160, 100)
    p = price_arch(a)
    se = [(L, e) for L, e in p.rows if L.kind == "se" and e.charged]
    assert len(se) == 16 and all(L.op == "add" for L, _ in se)
    assert all(e.dram_mJ == e.gb_mJ == 0 for _, e in se)  # adder layers: DRAM / buffer / NoC free
    # the same network with multiplicative SE convs (the old convention) costs 0.7803 mJ
    mult_se = a.replace(stages=tuple(type(s)(tuple(dataclasses.replace(b, se_op="mult") for b in s.blocks)) for s in a.stages))
    assert mult_se.op_kind == "mixed"
    assert round(price_arch(mult_se).energy_mJ, 4) == 0.7803


def test_paper_shift_point_mbv2():
    # DeepShift series 0.74 mJ, published with two significant digits
    e = price_arch(zoo_arch("mbv2-w0.35", "shift", 160, 100)).energy_mJ
    assert 0.735 <= e < 0.745


@pytest.mark.parametrize("model", list_zoo())
@pytest.mark.parametrize("op", ["mult", "shift", "add"])
def test_every_zoo_model_and_op_is_priced(model, op):
    for res, classes in ((160, 100), (32, 10)):
        p = price_arch(zoo_arch(model, op, res, classes))
        assert p.energy_mJ > 0 and p.latency_ms > 0
        for L, e in p.rows:
            assert e.charged == is_charged(L)
            assert (e.energy_mJ > 0) == e.charged


def test_mf_cheaper_than_mult_and_narrow_cheaper():
    a = zoo_arch("mbv2-w0.35", "mult", 160, 100)
    m = price_arch(a).energy_mJ
    assert price_arch(a.with_ops("shift")).energy_mJ < m
    assert price_arch(a.with_ops("add")).energy_mJ < m
    e8, e16 = price_arch(a, bits=8).energy_mJ, price_arch(a, bits=16).energy_mJ
    assert e8 < e16 < m


def test_hand_computed_one_weight_fc():
    # C = M = N = 1 on a 1x1 map: the only tiling is all ones. Access counts: DRAM 3 (ifmap,
    # weight, ofmap), GB 2, NoC 2, NoC psum 1, RF 2 (ifmap, psum), RF weight 1; one MAC, one cycle.
    L = Layer("fc", "linear", "mult", 1, 1, bias=True)
    e = layer_energy(L)
    w = 32 / 16
    pj = 3.7 + (3 * 200 + 2 * 22.2 + 2 * 7.4 + 3.7 + 2 * 3.7 + 7.4) * w
    assert e.energy_mJ == pytest.approx(pj * 1e-9, rel=1e-12)
    assert e.latency_ms == pytest.approx(1 / 250e6 * 1e3)
    assert e.cycles == 1 and e.candidates == 1
    s = layer_energy(dataclasses.replace(L, op="shift"))
    pj = 0.13 + (3 * 200 + 2 * 22.2 + 2 * 7.4 + 3.7 + 2 * 3.7 + 7.4) * (10 / 16)
    assert s.energy_mJ == pytest.approx(pj * 1e-9, rel=1e-12)
    assert s.latency_ms == pytest.approx(1 / 250e6 * 1e3 / 3.2)
    a = layer_energy(dataclasses.replace(L, op="add"))  # DRAM, buffer and NoC are free
    assert a.energy_mJ == pytest.approx((0.9 + (3.7 + 2 * 3.7 + 7.4) * w) * 1e-9, rel=1e-12)
    assert a.dram_mJ == a.gb_mJ == 0
    e8 = layer_energy(L, bits=8)
    assert e8.energy_mJ == pytest.approx((0.2 + (3 * 200 + 2 * 22.2 + 2 * 7.4 + 3.7 + 2 * 3.7 + 7.4) * 0.5) * 1e-9)


def test_breakdown_sums_and_compute_counts_macs():
    """Compute energy = MACs x unit energy for every charged layer: depthwise convs enter with
    C = in_channels / groups, SE convs as 1x1 convs on a 1x1 map, linears as 1x1 convs."""
    for op, unit in (("mult", 3.7), ("shift", 0.13)):
        a = zoo_arch("mbv3-w0.35", op, 160, 100)  # has depthwise, SE, post-pool conv, classifier
        for L in arch_layers(a):
            e = layer_energy(L)
            if not e.charged:
                continue
            u = 3.7 if L.op == "mult" else unit
            assert e.compute_mJ == pytest.approx(layer_cost(L).macs * u * 1e-9)
            parts = e.compute_mJ + e.dram_mJ + e.gb_mJ + e.noc_mJ + e.rf_mJ
            assert parts == pytest.approx(e.energy_mJ, rel=1e-9)


def test_uncharged_layers_cost_nothing():
    a = zoo_arch("mbv3-w0.35", "mult", 160, 100)
    parts = {L.part for L in arch_layers(a) if not is_charged(L)}
    assert parts == {"pool", "residual", "se_pool", "se_gate"}
    for L in arch_layers(a):
        if not is_charged(L):
            assert layer_energy(L).energy_mJ == 0


def test_tiling_enumeration_order():
    # the reference's divisor order for 12 = 2*2*3 is 12, 4, 6, 2, 3, 1
    assert ordered_factorizations(12, 2) == ((12, 1), (4, 3), (6, 2), (2, 6), (3, 4), (1, 12))
    for n in (1, 7, 16, 96, 1280):
        f = ordered_factorizations(n, 4)
        assert len(set(f)) == len(f)
        assert all(a * b * c * d == n for a, b, c, d in f)
    assert len(ordered_factorizations(1280, 4)) == 165 * 4  # 2^8 * 5: C(11,3) * C(4,3)


def test_reference_remove_while_iterating_quirk():
    items = (("bad", 1), ("bad", 2), ("ok", 3), ("bad", 4), ("bad", 5), ("bad", 6))
    assert _skip_remove(items, lambda t: t[0] == "bad") == [("bad", 2), ("ok", 3), ("bad", 5)]


def test_relaxed_tiling_for_a_conv_to_1x1():
    # The reference has no tiling for a non-FC conv with a 1x1 output (E1 != 1 impossible);
    # the model then treats it as FC-like and says so.
    L = Layer("dw", "depthwise", "mult", 32, 32, 3, 2, 32, 2, 1, bn=True)
    e = layer_energy(L)
    assert e.relaxed and e.energy_mJ > 0
    assert not layer_energy(Layer("dw", "depthwise", "mult", 32, 32, 3, 2, 32, 4, 2, bn=True)).relaxed


def test_results_are_cached_and_batch_scales():
    from nas.cost.energy import _search

    L = Layer("pw", "pointwise", "mult", 32, 64, 1, 1, 1, 20, 20, bn=True)
    first = layer_energy(L)
    hits = _search.cache_info().hits
    assert layer_energy(dataclasses.replace(L, name="other")).energy_mJ == first.energy_mJ
    assert _search.cache_info().hits == hits + 1
    e1, e4 = layer_energy(L).energy_mJ, layer_energy(L, batch=4).energy_mJ
    assert e1 < e4 <= 4 * e1 * 1.0001


def test_hardware_file_loads_with_provenance():
    hw = load_hardware()
    assert hw.name == "eyeriss-45nm" and (hw.pe_rows, hw.pe_cols) == (16, 12)
    assert hw.bits == (32, 16, 8) and hw.clock_MHz == 250
    assert hw.precision(32).mult_pJ == 3.7 and hw.precision(8).shift_pJ == 0.024
    prov = json.loads(hw.provenance)
    assert "hw_utils.py" in prov["model"] and prov["sources"]
    assert hw == Hardware("eyeriss-45nm")  # the file's numbers are the documented defaults
    assert len(hw.fingerprint) == 12 and hw.fingerprint == load_hardware(hw.path).fingerprint


def _write_hw(tmp_path, **changes):
    import yaml

    d = load_hardware().to_dict()
    for k, v in changes.items():
        if v is None:
            d.pop(k)
        else:
            d[k] = v
    p = tmp_path / "hw.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def test_custom_hardware_file(tmp_path):
    p = _write_hw(tmp_path, name="bigger", buffer_words=1 << 20, clock_MHz=500)
    hw = load_hardware(p)
    assert hw.name == "bigger" and hw.fingerprint != load_hardware().fingerprint
    a = zoo_arch("mbv2-w0.35", "mult", 160, 100)
    assert price_arch(a, hw).latency_ms < price_arch(a).latency_ms


@pytest.mark.parametrize(
    "change, field",
    [
        ({"buffer_words": -1}, "buffer_words"),
        ({"pe_array": {"rows": 16}}, "pe_array.cols"),
        ({"access_pJ": {"dram": 200}}, "access_pJ"),
        ({"precisions": {"32": {"mult_pJ": "a lot", "add_pJ": 1, "shift_pJ": 1}}}, "precisions.32.mult_pJ"),
        ({"colour": "blue"}, "colour"),
        ({"name": None}, "name"),
        ({"add": {"free_levels": ["cache"]}}, "add.free_levels"),
    ],
)
def test_bad_hardware_file_one_line(tmp_path, change, field):
    p = _write_hw(tmp_path, **change)
    with pytest.raises(ConfigError) as e:
        load_hardware(p)
    assert field in str(e.value) and "\n" not in str(e.value)


def test_unknown_hardware_and_bits():
    with pytest.raises(ConfigError, match="hardware: got 'nope'.*eyeriss-45nm"):
        load_hardware("nope")
    with pytest.raises(ConfigError, match="bits: got 4"):
        price_arch(zoo_arch("mbv2-tiny"), bits=4)


def test_layer_that_fits_no_tiling(tmp_path):
    hw = load_hardware(_write_hw(tmp_path, buffer_words=8))
    with pytest.raises(ConfigError, match="no tiling fits hardware"):
        layer_energy(Layer("pw", "pointwise", "mult", 32, 64, 1, 1, 1, 20, 20, bn=True), hw)


# -------------------------------------------------------------------------------- the command


def run(capsys, *argv):
    rc = cost_main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cost_json_energy_done_criterion(capsys):
    rc, out, _ = run(capsys, "--model", "mbv2-w0.35", "--op", "mult", "--resolution", "160", "--classes", "100", "--json")
    d = json.loads(out)
    assert rc == 0 and abs(d["energy_mJ"] / 2.345 - 1) < 0.01 and d["latency_ms"] > 0
    assert d["hardware"] == "eyeriss-45nm" and d["bits"] == 32
    assert sum(r["energy_mJ"] for r in d["layers"]) == pytest.approx(d["energy_mJ"])
    assert all("energy_mJ" in r and "latency_ms" in r for r in d["layers"])
    assert d["macs"] > 0  # the op counts are still there


def test_cost_bits_hardware_and_table(capsys, tmp_path):
    rc, out, _ = run(capsys, "--model", "mbv2-tiny", "--op", "add", "--bits", "8", "--json")
    assert rc == 0 and json.loads(out)["bits"] == 8
    p = _write_hw(tmp_path, name="mine")
    rc, out, _ = run(capsys, "--model", "mbv2-tiny", "--hardware", str(p))
    assert rc == 0 and "energy:" in out and "mine, 32 bit" in out and "energy uJ" in out


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["--model", "mcunet", "--hardware", "nope"], "error: hardware: got 'nope'"),
        (["--model", "mcunet", "--bits", "4"], None),  # argparse choices: exit 2 with usage
    ],
)
def test_cost_errors(capsys, argv, msg):
    if msg is None:
        with pytest.raises(SystemExit) as e:
            cost_main(argv)
        assert e.value.code == 2
        return
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and err.startswith(msg) and err.count("\n") == 1
