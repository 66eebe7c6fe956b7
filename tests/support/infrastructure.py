"""Helpers of the infrastructure provider tests: a declaration as the API stores it, and one resource's plan."""

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
