"""CSV files: Arrow's inference over a sample of each file, then Arrow's streaming reader.

Arrow infers the types over the first INFER_SAMPLE_BYTES (4 MiB) of each file: integers -> int64,
decimals -> float64 (not decimal128: exact up to 15 significant digits, cast downstream if needed),
ISO dates -> date32, times -> time64(us), ISO timestamps -> timestamp(us), with `Z`/offsets ->
timestamp(us, UTC). Values matching `csv.null_values` are nulls (quoted ones too, since
quote-everything writers are common). Files are read as UTF-8 with quoted fields allowed to contain
newlines. A column that is empty in the sample is read as string (or as the type another file of the
table gives it). The read passes the inferred type of every column explicitly, so every block is
parsed with the same schema; LIMITATION: a value after the sample that does not fit (`abc` in an
int64 column) is a SourceError naming the file and the column; it is not re-typed on the fly.

Memory: Arrow's streaming reader reads up to 32 blocks (READ_BLOCK_BYTES each) ahead, plus the batch
being built; a row longer than a block makes the file be re-read with 8x bigger blocks (rows already
yielded are skipped), up to 128 MiB.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.csv as pa_csv
from typing_extensions import override

from rime_dagster.connectors.sources.base import SourceError
from rime_dagster.connectors.sources.files.config import CsvOptions
from rime_dagster.connectors.sources.files.folder import DataFile
from rime_dagster.connectors.sources.files.schema import (
    INFER_SAMPLE_BYTES,
    READ_BLOCK_BYTES,
    FileReader,
    FileSchema,
    estimate_rows,
    file_schema,
)

_SAMPLE_SLACK = 1 << 20  # bytes past the sample so its last row is cut cleanly
_MAX_BLOCK = 128 << 20  # blocks grow (x8) up to this for very long rows
_COLUMN_ERROR = re.compile(r"In CSV column #(\d+): (.*)", re.S)

_CsvArrowOptions = tuple[pa_csv.ReadOptions, pa_csv.ParseOptions, pa_csv.ConvertOptions]


class CsvReader(FileReader):
    def __init__(self, options: CsvOptions):
        self.options = options

    @override
    def infer(self, file: DataFile, *, count_rows: bool) -> FileSchema | None:
        # Arrow's streaming CSV reader reads up to 32 blocks ahead in the background: hand it a
        # bounded prefix, not the file. Its first block (INFER_SAMPLE_BYTES, cut at a row end by
        # Arrow's quote-aware chunker because more bytes follow) is what the types come from.
        with pa.input_stream(str(file.path)) as stream:
            sample = stream.read(INFER_SAMPLE_BYTES + _SAMPLE_SLACK)
        if not sample.strip():
            return None
        whole = len(sample) < INFER_SAMPLE_BYTES + _SAMPLE_SLACK
        ro, po, co = self._arrow_options(block_size=INFER_SAMPLE_BYTES, use_threads=False)
        try:
            reader = pa_csv.open_csv(pa.BufferReader(sample), read_options=ro, parse_options=po, convert_options=co)
        except pa.ArrowInvalid as e:
            if "Empty CSV file" in str(e):
                return None
            raise _error(e, file.rel, []) from None
        with reader:
            schema = file_schema(reader.schema, file.rel)
            parse_types = {f.name: f.type for f in reader.schema}
            rows = _sample_rows(file, reader, whole) if count_rows else None
        return FileSchema(file, schema, rows, parse_types=parse_types)

    @override
    def batches(self, fs: FileSchema, target: pa.Schema, batch_rows: int) -> Iterator[pa.RecordBatch]:
        # Every column's type is explicit: the reader never re-infers, so each block has the
        # schema reported by arrow_schema (once conformed) or the read fails loudly.
        assert fs.parse_types is not None
        types = {
            name: (_parsable(target.field(name).type) if pa.types.is_null(t) else t)
            for name, t in fs.parse_types.items()
        }
        names = list(types)
        block, done = READ_BLOCK_BYTES, 0
        while True:
            # Memory: Arrow reads up to 32 blocks ahead, so ~32 x block plus the batch in hand.
            ro, po, co = self._arrow_options(block_size=block, use_threads=True, column_types=types)
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
                    raise _error(e, fs.file.rel, names, types) from None
                if block >= _MAX_BLOCK:
                    raise SourceError(
                        f"File '{fs.file.rel}' has a row longer than {_MAX_BLOCK >> 20} MiB (or an unbalanced quote)."
                    ) from None
                block *= 8  # a row longer than the block: re-read with bigger blocks, skipping rows yielded

    def _arrow_options(
        self, *, block_size: int, use_threads: bool, column_types: dict[str, pa.DataType] | None = None
    ) -> _CsvArrowOptions:
        cfg = self.options
        return (
            pa_csv.ReadOptions(
                block_size=block_size, use_threads=use_threads, autogenerate_column_names=not cfg.header
            ),
            pa_csv.ParseOptions(delimiter=cfg.delimiter, quote_char=cfg.quote_char, newlines_in_values=True),
            pa_csv.ConvertOptions(
                null_values=list(cfg.null_values), strings_can_be_null=True, column_types=column_types or {}
            ),
        )


def _sample_rows(file: DataFile, reader: pa_csv.CSVStreamingReader, whole: bool) -> int | None:
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
    return estimate_rows(file, counted, INFER_SAMPLE_BYTES)


def _parsable(target: pa.DataType) -> pa.DataType:
    """Type to parse a column as when it had no values in this file's sample."""
    return target if not pa.types.is_nested(target) else pa.string()


def _error(e: Exception, rel: str, names: list[str], types: dict[str, pa.DataType] | None = None) -> SourceError:
    msg = str(e)
    m = _COLUMN_ERROR.search(msg)
    if m and int(m.group(1)) < len(names):
        name = names[int(m.group(1))]
        expected = f" ({types[name]}, inferred from the first {INFER_SAMPLE_BYTES >> 20} MiB)" if types else ""
        return SourceError(
            f"File '{rel}': column '{name}' has a value that doesn't fit its type{expected}: {m.group(2)}"
        )
    return SourceError(f"File '{rel}': {msg}")
