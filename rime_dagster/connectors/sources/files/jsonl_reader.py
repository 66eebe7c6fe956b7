"""JSON-lines files: Arrow's inference over a sample, then chunks cut at line ends, each parsed with it.

Arrow infers the types over the first INFER_SAMPLE_BYTES of each file (one JSON object per line), then
top-level string columns whose sampled values are all ISO dates/timestamps become date32 /
timestamp(us[, UTC]) (parsed from the strings at read time); nested strings stay as Arrow infers them
(ISO strings there become naive timestamp[s], offsets applied). The file is read in READ_BLOCK_BYTES
chunks cut at line ends, each parsed with the explicit schema, so memory is bounded by the chunk (or
the longest line). LIMITATION: a key that is not in the sample, or a value of another JSON type (1.5
in an int64 field, a number in a field that was null throughout the sample) is a SourceError naming
the file, the line range and, when it can be pinned down, the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
from typing_extensions import override

from rime_dagster.connectors.landing_types import is_list_like
from rime_dagster.connectors.sources.base import SourceError
from rime_dagster.connectors.sources.files.folder import DataFile
from rime_dagster.connectors.sources.files.schema import (
    INFER_SAMPLE_BYTES,
    READ_BLOCK_BYTES,
    FileReader,
    FileSchema,
    estimate_rows,
    file_schema,
)

_DATE_RE = r"^\d{4}-\d{2}-\d{2}$"
_TIME_OF_DAY = r"[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?"
_TS_NAIVE_RE = rf"^\d{{4}}-\d{{2}}-\d{{2}}({_TIME_OF_DAY})?$"  # a bare date is midnight
_TS_ZONED_RE = rf"^\d{{4}}-\d{{2}}-\d{{2}}{_TIME_OF_DAY}(Z|[+-]\d{{2}}:?\d{{2}})$"


class JsonLinesReader(FileReader):
    @override
    def infer(self, file: DataFile, *, count_rows: bool) -> FileSchema | None:
        sample = next(_line_chunks(file, INFER_SAMPLE_BYTES, first_only=True), None)
        if sample is None:
            return None
        chunk, _, whole = sample
        try:
            table = _parse(chunk, None)
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
            strings = _parse(chunk, as_text)
            for name in textual:
                values = strings.column(name).drop_null()
                fields[name] = fields[name].with_type(_temporal_type(values))
        schema = file_schema(pa.schema(list(fields.values())), file.rel)
        rows = None
        if count_rows:
            rows = table.num_rows if whole else estimate_rows(file, table.num_rows, len(chunk))
        return FileSchema(file, schema, rows, frozenset(textual))

    @override
    def batches(self, fs: FileSchema, target: pa.Schema, batch_rows: int) -> Iterator[pa.RecordBatch]:
        fields = []
        for f in fs.schema:
            if f.name in fs.as_string:
                fields.append(f.with_type(pa.string()))
            elif _has_null(f.type):
                fields.append(f.with_type(_parsable(target.field(f.name).type)))
            else:
                fields.append(f)
        schema = pa.schema(fields)
        for chunk, line, _ in _line_chunks(fs.file, READ_BLOCK_BYTES):
            try:
                table = _parse(chunk, schema)
            except pa.ArrowInvalid as e:
                last = line + chunk.count(b"\n") - 1
                hint = _diagnose(chunk, line, schema)
                detail = f"{hint} ({e})" if hint else str(e)
                raise SourceError(
                    f"File '{fs.file.rel}', lines {line}-{last}: {detail}. Only the first "
                    f"{INFER_SAMPLE_BYTES >> 20} MiB of a file are sampled to infer its schema."
                ) from None
            yield from table.to_batches()


def _line_chunks(file: DataFile, block_bytes: int, *, first_only: bool = False) -> Iterator[tuple[bytes, int, bool]]:
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


def _parse(chunk: bytes, schema: pa.Schema | None) -> pa.Table:
    parse = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error" if schema else "infer")
    read = pa_json.ReadOptions(block_size=len(chunk) + 1, use_threads=False)
    return pa_json.read_json(pa.BufferReader(chunk), read_options=read, parse_options=parse)


def _diagnose(chunk: bytes, first_line: int, schema: pa.Schema) -> str:
    """Best effort: the first line whose keys aren't in `schema` (Arrow doesn't name them)."""
    for i, raw in enumerate(chunk.split(b"\n")):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError:
            return f"line {first_line + i} is not valid JSON"
        if not isinstance(obj, dict):
            return f"line {first_line + i} is not a JSON object"
        key = _unknown_key(obj, pa.struct(list(schema)), "")
        if key:
            return f"line {first_line + i} has field '{key}', which is not in the sampled rows"
    return ""


def _unknown_key(obj: object, t: pa.DataType, prefix: str) -> str | None:
    """The first key of the JSON object `obj`, nested ones too (`prefix` their path), that the struct type `t`
    lacks; None when there is none."""
    if not isinstance(obj, dict) or not pa.types.is_struct(t):
        return None
    known = {f.name: f.type for f in t}
    for k, v in obj.items():
        if k not in known:
            return prefix + k
        hit = _unknown_key(v, known[k], f"{prefix}{k}.")
        if hit:
            return hit
    return None


def _has_null(t: pa.DataType) -> bool:
    if pa.types.is_null(t):
        return True
    if pa.types.is_struct(t):
        return any(_has_null(f.type) for f in t)
    if is_list_like(t):
        return _has_null(t.value_type)
    return False


def _parsable(target: pa.DataType) -> pa.DataType:
    """Type to parse a column as when it had no values in this file's sample: JSON parses dates, times and
    timestamps from strings only through a cast afterwards."""
    if pa.types.is_date(target) or pa.types.is_time(target) or pa.types.is_timestamp(target):
        return pa.string()
    return target


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
