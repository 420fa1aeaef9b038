"""One rank of tests/test_distributed.py, started by torchrun (not collected by pytest).

    python -m torch.distributed.run --nproc-per-node 2 tests/ddp_worker.py OUT

Trains a small ShiftAddAug run data-parallel (gloo) and saves, per rank, what the test compares:
after every step the parameters, the gradients DDP left before the optimizer step, and the shard
of the batch this rank trained on; and every file write rank != 0 attempted (there must be none).
"""

import sys
from pathlib import Path

import torch

import nas.io
from nas.train.distributed import init_from_env
from nas.train.trainer import TrainConfig, Trainer

STEPS = 3


def config(**kw) -> TrainConfig:
    # hybrid="mult": the augmented pass is all multiplicative, so the remap FCs get gradients in
    # the target pass only, the pass that runs under no_sync
    base = dict(model="mbv2-tiny", op="shift", aug="shiftaddaug", hybrid="mult", epochs=1, batch_size=32,
                max_train_images=96, bn_images=64, width_mults=(1.0, 1.5), expand_mults=(1.0, 1.5), aug_depth=1,
                seed=5, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def main(out: Path) -> None:
    torch.set_num_threads(1)
    dist, device = init_from_env(torch.device("cpu"))
    writes = []
    if not dist.is_writer:  # record (and refuse) every file write of the other ranks
        def refuse(path, data):
            writes.append(str(path))

        nas.io.atomic_write_bytes = refuse
    trainer = Trainer(config(), out / "run", progress=False, device=device, dist=dist)
    record = {"params": [], "grads": [], "x": [], "y": [], "aug_rng": []}
    real_step = trainer.optimizer.step

    def step(*a, **k):
        record["grads"].append({n: p.grad.clone() for n, p in trainer.net.named_parameters() if p.grad is not None})
        return real_step(*a, **k)

    trainer.optimizer.step = step
    trainer.loaders.train.set_epoch(0)
    for i, (x, y) in enumerate(trainer.loaders.train):
        if i == STEPS:
            break
        record["aug_rng"].append(trainer.py_rngs["aug"].getstate())
        record["x"].append(x.clone())
        record["y"].append(y.clone())
        trainer.step(x, y)
        record["params"].append({n: p.detach().clone() for n, p in trainer.net.named_parameters()})
    # then a whole run (evaluation, checkpoint, export) from a fresh trainer: rank 0 writes, the others do not
    trainer = Trainer(config(), out / "run", progress=False, device=device, dist=dist)
    summary = trainer.fit()
    record.update(writes=writes, summary=summary, digests=trainer.sample_digests, rank=dist.rank)
    torch.save(record, out / f"rank{dist.rank}.pt")
    dist.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
