"""``RayExecutor``: the search on a Ray cluster. With ``nas.train.ray_train`` (connecting, options,
Ray Train) the only modules that import ray, and only inside functions.

``--ray-address local|auto|HOST:PORT`` (``SearchConfig.ray_address``) makes the search use this
implementation of ``nas.search.executor.Executor``, which sends every step of ``shiftaddaug search``
to Ray, each with the Ray library meant for it:

* supernet training and ShiftAddAug training: Ray Train through ``nas.train.ray_train.RayTrain``
  (the DDP glue lives in ``nas.train``): every rank builds the same trainer from the step's job
  (``SupernetJob`` / ``TargetJob``) and trains it with the same DDP code as torchrun; only rank 0
  writes files, the same ``supernet.pt`` / ``train/checkpoint.pt`` as a local run, so a run can
  switch between local and Ray, and a restarted worker group resumes from the last epoch.
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

Connecting (``connect``, ``check_ray``) and ``RayOptions`` are ``nas.train.ray_train``'s (also
importable from here), with its quiet, local-only defaults. Tune and Train results go to ``<run>/ray/``.
Multi-node use (docs/ray.md): every node needs this package and the data, and the run directory
must be on a filesystem all nodes share (rank 0 may run on any node and writes it; Ray Train's own
records need shared storage too). Stage-one actors and stage-two trials compute on one CPU each.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

from nas.search.executor import Executor, StageTwoJob, SupernetJob, TargetJob, stage_two_accuracy
from nas.train.ray_train import RayOptions, RayTrain, check_ray, connect  # noqa: F401 (RayOptions, check_ray: public here too)

# ---------------------------------------------------------------------------------- the executor
class RayExecutor(Executor):
    """Every step of the search on the Ray cluster at ``address``; Tune and Train records under
    ``storage`` (``<run>/ray``). ``options``: how much of the cluster each step takes (default:
    ``RayOptions.from_env()``). Connects on first use. ``train_results`` collects what every Ray
    Train run returned (``world_size``, ``samples_digests``: one hash of the sampled subnets per epoch)."""

    def __init__(self, address: str, storage: str | Path, options: RayOptions | None = None, progress: bool = True):
        self.train = RayTrain(address, storage, options)  # checks ray and the address
        self.address, self.storage, self.options, self.progress = address, Path(storage), self.train.options, progress
        self.train_results: list[dict] = []
        self._pool: _EvalPool | None = None

    def train_supernet(self, job: SupernetJob, loaders=None) -> None:
        """Ray Train (``nas.train.ray_train``); rank 0 writes ``job.checkpoint`` and ``job.log``
        (``loaders`` are not used: every rank builds its own from ``job.data``)."""
        self.train_results.append(self.train.supernet(job))

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
        """Ray Train (``nas.train.ray_train``); rank 0 writes ``job.train_dir`` (and ``job.export_dir``)
        exactly as a local ``Trainer`` would. A resumed job (``config`` None) continues where the run
        directory stands."""
        self.release()
        r = self.train.target(job.config, job.train_dir, job.export_dir)
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
