"""Helpers of the infrastructure tests: a declaration as the API stores it and one resource's plan (provider tests);
declaring and planning through the API (API and apply tests)."""

from __future__ import annotations

from rime_dagster.infrastructure.providers import Declared, Target, provider


def declared(resource_type: str, name: str, config: dict) -> Declared:
    """The declaration as the API keeps it: config validated by its provider, secrets apart, name normalised."""
    p = provider(resource_type)
    stored, secrets = p.validate(config)
    return Declared("res_1", resource_type, p.validate_name(name), stored, secrets)


def plan(target: Target, resource: Declared) -> tuple[str, dict | None]:
    """The action a plan would show for `resource`, and the actual state it read."""
    p = provider(resource.resource_type)
    actual = p.read_actual(target, resource)
    return p.diff(p.desired(resource), actual), actual


def no_catalog():
    raise AssertionError("this provider does not use the Iceberg catalog")


def infra_url(project: dict, *parts: str) -> str:
    return "/".join([f"/api/v1/projects/{project['id']}/infrastructure", *parts])


def declare(clients, project: dict, resource_type: str, name: str, config: dict | None = None) -> dict:
    """A resource declared through the API by a lead (201)."""
    response = clients.as_role("lead_data_engineer").post(
        infra_url(project), json={"resource_type": resource_type, "name": name, "config": config or {}}
    )
    assert response.status_code == 201, response.text
    return response.json()


def api_plan(clients, project: dict) -> dict:
    """A plan made through the API by a lead (201)."""
    response = clients.as_role("lead_data_engineer").post(infra_url(project, "plan"))
    assert response.status_code == 201, response.text
    return response.json()
