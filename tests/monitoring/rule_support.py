"""What the sensor and escalation tests build on: a metadata store with a project and alert rules, a Dagster
instance on tmp_path where tiny jobs run with Rime's run tags, and the store's alerts as the tests read them."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.storage.tags import MAX_RETRIES_TAG, PARENT_RUN_ID_TAG, ROOT_RUN_ID_TAG
from sqlalchemy import select

from rime_dagster.platform import run_tags
from rime_dagster.store.ids import new_id
from rime_dagster.store.models import (
    Alert,
    AlertDelivery,
    AlertEvent,
    AlertRule,
    EscalationPolicy,
    NotificationChannel,
    Project,
)
from rime_dagster.store.session import session_scope


@dg.op(config_schema={"fail": dg.Field(bool, default_value=False), "sleep": dg.Field(float, default_value=0.0)})
def work(context: dg.OpExecutionContext) -> None:
    import time

    time.sleep(context.op_config["sleep"])
    if context.op_config["fail"]:
        raise RuntimeError("relation orders does not exist")


@dg.job(executor_def=dg.in_process_executor)
def tiny_job() -> None:
    work()


def run_job(
    instance: dg.DagsterInstance, tags: dict[str, str], *, fail: bool = False, sleep: float = 0.0
) -> dg.ExecuteInProcessResult:
    """One run of a one-op job in `instance`, tagged like a Rime run (`tags`); fails if asked to."""
    return tiny_job.execute_in_process(
        instance=instance,
        tags=tags,
        run_config={"ops": {"work": {"config": {"fail": fail, "sleep": sleep}}}},
        raise_on_error=False,
    )


def retry_run(instance: dg.DagsterInstance, failed_run_id: str, *, fail: bool = False) -> dg.JobExecutionResult:
    """The retry of a failed run, as Dagster's daemon launches it: a re-execution from failure, with the failed
    run's tags, in its run group."""
    parent = instance.get_run_by_id(failed_run_id)
    assert parent is not None
    tags = {
        **{k: v for k, v in parent.tags.items() if not k.startswith("dagster/") or k == MAX_RETRIES_TAG},
        # Dagster counts a run group's retries by these tags (the daemon's create_reexecuted_run sets them).
        PARENT_RUN_ID_TAG: failed_run_id,
        ROOT_RUN_ID_TAG: parent.root_run_id or failed_run_id,
    }
    return dg.execute_job(
        dg.reconstructable(tiny_job),
        instance,
        run_config={"ops": {"work": {"config": {"fail": fail}}}},
        tags=tags,
        reexecution_options=dg.ReexecutionOptions.from_failure(failed_run_id, instance),
    )


@contextmanager
def dagster_instance(folder: Path, **overrides: Any) -> Iterator[dg.DagsterInstance]:
    """A persistent Dagster instance (SQLite storage under `folder`); two opened on one folder share it."""
    folder.mkdir(parents=True, exist_ok=True)
    with dg.instance_for_test(temp_dir=str(folder), overrides=overrides or None) as instance:
        yield instance


@dataclass
class Store:
    url: str
    project_id: str
    namespace: str

    def add_rule(
        self,
        condition: dict[str, Any],
        *,
        name: str = "Orders failed",
        only_final_retry: bool = False,
        channel_ids: list[str] | None = None,
        escalation_policy_id: str | None = None,
        created_at: datetime | None = None,
    ) -> str:
        with session_scope(self.url) as session:
            rule = AlertRule(
                id=new_id("rule"),
                project_id=self.project_id,
                name=name,
                slug=name.lower().replace(" ", "_"),
                severity="high",
                condition=condition,
                channel_ids=channel_ids or [],
                escalation_policy_id=escalation_policy_id,
                enabled=True,
                only_final_retry=only_final_retry,
                cursor={},
            )
            if created_at is not None:
                rule.created_at = created_at
            session.add(rule)
        return rule.id

    def add_channel(self, url: str = "http://127.0.0.1:9/hook") -> str:
        """A webhook channel (no secret) posting to `url`."""
        with session_scope(self.url) as session:
            channel = NotificationChannel(
                id=new_id("channel"),
                project_id=self.project_id,
                name=f"hook {new_id('channel')[-6:]}",
                channel_type="webhook",
                config={"url": url},
            )
            session.add(channel)
        return channel.id

    def add_policy(self, steps: list[dict[str, Any]]) -> str:
        with session_scope(self.url) as session:
            policy = EscalationPolicy(
                id=new_id("escalation_policy"), project_id=self.project_id, name="On call", steps=steps
            )
            session.add(policy)
        return policy.id

    def alerts(self, rule_id: str | None = None) -> list[Alert]:
        with session_scope(self.url) as session:
            query = select(Alert).order_by(Alert.fired_at, Alert.id)
            if rule_id is not None:
                query = query.where(Alert.rule_id == rule_id)
            return list(session.scalars(query))

    def cursor(self, rule_id: str) -> dict[str, Any]:
        with session_scope(self.url) as session:
            return dict(session.get_one(AlertRule, rule_id).cursor)

    def rule_updated_at(self, rule_id: str) -> datetime:
        with session_scope(self.url) as session:
            return session.get_one(AlertRule, rule_id).updated_at

    def counts(self) -> tuple[int, int, int]:
        """(alerts, deliveries, alert stream events): what a replayed tick must not add to."""
        with session_scope(self.url) as session:
            return (
                len(session.scalars(select(Alert.id)).all()),
                len(session.scalars(select(AlertDelivery.id)).all()),
                len(session.scalars(select(AlertEvent.id)).all()),
            )


def make_store(url: str, name: str = "Sales") -> Store:
    with session_scope(url) as session:
        project = Project(id=new_id("project"), tenant_id="default", name=name, namespace=name.lower())
        session.add(project)
    return Store(url=url, project_id=project.id, namespace=project.namespace)


def pipeline_tags(store: Store, pipeline_id: str) -> dict[str, str]:
    return {run_tags.PROJECT_ID: store.project_id, run_tags.PIPELINE_ID: pipeline_id}
