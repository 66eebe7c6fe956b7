"""The API's clients and a project for the tests that apply plans: the app's settings are also the environment's
(RIME_HOME, the secret key, and for the postgres tests RIME_INFRA_POSTGRES_URL), so an infrastructure_apply run in
this process reads the same store, catalog and servers the API does, as a deployment's run process would."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from api_shim.main import create_app
from rime_dagster.settings import get_settings
from tests.conftest import Clients, make_settings, role_clients


@pytest.fixture
def clients(request, tmp_path, monkeypatch) -> Iterator[Clients]:
    extra = {}
    if request.node.get_closest_marker("postgres"):  # PostgreSQL schemas go to the throwaway server
        extra["infra_postgres_url"] = request.getfixturevalue("postgres_url")
        monkeypatch.setenv("RIME_INFRA_POSTGRES_URL", extra["infra_postgres_url"])
    settings = make_settings(tmp_path, **extra)
    monkeypatch.setenv("RIME_HOME", str(settings.home))
    monkeypatch.setenv("RIME_SECRET_KEY", settings.secret_key)
    get_settings.cache_clear()
    with role_clients(create_app(settings), settings) as clients:
        yield clients
    get_settings.cache_clear()


@pytest.fixture
def project(clients) -> dict:
    return clients.admin.post("/api/v1/projects", json={"name": "infra"}).json()
