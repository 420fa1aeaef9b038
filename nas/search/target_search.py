"""NAS stage two: an Optuna study that cuts the TargetNet out of the SubNet under the budget.

Each trial chooses, with the flat labels of ``TargetSpace`` (``s2_b1_keep``, ``s2_out``,
``s2_b1_e`` ...), which SubNet blocks and channels form the TargetNet. Its MF version is priced
from the lookup table and reported with ``trial.set_constraint("budget", cost - budget)``
(feasible when <= 0), so infeasible trials still inform the sampler; the objective is the
TargetNet's accuracy in the supernet (MF operators, inherited weights, BN re-estimated).

The study lives in a ``JournalStorage`` file in the run directory. A search killed mid-trial
leaves that trial RUNNING in the journal (the journal has no heartbeat): on resume it is marked
FAIL and its parameters are re-queued, so no completed trial is lost and the interrupted one
runs again. A fresh study is warm-started from stage one with the SubNet's largest and smallest
cuts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from nas.arch import Arch
from nas.space import SearchSpace, TargetSpace

if TYPE_CHECKING:  # pragma: no cover
    import optuna


@dataclass
class TargetResult:
    """The TargetNet stage two chose: its Arch, block indices in the SubNet, supernet accuracy, cost and Optuna trial number."""
    arch: Arch
    blocks: list[list[int]]
    accuracy: float
    cost: float
    trial: int | None


def open_study(storage_path: Path, study_name: str, seed: int, sampler: str = "tpe") -> optuna.Study:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(storage_path)))
    smp: optuna.samplers.BaseSampler
    if sampler == "nsga2":
        smp = optuna.samplers.NSGAIISampler(seed=seed)
    else:
        smp = optuna.samplers.TPESampler(seed=seed, n_startup_trials=8, multivariate=True)
    return optuna.create_study(study_name=study_name, storage=storage, sampler=smp, direction="maximize", load_if_exists=True)


def requeue_interrupted(study: optuna.Study) -> int:
    """Fail trials a killed process left RUNNING and queue their parameters again."""
    from optuna.trial import TrialState

    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"requeued_from": t.number}, skip_if_exists=False)
        n += 1
    return n


def define_target(trial: optuna.Trial, ts: TargetSpace) -> dict[str, Any]:
    """The define-by-run space: one categorical per TargetSpace gene (no computation here)."""
    return {k: trial.suggest_categorical(k, list(v)) for k, v in ts.genes().items()}


def run_stage_two(space: SearchSpace, subnet: Arch, accuracy: Callable, cost: Callable, budget: float,
                  n_trials: int, storage_path: Path, seed: int = 0, study_name: str = "stage2",
                  progress: bool = True, sampler: str = "tpe") -> tuple[TargetResult, Any]:
    """Run (or resume) the study; returns the best feasible TargetNet and the study."""
    from optuna.trial import TrialState
    from tqdm import tqdm

    ts = TargetSpace(space, subnet)
    study = open_study(storage_path, study_name, seed, sampler)
    fresh = len(study.trials) == 0
    requeue_interrupted(study)
    if fresh:
        for largest in (True, False):  # warm start: the SubNet's largest and smallest cuts
            study.enqueue_trial(ts.extreme_genome(largest), user_attrs={"warm_start": "largest" if largest else "smallest"})

    def objective(trial) -> float:
        genome = define_target(trial, ts)
        target, blocks = ts.decode(genome)
        c = cost(target)
        trial.set_constraint("budget", c - budget)
        trial.set_user_attr("cost", c)
        trial.set_user_attr("arch_id", target.arch_id)
        trial.set_user_attr("blocks", blocks)
        return float(accuracy(target, blocks))

    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    remaining = max(0, n_trials - done)
    bar = tqdm(total=n_trials, initial=done, desc="stage 2 (optuna)", disable=not progress, leave=False)

    def tick(study, trial):
        bar.update(1)
        feas = feasible_trials(study)
        if feas:
            bar.set_postfix(best=f"{max(t.value for t in feas):.2f}%")

    if remaining:
        study.optimize(objective, n_trials=remaining, callbacks=[tick])
    bar.close()
    return best_target(study, ts, accuracy, cost, budget), study


def constraint(t: optuna.trial.FrozenTrial) -> float | None:
    """The stored ``cost - budget`` of a trial (``trial.set_constraint``), if it got that far."""
    return t.constraints.get("budget")


def feasible_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if (c := constraint(t)) is not None and c <= 0]


def best_target(study: optuna.Study, ts: TargetSpace, accuracy: Callable, cost: Callable, budget: float) -> TargetResult:
    feas = feasible_trials(study)
    if feas:
        t = max(feas, key=lambda t: (t.value, -t.user_attrs["cost"]))
        target, blocks = ts.decode({k: t.params[k] for k in ts.genes()})
        return TargetResult(target, blocks, t.value, t.user_attrs["cost"], t.number)
    # no feasible trial: the SubNet's cheapest cut is feasible by construction of stage one
    target, blocks = ts.decode(ts.extreme_genome(False))
    return TargetResult(target, blocks, float(accuracy(target, blocks)), float(cost(target)), None)


def trials_rows(study: optuna.Study) -> list[dict]:
    rows = []
    for t in study.trials:
        rows.append({
            "number": t.number,
            "state": t.state.name,
            "accuracy": t.value,
            "cost": t.user_attrs.get("cost"),
            "constraint": constraint(t),
            "feasible": None if (c := constraint(t)) is None else c <= 0,
            "arch_id": t.user_attrs.get("arch_id"),
            "warm_start": t.user_attrs.get("warm_start", ""),
            **{f"param_{k}": v for k, v in t.params.items()},
        })
    return rows
