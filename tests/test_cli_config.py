"""One command, many verbs; every configuration field reachable from a flag or --config FILE; a run's
own config.json trains the same run again."""

import dataclasses
import json

import pytest
import torch
import yaml

from nas.cli import VERBS, main, search_main, train_main
from nas.cli import search as search_cli
from nas.cli import train as train_cli
from nas.cli.common import config_values
from nas.config import field_infos
from nas.errors import ConfigError
from nas.search.pipeline import SearchConfig
from nas.train.trainer import MethodConfig, TrainConfig

TINY_TRAIN = ["--model", "mbv2-tiny", "--op", "shift", "--epochs", "1", "--max-train-images", "96", "--batch-size", "32",
              "--width-mults", "1,1.5", "--expand-mults", "1,1.5", "--bn-images", "64", "--quiet"]


# ---------------------------------------------------------------------------------- verbs and aliases
@pytest.mark.parametrize("verb", list(VERBS))
def test_the_verb_and_its_alias_are_one_command(verb, capsys):
    alias = VERBS[verb][0]
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    via_verb = capsys.readouterr().out
    with pytest.raises(SystemExit):
        alias(["--help"])
    assert capsys.readouterr().out == via_verb and f"usage: shiftaddaug {verb}" in via_verb
    assert f"Also installed as shiftaddaug-{verb}" in " ".join(via_verb.split())


def test_shiftaddaug_lists_its_verbs_and_refuses_others(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {v} " in out for v in VERBS)
    assert main(["serach"]) == 2
    err = capsys.readouterr().err
    assert err == "error: command: got 'serach'; allowed: search, train, cost, lut, export (shiftaddaug --help)\n"
    assert main(["cost", "--model", "mbv2-tiny", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["op"] == "mult"


# ---------------------------------------------------------------------------------- every knob reachable
def _other_value(info):
    """A valid value of the field other than its default."""
    if info.choices is not None:
        return next(c for c in info.choices if c != info.default)
    return {"bool": lambda: not info.default, "int": lambda: (info.default or 0) + 3,
            "float": lambda: 0.25 if info.default != 0.25 else 0.5, "floats": lambda: (info.container or tuple)((1.0, 1.5)),
            "str": lambda: "x-" + str(info.name)}[info.kind]()


def _flag(info, value) -> list[str]:
    if info.kind == "bool":
        return [info.flag if value else "--no-" + info.flag[2:]]
    if info.kind == "floats":
        return [info.flag, ",".join(str(v) for v in value)]
    return [info.flag, str(value)]


@pytest.mark.parametrize("cls, parser", [(TrainConfig, train_cli.build_parser), (SearchConfig, search_cli.build_parser)])
def test_every_field_is_a_flag_or_a_config_key(cls, parser):
    p = parser()
    flags = {s for a in p._actions for s in a.option_strings}
    file_only = {"subnet", "target_arch", "target_blocks"}
    for info in field_infos(cls):
        if info.name in file_only:
            assert not info.cli
            continue
        assert info.cli and info.flag in flags, info.name
        assert info.help, f"{cls.__name__}.{info.name} has no help text"
        value = _other_value(info)
        args = p.parse_args(_flag(info, value))
        assert config_values(args, cls, "x", "y") == {info.name: value}, info.name
    # the reconstructions that used to be config-only are flags, in train and search
    for name in ("stop_width", "sort_channels", "depth_decay", "kl_weight", "remap_lr_scale", "branch_norm", "warmup_epochs"):
        assert "--" + name.replace("_", "-") in flags
    assert {f.name for f in dataclasses.fields(MethodConfig)} <= {f.name for f in dataclasses.fields(cls)}


def test_eta_zero_or_off_turns_it_off():
    p = train_cli.build_parser()
    for text in ("0", "off"):
        assert train_cli.train_config(p.parse_args(["--model", "mcunet", "--eta", text])).eta is None
    assert TrainConfig(eta=0).eta is None  # from Python or a file too


def test_a_config_file_then_flags(tmp_path):
    (tmp_path / "recipe.yaml").write_text("train:\n  model: mcunet\n  op: add\n  stop_width: 0.3\n  sort_channels: false\n"
                                          "  width_mults: [1, 1.5]\n  epochs: 4\n")
    p = train_cli.build_parser()
    cfg = train_cli.train_config(p.parse_args(["--config", str(tmp_path / "recipe.yaml"), "--epochs", "2", "--arch", "a.json"]))
    assert (cfg.op, cfg.stop_width, cfg.sort_channels, cfg.width_mults, cfg.epochs) == ("add", 0.3, False, (1.0, 1.5), 2)
    assert (cfg.model, cfg.arch) == (None, "a.json")  # --arch on the command line replaces the file's --model
    (tmp_path / "plain.json").write_text(json.dumps({"budget": "15uJ", "op": "add", "branch_norm": False, "trials": 7}))
    args = search_cli.build_parser().parse_args(["--config", str(tmp_path / "plain.json"), "--trials", "9"])
    c = SearchConfig(**config_values(args, SearchConfig, "search", "train")).resolved()
    assert (c.budget, c.op, c.branch_norm, c.trials) == ("15uJ", "add", False, 9)


@pytest.mark.parametrize("text, msg", [
    ("train:\n  stop_widht: 0.3\n", "{f}.train.stop_widht: got 0.3; unknown key; did you mean 'stop_width'?"),
    ("epochs: ten\n", "{f}.epochs: got 'ten'; expected an integer"),
    ("width_mults: 1.5\n", "{f}.width_mults: got 1.5; expected a list of numbers"),
    ("aug: magic\n", "{f}.aug: got 'magic'; allowed: none, netaug, shiftaddaug"),
    ("search:\n  budget: 1mJ\n", "--config: got '{f}'; a train configuration; this file holds a search one"),
    ("train: {}\nextra: 1\n", "{f}.extra: got 1; unknown key next to 'train'"),
    ("- 1\n", "{f}: got [1]; a mapping"),
])
def test_bad_config_files_are_one_line(tmp_path, capsys, text, msg):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    assert train_main(["--config", str(f), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + msg.format(f=f)) and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_search_config_json_is_read_back(tmp_path):
    """A search's own config.json (as SearchRun.setup writes it) gives the same configuration."""
    cfg = SearchConfig(budget="15uJ", op="add", stop_width=0.4, kl_weight=3.0, lr=0.02, trials=5).resolved()
    (tmp_path / "config.json").write_text(json.dumps({"schema_version": 1, "kind": "search", "search": cfg.to_dict()}))
    args = search_cli.build_parser().parse_args(["--config", str(tmp_path / "config.json")])
    assert SearchConfig(**config_values(args, SearchConfig, "search", "train")).resolved() == cfg
    with pytest.raises(ConfigError, match="a train configuration; this file holds a search one"):
        train_cli.train_config(train_cli.build_parser().parse_args(["--config", str(tmp_path / "config.json")]))


def test_resume_names_the_config_flags_it_ignores(tmp_path, capsys):
    assert search_main(["--resume", str(tmp_path / "none"), "--stop-width", "0.2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "ignored: --stop-width" in err
    for cmd in (search_main, train_main):
        assert cmd(["--resume", str(tmp_path / "none"), "--overwrite"]) == 2
        assert capsys.readouterr().err == "error: --overwrite: got True; not with --resume (it continues the run)\n"


# ---------------------------------------------------------------------------------- a run's config.json reproduces it
def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_a_runs_config_json_trains_the_same_run_again(tmp_path, capsys):
    first, again = tmp_path / "first", tmp_path / "again"
    verbose = [a for a in TINY_TRAIN if a != "--quiet"] + ["-v"]
    assert main(["train"] + verbose + ["--stop-width", "0.25", "--no-sort-channels", "--out", str(first)]) == 0
    err = capsys.readouterr().err.splitlines()  # -v: the library's debug records, as plain lines on stderr
    assert any(line.startswith("training mbv2-tiny (shift, aug shiftaddaug) in ") for line in err)
    assert "epoch 1/1: loss" in "\n".join(err)
    assert train_main(["--config", str(first / "config.json"), "--out", str(again), "--quiet"]) == 0
    assert capsys.readouterr().err == ""  # -q: warnings and errors only
    a, b = (json.loads((d / "summary.json").read_text()) for d in (first, again))
    assert (a["val_acc"], a["test_acc"]) == (b["val_acc"], b["test_acc"])
    wa, wb = _weights(first / "target" / "weights.pt"), _weights(again / "target" / "weights.pt")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)  # bit-identical export
    ca, cb = (json.loads((d / "config.json").read_text())["train"] for d in (first, again))
    assert ca == cb and ca["stop_width"] == 0.25 and ca["sort_channels"] is False
    # read as YAML it is the same configuration (PyYAML reads 4e-05 as a string; the reader takes it as the number)
    (tmp_path / "as.yaml").write_text((first / "config.json").read_text())
    assert yaml.safe_load((tmp_path / "as.yaml").read_text())["train"]["weight_decay"] == "4e-05"
    p = train_cli.build_parser()
    from_yaml, from_json = (train_cli.train_config(p.parse_args(["--config", str(f)])) for f in (tmp_path / "as.yaml", first / "config.json"))
    assert from_yaml == from_json and from_json.weight_decay == 4e-05
