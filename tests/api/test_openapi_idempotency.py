"""Every operation that takes an `Idempotency-Key` documents the 422 a key reused with another request gets
(schemathesis found one that did not; this holds for operations added later, whatever examples it draws)."""

from __future__ import annotations

from fastapi.routing import APIRoute, iter_route_contexts

from api_shim.main import create_app
from api_shim.routing import idempotency_key
from rime_dagster.settings import Settings


def test_idempotent_operations_document_the_reused_key_422(tmp_path):
    app = create_app(Settings(home=tmp_path, secret_key="schema"))
    spec = app.openapi()
    idempotent = [
        route
        for route in (context.route for context in iter_route_contexts(app.routes))
        if isinstance(route, APIRoute) and any(d.call is idempotency_key for d in route.dependant.dependencies)
    ]
    assert len(idempotent) >= 6  # connector sync, dbt run, channel test, pipeline run, project create, table ops
    missing = [
        f"{method} {route.path}"
        for route in idempotent
        for method in route.methods
        if "422" not in spec["paths"][route.path][method.lower()]["responses"]
    ]
    assert not missing, missing
