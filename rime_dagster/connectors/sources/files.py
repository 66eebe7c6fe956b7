"""The `files` connector: CSV, Parquet and JSON-lines files in a server folder or the upload area.

Folder
    `config.path` (an absolute folder on the server) or, when it is None, the connector's upload
    area (`upload_dir`, filled by `POST .../connectors/{id}/files`; it may be empty or missing).

Tables
    * Every data file directly in the folder (not in sub-folders; names starting with `.` or `_`
      such as `_SUCCESS` are skipped) is one table named after its stem: known extensions are
      stripped (`orders.csv.gz` -> `orders`), the rest is lower-cased, runs of characters outside
      `[a-z0-9_]` become `_`, leading/trailing `_` are dropped, a name not starting with a letter
      gets a `t_` prefix and names are cut at 48 characters. Two files with the same name after
      this (`Orders.csv`, `orders.parquet`) are a SourceError naming both: no silent suffixes, so
      a table's name never depends on which other files happen to exist.
    * Files are never merged automatically (`orders_2024-01.csv`, `orders_2024-02.csv` are two
      tables). `config.tables` maps a table name to a glob relative to the folder (sub-folders and
      `**` allowed); such a table concatenates every matched file, in name order. Files matched by
      a glob are not offered again as their own table; unmatched files still are. A glob matching
      nothing is a SourceError (and a failed `test`). `tables` keys must already be valid names.
    * `format="auto"` picks the reader by extension: `.csv`, `.csv.gz`, `.parquet`, `.pq`,
      `.jsonl`, `.ndjson`, `.jsonl.gz`, `.ndjson.gz`; other files are ignored (or, when matched by
      a glob, an error). An explicit `format` reads every file of the folder (or glob) with that
      reader whatever its extension (`.txt`, `.tsv`, ...); `.gz` still means gzip.

Types (what `arrow_schema` reports and `read` yields; kept to what Iceberg v2 stores)
    bool, int32, int64, float32, float64, decimal128(p<=38), string, binary, date32, time64(us),
    timestamp(us) and timestamp(us, UTC), list and struct of those. Conversions: int8/int16/uint8/
    uint16 -> int32, uint32 -> int64, uint64 -> decimal128(20, 0) (lossless), float16 -> float32,
    decimals wider than 38 digits -> string, large/view string and binary variants -> string/
    binary, fixed-size binary -> binary, date64 -> date32, time32/time64(ns) -> time64(us),
    timestamps of any unit -> us (sub-microsecond digits truncated), any time zone -> UTC (same
    instant), durations -> int64 microseconds, dictionary -> its value type, extension types ->
    their storage type, maps -> list<struct<key, value>>, all-null (null-typed) columns -> string.
    Field and schema metadata (pandas metadata, `PARQUET:field_id`) is dropped. Unions and
    intervals are a SourceError. Columns are nullable unless a Parquet file says otherwise.

Schema inference (no file is read fully)
    * CSV: Arrow's inference over the first INFER_SAMPLE_BYTES (4 MiB) of each file: integers ->
      int64, decimals -> float64 (not decimal128: exact up to 15 significant digits, cast
      downstream if needed), ISO dates -> date32, times -> time64(us), ISO timestamps ->
      timestamp(us), with `Z`/offsets -> timestamp(us, UTC). Values matching `csv.null_values`
      are nulls (quoted ones too, since quote-everything writers are common). Files are read as
      UTF-8 with quoted fields allowed to contain newlines. A column that is empty in the sample
      is read as string (or as the type another file of the table gives it). `read` passes the
      inferred type of every column explicitly, so every block is parsed with the same schema;
      LIMITATION: a value after the sample that does not fit (`abc` in an int64 column) is a
      SourceError naming the file and the column; it is not re-typed on the fly. Memory: Arrow's
      streaming reader reads up to 32 blocks (READ_BLOCK_BYTES each) ahead, plus the batch being
      built; a row longer than a block makes the file be re-read with 8x bigger blocks (rows
      already yielded are skipped), up to 128 MiB.
    * JSON-lines: Arrow's inference over the same sample (one JSON object per line), then top-level
      string columns whose sampled values are all ISO dates/timestamps become date32 /
      timestamp(us[, UTC]) (parsed from the strings at read time); nested strings stay as Arrow
      infers them (ISO strings there become naive timestamp[s], offsets applied). The file is
      read in READ_BLOCK_BYTES chunks cut at line ends, each parsed with the explicit schema, so
      memory is bounded by the chunk (or the longest line). LIMITATION: a key that is not in the sample, or a
      value of another JSON type (1.5 in an int64 field, a number in a field that was null
      throughout the sample) is a SourceError naming the file, the line range and, when it can be
      pinned down, the field.
    * Parquet: the file's own schema (exact), read with `iter_batches`; memory is bounded by the
      file's row-group size.
    * A glob table unifies the files' schemas with `pa.unify_schemas(promote_options="permissive")`
      (int32+int64 -> int64, int64+float64 -> float64, decimal widening, null+T -> T, struct field
      union); a column missing from some files is nullable and null for their rows. Incompatible
      types (int64 vs string, naive vs zoned timestamps, ...) are a SourceError naming the file.

Row estimates (`discover`)
    Parquet: exact (file metadata). CSV / JSON-lines: exact when the whole file fits in the
    inference sample, else file size / average row size in the sample; gzip files larger than the
    sample have no estimate (None). A glob table sums its files (None if any is unknown).

Access: with an `access` (every connector the API or a run builds), the folder and each file are read
only where the deployment lets connectors read (`_access.SourceAccess`: RIME_CONNECTOR_PATH_ROOTS, the
upload area, never RIME_HOME or /proc). Symlinks are resolved and checked every time the folder is
listed, so a file swapped for a link after validation is refused when read, and the resolved path is
what gets opened. Messages name files relative to the folder, so the upload area's location on the
server is never shown.

Incremental reads keep rows with `cursor_field > cursor_value` (the value cast to the column
type; rows with a null cursor are skipped). Batches hold at most `batch_rows` rows and are filled
up to it (re-chunked across source blocks and files).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq
from pydantic import ConfigDict, Field, field_validator, model_validator

from rime_dagster.connectors.sources.base import (
    DEFAULT_BATCH_ROWS,
    AccessRefused,
    ColumnInfo,
    Source,
    SourceError,
    StrictModel,
    TableInfo,
    TestResult,
    register,
)

if TYPE_CHECKING:
    from rime_dagster.connectors.sources._access import SourceAccess

INFER_SAMPLE_BYTES = 4 << 20  # bytes of each CSV / JSON-lines file used for type inference
READ_BLOCK_BYTES = 256 << 10  # CSV / JSON-lines bytes decoded at a time by `read`
_CSV_SAMPLE_SLACK = 1 << 20  # bytes past the sample so its last row is cut cleanly
_CSV_MAX_BLOCK = 128 << 20  # CSV blocks grow (x8) up to this for very long rows
MAX_TABLE_NAME = 48

_FORMAT_BY_SUFFIX = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_GZIP_OK = {"csv", "jsonl"}
_NOT_IDENT = re.compile(r"[^a-z0-9_]+")
_TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_CSV_COLUMN_ERROR = re.compile(r"In CSV column #(\d+): (.*)", re.S)
_DATE_RE = r"^\d{4}-\d{2}-\d{2}$"
_TIME_OF_DAY = r"[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?"
_TS_NAIVE_RE = rf"^\d{{4}}-\d{{2}}-\d{{2}}({_TIME_OF_DAY})?$"  # a bare date is midnight
_TS_ZONED_RE = rf"^\d{{4}}-\d{{2}}-\d{{2}}{_TIME_OF_DAY}(Z|[+-]\d{{2}}:?\d{{2}})$"
_NO_FILES = "No CSV, Parquet or JSON-lines files found in {where}."


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
            if not _TABLE_NAME.match(name) or len(name) > MAX_TABLE_NAME:
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


@dataclass(frozen=True)
class _File:
    path: Path
    rel: str  # shown in messages: relative to the folder, never the upload area's server path
    fmt: str  # csv | parquet | jsonl


@dataclass
class _FileSchema:
    file: _File
    schema: pa.Schema  # normalised types; null-typed columns kept as null so other files can type them
    rows: int | None  # exact or estimated row count (None: unknown)
    as_string: frozenset[str] = frozenset()  # JSON-lines columns parsed as strings, cast afterwards
    parse_types: dict[str, pa.DataType] | None = None  # CSV: the types Arrow inferred, passed back when reading


@dataclass
class _Plan:
    table: str
    files: list[_FileSchema]
    schema: pa.Schema  # what arrow_schema reports and every batch has
    counted: bool  # row counts/estimates were computed

    @property
    def rows(self) -> int | None:
        counts = [f.rows for f in self.files]
        return None if None in counts else sum(c for c in counts if c is not None)


# --- names -----------------------------------------------------------------------------------


def table_name(stem: str) -> str:
    """`Orders 2024-01` -> `orders_2024_01`; `2024` -> `t_2024`."""
    ident = re.sub(r"_+", "_", _NOT_IDENT.sub("_", stem.lower())).strip("_")
    if not ident or not ident[0].isalpha():
        ident = f"t_{ident}".rstrip("_")
    return ident[:MAX_TABLE_NAME].rstrip("_")


def _split_name(name: str, forced: str | None) -> tuple[str, str | None]:
    """(stem, format) of a file name; format None when auto-detection doesn't know the extension."""
    gz = name.lower().endswith(".gz")
    base = name[:-3] if gz else name
    suffix = PurePosixPath(base).suffix
    stem = base[: -len(suffix)] if suffix else base
    if forced:
        return stem or base, forced
    fmt = _FORMAT_BY_SUFFIX.get(suffix.lower())
    if gz and fmt not in _GZIP_OK:
        fmt = None
    return stem, fmt


def _hidden(name: str) -> bool:
    return name.startswith((".", "_"))


# --- types -----------------------------------------------------------------------------------


def _normalize(t: pa.DataType, *, keep_null: bool, where: str) -> pa.DataType:
    """The Iceberg-storable Arrow type a source type lands as (see the module docstring)."""
    types = pa.types
    if types.is_null(t):
        return t if keep_null else pa.string()
    if isinstance(t, pa.ExtensionType):
        return _normalize(t.storage_type, keep_null=keep_null, where=where)
    if types.is_dictionary(t):
        return _normalize(t.value_type, keep_null=keep_null, where=where)
    if types.is_boolean(t):
        return t
    if types.is_integer(t):
        if types.is_unsigned_integer(t):
            return {8: pa.int32(), 16: pa.int32(), 32: pa.int64()}.get(t.bit_width, pa.decimal128(20, 0))
        return pa.int64() if t.bit_width == 64 else pa.int32()
    if types.is_floating(t):
        return pa.float32() if t.bit_width <= 32 else pa.float64()
    if types.is_decimal(t):
        return pa.decimal128(t.precision, t.scale) if t.precision <= 38 else pa.string()
    if types.is_string(t) or types.is_large_string(t) or types.is_string_view(t):
        return pa.string()
    if types.is_binary(t) or types.is_large_binary(t) or types.is_binary_view(t) or types.is_fixed_size_binary(t):
        return pa.binary()
    if types.is_date(t):
        return pa.date32()
    if types.is_time(t):
        return pa.time64("us")
    if types.is_timestamp(t):
        return pa.timestamp("us", "UTC" if t.tz else None)
    if types.is_duration(t):
        return pa.int64()
    if types.is_map(t):
        entry = pa.struct([pa.field("key", t.key_type, nullable=False), t.item_field])
        return pa.list_(pa.field("entries", _normalize(entry, keep_null=keep_null, where=where), nullable=False))
    if _is_list_like(t):
        item = t.value_field
        return pa.list_(item.with_type(_normalize(item.type, keep_null=keep_null, where=where)).remove_metadata())
    if types.is_struct(t):
        return pa.struct(
            [f.with_type(_normalize(f.type, keep_null=keep_null, where=where)).remove_metadata() for f in t]
        )
    raise SourceError(f"{where} has type {t}, which can't be stored in Iceberg.")


def _is_list_like(t: pa.DataType) -> bool:
    types = pa.types
    return (
        types.is_list(t)
        or types.is_large_list(t)
        or types.is_fixed_size_list(t)
        or types.is_list_view(t)
        or types.is_large_list_view(t)
    )


def _normalize_schema(schema: pa.Schema, *, keep_null: bool, rel: str) -> pa.Schema:
    names = schema.names
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SourceError(f"File '{rel}' has duplicate column names: {', '.join(dupes)}.")
    return pa.schema(
        [
            pa.field(f.name, _normalize(f.type, keep_null=keep_null, where=f"Column '{f.name}' of '{rel}'"), f.nullable)
            for f in schema
        ]
    )


def _conform(arr: pa.Array, target: pa.DataType) -> pa.Array:
    """`arr` converted to `target` (a `_normalize` result): lossless except timestamp truncation to us."""
    src = arr.type
    if src == target:
        return arr
    if isinstance(src, pa.ExtensionType):
        return _conform(arr.storage, target)
    if pa.types.is_dictionary(src):
        return _conform(arr.dictionary_decode(), target)
    if pa.types.is_null(src):
        return pa.nulls(len(arr), target)
    mask = arr.is_null() if arr.null_count else None
    if pa.types.is_struct(target) and pa.types.is_struct(src):
        children = dict(zip([f.name for f in src], arr.flatten(), strict=True))
        arrays = [
            _conform(children[f.name], f.type) if f.name in children else pa.nulls(len(arr), f.type) for f in target
        ]
        return pa.StructArray.from_arrays(arrays, fields=list(target), mask=mask)
    if pa.types.is_list(target) and (_is_list_like(src) or pa.types.is_map(src)):
        if not (pa.types.is_list(src) or pa.types.is_map(src)):
            arr = pc.cast(arr, pa.list_(src.value_field))
        values = _conform(arr.values, target.value_type)
        return pa.ListArray.from_arrays(arr.offsets, values, type=target, mask=mask)
    if pa.types.is_duration(src):
        arr = pc.cast(arr, options=pc.CastOptions(target_type=pa.duration("us"), allow_time_truncate=True))
    return pc.cast(arr, options=pc.CastOptions(target_type=target, allow_time_truncate=True))


def _conform_batch(batch: pa.RecordBatch, schema: pa.Schema, rel: str) -> pa.RecordBatch:
    columns = dict(zip(batch.schema.names, batch.columns, strict=True))
    arrays = []
    for f in schema:
        col = columns.get(f.name)
        if col is None:
            arrays.append(pa.nulls(batch.num_rows, f.type))
            continue
        try:
            arrays.append(_conform(col, f.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
            raise SourceError(f"File '{rel}': column '{f.name}' can't be converted to {f.type}: {e}") from None
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _unify(files: list[_FileSchema], table: str) -> pa.Schema:
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
                _normalize(f.type, keep_null=False, where=f"Column '{f.name}' of table '{table}'"),
                f.nullable or f.name not in everywhere,
            )
            for f in unified
        ]
    )


def _parsable(target: pa.DataType, fmt: str) -> pa.DataType:
    """Type to ask a text parser for when a column had no values in a file's sample."""
    types = pa.types
    if fmt == "csv":
        return target if not types.is_nested(target) else pa.string()
    # JSON parses dates, times and timestamps from strings only via a cast afterwards.
    if types.is_date(target) or types.is_time(target) or types.is_timestamp(target):
        return pa.string()
    return target


# --- readers ---------------------------------------------------------------------------------


def _csv_options(cfg: CsvOptions, *, block_size: int, use_threads: bool, column_types: dict | None = None):
    return (
        pa_csv.ReadOptions(block_size=block_size, use_threads=use_threads, autogenerate_column_names=not cfg.header),
        pa_csv.ParseOptions(delimiter=cfg.delimiter, quote_char=cfg.quote_char, newlines_in_values=True),
        pa_csv.ConvertOptions(
            null_values=list(cfg.null_values), strings_can_be_null=True, column_types=column_types or {}
        ),
    )


def _csv_error(e: Exception, rel: str, names: list[str], types: dict[str, pa.DataType] | None = None) -> SourceError:
    msg = str(e)
    m = _CSV_COLUMN_ERROR.search(msg)
    if m and int(m.group(1)) < len(names):
        name = names[int(m.group(1))]
        expected = f" ({types[name]}, inferred from the first {INFER_SAMPLE_BYTES >> 20} MiB)" if types else ""
        return SourceError(
            f"File '{rel}': column '{name}' has a value that doesn't fit its type{expected}: {m.group(2)}"
        )
    return SourceError(f"File '{rel}': {msg}")


def _line_chunks(file: _File, block_bytes: int, *, first_only: bool = False) -> Iterator[tuple[bytes, int, bool]]:
    """(chunk ending at a line end, 1-based number of its first line, whether it is the whole file*).

    *only reported with `first_only`, which stops after the first chunk.
    """
    line = 1
    with pa.input_stream(str(file.path)) as stream:  # decompresses `.gz`
        carry = b""
        while True:
            data = stream.read(block_bytes)
            if not data:
                if carry.strip():
                    yield carry, line, True
                return
            buf = carry + data
            cut = buf.rfind(b"\n")
            if cut < 0:  # a line longer than the block: keep reading
                carry = buf
                continue
            chunk, carry = buf[: cut + 1], buf[cut + 1 :]
            if first_only:
                more = bool(carry.strip()) or bool(stream.read(1))
                yield chunk, line, not more
                return
            yield chunk, line, False
            line += chunk.count(b"\n")


def _parse_json(chunk: bytes, schema: pa.Schema | None) -> pa.Table:
    parse = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error" if schema else "infer")
    read = pa_json.ReadOptions(block_size=len(chunk) + 1, use_threads=False)
    return pa_json.read_json(pa.BufferReader(chunk), read_options=read, parse_options=parse)


def _json_diagnose(chunk: bytes, first_line: int, schema: pa.Schema) -> str:
    """Best effort: the first line whose keys aren't in `schema` (Arrow doesn't name them)."""
    import json

    def unknown(obj: Any, t: pa.DataType, prefix: str) -> str | None:
        if not isinstance(obj, dict) or not pa.types.is_struct(t):
            return None
        known = {f.name: f.type for f in t}
        for k, v in obj.items():
            if k not in known:
                return prefix + k
            hit = unknown(v, known[k], f"{prefix}{k}.")
            if hit:
                return hit
        return None

    for i, raw in enumerate(chunk.split(b"\n")):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError:
            return f"line {first_line + i} is not valid JSON"
        if not isinstance(obj, dict):
            return f"line {first_line + i} is not a JSON object"
        key = unknown(obj, pa.struct(list(schema)), "")
        if key:
            return f"line {first_line + i} has field '{key}', which is not in the sampled rows"
    return ""


# --- the source ------------------------------------------------------------------------------


@register
class FilesSource(Source):
    """CSV, Parquet and JSON-lines files from a server folder or the connector's upload area."""

    connector_type = "files"
    config_model = FilesConfig
    path_fields = ("path",)

    config: FilesConfig

    def __init__(
        self,
        config: StrictModel,
        credentials: StrictModel | None,
        *,
        upload_dir: Path | None = None,
        access: SourceAccess | None = None,
    ):
        super().__init__(config, credentials, upload_dir=upload_dir, access=access)
        self._plans: dict[str, _Plan] = {}

    def check_access(self) -> None:
        super().check_access()
        try:
            self._tables()  # every file of the folder, with its links resolved
        except AccessRefused:
            raise
        except SourceError:
            pass  # not readable yet, or not a valid set of tables: the test and the reads say so

    # folder and tables

    def _where(self) -> str:
        return f"'{self.config.path}'" if self.config.path else "the upload area"

    def _folder(self) -> Path | None:
        """The folder to read; None when the upload area doesn't exist yet. SourceError if unusable."""
        if self.config.path is None:
            if self.upload_dir is None or not Path(self.upload_dir).is_dir():
                return None
            return Path(self.upload_dir)
        folder = self._confined(self.config.path, field="path")
        if not folder.exists():
            raise SourceError(f"Folder '{self.config.path}' does not exist.")
        if not folder.is_dir():
            raise SourceError(f"'{self.config.path}' is not a folder.")
        if not os.access(folder, os.R_OK | os.X_OK):
            raise SourceError(f"Folder '{self.config.path}' is not readable by the platform (permission denied).")
        return folder

    def _tables(self) -> dict[str, list[_File]]:
        folder = self._folder()
        if folder is None:
            return {}
        forced = None if self.config.format == "auto" else self.config.format
        try:
            entries = sorted(e.name for e in os.scandir(folder) if not _hidden(e.name) and e.is_file())
        except OSError as e:
            raise SourceError(f"Can't list {self._where()}: {e.strerror or e}.") from None

        tables: dict[str, list[_File]] = {}
        claimed: set[str] = set()
        for name, pattern in (self.config.tables or {}).items():
            files = []
            for p in sorted(folder.glob(pattern)):
                rel = p.relative_to(folder).as_posix()
                if not p.is_file() or any(_hidden(part) for part in PurePosixPath(rel).parts):
                    continue
                fmt = _split_name(p.name, forced)[1]
                if fmt is None:
                    raise SourceError(
                        f"Table '{name}': can't tell the format of '{rel}' from its extension; set `format`."
                    )
                files.append(_File(self._confined(p, field="path", shown=f"File '{rel}'"), rel, fmt))
                claimed.add(rel)
            if not files:
                raise SourceError(f"Table '{name}': glob '{pattern}' matches no files in {self._where()}.")
            tables[name] = files

        auto: dict[str, list[_File]] = {}
        for entry in entries:
            if entry in claimed:
                continue
            stem, fmt = _split_name(entry, forced)
            if fmt is not None:
                path = self._confined(folder / entry, field="path", shown=f"File '{entry}'")
                auto.setdefault(table_name(stem), []).append(_File(path, entry, fmt))
        clashes = [
            f"{n} ({', '.join([f.rel for f in files] + ([f'`tables` entry {n!r}'] if n in tables else []))})"
            for n, files in auto.items()
            if len(files) > 1 or n in tables
        ]
        if clashes:
            raise SourceError(
                "Several files map to the same table name: "
                + "; ".join(clashes)
                + ". Rename them, or map them explicitly with `tables`."
            )
        tables.update(auto)
        return dict(sorted(tables.items()))

    # inference

    def _infer(self, file: _File, *, count_rows: bool) -> _FileSchema | None:
        """The file's schema from a sample; None for an empty file."""
        try:
            if file.fmt == "parquet":
                return self._infer_parquet(file)
            if file.fmt == "csv":
                return self._infer_csv(file, count_rows=count_rows)
            return self._infer_jsonl(file, count_rows=count_rows)
        except OSError as e:
            raise SourceError(f"Can't read '{file.rel}': {e.strerror or e}.") from None

    def _infer_parquet(self, file: _File) -> _FileSchema:
        try:
            pf = pq.ParquetFile(file.path)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise SourceError(f"File '{file.rel}' is not a readable Parquet file: {e}") from None
        schema = _normalize_schema(pf.schema_arrow, keep_null=True, rel=file.rel)
        return _FileSchema(file, schema, pf.metadata.num_rows)

    def _infer_csv(self, file: _File, *, count_rows: bool) -> _FileSchema | None:
        # Arrow's streaming CSV reader reads up to 32 blocks ahead in the background: hand it a
        # bounded prefix, not the file. Its first block (INFER_SAMPLE_BYTES, cut at a row end by
        # Arrow's quote-aware chunker because more bytes follow) is what the types come from.
        with pa.input_stream(str(file.path)) as stream:
            sample = stream.read(INFER_SAMPLE_BYTES + _CSV_SAMPLE_SLACK)
        if not sample.strip():
            return None
        whole = len(sample) < INFER_SAMPLE_BYTES + _CSV_SAMPLE_SLACK
        ro, po, co = _csv_options(self.config.csv, block_size=INFER_SAMPLE_BYTES, use_threads=False)
        try:
            reader = pa_csv.open_csv(pa.BufferReader(sample), read_options=ro, parse_options=po, convert_options=co)
        except pa.ArrowInvalid as e:
            if "Empty CSV file" in str(e):
                return None
            raise _csv_error(e, file.rel, []) from None
        with reader:
            schema = _normalize_schema(reader.schema, keep_null=True, rel=file.rel)
            parse_types = {f.name: f.type for f in reader.schema}
            rows = self._sample_rows(file, reader, whole) if count_rows else None
        return _FileSchema(file, schema, rows, parse_types=parse_types)

    @staticmethod
    def _sample_rows(file: _File, reader: pa_csv.CSVStreamingReader, whole: bool) -> int | None:
        counted = 0  # a header and no rows: the reader has no batch at all
        try:
            counted = reader.read_next_batch().num_rows
            if whole:  # the sample is the file: count it (a few MiB at most)
                counted += sum(b.num_rows for b in reader)
                return counted
        except StopIteration:
            return counted if whole else 0
        except pa.ArrowInvalid:
            return None  # the read itself reports the bad row
        if file.path.name.lower().endswith(".gz"):
            return None
        return max(counted, round(file.path.stat().st_size * counted / INFER_SAMPLE_BYTES))

    def _infer_jsonl(self, file: _File, *, count_rows: bool) -> _FileSchema | None:
        sample = next(_line_chunks(file, INFER_SAMPLE_BYTES, first_only=True), None)
        if sample is None:
            return None
        chunk, _, whole = sample
        try:
            table = _parse_json(chunk, None)
        except pa.ArrowInvalid as e:
            raise SourceError(f"File '{file.rel}': can't infer a schema from its first rows: {e}") from None
        if table.num_columns == 0:
            raise SourceError(f"File '{file.rel}': the sampled rows have no fields.")
        raw = table.schema
        textual = [f.name for f in raw if pa.types.is_string(f.type) or pa.types.is_timestamp(f.type)]
        fields = {f.name: f for f in raw}
        if textual:
            # Arrow types `2024-01-01T10:00:00Z` as a naive timestamp[s] and `...:00.5` as a string:
            # re-read those columns as text and pick the type from the values.
            as_text = pa.schema([f.with_type(pa.string()) if f.name in textual else f for f in raw])
            strings = _parse_json(chunk, as_text)
            for name in textual:
                values = strings.column(name).drop_null()
                fields[name] = fields[name].with_type(_temporal_type(values))
        schema = _normalize_schema(pa.schema(list(fields.values())), keep_null=True, rel=file.rel)
        rows = None
        if count_rows:
            if whole:
                rows = table.num_rows
            elif not file.path.name.lower().endswith(".gz"):
                rows = max(table.num_rows, round(file.path.stat().st_size * table.num_rows / len(chunk)))
        return _FileSchema(file, schema, rows, frozenset(textual))

    def _plan(self, table: str, *, count_rows: bool = False, deadline: float | None = None) -> _Plan:
        plan = self._plans.get(table)
        if plan is not None and (plan.counted or not count_rows):
            return plan
        tables = self._tables()
        if table not in tables:
            known = ", ".join(tables) or "none"
            raise SourceError(f"Table '{table}' not found in {self._where()} (tables: {known}).")
        schemas = []
        for file in tables[table]:
            if deadline is not None and time.monotonic() > deadline:
                raise SourceError("Timed out while reading the files' schemas.")
            fs = self._infer(file, count_rows=count_rows)
            if fs is not None:
                schemas.append(fs)
        if not schemas:
            names = ", ".join(f"'{f.rel}'" for f in tables[table])
            raise SourceError(f"Table '{table}': {names} {'is' if len(tables[table]) == 1 else 'are'} empty.")
        plan = _Plan(table, schemas, _unify(schemas, table), count_rows)
        self._plans[table] = plan
        return plan

    # the interface

    def test(self, timeout: float) -> TestResult:
        deadline = time.monotonic() + timeout
        try:
            tables = self._tables()
            if not tables:
                return TestResult(False, _NO_FILES.format(where=self._where()))
            unreadable = []
            for files in tables.values():
                for f in files:
                    if time.monotonic() > deadline:
                        return TestResult(False, f"Timed out after {timeout:g}s while checking the files.")
                    try:
                        with open(f.path, "rb") as fh:
                            fh.read(1)
                    except OSError:
                        unreadable.append(f.rel)
            if unreadable:
                shown = ", ".join(unreadable[:10]) + (", ..." if len(unreadable) > 10 else "")
                return TestResult(False, f"Can't read {len(unreadable)} file(s): {shown}.")
            n = len(tables)
            return TestResult(True, f"Connection successful. {n} {'table' if n == 1 else 'tables'} accessible.")
        except SourceError as e:
            return TestResult(False, str(e))
        except Exception as e:  # never raises; file sources hold no secrets to leak
            return TestResult(False, f"Unexpected error: {type(e).__name__}: {e}")

    def discover(self, timeout: float) -> list[TableInfo]:
        deadline = time.monotonic() + timeout
        out = []
        for name in self._tables():
            plan = self._plan(name, count_rows=True, deadline=deadline)
            columns = [ColumnInfo(f.name, str(f.type), f.nullable) for f in plan.schema]
            out.append(TableInfo(name=name, columns=columns, primary_key=[], row_estimate=plan.rows))
        return out

    def arrow_schema(self, table: str) -> pa.Schema:
        return self._plan(table).schema

    def read(
        self,
        table: str,
        *,
        cursor_field: str | None = None,
        cursor_value: Any = None,
        batch_rows: int = DEFAULT_BATCH_ROWS,
    ) -> Iterator[pa.RecordBatch]:
        if batch_rows < 1:
            raise ValueError("batch_rows must be positive")
        plan = self._plan(table)
        cursor = None
        if cursor_field is not None and cursor_value is not None:
            if cursor_field not in plan.schema.names:
                raise SourceError(f"Cursor column '{cursor_field}' is not a column of table '{table}'.")
            cursor = (cursor_field, _cursor_scalar(cursor_value, plan.schema.field(cursor_field).type, cursor_field))
        return _rebatch(self._batches(plan, cursor, batch_rows), batch_rows)

    def _batches(self, plan: _Plan, cursor: tuple[str, pa.Scalar] | None, batch_rows: int) -> Iterator[pa.RecordBatch]:
        for fs in plan.files:
            try:
                if fs.file.fmt == "parquet":
                    raw = self._read_parquet(fs, batch_rows)
                elif fs.file.fmt == "csv":
                    raw = self._read_csv(fs, plan.schema)
                else:
                    raw = self._read_jsonl(fs, plan.schema)
                for batch in raw:
                    batch = _conform_batch(batch, plan.schema, fs.file.rel)
                    if cursor is not None:
                        try:
                            batch = batch.filter(pc.greater(batch.column(cursor[0]), cursor[1]))
                        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                            raise SourceError(f"Can't compare cursor column '{cursor[0]}': {e}") from None
                    if batch.num_rows:
                        yield batch
            except OSError as e:
                raise SourceError(f"Can't read '{fs.file.rel}': {e.strerror or e}.") from None

    def _read_parquet(self, fs: _FileSchema, batch_rows: int) -> Iterator[pa.RecordBatch]:
        try:
            pf = pq.ParquetFile(fs.file.path)
            yield from pf.iter_batches(batch_size=batch_rows)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise SourceError(f"File '{fs.file.rel}': {e}") from None

    def _read_csv(self, fs: _FileSchema, target: pa.Schema) -> Iterator[pa.RecordBatch]:
        # Every column's type is explicit: the reader never re-infers, so each block has the
        # schema reported by arrow_schema (after _conform) or the read fails loudly.
        assert fs.parse_types is not None
        types = {
            name: (_parsable(target.field(name).type, "csv") if pa.types.is_null(t) else t)
            for name, t in fs.parse_types.items()
        }
        names = list(types)
        block, done = READ_BLOCK_BYTES, 0
        while True:
            # Memory: Arrow reads up to 32 blocks ahead, so ~32 x block plus the batch in hand.
            ro, po, co = _csv_options(self.config.csv, block_size=block, use_threads=True, column_types=types)
            seen = 0
            try:
                with pa_csv.open_csv(str(fs.file.path), read_options=ro, parse_options=po, convert_options=co) as rd:
                    if rd.schema.names != names:
                        raise SourceError(f"File '{fs.file.rel}' changed while being read (its header differs).")
                    for batch in rd:
                        if seen + batch.num_rows > done:  # skip what an earlier attempt already yielded
                            yield batch.slice(max(0, done - seen))
                            done = seen + batch.num_rows
                        seen += batch.num_rows
                return
            except pa.ArrowInvalid as e:
                if "straddl" not in str(e):
                    raise _csv_error(e, fs.file.rel, names, types) from None
                if block >= _CSV_MAX_BLOCK:
                    raise SourceError(
                        f"File '{fs.file.rel}' has a row longer than {_CSV_MAX_BLOCK >> 20} MiB "
                        "(or an unbalanced quote)."
                    ) from None
                block *= 8  # a row longer than the block: re-read with bigger blocks, skipping rows yielded

    def _read_jsonl(self, fs: _FileSchema, target: pa.Schema) -> Iterator[pa.RecordBatch]:
        fields = []
        for f in fs.schema:
            if f.name in fs.as_string:
                fields.append(f.with_type(pa.string()))
            elif _has_null(f.type):
                fields.append(f.with_type(_parsable(target.field(f.name).type, "jsonl")))
            else:
                fields.append(f)
        schema = pa.schema(fields)
        for chunk, line, _ in _line_chunks(fs.file, READ_BLOCK_BYTES):
            try:
                table = _parse_json(chunk, schema)
            except pa.ArrowInvalid as e:
                last = line + chunk.count(b"\n") - 1
                hint = _json_diagnose(chunk, line, schema)
                detail = f"{hint} ({e})" if hint else str(e)
                raise SourceError(
                    f"File '{fs.file.rel}', lines {line}-{last}: {detail}. Only the first "
                    f"{INFER_SAMPLE_BYTES >> 20} MiB of a file are sampled to infer its schema."
                ) from None
            yield from table.to_batches()


def _has_null(t: pa.DataType) -> bool:
    if pa.types.is_null(t):
        return True
    if pa.types.is_struct(t):
        return any(_has_null(f.type) for f in t)
    if _is_list_like(t):
        return _has_null(t.value_type)
    return False


def _temporal_type(values: pa.ChunkedArray) -> pa.DataType:
    """date32 / timestamp(us[, UTC]) when every sampled value is ISO, else string."""
    if len(values) == 0:
        return pa.null()

    def every(pattern: str, t: pa.DataType) -> bool:
        if not pc.all(pc.match_substring_regex(values, pattern)).as_py():
            return False
        try:  # the shape fits; the values must parse too (`2024-13-99` doesn't)
            pc.cast(values, t)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return False
        return True

    for pattern, t in (
        (_DATE_RE, pa.date32()),
        (_TS_ZONED_RE, pa.timestamp("us", "UTC")),
        (_TS_NAIVE_RE, pa.timestamp("us")),
    ):
        if every(pattern, t):
            return t
    return pa.string()


def _cursor_scalar(value: Any, t: pa.DataType, column: str) -> pa.Scalar:
    try:
        if isinstance(value, pa.Scalar):
            return value.cast(t)
        try:
            return pa.scalar(value, type=t)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
            scalar = pa.scalar(value)
            if pa.types.is_timestamp(t) and t.tz and pa.types.is_string(scalar.type):
                try:
                    return scalar.cast(t)
                except pa.ArrowInvalid:  # no offset in the text: it is UTC
                    return scalar.cast(pa.timestamp("us")).cast(t)
            return scalar.cast(t)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError) as e:
        raise SourceError(f"Cursor value {value!r} can't be compared with column '{column}' ({t}): {e}") from None


def _rebatch(batches: Iterable[pa.RecordBatch], size: int) -> Iterator[pa.RecordBatch]:
    """Batches of exactly `size` rows (the last one may be shorter)."""
    pending: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        while batch.num_rows:
            take = min(size - rows, batch.num_rows)
            pending.append(batch.slice(0, take))
            rows += take
            batch = batch.slice(take)
            if rows == size:
                yield pending[0] if len(pending) == 1 else pa.concat_batches(pending)
                pending, rows = [], 0
    if rows:
        yield pending[0] if len(pending) == 1 else pa.concat_batches(pending)
