"""Reading a parsed dbt manifest: asset keys, connector sources, models with their tests, lineage.

Shared by the code location (asset keys via the translator) and the API (models, lineage), so the
two always agree. No Dagster imports.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rime_dagster.platform.naming import identifier

ASSET_TYPES = ("model", "seed", "snapshot")

_cache: dict[Path, tuple[float, int, dict[str, Any]]] = {}
_cache_lock = threading.Lock()


def load_manifest(path: Path) -> dict[str, Any]:
    """The manifest at `path`, cached per file (revisions are immutable, so mtime+size is enough)."""
    stat = path.stat()
    with _cache_lock:
        hit = _cache.get(path)
        if hit and hit[0] == stat.st_mtime and hit[1] == stat.st_size:
            return hit[2]
    manifest = json.loads(path.read_bytes())
    with _cache_lock:
        _cache[path] = (stat.st_mtime, stat.st_size, manifest)
    return manifest


@dataclass(frozen=True)
class ConnectorTable:
    """A connector's table as dbt sees it (a DuckDB view `<prefix>.<table>` over the Iceberg table)."""

    connector_id: str
    connector_name: str
    table_prefix: str
    table: str  # the source table name
    namespace: str

    @property
    def view_name(self) -> str:
        return identifier(self.table, fallback="t")

    @property
    def asset_key(self) -> list[str]:
        return [self.namespace, self.table_prefix, self.view_name]

    @property
    def node_id(self) -> str:
        return f"connector_table.{self.connector_id}.{self.table}"


class ConnectorIndex:
    """Finds the connector table behind a dbt source.

    A source table maps to a connector table when its meta says so (`meta: {rime: {connector:
    <name, id or table prefix>, table: <table>}}`, table defaulting to the source's identifier),
    or else when its schema is a connector's table prefix and its identifier one of its tables.
    """

    def __init__(self, tables: Iterable[ConnectorTable]):
        self.by_prefix: dict[tuple[str, str], ConnectorTable] = {}
        self.by_connector: dict[str, dict[str, ConnectorTable]] = {}
        for t in tables:
            self.by_prefix[(t.table_prefix, t.view_name)] = t
            for alias in (t.connector_id, t.connector_name, t.connector_name.lower(), t.table_prefix):
                self.by_connector.setdefault(alias, {})[t.view_name] = t

    def match(self, source: Mapping[str, Any]) -> ConnectorTable | None:
        table_name = source.get("identifier") or source.get("name") or ""
        meta = {**(source.get("source_meta") or {}), **(source.get("meta") or {})}
        rime = meta.get("rime")
        if not isinstance(rime, dict):
            rime = {}
        if rime.get("connector"):
            connector = str(rime["connector"])
            tables = self.by_connector.get(connector) or self.by_connector.get(connector.lower()) or {}
            return tables.get(identifier(str(rime.get("table") or table_name), fallback="t"))
        schema = (source.get("schema") or "").lower()
        return self.by_prefix.get((schema, identifier(table_name, fallback="t")))


def node_asset_key(namespace: str, slug: str, node: Mapping[str, Any]) -> list[str]:
    """[project namespace, dbt project slug, node name (+ _v<version>)] for models, seeds, snapshots."""
    name = node["name"] if node.get("version") is None else f"{node['name']}_v{node['version']}"
    return [namespace, slug, name]


def source_asset_key(namespace: str, slug: str, source: Mapping[str, Any], index: ConnectorIndex) -> list[str]:
    mapped = index.match(source)
    if mapped is not None:
        return mapped.asset_key
    return [namespace, slug, "source", source["source_name"], source["name"]]


def resources(manifest: Mapping[str, Any], types: Iterable[str] = ASSET_TYPES) -> list[dict[str, Any]]:
    wanted = set(types)
    return [node for node in manifest.get("nodes", {}).values() if node.get("resource_type") in wanted]


def tests_by_node(manifest: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Test nodes grouped by the node they test (dbt's `attached_node`, else every node they depend on)."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for test in resources(manifest, ("test",)):
        attached = test.get("attached_node")
        targets = [attached] if attached else list((test.get("depends_on") or {}).get("nodes", []))
        for target in targets:
            grouped.setdefault(target, []).append(test)
    return grouped


def materialization(node: Mapping[str, Any]) -> str:
    if node["resource_type"] in ("seed", "snapshot"):
        return node["resource_type"]
    return (node.get("config") or {}).get("materialized") or "view"


def publish_requested(node: Mapping[str, Any]) -> bool:
    """`config: meta: {rime: {publish: true}}` (or the same under `meta`) publishes a model to Iceberg."""
    for meta in ((node.get("config") or {}).get("meta") or {}, node.get("meta") or {}):
        rime = meta.get("rime")
        if isinstance(rime, dict) and rime.get("publish") is True:
            return True
    return False


def published_table_name(slug: str, node: Mapping[str, Any]) -> str:
    return f"{slug}__{identifier(node_asset_key('', slug, node)[2], fallback='m')}"


def test_summary(test: Mapping[str, Any]) -> dict[str, Any]:
    metadata = test.get("test_metadata") or {}
    return {
        "name": test["name"],
        "unique_id": test["unique_id"],
        "type": metadata.get("name") or "singular",
        "column": test.get("column_name"),
        "severity": ((test.get("config") or {}).get("severity") or "error").lower(),
    }


def lineage(manifest: Mapping[str, Any], index: ConnectorIndex) -> dict[str, list[dict[str, str]]]:
    """{nodes: [{id, type, name}], edges: [{from, to}]} with connector tables upstream of their sources."""
    nodes: list[dict[str, str]] = []
    edges: list[dict[str, str]] = []
    known: set[str] = set()
    for source in manifest.get("sources", {}).values():
        known.add(source["unique_id"])
        nodes.append({"id": source["unique_id"], "type": "source", "name": f"{source['source_name']}.{source['name']}"})
        mapped = index.match(source)
        if mapped is not None:
            if mapped.node_id not in known:
                known.add(mapped.node_id)
                nodes.append(
                    {"id": mapped.node_id, "type": "connector_table", "name": f"{mapped.connector_name}.{mapped.table}"}
                )
            edges.append({"from": mapped.node_id, "to": source["unique_id"]})
    for node in resources(manifest, (*ASSET_TYPES, "test")):
        known.add(node["unique_id"])
        nodes.append({"id": node["unique_id"], "type": node["resource_type"], "name": node["name"]})
    for node in resources(manifest, (*ASSET_TYPES, "test")):
        for upstream in dict.fromkeys((node.get("depends_on") or {}).get("nodes", [])):
            if upstream in known:
                edges.append({"from": upstream, "to": node["unique_id"]})
    return {"nodes": nodes, "edges": edges}


def read_run_results(run_dir: Path) -> dict[str, dict[str, Any]] | None:
    """unique_id -> {status, message, execution_time, rows_affected} of a run's run_results.json."""
    path = run_dir / "run_results.json"
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    results: dict[str, dict[str, Any]] = {}
    for result in data.get("results", []):
        results[result["unique_id"]] = {
            "status": result.get("status"),
            "message": result.get("message"),
            "execution_time": result.get("execution_time"),
            "rows_affected": (result.get("adapter_response") or {}).get("rows_affected"),
            "failures": result.get("failures"),
        }
    return results
