"""The client commands: each takes the Client and its parsed arguments and returns the exit code."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from rime_client.cli import credentials
from rime_client.cli.display import STEP_HEADERS, RunProgress, as_json, fields, step_rows, table
from rime_client.client import Client
from rime_client.errors import NotFound
from rime_client.models import TERMINAL, Connector, ConnectorRun, Pipeline, PipelineRun, PipelineRunPlan
from rime_client.runs import RunHandle

# Exit codes (README "Command line"): what scripts branch on.
EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE, EXIT_API_ERROR, EXIT_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
# `--wait` with no `--timeout`: until the run ends (a week is as long as anyone waits in one command).
WAIT_FOREVER = 7 * 24 * 3600.0
# A connector sync is followed by reading its runs: the first wait, the factor, the longest wait between reads.
POLL_FIRST, POLL_FACTOR, POLL_MAX = 0.5, 1.5, 5.0


class UsageError(Exception):
    """A command line that cannot be carried out as given (exit 2)."""


def _project(args: argparse.Namespace) -> str:
    project: str | None = args.project or os.environ.get("RIME_PROJECT")
    if not project:
        raise UsageError("Name the project: --project PROJECT (id, name or slug), or set RIME_PROJECT.")
    return project


def _json(args: argparse.Namespace) -> bool:
    return getattr(args, "output", "table") == "json"


# Login ------------------------------------------------------------------------------------------------------------


def _read_token(args: argparse.Namespace) -> str:
    if args.token_stdin or not sys.stdin.isatty():
        token = sys.stdin.readline().strip()
    else:
        try:
            token = getpass.getpass("API token: ").strip()  # not echoed
        except EOFError:  # Ctrl-D
            print(file=sys.stderr)
            token = ""
    if not token:
        raise UsageError("No token given.")
    return token


def login(args: argparse.Namespace) -> int:
    """Checks the token against the API (a read every role may make), then stores the URL and the token."""
    url = args.url or os.environ.get("RIME_URL") or credentials.load().get("url")
    if not url:
        raise UsageError("Name the API: rime login --url URL (or set RIME_URL).")
    token = _read_token(args)
    with Client(url, token) as client:
        next(client.projects.list(limit=1), None)  # 401 for a wrong token
    path = credentials.save(url, token)
    print(f"Logged in to {url.rstrip('/')} (credentials in {path}).")
    return EXIT_OK


def logout(_args: argparse.Namespace) -> int:
    removed = credentials.remove()
    print(f"Logged out (removed {removed})." if removed else "Not logged in: no stored credentials.")
    return EXIT_OK


# Projects ---------------------------------------------------------------------------------------------------------


def projects_list(client: Client, args: argparse.Namespace) -> int:
    projects = list(client.projects.list(limit=args.limit))
    if _json(args):
        as_json(projects, sys.stdout)
    else:
        rows = [[p.id, p.name, p.namespace, p.created_at] for p in projects]
        table(("ID", "NAME", "NAMESPACE", "CREATED"), rows, sys.stdout)
    return EXIT_OK


def projects_get(client: Client, args: argparse.Namespace) -> int:
    project = client.projects.get(args.project)
    if _json(args):
        as_json(project, sys.stdout)
    else:
        keys = ("id", "name", "namespace", "description", "created_at", "updated_at")
        fields(((k, getattr(project, k)) for k in keys), sys.stdout)
    return EXIT_OK


def projects_create(client: Client, args: argparse.Namespace) -> int:
    project = client.projects.create(args.name, description=args.description)
    if _json(args):
        as_json(project, sys.stdout)
    else:
        print(f"Created project {project.name} ({project.id}).")
    return EXIT_OK


def projects_delete(client: Client, args: argparse.Namespace) -> int:
    project = client.projects.get(args.project)
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(f"Deleting project {project.name} deletes all its resources: pass --yes to confirm.")
        answer = input(f"Delete project {project.name} ({project.id}) and all its resources? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("Nothing deleted.")
            return EXIT_OK
    client.projects.delete(project.id, purge_data=args.purge_data)
    print(f"Deleted project {project.name} ({project.id}).")
    return EXIT_OK


# Connectors -------------------------------------------------------------------------------------------------------


def _connector(client: Client, wanted: str, project_id: str) -> Connector:
    """By id, else by exact name."""
    if wanted.startswith("conn_"):
        try:
            return client.connectors.get(wanted, project=project_id)
        except NotFound:
            pass
    found = next((c for c in client.connectors.list(project=project_id, page_size=100) if c.name == wanted), None)
    if found is None:
        raise NotFound("resource_not_found", f"No connector with id or name '{wanted}' in the project.", status=404)
    return found


def connectors_list(client: Client, args: argparse.Namespace) -> int:
    connectors = list(client.connectors.list(project=_project(args), limit=args.limit))
    if _json(args):
        as_json(connectors, sys.stdout)
    else:
        rows = [
            [c.id, c.name, c.connector_type, c.status, c.schedule, (c.last_sync or {}).get("status")]
            for c in connectors
        ]
        table(("ID", "NAME", "TYPE", "STATUS", "SCHEDULE", "LAST SYNC"), rows, sys.stdout)
    return EXIT_OK


def connectors_get(client: Client, args: argparse.Namespace) -> int:
    project = client.projects.get(_project(args))
    connector = _connector(client, args.connector, project.id)
    if _json(args):
        as_json(connector, sys.stdout)
    else:
        keys = ("id", "name", "connector_type", "status", "schedule", "sync_mode", "selected_tables", "updated_at")
        pairs = [(k, getattr(connector, k)) for k in keys]
        fields([*pairs, ("last_sync", (connector.last_sync or {}).get("status"))], sys.stdout)
    return EXIT_OK


def connectors_sync(client: Client, args: argparse.Namespace) -> int:
    project = client.projects.get(_project(args))
    connector = _connector(client, args.connector, project.id)
    started = client.connectors.sync(connector.id, project=project.id, full_refresh=args.full_refresh)
    if not args.wait:
        if _json(args):
            as_json(started, sys.stdout)
        else:
            print(f"Started sync {started.run_id} of {connector.name} ({started.status}).")
        return EXIT_OK
    progress = RunProgress(sys.stdout, started.run_id, live=sys.stdout.isatty()) if not _json(args) else None
    try:
        run = _wait_for_sync(client, connector.id, project.id, started.run_id, args.timeout or WAIT_FOREVER, progress)
    except TimeoutError:
        print(f"Timed out waiting for sync {started.run_id}: it keeps going.", file=sys.stderr)
        return EXIT_TIMEOUT
    if _json(args):
        as_json(run, sys.stdout)
    else:
        print(f"Sync {run.run_id} {run.status}: {run.rows_synced} rows." + (f" {run.error}" if run.error else ""))
    return EXIT_OK if run.status == "succeeded" else EXIT_RUN_FAILED


def _wait_for_sync(
    client: Client, connector_id: str, project_id: str, run_id: str, timeout: float, progress: RunProgress | None
) -> ConnectorRun:
    """The sync's run once it has ended, read from the connector's run history (no socket follows a sync)."""
    deadline, pause = time.monotonic() + timeout, POLL_FIRST
    while True:
        runs = client.connectors.runs(connector_id, project=project_id, limit=20)
        run = next((r for r in runs if r.run_id == run_id), None)
        if run is not None and progress is not None:
            progress({"type": "run_update", "status": run.status})
        if run is not None and run.status in TERMINAL:
            return run
        if time.monotonic() + pause > deadline:
            raise TimeoutError(run_id)
        time.sleep(pause)
        pause = min(pause * POLL_FACTOR, POLL_MAX)


# Pipelines and runs -----------------------------------------------------------------------------------------------


def pipelines_list(client: Client, args: argparse.Namespace) -> int:
    pipelines = list(client.pipelines.list(project=_project(args), limit=args.limit))
    if _json(args):
        as_json(pipelines, sys.stdout)
    else:
        rows = [[p.id, p.name, p.status, p.schedule, len(p.steps), p.updated_at] for p in pipelines]
        table(("ID", "NAME", "STATUS", "SCHEDULE", "STEPS", "UPDATED"), rows, sys.stdout)
    return EXIT_OK


def pipelines_get(client: Client, args: argparse.Namespace) -> int:
    pipeline = client.pipelines.get(args.pipeline, project=_project(args))
    if _json(args):
        as_json(pipeline, sys.stdout)
        return EXIT_OK
    keys = ("id", "name", "status", "schedule", "retries", "timeout_seconds", "execution_order", "updated_at")
    fields(((k, getattr(pipeline, k)) for k in keys), sys.stdout)
    print()
    table(("STEP", "TYPE", "DEPENDS ON"), [[s.id, s.type, s.depends_on] for s in pipeline.steps], sys.stdout)
    return EXIT_OK


def pipelines_runs(client: Client, args: argparse.Namespace) -> int:
    runs = list(client.pipelines.runs(args.pipeline, project=_project(args), limit=args.limit))
    if _json(args):
        as_json(runs, sys.stdout)
    else:
        rows = [[r.run_id, r.status, r.trigger, r.started_at, r.duration_seconds] for r in runs]
        table(("RUN", "STATUS", "TRIGGER", "STARTED", "DURATION"), rows, sys.stdout)
    return EXIT_OK


def pipelines_export(client: Client, args: argparse.Namespace) -> int:
    document = client.pipelines.export(args.pipeline, project=_project(args))
    if args.format == "json":
        as_json(document, sys.stdout)
    else:  # as the API's own YAML export writes it
        sys.stdout.write(yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
    return EXIT_OK


def pipelines_run(client: Client, args: argparse.Namespace) -> int:
    project = client.projects.get(_project(args))
    options = {
        "project": project.id,
        "full_refresh": args.full_refresh,
        "variables": _variables(args.var) or None,
        "environment": args.environment,
    }
    if args.dry_run:
        return _show_plan(client.pipelines.plan(args.pipeline, **options), args)
    handle = client.pipelines.run(args.pipeline, **options)
    if args.wait:
        return _follow(handle, args, project.id)
    if _json(args):
        as_json(handle.started, sys.stdout)
    else:
        print(f"Started run {handle.run_id} ({handle.status}).")
        print(f"Follow it: {_wait_command(handle, project.id)}")
    return EXIT_OK


def _variables(pairs: list[str]) -> dict[str, Any]:
    """--var KEY=VALUE...: each value read as YAML (10 a number, true a boolean, [a, b] a list; quote a string)."""
    variables = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--var {pair}: expected KEY=VALUE.")
        try:
            variables[key] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError as exc:
            raise UsageError(f"--var {pair}: {exc}") from exc
    return variables


def _show_plan(plan: PipelineRunPlan, args: argparse.Namespace) -> int:
    if _json(args):
        as_json(plan, sys.stdout)
        return EXIT_OK
    keys = ("pipeline_id", "environment", "version", "full_refresh", "execution_order")
    fields([*((k, getattr(plan, k)) for k in keys), ("variables", json.dumps(plan.variables))], sys.stdout)
    print()
    rows = [[s.get("order"), s.get("step_id"), s.get("type"), s.get("depends_on")] for s in plan.plan]
    table(("ORDER", "STEP", "TYPE", "DEPENDS ON"), rows, sys.stdout)
    print("Dry run: validated, nothing started.")
    return EXIT_OK


def runs_get(client: Client, args: argparse.Namespace) -> int:
    run = client.runs.get(args.run_id, pipeline=args.pipeline, project=_project(args))
    if _json(args):
        as_json(run, sys.stdout)
    else:
        _summary(run)
        table(STEP_HEADERS, step_rows(run), sys.stdout)
    return EXIT_OK


def runs_wait(client: Client, args: argparse.Namespace) -> int:
    project = client.projects.get(_project(args))
    return _follow(client.runs.handle(args.run_id, pipeline=args.pipeline, project=project.id), args, project.id)


def runs_cancel(client: Client, args: argparse.Namespace) -> int:
    status = client.runs.cancel(args.run_id, pipeline=args.pipeline, project=_project(args))
    print(f"Run {args.run_id}: {status}.")
    return EXIT_OK


def _wait_command(handle: RunHandle, project_id: str) -> str:
    return f"rime runs wait {handle.run_id} --pipeline {handle.pipeline_id} --project {project_id}"


def _follow(handle: RunHandle, args: argparse.Namespace, project_id: str) -> int:
    """Waits for the run's end showing its steps as they change: exit 0 if it succeeded, 1 if it failed or was
    canceled, 4 if `--timeout` passed first, 130 on Ctrl-C. The last two leave the run going."""
    progress = None if _json(args) else RunProgress(sys.stdout, handle.run_id, live=sys.stdout.isatty())
    timeout = args.timeout or WAIT_FOREVER
    try:
        run = handle.wait(timeout=timeout, on_update=progress)
    except TimeoutError:
        print(
            f"Timed out after {timeout:g} s: run {handle.run_id} is still {handle.status} and keeps going.\n"
            f"Follow it again: {_wait_command(handle, project_id)}",
            file=sys.stderr,
        )
        return EXIT_TIMEOUT
    except KeyboardInterrupt:
        print(
            f"\nStopped waiting; run {handle.run_id} keeps going (to stop it: rime runs cancel {handle.run_id} "
            f"--pipeline {handle.pipeline_id} --project {project_id}).",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if _json(args):
        as_json(run, sys.stdout)
    else:
        _summary(run)
    return EXIT_OK if run.status == "succeeded" else EXIT_RUN_FAILED


def _summary(run: PipelineRun) -> None:
    took = f" in {run.duration_seconds:.1f}s" if run.duration_seconds is not None else ""
    print(f"Run {run.run_id} {run.status}{took}.")
    for step in run.steps:
        if step.error:
            print(f"  {step.step_id}: {step.error}")
    if run.error and not any(step.error for step in run.steps):
        print(f"  {run.error}")


# Apply ------------------------------------------------------------------------------------------------------------


def _documents(sources: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """(source, document) for every document of every file (`-` is stdin; a YAML file may hold several, each
    after `---`; JSON is YAML too). All are read before anything is sent: a file that does not parse sends nothing."""
    found = []
    for source in sources:
        try:
            text = sys.stdin.read() if source == "-" else Path(source).read_text()
            loaded = [doc for doc in yaml.safe_load_all(text) if doc is not None]
        except (OSError, yaml.YAMLError) as exc:
            raise UsageError(f"{source}: {exc}") from exc
        for doc in loaded:
            if not isinstance(doc, dict):
                raise UsageError(f"{source}: a pipeline document is a mapping (format_version, kind, pipeline).")
            found.append((source, doc))
    if not found:
        raise UsageError("No document to apply.")
    return found


def _named(client: Client, project_id: str, document: dict[str, Any]) -> tuple[Pipeline, dict[str, Any]] | None:
    """The project's pipeline of the document's name and its export, if there is one."""
    definition = document.get("pipeline")
    name = definition.get("name") if isinstance(definition, dict) else None
    if not isinstance(name, str):
        return None  # the API names what is missing
    found = next((p for p in client.pipelines.list(project=project_id, page_size=100) if p.name == name), None)
    return (found, client.pipelines.export(found.id, project=project_id)) if found else None


def apply_one(client: Client, project_id: str, document: dict[str, Any]) -> dict[str, Any]:
    """Applies one document: {action: created | updated | unchanged, the pipeline's name, id and version (its
    newest), the fields that changed}.

    A document equal to the pipeline's export is not sent at all; otherwise the import replaces the definition,
    and comparing the exports before and after tells what changed (a document leaving out fields at their
    defaults may change nothing)."""
    existing = _named(client, project_id, document)
    if existing is not None and document == existing[1]:
        pipeline, action, changed = existing[0], "unchanged", []
    else:
        pipeline = client.pipelines.import_document(document, project=project_id)
        after = client.pipelines.export(pipeline.id, project=project_id)["pipeline"] if existing else {}
        before = existing[1]["pipeline"] if existing else {}
        changed = [k for k in after if after.get(k) != before.get(k)]
        action = "created" if existing is None else "updated" if changed else "unchanged"
    version = getattr(pipeline, "version", None)  # an API without versions has none
    return {"action": action, "name": pipeline.name, "id": pipeline.id, "version": version, "changed": changed}


def apply(client: Client, args: argparse.Namespace) -> int:
    """`rime apply -f FILE...`: each document in order; the first the API refuses stops the rest (exit 3)."""
    documents = _documents(args.file)
    project_id = client.projects.get(_project(args)).id
    results = []
    for _source, document in documents:
        result = apply_one(client, project_id, document)
        results.append(result)
        if not _json(args):
            changed = f": {', '.join(result['changed'])}" if result["changed"] else ""
            version = f" (version {result['version']})" if result["version"] is not None else ""
            print(f"pipeline {result['name']} ({result['id']}) {result['action']}{changed}{version}")
    if _json(args):
        as_json({"project_id": project_id, "results": results}, sys.stdout)
    return EXIT_OK
