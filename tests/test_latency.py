"""Measured latency: structure of the measurements and of latency tables (not timing-sensitive)."""

import math
import random

import pytest
import torch

from nas.cost.latency import (
    Timing,
    check_device,
    device_name,
    layer_callable,
    measure_arch,
    measure_archs,
    measure_layer,
    measure_layers,
    measure_overhead,
    time_calls,
    torch_threads,
)
from nas.cost.layers import Layer, arch_layers
from nas.cost.shapes import arch_list_layers, space_cover_archs, space_layers
from nas.cost.tablefile import RowKey
from nas.cost.tables import EnergyTable, LatencyTable, LookupTable
from nas.errors import ConfigError
from nas.models.static import build_model
from nas.models.zoo import zoo_arch
from nas.space import SearchSpace

FAST = dict(warmup=1, repeats=3)
NO_OVERHEAD = {"network": 0.001, "block": 0.0005}


def ok(t: Timing, repeats=3):
    assert isinstance(t, Timing) and t.repeats == repeats
    assert t.median_ms > 0 and t.mean_ms > 0 and t.std_ms >= 0 and math.isfinite(t.mean_ms)


@pytest.mark.parametrize("op", ["mult", "shift", "add"])
def test_every_layer_kind_runs_as_real_code(op):
    a = zoo_arch("mbv3-w0.35", op, 32, 10)  # SE, hswish, post-pool conv, residuals
    layers = arch_layers(a)
    assert {L.kind for L in layers} == {"dense", "pointwise", "depthwise", "se", "linear", "pool", "residual"}
    seen = set()
    with torch.no_grad():
        for L in layers:
            k = (L.kind, L.part, L.op)
            if k in seen:
                continue
            seen.add(k)
            out = layer_callable(L)()
            assert isinstance(out, torch.Tensor) and out.numel() > 0


def test_callable_output_shapes_match_the_network():
    a = zoo_arch("mbv2-tiny", "mult", 32, 10)
    shapes = {}
    m = build_model(a).eval()

    def hook(name):
        def f(mod, inp, out):
            shapes[name] = tuple(out.shape)
        return f

    mods = dict(m.named_modules())
    for L in arch_layers(a):
        if L.kind in ("dense", "pointwise", "depthwise"):
            mods[L.path].register_forward_hook(hook(L.name))  # the conv; its ConvBNAct adds BN and act
    with torch.no_grad():
        m(torch.zeros(1, 3, 32, 32))
        for L in arch_layers(a):
            if L.name in shapes:
                assert tuple(layer_callable(L)().shape) == shapes[L.name]


def test_layer_acts():
    from nas.models.static import ConvBNAct

    a = zoo_arch("mbv3-w0.35", "mult", 32, 10)
    layers = arch_layers(a)
    acts = {L.name: L.act for L in layers}
    assert acts["stem"] == "hswish" and acts["classifier"] == "none" and acts["post_pool"] == "hswish"
    assert acts["s0.b0.dw"] == a.stages[0].blocks[0].act and acts["s0.b0.project"] == "none"
    se = [L for L in layers if L.kind == "se"]
    assert se and all(L.act == "none" for L in se)  # the SE convs' activations belong to their SE pieces
    by_path = {L.path: L for L in layers}
    names = {"relu": "ReLU", "relu6": "ReLU6", "hswish": "Hardswish", "none": "Identity"}
    cbas = [(n, m) for n, m in build_model(a).named_modules() if isinstance(m, ConvBNAct)]
    assert len(cbas) == sum(L.kind in ("dense", "pointwise", "depthwise") for L in layers)
    for name, cba in cbas:  # the activation each conv-BN-activation module applies is its record's
        assert type(cba.act).__name__ == names[by_path[f"{name}.conv"].act], name


def test_measure_layer_arch_and_threads_restored():
    before = torch.get_num_threads()
    L = Layer("pw", "pointwise", "mult", 8, 16, 1, 1, 1, 8, 8, bn=True)
    ok(measure_layer(L, threads=1, **FAST))
    ok(measure_arch(zoo_arch("mbv2-tiny", "mult", 32, 10), threads=1, **FAST))
    assert torch.get_num_threads() == before
    with torch_threads(1) as n:
        assert n == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ConfigError, match="threads: got 0"):
        with torch_threads(0):
            pass


def test_round_robin_group_and_archs():
    a = zoo_arch("mbv2-tiny", "shift", 32, 10)
    res = measure_layers(arch_layers(a)[:6], **FAST)
    assert len(res) == 6
    for t in res:
        ok(t)
    for t in measure_archs([a, a.with_ops("add")], **FAST):
        ok(t)


def test_time_calls_counts_and_validates():
    calls = []
    t = time_calls(lambda: calls.append(1), warmup=2, repeats=5)
    assert len(calls) == 7 and t.repeats == 5 and t.warmup == 2
    with pytest.raises(ConfigError, match="repeats"):
        time_calls(lambda: None, repeats=0)
    with pytest.raises(ConfigError, match="warmup"):
        time_calls(lambda: None, warmup=-1)


def test_bigger_layer_not_faster_by_much():
    # robust sanity check only: a 64x larger conv is not faster than a tiny one (generous margin)
    small = Layer("pw", "pointwise", "mult", 8, 8, 1, 1, 1, 4, 4, bn=True)
    big = Layer("pw", "pointwise", "mult", 128, 256, 1, 1, 1, 32, 32, bn=True)
    ts = measure_layers([small, big], warmup=2, repeats=15)
    assert ts[1].median_ms > 0.5 * ts[0].median_ms


def test_devices():
    assert device_name("cpu").startswith("cpu-")
    assert check_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="device: got 'tpu'"):
        check_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            check_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_measurement():
    ok(measure_layer(Layer("pw", "pointwise", "mult", 8, 16, 1, 1, 1, 8, 8, bn=True), device="cuda", **FAST))
    t = LookupTable.for_latency("cuda", 1, 1, 3, overhead_ms=NO_OVERHEAD)
    assert t.header["device"].startswith("cuda-")


def test_overhead_is_small_and_nonnegative():
    ov = measure_overhead(warmup=5, repeats=50)
    assert set(ov) == {"block", "network"}
    assert all(math.isfinite(v) and v > 0 for v in ov.values())  # a measured time (how small: benchmarks, not tests)


def test_latency_table_build_round_trip_price_calibrate(tmp_path):
    space = SearchSpace.load("tiny")
    rng = random.Random(0)
    archs = [space.sample(rng, f"a{i}") for i in range(2)]
    path = tmp_path / "lat.csv"
    t = LookupTable.for_latency("cpu", 1, 1, 3, path=path, overhead_ms=NO_OVERHEAD, space="tiny")
    layers = arch_list_layers(archs, ("mult",))
    assert t.build(layers, progress=False) == len({RowKey.of(L, True) for L in layers})
    u = LookupTable.load(path)
    h = u.header
    assert u.kind == "latency" and h["threads"] == 1 and h["warmup"] == 1 and h["repeats"] == 3
    assert h["statistic"] == "median" and h["device"].startswith("cpu-") and h["torch_version"]
    assert u.key_columns[-1] == "act" and len(u) == len(t)
    p = u.price(archs[0])
    n_blocks = sum(len(s.blocks) for s in archs[0].stages)
    assert p.overhead_ms == pytest.approx(0.001 + 0.0005 * n_blocks)
    assert p.latency_ms == pytest.approx(sum(r["latency_ms"] for _, r in p.rows) + p.overhead_ms)
    assert all(r is not None for _, r in p.rows)  # latency tables price every layer
    cal = u.calibrate(archs[:1], repeats=3)
    assert set(cal["layer"]) == {"mult", "shift", "add"} and all(v >= 0 for v in cal["layer"].values())
    assert u.header["overhead_ms"]["layer"] == cal["layer"]
    u.save()
    v = LookupTable.load(path)
    assert v.header["overhead_ms"]["layer"] == pytest.approx(cal["layer"])
    extra = sum(cal["layer"][L.op] for L, _ in p.rows)
    assert v.price(archs[0]).overhead_ms == pytest.approx(p.overhead_ms + extra)
    assert isinstance(v, LatencyTable) and not hasattr(EnergyTable, "calibrate")  # only latency tables are calibrated
    assert v.cost(archs[0]) == v.price(archs[0]).latency_ms and v.metric == "latency"


@pytest.mark.parametrize("space_name, ops", [("tiny", ("mult", "shift", "add")), ("paper160", ("add",))])
def test_cover_archs_contain_every_shape(space_name, ops):
    space = SearchSpace.load(space_name)
    keys = {RowKey.of(L, True) for L in space_layers(space, ops)}
    archs = list(space_cover_archs(space, ops, seed=1))
    covered = {RowKey.of(L, True) for a in archs for L in arch_layers(a)}
    assert keys <= covered and len(archs) < len(keys) / 3
    for a in archs:
        space.validate(a)
    some = set(list(keys)[:40])
    rest = list(space_cover_archs(space, ops, skip=keys - some))
    assert some <= {RowKey.of(L, True) for a in rest for L in arch_layers(a)} and len(rest) <= 40


def test_build_space_times_layers_inside_archs(tmp_path, monkeypatch):
    import nas.cost.latency as lat

    groups = []
    real = lat.measure_layers

    def spy(layers, **kw):
        groups.append([L.name for L in layers])
        return real(layers, **kw)

    monkeypatch.setattr(lat, "measure_layers", spy)
    space = SearchSpace.load("tiny")
    path = tmp_path / "lat.csv"
    t = LookupTable.for_latency("cpu", 1, 0, 1, path=path, overhead_ms=NO_OVERHEAD)
    added = t.build_space(space, ("mult",), progress=False, flush_every=40)
    assert added == len(t) == len({RowKey.of(L, True) for L in space_layers(space, ("mult",))})
    assert groups and all(g[0] == "stem" and g[-1] == "classifier" for g in groups)  # whole networks
    assert len(LookupTable.load(path)) == len(t)
    assert t.build_space(space, ("mult",), progress=False) == 0


def test_cli_latency_build(tmp_path, capsys):
    from nas.cli import lut_main

    out = tmp_path / "lat.csv"
    argv = ["build", "--space", "tiny", "--kind", "latency", "--op", "mult", "--repeats", "1", "--warmup", "0",
            "--calibrate", "1", "--out", str(out), "--no-progress"]
    assert lut_main(argv) == 0
    msg = capsys.readouterr().out
    assert "added" in msg and "in-network overhead per layer" in msg
    t = LookupTable.load(out)
    assert t.header["threads"] == 1 and set(t.header["overhead_ms"]["layer"]) == {"mult", "shift", "add"}
    assert lut_main(argv) == 0 and "(0 added" in capsys.readouterr().out


def test_latency_table_resume_refuses_other_settings(tmp_path):
    path = tmp_path / "lat.csv"
    t = LookupTable.for_latency("cpu", 1, 1, 3, path=path, overhead_ms=NO_OVERHEAD)
    t.build(arch_list_layers([zoo_arch("mbv2-tiny", "mult", 32, 10)])[:3], progress=False)
    with pytest.raises(ConfigError, match="header threads: got 1; this build uses 2"):
        LookupTable.open(path, lambda: LookupTable.for_latency("cpu", 2, 1, 3, overhead_ms=NO_OVERHEAD))
    again = LookupTable.open(path, lambda: LookupTable.for_latency("cpu", 1, 1, 3, overhead_ms=NO_OVERHEAD))
    assert len(again) == 3


def test_combine_takes_medians():
    L = Layer("pw", "pointwise", "mult", 8, 16, 1, 1, 1, 8, 8, bn=True)
    tabs = []
    for v in (1.0, 3.0, 2.0):
        t = LookupTable.for_latency("cpu", 1, 1, 3, overhead_ms=NO_OVERHEAD)
        t.add(L, {"latency_ms": v, "mean_ms": v, "std_ms": 0.1, "repeats": 3})
        tabs.append(t)
    c = LatencyTable.combine(tabs)
    assert c.entries[c.key(L)] == {"latency_ms": 2.0, "mean_ms": 2.0, "std_ms": 0.1, "repeats": 9}
    assert c.header["passes"] == 3


def test_calibration_splits_the_gap_by_operator(monkeypatch):
    import nas.cost.latency as lat

    # fake timings: every layer 1 ms alone; in a network mult layers cost 0.1 ms more, add 0.3 ms
    def fake_layers(layers, **kw):
        return [Timing(1.0, 1.0, 0.0, 3, 1) for _ in layers]

    def fake_archs(archs, **kw):
        out = []
        for a in archs:
            ls = arch_layers(a)
            extra = sum(0.1 if L.op == "mult" else 0.3 if L.op == "add" else 0.0 for L in ls)
            out.append(Timing(len(ls) + extra, 0, 0, 3, 1))
        return out

    monkeypatch.setattr(lat, "measure_layers", fake_layers)
    monkeypatch.setattr(lat, "measure_archs", fake_archs)
    space = SearchSpace.load("tiny")
    rng = random.Random(0)
    archs = [space.sample(rng).with_ops(op) for op in ("mult", "add", "mult", "add", "add")]
    cal = lat.calibrate_layer_overhead(archs)
    assert cal["layer"]["mult"] == pytest.approx(0.1) and cal["layer"]["add"] == pytest.approx(0.3)
    assert cal["layer"]["shift"] == pytest.approx(0.1) and cal["archs"] == 5  # no shift archs: mult's


def test_bad_overhead_header_rejected(tmp_path):
    t = LookupTable.for_latency("cpu", 1, 1, 3, overhead_ms=NO_OVERHEAD)
    text = t.to_text().replace("overhead_ms: {network: 0.001, block: 0.0005}", "overhead_ms: {network: -1, block: 0}")
    p = tmp_path / "x.csv"
    p.write_text(text)
    with pytest.raises(ConfigError, match="overhead_ms"):
        LookupTable.load(p)
