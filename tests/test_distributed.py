"""Data-parallel training with DDP (nas.train.distributed): two gloo ranks under torchrun on CPU.

* the ranks hold identical weights after every step;
* the gradient of every parameter equals the average of the two shards' gradients computed by
  hand in one process, also for parameters that only the no_sync pass (the target pass) uses;
* rank 1 writes nothing; rank 0 writes one run with its exported TargetNet;
* one rank (a process group of one) is the local run, bit for bit.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nas.errors import ConfigError
from nas.train.distributed import Distributed, init_from_env, launched_by_torchrun

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from ddp_worker import STEPS, config  # noqa: E402

from nas.train.trainer import Trainer  # noqa: E402


def _env(threads: int = 1) -> dict:
    return {**os.environ, "PYTHONPATH": str(HERE.parent), "OMP_NUM_THREADS": str(threads)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), str(HERE / "ddp_worker.py"), str(out)]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    return out, [torch.load(out / f"rank{i}.pt", weights_only=False) for i in range(2)]


def test_ranks_hold_identical_weights_after_every_step(two_ranks):
    _, (r0, r1) = two_ranks
    assert len(r0["params"]) == STEPS
    for p0, p1 in zip(r0["params"], r1["params"]):
        assert p0.keys() == p1.keys()
        for name in p0:
            assert torch.equal(p0[name], p1[name]), name
    # each rank trained on its own half of every batch
    assert r0["x"][0].shape[0] == r1["x"][0].shape[0] == 16 and not torch.equal(r0["x"][0], r1["x"][0])


def test_gradients_are_the_average_of_the_shards_also_for_no_sync_only_parameters(two_ranks):
    """One process computes each shard's gradient on the same weights, with the same sampled
    augmented network, and averages them by hand: DDP's gradients must match."""
    _, (r0, r1) = two_ranks
    torch.set_num_threads(1)
    local = Trainer(config(), "unused", progress=False)
    local.loaders.train.set_epoch(0)
    target_only = None
    for step in range(STEPS):
        if step:  # the weights DDP stepped to (the same on both ranks)
            with torch.no_grad():
                for name, p in local.net.named_parameters():
                    p.copy_(r0["params"][step - 1][name])
        local.global_step = step
        grads = []
        for rec in (r0, r1):
            local.py_rngs["aug"].setstate(rec["aug_rng"][step])
            local.net.zero_grad(set_to_none=True)
            local.train_step(rec["x"][step], rec["y"][step])
            grads.append({n: p.grad.clone() for n, p in local.net.named_parameters() if p.grad is not None})
        if target_only is None:  # parameters only the target pass (under no_sync) gives a gradient
            local.net.zero_grad(set_to_none=True)
            local.net.set_active_subnet(local.target_now(), local.target_blocks)
            local.forward_backward(r0["x"][0], lambda out: local._loss(out, r0["y"][0]))
            in_target = {n for n, p in local.net.named_parameters() if p.grad is not None}
            target_only = in_target - _aug_pass_params(local, r0, step)
            assert any(".remap." in n for n in target_only), sorted(target_only)[:5]
        assert grads[0].keys() == grads[1].keys() == r0["grads"][step].keys() == r1["grads"][step].keys()
        for name, g in r0["grads"][step].items():
            hand = (grads[0][name] + grads[1][name]) / 2
            assert torch.equal(g, r1["grads"][step][name]), name  # every rank got the same average
            assert torch.allclose(g, hand, rtol=1e-4, atol=1e-6), (name, (g - hand).abs().max())
        for name in target_only:  # without the all-reduce these would be each rank's own gradient
            assert not torch.allclose(grads[0][name], grads[1][name], rtol=1e-3, atol=1e-6), name


def _aug_pass_params(local, rec, step) -> set:
    """Parameters the augmented pass of ``step`` gives a gradient."""
    local.py_rngs["aug"].setstate(rec["aug_rng"][step])
    aug_arch, aug_blocks = local.augmenter.sample(local.py_rngs["aug"], step / local.total_steps)
    local.net.zero_grad(set_to_none=True)
    local.net.set_active_subnet(aug_arch, aug_blocks)  # hybrid="mult": the whole pass multiplicative
    local.forward_backward(rec["x"][step], lambda out: local._loss(out, rec["y"][step]))
    return {n for n, p in local.net.named_parameters() if p.grad is not None}


def test_only_rank_zero_writes_and_the_run_is_complete(two_ranks):
    out, (r0, r1) = two_ranks
    assert r1["writes"] == [] and r0["writes"] == []
    run = out / "run"
    for name in ("config.json", "checkpoint.pt", "metrics.csv", "summary.json", "curves.png",
                 "target/arch.json", "target/weights.pt", "target/meta.json"):
        assert (run / name).is_file(), name
    assert json.loads((run / "config.json").read_text())["runtime"]["world_size"] == 2
    s = json.loads((run / "summary.json").read_text())
    assert s["export"]["max_abs_logit_diff"] < 1e-5 and r1["summary"]["export"] is None
    assert s["test_acc"] == r1["summary"]["test_acc"]  # both ranks evaluated the same weights
    assert r0["digests"] == r1["digests"] and len(r0["digests"]) == 1


@pytest.fixture
def one_rank_group():
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        yield Distributed(0, 1, 0, active=True)
    finally:
        dist.destroy_process_group()


def test_one_rank_is_the_local_run_bit_for_bit(one_rank_group, tmp_path):
    torch.set_num_threads(1)
    cfg = config(hybrid="mf", op="add", epochs=2)
    ddp = Trainer(cfg, tmp_path / "ddp", progress=False, dist=one_rank_group)
    assert type(ddp.model).__name__ == "DistributedDataParallel"
    s_ddp = ddp.fit()
    local = Trainer(cfg, tmp_path / "local", progress=False)
    s_local = local.fit()
    for (n, p), q in zip(local.net.state_dict().items(), ddp.net.state_dict().values()):
        assert torch.equal(p, q), n
    assert (s_ddp["val_acc"], s_ddp["test_acc"]) == (s_local["val_acc"], s_local["test_acc"])


def test_torchrun_environment_and_sharding_errors():
    assert not launched_by_torchrun({}) and launched_by_torchrun({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
    d, dev = init_from_env(torch.device("cpu"), environ={})
    assert not d.active and d.is_writer and dev.type == "cpu"
    with pytest.raises(ConfigError, match="^RANK/WORLD_SIZE/LOCAL_RANK: got"):
        init_from_env(torch.device("cpu"), environ={"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    from nas.data import build_loaders

    L = build_loaders(batch_size=30, max_train_images=120)
    with pytest.raises(ConfigError, match="^batch_size: got 30; a multiple of the 4 ranks"):
        L.train.set_shard(0, 4)
    L.train.set_shard(1, 3)
    x, y = next(iter(L.train))
    assert x.shape[0] == 10


def test_shards_are_augmented_as_in_one_process():
    """The union of the ranks' shards is the one-process batch, image for image."""
    from nas.data import build_loaders

    full = next(iter(build_loaders(batch_size=12, seed=4).train))
    parts = []
    for rank in range(3):
        L = build_loaders(batch_size=12, seed=4)
        L.train.set_shard(rank, 3)
        parts.append(next(iter(L.train)))
    for rank, (x, y) in enumerate(parts):
        assert torch.equal(x, full[0][rank::3]) and torch.equal(y, full[1][rank::3])


@pytest.mark.slow
def test_torchrun_train_command_writes_one_run(tmp_path):
    """The done-when command (smaller): two ranks of shiftaddaug-train, one run directory."""
    out = tmp_path / "run"
    exe = Path(sys.executable).parent / "torchrun"
    cmd = [str(exe), "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           "--no-python", str(Path(sys.executable).parent / "shiftaddaug-train"), "--model", "mbv2-tiny", "--op", "add",
           "--aug", "shiftaddaug", "--epochs", "1", "--max-train-images", "128", "--batch-size", "32", "--out", str(out), "--quiet"]
    if not exe.is_file() or not Path(cmd[8]).is_file():
        pytest.skip("torchrun / shiftaddaug-train console scripts not installed")
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stdout.count("run directory") == 1  # rank 0 reports
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert (out / "target" / "weights.pt").is_file() and (out / "summary.json").is_file()
    assert json.loads((out / "config.json").read_text())["runtime"]["world_size"] == 2
