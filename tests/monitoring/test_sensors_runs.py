"""Run conditions (run_failed, run_duration_exceeded) evaluated by the rules' sensors against real runs in a
Dagster instance on tmp_path, writing to a real metadata store."""

from __future__ import annotations

import json
from datetime import timedelta

import dagster as dg
import pytest
from dagster._core.storage.tags import MAX_RETRIES_TAG, WILL_RETRY_TAG

from rime_dagster.monitoring.alerts import FIRING, RESOLVED
from rime_dagster.monitoring.names import rule_sensor_name
from rime_dagster.monitoring.sensors import evaluate_rule, rule_sensor
from rime_dagster.platform import run_tags
from rime_dagster.resources import MetadataStoreResource
from rime_dagster.specs import AlertRuleSpec
from rime_dagster.store.types import utcnow
from tests.monitoring.rule_support import (
    Store,
    dagster_instance,
    make_store,
    pipeline_tags,
    retry_run,
    run_job,
    tiny_job,
)
from tests.support.receivers import http_receiver

# Each test runs Dagster jobs: seconds.
pytestmark = pytest.mark.slow

NO_CATALOG = lambda: pytest.fail("run conditions never open the catalog")  # noqa: E731


@pytest.fixture
def store(db_url) -> Store:
    return make_store(db_url)


# One Dagster storage for the module (opening an instance creates its SQLite storages: a second or more on a busy
# machine). Tests do not see each other's runs: each has a store of its own, with a project of its own (a new id),
# and a rule watches only runs tagged with its project; and it reads only what happened after its creation.
@pytest.fixture(scope="module")
def dagster_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("dagster")


@pytest.fixture(scope="module")
def instance(dagster_folder):
    """The module's instance, without run retries: a failed run is never tagged dagster/will_retry by it."""
    with dagster_instance(dagster_folder) as instance:
        yield instance


@pytest.fixture(scope="module")
def retrying(dagster_folder, instance):
    """The same storage through an instance that retries runs tagged dagster/max_retries (run_retries enabled, as
    Rime's dagster.yaml has it): Dagster tags the failed run dagster/will_retry=true."""
    with dagster_instance(dagster_folder, run_retries={"enabled": True, "max_retries": 0}) as retrying:
        yield retrying


def evaluate(store: Store, rule_id: str, instance: dg.DagsterInstance, **kwargs):
    return evaluate_rule(store.url, rule_id, instance, NO_CATALOG, **kwargs)


def sensor_of(store: Store, rule_id: str) -> dg.SensorDefinition:
    return rule_sensor(
        AlertRuleSpec(rule_id, store.project_id, store.namespace, "Orders failed", "orders_failed", "run_failed", True)
    )


def tick(sensor: dg.SensorDefinition, store: Store, instance: dg.DagsterInstance, cursor: str | None = None):
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"metadata_store": MetadataStoreResource(database_url=store.url)}
    )
    result = sensor(context)
    return result, context.cursor


class TestRunFailed:
    def test_fires_once_per_failing_run_and_resolves_on_success(self, store, instance):
        rule_id = store.add_rule({"type": "run_failed", "pipeline_id": "pipe_orders"})
        edited = store.rule_updated_at(rule_id)
        failed = run_job(instance, pipeline_tags(store, "pipe_orders"), fail=True)
        assert not failed.success

        first = evaluate(store, rule_id, instance)
        assert len(first.fired) == 1
        [alert] = store.alerts(rule_id)
        assert alert.status == FIRING
        assert alert.target == "pipeline:pipe_orders"
        assert alert.context["dagster_run_id"] == failed.run_id
        assert alert.context["run_id"] == "run_" + failed.run_id.replace("-", "")
        assert alert.context["pipeline_id"] == "pipe_orders"
        assert "relation orders does not exist" in alert.context["error"]

        again = evaluate(store, rule_id, instance)
        assert again.fired == [] and again.repeated == 0
        assert len(store.alerts(rule_id)) == 1

        run_job(instance, pipeline_tags(store, "pipe_orders"))
        cleared = evaluate(store, rule_id, instance)
        assert cleared.resolved == [alert.id]
        [alert] = store.alerts(rule_id)
        assert alert.status == RESOLVED and alert.resolved_by == "system"

        second_failure = run_job(instance, pipeline_tags(store, "pipe_orders"), fail=True)
        assert len(evaluate(store, rule_id, instance).fired) == 1
        alerts = store.alerts(rule_id)
        assert [a.status for a in alerts] == [RESOLVED, FIRING]
        assert alerts[1].context["dagster_run_id"] == second_failure.run_id
        assert store.cursor(rule_id)["after"] > 0
        assert store.rule_updated_at(rule_id) == edited  # moving the cursor is not an edit of the rule

    def test_a_second_failure_while_open_counts_on_the_open_alert(self, store, instance):
        rule_id = store.add_rule({"type": "run_failed", "pipeline_id": "pipe_orders"})
        run_job(instance, pipeline_tags(store, "pipe_orders"), fail=True)
        run_job(instance, pipeline_tags(store, "pipe_orders"), fail=True)
        outcome = evaluate(store, rule_id, instance)
        assert len(outcome.fired) == 1 and outcome.repeated == 1
        [alert] = store.alerts(rule_id)
        assert alert.occurrences == 2

    def test_watches_only_its_target(self, store, instance):
        rule_id = store.add_rule({"type": "run_failed", "pipeline_id": "pipe_orders"})
        run_job(instance, pipeline_tags(store, "pipe_other"), fail=True)
        run_job(instance, {run_tags.PROJECT_ID: "project_else", run_tags.PIPELINE_ID: "pipe_orders"}, fail=True)
        run_job(instance, {}, fail=True)
        assert evaluate(store, rule_id, instance).fired == []
        assert store.alerts() == []

    def test_any_run_of_the_project_has_one_alert_per_resource(self, store, instance):
        rule_id = store.add_rule({"type": "run_failed"})
        run_job(instance, pipeline_tags(store, "pipe_orders"), fail=True)
        run_job(instance, {run_tags.PROJECT_ID: store.project_id, run_tags.CONNECTOR_ID: "conn_crm"}, fail=True)
        run_job(instance, {run_tags.PROJECT_ID: store.project_id, run_tags.DBT_PROJECT_ID: "dbt_shop"}, fail=True)
        run_job(instance, {run_tags.PROJECT_ID: "project_else", run_tags.PIPELINE_ID: "pipe_x"}, fail=True)
        assert len(evaluate(store, rule_id, instance).fired) == 3
        assert sorted(a.target for a in store.alerts(rule_id)) == [
            "connector:conn_crm",
            "dbt_project:dbt_shop",
            "pipeline:pipe_orders",
        ]
        run_job(instance, {run_tags.PROJECT_ID: store.project_id, run_tags.CONNECTOR_ID: "conn_crm"})
        assert len(evaluate(store, rule_id, instance).resolved) == 1
        assert {a.target: a.status for a in store.alerts(rule_id)}["connector:conn_crm"] == RESOLVED

    def test_history_before_the_rule_raises_nothing(self, store, instance):
        run_job(instance, pipeline_tags(store, "pipe_orders"), fail=True)
        rule_id = store.add_rule({"type": "run_failed", "pipeline_id": "pipe_orders"}, created_at=utcnow())
        assert evaluate(store, rule_id, instance).fired == []
        run_job(instance, pipeline_tags(store, "pipe_orders"), fail=True)
        assert len(evaluate(store, rule_id, instance).fired) == 1

    def test_reads_many_events_in_batches_without_losing_any(self, store, instance, monkeypatch):
        from rime_dagster.monitoring import conditions

        monkeypatch.setattr(conditions, "BATCH", 2)  # several reads, each cut at the limit
        rule_id = store.add_rule({"type": "run_failed"})
        for n in range(3):
            run_job(instance, pipeline_tags(store, f"pipe_{n}"), fail=True)
            run_job(instance, pipeline_tags(store, f"pipe_{n}"))
        run_job(instance, pipeline_tags(store, "pipe_last"), fail=True)
        for _ in range(5):
            evaluate(store, rule_id, instance)
        alerts = {a.target: a.status for a in store.alerts(rule_id)}
        assert alerts == {
            "pipeline:pipe_0": RESOLVED,
            "pipeline:pipe_1": RESOLVED,
            "pipeline:pipe_2": RESOLVED,
            "pipeline:pipe_last": FIRING,
        }


class TestSensorTicks:
    def test_replaying_a_tick_with_the_old_dagster_cursor_raises_nothing_twice(self, store, instance):
        rule_id = store.add_rule({"type": "run_failed", "pipeline_id": "pipe_orders"})
        sensor = sensor_of(store, rule_id)
        result, first_cursor = tick(sensor, store, instance)
        assert first_cursor is None or json.loads(first_cursor).get("after") is None

        run_job(instance, pipeline_tags(store, "pipe_orders"), fail=True)
        result, cursor = tick(sensor, store, instance, cursor=first_cursor)
        assert isinstance(result, dg.SkipReason) and result.skip_message.startswith("1 fired")
        assert json.loads(cursor) == store.cursor(rule_id)
        before = store.counts()
        assert before[0] == 1 and before[2] == 1  # the alert and its stream event

        # The daemon died before saving the tick's cursor: the next tick gets the old one again.
        replayed, _ = tick(sensor, store, instance, cursor=first_cursor)
        assert replayed.skip_message.startswith("0 fired")
        assert store.counts() == before

    def test_the_tick_that_fires_sends_the_webhook(self, store, instance):
        with http_receiver() as receiver:
            channel = store.add_channel(receiver.url)
            rule_id = store.add_rule({"type": "run_failed", "pipeline_id": "pipe_orders"}, channel_ids=[channel])
            failed = run_job(instance, pipeline_tags(store, "pipe_orders"), fail=True)
            result, _ = tick(sensor_of(store, rule_id), store, instance)
            assert "notifications: sent 1" in result.skip_message
            [request] = receiver.received()  # before the tick returned
        [alert] = store.alerts(rule_id)
        body = request.json()
        assert body["alert"]["id"] == alert.id and body["alert"]["run_id"] == alert.context["run_id"]
        assert body["alert"]["context"]["dagster_run_id"] == failed.run_id

    def test_a_tick_for_a_deleted_rule_skips(self, store, instance):
        sensor = sensor_of(store, "rule_gone")
        result, _ = tick(sensor, store, instance)
        assert "no longer exists" in result.skip_message


class TestOnlyFinalRetry:
    """`retrying` retries runs tagged dagster/max_retries (run_retries enabled, as Rime's dagster.yaml has it):
    Dagster tags the failed run dagster/will_retry=true; the test then runs the retry as the daemon would."""

    def _fail_then_succeed_on_retry(self, store: Store, instance: dg.DagsterInstance) -> tuple[str, str]:
        tags = {**pipeline_tags(store, "pipe_orders"), MAX_RETRIES_TAG: "1"}
        failed = run_job(instance, tags, fail=True)
        assert instance.get_run_by_id(failed.run_id).tags[WILL_RETRY_TAG] == "true"
        with retry_run(instance, failed.run_id) as retry:
            assert retry.success
        return failed.run_id, retry.run_id

    def test_a_run_that_succeeds_on_retry_raises_nothing(self, store, retrying):
        rule_id = store.add_rule({"type": "run_failed", "pipeline_id": "pipe_orders"}, only_final_retry=True)
        self._fail_then_succeed_on_retry(store, retrying)
        outcome = evaluate(store, rule_id, retrying)
        assert outcome.fired == [] and outcome.resolved == []
        assert store.alerts() == []

    def test_without_the_option_it_fires_then_resolves_itself(self, store, retrying):
        rule_id = store.add_rule({"type": "run_failed", "pipeline_id": "pipe_orders"})
        tags = {**pipeline_tags(store, "pipe_orders"), MAX_RETRIES_TAG: "1"}
        failed = run_job(retrying, tags, fail=True)
        assert len(evaluate(store, rule_id, retrying).fired) == 1
        with retry_run(retrying, failed.run_id) as retry:
            assert retry.success
        assert len(evaluate(store, rule_id, retrying).resolved) == 1
        [alert] = store.alerts(rule_id)
        assert alert.status == RESOLVED

    def test_the_final_failure_of_a_retried_run_fires(self, store, retrying):
        rule_id = store.add_rule({"type": "run_failed", "pipeline_id": "pipe_orders"}, only_final_retry=True)
        tags = {**pipeline_tags(store, "pipe_orders"), MAX_RETRIES_TAG: "1"}
        failed = run_job(retrying, tags, fail=True)
        assert evaluate(store, rule_id, retrying).fired == []
        with retry_run(retrying, failed.run_id, fail=True) as retry:
            assert not retry.success
        assert retrying.get_run_by_id(retry.run_id).tags[WILL_RETRY_TAG] == "false"  # its retries are used up
        assert len(evaluate(store, rule_id, retrying).fired) == 1
        [alert] = store.alerts(rule_id)
        assert alert.context["dagster_run_id"] == retry.run_id

    # The writer (`instance`) does not tag failed runs; the reader (`retrying`, the same storage) retries runs.
    @pytest.mark.parametrize(("will_retry", "fires"), [("false", True), ("true", False)])
    def test_a_failure_seen_before_its_will_retry_tag_is_looked_at_again(
        self, store, instance, retrying, will_retry, fires
    ):
        """Dagster stores the failure, then tags the run: a tick in between sees a failed run without the tag.
        Here the failure is written through an instance that does not tag (retries off) and read through one
        that retries runs, on the same storage."""
        rule_id = store.add_rule({"type": "run_failed", "pipeline_id": "pipe_orders"}, only_final_retry=True)
        writer, reader = instance, retrying
        failed = run_job(writer, pipeline_tags(store, "pipe_orders"), fail=True)
        assert WILL_RETRY_TAG not in reader.get_run_by_id(failed.run_id).tags
        waiting = evaluate(store, rule_id, reader)
        assert waiting.fired == []
        assert list(store.cursor(rule_id)["pending"]) == [failed.run_id]
        assert evaluate(store, rule_id, reader).fired == []  # still no tag: still waiting

        writer.add_run_tags(failed.run_id, {WILL_RETRY_TAG: will_retry})
        decided = evaluate(store, rule_id, reader)
        assert len(decided.fired) == (1 if fires else 0)
        assert "pending" not in store.cursor(rule_id)

    def test_a_failure_whose_tag_never_comes_fires_after_the_grace_period(self, store, instance, retrying):
        from rime_dagster.monitoring.conditions import WILL_RETRY_GRACE

        rule_id = store.add_rule({"type": "run_failed", "pipeline_id": "pipe_orders"}, only_final_retry=True)
        writer, reader = instance, retrying
        run_job(writer, pipeline_tags(store, "pipe_orders"), fail=True)
        assert evaluate(store, rule_id, reader).fired == []
        later = utcnow() + WILL_RETRY_GRACE + timedelta(seconds=1)
        assert len(evaluate(store, rule_id, reader, now=later).fired) == 1

    def test_a_later_success_supersedes_a_failure_waiting_for_its_tag(self, store, instance, retrying):
        rule_id = store.add_rule({"type": "run_failed", "pipeline_id": "pipe_orders"}, only_final_retry=True)
        writer, reader = instance, retrying
        failed = run_job(writer, pipeline_tags(store, "pipe_orders"), fail=True)
        evaluate(store, rule_id, reader)
        run_job(writer, pipeline_tags(store, "pipe_orders"))
        writer.add_run_tags(failed.run_id, {WILL_RETRY_TAG: "false"})
        assert evaluate(store, rule_id, reader).fired == []
        assert store.alerts() == []


class TestRunDurationExceeded:
    def test_a_finished_run_over_the_limit_fires_and_a_fast_one_clears(self, store, instance):
        rule_id = store.add_rule(
            {"type": "run_duration_exceeded", "pipeline_id": "pipe_orders", "max_seconds": 2}, name="Orders slow"
        )
        run_job(instance, pipeline_tags(store, "pipe_orders"), sleep=2.5)
        outcome = evaluate(store, rule_id, instance)
        assert len(outcome.fired) == 1
        [alert] = store.alerts(rule_id)
        assert alert.target == "pipeline:pipe_orders"
        assert alert.context["duration_seconds"] > 2 and alert.context["max_seconds"] == 2

        run_job(instance, pipeline_tags(store, "pipe_orders"))
        assert evaluate(store, rule_id, instance).resolved == [alert.id]

    def test_a_run_still_running_fires_once(self, store, instance):
        rule_id = store.add_rule({"type": "run_duration_exceeded", "max_seconds": 60}, name="Anything slow")
        run = instance.create_run_for_job(tiny_job, tags=pipeline_tags(store, "pipe_orders"))
        instance.report_dagster_event(
            dg.DagsterEvent(dg.DagsterEventType.RUN_START.value, job_name=run.job_name), run_id=run.run_id
        )
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
        assert evaluate(store, rule_id, instance).fired == []  # within the limit so far

        later = utcnow() + timedelta(seconds=61)
        assert len(evaluate(store, rule_id, instance, now=later).fired) == 1
        assert store.cursor(rule_id)["flagged"] == [run.run_id]
        assert evaluate(store, rule_id, instance, now=later + timedelta(seconds=30)).fired == []

        instance.report_dagster_event(
            dg.DagsterEvent(dg.DagsterEventType.RUN_SUCCESS.value, job_name=run.job_name), run_id=run.run_id
        )
        ended = evaluate(store, rule_id, instance, now=later + timedelta(seconds=60))
        assert ended.fired == [] and ended.resolved == []  # the slow run itself ending clears nothing
        assert "flagged" not in store.cursor(rule_id)
        [alert] = store.alerts(rule_id)
        assert alert.status == FIRING and alert.occurrences == 1


def test_sensor_name_is_readable(store):
    assert (
        sensor_of(store, "rule_x").name
        == rule_sensor_name(store.namespace, "orders_failed")
        == "sales__orders_failed__alert"
    )
