"""Classification rules run over Iceberg tables: which columns hold which class of data, stored as column tags.

A column is tagged with a classification when one of the classification's rules matches it:

- `column_pattern`: the regex is found in the column's name (`search`, case-insensitive);
- `value_pattern` (the regex must match the whole value) or `detector` (rime_dagster/governance/detectors.py):
  at least MATCH_SHARE (80%) of the column's sampled values match. The sample is bounded: the first SAMPLE_VALUES
  (200) non-blank values among the first SAMPLE_ROWS (2,000) rows of the current snapshot, string columns only.

Patterns run on the `regex` engine (re's syntax) with a time budget per column and rule (PATTERN_SECONDS): a
pattern that backtracks catastrophically stops matching that column instead of stalling the sync. Values longer
than MAX_VALUE_CHARS count as not matching, so no pattern or detector ever sees unbounded input.

Results are ColumnClassification rows: a table's `source="rule"` rows are replaced, in one transaction, each
time the table is classified; `source="manual"` rows mirror each classification's `assignments`
(`sync_assignments`) and are never touched by classification.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import regex
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from rime_dagster.governance.detectors import DETECTORS
from rime_dagster.store.models import Classification, ColumnClassification

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table

log = logging.getLogger(__name__)

SENSITIVITIES = ("public", "internal", "confidential", "restricted")
RULE_KINDS = ("column_pattern", "value_pattern", "detector")
MAX_PATTERN_CHARS = 300
SAMPLE_ROWS = 2_000
SAMPLE_VALUES = 200
MATCH_SHARE = 0.8
MAX_VALUE_CHARS = 1_000
PATTERN_SECONDS = 0.25


def compile_pattern(pattern: str, *, ignore_case: bool = False) -> regex.Pattern[str]:
    """The compiled pattern; ValueError (its message fit for a client) when it is empty, too long or invalid."""
    if not pattern:
        raise ValueError("Must not be empty.")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ValueError(f"At most {MAX_PATTERN_CHARS} characters.")
    try:
        return regex.compile(pattern, regex.IGNORECASE if ignore_case else 0)
    except (regex.error, OverflowError, RecursionError) as exc:
        raise ValueError(f"Not a valid regular expression: {exc}.") from None


@dataclass(frozen=True)
class ValueRule:
    """A `value_pattern` or a `detector`, tested over a column's sampled values."""

    label: str  # as ColumnClassification.detail names it
    test: Callable[[str], bool] | None = None
    pattern: regex.Pattern[str] | None = None

    def matching(self, values: Sequence[str]) -> int | None:
        """How many of `values` match; None when the pattern ran out of its time budget."""
        deadline = time.monotonic() + PATTERN_SECONDS
        count = 0
        for value in values:
            if len(value) > MAX_VALUE_CHARS:
                continue
            if self.pattern is None:
                count += bool(self.test and self.test(value))
                continue
            try:
                found = self.pattern.fullmatch(value, timeout=max(deadline - time.monotonic(), 0.001))
            except TimeoutError:
                return None
            count += found is not None
        return count


@dataclass(frozen=True)
class ClassificationRules:
    id: str
    name: str
    column_patterns: tuple[regex.Pattern[str], ...] = ()
    value_rules: tuple[ValueRule, ...] = ()


def rules_of(row: Classification) -> ClassificationRules:
    """The classification's rules, compiled. The API validated them; one that no longer compiles (a library
    upgrade) is skipped and logged rather than stopping the others."""
    column_patterns: list[regex.Pattern[str]] = []
    value_rules: list[ValueRule] = []
    for rule in row.rules:
        try:
            if "column_pattern" in rule:
                column_patterns.append(compile_pattern(rule["column_pattern"], ignore_case=True))
            elif "value_pattern" in rule:
                pattern = compile_pattern(rule["value_pattern"])
                value_rules.append(ValueRule(f"value_pattern {pattern.pattern!r}", pattern=pattern))
            else:
                value_rules.append(ValueRule(f"detector {rule['detector']}", test=DETECTORS[rule["detector"]]))
        except (ValueError, KeyError, TypeError):
            log.warning("classification %s: skipping rule %r, which is not valid", row.id, rule)
    return ClassificationRules(row.id, row.name, tuple(column_patterns), tuple(value_rules))


@dataclass(frozen=True)
class Match:
    column: str
    classification_id: str
    detail: str


def match_column(rules: ClassificationRules, column: str, values: Sequence[str] | None) -> str | None:
    """Which of the rules matches the column (its name, then its sampled `values`), as a detail; None if none."""
    for pattern in rules.column_patterns:
        try:
            if pattern.search(column, timeout=PATTERN_SECONDS):
                return f"column_pattern {pattern.pattern!r}"[:300]
        except TimeoutError:
            log.warning("classification %s: column_pattern %r timed out on %r", rules.id, pattern.pattern, column)
    for rule in rules.value_rules if values else ():
        assert values is not None
        matched = rule.matching(values)
        if matched is None:
            log.warning("classification %s: %s timed out on column %r", rules.id, rule.label, column)
        elif matched >= MATCH_SHARE * len(values):
            return f"{rule.label}: {matched} of {len(values)} sampled values"[:300]
    return None


def find_matches(
    classifications: Sequence[ClassificationRules], columns: Sequence[str], samples: Mapping[str, Sequence[str]]
) -> list[Match]:
    return [
        Match(column, rules.id, detail)
        for rules in classifications
        for column in columns
        if (detail := match_column(rules, column, samples.get(column))) is not None
    ]


@dataclass(frozen=True)
class TableSample:
    columns: list[str]  # every top-level column, in schema order
    values: dict[str, list[str]] = field(default_factory=dict)  # string columns: their sampled values


def sample_table(table: Table, *, with_values: bool = True) -> TableSample:
    """The table's column names and, if `with_values`, a bounded sample of its string columns' values (one scan
    with a row limit: pyiceberg reads only the files it needs)."""
    from pyiceberg.types import StringType

    fields = table.schema().fields
    columns = [f.name for f in fields]
    strings = [f.name for f in fields if isinstance(f.field_type, StringType)]
    if not with_values or not strings or table.current_snapshot() is None:
        return TableSample(columns)
    data = table.scan(selected_fields=tuple(strings), limit=SAMPLE_ROWS).to_arrow()
    values = {}
    for name in strings:
        present = (v.strip() for v in data.column(name).to_pylist() if v is not None)
        values[name] = [v for v in present if v][:SAMPLE_VALUES]
    return TableSample(columns, values)


# The metadata store ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnTag:
    """A classification of a column, as the table schema shows it and masking reads it."""

    id: str
    name: str
    sensitivity: str
    source: str  # rule | manual


def column_classifications(session: Session, *, project_id: str, table: str) -> dict[str, list[ColumnTag]]:
    """Each classified column of the project's table (named as GET .../tables lists it) with its classifications,
    by name then source (a column found by a rule and also assigned by hand has both)."""
    rows = session.execute(
        select(ColumnClassification.column_name, Classification, ColumnClassification.source)
        .join(Classification, Classification.id == ColumnClassification.classification_id)
        .where(ColumnClassification.project_id == project_id, ColumnClassification.table_name == table)
        .order_by(ColumnClassification.column_name, Classification.name, ColumnClassification.source)
    )
    tags: dict[str, list[ColumnTag]] = {}
    for column, classification, source in rows:
        tags.setdefault(column, []).append(
            ColumnTag(classification.id, classification.name, classification.sensitivity, source)
        )
    return tags


def load_rules(session: Session, *, project_id: str) -> list[ClassificationRules]:
    rows = session.scalars(
        select(Classification).where(Classification.project_id == project_id).order_by(Classification.name)
    )
    return [rules for rules in map(rules_of, rows) if rules.column_patterns or rules.value_rules]


def replace_rule_matches(session: Session, *, project_id: str, table: str, matches: Iterable[Match]) -> None:
    """The table's `source="rule"` rows become `matches` (in the caller's transaction)."""
    session.execute(
        delete(ColumnClassification).where(
            ColumnClassification.project_id == project_id,
            ColumnClassification.table_name == table,
            ColumnClassification.source == "rule",
        )
    )
    session.add_all(
        ColumnClassification(
            project_id=project_id,
            table_name=table,
            column_name=m.column,
            classification_id=m.classification_id,
            source="rule",
            detail=m.detail,
        )
        for m in matches
    )
    session.flush()


def sync_assignments(session: Session, classification: Classification) -> None:
    """The classification's `source="manual"` rows become its `assignments` (in the caller's transaction)."""
    session.execute(
        delete(ColumnClassification).where(
            ColumnClassification.classification_id == classification.id, ColumnClassification.source == "manual"
        )
    )
    pairs = dict.fromkeys((a["table"], a["column"]) for a in classification.assignments)
    session.add_all(
        ColumnClassification(
            project_id=classification.project_id,
            table_name=table,
            column_name=column,
            classification_id=classification.id,
            source="manual",
            detail="assigned",
        )
        for table, column in pairs
    )
    session.flush()


@dataclass(frozen=True)
class TableClassification:
    table: str
    matches: list[Match]  # what the rules found just now
    columns: dict[str, list[ColumnTag]]  # every classification of the table's columns afterwards, manual included


def classify_tables(
    sessions: sessionmaker[Session], catalog: Catalog, *, project_id: str, namespace: str, tables: Iterable[str]
) -> Iterable[TableClassification]:
    """Classifies each of the project's `tables` (Iceberg `namespace.<table>`), one at a time, yielding each result.

    No database transaction is open while the catalog is read; each table's results are written in a transaction
    of their own, so a table's rule tags are never half replaced. Raises the catalog's NoSuchTableError.
    """
    with sessions() as session:
        classifications = load_rules(session, project_id=project_id)
        session.rollback()
    for table in tables:
        loaded = catalog.load_table((namespace, table))
        sample = sample_table(loaded, with_values=any(rules.value_rules for rules in classifications))
        matches = find_matches(classifications, sample.columns, sample.values)
        yield TableClassification(table, matches, _store(sessions, project_id, table, matches))


def _store(
    sessions: sessionmaker[Session], project_id: str, table: str, matches: list[Match]
) -> dict[str, list[ColumnTag]]:
    for attempt in (1, 2):
        try:
            with sessions.begin() as session:
                replace_rule_matches(session, project_id=project_id, table=table, matches=matches)
                return column_classifications(session, project_id=project_id, table=table)
        except IntegrityError:
            # Another classification of the table committed the same rows between our delete and insert
            # (PostgreSQL, read committed): once more, now that its rows are visible to the delete.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")
