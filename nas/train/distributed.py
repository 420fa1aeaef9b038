"""Data-parallel training with PyTorch DDP, under torchrun or Ray Train.

``Distributed`` is one rank's view of the job; ``TrainLoop`` takes one and does the rest. Two
ways to get one:

* torchrun (``init_from_env``): ``torchrun --nproc-per-node N --no-python shiftaddaug-train ...``
  sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``; this joins the process group (gloo on CPU,
  NCCL on CUDA, each rank on GPU ``LOCAL_RANK``);
* Ray Train (``nas.train.ray_train``): ``TorchTrainer`` has already joined the group; each
  worker builds a ``Distributed`` from ``ray.train.get_context()``. Only ``ray_train`` imports
  ray, inside its functions; this module does not.

What data-parallel training means here, so that N ranks run the algorithm of one process:

* ``batch_size`` is the global batch. Each rank takes ``batch_size / N`` images of every batch,
  rank r the images r, r + N, r + 2N, ... (exactly the shard ``DistributedSampler`` gives it);
  the loader draws the augmentation for the whole batch and each rank keeps its rows, so an
  image is augmented as in a one-process run. ``batch_size`` must be a multiple of N.
* Every rank builds the same network from the same seed and samples the same subnets from the
  same streams: nothing is communicated for that. DDP broadcasts rank 0's weights and buffers
  when it wraps the network, and rank 0's buffers (BatchNorm statistics) before each step.
* A step runs several forward/backward passes on different active subnets (target pass and
  augmented pass; the four passes of the sandwich rule). All but the last run under
  ``no_sync`` (their gradients accumulate locally); the last pass's backward averages the
  accumulated gradients of all ranks. ``find_unused_parameters=True`` because the subnet, and
  so the set of parameters with a gradient, changes from pass to pass and step to step; DDP
  finds the parameters the last pass does not use and, when they accumulated a gradient in an
  earlier pass, averages that gradient with the others (tests/test_distributed.py checks this
  against gradients computed by hand).
* BatchNorm uses each rank's own batch statistics (DDP without SyncBatchNorm), and AdderNet's
  adaptive gradient scale normalises each rank's gradient before the average: with N > 1 the
  weights differ from a one-process run by that much. One rank is the one-process run, bit for bit.
* Evaluation (BatchNorm re-estimation on the calibration batches, accuracy) runs on every rank
  over the whole split, so every rank computes the same numbers; only rank 0 exports.
* Only rank 0 reads and writes the run directory; the others receive the checkpoint from it
  (``broadcast_object``). After every epoch the ranks compare a hash of their weights and of the
  subnets they sampled (``check_in_sync``); a difference stops the run.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from nas.errors import ConfigError

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass
class Distributed:
    """One rank of a data-parallel job (the default: a single process, nothing distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    active: bool = False  # a torch.distributed process group is up: the network is wrapped in DDP

    @property
    def is_writer(self) -> bool:
        """Only rank 0 writes files (and prints)."""
        return self.rank == 0

    def wrap(self, net: nn.Module, device: torch.device) -> nn.Module:
        """The network in DDP (or the network itself in a single process)."""
        if not self.active:
            return net
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None,
                                       find_unused_parameters=True)

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.active or self.world_size == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def check_in_sync(self, net: nn.Module, samples: list) -> str:
        """Compare (sampled subnets, weights) across ranks; raise when any rank differs.
        Returns the digest of the samples (the same on every rank)."""
        import torch.distributed as dist

        h = hashlib.sha256()
        for p in net.parameters():
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
        mine = (hashlib.sha256(repr(samples).encode()).hexdigest()[:16], h.hexdigest()[:16])
        every = [None] * self.world_size
        dist.all_gather_object(every, mine)
        if any(e != mine for e in every):
            raise RuntimeError(f"data-parallel ranks diverged (sampled subnets, weights) per rank: {every}")
        return mine[0]

    def shutdown(self) -> None:
        import torch.distributed as dist

        if self.active and dist.is_initialized():
            dist.destroy_process_group()


def launched_by_torchrun(environ: dict | None = None) -> bool:
    environ = os.environ if environ is None else environ
    return all(k in environ for k in TORCHRUN_ENV)


def init_from_env(device: torch.device, environ: dict | None = None) -> tuple[Distributed, torch.device]:
    """Join torchrun's process group: gloo on CPU, NCCL on CUDA with this rank on GPU ``LOCAL_RANK``
    (``--device cuda`` / ``auto``; ``cuda:N`` is taken as given). Outside torchrun: one process."""
    environ = os.environ if environ is None else environ
    if not launched_by_torchrun(environ):
        return Distributed(), device
    try:
        rank, world, local = (int(environ[k]) for k in TORCHRUN_ENV)
    except ValueError:
        raise ConfigError("RANK/WORLD_SIZE/LOCAL_RANK", tuple(environ[k] for k in TORCHRUN_ENV), "integers (set by torchrun)") from None
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    return Distributed(rank, world, local, active=True), device
