"""Arch schema: round trips, canonical form, every validation error path, OFA configs."""

import copy
import json
from pathlib import Path

import pytest

from nas.arch import Arch, from_ofa_config, make_divisible
from nas.errors import ConfigError
from nas.models import zoo_arch

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "net-configs"  # real MCUNet / OFA files


def tiny_dict():
    return {
        "name": "t",
        "resolution": 32,
        "num_classes": 10,
        "stem": {"out_channels": 8, "kernel_size": 3, "stride": 2, "act": "relu6"},
        "stages": [
            {"blocks": [{"kernel_size": 3, "expand_ratio": 1, "out_channels": 8}]},
            {"blocks": [{"kernel_size": 5, "expand_ratio": 3, "out_channels": 16, "stride": 2},
                        {"kernel_size": 3, "expand_ratio": 4, "out_channels": 16, "se_channels": 8}]},
        ],
        "feature_mix": {"out_channels": 32, "act": "hswish"},
    }


@pytest.mark.parametrize("op", ["mult", "shift", "add"])
@pytest.mark.parametrize("name", ["mbv2-w0.35", "mbv3-w0.35", "proxyless-w0.35", "mcunet", "mbv2-tiny", "mbv2-w1.0"])
def test_round_trips(name, op):
    a = zoo_arch(name, op)
    assert Arch.from_json(a.to_json()) == a
    assert Arch.from_flat(a.to_flat()) == a
    assert Arch.from_dict(json.loads(a.to_json(indent=None))).arch_id == a.arch_id
    assert a.op_kind == op


def test_canonical_json_sorted_and_versioned():
    a = Arch.from_dict(tiny_dict())
    text = a.to_json(indent=None)
    d = json.loads(text)
    assert d["schema_version"] == 2
    assert text == json.dumps(d, sort_keys=True)
    # the id ignores the name but not the structure
    assert a.replace(name="other").arch_id == a.arch_id
    assert Arch.from_dict({**tiny_dict(), "resolution": 64}).arch_id != a.arch_id


def test_defaults_resolved():
    a = Arch.from_dict(tiny_dict())
    b0, b1, b2 = [b for _, _, b in a.blocks()]
    assert b0.mid_channels == 8 and b0.shortcut  # expand 1: mid = in; stride 1 and 8->8
    assert b1.mid_channels == make_divisible(8 * 3) == 24 and not b1.shortcut
    assert b2.mid_channels == 64 and b2.shortcut and b2.se_channels == 8
    assert a.depths == (1, 2) and a.head_channels == 32


def test_flat_labels():
    f = Arch.from_dict(tiny_dict()).to_flat()
    assert f["s1_b1_ks"] == 3 and f["s1_b0_e"] == 3.0 and f["s1_depth"] == 2 and f["s1_b0_stride"] == 2
    assert f["post_pool_out"] == 0


def _bad(mutate):
    d = tiny_dict()
    mutate(d)
    with pytest.raises(ConfigError) as e:
        Arch.from_dict(d)
    return str(e.value)


@pytest.mark.parametrize(
    "mutate, field, hint",
    [
        (lambda d: d.update(colour="red"), "arch.colour", "unknown key"),
        (lambda d: d["stages"][1]["blocks"][0].update(kernel_size=4), "arch.stages[1].blocks[0].kernel_size", "3, 5, 7"),
        (lambda d: d["stages"][1]["blocks"][0].update(out_channels=-3), "arch.stages[1].blocks[0].out_channels", ">= 1"),
        (lambda d: d["stages"][1]["blocks"][0].update(out_channels=2.5), "arch.stages[1].blocks[0].out_channels", "integer"),
        (lambda d: d["stages"][1]["blocks"][0].update(stride=3), "arch.stages[1].blocks[0].stride", "1, 2"),
        (lambda d: d["stages"][1]["blocks"][0].update(expand_ratio=0), "arch.stages[1].blocks[0].expand_ratio", "positive"),
        (lambda d: d["stages"][1]["blocks"][0].update(expand_ratio=float("nan")), "arch.stages[1].blocks[0].expand_ratio", "positive"),
        (lambda d: d["stages"][1]["blocks"][0].update(op="multiply"), "arch.stages[1].blocks[0].op", "mult, shift, add"),
        (lambda d: d["stages"][1]["blocks"][0].update(act="gelu"), "arch.stages[1].blocks[0].act", "relu"),
        (lambda d: d["stages"][1]["blocks"][0].update(shortcut=True), "arch.stages[1].blocks[0].shortcut", "stride 1"),
        (lambda d: d["stages"][0]["blocks"][0].update(mid_channels=16), "arch.stages[0].blocks[0].mid_channels", "expand_ratio 1"),
        (lambda d: d["stages"][0]["blocks"][0].pop("kernel_size"), "arch.stages[0].blocks[0].kernel_size", "required"),
        (lambda d: d.update(stages=[]), "arch.stages", "non-empty"),
        (lambda d: d["stages"][0].update(blocks=[]), "arch.stages[0].blocks", "non-empty"),
        (lambda d: d.update(resolution=4), "arch.resolution", ">= 8"),
        (lambda d: d.update(num_classes=0), "arch.num_classes", ">= 1"),
        (lambda d: d.update(schema_version=7), "arch.schema_version", "schema_version 1, 2"),
        (lambda d: d["stages"][1]["blocks"][1].update(se_op="both"), "arch.stages[1].blocks[1].se_op", "mult, shift, add"),
        (lambda d: (d.update(schema_version=1), d["stages"][1]["blocks"][1].update(se_op="add")), "arch.stages[1].blocks[1].se_op", "unknown key"),
        (lambda d: d["stem"].update(kernel_size=2), "arch.stem.kernel_size", "1, 3, 5, 7"),
        (lambda d: d.update(feature_mix={"out_channels": 8, "kernel_size": 3}), "arch.feature_mix", "1x1"),
        (lambda d: d.update(classifier={"dropout": 1.5}), "arch.classifier.dropout", "[0, 1)"),
        (lambda d: d.update(stem=[8]), "arch.stem", "mapping"),
    ],
)
def test_validation_errors_name_field_value_and_allowed(mutate, field, hint):
    msg = _bad(mutate)
    assert msg.startswith(field + ":"), msg
    assert hint in msg
    assert "\n" not in msg


def test_stride_that_does_not_fit():
    d = tiny_dict()
    d["resolution"] = 8
    d["stages"].append({"blocks": [{"kernel_size": 3, "expand_ratio": 2, "out_channels": 16, "stride": 2}] * 1})
    d["stages"].append({"blocks": [{"kernel_size": 3, "expand_ratio": 2, "out_channels": 16, "stride": 2}]})
    with pytest.raises(ConfigError, match=r"arch.stages\[3\].blocks\[0\].stride: got 2; the feature map is already 1x1"):
        Arch.from_dict(d)


def test_invalid_json_text():
    with pytest.raises(ConfigError, match="invalid JSON"):
        Arch.from_json("{not json")


def test_load_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="arch file"):
        Arch.load(tmp_path / "nope.json")


def test_save_load(tmp_path):
    a = zoo_arch("mcunet", "add", 96, 10)
    a.save(tmp_path / "a.json")
    assert Arch.load(tmp_path / "a.json") == a


def test_with_ops_conventions():
    s = zoo_arch("mbv3-w0.35", "shift")
    assert s.stem.op == "shift" and s.classifier.op == "mult" and s.post_pool.op == "shift"
    assert all(b.op == "shift" and b.dw_op == "shift" and b.se_op == "shift" for _, _, b in s.blocks())
    a = zoo_arch("mbv3-w0.35", "add")
    assert a.stem.op == "add" and a.feature_mix.op == "add" and a.post_pool.op == "add" and a.classifier.op == "mult"
    # the paper's Add convention: every 1x1 conv adds, the SE convs included; depthwise multiplies
    assert all(b.op == "add" and b.dw_op == "mult" and b.se_op == "add" for _, _, b in a.blocks())
    assert sum(1 for _, _, b in a.blocks() if b.se_channels) == 8  # MobileNetV3-Large: 3 + 2 + 3 SE blocks
    assert all(b.se_op == "mult" for _, _, b in a.with_ops("mult").blocks())
    with pytest.raises(ConfigError):
        a.with_ops("both")


def _v1_add_dict():
    """A version-1 file of an Add model (as written before blocks had ``se_op``)."""
    d = tiny_dict()
    d["schema_version"] = 1
    d["stem"]["op"] = d["feature_mix"]["op"] = "add"
    for s in d["stages"]:
        for b in s["blocks"]:
            b.update(op="add", dw_op="mult")
    return d


def test_schema_v1_loads_with_its_old_meaning():
    d = _v1_add_dict()
    a = Arch.from_dict(d)
    se_block = a.stages[1].blocks[1]
    assert se_block.se_channels == 8 and se_block.se_op == "mult"  # v1 computed SE convs with dw_op
    assert a.op_kind == "mixed"  # not the Add convention any more: its SE convs multiply
    assert a.with_ops("add").stages[1].blocks[1].se_op == "add"
    # without SE blocks a v1 Add file is exactly an Add model (se_op does not exist there)
    d["stages"][1]["blocks"][1].pop("se_channels")
    b = Arch.from_dict(d)
    assert b.op_kind == "add" and b == b.with_ops("add")
    # written back it is version 2 with the operator of every conv explicit, and reads the same
    d2 = json.loads(a.to_json())
    assert d2["schema_version"] == 2 and d2["stages"][1]["blocks"][1]["se_op"] == "mult"
    assert Arch.from_dict(d2) == a


def test_se_op_defaults_and_canonical_form():
    d = _v1_add_dict()
    del d["schema_version"]  # current version: a missing se_op follows the 1x1 convs (op)
    a = Arch.from_dict(d)
    assert a.stages[1].blocks[1].se_op == "add" and a.op_kind == "add"
    # a block without SE has no SE convs: its se_op is kept equal to op whatever is given
    d["stages"][1]["blocks"][0]["se_op"] = "shift"
    assert Arch.from_dict(d) == a and Arch.from_dict(d).stages[1].blocks[0].se_op == "add"
    d["stages"][1]["blocks"][1]["se_op"] = "mult"
    m = Arch.from_dict(d)
    assert m.op_kind == "mixed" and m.to_flat()["s1_b1_seop"] == "mult" and Arch.from_flat(m.to_flat()) == m


def test_op_kind_mixed():
    a = zoo_arch("mcunet", "shift")
    st = list(a.stages)
    st[1] = type(st[1])(tuple(b.__class__(**{**b.__dict__, "op": "mult"}) for b in st[1].blocks))
    assert a.replace(stages=tuple(st)).op_kind == "mixed"


# ------------------------------------------------------------------ OFA / MCUNet net.config

def ofa_files():
    return sorted(FIXTURES.glob("*.json"))


def test_fixtures_present():
    assert len(ofa_files()) >= 10


@pytest.mark.parametrize("path", ofa_files(), ids=lambda p: p.stem)
def test_read_ofa_config(path):
    cfg = json.loads(path.read_text())
    a = Arch.load(path)
    assert a.resolution == cfg["resolution"] and a.num_classes == cfg["classifier"]["out_features"]
    live = [b for b in cfg["blocks"] if (b.get("mobile_inverted_conv") or b.get("conv"))["name"] != "ZeroLayer"]
    assert sum(a.depths) == len(live)
    for (_, _, blk), raw in zip(a.blocks(), live):
        conv = raw.get("mobile_inverted_conv") or raw.get("conv")
        assert blk.kernel_size == conv["kernel_size"] and blk.out_channels == conv["out_channels"]
        assert blk.shortcut == bool(raw["shortcut"])
    assert Arch.from_json(a.to_json()) == a


def test_zero_layers_are_skipped():
    path = FIXTURES / "proxyless-w0.3-r176_imagenet.json"
    cfg = json.loads(path.read_text())
    zeros = [b for b in cfg["blocks"] if b["mobile_inverted_conv"]["name"] == "ZeroLayer"]
    assert zeros, "fixture should contain skipped blocks"
    assert sum(Arch.load(path).depths) == len(cfg["blocks"]) - len(zeros)


def test_malformed_ofa_config():
    cfg = json.loads((FIXTURES / "mcunet-5fps_imagenet.json").read_text())
    bad = copy.deepcopy(cfg)
    del bad["classifier"]
    with pytest.raises(ConfigError, match="malformed net.config"):
        from_ofa_config(bad)
    bad = copy.deepcopy(cfg)
    bad["blocks"][3]["mobile_inverted_conv"]["in_channels"] = 999
    with pytest.raises(ConfigError, match=r"blocks\[3\].in_channels: got 999"):
        from_ofa_config(bad)
    bad = copy.deepcopy(cfg)
    bad["blocks"][2]["mobile_inverted_conv"]["kernel_size"] = 9
    with pytest.raises(ConfigError, match="kernel_size: got 9"):
        from_ofa_config(bad)
