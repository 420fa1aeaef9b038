"""Bounded inputs: the search-space and architecture parsers give one ConfigError or a valid
object, quickly, for anything (random and adversarial JSON / YAML, property-based with
hypothesis), and refuse huge or deeply nested inputs at once."""

import copy
import json

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nas.arch import MAX_CHANNELS, MAX_FILE_BYTES, Arch
from nas.cost.counting import count_ops
from nas.errors import ConfigError
from nas.paths import BASELINES, SEARCH_SPACES
from nas.space import SearchSpace

VALID_ARCH = json.loads((BASELINES / "mbv2-tiny.json").read_text())
VALID_SPACE = yaml.safe_load((SEARCH_SPACES / "tiny.yaml").read_text())

# JSON-like values, with the numbers a hostile file would use (huge, negative, NaN, inf, floats that
# look like ints) and strings that look like numbers
scalars = (st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.sampled_from([0, 1, 2, 3, 5, 7, 8, 16, 10**6, -1])
           | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1.0, 2.5, 6.0, 1e308, float("nan")])
           | st.text(max_size=12) | st.sampled_from(["abc", "3", "relu6", "shift", "mult"]))
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=6) | st.dictionaries(st.text(max_size=10), c, max_size=6), max_leaves=30)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


def _paths(d, prefix=()):
    """Every (path, value) inside a nested dict / list."""
    yield prefix, d
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield from _paths(v, prefix + (i,))


def _mutate(doc, data):
    """``doc`` with one node (chosen by hypothesis) replaced by a random value, deleted, or a key added."""
    doc = copy.deepcopy(doc)
    paths = [p for p, _ in _paths(doc) if p]
    path = data.draw(st.sampled_from(paths))
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    action = data.draw(st.sampled_from(["replace", "replace", "delete", "add"]))
    if action == "replace":
        parent[path[-1]] = data.draw(json_values)
    elif action == "delete":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[data.draw(st.text(max_size=8))] = data.draw(json_values)
    else:
        parent.append(data.draw(json_values))
    return doc


def _check_arch(arch: Arch) -> None:
    """A parsed Arch is a usable one: it round-trips and can be counted."""
    assert Arch.from_dict(arch.to_dict()) == arch
    assert count_ops(arch).total("macs") > 0


def _check_space(space: SearchSpace) -> None:
    """A parsed space is a usable one: its extremes are valid archs and it round-trips."""
    for a in (space.max_arch(), space.min_arch()):
        space.validate(a)
    assert SearchSpace.from_dict(space.to_dict()) == space


def _one_config_error_or(fn, check, *args):
    try:
        obj = fn(*args)
    except ConfigError as e:
        assert "\n" not in str(e) and len(str(e)) < 1000  # one short line
        return
    check(obj)


@SETTINGS
@given(st.data())
def test_mutated_arch_gives_one_config_error_or_a_valid_arch(data):
    _one_config_error_or(Arch.from_dict, _check_arch, _mutate(VALID_ARCH, data))


@SETTINGS
@given(st.data())
def test_mutated_space_gives_one_config_error_or_a_valid_space(data):
    _one_config_error_or(SearchSpace.from_dict, _check_space, _mutate(VALID_SPACE, data))


@SETTINGS
@given(json_values)
def test_random_documents_give_one_config_error(doc):
    _one_config_error_or(Arch.from_dict, _check_arch, doc)
    _one_config_error_or(SearchSpace.from_dict, _check_space, doc)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200) | json_values.map(json.dumps) | json_values.map(lambda v: yaml.safe_dump(v)))
def test_random_files_give_one_config_error(tmp_path, text):
    p = tmp_path / "input.json"
    p.write_text(text)
    _one_config_error_or(Arch.load, _check_arch, p)
    q = tmp_path / "input.yaml"
    q.write_text(text)
    _one_config_error_or(SearchSpace.load, _check_space, q)


# ------------------------------------------------------------------------------------------ adversarial


def _space(**stage):
    d = copy.deepcopy(VALID_SPACE)
    d["stages"][1].update(stage)
    return d


@pytest.mark.parametrize("doc, match", [
    ({**VALID_SPACE, "in_channels": "abc"}, "in_channels: got 'abc'; expected an integer in"),  # was a ValueError
    (_space(depth=list(range(1, 10**6))), r"stages\[1\]\.depth: got \[1, 2, 3, 4, 5, 6, 7, 8, \.\.\.\]; expected a non-empty list of at most 64"),
    (_space(out_channels=[16, 10**6]), r"out_channels: got 1000000; each a int in \[1, 16384\]"),
    (_space(out_channels=[16, 10**400]), r"out_channels: got 1000.*; each a int in"),  # no OverflowError
    (_space(depth=[1, 40]), r"depth: got 40; each a int in \[1, 32\]"),
    (_space(expand_ratio=[1, 6, float("nan")]), r"expand_ratio: got nan"),
    ({**VALID_SPACE, "resolution": 10**6}, r"resolution: got 1000000; expected an integer in \[8, 4096\]"),
    ({**VALID_SPACE, "stages": VALID_SPACE["stages"] * 9}, "expected a non-empty list of at most 16 stages"),
    ({**VALID_SPACE, "width_mult": [1, 5000]}, "width_mult: got 5000"),
    ({**VALID_SPACE, "name": {"a": [1]}}, r"name: got \{'a': \[1\]\}"),
    (_space(out_channels=[2048], expand_ratio=[30]), r"stages\[1\]\.expand_ratio: got 30.0; with 2048 input channels the mid width exceeds"),
])
def test_space_limits(doc, match):
    with pytest.raises(ConfigError, match=match):
        SearchSpace.from_dict(doc)


def _arch(**block):
    d = copy.deepcopy(VALID_ARCH)
    d["stages"][0]["blocks"][0].update(block)
    return d


@pytest.mark.parametrize("doc, match", [
    (_arch(out_channels=MAX_CHANNELS + 1), r"out_channels: got 16385; expected an integer >= 1 and <= 16384"),
    (_arch(mid_channels=10**100), r"mid_channels: got 1000.*; expected an integer >= 1 and <= 16384"),
    (_arch(expand_ratio=1e308), r"expand_ratio: got 1e\+308; expected a positive number <= 32"),
    ({**VALID_ARCH, "stages": [{"blocks": VALID_ARCH["stages"][1]["blocks"] * 40}]}, "expected a non-empty list of at most 32 blocks"),
    ({**VALID_ARCH, "num_classes": 10**7}, r"num_classes: got 10000000"),
    ({**VALID_ARCH, "name": "x" * 10_000}, "expected a non-empty string of at most 200 characters"),
    (_arch(act=["relu"]), r"act: got \['relu'\]; allowed"),  # was a TypeError (unhashable list)
])
def test_arch_limits(doc, match):
    with pytest.raises(ConfigError, match=match):
        Arch.from_dict(doc)


def test_deep_nesting_is_one_config_error(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(ConfigError, match="nested too deeply"):
        Arch.from_json(deep)
    p = tmp_path / "arch.json"
    p.write_text('{"stages": ' + deep + "}")
    with pytest.raises(ConfigError, match="nested too deeply"):  # was a RecursionError
        Arch.load(p)
    q = tmp_path / "space.yaml"
    q.write_text("a: " + "[" * 20_000 + "]" * 20_000)
    with pytest.raises(ConfigError, match="nested too deeply|invalid YAML"):
        SearchSpace.load(q)
    nested = []
    for _ in range(100_000):
        nested = [nested]
    with pytest.raises(ConfigError, match=r"got \[\[\[\[\.\.\.\]\]\]\]"):  # the message itself stays short
        Arch.from_dict({**VALID_ARCH, "stages": nested})


def test_huge_files_are_refused_before_parsing(tmp_path, monkeypatch):
    p = tmp_path / "space.yaml"
    p.write_text("depth: [" + ", ".join(["1"] * 10**6) + "]\n")  # 3 MB: PyYAML would take minutes
    parsed = []
    for mod, name in ((yaml, "safe_load"), (yaml, "load"), (json, "loads"), (json, "load")):
        monkeypatch.setattr(mod, name, lambda *a, _n=name, **k: parsed.append(_n))
    with pytest.raises(ConfigError, match=f"a file of at most {MAX_FILE_BYTES} bytes"):
        SearchSpace.load(p)
    with pytest.raises(ConfigError, match=f"a file of at most {MAX_FILE_BYTES} bytes"):
        Arch.load(p)
    assert parsed == []  # refused before any parser saw it
    monkeypatch.undo()
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not UTF-8"):
        Arch.load(p)


def test_every_shipped_file_is_within_the_limits():
    for f in sorted(BASELINES.glob("*.json")):
        _check_arch(Arch.load(f))
    for f in sorted(SEARCH_SPACES.glob("*.yaml")):
        _check_space(SearchSpace.load(f))
