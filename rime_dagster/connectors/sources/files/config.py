"""The `files` connector's config: the folder, the format, CSV options and globbed tables."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from rime_dagster.connectors.sources.base import StrictModel
from rime_dagster.connectors.sources.files.folder import MAX_TABLE_NAME, TABLE_NAME


class CsvOptions(StrictModel):
    # Whitespace is meaningful here (a tab delimiter, a " " null marker): no stripping.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    delimiter: str = ","
    header: bool = True
    quote_char: str = '"'
    null_values: list[str] = Field(default_factory=lambda: ["", "NULL", "null"])

    @field_validator("delimiter", "quote_char")
    @classmethod
    def _one_char(cls, value: str) -> str:
        if len(value) != 1 or value in "\r\n":
            raise ValueError("must be exactly one character (not a line break)")
        return value

    @model_validator(mode="after")
    def _distinct(self) -> CsvOptions:
        if self.delimiter == self.quote_char:
            raise ValueError("delimiter and quote_char must differ")
        return self


class FilesConfig(StrictModel):
    path: str | None = None
    format: Literal["auto", "csv", "parquet", "jsonl"] = "auto"
    csv: CsvOptions = Field(default_factory=CsvOptions)
    tables: dict[str, str] | None = None

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if not value:
            return None  # a blank form field means "use the upload area"
        if not PurePosixPath(value).is_absolute():
            raise ValueError("must be an absolute folder path on the server (or empty for the upload area)")
        return value

    @field_validator("tables")
    @classmethod
    def _globs(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        cleaned = {}
        for name, pattern in value.items():
            if not TABLE_NAME.match(name) or len(name) > MAX_TABLE_NAME:
                raise ValueError(
                    f"table name {name!r} must be lower-case letters, digits and _, start with a letter, "
                    f"at most {MAX_TABLE_NAME} characters"
                )
            pattern = pattern.strip()
            parts = PurePosixPath(pattern).parts
            if not pattern or PurePosixPath(pattern).is_absolute() or ".." in parts:
                raise ValueError(f"glob for {name!r} must be relative to the folder, without '..'")
            cleaned[name] = pattern
        return cleaned
