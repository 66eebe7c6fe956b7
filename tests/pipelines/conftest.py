from __future__ import annotations

import pytest

from api_shim.settings import get_settings


@pytest.fixture
def home(tmp_path, monkeypatch):
    """RIME_HOME under tmp_path for code that reads the settings (returns tmp_path)."""
    monkeypatch.setenv("RIME_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()
