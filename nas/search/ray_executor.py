"""``RayExecutor``: the search on a Ray cluster; the only module that imports ray, and only inside functions.

``--ray-address local|auto|HOST:PORT`` (``SearchConfig.ray_address``) makes the search use this
implementation of ``nas.search.executor.Executor``, which sends every step of ``shiftaddaug search``
to Ray, each with the Ray library meant for it:

* supernet training and ShiftAddAug training: Ray Train, ``TorchTrainer`` (gloo on CPU, NCCL with
  ``use_gpu``, each rank on ``ray.train.torch.get_device()``), ``ScalingConfig(num_workers=N)``.
  Every rank builds the same trainer from the step's job (``SupernetJob`` / ``TargetJob``) and trains it with PyTorch DDP through
  ``nas.train.distributed`` (the same code as torchrun: ``no_sync`` for all but the last pass of a
  step, ``find_unused_parameters``, each rank ``batch / N`` images of every batch). After every
  epoch the ranks compare a hash of their weights and of the subnets they sampled; a difference
  stops the run. Only rank 0 writes files: the same ``supernet.pt`` / ``train/checkpoint.pt`` as a
  local run, so a run can switch between local and Ray, and a restarted worker group
  (``FailureConfig(max_failures)``) resumes from the last epoch (rank 0 reads the checkpoint and
  hands it to the other ranks).
* stage one: the population is evaluated by actors (one CPU, one torch thread each) that hold
  the supernet, the calibration and the validation batches; ``ActorPool.map`` returns the scores in
  order, so the evolution follows exactly the local trajectory. Actors restart
  (``max_restarts``) and re-run the interrupted call (``max_task_retries``) when a worker dies.
* stage two: Ray Tune with ``OptunaSearch`` on the run's own study (the ``stage2.journal``
  JournalStorage, study ``stage2``, the same seeded TPE sampler): the define-by-run function is
  ``target_search.define_target`` and sets the TargetNet's table price as
  ``trial.set_constraint`` (known before training); each trial evaluates the TargetNet in the
  supernet and reports its accuracy. Killed trials are retried by Tune (``FailureConfig``); a
  killed driver leaves RUNNING trials that the next run re-queues, exactly as the local path.

Results equal the local run's, or differ in these documented ways (tests/test_ray.py checks each):

* stage one: equal for any number of actors (fitness is a pure function of the architecture).
* stage two: equal with ``max_concurrent=1``. With more trials in flight TPE proposes a trial
  before the results of the ones still running are in, so the trial sequence differs (each trial
  is still exactly evaluated and priced; the two warm-start trials are identical).
* training: one worker gives bit-identical weights. N > 1 workers compute BatchNorm batch
  statistics per shard (DDP without SyncBatchNorm), sum the gradient in a different order, and
  with ``add`` layers AdderNet's adaptive gradient scale normalises each rank's gradient before
  the average: the same algorithm, weights that differ by that much.
* torch's thread count changes float rounding: workers use ``cpus_per_worker`` threads (1 by
  default); compare against a local run with as many (``torch.set_num_threads``).

Quiet, local-only defaults: ``RAY_AUTH_MODE=disabled`` (no token written under $HOME),
``RAY_USAGE_STATS_ENABLED=0``, and for ``local`` and loopback addresses
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (Ray binds 127.0.0.1 only); all set with
``os.environ.setdefault`` before ray is imported. Tune and Train results go to ``<run>/ray/``.
Multi-node use (docs/ray.md): every node needs this package and the data, and the run directory
must be on a filesystem all nodes share (rank 0 may run on any node and writes it; Ray Train's own
records need shared storage too). Stage-one actors and stage-two trials compute on one CPU each.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Sequence

from nas.errors import ConfigError
from nas.search.executor import Executor, StageTwoJob, SupernetJob, TargetJob, stage_two_accuracy

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
    def from_env(cls, environ: dict | None = None) -> "RayOptions":
        """``SHIFTADDAUG_RAY_EVAL_WORKERS=4`` etc.; unset variables keep the defaults."""
        environ = os.environ if environ is None else environ
        kw: dict[str, Any] = {}
        for f in fields(cls):
            text = environ.get(cls.ENV_PREFIX + f.name.upper())
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
    quiet = dict(logging_level=logging.WARNING, log_to_driver=False)
    if address == "local":
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, **quiet)
        return
    try:
        ray.init(address=address, **quiet)
    except ConnectionError as e:
        raise ConfigError("--ray-address", address, f"no Ray cluster answers there ({e}); start one with "
                          "`ray start --head --port=PORT` or use --ray-address local") from None


# ---------------------------------------------------------------------------------- the executor
class RayExecutor(Executor):
    """Every step of the search on the Ray cluster at ``address``; Tune and Train records under
    ``storage`` (``<run>/ray``). ``options``: how much of the cluster each step takes (default:
    ``RayOptions.from_env()``). Connects on first use. ``train_results`` collects what every Ray
    Train run returned (``world_size``, ``samples_digests``: one hash of the sampled subnets per epoch)."""

    def __init__(self, address: str, storage: str | Path, options: RayOptions | None = None, progress: bool = True):
        check_ray(address)
        self.address, self.storage, self.progress = address, Path(storage), progress
        self.options = options or RayOptions.from_env()
        self.train_results: list[dict] = []
        self._pool: _EvalPool | None = None

    def train_supernet(self, job: SupernetJob, loaders=None) -> None:
        """Ray Train; rank 0 writes ``job.checkpoint`` and ``job.log`` (``loaders`` are not used:
        every rank builds its own from ``job.data``)."""
        connect(self.address)
        r = _fit(self.address, self.storage, self.options, job.data.batch_size, _supernet_worker, {"job": job}, "supernet")
        _missing(job.checkpoint)
        self.train_results.append(r)

    def evaluate(self, evaluator, candidates: Sequence) -> list[float]:
        """On actors that hold a copy of ``evaluator``'s supernet and batches (one CPU, one torch
        thread each), deduplicated and cached in ``evaluator.cache`` like a local evaluation."""
        from nas.search.evaluator import Evaluator

        if self._pool is None or self._pool.evaluator is not evaluator:
            self.release()
            self._pool = _EvalPool(evaluator, self.address, self.options)
        keys = [Evaluator.key(a) for a in candidates]
        todo: dict[str, Any] = {}
        for k, a in zip(keys, candidates):
            if k not in evaluator.cache and k not in todo:
                todo[k] = a
        if todo:
            for k, acc in zip(todo, self._pool.map(list(todo.values()))):
                evaluator.cache[k] = float(acc)
            evaluator.calls += len(todo)
        return [evaluator.cache[k] for k in keys]

    def eval_pids(self) -> list[int]:
        """Process ids of the evaluation actors (they restart in new processes when killed)."""
        return self._pool.pids() if self._pool is not None else []

    def release(self) -> None:
        """Kill the evaluation actors: their CPUs go back to the cluster (stage two, training)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def run_stage_two(self, evaluator, job: StageTwoJob) -> tuple[Any, Any]:
        """Stage two as a Ray Tune experiment on the run's Optuna study; ``(best_target(...), study)``
        exactly as ``target_search.run_stage_two`` returns them."""
        connect(self.address)
        import ray
        from optuna.trial import TrialState
        from ray import tune
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        from nas.search.target_search import best_target, open_study, requeue_interrupted
        from nas.space import TargetSpace

        self.release()
        opts = self.options
        ts = TargetSpace(job.space, job.subnet)
        # the study, its resume and its warm start exactly as the local run_stage_two
        study = open_study(job.journal, "stage2", job.seed)
        fresh = len(study.trials) == 0
        requeue_interrupted(study)
        if fresh:
            for largest in (True, False):
                study.enqueue_trial(ts.extreme_genome(largest), user_attrs={"warm_start": "largest" if largest else "smallest"})
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        remaining = max(0, job.trials - done)
        if remaining:
            # the same storage object and the study's own seeded sampler: one study, local or Ray
            searcher = OptunaSearch(space=TargetDefineByRun(ts, job.cost, job.budget), metric="accuracy", mode="max",
                                    sampler=study.sampler, storage=study._storage, study_name="stage2")
            concurrent = opts.max_concurrent or max(1, int(ray.cluster_resources().get("CPU", 1)))
            payload = {**_payload(evaluator), "space": job.space, "subnet": job.subnet, "op": job.op}
            trainable = tune.with_resources(tune.with_parameters(_stage_two_trial, payload=payload), {"cpu": 1})
            bar = _progress(self.progress, job.trials, done)
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrent),
                                            num_samples=remaining, reuse_actors=True, trial_dirname_creator=_trial_dirname),
                run_config=tune.RunConfig(name="stage2", storage_path=str(self.storage.resolve()), verbose=0, callbacks=[bar],
                                          failure_config=tune.FailureConfig(max_failures=opts.max_failures)),
            )
            try:
                results = tuner.fit()
            finally:
                bar.close()
            if results.errors:
                raise RuntimeError(f"stage two: {len(results.errors)} Tune trial(s) failed after {opts.max_failures} retries; "
                                   f"first error: {results.errors[0]}")
        return best_target(study, ts, stage_two_accuracy(evaluator, job.op), job.cost, job.budget), study

    def train_target(self, job: TargetJob) -> dict:
        """Ray Train; rank 0 writes ``job.train_dir`` (and ``job.export_dir``) exactly as a local
        ``Trainer`` would. A resumed job (``config`` None) continues where the run directory stands."""
        import json

        connect(self.address)
        self.release()
        train_dir = Path(job.train_dir).resolve()
        batch = (job.config.batch_size if job.config is not None
                 else json.loads((train_dir / "config.json").read_text())["train"]["batch_size"])
        config = {"train": None if job.config is None else job.config.to_dict(), "train_dir": str(train_dir),
                  "export_dir": None if job.export_dir is None else str(Path(job.export_dir).resolve())}
        r = _fit(self.address, self.storage, self.options, batch, _train_worker, config, "train")
        _missing(train_dir / "summary.json")
        summary = r.pop("summary")
        self.train_results.append(r)
        return summary


# ---------------------------------------------------------------------------------- stage one: actors
def _cpu(batches: list) -> list:
    return [(x.cpu(), y.cpu()) for x, y in batches]


def _payload(evaluator) -> dict:
    """What an evaluating worker needs, shipped once through the object store (no shared disk):
    a CPU copy of the evaluator's supernet and its batches (the workers compute in float32)."""
    import copy

    return {"key": uuid.uuid4().hex, "net": copy.deepcopy(evaluator.net).cpu(), "calib": _cpu(evaluator.calib),
            "val": _cpu(evaluator.val)}


_EVALUATORS: dict[str, Any] = {}  # per worker process: payload key -> Evaluator (Tune reuses actors)


def _evaluator(payload: dict):
    import torch

    from nas.search.evaluator import Evaluator

    ev = _EVALUATORS.get(payload["key"])
    if ev is None:
        torch.set_num_threads(1)
        _EVALUATORS.clear()
        ev = _EVALUATORS[payload["key"]] = Evaluator(payload["net"], payload["calib"], payload["val"])
    return ev


class EvalActor:
    """A stage-one worker: holds the supernet and the cached batches, scores SubNets.

    The payload comes with each call as a reference inside a list (Ray leaves it unresolved) and
    is fetched once per actor process: a restarted actor reloads it on its first call. (A payload
    passed to the constructor would do the same, but Ray logs an error for every restartable actor
    with constructor arguments in the object store.)
    """

    def __init__(self):
        self.evaluator = None

    def accuracy(self, arch, payload_ref: list) -> float:
        if self.evaluator is None:
            import ray

            self.evaluator = _evaluator(ray.get(payload_ref[0]))
        return self.evaluator.accuracy(arch)

    def pid(self) -> int:
        return os.getpid()


class _EvalPool:
    """Actors (``RayOptions.eval_workers``, default one per free CPU) holding one evaluator's
    payload, each with one CPU and one torch thread, restarted when their process dies."""

    def __init__(self, evaluator, address: str, opts: RayOptions):
        connect(address)
        import ray
        from ray.util import ActorPool

        self.evaluator = evaluator
        n = opts.eval_workers or max(1, int(ray.available_resources().get("CPU", 1)))
        self._payload = [ray.put(_payload(evaluator))]  # owned by this driver: alive as long as this pool
        actor_cls = ray.remote(num_cpus=1, max_restarts=opts.max_failures, max_task_retries=opts.max_failures)(EvalActor)
        self.actors = [actor_cls.remote() for _ in range(n)]
        self.pool = ActorPool(self.actors)

    def map(self, archs: list) -> list[float]:
        """Scores in the order of ``archs``."""
        return list(self.pool.map(lambda actor, a: actor.accuracy.remote(a, self._payload), archs))

    def pids(self) -> list[int]:
        import ray

        return ray.get([a.pid.remote() for a in self.actors])

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []


# ---------------------------------------------------------------------------------- stage two: Tune + OptunaSearch
class TargetDefineByRun:
    """OptunaSearch's define-by-run space (runs in the driver; Tune pickles it with the searcher):
    the TargetSpace genes (``define_target``), then the table price as ``trial.set_constraint``,
    known before any training, and the user attributes the local objective sets."""

    def __init__(self, ts, cost: Callable, budget: float):
        self.ts, self.cost, self.budget = ts, cost, budget

    def __call__(self, trial) -> None:
        from nas.search.target_search import define_target

        target, blocks = self.ts.decode(define_target(trial, self.ts))
        price = self.cost(target)
        trial.set_constraint("budget", price - self.budget)
        trial.set_user_attr("cost", price)
        trial.set_user_attr("arch_id", target.arch_id)
        trial.set_user_attr("blocks", blocks)


def _stage_two_trial(config: dict, payload: dict) -> None:
    """One Tune trial: the TargetNet of ``config`` (TargetSpace genes), its MF accuracy in the supernet."""
    from ray import tune

    from nas.space import TargetSpace

    ev = _evaluator(payload)
    ts = TargetSpace(payload["space"], payload["subnet"])
    target, blocks = ts.decode({k: config[k] for k in ts.genes()})
    tune.report({"accuracy": float(ev.accuracy(target.with_ops(payload["op"]), blocks))})


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"  # <run>/ray/stage2/trial_<id>/ (Tune's default name lists every parameter)


def _progress(show: bool, total: int, done: int):
    """A Tune callback drawing the local run's stage-two progress bar."""
    from ray import tune
    from tqdm import tqdm

    class Bar(tune.Callback):
        def __init__(self):
            self.bar = tqdm(total=total, initial=done, desc="stage 2 (optuna on ray)", disable=not show, leave=False)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.bar.update(1)

        def close(self):
            self.bar.close()

    return Bar()


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
    job: SupernetJob = config["job"]
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


def _missing(path: Path) -> None:
    if not path.is_file():
        raise RuntimeError(f"Ray Train finished but {path} is missing: on a multi-node cluster the run "
                           "directory must be on a filesystem every node shares (docs/ray.md)")
