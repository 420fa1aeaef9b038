"""The Python API (``nas.search``, ``nas.train``, ``nas.load``) and the library's manners: it logs
(logger ``nas``) instead of printing, and leaves matplotlib's global backend alone."""

import json
import logging

import matplotlib
import pytest
import torch

import nas
from nas.errors import ConfigError, InfeasibleBudgetError

TRAIN = dict(op="shift", epochs=1, max_train_images=96, batch_size=32, width_mults=[1, 1.5], expand_mults=(1, 1.5),
             bn_images=64)
# target/cost.json: one schema whoever writes it (a training run, a search, shiftaddaug export)
COST_KEYS = {"schema_version", "arch_id", "op", "counts", "energy_mJ", "latency_ms", "hardware", "bits", "priced_with",
             "layers", "budget"}
TINY_SEARCH = dict(supernet_epochs=1, population=2, generations=1, trials=2, final_epochs=1, max_train_images=128,
                   eval_images=64, bn_images=64, batch_size=64)


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module, resolution: int) -> bool:
    x = torch.randn(2, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def test_train_returns_the_exported_model_and_load_reads_it_back(tmp_path, caplog, capsys):
    matplotlib.use("pdf")  # the application's choice: the library must not switch it
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="nas"):
        r = nas.train("mbv2-tiny", out=out, progress=False, **TRAIN)
    assert matplotlib.get_backend() == "pdf" and (out / "curves.png").is_file()  # drawn without pyplot
    assert capsys.readouterr().out == ""  # the library printed nothing; it logged
    assert any(rec.name.startswith("nas.") and "epoch 1/1" in rec.getMessage() for rec in caplog.records)

    summary = json.loads((out / "summary.json").read_text())
    cost = json.loads((out / "target" / "cost.json").read_text())
    assert r.run_dir == out and r.summary == summary and r.cost == cost and cost["energy_mJ"] > 0
    assert set(cost) == COST_KEYS and (cost["schema_version"], cost["priced_with"], cost["budget"]) == (2, "energy model", None)
    assert r.accuracy == summary["test_acc"] and r.arch.op_kind == "shift"
    assert not r.model.training and r.paths["weights"] == out / "target" / "weights.pt" and r.paths["weights"].is_file()
    assert json.loads((out / "config.json").read_text())["train"]["width_mults"] == [1.0, 1.5]

    again = nas.load(out)
    assert again.arch == r.arch and again.cost == r.cost and again.accuracy == r.accuracy
    assert _same_outputs(r.model, again.model, r.arch.resolution)
    assert nas.load(out / "target").arch == r.arch  # an exported target/ directory alone loads too

    with pytest.raises(ConfigError, match="out: got .*; a new directory: this one already holds a run"):
        nas.train("mbv2-tiny", out=out, progress=False, **TRAIN)  # a finished run is never silently reused


def test_the_api_checks_its_options_before_touching_the_run_directory(tmp_path):
    with pytest.raises(ConfigError, match="stop_widht: got 0.3; unknown key; did you mean 'stop_width'"):
        nas.train("mbv2-tiny", out=tmp_path / "a", stop_widht=0.3)
    with pytest.raises(ConfigError, match="epochs: got 'two'; expected an integer"):
        nas.train("mbv2-tiny", out=tmp_path / "a", epochs="two")
    with pytest.raises(ConfigError, match="op: got 'mult'; allowed: shift, add"):
        nas.search("0.02mJ", out=tmp_path / "b", op="mult")
    with pytest.raises(InfeasibleBudgetError, match="smallest feasible budget"):
        nas.search("1uJ", out=tmp_path / "c", progress=False)
    assert not any((tmp_path / d).exists() for d in "abc")
    with pytest.raises(ConfigError, match="no target/arch.json"):
        nas.load(tmp_path)


def test_search_returns_the_exported_target_and_its_config_file_is_accepted(tmp_path):
    (tmp_path / "recipe.yaml").write_text("search:\n  trials: 3\n  branch_norm: false\n")
    r = nas.search("0.02mJ", out=tmp_path / "s", config=tmp_path / "recipe.yaml", progress=False,
                   **{**TINY_SEARCH, "trials": 2})  # keyword arguments override the file
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())["search"]
    assert (cfg["trials"], cfg["branch_norm"]) == (2, False)
    assert r.summary["meets_budget"] and r.cost["energy_mJ"] <= 0.02 and r.arch.op_kind == "shift"
    assert set(r.cost) == COST_KEYS and (r.cost["schema_version"], r.cost["priced_with"]) == (2, "lookup table")
    assert r.paths["report"].is_file() and r.paths["pareto"].is_file()
    assert _same_outputs(r.model, nas.load(r.run_dir).model, r.arch.resolution)
    # nas.search is also the package of the search code: both meanings work
    from nas.search.pipeline import SearchConfig

    assert SearchConfig(budget="0.02mJ").op == "shift" and callable(nas.search)
