"""The SDK's run retry against the served API, Dagster not running: the server's refusals come back as the SDK's
errors, and a retry that reaches the re-execution is sent again under its one Idempotency-Key. A real retry,
followed to its end, is tests/dagster/test_pipeline_retry.py's."""

from __future__ import annotations

import httpx
import pytest
from dagster import DagsterRunStatus

from rime_client import Client, Conflict, NotFound, ServiceUnavailable
from tests.api.test_pipeline_retry import stored_run
from tests.sdk.conftest import Served
from tests.sdk.test_client import unique, with_pipeline


def test_retry_refusals_and_its_one_idempotency_key(api: Served):
    sent: list[tuple[str | None, bytes]] = []

    def record(request: httpx.Request) -> None:
        if request.method == "POST" and request.url.path.endswith("/retry"):
            sent.append((request.headers.get("Idempotency-Key"), request.content))

    with Client(api.url, api.admin_token, max_retries=1, backoff=0.01, event_hooks={"request": [record]}) as client:
        project, pipeline = with_pipeline(client, unique("retry"))
        succeeded = stored_run(api.app, project.id, pipeline.id, DagsterRunStatus.SUCCESS)
        with pytest.raises(Conflict, match="succeeded"):
            client.runs.retry(succeeded, pipeline=pipeline.name, project=project.name)
        with pytest.raises(NotFound):
            client.runs.handle("run_" + "0" * 32, pipeline=pipeline.id, project=project.id).retry()
        assert len(sent) == 2  # refusals are not tried again

        failed = stored_run(api.app, project.id, pipeline.id, DagsterRunStatus.FAILURE)
        handle = client.runs.handle(failed, pipeline=pipeline.id, project=project.id)
        with pytest.raises(ServiceUnavailable):  # past the refusals, to Dagster, which is not running
            handle.retry(from_failure=False)
        retried = sent[2:]
        assert len(retried) == 2 and retried[0][0] and len(set(retried)) == 1
        assert retried[0][1] == b'{"from_failure":false}'
