"""A run launch waits on Dagster for seconds; it must not hold the metadata store's write lock meanwhile."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor

import pytest

from api_shim.dagster_client import DagsterClient
from tests.conftest import make_settings
from tests.support.waiting import running, wait_until

LAUNCH_TIMEOUT = 3


@pytest.fixture
def hung_port():
    """A port that accepts connections but never answers: Dagster hung mid-launch."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


@pytest.fixture
def settings(tmp_path, hung_port):
    return make_settings(
        tmp_path,
        dagster_graphql_url=f"http://127.0.0.1:{hung_port}/graphql",
        dagster_timeout_seconds=LAUNCH_TIMEOUT,
    )


@pytest.mark.slow
def test_writes_go_on_while_a_launch_waits_on_dagster(clients):
    admin = clients.admin
    project = admin.post("/api/v1/projects", json={"name": "locking"}).json()
    connector = admin.post(
        f"/api/v1/projects/{project['id']}/connectors",
        json={"name": "Shop", "connector_type": "files", "config": {}, "selected_tables": ["orders"]},
    ).json()
    pipeline = admin.post(
        f"/api/v1/projects/{project['id']}/pipelines",
        json={
            "name": "p",
            "steps": [{"id": "s", "type": "connector_sync", "config": {"connector_id": connector["id"]}}],
        },
    ).json()
    # The first user created pays one-time costs (schemas built lazily, first use of the password hasher);
    # they are not the launch's doing.
    warm = admin.post("/api/v1/users", json={"email": "warm@example.com", "name": "warm", "role": "viewer"})
    assert warm.status_code == 201, warm.text
    launches = {
        "pipeline": f"/api/v1/projects/{project['id']}/pipelines/{pipeline['id']}/run",
        "connector": f"/api/v1/projects/{project['id']}/connectors/{connector['id']}/sync",
    }
    for kind, url in launches.items():
        with ThreadPoolExecutor(1) as pool:
            launching = pool.submit(admin.post, url)
            wait_until(lambda: running(DagsterClient.launch_run), timeout=10, what=f"the {kind} launch")
            # A write with no Dagster call of its own (creating a project would reload the code location).
            created = clients.admin.post(
                "/api/v1/users", json={"email": f"{kind}@example.com", "name": kind, "role": "viewer"}
            )
            # The property itself, not a duration a busy machine could stretch: the write was answered while the
            # launch was still waiting on Dagster. Had the launch held the write lock, the write would have
            # queued until the launch gave up (LAUNCH_TIMEOUT).
            answered_during_launch = not launching.done()
            assert launching.result().status_code == 503
        assert created.status_code == 201, created.text
        assert answered_during_launch, f"a write waited behind the {kind} launch until it ended"
