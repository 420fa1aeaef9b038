"""Ray, for training and for the search: connecting to a cluster, its options, and Ray Train.

Two modules import ray, both only inside functions: this one (connecting, ``RayOptions``, and
data-parallel training with Ray Train) and ``nas.search.ray_executor`` (the search's executor:
evaluation actors and Ray Tune), which builds on this one.

Ray Train runs a ``TrainLoop`` data-parallel: ``TorchTrainer`` (gloo on CPU, NCCL with
``use_gpu``, each rank on ``ray.train.torch.get_device()``, ``ScalingConfig(num_workers=N)``)
starts the workers and joins the process group; each worker turns its Ray Train context into a
``nas.train.distributed.Distributed`` rank and trains with the same DDP code as torchrun
(``no_sync`` for all but the last pass of a step, ``find_unused_parameters``, each rank
``batch / N`` images of every batch). After every epoch the ranks compare a hash of their weights
and of the subnets they sampled; a difference stops the run. Only rank 0 writes files: the same
``checkpoint.pt`` as a local run, so a run can switch between local and Ray, and a restarted
worker group (``FailureConfig(max_failures)``) resumes from the last epoch.

``RayTrain`` is the entry point: ``RayTrain(address, storage).target(config, train_dir)`` trains
a ``TrainConfig`` (``shiftaddaug train --ray-address``), ``.supernet(job)`` a search's supernet
(any object with ``data.batch_size``, ``checkpoint``, ``log`` and ``trainer(device=, dist=)``,
as ``nas.search.executor.SupernetJob``).

Quiet, local-only defaults: ``RAY_AUTH_MODE=disabled`` (no token written under $HOME),
``RAY_USAGE_STATS_ENABLED=0``, and for ``local`` and loopback addresses
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (Ray binds 127.0.0.1 only); all set with
``os.environ.setdefault`` before ray is imported. Train records go to ``storage`` (``<run>/ray/``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping

from nas.errors import ConfigError

INSTALL_HINT = "needs the ray extra: pip install -e '.[ray]'"
# no auth token under $HOME, no usage stats, and Tune's legacy reporter (silent with verbose=0; the
# new one prints an experiment table regardless)
QUIET_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AIR_NEW_OUTPUT": "0"}


# ---------------------------------------------------------------------------------- options
@dataclass
class RayOptions:
    """How much of the cluster each step uses (``RayExecutor(options=...)``, or the environment)."""

    eval_workers: int | None = None  # stage-one actors; default: the cluster's free CPUs
    max_concurrent: int | None = None  # stage-two trials in flight; default: the cluster's CPUs (1: the local study)
    train_workers: int | None = None  # Ray Train workers; default: min(CPUs / cpus_per_worker, batch_size // 16)
    cpus_per_worker: int = 1  # CPUs (and torch threads) of each training worker
    use_gpu: bool = False  # one GPU per training worker and NCCL
    max_failures: int = 3  # restarts of a killed actor, trial or training worker group

    ENV_PREFIX = "SHIFTADDAUG_RAY_"

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "use_gpu":
                if not isinstance(v, bool):
                    raise ConfigError(f"{self.ENV_PREFIX}{f.name.upper()}", v, "0 or 1")
            elif v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < (0 if f.name == "max_failures" else 1)):
                raise ConfigError(f"{self.ENV_PREFIX}{f.name.upper()}", v, "a positive integer" + (" or 0" if f.name == "max_failures" else ""))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "RayOptions":
        """``SHIFTADDAUG_RAY_EVAL_WORKERS=4`` etc.; unset variables keep the defaults."""
        env: Mapping[str, str] = os.environ if environ is None else environ
        kw: dict[str, Any] = {}
        for f in fields(cls):
            text = env.get(cls.ENV_PREFIX + f.name.upper())
            if text is None or text == "":
                continue
            if f.name == "use_gpu":
                kw[f.name] = text.strip().lower() in ("1", "true", "yes")
                continue
            try:
                kw[f.name] = int(text)
            except ValueError:
                raise ConfigError(cls.ENV_PREFIX + f.name.upper(), text, "an integer") from None
        return cls(**kw)


# ---------------------------------------------------------------------------------- connecting
def _host(address: str) -> str | None:
    """The host of HOST:PORT (IPv6 in brackets), None when ``address`` is not of that form."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]")


def _is_loopback(address: str) -> bool:
    if address == "local":
        return True
    host = _host(address)
    return host is not None and (host == "localhost" or host == "::1" or host.startswith("127."))


def _prepare_env(address: str | None) -> None:
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    if address is not None and _is_loopback(address):
        # read when ray is imported: keep the node (and the address the driver resolves) on 127.0.0.1
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def check_ray(address: str | None = None) -> None:
    """Raise a one-line ``ConfigError`` when ray (with Tune and Train) is not installed or the
    address is malformed. Sets the quiet defaults first, so call it before anything imports ray."""
    if address is not None and address not in ("local", "auto") and _host(address) is None:
        raise ConfigError("--ray-address", address, "allowed: local, auto or HOST:PORT")
    _prepare_env(address)
    try:
        import ray  # noqa: F401
        import ray.train  # noqa: F401
        import ray.tune  # noqa: F401
    except ImportError:
        raise ConfigError("--ray-address", address, INSTALL_HINT) from None


def connect(address: str) -> None:
    """Connect this process to Ray once: ``local`` starts an in-process cluster on this machine's
    CPUs (no dashboard), ``auto`` / ``HOST:PORT`` join a running one (``ray start --head``)."""
    check_ray(address)
    import ray

    if ray.is_initialized():
        return
    quiet: dict[str, Any] = dict(logging_level=logging.WARNING, log_to_driver=False)
    if address == "local":
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, **quiet)
        return
    try:
        ray.init(address=address, **quiet)
    except ConnectionError as e:
        raise ConfigError("--ray-address", address, f"no Ray cluster answers there ({e}); start one with "
                          "`ray start --head --port=PORT` or use --ray-address local") from None


# ---------------------------------------------------------------------------------- Ray Train
def _worker_setup(config: dict):
    """This Ray Train worker as a ``nas.train.distributed.Distributed`` rank and its device.

    ``TorchTrainer`` has already joined the process group (gloo, or NCCL with ``use_gpu``); the
    trainers wrap their network in DDP themselves (``Distributed.wrap``, what
    ``ray.train.torch.prepare_model`` does, with ``find_unused_parameters``) and shard the
    toolkit's resumable loader by rank (what ``prepare_data_loader``'s DistributedSampler does,
    keeping the loader's seeded, resumable order).
    """
    import ray.train
    import torch

    from nas.train.distributed import Distributed

    torch.set_num_threads(config["threads"])
    ctx = ray.train.get_context()
    device = torch.device("cpu")
    if config["use_gpu"]:
        import ray.train.torch

        device = ray.train.torch.get_device()
        torch.cuda.set_device(device)
    dist = Distributed(ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank(), active=True)
    return dist, device


def _report_epoch(trainer, row: dict) -> None:
    """After every epoch (the loop has checked that the ranks agree): metrics to Ray Train."""
    import ray.train

    metrics = {k: v for k, v in row.items() if isinstance(v, (int, float))}
    ray.train.report({**metrics, "world_size": trainer.dist.world_size, "samples_digest": trainer.sample_digests[-1]})


def _supernet_worker(config: dict) -> dict:
    """Ray Train loop: the job's SupernetTrainer, data-parallel, resuming from its checkpoint."""
    dist, device = _worker_setup(config)
    job = config["job"]
    sup = job.trainer(device=device, dist=dist)
    sup.epoch_callbacks.append(lambda row: _report_epoch(sup, row))
    sup.fit(job.checkpoint, job.log)
    return {"world_size": dist.world_size, "samples_digests": sup.sample_digests}


def _train_worker(config: dict) -> dict:
    """Ray Train loop: ShiftAddAug training of a TargetNet, data-parallel, resuming from its run directory."""
    from nas.train.trainer import TrainConfig, Trainer, resume_trainer

    dist, device = _worker_setup(config)
    train_dir = Path(config["train_dir"])
    if config["train"] is None or (train_dir / "checkpoint.pt").is_file():  # resumed, or a worker group restarted by Ray
        trainer = resume_trainer(train_dir, progress=False, export_dir=config["export_dir"], device=device, dist=dist)
    else:
        trainer = Trainer(TrainConfig.from_dict(config["train"]), train_dir, progress=False, export_dir=config["export_dir"],
                          device=device, dist=dist)
    trainer.epoch_callbacks.append(lambda row: _report_epoch(trainer, row))
    summary = trainer.fit()
    return {"world_size": dist.world_size, "samples_digests": trainer.sample_digests, "summary": summary}


def _scaling(batch: int, opts: RayOptions) -> tuple[int, int]:
    """(workers, CPUs per worker) for Ray Train."""
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    if opts.train_workers:
        n = opts.train_workers
        if batch % n or batch // n < 2:
            raise ConfigError("SHIFTADDAUG_RAY_TRAIN_WORKERS", n, f"a divisor of the batch size {batch} that leaves each rank "
                              "at least 2 images (every rank takes batch / workers images of each batch; BatchNorm needs 2)")
        return n, opts.cpus_per_worker
    if opts.use_gpu:
        n = max(1, int(ray.cluster_resources().get("GPU", 1)))
    else:
        n = max(1, min(cpus // opts.cpus_per_worker, batch // 16))
    while batch % n or batch // n < 2:  # the most workers that split the batch evenly
        n -= 1
    return max(n, 1), opts.cpus_per_worker


def _fit(address: str, storage: Path, opts: RayOptions, batch: int, loop: Callable, config: dict, name: str) -> Any:
    """One Ray Train run of ``loop``; records under ``storage/name``."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    n, cpus = _scaling(batch, opts)
    resources = {"CPU": cpus, **({"GPU": 1} if opts.use_gpu else {})}
    # a loopback cluster keeps gloo's sockets on loopback too (it otherwise picks the hostname's interface)
    env = {"GLOO_SOCKET_IFNAME": "lo0" if sys.platform == "darwin" else "lo"} if _is_loopback(address) else {}
    trainer = TorchTrainer(
        loop,
        train_loop_config={**config, "threads": cpus, "use_gpu": opts.use_gpu},
        torch_config=TorchConfig(backend="nccl" if opts.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=n, use_gpu=opts.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name=name, storage_path=str(Path(storage).resolve()), failure_config=FailureConfig(max_failures=opts.max_failures),
                             worker_runtime_env={"env_vars": env} if env else None),
    )
    return trainer.fit().return_value

# ---------------------------------------------------------------------------------- the entry point
class RayTrain:
    """Data-parallel training on the Ray cluster at ``address`` (connects on first use); Train
    records under ``storage``. ``options``: how much of the cluster (default ``RayOptions.from_env()``).
    Each call returns what the run's workers reported: ``world_size`` and ``samples_digests`` (one
    hash of the sampled subnets per epoch), with the trainer's ``summary`` for ``target``."""

    def __init__(self, address: str, storage: str | Path, options: RayOptions | None = None):
        check_ray(address)
        self.address, self.storage = address, Path(storage)
        self.options = options or RayOptions.from_env()

    def supernet(self, job: Any) -> dict:
        """Train (or finish training) a search's supernet; rank 0 writes ``job.checkpoint`` and ``job.log``."""
        connect(self.address)
        r = _fit(self.address, self.storage, self.options, job.data.batch_size, _supernet_worker, {"job": job}, "supernet")
        _missing(job.checkpoint)
        return r

    def target(self, config: Any, train_dir: str | Path, export_dir: str | Path | None = None) -> dict:
        """Train a ``TrainConfig`` into ``train_dir`` (exported to ``export_dir``, default
        ``train_dir/target``) exactly as a local ``Trainer`` would; ``config`` None resumes
        ``train_dir`` where it stands."""
        connect(self.address)
        train_dir = Path(train_dir).resolve()
        batch = (config.batch_size if config is not None
                 else json.loads((train_dir / "config.json").read_text())["train"]["batch_size"])
        cfg = {"train": None if config is None else config.to_dict(), "train_dir": str(train_dir),
               "export_dir": None if export_dir is None else str(Path(export_dir).resolve())}
        r = _fit(self.address, self.storage, self.options, batch, _train_worker, cfg, "train")
        _missing(train_dir / "summary.json")
        return r


def _missing(path: Path) -> None:
    if not path.is_file():
        raise RuntimeError(f"Ray Train finished but {path} is missing: on a multi-node cluster the run "
                           "directory must be on a filesystem every node shares (docs/ray.md)")
