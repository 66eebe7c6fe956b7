"""Connectors: source plug-ins (sources/), landing into Iceberg (landing.py), and Dagster assets.

`sources` and `landing` import no Dagster, so the API shim uses them for test/schema too.
"""
