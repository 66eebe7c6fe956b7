"""Bodies of the Governance group's classifications: sensitivity, rules, manual assignments, runs."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Discriminator, Field, Tag

from api_shim.pagination import Page
from api_shim.schemas.common import RequestModel, ResponseModel, Timestamp
from rime_dagster.governance.classify import MAX_PATTERN_CHARS, RULE_KINDS, compile_pattern

Sensitivity = Literal["public", "internal", "confidential", "restricted"]
Detector = Literal["email", "phone", "credit_card", "iban", "national_id"]
MAX_RULES = 20
MAX_ASSIGNMENTS = 500
MAX_RUN_TABLES = 100


def _valid_pattern(pattern: str) -> str:
    compile_pattern(pattern)  # its ValueError is the field's 400 detail
    return pattern


RegexText = Annotated[
    str,
    Field(min_length=1, max_length=MAX_PATTERN_CHARS, description="A regular expression (Python `re` syntax)."),
    AfterValidator(_valid_pattern),
]


class ColumnPatternRule(RequestModel):
    column_pattern: RegexText = Field(description="Found in a column's name, case-insensitively.")


class ValuePatternRule(RequestModel):
    value_pattern: RegexText = Field(
        description="Matches whole values: a column matches when at least 80% of its sampled values do."
    )


class DetectorRule(RequestModel):
    detector: Detector = Field(
        description="A built-in value detector: `email` (syntax only), `phone` (international, or US without a "
        "country code), `credit_card` (issuer prefix and Luhn check), `iban`, `national_id` (US SSN as "
        "AAA-GG-SSSS, FR NIR, DE IdNr, NL BSN, ES DNI, IT codice fiscale). A column matches when at least 80% "
        "of its sampled values do."
    )


def _rule_kind(value: object) -> str | None:
    """The rule's one kind, from its keys (None when it has none or several: the 400 below)."""
    keys = value.keys() if isinstance(value, dict) else vars(value).keys() if hasattr(value, "__dict__") else ()
    kinds = [kind for kind in RULE_KINDS if kind in keys]
    return kinds[0] if len(kinds) == 1 else None


ClassificationRule = Annotated[
    Annotated[ColumnPatternRule, Tag("column_pattern")]
    | Annotated[ValuePatternRule, Tag("value_pattern")]
    | Annotated[DetectorRule, Tag("detector")],
    Discriminator(
        _rule_kind,
        custom_error_type="invalid_rule",
        custom_error_message="A rule is exactly one of {column_pattern}, {value_pattern} or {detector}.",
    ),
]


class ColumnAssignment(RequestModel):
    table: str = Field(min_length=1, max_length=300, description="As GET .../tables lists it, e.g. `crm__customer`.")
    column: str = Field(min_length=1, max_length=300)


class ClassificationCreate(RequestModel):
    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)
    sensitivity: Sensitivity
    rules: list[ClassificationRule] = Field(default_factory=list, max_length=MAX_RULES)
    assignments: list[ColumnAssignment] = Field(
        default_factory=list,
        max_length=MAX_ASSIGNMENTS,
        description="Columns assigned by hand: tagged whatever the rules find, and kept across re-classification.",
    )


class ClassificationUpdate(RequestModel):
    """Each field given replaces the stored one (`rules` and `assignments` whole). New rules apply from the next
    classification of each table (after a sync, or POST .../classifications/run); assignments at once."""

    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)
    sensitivity: Sensitivity | None = None
    rules: list[ClassificationRule] | None = Field(None, max_length=MAX_RULES)
    assignments: list[ColumnAssignment] | None = Field(None, max_length=MAX_ASSIGNMENTS)


class ClassificationResponse(ResponseModel):
    id: str
    name: str
    description: str | None
    sensitivity: Sensitivity
    rules: list[ClassificationRule]
    assignments: list[ColumnAssignment]
    created_at: Timestamp
    updated_at: Timestamp


class ClassificationList(Page[ClassificationResponse]):
    pass


class ClassificationRunRequest(RequestModel):
    tables: list[Annotated[str, Field(min_length=1, max_length=300)]] | None = Field(
        None, min_length=1, max_length=MAX_RUN_TABLES, description="Default: every table of the project."
    )


class ColumnClassificationResponse(ResponseModel):
    """A classification of a column, as table schemas show it."""

    id: str
    name: str
    sensitivity: Sensitivity
    source: Literal["rule", "manual"]


class ClassifiedColumn(ResponseModel):
    column: str
    classifications: list[ColumnClassificationResponse]


class ClassifiedTable(ResponseModel):
    table: str
    columns: list[ClassifiedColumn] = Field(description="The table's classified columns, rules' and manual.")


class ClassificationRunResult(ResponseModel):
    tables: list[ClassifiedTable]
