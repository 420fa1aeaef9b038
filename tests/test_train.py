"""ShiftAddAug training: schedules, augmented networks, a real run, exact resume, export."""

import json
import random

import pytest
import torch

from nas.errors import ConfigError
from nas.export import load_exported
from nas.models import zoo_arch
from nas.train.augment import Augmenter, AugSpec, MutationSchedule, subnet_for
from nas.train.trainer import TrainConfig, Trainer, cosine_lr, resume_trainer


def small_cfg(**kw):
    base = dict(model="mbv2-tiny", op="shift", aug="shiftaddaug", epochs=2, batch_size=32, max_train_images=96,
                bn_images=64, width_mults=(1.0, 1.5), expand_mults=(1.0, 1.5), aug_depth=1, lr=0.05, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_cosine_schedule():
    assert cosine_lr(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert cosine_lr(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert cosine_lr(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert cosine_lr(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert cosine_lr(100, 100, 10, 1.0) == pytest.approx(0.0, abs=1e-12)


def test_mutation_schedule_converts_from_the_input_side():
    t = zoo_arch("mcunet", "add", 32, 10)
    m = MutationSchedule(t, 0.5)
    n = len(m.units)
    assert m.converted(0.0) == 1 and m.converted(0.5) == n and m.converted(0.9) == n
    mid = m.target_at(0.25)
    assert mid.stem.op == "add" and mid.classifier.op == "mult"
    ops = [b.op for _, _, b in mid.blocks()]
    k = ops.index("mult")
    assert all(o == "add" for o in ops[:k]) and all(o == "mult" for o in ops[k:])
    assert m.target_at(0.5) == t and MutationSchedule(t, 0.0).target_at(0.0) == t


def test_augmented_networks_contain_the_target():
    t = zoo_arch("mbv3-w0.35", "shift", 32, 10)
    sub, tb = subnet_for(t, 1)
    aug = Augmenter(t, tb, sub, AugSpec(stop_width=0.5))
    rng = random.Random(0)
    widths = set()
    for p in (0.0, 0.1, 0.2, 0.3, 0.6, 0.9):
        a, blocks = aug.sample(rng, p)
        for i, (st, tst) in enumerate(zip(a.stages, t.stages)):
            assert set(tb[i]) <= set(blocks[i])
            assert st.blocks[0].out_channels >= tst.blocks[0].out_channels
        if p >= 0.5:  # width augmentation stopped: stage widths are the SubNet's
            assert [s.blocks[0].out_channels for s in a.stages] == [s.blocks[0].out_channels for s in sub.stages]
        widths.add(a.stages[2].blocks[0].out_channels)
    assert len(widths) > 1
    # at the end of training (depth decay) the extra blocks are gone
    _, blocks = aug.sample(rng, 1.0)
    assert blocks == tb


@pytest.mark.parametrize("bad, field", [
    (dict(aug="mixup"), "aug"), (dict(op="mul"), "op"), (dict(remap="x"), "remap"), (dict(epochs=0), "epochs"),
    (dict(width_mults=(0.5,)), "aug.width_mults"), (dict(hybrid="both"), "hybrid"), (dict(mutation=1.0), "mutation"),
])
def test_config_errors(bad, field):
    with pytest.raises(ConfigError, match=f"^{field}: got"):
        small_cfg(**bad).validate()


def test_run_writes_everything_and_resumes_exactly(tmp_path):
    straight = Trainer(small_cfg(), tmp_path / "a", progress=False)
    summary = straight.fit()
    assert (tmp_path / "a" / "target" / "arch.json").is_file()
    for name in ("config.json", "checkpoint.pt", "metrics.csv", "summary.json", "curves.png"):
        assert (tmp_path / "a" / name).is_file()
    assert summary["export"]["max_abs_logit_diff"] < 1e-5
    assert len((tmp_path / "a" / "metrics.csv").read_text().strip().splitlines()) == 3

    first = Trainer(small_cfg(), tmp_path / "b", progress=False)
    first.fit(until_epoch=1)  # as if killed after the first epoch's checkpoint
    resumed = resume_trainer(tmp_path / "b", progress=False)
    assert resumed.epoch == 1
    steps = _count_steps(resumed)
    summary_b = resumed.fit()
    assert steps == [len(resumed.loaders.train)]  # the second epoch only: the first is not trained again
    for (n, p), q in zip(straight.net.state_dict().items(), resumed.net.state_dict().values()):
        assert torch.equal(p, q), n
    assert summary_b["test_acc"] == summary["test_acc"]

    model = load_exported(tmp_path / "a" / "target")
    meta = json.loads((tmp_path / "a" / "target" / "meta.json").read_text())
    assert meta["multiplicative_layers"] == ["classifier"] and meta["bn_recalibrated"]
    x = torch.randn(2, 3, 32, 32)
    straight.net.set_active_subnet(straight.target, straight.target_blocks)
    straight.net.eval()
    assert torch.allclose(model(x), straight.net(x), atol=1e-5)
    # a finished run resumed: no step, no file rewritten, the recorded summary
    again = resume_trainer(tmp_path / "b", progress=False)
    steps = _count_steps(again)
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "b").rglob("*") if p.is_file()}
    assert again.fit() == json.loads((tmp_path / "b" / "summary.json").read_text()) and steps == [0]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "b").rglob("*") if p.is_file()} == files


def _count_steps(trainer) -> list[int]:
    """The number of training steps ``trainer`` runs from now on (in a one-element list)."""
    counted = [0]
    step = trainer.step

    def counting(x, y):
        counted[-1] += 1
        return step(x, y)

    trainer.step = counting
    return counted


@pytest.mark.parametrize("aug, op, remap", [("none", "add", "none"), ("netaug", "shift", "cdf"), ("shiftaddaug", "add", "pwl-kl"), ("netaug", "mult", "none")])
def test_recipes_run(tmp_path, aug, op, remap):
    cfg = small_cfg(aug=aug, op=op, remap=remap, epochs=1, max_train_images=64, hybrid="mult" if op == "mult" else "mf")
    tr = Trainer(cfg, tmp_path, progress=False)
    s = tr.fit()
    assert s["export"]["max_abs_logit_diff"] < 1e-4
    # the reported accuracy is the exported network's on the test split (the same images agree)
    model = load_exported(tmp_path / "target")
    correct = total = 0
    with torch.no_grad():
        for x, y in tr.loaders.test:
            correct += (model(x).argmax(1) == y).sum().item()
            total += y.numel()
    assert s["test_acc"] == pytest.approx(100 * correct / total, abs=100 / total + 1e-9)


def test_resume_needs_a_run_dir(tmp_path):
    with pytest.raises(ConfigError, match="--resume"):
        resume_trainer(tmp_path / "nothing")


@pytest.mark.parametrize("op", ["shift", "add"])
def test_aug_checkpoint_trains_the_same_network(tmp_path, op):
    """Checkpointing the augmented pass's blocks changes memory, not the training: after real
    ShiftAddAug steps (target pass, hybrid augmented pass with extra depth, optimizer step) the
    weights, BatchNorm statistics and optimizer state equal the plain run's within float rounding."""
    runs = []
    for ckpt in (False, True):
        tr = Trainer(small_cfg(op=op, aug_checkpoint=ckpt), tmp_path / str(ckpt), progress=False)
        it = iter(tr.loaders.train)
        for _ in range(3):
            tr.step(*next(it))
        runs.append(tr)
    a, b = (r.net.state_dict() for r in runs)
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), k
        else:  # BN batch counters: the recomputation does not count a batch twice
            assert torch.equal(a[k], b[k]), k
    ma = [s["momentum_buffer"] for s in runs[0].optimizer.state.values()]
    mb = [s["momentum_buffer"] for s in runs[1].optimizer.state.values()]
    assert all(torch.allclose(x, y, rtol=1e-4, atol=1e-6) for x, y in zip(ma, mb))
