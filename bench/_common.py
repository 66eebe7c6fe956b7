"""Helpers shared by the benchmark scripts (run as `python bench/<name>.py` from the repo root)."""

from __future__ import annotations

import os
import platform
from importlib import metadata


def installed_versions(*dists: str) -> str:
    """`Python 3.11.7; duckdb 1.4.4; ...; 2 CPUs` for the report header."""

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    parts = [f"Python {platform.python_version()}", *(f"{d} {version(d)}" for d in dists), f"{os.cpu_count()} CPUs"]
    return "; ".join(parts)
