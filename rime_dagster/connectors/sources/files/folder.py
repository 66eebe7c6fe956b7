"""Which files of the folder make which tables, each path confined to where connectors may read.

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

Access: with an `access` (every connector the API or a run builds), the folder and each file are read
only where the deployment lets connectors read (`_access.SourceAccess`: RIME_CONNECTOR_PATH_ROOTS, the
upload area, never RIME_HOME or /proc). Symlinks are resolved and checked every time the folder is
listed, so a file swapped for a link after validation is refused when read, and the resolved path is
what gets opened. Messages name files relative to the folder, so the upload area's location on the
server is never shown.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from rime_dagster.connectors.sources.base import SourceError

if TYPE_CHECKING:
    from rime_dagster.connectors.sources.files.config import FilesConfig

MAX_TABLE_NAME = 48
TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
NO_FILES = "No CSV, Parquet or JSON-lines files found in {where}."
_FORMAT_BY_SUFFIX = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_GZIP_OK = {"csv", "jsonl"}
_NOT_IDENT = re.compile(r"[^a-z0-9_]+")

# `Source._confined`: the path to open, its links resolved, or AccessRefused.
Confine = Callable[..., Path]


@dataclass(frozen=True)
class DataFile:
    path: Path
    rel: str  # shown in messages: relative to the folder, never the upload area's server path
    fmt: str  # csv | parquet | jsonl


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


def where(config: FilesConfig) -> str:
    """The folder, as messages name it."""
    return f"'{config.path}'" if config.path else "the upload area"


def open_folder(config: FilesConfig, upload_dir: Path | None, confine: Confine) -> Path | None:
    """The folder to read; None when the upload area doesn't exist yet. SourceError if unusable."""
    if config.path is None:
        if upload_dir is None or not Path(upload_dir).is_dir():
            return None
        return Path(upload_dir)
    folder = confine(config.path, field="path")
    if not folder.exists():
        raise SourceError(f"Folder '{config.path}' does not exist.")
    if not folder.is_dir():
        raise SourceError(f"'{config.path}' is not a folder.")
    if not os.access(folder, os.R_OK | os.X_OK):
        raise SourceError(f"Folder '{config.path}' is not readable by the platform (permission denied).")
    return folder


def find_tables(folder: Path, config: FilesConfig, confine: Confine) -> dict[str, list[DataFile]]:
    """Every table of `folder` with its files, by name (see the module docstring)."""
    forced = None if config.format == "auto" else config.format
    try:
        entries = sorted(e.name for e in os.scandir(folder) if not _hidden(e.name) and e.is_file())
    except OSError as e:
        raise SourceError(f"Can't list {where(config)}: {e.strerror or e}.") from None

    tables = {
        name: _glob_table(folder, name, pattern, forced, config, confine)
        for name, pattern in (config.tables or {}).items()
    }
    claimed = {file.rel for files in tables.values() for file in files}
    auto = _file_tables(folder, [entry for entry in entries if entry not in claimed], forced, confine)
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


def _glob_table(
    folder: Path, name: str, pattern: str, forced: str | None, config: FilesConfig, confine: Confine
) -> list[DataFile]:
    """The files of the `tables` entry `name`: what `pattern` matches, in name order; SourceError for none."""
    files = []
    for p in sorted(folder.glob(pattern)):
        rel = p.relative_to(folder).as_posix()
        if not p.is_file() or any(_hidden(part) for part in PurePosixPath(rel).parts):
            continue
        fmt = _split_name(p.name, forced)[1]
        if fmt is None:
            raise SourceError(f"Table '{name}': can't tell the format of '{rel}' from its extension; set `format`.")
        files.append(DataFile(confine(p, field="path", shown=f"File '{rel}'"), rel, fmt))
    if not files:
        raise SourceError(f"Table '{name}': glob '{pattern}' matches no files in {where(config)}.")
    return files


def _file_tables(folder: Path, entries: list[str], forced: str | None, confine: Confine) -> dict[str, list[DataFile]]:
    """The data files among `entries` by the table name of their stem (two files of one name: a clash)."""
    tables: dict[str, list[DataFile]] = {}
    for entry in entries:
        stem, fmt = _split_name(entry, forced)
        if fmt is not None:
            path = confine(folder / entry, field="path", shown=f"File '{entry}'")
            tables.setdefault(table_name(stem), []).append(DataFile(path, entry, fmt))
    return tables
