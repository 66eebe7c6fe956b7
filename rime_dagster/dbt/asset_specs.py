"""A parsed dbt manifest as Dagster asset and check specs, and the dbt selection of a subset run.

The code location builds every dbt project's assets from here, without importing dagster-dbt (which
imports dbt-core, about 1.5 s of every code server's and run worker's start). The rules are
dagster-dbt's own, as `@dbt_assets` applies them with `RimeDbtTranslator`
(`rime_dagster/dbt/translator.py`, the run-time half; tests/dbt/test_asset_specs.py compares the two):

* every model, seed and snapshot that is not ephemeral is an asset (`asset_utils.build_dbt_specs`);
  its deps are its upstream models, seeds, snapshots and sources, looking through ephemeral models
  and metrics (`get_upstream_unique_ids`); a source on a connector table is that connector's asset;
* a test is an asset check on the node it is attached to (`get_asset_check_key_for_test`: dbt's
  `attached_node`, else its only parent, else `meta: {dagster: {ref: ...}}`), with its other
  parents as additional deps (`default_asset_check_fn`); tests on sources are not checks
  (`enable_source_tests_as_checks` is off), nor are singular tests with several parents;
* a run of a subset (the UI's "materialize selected", checks only) selects its nodes by FQN, as
  `get_subset_selection_for_context` does.

Left out on purpose: dagster-dbt's `dagster_dbt/manifest` and `dagster_dbt/dagster_dbt_translator`
metadata (objects only dagster-dbt's own helpers read), metadata on source deps, automation
conditions and partitions (Rime projects set none).
"""

from __future__ import annotations

import hashlib
import textwrap
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import dagster as dg
from dagster._utils.tags import is_valid_tag_key

from rime_dagster.dbt.manifest import ASSET_TYPES, ConnectorIndex, node_asset_key, source_asset_key

UNIQUE_ID_KEY = "dagster_dbt/unique_id"  # dagster-dbt's key: its helpers and the UI find nodes by it
SELECT_ALL = "fqn:*"  # dagster-dbt's default selection, passed to dbt on a run of every asset
# One command-line argument may not exceed 128 KiB on Linux (MAX_ARG_STRLEN); a longer selection goes
# through a selectors.yml instead. (dagster-dbt switches at 200 names, for Windows' command line limit.)
MAX_SELECT_ARG = 100_000
_NON_ASSET_TYPES = ("metric", "semantic_model", "saved_query", "function")
_NODE_COLLECTIONS = (
    "nodes",
    "sources",
    "exposures",
    "metrics",
    "semantic_models",
    "saved_queries",
    "unit_tests",
    "functions",
)


class AssetKeys:
    """unique id -> asset key (memoized: each source is matched to a connector table once)."""

    def __init__(self, manifest: Mapping[str, Any], namespace: str, slug: str, index: ConnectorIndex):
        self.manifest = manifest
        self.namespace = namespace
        self.slug = slug
        self.index = index
        self._cache: dict[str, dg.AssetKey] = {}

    def __call__(self, unique_id: str) -> dg.AssetKey:
        key = self._cache.get(unique_id)
        if key is None:
            key = self._cache[unique_id] = asset_key(
                self.namespace, self.slug, self.index, node(self.manifest, unique_id)
            )
        return key


def asset_key(namespace: str, slug: str, index: ConnectorIndex, props: Mapping[str, Any]) -> dg.AssetKey:
    """A model's, seed's or snapshot's `[namespace, slug, name]`; a source's, its connector table's if it reads one."""
    if props["resource_type"] == "source":
        return dg.AssetKey(source_asset_key(namespace, slug, props, index))
    return dg.AssetKey(node_asset_key(namespace, slug, props))


@dataclass(frozen=True)
class DbtAssetSpecs:
    """A project's assets and checks, and the dbt node behind each."""

    specs: list[dg.AssetSpec]
    check_specs: list[dg.AssetCheckSpec]
    node_ids: dict[dg.AssetKey, str]  # asset key -> model/seed/snapshot unique id
    test_ids: dict[dg.AssetCheckKey, str]  # check key -> test unique id
    key_of: AssetKeys


def node(manifest: Mapping[str, Any], unique_id: str) -> Mapping[str, Any]:
    """The manifest entry of any unique id (dagster-dbt's `get_node`)."""
    for collection in _NODE_COLLECTIONS:
        found = (manifest.get(collection) or {}).get(unique_id)
        if found is not None:
            return found
    raise KeyError(f"{unique_id} is not in the dbt manifest")


def _is_asset(props: Mapping[str, Any]) -> bool:
    return props["resource_type"] in ASSET_TYPES and not _is_non_asset(props)


def _is_non_asset(props: Mapping[str, Any]) -> bool:
    """Nodes in dbt's graph that are no asset, looked through for deps: metrics, ephemeral models, ..."""
    kind = props["resource_type"]
    return kind in _NON_ASSET_TYPES or (
        kind == "model" and (props.get("config") or {}).get("materialized") == "ephemeral"
    )


def upstream_ids(manifest: Mapping[str, Any], props: Mapping[str, Any]) -> set[str]:
    """The models, seeds, snapshots and sources a node reads, through ephemeral models and metrics."""
    found: set[str] = set()
    for parent_id in (props.get("depends_on") or {}).get("nodes", []):
        parent = node(manifest, parent_id)
        if not _is_non_asset(parent):
            if parent["resource_type"] in (*ASSET_TYPES, "source"):
                found.add(parent_id)
            continue
        queue = list((parent.get("depends_on") or {}).get("nodes", []))
        visited: set[str] = set()
        while queue:
            candidate_id = queue.pop()
            if candidate_id in visited:
                continue
            visited.add(candidate_id)
            candidate = node(manifest, candidate_id)
            if _is_non_asset(candidate):
                queue.extend((candidate.get("depends_on") or {}).get("nodes", []))
            elif candidate["resource_type"] in (*ASSET_TYPES, "source"):
                found.add(candidate_id)
    return found


def _child_map(manifest: Mapping[str, Any]) -> Mapping[str, Iterable[str]]:
    if manifest.get("child_map"):
        return manifest["child_map"]
    children: dict[str, set[str]] = defaultdict(set)
    for unique_id, props in manifest["nodes"].items():
        for parent_id in upstream_ids(manifest, props):
            children[parent_id].add(unique_id)
    return children


def tested_node_id(manifest: Mapping[str, Any], test: Mapping[str, Any]) -> str | None:
    """The node a test checks: dbt's attached node, its only parent, or `meta: {dagster: {ref: ...}}`."""
    parents = set((test.get("depends_on") or {}).get("nodes", []))
    attached = test.get("attached_node")
    if len(parents) == 1:
        [attached] = parents
    meta = (test.get("config") or {}).get("meta") or test.get("meta") or {}
    ref = (meta.get("dagster") or {}).get("ref") or {}
    if ref:
        wanted = (ref["name"], ref.get("package") or manifest["metadata"]["project_name"], ref.get("version"))
        attached = next(
            (
                unique_id
                for unique_id, props in manifest["nodes"].items()
                if (props["name"], props["package_name"], props.get("version")) == wanted
            ),
            None,
        )
    return attached or None


def build_asset_specs(
    manifest: Mapping[str, Any], *, namespace: str, slug: str, index: ConnectorIndex
) -> DbtAssetSpecs:
    """Every asset and asset check of the project, keyed `[namespace, slug, name]` in group `namespace`."""
    key_of = AssetKeys(manifest, namespace, slug, index)
    metadata = manifest.get("metadata") or {}
    groups = {group["name"]: group for group in (manifest.get("groups") or {}).values()}
    children = _child_map(manifest)
    specs: list[dg.AssetSpec] = []
    checks: dict[dg.AssetCheckKey, dg.AssetCheckSpec] = {}
    node_ids: dict[dg.AssetKey, str] = {}
    test_ids: dict[dg.AssetCheckKey, str] = {}
    claimed: dict[dg.AssetKey, set[str]] = defaultdict(set)  # key -> the nodes that map to it
    for unique_id, props in manifest["nodes"].items():
        if not _is_asset(props):
            continue
        key = key_of(unique_id)
        upstream = upstream_ids(manifest, props)
        specs.append(
            dg.AssetSpec(
                key=key,
                deps=list(dict.fromkeys(key_of(parent_id) for parent_id in sorted(upstream))),
                description=_description(props),
                metadata=_metadata(props, metadata.get("adapter_type"), metadata.get("project_id")),
                skippable=True,  # a failed or skipped model yields no output; the run goes on
                group_name=namespace,
                code_version=_code_version(props),
                owners=_owners(props, groups),
                tags={tag: "" for tag in props.get("tags") or [] if is_valid_tag_key(tag)},
                kinds={"dbt", metadata.get("adapter_type") or "dbt"},
            )
        )
        node_ids[key] = unique_id
        claimed[key].add(unique_id)
        for parent_id in upstream:
            claimed[key_of(parent_id)].add(parent_id)
        for child_id in children.get(unique_id, ()):
            if child_id.startswith("test"):
                check = _check_spec(manifest, child_id, key, key_of)
                if check is not None:
                    checks[check.key] = check
                    test_ids[check.key] = child_id
    _refuse_shared_keys(manifest, claimed)
    return DbtAssetSpecs(specs, list(checks.values()), node_ids, test_ids, key_of)


def _refuse_shared_keys(manifest: Mapping[str, Any], claimed: Mapping[dg.AssetKey, set[str]]) -> None:
    """Two dbt nodes on one asset key (two sources on one connector table, too) fail, as in dagster-dbt."""
    shared = {key: ids for key, ids in claimed.items() if len(ids) > 1}
    if shared:
        lines = [
            f"{key.to_user_string()}: "
            + ", ".join(f"{u} ({node(manifest, u).get('original_file_path')})" for u in sorted(ids))
            for key, ids in shared.items()
        ]
        raise dg.DagsterInvalidDefinitionError("dbt resources share a Dagster asset key:\n" + "\n".join(lines))


def _check_spec(
    manifest: Mapping[str, Any], test_id: str, asset_key: dg.AssetKey, key_of: AssetKeys
) -> dg.AssetCheckSpec | None:
    test = node(manifest, test_id)
    tested = tested_node_id(manifest, test)
    if tested is None or key_of(tested) != asset_key:
        return None
    # A test that reads other nodes too (relationships) depends on them.
    others = {key_of(parent_id) for parent_id in (manifest.get("parent_map") or {}).get(test_id, [])}
    severity = (test.get("config") or {}).get("severity") or "error"
    return dg.AssetCheckSpec(
        name=test["name"],
        asset=asset_key,
        description=(test.get("meta") or {}).get("description"),
        additional_deps=others - {asset_key},
        metadata={UNIQUE_ID_KEY: test_id},
        blocking=severity.lower() == "error",
    )


def _description(props: Mapping[str, Any]) -> str:
    code = textwrap.indent(props.get("raw_sql") or props.get("raw_code") or "", "    ")
    summary = props.get("description") or f"dbt {props['resource_type']} {props['name']}"
    return f"{summary}\n\n#### Raw SQL:\n```sql\n{code}\n```"


def _metadata(props: Mapping[str, Any], adapter: str | None, project_id: str | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    materialized = (props.get("config") or {}).get("materialized")
    if materialized:
        metadata["dagster-dbt/materialization_type"] = materialized
    columns = props.get("columns") or {}
    if columns:
        metadata["dagster/column_schema"] = dg.TableSchema(
            columns=[
                dg.TableColumn(
                    name=name,
                    type=column.get("data_type") or "?",
                    description=column.get("description"),
                    tags={tag: "" for tag in column.get("tags") or []},
                )
                for name, column in columns.items()
            ]
        )
    relation = ".".join(part for part in (props.get("database"), props.get("schema"), props.get("alias")) if part)
    if relation:
        metadata["dagster/table_name"] = relation
    metadata[UNIQUE_ID_KEY] = props["unique_id"]
    if adapter:
        metadata["dagster/storage_kind"] = adapter
    if project_id:
        metadata["dagster_dbt/project_id"] = dg.MetadataValue.text(project_id)
    return metadata


def _code_version(props: Mapping[str, Any]) -> str | None:
    code = props.get("raw_sql") or props.get("raw_code")
    if code:
        return hashlib.sha1(code.encode("utf-8")).hexdigest()
    return (props.get("checksum") or {}).get("checksum")


def _owners(props: Mapping[str, Any], groups: Mapping[str, Mapping[str, Any]]) -> list[str] | None:
    """`meta: {dagster: {owners: [...]}}`, else the e-mail of the owner of the node's dbt group."""
    owners = ((props.get("meta") or {}).get("dagster") or {}).get("owners")
    if owners:
        return list(owners)
    email = ((groups.get(props.get("group") or "") or {}).get("owner") or {}).get("email")
    if not email:
        return None
    return [email] if isinstance(email, str) else list(email)


# Subset runs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DbtSelection:
    """What to pass dbt for one run of the project's assets."""

    select: str
    indirect_selection: str | None = None  # DBT_INDIRECT_SELECTION, when dbt must not pick tests itself

    @property
    def too_long(self) -> bool:
        return len(self.select) > MAX_SELECT_ARG


def subset_selection(
    manifest: Mapping[str, Any],
    specs: DbtAssetSpecs,
    selected_keys: Iterable[dg.AssetKey],
    selected_checks: Iterable[dg.AssetCheckKey],
) -> DbtSelection:
    """The dbt selection that runs exactly the selected assets and checks (dagster-dbt's
    `get_subset_selection_for_context`).

    A run of everything selects `fqn:*`. Otherwise the selected models, seeds and snapshots are named by
    FQN and dbt's (eager) indirect selection adds their tests; tests selected without their asset are named
    too. When a selected asset has a check left out, every selected test is named and indirect selection
    is turned off (`empty`). Checks on sources upstream never count: tests on sources are not checks here.
    """
    keys, checks = set(selected_keys), set(selected_checks)
    if keys == set(specs.node_ids) and checks == set(specs.test_ids):
        return DbtSelection(SELECT_ALL)

    def fqn(unique_id: str) -> str:
        return ".".join(node(manifest, unique_id)["fqn"])

    names = [fqn(specs.node_ids[key]) for key in sorted(keys, key=lambda k: tuple(k.path))]
    ordered_checks = sorted(checks, key=lambda c: (c.asset_key.path, c.name))
    if any(c.asset_key in keys for c in set(specs.test_ids) - checks):
        names += [fqn(specs.test_ids[c]) for c in ordered_checks]
        return DbtSelection(" ".join(names), indirect_selection="empty")
    names += [fqn(specs.test_ids[c]) for c in ordered_checks if c.asset_key not in keys]
    return DbtSelection(" ".join(names))
