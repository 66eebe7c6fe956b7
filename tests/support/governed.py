"""A running app with a project whose customer table holds personal data, for the masking and query tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from fastapi.testclient import TestClient

from api_shim.main import create_app
from api_shim.services.auth import Role
from rime_dagster.settings import Settings
from tests.conftest import Clients, make_settings, role_clients

CUSTOMERS = {
    "id": [1, 2, 3],
    "email": ["ada@example.com", "grace@example.org", None],
    "phone": ["+44 20 7946 0958", "+1 202 555 0143", "+33 1 23 45 67 89"],
    "amount": [Decimal("10.50"), Decimal("0.01"), Decimal("99.99")],
}
CLEAR_EMAILS = ["ada@example.com", "grace@example.org"]
CLEAR_PHONES = CUSTOMERS["phone"]


@dataclass
class Governed:
    clients: Clients
    settings: Settings
    project: dict
    table: str = "crm__customer"

    @property
    def base(self) -> str:
        return f"/api/v1/projects/{self.project['id']}"

    def as_role(self, role: Role) -> TestClient:
        return self.clients.as_role(role)

    def policy(self, body: dict) -> dict:
        response = self.clients.admin.post(f"{self.base}/masking-policies", json=body)
        assert response.status_code == 201, response.text
        return response.json()


def land_customers(app, namespace: str, table: str = "crm__customer", data: dict | None = None) -> None:
    """The customer table, landed the way a sync lands it."""
    import pyarrow as pa

    from rime_dagster.connectors.landing import land_table

    batch = pa.record_batch(
        data
        or {
            "id": pa.array(CUSTOMERS["id"], pa.int64()),
            "email": CUSTOMERS["email"],
            "phone": CUSTOMERS["phone"],
            "amount": pa.array(CUSTOMERS["amount"], pa.decimal128(10, 2)),
        }
    )
    catalog = app.state.iceberg.catalog()
    land_table(catalog, (namespace, table), batch.schema, [batch], mode="full_refresh", cursor_field=None, run_id="t")


@contextmanager
def governed(tmp: Path, **settings_overrides) -> Iterator[Governed]:
    settings = make_settings(tmp, **settings_overrides)
    app = create_app(settings)
    with role_clients(app, settings) as clients:
        response = clients.admin.post("/api/v1/projects", json={"name": f"governed-{tmp.name}"})
        assert response.status_code == 201, response.text
        project = response.json()
        land_customers(app, project["namespace"])
        yield Governed(clients=clients, settings=settings, project=project)
