"""Step states folded from real Dagster event logs (pipeline jobs executed in process)."""

from __future__ import annotations

import dagster as dg

from api_shim.services.pipeline_runs import log_line
from rime_dagster.pipelines.jobs import Resources, is_chain, pipeline_definitions
from rime_dagster.pipelines.names import pipeline_job_name
from rime_dagster.pipelines.run_fold import RunFold
from rime_dagster.pipelines.spec import StepBody
from tests.pipelines.test_jobs import connector, pipeline, with_resources


def execute(defs: dg.Definitions, spec):
    instance = dg.DagsterInstance.ephemeral()
    result = defs.resolve_job_def(pipeline_job_name(spec.namespace, spec.slug)).execute_in_process(
        instance=instance, raise_on_error=False
    )
    return instance, result.run_id


def fold_of(instance, run_id: str, spec) -> RunFold:
    fold = RunFold([StepBody.model_validate(s) for s in spec.steps])
    fold.apply(instance.get_records_for_run(run_id, limit=100_000).records)
    return fold


def test_failed_step_fails_and_its_downstream_is_skipped(home):
    (home / "good").mkdir()
    (home / "good" / "orders.csv").write_text("id,amount\n1,2.5\n2,3.5\n")
    (home / "empty").mkdir()
    conns = {"good": connector(home, "good", "good"), "broken": connector(home, "broken", "empty")}
    spec = pipeline(
        "pipe_f",
        [
            {"id": "sync", "name": "Sync orders", "type": "connector_sync", "config": {"connector_id": "good"}},
            {"id": "bad", "type": "connector_sync", "config": {"connector_id": "broken"}, "depends_on": ["sync"]},
            {"id": "after", "type": "connector_sync", "config": {"connector_id": "good"}, "depends_on": ["bad"]},
        ],
    )
    resources = Resources(conns, {}, {spec.id: spec})
    assert is_chain(spec, resources)
    defs = with_resources(pipeline_definitions(spec, resources))
    instance, run_id = execute(defs, spec)

    fold = fold_of(instance, run_id, spec)
    states = {s.step_id: s for s in fold.states()}
    assert fold.status == "failed" and fold.started_at and fold.finished_at
    assert states["sync"].status == "completed" and states["sync"].rows == 2
    assert states["sync"].step_name == "Sync orders"
    assert states["sync"].duration_seconds is not None and states["sync"].duration_seconds >= 0
    assert states["bad"].status == "failed" and "orders" in states["bad"].error
    assert states["after"].status == "skipped" and states["after"].started_at is None
    assert "upstream" in states["after"].error

    # Folded one record at a time, each step goes pending -> running -> its end, in order.
    # Folded in one go, the transitions still come one by one, in order.
    replay = RunFold(fold.steps)
    seen = [(s.step_id, s.status) for s in replay.apply(instance.get_records_for_run(run_id, limit=100_000).records)]
    assert seen[:4] == [("sync", "running"), ("sync", "completed"), ("bad", "running"), ("bad", "failed")]
    assert seen[-1] == ("after", "skipped")  # when the run's failure is folded
    assert fold.cursor == max(r.storage_id for r in instance.get_records_for_run(run_id, limit=100_000).records)

    lines = [log_line(r, fold) for r in instance.get_records_for_run(run_id, limit=100_000).records]
    failure = next(line for line in lines if line["event_type"] == "STEP_FAILURE")
    assert failure["step_id"] == "bad" and failure["level"] == "ERROR" and "orders" in failure["message"]


def test_nested_pipeline_step_adds_up_its_inner_steps(home):
    (home / "good").mkdir()
    (home / "good" / "orders.csv").write_text("id\n1\n")
    conns = {"good": connector(home, "good", "good")}
    inner = pipeline(
        "pipe_in",
        [
            {"id": "a", "type": "connector_sync", "config": {"connector_id": "good"}},
            {"id": "b", "type": "connector_sync", "config": {"connector_id": "good"}},
        ],
    )
    outer = pipeline(
        "pipe_out",
        [
            {"id": "first", "type": "connector_sync", "config": {"connector_id": "good"}},
            {"id": "nested", "type": "pipeline", "config": {"pipeline_id": "pipe_in"}, "depends_on": ["first"]},
        ],
    )
    resources = Resources(conns, {}, {inner.id: inner, outer.id: outer})
    assert not is_chain(outer, resources)  # the inner pipeline's two steps may run at once
    defs = with_resources(pipeline_definitions(outer, resources))
    job = defs.resolve_job_def(pipeline_job_name(outer.namespace, outer.slug))
    assert job.run_config_schema  # the job's default config picks the multiprocess executor
    instance, run_id = execute(defs, outer)
    fold = fold_of(instance, run_id, outer)
    states = {s.step_id: s for s in fold.states()}
    assert fold.status == "succeeded"
    assert list(states) == ["first", "nested"]
    assert states["nested"].status == "completed" and states["nested"].rows == 2
    assert states["nested"].started_at >= states["first"].finished_at
