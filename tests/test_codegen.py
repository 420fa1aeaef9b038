"""Integer C export (nas.codegen): generation, compilation, bit-exactness, counted operations.

Tiny shift / add / mult networks with a stem, depthwise convs, residual blocks, an SE block,
h-swish, a feature-mix and a post-pool conv go through lowering, C generation, compilation with
the system compiler (-std=c99 -Wall -Wextra -pedantic -Werror) and a bit-for-bit comparison with
the Python integer reference.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

from nas.arch import Arch
from nas.codegen.check import compare_with_counter, compile_program, find_cc, parse_counts, run_program
from nas.codegen.emit_c import count_static_mults, csd_digits, generate_c
from nas.codegen.intnet import ConvNode, Fmt, build_intnet, fmt_for, run_float
from nas.codegen.memory import plan_memory
from nas.codegen.reference import run_int
from nas.cost.layers import arch_layers
from nas.data.transforms import BatchTransform
from nas.errors import ConfigError
from nas.models import build_model
from nas.ops.adder import AdderConv2d
from nas.ops.shift import ShiftConv2d

needs_cc = pytest.mark.skipif(find_cc() is None, reason="no C compiler (cc, gcc or clang) on PATH: C compilation tests skipped")
STRICT = ("-Wextra", "-pedantic")
RES = 12
T1 = BatchTransform(mean=(0.3,), std=(0.3,), augment="none", flip=False, out_channels=3)  # 1 stored channel -> 3


def tiny_arch(op: str, dw_op: str | None = None, act: str = "hswish") -> Arch:
    d = {
        "name": f"tiny-{op}", "resolution": RES, "num_classes": 5,
        "stem": {"out_channels": 8, "kernel_size": 3, "stride": 2, "act": "relu6"},
        "stages": [{"blocks": [
            {"kernel_size": 3, "expand_ratio": 1, "out_channels": 8, "act": "relu6"},  # residual, no expand
            {"kernel_size": 3, "expand_ratio": 2, "mid_channels": 16, "out_channels": 8, "act": act, "se_channels": 8},
            {"kernel_size": 5, "expand_ratio": 3, "mid_channels": 24, "out_channels": 12, "stride": 2, "act": "relu"},
        ]}],
        "feature_mix": {"out_channels": 32, "act": "relu6"},
        "post_pool": {"out_channels": 24, "act": "hswish"},
        "classifier": {"dropout": 0.1},
    }
    arch = Arch.from_dict(d).with_ops(op)
    if dw_op is not None:  # e.g. SE (and depthwise) convs as AddConv in an Add model
        import dataclasses

        stages = tuple(type(s)(tuple(dataclasses.replace(b, dw_op=dw_op) for b in s.blocks)) for s in arch.stages)
        arch = arch.replace(stages=stages)
    return arch


def tiny_model(arch: Arch, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = build_model(arch)
    with torch.no_grad():  # BatchNorm statistics as after training, not the identity
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-1, 1)
                mod.running_var.uniform_(0.5, 4)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
    return m.eval()


def images(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, RES, RES), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


CASES = {
    "shift": lambda: tiny_arch("shift"),
    "add": lambda: tiny_arch("add"),
    "add-se-add": lambda: tiny_arch("add", dw_op="add"),  # SE convs (and depthwise) as AddConv
    "mult": lambda: tiny_arch("mult", act="relu6"),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def lowered(request):
    arch = CASES[request.param]()
    model = tiny_model(arch)
    return request.param, arch, model, build_intnet(model, T1, images(48, 1))


def _build(tmp_path, prog, count=False):
    for name, text in prog.files.items():
        (tmp_path / name).write_text(text)
    exe = tmp_path / ("model-count" if count else "model")
    compile_program(tmp_path, exe, count=count, extra=STRICT)
    return exe


def test_layers_read_their_operator_from_the_module(lowered):
    name, arch, model, net = lowered
    convs = {n.name: n.op for n in net.nodes if isinstance(n, ConvNode)}
    mods = dict(model.named_modules())
    paths = {L.name: L.path for L in arch_layers(arch)}
    for lname, op in convs.items():
        m = mods[paths[lname]]
        expect = "shift" if isinstance(m, ShiftConv2d) else "add" if isinstance(m, AdderConv2d) else "mult"
        assert op == expect or (lname == "classifier" and op == "mult")
    if name == "add-se-add":
        assert convs["s0.b1.se.reduce"] == "add" and convs["s0.b1.se.expand"] == "add"


def test_integer_reference_tracks_the_float_model(lowered):
    """The lowering is a faithful quantisation: with 16-bit activations the integer logits are
    within a small fraction of the float ones and the classes agree."""
    name, arch, model, _ = lowered
    net = build_intnet(model, T1, images(48, 1), act_bits="16")
    x = images(32, 2)
    li = run_int(net, x).double() * 2.0**-net.logit_frac
    with torch.no_grad():
        lf = model(T1(x)).double()
    assert (li - lf).abs().max() <= 2e-2 * lf.abs().max()
    assert (li.argmax(1) == lf.argmax(1)).double().mean() >= 0.9


@needs_cc
def test_c_equals_integer_reference_bit_for_bit(lowered, tmp_path):
    name, arch, model, net = lowered
    x = torch.cat([images(40, 3), torch.zeros(1, 1, RES, RES, dtype=torch.uint8), torch.full((1, 1, RES, RES), 255, dtype=torch.uint8)])
    ref = run_int(net, x)
    results = {}
    for mode in ("csd", "mul"):
        d = tmp_path / mode
        d.mkdir()
        prog = generate_c(net, mode)
        pred, logits, _ = run_program(_build(d, prog), x, d)
        results[mode] = logits
        assert torch.equal(logits, ref), f"{name} {mode}: C differs from the integer reference"
        assert torch.equal(pred, logits.argmax(1))
    assert torch.equal(results["csd"], results["mul"])  # CSD shift-adds == multiplications, exactly


@needs_cc
@pytest.mark.parametrize("op", ["shift", "add"])
def test_c_bit_exact_with_16_bit_activations_and_power_of_two_bn(op, tmp_path):
    """16-bit activations (int64 accumulators in shift layers) and 1-bit BN multipliers."""
    net = build_intnet(tiny_model(tiny_arch(op)), T1, images(16, 1), act_bits="16", mult_bits=1)
    convs = [n for n in net.nodes if isinstance(n, ConvNode) and n.op == op]
    if op == "shift":
        assert any(n.acc_bits == 64 for n in convs)
    assert all(abs(m) & (abs(m) - 1) == 0 for n in convs for m in n.requant.M)  # signed powers of two
    x = images(24, 6)
    prog = generate_c(net, "csd")
    assert all(lo.requant["mul"] == 0 for lo, n in zip(prog.ops, net.nodes) if n in convs and n.act != "hswish")
    _, logits, _ = run_program(_build(tmp_path, prog), x, tmp_path)
    assert torch.equal(logits, run_int(net, x))


@needs_cc
def test_counted_operations(lowered, tmp_path):
    """The counting build executes exactly the generator's loop counts; those agree with
    nas.cost.counting; shift / add convs execute and contain no multiplication."""
    name, arch, model, net = lowered
    prog = generate_c(net, "csd")
    _, _, err = run_program(_build(tmp_path, prog, count=True), images(3, 4), tmp_path)
    counted = parse_counts(err, [n.name for n in net.nodes], 3)
    for lo in prog.ops:
        assert counted[lo.name] == {"loop": lo.loop, "requant": lo.requant}, lo.name
    rows = compare_with_counter(prog.ops, arch)
    assert rows and all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]
    sites = count_static_mults(prog)
    for lo, n in zip(prog.ops, net.nodes):
        assert sites[lo.name]["raw"] == 0
        if lo.op in ("shift", "add"):
            assert lo.loop["mul"] == 0 and counted[lo.name]["loop"]["mul"] == 0
            # CSD requantisation: no multiplication, except h-swish's x * relu6(x + 3)
            hsw = int(n.act == "hswish")
            assert sites[lo.name] == {"loop": 0, "requant": hsw, "raw": 0}
            assert counted[lo.name]["requant"]["mul"] == hsw * lo.outputs
        if lo.op == "mult":
            assert lo.loop["mul"] == lo.terms > 0 and sites[lo.name]["loop"] == 1
    # the conv layers' MAC positions, from the counter and from a direct count of in-bounds taps
    for lo, n in zip(prog.ops, net.nodes):
        if isinstance(n, ConvNode) and not n.linear:
            ones = torch.ones(1, n.cin, *n.inputs[0].shape[1:])
            w = torch.ones(n.cout, n.cin // n.groups, n.kernel, n.kernel)
            inside = int(torch.nn.functional.conv2d(ones, w, None, n.stride, n.pad, 1, n.groups).sum())
            assert lo.terms == (n.cout * (n.cin // n.groups) * n.kernel**2 * math.prod(n.out.shape[1:]) if n.op == "add" else inside)


def test_requant_in_mul_mode_has_one_multiplication_per_output(lowered):
    name, _, _, net = lowered
    prog = generate_c(net, "mul")
    for lo, n in zip(prog.ops, net.nodes):
        if isinstance(n, ConvNode) and n.op in ("shift", "add") and n.bn is not None:
            assert lo.requant["mul"] == lo.outputs + (lo.outputs if n.act == "hswish" else 0) * 2


def test_memory_plan_never_overlaps_live_tensors(lowered):
    _, _, _, net = lowered
    plan = plan_memory(net)
    first, last = {}, {}
    for i, n in enumerate(net.nodes):
        first[n.out.name] = i
        last.setdefault(n.out.name, i)
        for b in n.inputs:
            last[b.name] = i
    sizes = {b.name: b.nbytes for b in net.bufs}
    names = [k for k in plan.offsets]
    for a in names:
        assert plan.offsets[a] % 4 == 0 and plan.offsets[a] + sizes[a] <= plan.arena_bytes
        for b in names:
            if a < b and not (last[a] < first[b] or last[b] < first[a]):
                lo_a, lo_b = plan.offsets[a], plan.offsets[b]
                assert lo_a + sizes[a] <= lo_b or lo_b + sizes[b] <= lo_a, (a, b)
    live = [sum(sizes[k] for k in sizes if first[k] <= i <= last[k]) for i in range(len(net.nodes))]
    live[0] += math.prod(net.input.raw_shape)
    assert plan.peak_live_bytes == max(live)
    assert plan.arena_bytes >= max(live) - math.prod(net.input.raw_shape) - net.logits.nbytes


def test_formats():
    assert fmt_for(6.0, 8, signed=False) == Fmt(8, False, 5)  # ReLU6: 255 / 32 = 7.97 >= 6
    assert fmt_for(6.0, 8, signed=True) == Fmt(8, True, 4)
    assert fmt_for(1.0, 8, signed=False) == Fmt(8, False, 7)  # h-sigmoid gate: 1.0 = 128
    assert fmt_for(1000.0, 8, signed=True) == Fmt(8, True, 0)  # saturates (auto picks 16 bits then)
    assert fmt_for(1000.0, 16, signed=True) == Fmt(16, True, 5)
    f = Fmt(8, True, 4)
    assert f.quantise(torch.tensor([0.03, -0.03, 100.0, -100.0])).tolist() == [0.0, 0.0, 127.0, -128.0]


@pytest.mark.parametrize("act_bits", ["8", "16"])
def test_fixed_widths(act_bits):
    net = build_intnet(tiny_model(tiny_arch("shift")), T1, images(16, 1), act_bits=act_bits)
    assert {b.fmt.bits for b in net.bufs if b is not net.logits} == {int(act_bits)}


def test_auto_widths_meet_the_agreement_target():
    model = tiny_model(tiny_arch("add"))
    acts = lambda net: [b for b in net.bufs if b is not net.logits]  # noqa: E731
    net = build_intnet(model, T1, images(64, 1), agree=0.0)  # any agreement: everything 8-bit
    assert all(b.fmt.bits == 8 for b in acts(net)) and net.calibration["sixteen_bit"] == 0
    net = build_intnet(model, T1, images(64, 1), agree=100.0)
    cal = net.calibration
    k = sum(b.fmt.bits == 16 for b in acts(net))
    assert k == cal["sixteen_bit"] and (cal["simulated_agreement"] == 100.0 or k == len(acts(net)))
    assert [a for _, a in cal["tried"][:-1]] == [a for _, a in cal["tried"][:-1] if a < 100.0]  # stopped at the first hit


def test_csd_digits():
    for m in list(range(-600, 600)) + [2**31 - 1, -(2**40) + 3, 5461]:
        d = csd_digits(m)
        assert sum(s * 2**p for p, s in d) == m
        pos = [p for p, _ in d]
        assert all(b - a >= 2 for a, b in zip(pos, pos[1:]))  # non-adjacent: the fewest digits
        assert len(d) <= (abs(m).bit_length() + 2) // 2
    assert csd_digits(0) == [] and csd_digits(7) == [(0, -1), (3, 1)]


def test_traced_graph_is_the_model():
    net = build_intnet(tiny_model(tiny_arch("add")), T1, images(8, 1))
    x = T1(images(4, 5))
    with torch.no_grad():
        assert torch.equal(run_float(net.nodes, x), tiny_model(tiny_arch("add"))(x))


def test_bad_options_are_config_errors():
    model = tiny_model(tiny_arch("shift"))
    with pytest.raises(ConfigError, match="act_bits"):
        build_intnet(model, T1, images(4, 1), act_bits="4")
    with pytest.raises(ConfigError, match="mult_bits"):
        build_intnet(model, T1, images(4, 1), mult_bits=0)
    with pytest.raises(ConfigError, match="calibration images"):
        build_intnet(model, T1, torch.zeros(4, 1, RES, RES))
    with pytest.raises(ConfigError, match="model"):
        build_intnet(nn.Sequential(nn.Conv2d(3, 3, 1)), T1, images(4, 1))


# ------------------------------------------------------------------------------------------------
# command line


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory as shiftaddaug-train leaves it (untrained weights, mnist5k at 12 px)."""
    d = tmp_path_factory.mktemp("run")
    arch = tiny_arch("shift")
    model = tiny_model(arch)
    (d / "target").mkdir()
    arch.save(d / "target" / "arch.json")
    torch.save(model.state_dict(), d / "target" / "weights.pt")
    (d / "target" / "meta.json").write_text(json.dumps({"schema_version": 1, "op_options": {}}))
    (d / "config.json").write_text(json.dumps({"schema_version": 1, "train": {"dataset": "mnist5k", "data_root": None}}))
    return d


@needs_cc
def test_export_c_check_command(run_dir, capsys):
    from nas.cli import export_main

    rc = export_main([str(run_dir), "--format", "c", "--check", "--check-images", "60", "--calib-images", "64"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "bit-exact  yes" in out and "check      PASSED" in out and "multiplications inside shift/add conv loops: 0" in out
    c = run_dir / "target" / "c"
    assert {p.name for p in c.iterdir()} >= {"model.c", "model.h", "main.c", "Makefile", "manifest.json", "check.json"}
    rep = json.loads((c / "check.json").read_text())
    assert rep["bit_exact"]["ok"] and rep["bit_exact"]["images"] == 60 + 32 and rep["ok"]
    man = json.loads((c / "manifest.json").read_text())
    assert man["schema_version"] == 1 and man["input"]["shape"] == [1, RES, RES] and man["flash_bytes"] > 0


def test_export_c_errors_are_one_line(run_dir, tmp_path, capsys, monkeypatch):
    from nas.cli import export_main

    assert export_main([str(run_dir), "--check"]) == 2
    assert capsys.readouterr().err.startswith("error: --check")
    assert export_main([str(tmp_path), "--format", "c"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: RUN_DIR") and err.count("\n") == 1
    monkeypatch.setattr("nas.codegen.check.find_cc", lambda: None)
    assert export_main([str(run_dir), "--format", "c", "--check", "--calib-images", "16"]) == 2
    err = capsys.readouterr().err
    assert "a C compiler on PATH" in err and err.count("\n") == 1


def test_cost_deploy_agrees_with_the_counter(tmp_path, capsys):
    from nas.cli import cost_main

    arch = tiny_arch("add", dw_op="add")
    arch.save(tmp_path / "a.json")
    assert cost_main(["--arch", str(tmp_path / "a.json"), "--deploy"]) == 0
    out = capsys.readouterr().out
    n = len([line for line in out.splitlines() if line.endswith(" yes")])
    assert f"agree: {n}/{n} layers" in out and "multiplications in shift/add conv loops: 0" in out
    assert cost_main(["--arch", str(tmp_path / "a.json"), "--op", "shift", "--deploy", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)["deploy"]
    assert all(r["ok"] for r in d["counter_agreement"]) and d["flash_bytes"] > 0
