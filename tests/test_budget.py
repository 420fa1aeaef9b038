"""parse_budget / Budget: examples, round trips and rejections (property-based with hypothesis)."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nas.cost.budget import EXAMPLES, Budget, parse_budget
from nas.errors import ConfigError

FACTORS = {
    "J": ("energy", 1000.0), "mJ": ("energy", 1.0), "uJ": ("energy", 1e-3), "µJ": ("energy", 1e-3), "μJ": ("energy", 1e-3),
    "nJ": ("energy", 1e-6), "s": ("latency", 1000.0), "ms": ("latency", 1.0), "us": ("latency", 1e-3), "µs": ("latency", 1e-3),
    "μs": ("latency", 1e-3), "ns": ("latency", 1e-6),
}


@pytest.mark.parametrize(
    "text, metric, value, unit",
    [
        ("20mJ", "energy", 20.0, "mJ"),
        ("0.5 mJ", "energy", 0.5, "mJ"),
        ("300uJ", "energy", 0.3, "mJ"),
        ("300µJ", "energy", 0.3, "mJ"),  # micro sign U+00B5
        ("300μJ", "energy", 0.3, "mJ"),  # Greek mu U+03BC
        ("2e-3 J", "energy", 2.0, "mJ"),
        ("5ms", "latency", 5.0, "ms"),
        ("800 us", "latency", 0.8, "ms"),
        ("1.5s", "latency", 1500.0, "ms"),
        ("  7 ns ", "latency", 7e-6, "ms"),
        (".25mJ", "energy", 0.25, "mJ"),
        ("1_000 uJ", "energy", 1.0, "mJ"),
    ],
)
def test_examples(text, metric, value, unit):
    b = parse_budget(text)
    assert b == Budget(metric, value, unit)
    assert b.value == value  # exact: decimal arithmetic, 300uJ is 0.3, not 0.30000000000000004


@pytest.mark.parametrize(
    "text",
    ["", "   ", "20", "mJ", "20 MJ", "20 kg", "-1mJ", "0 mJ", "0.0ms", "nan mJ", "NaN ms", "inf ms", "-inf J",
     "1e999 J", "1e-400 J", "1.2.3 mJ", "20 mJ extra", "20mJ5", "mJ20", "twenty mJ", "20 m J", "2e mJ"],
)
def test_rejected_with_one_line_and_examples(text):
    with pytest.raises(ConfigError) as e:
        parse_budget(text)
    msg = str(e.value)
    assert msg.startswith("budget: got ") and "\n" not in msg and EXAMPLES in msg


@pytest.mark.parametrize("bad", [None, 5, 2.5, ["5ms"]])
def test_non_strings_rejected(bad):
    with pytest.raises(ConfigError, match="budget"):
        parse_budget(bad)


def test_budget_object():
    b = parse_budget("20mJ")
    assert parse_budget(b) is b and str(b) == "20 mJ"
    assert b.scaled(2.2) == Budget("energy", 44.0, "mJ")
    assert b.satisfied_by(20.0) and not b.satisfied_by(20.0001)
    assert Budget.from_dict(b.to_dict()) == b
    with pytest.raises(ConfigError):
        Budget("energy", 1.0, "ms")
    with pytest.raises(ConfigError):
        Budget("power", 1.0, "mJ")
    with pytest.raises(ConfigError):
        Budget("latency", 0.0, "ms")

    class P:
        energy_mJ, latency_ms = 1.5, 2.5

    assert b.cost_of(P()) == 1.5 and parse_budget("3ms").cost_of(P()) == 2.5


positive = st.floats(min_value=1e-9, max_value=1e9, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(v=positive, unit=st.sampled_from(sorted(FACTORS)), sp=st.sampled_from(["", " ", "  "]), pad=st.sampled_from(["", " ", "\t"]))
def test_property_scaling(v, unit, sp, pad):
    b = parse_budget(f"{pad}{v!r}{sp}{unit}{pad}")
    metric, factor = FACTORS[unit]
    assert b.metric == metric and b.unit == ("mJ" if metric == "energy" else "ms")
    assert math.isclose(b.value, v * factor, rel_tol=1e-12)


@settings(max_examples=300, deadline=None)
@given(v=positive, unit=st.sampled_from(sorted(FACTORS)))
def test_property_str_round_trip(v, unit):
    b = parse_budget(f"{v!r} {unit}")
    assert parse_budget(str(b)) == b


@settings(max_examples=200, deadline=None)
@given(v=st.floats(max_value=0.0, allow_nan=False) | st.just(float("nan")) | st.just(float("inf")), unit=st.sampled_from(sorted(FACTORS)))
def test_property_non_positive_or_non_finite_rejected(v, unit):
    with pytest.raises(ConfigError) as e:
        parse_budget(f"{v!r}{unit}")
    assert "\n" not in str(e.value)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=12))
def test_property_any_text_parses_or_fails_cleanly(text):
    try:
        b = parse_budget(text)
    except ConfigError as e:
        assert str(e).startswith("budget: got ")
        return
    assert b.value > 0 and math.isfinite(b.value) and b.metric in ("energy", "latency")


@settings(max_examples=200, deadline=None)
@given(v=positive, unit=st.text(alphabet=st.characters(categories=("Lu", "Ll")), min_size=1, max_size=4).filter(lambda u: u.replace("µ", "u").replace("μ", "u") not in {"J", "mJ", "uJ", "nJ", "s", "ms", "us", "ns"}))
def test_property_unknown_units_rejected(v, unit):
    with pytest.raises(ConfigError, match="unknown unit|valid budgets"):
        parse_budget(f"{v!r} {unit}")
