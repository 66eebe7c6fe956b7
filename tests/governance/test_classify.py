"""The classifier in the core: detectors, the match threshold, pattern time bounds, and storing a table's tags."""

from __future__ import annotations

import time

import pyarrow as pa
import pytest
from sqlalchemy import select

from rime_dagster.connectors.landing import land_table
from rime_dagster.governance.classify import (
    MATCH_SHARE,
    SAMPLE_VALUES,
    ClassificationRules,
    classify_tables,
    column_classifications,
    compile_pattern,
    find_matches,
    rules_of,
    sync_assignments,
)
from rime_dagster.governance.detectors import DETECTORS
from rime_dagster.store.ids import new_id
from rime_dagster.store.models import Classification, ColumnClassification, Project
from rime_dagster.store.session import engine_for, session_factory
from tests.conftest import migrated_sqlite

DETECTOR_CASES = [
    ("email", "ann.lee@example.org", True),
    ("email", "ann.lee@example", False),
    ("email", "not an address", False),
    ("phone", "+44 20 7946 0958", True),
    ("phone", "(202) 555-0143", True),
    ("phone", "12", False),
    ("phone", "call me", False),
    ("credit_card", "4111 1111 1111 1111", True),
    ("credit_card", "3782-822463-10005", True),
    ("credit_card", "4111 1111 1111 1112", False),  # Luhn check fails
    ("credit_card", "1234567812345670", False),  # passes Luhn, but no card issuer starts with 1
    ("iban", "DE89 3704 0044 0532 0130 00", True),
    ("iban", "DE89 3704 0044 0532 0130 01", False),
    ("national_id", "536-90-4399", True),  # US SSN
    ("national_id", "536904399", False),  # a bare 9-digit number is not taken for an SSN
    ("national_id", "2 95 10 99 126 111 93", True),  # FR NIR
    ("national_id", "12345678Z", True),  # ES DNI
    ("national_id", "12345678A", False),
]


@pytest.mark.parametrize(("detector", "value", "expected"), DETECTOR_CASES)
def test_detectors(detector, value, expected):
    assert DETECTORS[detector](value) is expected


def rules(*rule_dicts: dict, name: str = "pii") -> ClassificationRules:
    return rules_of(Classification(id=f"cls_{name}", name=name, rules=list(rule_dicts)))


class TestMatching:
    def test_a_column_matches_when_a_clear_majority_of_its_values_do(self):
        emails = [f"user{i}@example.com" for i in range(10)]
        mostly = emails[:9] + ["n/a"]  # 90% >= MATCH_SHARE
        mixed = emails[:5] + ["n/a"] * 5  # 50% < MATCH_SHARE
        assert MATCH_SHARE == 0.8
        samples = {"mostly": mostly, "mixed": mixed, "none": ["x"] * 10}
        matches = find_matches([rules({"detector": "email"})], ["mostly", "mixed", "none", "id"], samples)
        assert [(m.column, m.detail) for m in matches] == [("mostly", "detector email: 9 of 10 sampled values")]

    def test_column_pattern_is_searched_case_insensitively(self):
        matches = find_matches([rules({"column_pattern": "e_?mail"})], ["Contact_EMAIL", "name"], {})
        assert [m.column for m in matches] == ["Contact_EMAIL"]

    def test_value_pattern_matches_whole_values(self):
        found = find_matches([rules({"value_pattern": r"\d{3}"})], ["a", "b"], {"a": ["123"], "b": ["1234"]})
        assert [m.column for m in found] == ["a"]

    def test_a_catastrophic_pattern_stops_at_its_time_budget(self):
        values = ["a" * 30 + "!"] * SAMPLE_VALUES
        started = time.monotonic()
        matches = find_matches([rules({"value_pattern": "(a|aa)+b"})], ["c"], {"c": values})
        assert matches == []
        assert time.monotonic() - started < 2

    @pytest.mark.parametrize(
        ("pattern", "message"),
        [("", "Must not be empty."), ("a" * 301, "At most 300 characters."), ("(a", "Not a valid regular")],
    )
    def test_bad_patterns_are_refused(self, pattern, message):
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            compile_pattern(pattern)


CUSTOMERS = pa.schema([("id", pa.int64()), ("email", pa.string()), ("notes", pa.string())])


@pytest.fixture
def catalog(tmp_path):
    from pyiceberg.catalog.sql import SqlCatalog

    return SqlCatalog("test", uri=f"sqlite:///{tmp_path}/cat.db", warehouse=f"file://{tmp_path}/wh")


@pytest.fixture
def store(tmp_path):
    url = migrated_sqlite(tmp_path / "rime.db")
    yield session_factory(url)
    engine_for(url).dispose()


def test_rule_tags_are_replaced_and_manual_ones_kept(store, catalog):
    rows = pa.record_batch(
        [pa.array([1, 2, 3]), pa.array(["a@example.com", "b@example.com", None]), pa.array(["x", "y", "z"])],
        schema=CUSTOMERS,
    )
    land_table(
        catalog, ("crm", "crm__customer"), CUSTOMERS, [rows], mode="full_refresh", cursor_field=None, run_id="r1"
    )
    with store.begin() as session:
        session.add(Project(id="prj_1", tenant_id="default", name="CRM", namespace="crm"))
        session.flush()
        email = Classification(
            id=new_id("classification"),
            project_id="prj_1",
            name="E-mail",
            sensitivity="confidential",
            rules=[{"detector": "email"}],
            assignments=[{"table": "crm__customer", "column": "notes"}],
        )
        session.add(email)
        session.flush()
        sync_assignments(session, email)
        # A stale rule tag from an earlier classification: replaced by this one.
        session.add(
            ColumnClassification(
                project_id="prj_1",
                table_name="crm__customer",
                column_name="id",
                classification_id=email.id,
                source="rule",
            )
        )

    (result,) = classify_tables(store, catalog, project_id="prj_1", namespace="crm", tables=["crm__customer"])

    assert [(m.column, m.detail) for m in result.matches] == [("email", "detector email: 2 of 2 sampled values")]
    with store() as session:
        tags = column_classifications(session, project_id="prj_1", table="crm__customer")
        stored = session.execute(select(ColumnClassification.column_name, ColumnClassification.source)).all()
    assert {column: [(t.name, t.sensitivity, t.source) for t in ts] for column, ts in tags.items()} == {
        "email": [("E-mail", "confidential", "rule")],
        "notes": [("E-mail", "confidential", "manual")],
    }
    assert sorted(stored) == [("email", "rule"), ("notes", "manual")]
    assert result.columns == tags
