"""The read path serves tables on this host's file system only: an object-store warehouse (no DuckDB httpfs
extension here) gets a clear refusal, which the API answers as a 422, never a DuckDB error surfacing as a 500."""

from __future__ import annotations

import pytest

from api_shim.errors import Unprocessable
from api_shim.services.data_reads import _mapped_errors
from rime_dagster.governance.reads import ReadFailed, UnsupportedStorage, metadata_path


def test_local_metadata_locations_become_paths():
    assert metadata_path("file:///srv/rime/warehouse/ns/t/metadata/00001.metadata.json") == (
        "/srv/rime/warehouse/ns/t/metadata/00001.metadata.json"
    )
    assert metadata_path("/srv/w/ns/t/metadata/1.json") == "/srv/w/ns/t/metadata/1.json"


@pytest.mark.parametrize("location", ["s3://bucket/ns/t/metadata/1.json", "gs://b/t/1.json", "abfss://c@a/t/1.json"])
def test_object_store_locations_are_refused_clearly(location):
    with pytest.raises(UnsupportedStorage, match="need a local warehouse") as refused:
        metadata_path(location)
    assert isinstance(refused.value, ReadFailed)
    with pytest.raises(Unprocessable, match="cannot be read here") as answered, _mapped_errors():
        metadata_path(location)
    assert answered.value.details is None  # the deployment's storage, not a field of the request
