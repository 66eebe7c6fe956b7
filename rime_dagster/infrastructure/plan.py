"""Plans: what would make what exists match what a project declares, like `terraform plan`.

`make_plan` reads the actual state of every declared resource through its provider and diffs it with the
declaration: `create` (nothing exists), `update` (it exists and differs, drift made behind the platform's back
included), `no-op`, and `delete` for a declaration deleted through the API (a `deleting` tombstone) whose resource
still exists. Each change carries `before` (actual) and `after` (desired), and, for providers that run SQL, the
statements the change would run.

The plan's `fingerprint` hashes what it was made from: each declaration's id and revision, and each actual state
read. An apply reads everything again and refuses the plan if the fingerprint differs (a stale plan), so it never
applies changes computed from a world that has moved on.

Order: deletions first, deepest level first (a table before its namespace); then creates and updates, shallowest
level first (a namespace before its tables); no-ops last.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rime_dagster.infrastructure.providers.base import Action, Declared, ProviderError, SqlProvider, Target, provider


@dataclass(frozen=True)
class Declaration:
    """A declared resource as the store holds it: what the plan reads."""

    resource: Declared
    revision: int
    deleting: bool  # deleted through the API: its resource is to go


@dataclass(frozen=True)
class Change:
    action: Action
    resource_id: str
    resource_type: str
    name: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    statements: list[str] | None  # SQL providers only
    level: int

    def as_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "resource_id": self.resource_id,
            "resource_type": self.resource_type,
            "name": self.name,
            "before": self.before,
            "after": self.after,
            "statements": self.statements,
        }


@dataclass(frozen=True)
class Plan:
    changes: list[Change]
    fingerprint: str

    @property
    def summary(self) -> dict[str, int]:
        counts = Counter(change.action for change in self.changes)
        return {
            "create": counts["create"],
            "update": counts["update"],
            "delete": counts["delete"],
            "unchanged": counts["no-op"],
        }


class UnreadableResources(ProviderError):
    """The actual state of some resources could not be read: no plan can be made. `failures` maps each
    resource's id to its provider's message."""

    def __init__(self, failures: dict[str, str]):
        super().__init__("; ".join(f"{rid}: {message}" for rid, message in failures.items()))
        self.failures = failures


def _change(target: Target, declaration: Declaration) -> Change:
    resource = declaration.resource
    kind = provider(resource.resource_type)
    actual = kind.read_actual(target, resource)
    if declaration.deleting:
        action: Action = "delete" if actual is not None else "no-op"
        desired = None
    else:
        desired = kind.desired(resource)
        action = kind.diff(desired, actual)
    statements = kind.statements(target, resource, action, actual) if isinstance(kind, SqlProvider) else None
    return Change(
        action, resource.resource_id, resource.resource_type, resource.name, actual, desired, statements, kind.level
    )


def _order(change: Change) -> tuple[int, int, str, str]:
    if change.action == "delete":
        return (0, -change.level, change.resource_type, change.name)
    if change.action == "no-op":
        return (2, change.level, change.resource_type, change.name)
    return (1, change.level, change.resource_type, change.name)


def make_plan(target: Target, declarations: Sequence[Declaration]) -> Plan:
    """The plan for `declarations` (UnreadableResources if any actual state cannot be read)."""
    changes, failures = [], {}
    for declaration in declarations:
        try:
            changes.append(_change(target, declaration))
        except ProviderError as exc:
            failures[declaration.resource.resource_id] = str(exc)
        except Exception as exc:  # not a provider's worded failure: its text may quote a driver's secret
            failures[declaration.resource.resource_id] = f"Reading it failed unexpectedly ({type(exc).__name__})."
    if failures:
        raise UnreadableResources(failures)
    changes.sort(key=_order)
    return Plan(changes, fingerprint(declarations, changes))


def fingerprint(declarations: Sequence[Declaration], changes: Sequence[Change]) -> str:
    """What a plan was made from: declarations (id, revision, deleting) and the actual states read."""
    material = {
        "declared": sorted((d.resource.resource_id, d.revision, d.deleting) for d in declarations),
        "actual": sorted((c.resource_id, json.dumps(c.before, sort_keys=True, default=str)) for c in changes),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
