"""The shared training loop: devices, precision, random streams, resume across devices.

CUDA cannot run on the CI machines: the tests marked ``gpu`` skip there; everything else runs on
the CPU (bf16 autocast works on CPU).
"""

import json

import pytest
import torch

import nas.ops.hybrid as hybrid
from nas.cli import train_main
from nas.errors import ConfigError
from nas.export import load_exported
from nas.models import zoo_arch
from nas.ops.hybrid import HybridConv2d
from nas.supernet.net import DynamicNet
from nas.train.loop import autocast, resolve_device
from nas.train.trainer import TrainConfig, Trainer, resume_trainer

CUDA = torch.cuda.is_available()
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


def small_cfg(**kw):
    base = dict(model="mbv2-tiny", op="shift", aug="shiftaddaug", epochs=1, batch_size=32, max_train_images=64,
                bn_images=64, width_mults=(1.0, 1.5), expand_mults=(1.0, 1.5), aug_depth=1, seed=3, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


# ---------------------------------------------------------------------------------- devices
def test_devices_resolve_or_fail_in_one_line():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")
    with pytest.raises(ConfigError, match="^device: got 'tpu'; allowed: auto"):
        resolve_device("tpu")
    with pytest.raises(ConfigError, match="^device: got 'cuda:x'"):
        resolve_device("cuda:x")
    if not CUDA:
        with pytest.raises(ConfigError, match="^device: got 'cuda:1'; no CUDA device is available here"):
            resolve_device("cuda:1")


@pytest.mark.skipif(CUDA, reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("argv", [["--model", "mbv2-tiny", "--device", "cuda"], ["--model", "mbv2-tiny", "--precision", "fp16", "--op", "add"]])
def test_cli_device_and_precision_errors_are_one_line(argv, capsys, tmp_path):
    assert train_main(argv + ["--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(("error: device: got 'cuda'; no CUDA device", "error: precision: got 'fp16'"))
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------- precision
def _layers():
    """(op, a 16 -> 24 channel 3x3 HybridConv2d, an input) for shift and add."""
    torch.manual_seed(0)
    x = torch.randn(4, 16, 8, 8)
    for op in ("shift", "add"):
        yield op, HybridConv2d(16, 24, 3), x


def test_mf_layers_compute_in_float32_under_autocast(monkeypatch):
    """Under bf16 autocast a fully MF layer gives its float32 output exactly; in the hybrid
    configuration the MF prefix gets float32 inputs with autocast off, the rest runs in bf16."""
    seen = []
    real = hybrid.mf_conv2d

    def spy(op, x, w, *a):
        seen.append((x.dtype, w.dtype, torch.is_autocast_enabled("cpu")))
        return real(op, x, w, *a)

    monkeypatch.setattr(hybrid, "mf_conv2d", spy)
    for op, layer, x in _layers():
        layer.configure(24, 3, op, 24, 16)
        ref = layer(x)
        with autocast(torch.device("cpu"), "bf16"):
            low = layer(x.bfloat16())  # a bf16 activation from the layer before
        assert low.dtype == torch.float32 and torch.equal(low, layer(x.bfloat16().float()))
        assert torch.allclose(low, ref, rtol=0.05, atol=0.05 * ref.abs().max().item())
        layer.configure(24, 3, op, 8, 10)  # hybrid: 8 MF outputs over 10 inputs, the rest multiplicative
        with autocast(torch.device("cpu"), "bf16"):
            y = layer(x)
        assert y.dtype == torch.float32 and y.shape == (4, 24, 8, 8)
    assert seen and all(s == (torch.float32, torch.float32, False) for s in seen)


def test_bf16_training_on_cpu(tmp_path, monkeypatch):
    seen = []
    real = hybrid.mf_conv2d
    monkeypatch.setattr(hybrid, "mf_conv2d", lambda op, x, w, *a: seen.append((x.dtype, torch.is_autocast_enabled("cpu"))) or real(op, x, w, *a))
    t = Trainer(small_cfg(precision="bf16", op="add"), tmp_path, progress=False)
    bn_inputs = set()  # what the BatchNorms after MF and after multiplicative convs receive
    for m in t.net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.register_forward_hook(lambda mod, inp, out: bn_inputs.add(inp[0].dtype) if mod.training else None)
    s = t.fit()
    row = (tmp_path / "metrics.csv").read_text().splitlines()[1].split(",")
    assert all(torch.isfinite(torch.tensor(float(v))) for v in row[2:6])  # lr, loss, acc, loss_aug
    assert bn_inputs == {torch.bfloat16, torch.float32}  # multiplicative convs under autocast, MF ones not
    assert seen and set(seen) == {(torch.float32, False)}  # every MF forward: float32, autocast off
    weights = torch.load(tmp_path / "target" / "weights.pt", weights_only=True)
    assert all(v.dtype in (torch.float32, torch.int64) and v.device.type == "cpu" for v in weights.values())
    assert s["export"]["max_abs_logit_diff"] < 1e-4
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["train"]["precision"] == "bf16" and cfg["runtime"] == {**cfg["runtime"], "device": "cpu", "precision": "bf16"}


def test_fp16_needs_no_adder_gradient_scale_and_runs_with_loss_scaling(tmp_path):
    with pytest.raises(ConfigError, match="^precision: got 'fp16'; fp16 loss scaling cancels"):
        small_cfg(precision="fp16", op="add").validate()
    small_cfg(precision="fp16", op="add", eta=None).validate()
    t = Trainer(small_cfg(precision="fp16", aug="none"), tmp_path, progress=False)
    assert t.scaler.is_enabled()
    t.fit()
    sd = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert "scaler" in sd and sd["scaler"]["scale"] > 0


# ---------------------------------------------------------------------------------- random streams
def test_training_leaves_the_global_random_stream_alone(tmp_path):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    t = Trainer(small_cfg(), tmp_path, progress=False)
    t.fit()
    assert torch.equal(torch.get_rng_state(), before)
    # the same seed builds the same weights, whatever the global stream is doing
    torch.manual_seed(7)
    again = Trainer(small_cfg(), tmp_path / "b", progress=False)
    fresh = Trainer(small_cfg(), tmp_path / "c", progress=False)
    for (n, p), q in zip(again.net.state_dict().items(), fresh.net.state_dict().values()):
        assert torch.equal(p, q), n


def test_dropout_draws_from_the_loop_generator_as_f_dropout_draws_from_torch():
    from nas.arch import ClassifierSpec

    a = zoo_arch("mbv2-tiny", "shift", 32, 10)
    a = a.replace(classifier=ClassifierSpec(op=a.classifier.op, dropout=0.3))
    net = DynamicNet(a).train()
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(11)
    g = torch.Generator()
    g.set_state(torch.get_rng_state())
    net.generator = None
    global_stream = net(x)  # F.dropout, torch's global stream
    net.generator = g
    explicit = net(x)
    assert torch.equal(global_stream, explicit)
    assert not torch.equal(explicit, net(x))  # the generator moved on: another mask


def test_resume_on_another_kind_of_device_reseeds_only_the_device_generator(tmp_path):
    t = Trainer(small_cfg(epochs=2), tmp_path, progress=False)
    t.fit(until_epoch=1)
    sd = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert sd["rng"]["torch_device"] == "cpu"
    sd["rng"]["torch_device"] = "cuda"  # as if written on a GPU
    torch.save(sd, tmp_path / "checkpoint.pt")
    r = resume_trainer(tmp_path, progress=False, device="cpu")
    assert r.epoch == 1 and r.loaders.train.state_dict()["epoch"] == 1
    assert r.py_rngs["aug"].getstate() == t.py_rngs["aug"].getstate()
    assert r.fit()["epochs"] == 2


# ---------------------------------------------------------------------------------- CUDA (skipped without a GPU)
@gpu
@needs_cuda
def test_cuda_training_exports_cpu_float32_weights_equal_to_the_trained_target(tmp_path):
    t = Trainer(small_cfg(device="cuda", precision="bf16", op="add"), tmp_path, progress=False)
    assert next(t.net.parameters()).is_cuda and t.calib[0][0].is_cuda
    s = t.fit()
    assert s["export"]["max_abs_logit_diff"] < 1e-4
    model = load_exported(tmp_path / "target")
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
    x = t.calib[0][0][:8]
    t.net.set_active_subnet(t.target, t.target_blocks)
    t.net.eval()
    with torch.no_grad():
        assert torch.allclose(model(x.cpu()), t.net(x).cpu(), atol=1e-3)


@gpu
@needs_cuda
def test_a_cuda_run_resumes_on_the_cpu(tmp_path):
    Trainer(small_cfg(device="cuda", epochs=2), tmp_path, progress=False).fit(until_epoch=1)
    r = resume_trainer(tmp_path, progress=False, device="cpu")
    assert r.device.type == "cpu" and r.epoch == 1
    assert r.fit()["epochs"] == 2
    assert json.loads((tmp_path / "config.json").read_text())["train"]["device"] == "cpu"


@gpu
@needs_cuda
def test_hybrid_layers_on_cuda_match_the_cpu():
    for op, layer, x in _layers():
        layer.configure(24, 3, op, 8, 10)
        ref = layer(x)
        assert torch.allclose(layer.cuda()(x.cuda()).cpu(), ref, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------- the paper preset and the search CLI
def test_paper_preset_is_netaugs_recipe_on_cifar100():
    from nas.search.pipeline import SearchConfig

    p = SearchConfig(preset="paper").resolved()
    assert (p.dataset, p.space, p.final_epochs, p.batch_size, p.lr, p.warmup_epochs) == ("cifar100", "paper160", 250, 128, 0.025, 5.0)
    assert SearchConfig(preset="paper", batch_size=1024).resolved().lr == pytest.approx(0.2)  # 0.025 per 128 images
    assert SearchConfig(preset="paper", batch_size=1024, lr=0.1).resolved().lr == 0.1
    q = SearchConfig().resolved()  # the default job is unchanged
    assert (q.dataset, q.lr, q.warmup_epochs, q.batch_size, q.device, q.precision, q.workers) == ("mnist5k", 0.05, 1.0, 64, "auto", "fp32", 0)


@pytest.mark.parametrize("argv, msg", [
    (["--preset", "paper", "--budget", "1.3mJ"], "error: data_root: got None; cifar100 needs --data-root"),
    (["--workers", "-1"], "error: --workers: got -1"),
    (["--precision", "fp8"], None),  # argparse's own choices message
] + ([] if CUDA else [(["--device", "cuda:0"], "error: device: got 'cuda:0'; no CUDA device")]))
def test_search_cli_errors_are_one_line(argv, msg, capsys, tmp_path):
    from nas.cli import search_main

    out = tmp_path / "run"
    if msg is None:
        with pytest.raises(SystemExit):
            search_main(argv + ["--out", str(out)])
        return
    assert search_main(argv + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(msg) and err.count("\n") == 1 and not out.exists()


def test_search_refuses_torchrun(monkeypatch, capsys):
    from nas.cli import search_main

    for k, v in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(k, v)
    assert search_main([]) == 2
    assert capsys.readouterr().err.startswith("error: torchrun: got 'shiftaddaug-search'; the search runs data-parallel through --ray-address")


def test_network_and_augmentation_create_no_tensor_on_a_fixed_device():
    """CPU-side proof for CUDA: forward and backward of the target and hybrid passes, and the
    training transform, run on the ``meta`` device (a tensor made on the CPU inside them would
    fail to mix with the meta tensors)."""
    import random

    from nas.data.transforms import BatchTransform
    from nas.train.augment import Augmenter, AugSpec, subnet_for

    for op in ("shift", "add"):
        t = zoo_arch("mbv2-tiny", op, 32, 10)
        sub, tb = subnet_for(t, 1)
        aug = Augmenter(t, tb, sub, AugSpec())
        with torch.device("meta"):  # built there: nothing to initialise
            net = DynamicNet(aug.max_arch)
        x = torch.empty(4, 3, 32, 32, device="meta")
        a, b = aug.sample(random.Random(0), 0.1)
        for cfg in ((t, tb), (a, b, t, tb)):
            net.set_active_subnet(*cfg)
            y = net(x)
            y.sum().backward()
            assert y.device.type == "meta" and y.shape == (4, 10)
    for augment in ("crop", "rrc"):
        tf = BatchTransform(mean=(0.5,) * 3, std=(0.25,) * 3, augment=augment)
        images = torch.empty(4, 3, 32, 32, dtype=torch.uint8, device="meta")
        assert tf(images, torch.Generator().manual_seed(0), (8, torch.arange(0, 8, 2))).device.type == "meta"


# ---------------------------------------------------------------------------------- logs
def test_a_failed_log_write_after_its_checkpoint_heals_on_resume(tmp_path, monkeypatch):
    """Full disk between the checkpoint and metrics.csv of epoch 1: the resumed run rewrites the
    log from the checkpoint's history, so no epoch is missing (it used to keep epoch 2 only)."""
    import csv

    import nas.train.trainer as trainer_mod

    def rows(path):
        with path.open() as f:
            return [{k: v for k, v in r.items() if k != "time_s"} for r in csv.DictReader(f)]

    Trainer(small_cfg(epochs=2), tmp_path / "ref", progress=False).fit()
    real = trainer_mod._write_rows

    def full_disk(path, rows_):
        raise OSError(28, "No space left on device")

    t = Trainer(small_cfg(epochs=2), tmp_path / "run", progress=False)
    monkeypatch.setattr(trainer_mod, "_write_rows", full_disk)
    with pytest.raises(OSError):
        t.fit()
    monkeypatch.setattr(trainer_mod, "_write_rows", real)
    assert (tmp_path / "run" / "checkpoint.pt").is_file() and not (tmp_path / "run" / "metrics.csv").exists()
    r = resume_trainer(tmp_path / "run", progress=False)
    assert r.epoch == 1 and [h["epoch"] for h in r.history] == [1]
    r.fit()
    assert [row["epoch"] for row in rows(tmp_path / "run" / "metrics.csv")] == ["1", "2"]
    assert rows(tmp_path / "run" / "metrics.csv") == rows(tmp_path / "ref" / "metrics.csv")
