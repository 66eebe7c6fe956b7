"""Masking: which columns of a project's tables a role reads masked, and the SQL that masks them.

A masking policy covers a classification's columns (wherever the rules found it, or it was assigned by hand) or
listed `{table, column}` pairs. A column covered by several policies reads with the strictest strategy among the
policies the caller's role is not exempt from (null > redact > hash > partial; among partial ones, the fewest
characters kept); a caller exempt from every policy covering a column reads it in clear, and that read is what the
audit trail records (`MaskPlan.exempt`). `exempt_roles` are exact roles: exempting `lead_data_engineer` does not
exempt `admin`, so each exemption is written down.

`hash` is HMAC-SHA256 keyed per project (derived from the platform's secret key), computed by a Python function the
read path registers on its DuckDB connection: the key lives in that closure only, never in SQL text, a setting or
a message, so nobody who can run SQL can hash a guess and compare it with a masked value.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from rime_dagster.store.models import Classification, ColumnClassification, MaskingPolicy

STRATEGIES = ("redact", "hash", "partial", "null")
_STRICTNESS = {"partial": 0, "hash": 1, "redact": 2, "null": 3}
REDACTED = "****"
# The name of the hash function on a read's connection; user SQL may not call anything starting with it.
HASH_FUNCTION = "__rime_mask_hash"
INTERNAL_PREFIX = "__rime"


@dataclass(frozen=True)
class ColumnMask:
    """How one column reads for the caller: the strategy and, for `partial`, how many trailing characters show."""

    strategy: str
    keep_last: int = 0

    def stricter(self, other: ColumnMask) -> ColumnMask:
        if _STRICTNESS[self.strategy] != _STRICTNESS[other.strategy]:
            return self if _STRICTNESS[self.strategy] > _STRICTNESS[other.strategy] else other
        return self if self.keep_last <= other.keep_last else other


@dataclass
class MaskPlan:
    """For one caller: the columns they read masked, and those they read in clear only because they are exempt."""

    masked: dict[str, dict[str, ColumnMask]] = field(default_factory=dict)  # table -> column -> mask
    exempt: dict[str, set[str]] = field(default_factory=dict)  # table -> columns

    def table_masks(self, table: str) -> dict[str, ColumnMask]:
        return self.masked.get(table, {})

    def exempt_columns(self, tables: Iterable[str]) -> dict[str, list[str]]:
        """The clear-read columns of `tables` (those that have any), sorted: what an audit entry names."""
        return {t: sorted(self.exempt[t]) for t in sorted(set(tables)) if self.exempt.get(t)}


def _policy_columns(
    session: Session, project_id: str, policies: list[MaskingPolicy]
) -> dict[str, set[tuple[str, str]]]:
    """Policy id -> the (table, column) pairs it covers."""
    covered: dict[str, set[tuple[str, str]]] = {p.id: set() for p in policies}
    by_class: dict[str, list[str]] = {}
    for policy in policies:
        if policy.classification_id:
            by_class.setdefault(policy.classification_id, []).append(policy.id)
        for pair in policy.columns or []:
            covered[policy.id].add((pair["table"], pair["column"]))
    if by_class:
        found = session.execute(
            select(
                ColumnClassification.classification_id,
                ColumnClassification.table_name,
                ColumnClassification.column_name,
            )
            .where(ColumnClassification.project_id == project_id)
            .where(ColumnClassification.classification_id.in_(by_class))
        )
        pairs = [(class_id, table, column) for class_id, table, column in found]
        # Manual assignments count even before they are mirrored into column_classifications.
        for row in session.scalars(select(Classification).where(Classification.id.in_(by_class))):
            pairs += [(row.id, a["table"], a["column"]) for a in row.assignments or []]
        for class_id, table, column in pairs:
            for policy_id in by_class[class_id]:
                covered[policy_id].add((table, column))
    return covered


def mask_plan(session: Session, project_id: str, role: str) -> MaskPlan:
    """What `role` reads masked in the project, and what it reads in clear by exemption."""
    policies = list(session.scalars(select(MaskingPolicy).where(MaskingPolicy.project_id == project_id)))
    covered = _policy_columns(session, project_id, policies)
    plan = MaskPlan()
    for policy in policies:
        exempt = role in (policy.exempt_roles or [])
        mask = ColumnMask(policy.strategy, int((policy.options or {}).get("keep_last", 0)))
        for table, column in covered[policy.id]:
            if exempt:
                plan.exempt.setdefault(table, set()).add(column)
                continue
            columns = plan.masked.setdefault(table, {})
            columns[column] = mask.stricter(columns[column]) if column in columns else mask
    for table, columns in plan.masked.items():  # a column masked by any policy is not a clear read
        if table in plan.exempt:
            plan.exempt[table] -= set(columns)
    return plan


def hash_key(secret_key: str, project_id: str) -> bytes:
    """The project's HMAC key: per project, so equal values hash alike within a project only."""
    return hmac.new(secret_key.encode(), f"rime.masking.hash:{project_id}".encode(), hashlib.sha256).digest()


def keyed_hash(key: bytes, value: str) -> str:
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def masked_expression(column_sql: str, mask: ColumnMask) -> str:
    """The SQL reading `column_sql` through `mask`; NULL stays NULL under every strategy. `null` keeps the
    column's type (a CASE that never takes its branch); the others read as text."""
    text = f"CAST({column_sql} AS VARCHAR)"
    if mask.strategy == "null":
        return f"CASE WHEN false THEN {column_sql} END"
    if mask.strategy == "redact":
        return f"CASE WHEN {column_sql} IS NULL THEN NULL ELSE '{REDACTED}' END"
    if mask.strategy == "hash":
        return f"{HASH_FUNCTION}({text})"
    if mask.strategy == "partial":
        keep = int(mask.keep_last)
        # A fixed prefix hides the length; a value no longer than what would show is redacted whole.
        return (
            f"CASE WHEN {column_sql} IS NULL THEN NULL WHEN length({text}) > {keep} "
            f"THEN '{REDACTED}' || right({text}, {keep}) ELSE '{REDACTED}' END"
        )
    raise ValueError(f"unknown masking strategy {mask.strategy!r}")
