"""The baseline zoo: files match their NetAug derivation; every model builds for every kind."""

import importlib.util
from pathlib import Path

import pytest
import torch

from nas.arch import Arch
from nas.errors import ConfigError
from nas.models import build_model, list_zoo, zoo_arch

ROOT = Path(__file__).resolve().parents[1]
ZOO = ["mbv2-w0.35", "mbv3-w0.35", "proxyless-w0.35", "mcunet", "mbv2-tiny", "mbv2-w1.0"]


def test_zoo_lists_all_models():
    assert set(ZOO) <= set(list_zoo())


def test_zoo_files_match_generator():
    spec = importlib.util.spec_from_file_location("make_zoo", ROOT / "tools" / "make_zoo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name, arch in mod.zoo().items():
        assert Arch.load(ROOT / "search_spaces" / "baselines" / f"{name}.json") == arch, name


@pytest.mark.parametrize("op", ["mult", "shift", "add"])
@pytest.mark.parametrize("name", ZOO[:5])
def test_every_model_builds_and_runs(name, op):
    arch = zoo_arch(name, op, resolution=32, num_classes=7)
    model = build_model(arch).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_mbv2_tiny_structure():
    a = zoo_arch("mbv2-tiny")
    assert a.feature_mix.out_channels == 448 and a.stages[-1].blocks[0].out_channels == 112
    assert a.stem.out_channels == 16 and a.resolution == 144


def test_unknown_model():
    with pytest.raises(ConfigError, match="model: got 'resnet'; available models: mbv2-tiny"):
        zoo_arch("resnet")


def test_resolution_and_classes_override():
    a = zoo_arch("mcunet", resolution=48, num_classes=100)
    assert (a.resolution, a.num_classes) == (48, 100)
    with pytest.raises(ConfigError, match="resolution"):
        zoo_arch("mcunet", resolution=2)
