"""Fixtures of the API tests that need a project with a connector (pipelines and their documents)."""

from __future__ import annotations

import pytest


@pytest.fixture
def setup(clients) -> dict:
    admin = clients.admin
    project = admin.post("/api/v1/projects", json={"name": "pipelines"}).json()
    connector = admin.post(
        f"/api/v1/projects/{project['id']}/connectors",
        json={"name": "Shop", "connector_type": "files", "config": {}, "selected_tables": ["orders"]},
    ).json()
    other = admin.post("/api/v1/projects", json={"name": "elsewhere"}).json()
    foreign = admin.post(
        f"/api/v1/projects/{other['id']}/connectors",
        json={"name": "Foreign", "connector_type": "files", "config": {}},
    ).json()
    return {
        "project": project,
        "connector": connector,
        "foreign": foreign,
        "url": f"/api/v1/projects/{project['id']}/pipelines",
    }
