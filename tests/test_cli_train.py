"""shiftaddaug-train and shiftaddaug-export from the command line."""

import json

import pytest

from nas.cli import export_main, train_main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    rc = train_main(["--model", "mbv2-tiny", "--op", "add", "--epochs", "1", "--max-train-images", "96", "--batch-size", "32",
                     "--width-mults", "1,1.5", "--expand-mults", "1,1.5", "--out", str(out), "--quiet"])
    assert rc == 0
    return out


def test_train_writes_a_run(run_dir, capsys):
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["op"] == "add" and s["aug"] == "shiftaddaug" and s["export"]["max_abs_logit_diff"] < 1e-4
    cfg = json.loads((run_dir / "config.json").read_text())["train"]
    assert cfg["width_mults"] == [1.0, 1.5] and cfg["branch_norm"] is True


def test_export_json_and_onnx(run_dir, capsys):
    pytest.importorskip("onnxruntime")
    (run_dir / "target" / "weights.pt").unlink()
    assert export_main([str(run_dir), "--format", "all"]) == 0
    out = capsys.readouterr().out
    assert (run_dir / "target" / "weights.pt").is_file() and (run_dir / "target" / "model.onnx").is_file()
    assert "onnx" in out and "Abs" in out  # the adder is written with standard ONNX operators


def test_resume_finished_run_is_a_no_op(run_dir, capsys, monkeypatch):
    from nas.train.loop import TrainLoop

    steps = []
    step = TrainLoop.step
    monkeypatch.setattr(TrainLoop, "step", lambda self, x, y: steps.append(1) or step(self, x, y))
    files = ("metrics.csv", "checkpoint.pt", "summary.json", "config.json")
    before = {n: ((run_dir / n).read_bytes(), (run_dir / n).stat().st_mtime_ns) for n in files}
    assert train_main(["--resume", str(run_dir), "--quiet"]) == 0
    assert steps == []  # not one training step: the work is counted, not only the result compared
    assert {n: ((run_dir / n).read_bytes(), (run_dir / n).stat().st_mtime_ns) for n in files} == before


@pytest.mark.parametrize("argv, msg", [
    (["--model", "mbv2-tiny", "--epochs", "0"], "error: epochs: got 0"),
    (["--op", "add"], "error: --model: got None"),
    (["--model", "mbv2-tiny", "--dataset", "cifar10"], "error: data_root: got None"),
    (["--resume", "/does/not/exist"], "error: --resume: got '/does/not/exist'"),
    (["--model", "mbv2-tiny", "--ray-address", "nowhere"], "error: --ray-address: got 'nowhere'; allowed: local, auto or HOST:PORT"),
])
def test_train_errors_are_one_line(argv, msg, capsys):
    assert train_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(msg) and err.count("\n") == 1


def test_export_needs_a_run(tmp_path, capsys):
    assert export_main([str(tmp_path)]) == 2
    assert "error: RUN_DIR" in capsys.readouterr().err
