"""The real API served by uvicorn on a loopback port (in a thread of the test process, its state inspectable), for
the SDK to talk to over HTTP and WebSocket. Dagster is not running: launches answer 503; runs the tests need are
executed in process on the app's own Dagster instance."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI

from api_shim.main import create_app
from api_shim.services import users as user_service
from api_shim.services.auth import Role
from rime_dagster.settings import Settings
from rime_dagster.store.session import engine_for, session_scope
from tests.api.test_alert_stream import served
from tests.conftest import ADMIN_TOKEN, make_settings


@dataclass
class Served:
    url: str  # http://127.0.0.1:<port>
    app: FastAPI
    settings: Settings
    viewer_token: str
    admin_token: str = ADMIN_TOKEN


@contextmanager
def served_api(path: Path, **overrides: object) -> Iterator[Served]:
    # A launch waits this long for Dagster to serve the project's definitions: here Dagster is not running at all.
    # Run watches read the event log every 50 ms (not 500): a followed run's end reaches the client sooner.
    settings = make_settings(
        path, **{"definitions_wait_seconds": 0.05, "run_watch_interval_seconds": 0.05, **overrides}
    )
    app = create_app(settings)
    with served(app) as ws_url:  # the lifespan has bootstrapped the admin and its token
        with session_scope(settings.metadata_url) as session:
            user = user_service.create_user(
                session, tenant_id=settings.tenant, email="viewer@example.com", name="viewer", role=Role.viewer
            )
            viewer = user_service.create_token(session, user, name="sdk", expires_at=None).secret
        yield Served(url=ws_url.replace("ws://", "http://"), app=app, settings=settings, viewer_token=viewer)
    engine_for(settings.metadata_url).dispose()


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> Iterator[Served]:
    with served_api(tmp_path_factory.mktemp("sdk")) as served_app:
        yield served_app
