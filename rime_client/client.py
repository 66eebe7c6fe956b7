"""The entry point: `Client(base_url, token)`, its resources, and the httpx client it closes."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from rime_client._http import Http
from rime_client.governance import AuditLogs, Classifications, MaskingPolicies, RetentionPolicies
from rime_client.infrastructure import Infrastructure
from rime_client.lifecycle import Approvals, PipelineVersions
from rime_client.monitoring import AlertRules, Alerts, EscalationPolicies, NotificationChannels
from rime_client.resources import Connectors, Pipelines, Projects, Runs
from rime_client.tables import Tables
from rime_client.transformations import DbtProjects
from rime_client.users import Tokens, Users


class Client:
    """A Rime API client. `base_url` defaults to $RIME_URL, `token` to $RIME_TOKEN; `project` names the project
    the project-scoped resources use when a call names none.

    `max_retries`: retries of a call answered 429 (after its Retry-After, when at most `max_retry_after` s), or 503
    or unreachable for reads and keyed triggers; `backoff`: the first wait when the server names none.
    `event_hooks`: httpx's (e.g. {"request": [log_request]}), called for every attempt."""

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        project: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 3,
        max_retry_after: float = 60.0,
        backoff: float = 0.5,
        event_hooks: Mapping[str, list[Callable[..., Any]]] | None = None,
    ):
        base_url = base_url or os.environ.get("RIME_URL")
        if not base_url:
            raise ValueError("Pass the API's base URL, or set RIME_URL.")
        self._http = Http(
            base_url,
            token or os.environ.get("RIME_TOKEN"),
            timeout=timeout,
            max_retries=max_retries,
            max_retry_after=max_retry_after,
            backoff=backoff,
            event_hooks=event_hooks,
        )
        self.projects = Projects(self._http)
        self.connectors = Connectors(self._http, self.projects, project)
        self.pipelines = Pipelines(self._http, self.projects, project)
        self.runs = Runs(self._http, self.pipelines)
        self.versions = PipelineVersions(self._http, self.pipelines)
        self.approvals = Approvals(self._http, self.projects, project)
        in_project = (self._http, self.projects, project)
        self.dbt_projects = DbtProjects(*in_project)
        self.alert_rules = AlertRules(*in_project)
        self.alerts = Alerts(*in_project)
        self.notification_channels = NotificationChannels(*in_project)
        self.escalation_policies = EscalationPolicies(*in_project)
        self.classifications = Classifications(*in_project)
        self.masking_policies = MaskingPolicies(*in_project)
        self.audit_logs = AuditLogs(*in_project)
        self.retention_policies = RetentionPolicies(*in_project)
        self.tables = Tables(*in_project)
        self.infrastructure = Infrastructure(*in_project)
        self.users = Users(self._http)
        self.tokens = Tokens(self._http, self.users)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
