"""Upload areas (landing zones) of `files` connectors: safe names, size limits, atomic writes."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy.orm import Session, sessionmaker

from api_shim.errors import PayloadTooLarge, Unprocessable, ValidationFailed
from api_shim.schemas.connectors import UploadedFile, UploadedFiles
from api_shim.services import connectors
from api_shim.services.projects import get_project
from rime_dagster.settings import Settings
from rime_dagster.store.crypto import CredentialCipher
from rime_dagster.store.models import Connector, Project

ALLOWED_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq", ".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class StoredFile:
    name: str
    size_bytes: int
    uploaded_at: datetime


def check_name(filename: str | None, index: int) -> str:
    name = filename or ""
    field = f"files.{index}"
    if "/" in name or "\\" in name or not _SAFE_NAME.match(name) or ".." in name:
        raise ValidationFailed.field(field, "File names may use letters, digits, '.', '_' and '-' only.")
    if not name.lower().endswith(ALLOWED_SUFFIXES):
        raise ValidationFailed.field(field, f"Unsupported file type; use one of {', '.join(ALLOWED_SUFFIXES)}.")
    return name


def file_size(handle: BinaryIO) -> int:
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    handle.seek(0)
    return size


def check_sizes(sizes: list[tuple[str, int]], limit: int) -> None:
    too_big = [name for name, size in sizes if size > limit]
    if too_big:
        raise PayloadTooLarge(f"Files over the {limit // (1024 * 1024)} MB limit: {', '.join(too_big)}.")


def store(directory: Path, name: str, handle: BinaryIO) -> StoredFile:
    """Writes to a temp file in the same folder and renames it: readers never see half a file."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".upload-")
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := handle.read(CHUNK):
                out.write(chunk)
        os.replace(tmp, directory / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return describe(directory / name)


def describe(path: Path) -> StoredFile:
    stat = path.stat()
    return StoredFile(name=path.name, size_bytes=stat.st_size, uploaded_at=datetime.fromtimestamp(stat.st_mtime, UTC))


def list_files(directory: Path) -> list[StoredFile]:
    if not directory.is_dir():
        return []
    return [describe(p) for p in sorted(directory.iterdir()) if p.is_file() and not p.name.startswith(".")]


def save_uploads(
    sessions: sessionmaker[Session],
    cipher: CredentialCipher,
    settings: Settings,
    files: Sequence[Any],
    *,
    tenant_id: str,
    project_id: str,
    connector_id: str,
) -> UploadedFiles:
    """Stores `files` (each with `filename` and a binary `file`) in a `files` connector's upload area.

    All or nothing: every name and size is checked before any file is written. A connector that syncs whatever
    it discovers then stores the tables it now finds.
    """
    with sessions() as session:
        project = get_project(session, project_id, tenant_id=tenant_id)
        connector = connectors.get_connector(session, project, connector_id)
    if connector.connector_type != "files":
        raise Unprocessable("Only `files` connectors have an upload area.")
    names = [check_name(f.filename, i) for i, f in enumerate(files)]
    if len(set(names)) != len(names):
        raise ValidationFailed.field("files", "File names must be unique within one upload.")
    check_sizes([(n, file_size(f.file)) for n, f in zip(names, files, strict=True)], settings.upload_max_file_bytes)
    directory = connectors.upload_dir(settings, connector)
    stored = [store(directory, n, f.file) for n, f in zip(names, files, strict=True)]
    if connector.selected_tables is None:
        with sessions.begin() as session:
            fresh = session.get(Connector, connector.id)
            if fresh is not None:  # not deleted meanwhile
                connectors.refresh_known_tables(fresh, cipher, settings, timeout=connectors.CONNECTION_TIMEOUT_SECONDS)
    return UploadedFiles(files=[UploadedFile.of(s) for s in stored])


def uploaded_files(session: Session, project: Project, connector_id: str, *, settings: Settings) -> UploadedFiles:
    connector = connectors.get_connector(session, project, connector_id)
    return UploadedFiles(files=[UploadedFile.of(s) for s in list_files(connectors.upload_dir(settings, connector))])
