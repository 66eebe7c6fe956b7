"""A table's schema from its files' schemas, and its row count.

Each reader infers one file's schema from a sample (no file is read fully). A glob table unifies its
files' schemas with `pa.unify_schemas(promote_options="permissive")` (int32+int64 -> int64,
int64+float64 -> float64, decimal widening, null+T -> T, struct field union); a column missing from
some files is nullable and null for their rows. Incompatible types (int64 vs string, naive vs zoned
timestamps, ...) are a SourceError naming the file.

Row estimates (`discover`): Parquet: exact (file metadata). CSV / JSON-lines: exact when the whole
file fits in the inference sample, else file size / average row size in the sample; gzip files
larger than the sample have no estimate (None). A glob table sums its files (None if any is unknown).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa

from rime_dagster.connectors.landing_types import landing_schema, landing_type
from rime_dagster.connectors.sources.base import SourceError
from rime_dagster.connectors.sources.files.folder import DataFile

INFER_SAMPLE_BYTES = 4 << 20  # bytes of each CSV / JSON-lines file used for type inference
READ_BLOCK_BYTES = 256 << 10  # CSV / JSON-lines bytes decoded at a time by `read`


@dataclass
class FileSchema:
    file: DataFile
    schema: pa.Schema  # landing types; null-typed columns kept as null so other files can type them
    rows: int | None  # exact or estimated row count (None: unknown)
    as_string: frozenset[str] = frozenset()  # JSON-lines columns parsed as strings, cast afterwards
    parse_types: dict[str, pa.DataType] | None = None  # CSV: the types Arrow inferred, passed back when reading


@dataclass
class Plan:
    table: str
    files: list[FileSchema]
    schema: pa.Schema  # what arrow_schema reports and every batch has
    counted: bool  # row counts/estimates were computed

    @property
    def rows(self) -> int | None:
        counts = [f.rows for f in self.files]
        return None if None in counts else sum(c for c in counts if c is not None)


class FileReader(Protocol):
    """One file format: a file's schema from a sample, then its rows."""

    def infer(self, file: DataFile, *, count_rows: bool) -> FileSchema | None:
        """The file's schema (and, with `count_rows`, its row count or estimate); None for an empty file."""
        ...

    def batches(self, fs: FileSchema, target: pa.Schema, batch_rows: int) -> Iterator[pa.RecordBatch]:
        """The file's rows, typed as `fs` says (the source conforms them to the table's `target` schema);
        `batch_rows` is a hint (the shared read fills batches up to it)."""
        ...


def file_schema(schema: pa.Schema, rel: str) -> pa.Schema:
    """A file's schema in landing types, null-typed columns kept; SourceError for duplicate column names."""
    names = schema.names
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SourceError(f"File '{rel}' has duplicate column names: {', '.join(dupes)}.")
    return landing_schema(schema, where=f"'{rel}'", keep_null=True)


def unify(files: list[FileSchema], table: str) -> pa.Schema:
    """The table's schema: its files' schemas unified (see the module docstring)."""
    unified = files[0].schema
    for fs in files[1:]:
        try:
            unified = pa.unify_schemas([unified, fs.schema], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
            raise SourceError(
                f"File '{fs.file.rel}' doesn't match the schema of the other files of table '{table}': {e}"
            ) from None
    everywhere = set.intersection(*(set(fs.schema.names) for fs in files))
    return pa.schema(
        [
            pa.field(
                f.name,
                landing_type(f.type, where=f"Column '{f.name}' of table '{table}'"),
                f.nullable or f.name not in everywhere,
            )
            for f in unified
        ]
    )


def estimate_rows(file: DataFile, sampled_rows: int, sampled_bytes: int) -> int | None:
    """A text file's rows from a sample of `sampled_bytes` holding `sampled_rows`: None for gzip."""
    if file.path.name.lower().endswith(".gz"):
        return None
    return max(sampled_rows, round(file.path.stat().st_size * sampled_rows / sampled_bytes))
