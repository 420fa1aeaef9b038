"""benchmarks/gpu.py: the CPU dry run goes through every section and writes its table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # about 10 s of CPU, 20-30 s on a shared machine (five trainers, two DDP processes)
def test_gpu_benchmark_dry_run_on_cpu(tmp_path):
    out = tmp_path / "gpu.md"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    env.pop("SHIFTADDAUG_ADDER_BACKEND", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cpu", "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    for heading in ("### Parity", "### AdderConv2d and ShiftConv2d against cuDNN", "### Training step", "### DistributedDataParallel"):
        assert heading in text
    # every operator, hybrid layer and remap kind has a parity row, all within tolerance
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and ln.endswith(" ok |")]
    names = {ln.split(" | ")[0][2:] for ln in rows}
    for must in ("ShiftConv2d Q 3x3", "ShiftLinear PS", "AdderConv2d depthwise", "AdderConv2d groups 4 s2 d2",
                 "AdderLinear", "HybridConv2d dense add branch_norm", "HybridLinear shift", "Remap pwl-kl", "Remap cdf-fc"):  # fmt: skip
        assert must in names, must
    assert "FAIL" not in text and "Verdict: all parity checks passed" in text
    # each benchmark shape timed for conv2d, add and shift; a training row; the DDP step agreed
    for shape in ("dense 3x3", "pointwise", "depthwise 3x3"):
        assert sum(ln.startswith(f"| {shape} | ") for ln in text.splitlines()) == 3
    assert "| direct | add | fp32 |" in text and "| ShiftAddAug | add | fp32 |" in text
    assert "weights identical on both ranks after the step: yes" in text
    assert "Device: CPU" in proc.stdout  # the table is printed as well
