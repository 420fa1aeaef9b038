"""The operator registry's contract, checked for every registered kind (nas/ops/registry.py).

A new kind passes these tests or it is not done: its modules have the nn.Conv2d / nn.Linear
signature and count what its CountRule says, its functional forms compute what its modules
compute, the weight a static layer stores reproduces the forward, its options round-trip and
validate, and the registry recognises its modules.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from nas.errors import ConfigError
from nas.ops.registry import OPS, ROLES, UNITS, create_conv, create_linear, get_kind, op_counts

KINDS = [k.name for k in OPS]


def _x(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def _seeded():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


@pytest.mark.parametrize("name", KINDS)
@pytest.mark.parametrize("groups, stride, kernel", [(1, 1, 3), (2, 2, 3), (8, 1, 5)])
def test_conv_module_has_the_conv2d_geometry_and_counts_its_rule(name, groups, stride, kernel):
    conv = create_conv(name, 8, 16 if groups != 8 else 8, kernel, stride, groups, bias=True).eval()
    x = _x(2, 8, 9, 9)
    with torch.no_grad():
        y = conv(x)
    ref = torch.nn.Conv2d(8, conv.out_channels, kernel, stride, kernel // 2, groups=groups)
    assert y.shape == ref(x).shape and torch.isfinite(y).all()
    assert (conv.in_channels, conv.groups, tuple(conv.kernel_size), tuple(conv.stride)) == (8, groups, (kernel,) * 2, (stride,) * 2)
    if name != "mult":  # nn.Conv2d has no count_ops; nas.cost.counting counts it with the same rule
        k = 8 // groups * kernel * kernel
        counts = conv.count_ops(tuple(y.shape))
        assert counts == op_counts(name, k, y.numel(), True)
        assert counts["macs"] == k * y.numel()


@pytest.mark.parametrize("name", KINDS)
def test_linear_module_counts_its_rule(name):
    lin = create_linear(name, 12, 5, bias=False).eval()
    y = lin(_x(3, 12))
    assert y.shape == (3, 5)
    if name != "mult":
        assert lin.count_ops(tuple(y.shape)) == op_counts(name, 12, 15, False)


@pytest.mark.parametrize("name", KINDS)
def test_functional_forms_and_stored_weight_reproduce_the_modules(name):
    """``apply_conv`` / ``apply_linear`` on a weight ``w`` = a static layer storing ``stored_weight(w)``
    (how hybrid layers compute and how they export)."""
    kind = get_kind(name)
    w = 0.3 * _x(16, 8, 3, 3)
    x = _x(2, 8, 7, 7)
    conv = create_conv(name, 8, 16, 3, 2, 1, bias=False).eval()
    with torch.no_grad():
        conv.weight.copy_(kind.stored_weight(w))
        assert torch.allclose(conv(x), kind.apply_conv(x, w, None, 2, 1, 1, 1), atol=1e-5, rtol=1e-5)
    wl = 0.3 * _x(5, 12)
    xl = _x(3, 12)
    lin = create_linear(name, 12, 5, bias=False).eval()
    with torch.no_grad():
        lin.weight.copy_(kind.stored_weight(wl))
        assert torch.allclose(lin(xl), kind.apply_linear(xl, wl), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", KINDS)
def test_functional_conv_has_gradients(name):
    w = (0.3 * _x(4, 3, 3, 3)).requires_grad_()
    x = _x(2, 3, 5, 5).requires_grad_()
    get_kind(name).apply_conv(x, w, None, 1, 1, 1, 1).sum().backward()
    assert w.grad is not None and x.grad is not None
    assert torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0 and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", KINDS)
def test_options_round_trip_and_validate(name):
    kind = get_kind(name)
    opts = kind.options()
    assert kind.options.from_dict(opts.to_dict()) == opts
    with pytest.raises(ConfigError, match=f"op_options.{name}.nope"):
        kind.options.from_dict({"nope": 1}, f"op_options.{name}")
    assert set(kind.hybrid_options) <= set(kind.options.names())
    # one options dict serves a whole network: other kinds' options are ignored, unknown names are errors
    every = {n: v for k in OPS for n, v in k.options().to_dict().items()}
    create_conv(name, 4, 4, 1, **every)
    with pytest.raises(ConfigError, match="options"):
        create_conv(name, 4, 4, 1, no_such_option=1)


@pytest.mark.parametrize("name", KINDS)
def test_rules_convention_and_recognition(name):
    kind = get_kind(name)
    assert kind.energy.unit in UNITS
    assert set(kind.roles) <= set(ROLES)
    assert set(kind.convention) == set(ROLES)
    assert all(op in (name, "mult") for op in kind.convention.values())
    assert kind.multiplication_free == (kind.counting.mults == 0) == (name in OPS.mf_names())
    assert OPS.kind_of_module(create_conv(name, 4, 4, 3)) == (kind, False)
    assert OPS.kind_of_module(create_linear(name, 4, 4)) == (kind, True)
    assert OPS.kind_of_module(torch.nn.ReLU()) is None


def test_names_are_mult_first_and_lookups_fail_with_one_line():
    assert KINDS[0] == "mult" and {"shift", "add"} <= set(KINDS)
    with pytest.raises(ConfigError, match=r"op: got 'mul'.*allowed: " + ", ".join(KINDS)):
        get_kind("mul")


def test_a_scoped_registration_is_undone():
    n = len(OPS)
    mult = get_kind("mult")
    with OPS.scoped():
        OPS.register(dataclasses.replace(mult, name="mult2"))
        assert "mult2" in OPS and len(OPS) == n + 1
        with pytest.raises(ConfigError, match="a new name"):
            OPS.register(dataclasses.replace(mult, name="mult2"))
    assert "mult2" not in OPS and len(OPS) == n


@pytest.mark.parametrize("name, per_output", [("mult", lambda k: (k, k - 1, 0)), ("shift", lambda k: (0, k - 1, k)),
                                              ("add", lambda k: (0, 2 * k - 1, 0))])
def test_shipped_kinds_count_as_documented(name, per_output):
    """(mults, adds, shifts) per output of K terms, as docs/method-notes.md (section 7.3) states them,
    independently of the rules the modules read; a bias adds one addition per output."""
    for k, n, bias in [(1, 7, False), (27, 4, True), (576, 1, False)]:
        mults, adds, shifts = per_output(k)
        assert op_counts(name, k, n, bias) == {"macs": k * n, "mults": mults * n, "adds": (adds + bias) * n, "shifts": shifts * n}
