"""The `files` connector: CSV, Parquet and JSON-lines files in a server folder or the upload area.

Folder: `config.path` (an absolute folder on the server) or, when it is None, the connector's upload
area (`upload_dir`, filled by `POST .../connectors/{id}/files`; it may be empty or missing).

One module per concern:
    folder.py          which files make which tables (names, globs, formats), confined to where
                       connectors may read
    csv_reader.py,     one reader per format: a file's schema from a sample (no file is read fully)
    jsonl_reader.py,   and its rows as streamed batches
    parquet_reader.py
    schema.py          a table's schema from its files' schemas; row estimates
    source.py          the source: connection test, discovery, and the read's hooks

Types: what `arrow_schema` reports and `read` yields follows `connectors.landing_types` (the rules every
source shares); field and schema metadata (pandas metadata, `PARQUET:field_id`) is dropped, unions and
intervals are a SourceError, and columns are nullable unless a Parquet file says otherwise.

Incremental reads keep rows with `cursor_field > cursor_value` (the value cast to the column type; rows
with a null cursor are skipped). Batches hold at most `batch_rows` rows and are filled up to it
(re-chunked across source blocks and files): both by the read every source shares (`sources.base`).
"""

from rime_dagster.connectors.sources.files.config import CsvOptions, FilesConfig
from rime_dagster.connectors.sources.files.folder import table_name
from rime_dagster.connectors.sources.files.schema import INFER_SAMPLE_BYTES, READ_BLOCK_BYTES
from rime_dagster.connectors.sources.files.source import FilesSource

__all__ = ["INFER_SAMPLE_BYTES", "READ_BLOCK_BYTES", "CsvOptions", "FilesConfig", "FilesSource", "table_name"]
