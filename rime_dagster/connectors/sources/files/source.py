"""The `files` source: its tables (folder.py), read by one reader per format, through the shared read."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property

import pyarrow as pa
from typing_extensions import override

from rime_dagster.connectors.landing_types import conform_batch
from rime_dagster.connectors.sources.base import (
    AccessRefused,
    Action,
    ColumnInfo,
    Cursor,
    Scan,
    Source,
    SourceError,
    TableInfo,
    register,
)
from rime_dagster.connectors.sources.files import folder
from rime_dagster.connectors.sources.files.config import FilesConfig
from rime_dagster.connectors.sources.files.csv_reader import CsvReader
from rime_dagster.connectors.sources.files.folder import DataFile
from rime_dagster.connectors.sources.files.jsonl_reader import JsonLinesReader
from rime_dagster.connectors.sources.files.parquet_reader import ParquetReader
from rime_dagster.connectors.sources.files.schema import FileReader, FileSchema, Plan, unify


@register
class FilesSource(Source):
    """CSV, Parquet and JSON-lines files from a server folder or the connector's upload area."""

    connector_type = "files"
    config_model = FilesConfig
    path_fields = ("path",)
    driver_errors = (OSError,)

    config: FilesConfig

    @cached_property
    def _plans(self) -> dict[str, Plan]:
        """Each table's files and schema, once planned: inference reads samples of every file."""
        return {}

    @cached_property
    def _readers(self) -> dict[str, FileReader]:
        return {"csv": CsvReader(self.config.csv), "jsonl": JsonLinesReader(), "parquet": ParquetReader()}

    def check_access(self) -> None:
        super().check_access()
        try:
            self._tables()  # every file of the folder, with its links resolved
        except AccessRefused:
            raise
        except SourceError:
            pass  # not readable yet, or not a valid set of tables: the test and the reads say so

    @override
    def _translate(self, exc: Exception, action: Action, table: str | None) -> SourceError:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        return SourceError(f"Can't read {folder.where(self.config)}: {reason}.")

    def _tables(self) -> dict[str, list[DataFile]]:
        path = folder.open_folder(self.config, self.upload_dir, self._confined)
        return {} if path is None else folder.find_tables(path, self.config, self._confined)

    def _plan(self, table: str, *, count_rows: bool = False, deadline: float | None = None) -> Plan:
        plan = self._plans.get(table)
        if plan is not None and (plan.counted or not count_rows):
            return plan
        tables = self._tables()
        if table not in tables:
            known = ", ".join(tables) or "none"
            raise SourceError(f"Table '{table}' not found in {folder.where(self.config)} (tables: {known}).")
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
        plan = Plan(table, schemas, unify(schemas, table), count_rows)
        self._plans[table] = plan
        return plan

    def _infer(self, file: DataFile, *, count_rows: bool) -> FileSchema | None:
        """The file's schema from a sample; None for an empty file."""
        try:
            return self._readers[file.fmt].infer(file, count_rows=count_rows)
        except OSError as e:
            raise _unreadable(file, e) from None

    # -- Source hooks -----------------------------------------------------------------------------------------

    def _count_tables(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        tables = self._tables()
        if not tables:
            raise SourceError(folder.NO_FILES.format(where=folder.where(self.config)))
        unreadable = []
        for files in tables.values():
            for f in files:
                if time.monotonic() > deadline:
                    raise SourceError(f"Timed out after {timeout:g}s while checking the files.")
                try:
                    with open(f.path, "rb") as fh:
                        fh.read(1)
                except OSError:
                    unreadable.append(f.rel)
        if unreadable:
            shown = ", ".join(unreadable[:10]) + (", ..." if len(unreadable) > 10 else "")
            raise SourceError(f"Can't read {len(unreadable)} file(s): {shown}.")
        return len(tables)

    def _discover(self, timeout: float) -> list[TableInfo]:
        deadline = time.monotonic() + timeout
        out = []
        for name in self._tables():
            plan = self._plan(name, count_rows=True, deadline=deadline)
            columns = [ColumnInfo(f.name, str(f.type), f.nullable) for f in plan.schema]
            out.append(TableInfo(name=name, columns=columns, primary_key=[], row_estimate=plan.rows))
        return out

    def _arrow_schema(self, table: str) -> pa.Schema:
        return self._plan(table).schema

    def _early_schema(self, table: str) -> pa.Schema:
        return self._plan(table).schema

    @override
    @contextmanager
    def _scan(self, table: str, cursor: Cursor | None, batch_rows: int) -> Iterator[Scan]:
        plan = self._plan(table)
        yield Scan(plan.schema, self._batches(plan, batch_rows))

    def _batches(self, plan: Plan, batch_rows: int) -> Iterator[pa.RecordBatch]:
        for fs in plan.files:
            try:
                for batch in self._readers[fs.file.fmt].batches(fs, plan.schema, batch_rows):
                    yield conform_batch(batch, plan.schema, where=f"File '{fs.file.rel}'")
            except OSError as e:
                raise _unreadable(fs.file, e) from None


def _unreadable(file: DataFile, e: OSError) -> SourceError:
    return SourceError(f"Can't read '{file.rel}': {e.strerror or e}.")
