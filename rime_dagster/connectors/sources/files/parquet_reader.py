"""Parquet files: the file's own schema (exact), read with `iter_batches`; memory is bounded by the file's
row-group size."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from typing_extensions import override

from rime_dagster.connectors.sources.base import SourceError
from rime_dagster.connectors.sources.files.folder import DataFile
from rime_dagster.connectors.sources.files.schema import FileReader, FileSchema, file_schema


class ParquetReader(FileReader):
    @override
    def infer(self, file: DataFile, *, count_rows: bool) -> FileSchema:
        try:
            pf = pq.ParquetFile(file.path)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise SourceError(f"File '{file.rel}' is not a readable Parquet file: {e}") from None
        return FileSchema(file, file_schema(pf.schema_arrow, file.rel), pf.metadata.num_rows)

    @override
    def batches(self, fs: FileSchema, target: pa.Schema, batch_rows: int) -> Iterator[pa.RecordBatch]:
        try:
            pf = pq.ParquetFile(fs.file.path)
            yield from pf.iter_batches(batch_size=batch_rows)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise SourceError(f"File '{fs.file.rel}': {e}") from None
