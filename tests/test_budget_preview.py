"""Budgets against the cost range of a space: the preview (--dry-run), the check that runs before
any data is read, where a budget binds, the imagenet preset and its space, the Pareto plot's axis."""

import json

import pytest

from nas.cli import search_main
from nas.cost.budget import parse_budget
from nas.cost.energy import price_arch
from nas.cost.shapes import space_layers
from nas.cost.tables import LookupTable, shipped_energy_table
from nas.errors import ConfigError, InfeasibleBudgetError
from nas.paths import LATENCY_TABLES, SEARCH_SPACES
from nas.search.pipeline import PRESETS, SearchConfig, SearchRun, budget_preview, where_budget_binds
from nas.space import SearchSpace


def _model_range(space: SearchSpace, op: str) -> tuple[float, float]:
    """Cheapest and dearest network, straight from the energy model (no table)."""
    return (price_arch(space.min_arch().with_ops(op)).energy_mJ, price_arch(space.max_arch().with_ops(op)).energy_mJ)


@pytest.fixture
def no_data(monkeypatch):
    """Reading any dataset fails the test."""
    import nas.data
    import nas.data.loader

    def boom(*a, **k):
        raise AssertionError("a dataset was read")

    for mod in (nas.data, nas.data.loader):
        monkeypatch.setattr(mod, "build_loaders", boom)
        monkeypatch.setattr(mod, "load_dataset", boom)


@pytest.mark.parametrize("op", ["shift", "add"])
def test_dry_run_imagenet_20mJ_binds(op, capsys, no_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs would go to ./runs
    assert search_main(["--budget", "20mJ", "--preset", "imagenet", "--op", op, "--dry-run", "--json"]) == 0
    out = capsys.readouterr().out
    info = json.loads(out)  # exactly one JSON object
    assert out.count("\n") == 1
    assert (info["space"], info["op"], info["preset"], info["dataset"]) == ("mobile224", op, "imagenet", "folder")
    assert info["budget"] == {"metric": "energy", "value": 20.0, "unit": "mJ"} and info["unit"] == "mJ"
    lo, hi = info["cost_range"]
    assert lo < 20 < hi and info["binds"] and info["feasible"] and "binds_in" not in info
    # the shipped table prices exactly what the energy model gives, at 224 px and 1000 classes
    space = SearchSpace.load("mobile224")
    assert (info["resolution"], info["num_classes"], info["num_classes_from"]) == (224, 1000, "space")
    assert (lo, hi) == pytest.approx(_model_range(space, op), rel=1e-12)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_dry_run_human_readable(capsys, no_data):
    assert search_main(["--budget", "20mJ", "--dry-run"]) == 0  # the default space: tiny
    out = capsys.readouterr().out
    lo, hi = _model_range(SearchSpace.load("tiny"), "shift")
    assert f"{lo:.4g} ... {hi:.4g} mJ" in out
    assert "does not bind" in out and "preset imagenet (space mobile224" in out


def test_where_a_budget_binds_is_computed_from_the_shipped_spaces():
    budget = parse_budget("20mJ")
    for op in ("shift", "add"):
        want = []
        for path in sorted(SEARCH_SPACES.glob("*.yaml")):
            space = SearchSpace.load(path)
            lo, hi = _model_range(space, op)
            if lo <= 20 < hi:
                want.append(space.name)
        got = where_budget_binds(budget, op)
        assert [p["space"] for p in got] == want == ["mobile224"]
        assert got[0]["presets"] == ["imagenet"]
    small = where_budget_binds(parse_budget("0.03mJ"), "shift")
    assert [(p["space"], p["presets"]) for p in small] == [("tiny", ["quick"])]


def test_preview_of_the_default_job_is_unchanged():
    info = budget_preview(SearchConfig())
    assert (info["space"], info["dataset"], info["num_classes"], info["num_classes_from"]) == ("tiny", "mnist5k", 10, "dataset")
    lo, hi = info["cost_range"]
    assert (lo, hi) == pytest.approx(_model_range(SearchSpace.load("tiny"), "shift"), rel=1e-12)
    assert info["binds"] and lo < 0.02 < hi
    # a fixed class count is taken from the dataset: CIFAR-100 prices the classifier with 100 outputs
    c100 = budget_preview(SearchConfig(budget="20mJ", preset="imagenet", dataset="cifar100"))
    assert c100["num_classes"] == 100 and c100["num_classes_from"] == "dataset"
    assert c100["cost_range"][1] < budget_preview(SearchConfig(budget="20mJ", preset="imagenet"))["cost_range"][1]
    # once a folder has been read, its own class count (SearchRun.run prices again with it)
    seven = budget_preview(SearchConfig(budget="20mJ", preset="imagenet"), num_classes=7)
    assert (seven["num_classes"], seven["num_classes_from"]) == (7, "dataset")


def test_infeasible_budget_stops_before_data_and_names_where_it_binds(tmp_path, no_data):
    # imagenet reads an image folder; none is given, so reading data first would be a ConfigError
    run = SearchRun(SearchConfig(budget="0.03mJ", preset="imagenet"), tmp_path / "r", progress=False)
    with pytest.raises(InfeasibleBudgetError) as e:
        run.run()
    msg = str(e.value)
    lo = _model_range(SearchSpace.load("mobile224"), "shift")[0]
    assert f"the smallest feasible budget is {lo:.4g} mJ" in msg
    assert "it binds for shift in: preset quick (space tiny, " in msg and "\n" not in msg
    assert not (tmp_path / "r").exists()


def test_binding_budget_goes_on_to_the_data(tmp_path):
    # the price check passes, then the missing --data-root of the folder dataset is reported
    run = SearchRun(SearchConfig(budget="20mJ", preset="imagenet", op="add"), tmp_path / "r", progress=False)
    with pytest.raises(ConfigError, match="data"):
        run.run()


def test_presets_and_datasets():
    assert SearchConfig().resolved().dataset == "mnist5k"
    assert SearchConfig(preset="paper").resolved().dataset == PRESETS["paper"].get("dataset", "mnist5k")
    im = SearchConfig(preset="imagenet").resolved()
    assert (im.space, im.dataset) == ("mobile224", "folder")
    assert SearchConfig(preset="imagenet", dataset="cifar100").resolved().dataset == "cifar100"
    space = SearchSpace.load(im.space)
    assert (space.resolution, space.num_classes) == (224, 1000)
    assert im.batch_size >= 128 and im.trials >= 100 and im.population >= 50 and im.final_epochs >= 100


def test_mobile224_table_is_shipped_complete_and_small():
    space = SearchSpace.load("mobile224")
    path = LATENCY_TABLES / "mobile224-eyeriss-45nm-32bit-energy.csv"
    assert path.stat().st_size < 2 * 1024 * 1024
    t = LookupTable.load(path)
    assert not t.missing(space_layers(space, ("mult", "shift", "add")))  # every shape of every convention
    assert t.header["command"].startswith("shiftaddaug-lut build --space mobile224")
    assert t.header["conventions"]["add"] == {"dense": "add", "dw": "mult", "se": "add", "classifier": "mult"}
    assert shipped_energy_table(space) is not None and shipped_energy_table(space, bits=16) is None
    # mult: the whole space is dearer than its MF versions; MobileNetV2-1.0 at 224 (5.8 / 9.1 / 18.2 mJ) lies inside
    lo, hi = _model_range(space, "mult")
    assert lo < 18.2 < hi


def _trials(path, costs):
    rows = ["number,state,feasible,cost,accuracy"] + [f"{i},COMPLETE,{c <= 1},{c},{50 + i}" for i, c in enumerate(costs)]
    path.write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize("costs, binds, scale", [
    ([0.5, 0.8, 1.0, 1.4], True, "linear"),   # a narrow range around a binding budget
    ([0.5, 0.8, 1.0, 1.4], False, "log"),     # the budget does not bind
    ([0.05, 0.8, 1.0, 1.4], True, "log"),     # candidates over more than LOG_AXIS_SPAN
])
def test_pareto_cost_axis(tmp_path, monkeypatch, costs, binds, scale):
    import matplotlib.axes

    seen = []
    orig = matplotlib.axes.Axes.set_xscale
    monkeypatch.setattr(matplotlib.axes.Axes, "set_xscale", lambda self, v, **k: (seen.append(v), orig(self, v, **k)))
    run = SearchRun(SearchConfig(budget="1mJ"), tmp_path, progress=False)
    _trials(tmp_path / "trials.csv", costs)
    run.plot_pareto({"cost": 1.0, "accuracy": 52}, binds=binds)
    assert (tmp_path / "pareto.png").is_file()
    assert (seen or ["linear"])[-1] == scale
