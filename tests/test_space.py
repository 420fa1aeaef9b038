"""SearchSpace: loading, genomes, determinism, validation of archs and of malformed spaces."""

import random

import pytest
import yaml

from nas.errors import ConfigError
from nas.models import zoo_arch
from nas.space import SearchSpace


@pytest.fixture(scope="module")
def tiny():
    return SearchSpace.load("tiny")


def test_shipped_spaces_load():
    for name in ("tiny", "paper160"):
        s = SearchSpace.load(name)
        assert s.name == name and len(s.stages) >= 4


def test_round_trip(tiny):
    assert SearchSpace.from_dict(tiny.to_dict()) == tiny
    assert yaml.safe_load(yaml.safe_dump(tiny.to_dict())) == tiny.to_dict()


def test_sampling_is_deterministic_and_valid(tiny):
    a = [tiny.sample(random.Random(7)).arch_id for _ in range(3)]
    assert len(set(a)) == 1
    rng = random.Random(0)
    ids = set()
    for _ in range(50):
        arch = tiny.sample(rng)
        tiny.validate(arch)
        assert tiny.decode(tiny.encode(arch), arch.name) == arch
        ids.add(arch.arch_id)
    assert len(ids) > 40


def test_mutation_and_crossover_stay_in_space(tiny):
    rng = random.Random(1)
    g1, g2 = tiny.sample_genome(rng), tiny.sample_genome(rng)
    for _ in range(20):
        m = tiny.mutate_genome(g1, rng, 0.5)
        c = tiny.crossover_genome(g1, m, rng)
        tiny.validate(tiny.decode(c))
    assert tiny.mutate_genome(g1, rng, 0.0) == g1
    assert set(tiny.crossover_genome(g1, g2, rng).items()) <= set(g1.items()) | set(g2.items())


def test_extremes(tiny):
    lo, hi = tiny.min_arch(), tiny.max_arch()
    assert sum(lo.depths) == sum(min(s.depth) for s in tiny.stages)
    assert sum(hi.depths) == sum(max(s.depth) for s in tiny.stages)
    assert tiny.size > 10**6


def test_validate_names_the_field(tiny):
    with pytest.raises(ConfigError, match=r"arch.resolution: got 160"):
        tiny.validate(zoo_arch("mbv2-w0.35"))
    arch = tiny.sample(random.Random(3))
    d = arch.to_dict()
    d["stages"][1]["blocks"][0]["kernel_size"] = 7 if d["stages"][1]["blocks"][0]["kernel_size"] != 7 else 5
    ok = arch.from_dict(d)
    tiny.validate(ok)
    for st in d["stages"][2:]:  # widen stage 2 outside the space; let mid and shortcut re-derive
        for b in st["blocks"]:
            b.pop("mid_channels"), b.pop("shortcut")
    for b in d["stages"][2]["blocks"]:
        b["out_channels"] = 40
    with pytest.raises(ConfigError, match=r"arch.stages\[2\].blocks\[0\].out_channels: got 40; allowed by the space: 24, 32"):
        tiny.validate(arch.from_dict(d))


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d.update(resolution=3), "space.resolution"),
        (lambda d: d["stages"][1].update(kernel_size=[3, 4]), "space.stages[1].kernel_size: got 4"),
        (lambda d: d["stages"][1].update(depth=[]), "space.stages[1].depth"),
        (lambda d: d["stages"][1].update(depth=[1, 1]), "space.stages[1].depth"),
        (lambda d: d["stages"][1].update(expand_ratio=[0.5]), "space.stages[1].expand_ratio: got 0.5"),
        (lambda d: d["stages"][1].update(colour=1), "space.stages[1].colour"),
        (lambda d: d["stages"][1].update(stride=3), "space.stages[1].stride: got 3"),
        (lambda d: d["stages"][1].update(act="gelu"), "space.stages[1].act: got 'gelu'"),
        (lambda d: d["stem"].pop("out_channels"), "space.stem.out_channels: got '<missing>'"),
        (lambda d: d.update(stages="many"), "space.stages"),
        (lambda d: d.update(aug_multiples=[0.5]), "space.aug_multiples: got 0.5"),
    ],
)
def test_malformed_spaces(tiny, mutate, field):
    d = tiny.to_dict()
    mutate(d)
    with pytest.raises(ConfigError) as e:
        SearchSpace.from_dict(d)
    assert str(e.value).startswith(field), str(e.value)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="space: got 'nope'; expected a YAML file or one of: mobile224, paper160, seg64, tiny"):
        SearchSpace.load("nope")
    p = tmp_path / "bad.yaml"
    p.write_text("stages: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml: got '<invalid YAML>'"):
        SearchSpace.load(p)


def test_width_mult_shorthand():
    d = SearchSpace.load("tiny").to_dict()
    d["width_mult"] = [0.5, 1.0]
    s = SearchSpace.from_dict(d)
    assert s.stages[1].out_channels == (8, 16, 24)  # 16*.5 and 24*.5 round to 8 and 16 (make_divisible 8)
