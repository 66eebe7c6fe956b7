from __future__ import annotations

import pytest


@pytest.fixture
def catalog(tmp_path):
    """A pyiceberg SQL catalog (SQLite) with its warehouse under tmp_path."""
    from pyiceberg.catalog.sql import SqlCatalog

    return SqlCatalog("test", uri=f"sqlite:///{tmp_path}/cat.db", warehouse=f"file://{tmp_path}/wh")
