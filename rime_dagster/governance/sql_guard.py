"""What user SQL may do: one SELECT over the project's tables, parsed by DuckDB itself, nothing else.

DuckDB parses the text (`extract_statements` for the statement type, `json_serialize_sql` for the tree), and
the tree is walked for every relation and function it names:

- exactly one statement, of type SELECT (so no writes, DDL, ATTACH/DETACH, COPY, INSTALL/LOAD, PRAGMA, SET,
  EXPLAIN, CALL);
- every table reference is one of the project's tables (by the name `GET .../tables` lists, unqualified) or a
  CTE in scope; no time-travel clause (`AT (...)`);
- no table function (read_csv, read_parquet, iceberg_scan, glob, read_text, duckdb_views(), query(), ...), no
  DESCRIBE/SHOW/SUMMARIZE, none of the functions that read the engine's settings or environment, none of the
  read path's own functions (by name, however qualified: DuckDB itself writes `[1]` as `main.list_value(1)`).

This is the first of three fences (governance/reads.py): the connection the query runs on holds only the
project's views, and its external access is off and its configuration locked before the query runs.
"""

from __future__ import annotations

import json
from collections.abc import Container
from typing import Any

import duckdb

from rime_dagster.governance.masking import INTERNAL_PREFIX

_REFUSED_RELATIONS = {
    "TABLE_FUNCTION": "Table functions (read_csv, read_parquet, iceberg_scan, glob, duckdb_*(), ...) are not allowed.",
    "SHOW_REF": "DESCRIBE, SHOW and SUMMARIZE are not allowed: see GET .../tables/{table}/schema.",
}
# Scalar functions that read the engine's configuration or the process environment.
_REFUSED_FUNCTIONS = {"current_setting", "getenv"}
_REFUSED_FUNCTION_PREFIXES = ("duckdb_", "pragma_", INTERNAL_PREFIX)


class QueryRefused(ValueError):
    """The SQL is not a query this endpoint runs; the message says why (it may quote the SQL, never data)."""


def check_query(con: duckdb.DuckDBPyConnection, sql: str, tables: Container[str]) -> list[str]:
    """The project tables `sql` reads (lower case, sorted), or QueryRefused. `tables`: the project's table names,
    lower case (asked only about the names the query reads as tables)."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryRefused(_first_line(exc)) from None
    if len(statements) != 1:
        raise QueryRefused("Send exactly one statement.")
    kind = statements[0].type.name
    if kind != "SELECT":
        raise QueryRefused(f"Only a SELECT query (or WITH ... SELECT) is allowed, not {kind}.")
    row = con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
    tree = json.loads(row[0]) if row else {"error": True, "error_message": "could not parse"}
    if tree.get("error"):
        raise QueryRefused(str(tree.get("error_message", "The query could not be parsed.")))
    found: set[str] = set()
    _walk(tree["statements"], frozenset(), tables, found)
    return sorted(found)


def _walk(node: object, ctes: frozenset[str], tables: Container[str], found: set[str]) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(item, ctes, tables, found)
        return
    if not isinstance(node, dict):
        return
    ctes = _with_ctes(node, ctes, tables, found)
    kind = node.get("type")
    if isinstance(kind, str) and "class" not in node:  # a relation or a query node, not an expression
        if kind in _REFUSED_RELATIONS:
            raise QueryRefused(_REFUSED_RELATIONS[kind])
        if kind == "BASE_TABLE":
            _check_table(node, ctes, tables, found)
    if "function_name" in node:
        _check_function(node)
    for key, value in node.items():
        if key != "cte_map":
            _walk(value, ctes, tables, found)


def _with_ctes(node: dict[str, Any], ctes: frozenset[str], tables: Container[str], found: set[str]) -> frozenset[str]:
    """Walks the node's WITH entries; returns the CTE names its body sees. An entry sees the entries before it
    (and itself, if recursive): a name it uses before it is defined is a table, as DuckDB reads it."""
    cte_map = node.get("cte_map")
    if not isinstance(cte_map, dict) or not cte_map.get("map"):
        return ctes
    visible = set(ctes)
    for entry in cte_map["map"]:
        name = str(entry["key"]).lower()
        recursive = entry["value"].get("query", {}).get("node", {}).get("type") == "RECURSIVE_CTE_NODE"
        _walk(entry["value"], frozenset(visible | {name} if recursive else visible), tables, found)
        visible.add(name)
    return frozenset(visible)


def _check_table(node: dict[str, Any], ctes: frozenset[str], tables: Container[str], found: set[str]) -> None:
    name = str(node.get("table_name", ""))
    if node.get("catalog_name") or node.get("schema_name"):
        qualified = ".".join(p for p in (node.get("catalog_name"), node.get("schema_name"), name) if p)
        raise QueryRefused(
            f"Table '{qualified}': use the project's table names unqualified, as GET .../tables lists them."
        )
    if node.get("at_clause") is not None:
        raise QueryRefused("AT (...) time travel is not supported here: preview a table at a snapshot instead.")
    lowered = name.lower()
    if lowered in ctes:
        return
    if lowered not in tables:
        raise QueryRefused(f"Unknown table '{name}': query the project's tables by the names GET .../tables lists.")
    found.add(lowered)


def _check_function(node: dict[str, Any]) -> None:
    name = str(node["function_name"]).lower()
    if name in _REFUSED_FUNCTIONS or name.startswith(_REFUSED_FUNCTION_PREFIXES):
        raise QueryRefused(f"Function '{node['function_name']}' is not allowed.")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
