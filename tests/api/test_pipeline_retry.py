"""Retrying a pipeline run: what is refused before anything reaches Dagster's webserver (none runs here).

The runs are records in the app's real Dagster run storage, tagged as the pipeline's job tags its runs;
tests/dagster/test_pipeline_retry.py retries real runs.
"""

from __future__ import annotations

import uuid

import pytest
from dagster import DagsterRun, DagsterRunStatus

from api_shim.dagster_client import to_rime_run_id
from api_shim.services.auth import Role
from tests.api.test_pipelines import sync


def stored_run(app, project_id: str, pipeline_id: str, status: DagsterRunStatus, **tags: str) -> str:
    """A run of the pipeline's development version 1 in the app's run storage, as its Rime id."""
    run = DagsterRun(
        job_name="job",
        run_id=str(uuid.uuid4()),
        status=status,
        tags={
            "rime/project_id": project_id,
            "rime/pipeline_id": pipeline_id,
            "rime/environment": "development",
            "rime/pipeline_version": "1",
            **tags,
        },
    )
    app.state.dagster.instance().add_run(run)
    return to_rime_run_id(run.run_id)


@pytest.fixture
def pipeline(clients, setup) -> dict:
    body = {"name": "retried", "steps": [sync(setup["connector"]["id"])]}
    created = clients.admin.post(setup["url"], json=body).json()
    return {**created, "project_id": setup["project"]["id"], "url": f"{setup['url']}/{created['id']}"}


@pytest.mark.parametrize(
    ("status", "tags", "words"),
    [
        (DagsterRunStatus.SUCCESS, {}, "succeeded: only a failed or canceled run"),
        (DagsterRunStatus.STARTED, {}, "still running"),
        (DagsterRunStatus.NOT_STARTED, {}, "still queued"),
        (DagsterRunStatus.FAILURE, {"rime/pipeline_version": "7"}, "ran version 7 in development"),
        (DagsterRunStatus.CANCELED, {"rime/environment": "production"}, "no version in production"),
    ],
)
def test_retry_is_refused_for_a_run_not_over_not_failed_or_of_another_version(clients, pipeline, status, tags, words):
    run_id = stored_run(clients.app, pipeline["project_id"], pipeline["id"], status, **tags)
    response = clients.as_role(Role.data_engineer).post(f"{pipeline['url']}/runs/{run_id}/retry", json={})
    assert response.status_code == 409, response.text
    assert words in response.json()["error"]["message"]


def test_retry_of_a_failed_run_of_the_version_its_environment_runs_goes_to_dagster(clients, pipeline):
    run_id = stored_run(clients.app, pipeline["project_id"], pipeline["id"], DagsterRunStatus.FAILURE)
    # Past every refusal, to the re-execution: Dagster's webserver is not running here.
    response = clients.admin.post(f"{pipeline['url']}/runs/{run_id}/retry")
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "service_unavailable"
    # The same run through another pipeline, and runs that do not exist, are not found.
    other = clients.admin.post(
        pipeline["url"].rsplit("/", 1)[0],
        json={"name": "other", "steps": [sync(pipeline["steps"][0]["config"]["connector_id"])]},
    ).json()
    for url in (
        f"{pipeline['url'].rsplit('/', 1)[0]}/{other['id']}/runs/{run_id}/retry",
        f"{pipeline['url']}/runs/run_{'0' * 32}/retry",
        f"{pipeline['url']}/runs/nope/retry",
    ):
        missing = clients.admin.post(url)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "resource_not_found", url
    for body in ({"from_failure": "maybe"}, {"from_failure": True, "steps": ["sync"]}):
        invalid = clients.admin.post(f"{pipeline['url']}/runs/{run_id}/retry", json=body)
        assert invalid.status_code == 400, invalid.text
