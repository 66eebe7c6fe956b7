"""Which Arrow types land in Iceberg, how every other type converts to one, and which ones order a cursor.

One set of rules, used by every source (`sources.base` holds whatever a source reports to them; the files source
infers with them; DuckDB-backed sources cast in SQL to the same targets, see `sources._duckdb`) and by landing
(the types a cursor column may have).

Landing types: what a source's `arrow_schema` reports and its batches hold, each stored by Iceberg v2 as it is.
    bool, int32, int64, float32, float64, decimal128(p <= 38), string, binary, date32, time64(us),
    timestamp(us), timestamp(us, UTC), and list and struct of those.

Conversions (`landing_type`; values follow with `conform`):
    int8/int16/uint8/uint16 -> int32, uint32 -> int64, uint64 -> decimal128(20, 0) (lossless), float16 -> float32,
    decimals wider than 38 digits -> string, large/view string and binary variants -> string/binary, fixed-size
    binary -> binary, date64 -> date32, time32/time64(ns) -> time64(us), timestamps of any unit -> us
    (sub-microsecond digits truncated), any time zone -> UTC (the same instant), durations -> int64 microseconds,
    dictionaries -> their value type, extension types -> their storage type, maps -> list<struct<key, value>>,
    all-null (null-typed) columns -> string. Field metadata (pandas metadata, `PARQUET:field_id`) is dropped.
    Unions and intervals have no landing type: `LandingTypeError`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, time
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc

# A cursor's value as Python holds it: what a column of an orderable type reads as (a datetime is a date).
CursorValue = int | float | Decimal | str | bytes | date | time

# Types whose order a cursor can follow (`cursor > stored value`). Landing takes the large string and binary
# variants too, which pyiceberg stores; booleans, nested types and the rest have no usable order.
_ORDERABLE: tuple[Callable[[pa.DataType], bool], ...] = (
    pa.types.is_integer,
    pa.types.is_floating,
    pa.types.is_decimal,
    pa.types.is_string,
    pa.types.is_large_string,
    pa.types.is_binary,
    pa.types.is_large_binary,
    pa.types.is_date,
    pa.types.is_time,
    pa.types.is_timestamp,
)
_LEAVES = frozenset(
    [
        pa.bool_(),
        pa.int32(),
        pa.int64(),
        pa.float32(),
        pa.float64(),
        pa.string(),
        pa.binary(),
        pa.date32(),
        pa.time64("us"),
        pa.timestamp("us"),
        pa.timestamp("us", "UTC"),
    ]
)


class LandingTypeError(ValueError):
    """A type these rules refuse, or a value that does not convert to its landing type; the message is for users."""


def is_landing_type(t: pa.DataType) -> bool:
    """Whether Iceberg stores `t` as it is (see the module docstring)."""
    if pa.types.is_list(t):
        return is_landing_type(t.value_type)
    if pa.types.is_struct(t):
        return all(is_landing_type(field.type) for field in t)
    if pa.types.is_decimal128(t):
        return t.precision <= 38
    return t in _LEAVES


def is_orderable(t: pa.DataType) -> bool:
    """Whether a column of type `t` can be an incremental cursor."""
    return any(check(t) for check in _ORDERABLE)


def is_list_like(t: pa.DataType) -> bool:
    types = pa.types
    return (
        types.is_list(t)
        or types.is_large_list(t)
        or types.is_fixed_size_list(t)
        or types.is_list_view(t)
        or types.is_large_list_view(t)
    )


def landing_type(t: pa.DataType, *, keep_null: bool = False, where: str = "A column") -> pa.DataType:
    """The landing type `t` converts to; `keep_null` leaves null-typed columns null (a file inferred before
    another file types them). LandingTypeError, saying `where` the type is, when it has none."""
    if pa.types.is_null(t):
        return t if keep_null else pa.string()
    if isinstance(t, pa.ExtensionType):
        return landing_type(t.storage_type, keep_null=keep_null, where=where)
    if pa.types.is_dictionary(t):
        return landing_type(t.value_type, keep_null=keep_null, where=where)
    converted = _numeric_landing_type(t)
    if converted is None:
        converted = _text_or_temporal_landing_type(t)
    if converted is None:
        converted = _nested_landing_type(t, keep_null=keep_null, where=where)
    if converted is None:
        raise LandingTypeError(f"{where} has type {t}, which can't be stored in Iceberg.")
    return converted


def _numeric_landing_type(t: pa.DataType) -> pa.DataType | None:
    """Booleans, integers, floats and decimals; None for any other type."""
    types = pa.types
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
    return None


def _text_or_temporal_landing_type(t: pa.DataType) -> pa.DataType | None:
    """Strings, binaries, dates, times, timestamps and durations; None for any other type."""
    types = pa.types
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
    return None


def _nested_landing_type(t: pa.DataType, *, keep_null: bool, where: str) -> pa.DataType | None:
    """Maps, lists and structs, their items converted; None for any other type."""
    if pa.types.is_map(t):
        entry = pa.struct([pa.field("key", t.key_type, nullable=False), t.item_field])
        return pa.list_(pa.field("entries", landing_type(entry, keep_null=keep_null, where=where), nullable=False))
    if is_list_like(t):
        item = t.value_field
        return pa.list_(item.with_type(landing_type(item.type, keep_null=keep_null, where=where)).remove_metadata())
    if pa.types.is_struct(t):
        return pa.struct(
            [f.with_type(landing_type(f.type, keep_null=keep_null, where=where)).remove_metadata() for f in t]
        )
    return None


def landing_schema(schema: pa.Schema, *, where: str, keep_null: bool = False) -> pa.Schema:
    """`schema` in landing types, without metadata; `where` names the table or file in messages."""
    return pa.schema(
        [
            pa.field(
                f.name, landing_type(f.type, keep_null=keep_null, where=f"Column '{f.name}' of {where}"), f.nullable
            )
            for f in schema
        ]
    )


def conform(arr: pa.Array, target: pa.DataType) -> pa.Array:
    """`arr` converted to `target` (its `landing_type`): lossless but for timestamps truncated to microseconds."""
    src = arr.type
    if src == target:
        return arr
    if isinstance(src, pa.ExtensionType):
        return conform(arr.storage, target)
    if pa.types.is_dictionary(src):
        return conform(arr.dictionary_decode(), target)
    if pa.types.is_null(src):
        return pa.nulls(len(arr), target)
    mask = arr.is_null() if arr.null_count else None
    if pa.types.is_struct(target) and pa.types.is_struct(src):
        children = dict(zip([f.name for f in src], arr.flatten(), strict=True))
        arrays = [
            conform(children[f.name], f.type) if f.name in children else pa.nulls(len(arr), f.type) for f in target
        ]
        return pa.StructArray.from_arrays(arrays, fields=list(target), mask=mask)
    if pa.types.is_list(target) and (is_list_like(src) or pa.types.is_map(src)):
        if not (pa.types.is_list(src) or pa.types.is_map(src)):
            arr = pc.cast(arr, pa.list_(src.value_field))
        values = conform(arr.values, target.value_type)
        return pa.ListArray.from_arrays(arr.offsets, values, type=target, mask=mask)
    if pa.types.is_duration(src):
        arr = pc.cast(arr, options=pc.CastOptions(target_type=pa.duration("us"), allow_time_truncate=True))
    return pc.cast(arr, options=pc.CastOptions(target_type=target, allow_time_truncate=True))


def conform_batch(batch: pa.RecordBatch, schema: pa.Schema, *, where: str) -> pa.RecordBatch:
    """`batch` with exactly `schema` (landing types): columns converted, a column the batch lacks all null.
    LandingTypeError, naming `where` and the column, for a value that does not convert."""
    columns = dict(zip(batch.schema.names, batch.columns, strict=True))
    arrays = []
    for f in schema:
        column = columns.get(f.name)
        if column is None:
            arrays.append(pa.nulls(batch.num_rows, f.type))
            continue
        try:
            arrays.append(conform(column, f.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
            raise LandingTypeError(f"{where}: column '{f.name}' can't be converted to {f.type}: {e}") from None
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
