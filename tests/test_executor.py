"""The executor seam: the search talks to its heavy steps only through ``Executor``; the jobs it hands
over are explicit (picklable, no run object); a finished run resumed calls no step again.

The Ray implementation runs the same contract on a local cluster in tests/test_ray.py.
"""

import json
import pickle
from collections import Counter

import pytest

from nas.errors import ConfigError
from nas.ops.hybrid import HybridConv2d
from nas.search.executor import LocalExecutor
from nas.search.pipeline import SearchConfig, SearchRun

TINY = dict(supernet_epochs=1, population=2, generations=1, trials=2, final_epochs=1, max_train_images=128,
            eval_images=64, bn_images=64, batch_size=64)


class Recording(LocalExecutor):
    """The local executor, counting each step and keeping the jobs it was given."""

    def __init__(self):
        super().__init__("cpu", progress=False)
        self.calls: Counter = Counter()
        self.jobs: dict = {}

    def train_supernet(self, job, loaders=None):
        self.calls["train_supernet"] += 1
        self.jobs["supernet"] = job
        super().train_supernet(job, loaders)

    def evaluate(self, evaluator, candidates):
        self.calls["evaluate"] += 1
        self.calls["candidates"] += len(candidates)
        return super().evaluate(evaluator, candidates)

    def run_stage_two(self, evaluator, job):
        self.calls["run_stage_two"] += 1
        self.jobs["stage2"] = job
        return super().run_stage_two(evaluator, job)

    def train_target(self, job):
        self.calls["train_target"] += 1
        self.jobs["target"] = job
        return super().train_target(job)


def test_the_pipeline_runs_its_steps_through_the_executor_and_resume_calls_none(tmp_path):
    out = tmp_path / "run"
    ex = Recording()
    summary = SearchRun(SearchConfig(budget="0.02mJ", **TINY), out, progress=False, executor=ex).run()
    assert {k: ex.calls[k] for k in ("train_supernet", "run_stage_two", "train_target")} == \
        {"train_supernet": 1, "run_stage_two": 1, "train_target": 1}
    # stage one's fitness: every candidate evaluated through the executor (population x (generations + 1) at most)
    assert 1 <= ex.calls["evaluate"] and 1 <= ex.calls["candidates"] <= 2 * 2
    # the jobs are explicit: they pickle (a Ray worker rebuilds everything from them) and name their files
    for job in ex.jobs.values():
        pickle.loads(pickle.dumps(job))
    sj = ex.jobs["supernet"]
    assert sj.checkpoint == (out / "supernet.pt").resolve() and sj.options["epochs"] == 1
    # branch-norm is on in the supernet stage by default, as in the final training (one knob for both)
    assert sj.options["branch_norm"] is True and ex.jobs["target"].config.branch_norm is True
    net = sj.trainer(progress=False).net
    hybrid = [m for m in net.modules() if isinstance(m, HybridConv2d)]
    assert hybrid and all(m.branch_norm for m in hybrid)
    assert ex.jobs["stage2"].trials == 2 and ex.jobs["target"].config.epochs == 1

    again = Recording()
    assert SearchRun.resume(out, progress=False, executor=again).run() == summary
    assert sum(again.calls.values()) == 0  # nothing recomputed
    assert json.loads((out / "summary.json").read_text()) == summary


def test_branch_norm_off_reaches_the_supernet_stage(tmp_path):
    run = SearchRun(SearchConfig(budget="0.02mJ", branch_norm=False, **TINY), tmp_path / "r", progress=False)
    run.setup()  # the space, data and price list; nothing is trained
    job = run.supernet_job()
    assert job.options["branch_norm"] is False
    assert not any(m.branch_norm for m in job.trainer(run.loaders).net.modules() if isinstance(m, HybridConv2d))


def test_a_search_begun_before_the_method_knobs_existed_still_resumes(tmp_path):
    """config.json and state.json as an earlier version wrote them (no method fields in the search's
    configuration): the run resumes with their defaults instead of refusing a 'mixed' directory."""
    from nas.rundir import config_hash
    from nas.train.trainer import MethodConfig

    cfg = SearchConfig(budget="0.02mJ", **TINY).resolved()
    old = {k: v for k, v in cfg.to_dict().items()
           if k not in {f for f in MethodConfig.__dataclass_fields__} - {"aug", "remap", "eta"}}
    out = tmp_path / "old"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"schema_version": 1, "kind": "search", "search": old}))
    (out / "state.json").write_text(json.dumps({"schema_version": 1, "config_hash": config_hash(old), "done": {}}))
    run = SearchRun.resume(out, progress=False)
    assert run.cfg.branch_norm is True and run.state["config_hash"] == config_hash(old)
    # a real mismatch is still refused
    (out / "state.json").write_text(json.dumps({"schema_version": 1, "config_hash": "0" * 16, "done": {}}))
    with pytest.raises(ConfigError, match="mixes files of two runs"):
        SearchRun.resume(out, progress=False)
