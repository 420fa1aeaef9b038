"""The adder as one custom op (opcheck, torch.compile) and its Triton GPU kernels, checked on CPU.

* The Triton kernels' parity with the float64 reference runs in a child pytest process under
  Triton's interpreter (``tests/triton_interp_checks.py``, ``TRITON_INTERPRET=1`` set in the child's
  environment from its start), so the variable never leaks into this process or other tests.
* The same kernels are compiled ahead of time for an sm_90 GPU (H100/H200 class) here, without a
  GPU: this catches what the interpreter does not (types, layouts, register spills).
* CUDA-only checks skip without a GPU.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nas.errors import ConfigError
from nas.ops import reference as R
from nas.ops.adder import ENV_BACKEND, AdderConv2d, AdderLinear, _Conv, adder_conv2d, backend_for

ROOT = Path(__file__).resolve().parents[1]
HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (pip install shiftaddaug[gpu])")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


@needs_triton
def test_triton_kernels_match_reference_under_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    env.pop(ENV_BACKEND, None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-p", "no:cacheprovider", "tests/triton_interp_checks.py"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, out
    summary = proc.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary and "failed" not in summary, out


def test_interpreter_setting_did_not_leak_into_this_process():
    assert os.environ.get("TRITON_INTERPRET") != "1"
    if "nas.ops.adder_triton" in sys.modules:  # imported here: its kernels are the compiled kind
        from nas.ops import adder_triton

        assert type(adder_triton._fwd_kernel).__name__ == "JITFunction"


# ---- ahead-of-time compilation for a GPU target (no GPU needed) ----

# (batch, in, out, size, kernel, stride, groups): the benchmark shapes, a grouped layer, a strided
# layer and a classifier (linear = 1 x batch image)
COMPILE_SHAPES = {
    "dense 3x3": (64, 32, 32, 16, 3, 1, 1),
    "pointwise": (64, 96, 32, 16, 1, 1, 1),
    "depthwise 3x3": (64, 96, 96, 16, 3, 1, 96),
    "groups 16, stride 2": (8, 64, 64, 16, 3, 2, 16),
}


def _cubin_resources(cubin: bytes, tmp_path: Path) -> dict[str, int]:
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        pytest.skip("triton wheel without cuobjdump")
    path = tmp_path / "kernel.cubin"
    path.write_bytes(cubin)
    out = subprocess.run([str(tool), "-res-usage", str(path)], capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if "REG:" in ln)
    return {k: int(v) for k, v in (f.split(":") for f in line.split() if ":" in f and f.split(":")[1].isdigit())}


@needs_triton
def test_kernels_compile_for_sm90_without_register_spills(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "cache"))
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from nas.ops import adder_triton as T

    seen = set()
    for name, (n, cin, cout, size, k, stride, groups) in COMPILE_SHAPES.items():
        x = torch.empty(n, cin, size, size, device="meta")
        w = torch.empty(cout, cin // groups, k, k, device="meta")
        c = _Conv(x, w, (stride, stride), (k // 2, k // 2), (1, 1), groups)
        for kind in ("forward", "input", "weight"):
            kernel, _, const = T.launch_config(kind, c, torch.float32)
            key = (kernel.fn.__name__, tuple(sorted((k_, str(v)) for k_, v in const.items())))
            if key in seen:
                continue
            seen.add(key)
            names = kernel.arg_names
            sig = {a: "constexpr" if a in const else ("*fp32" if a.endswith("_ptr") else "i32") for a in names}
            src = ASTSource(fn=kernel, signature=sig, constexprs={(names.index(a),): v for a, v in const.items()})
            compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": T.NUM_WARPS})
            res = _cubin_resources(compiled.asm["cubin"], tmp_path)
            assert res["LOCAL"] == 0 and res["STACK"] == 0, (name, kind, const, res)  # no spills
            assert res["REG"] <= 255, (name, kind, res)
    assert len(seen) >= 6


# ---- the custom op: backend choice, opcheck, torch.compile (CPU) ----


def test_backend_choice_on_cpu(monkeypatch):
    monkeypatch.delenv(ENV_BACKEND, raising=False)
    assert backend_for(torch.zeros(1)) in ("ext", "torch")
    monkeypatch.setenv(ENV_BACKEND, "cuda-please")
    with pytest.raises(ConfigError) as err:
        adder_conv2d(torch.randn(1, 1, 3, 3), torch.randn(1, 1, 3, 3))
    assert err.value.field == ENV_BACKEND and "auto, triton" in str(err.value)


@needs_triton
def test_forcing_triton_on_cpu_without_the_interpreter_is_one_clear_error(monkeypatch):
    monkeypatch.setenv(ENV_BACKEND, "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="TRITON_INTERPRET=1"):
        adder_conv2d(torch.randn(1, 1, 3, 3), torch.randn(1, 1, 3, 3))


OPCHECK_CASES = [
    pytest.param((2, 4, 5, 6), (6, 2, 3, 3), [1, 2], [1, 1], [1, 1], 2, id="grouped-strided"),
    pytest.param((1, 3, 4, 4), (3, 1, 3, 3), [1, 1], [2, 2], [2, 2], 3, id="depthwise-dilated"),
    pytest.param((2, 5, 3, 3), (4, 5, 1, 1), [1, 1], [0, 0], [1, 1], 1, id="pointwise"),
]


@pytest.mark.parametrize("xs,ws,stride,padding,dilation,groups", OPCHECK_CASES)
def test_opcheck_forward_and_backward(backend, xs, ws, stride, padding, dilation, groups):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*xs, generator=gen, requires_grad=True)
    w = torch.randn(*ws, generator=gen, requires_grad=True)
    args = (stride, padding, dilation, groups)
    torch.library.opcheck(torch.ops.shiftaddaug.adder_conv2d.default, (x, w, *args, 0.2))
    y = torch.ops.shiftaddaug.adder_conv2d(x, w, *args, None)
    gy = torch.randn(y.shape, generator=gen)
    for need in ((True, True), (True, False), (False, True)):
        torch.library.opcheck(
            torch.ops.shiftaddaug.adder_conv2d_backward.default, (gy, x.detach(), w.detach(), *args, *need)
        )


def _small_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        AdderConv2d(3, 8, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        AdderConv2d(8, 8, 3, stride=2, padding=1, groups=8, eta=None),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        AdderLinear(8, 5),
    )


def _step(model, x):
    for p in model.parameters():
        p.grad = None
    y = model(x)
    y.square().sum().backward()
    return y.detach(), [p.grad.clone() for p in model.parameters()]


def test_torch_compile_traces_one_op_per_adder_layer():
    """Dynamo + AOTAutograd trace the model in one graph (fullgraph) with the adder as an opaque op
    and its registered backward; results equal eager mode exactly (aot_eager runs the same kernels)."""
    model = _small_net()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        from torch._dynamo.backends.common import aot_autograd

        return aot_autograd(fw_compiler=lambda g, _: g, bw_compiler=lambda g, _: g)(gm, example_inputs)

    compiled = torch.compile(model, backend=backend, fullgraph=True)
    y_c, g_c = _step(compiled, x)
    y_e, g_e = _step(model, x)
    assert len(graphs) == 1
    code = graphs[0].code
    assert code.count("shiftaddaug.adder_conv2d") == 3  # two convs and the linear
    assert torch.equal(y_c, y_e)
    assert all(torch.equal(a, b) for a, b in zip(g_c, g_e, strict=True))


@pytest.mark.slow
def test_torch_compile_inductor_on_cpu():
    """Inductor (C++ codegen on CPU) around the custom op: same outputs and gradients up to
    reassociation in the fused BatchNorm/ReLU kernels. Slow (tens of seconds of compilation)."""
    model = _small_net()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    y_c, g_c = _step(torch.compile(model, fullgraph=True), x)
    y_e, g_e = _step(model, x)
    assert rel_err(y_c, y_e) < 1e-5
    assert all(rel_err(a, b) < 1e-3 for a, b in zip(g_c, g_e, strict=True))


# ---- on a GPU ----


@needs_cuda
@needs_triton
@pytest.mark.gpu
@pytest.mark.parametrize("groups", [1, 2, 8])
@pytest.mark.parametrize("eta", [0.2, None])
def test_cuda_triton_matches_cpu_reference(groups, eta):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 9, 7, generator=gen)
    w = torch.randn(8, 8 // groups, 3, 3, generator=gen)
    gy = torch.randn(2, 8, 5, 4, generator=gen)
    opts = dict(stride=2, padding=1, groups=groups, eta=eta)
    xc, wc = x.cuda().requires_grad_(), w.cuda().requires_grad_()
    assert backend_for(xc) == "triton"
    y = adder_conv2d(xc, wc, **opts)
    y.backward(gy.cuda())
    xr, wr = x.double().requires_grad_(), w.double().requires_grad_()
    y_ref = R.adder_conv2d_reference(xr, wr, **opts)
    y_ref.backward(gy.double())
    assert rel_err(y.cpu(), y_ref) < 1e-5
    assert rel_err(xc.grad.cpu(), xr.grad) < 1e-4 and rel_err(wc.grad.cpu(), wr.grad) < 1e-4

