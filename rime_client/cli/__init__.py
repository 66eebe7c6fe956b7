"""The `rime` client commands (login, projects, connectors, pipelines, runs, approvals, apply): the SDK over HTTP,
for people and scripts. `rime` (api_shim/cli.py) registers them beside its platform commands with `add_commands`
and hands them to `run`; `main` is the same commands alone.

Exit codes: 0 done (a waited run succeeded); 1 a waited run failed or was canceled; 2 a usage error; 3 an API error
(its message, code and request id on stderr) or an API that cannot be reached; 4 `--timeout` passed while waiting
(the run keeps going); 130 Ctrl-C (a waited run keeps going).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import httpx

from rime_client.cli import commands, credentials, lifecycle
from rime_client.client import Client
from rime_client.errors import RimeError

Handler = Callable[[Client, argparse.Namespace], int]
ArgParser = argparse.ArgumentParser
CONFIG_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {"login": commands.login, "logout": commands.logout}


def _parents() -> tuple[ArgParser, ArgParser, ArgParser]:
    api = argparse.ArgumentParser(add_help=False)
    api.add_argument("--url", help="the API's base URL (default: $RIME_URL, else the one `rime login` stored)")
    api.add_argument(
        "--token", help="an API token (default: $RIME_TOKEN, else the stored one); visible to `ps`: prefer $RIME_TOKEN"
    )
    project = argparse.ArgumentParser(add_help=False)
    project.add_argument("-p", "--project", help="the project's id, name or slug (default: $RIME_PROJECT)")
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("-o", "--output", choices=("table", "json"), default="table", help="json: for scripts")
    return api, project, output


def _wait_options(parser: ArgParser, what: str, *, trigger: bool = True) -> None:
    """--timeout, and for a command that starts the run: --full-refresh and --wait."""
    if trigger:
        parser.add_argument("--full-refresh", action="store_true")
        parser.add_argument("--wait", action="store_true", help="show its progress; exit 0 if it succeeded, 1 if not")
    parser.add_argument(
        "--timeout", type=float, metavar="S", help=f"stop waiting after S seconds (exit 4; the {what} keeps going)"
    )


def _group(sub: argparse._SubParsersAction, name: str, help_text: str) -> argparse._SubParsersAction:
    parser = sub.add_parser(name, help=help_text, description=help_text)
    return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")


def _command(
    group: argparse._SubParsersAction, name: str, handler: Handler, help_text: str, *parents: ArgParser
) -> ArgParser:
    parser = group.add_parser(name, help=help_text, description=help_text, parents=list(parents))
    parser.set_defaults(client_handler=handler)
    return parser


def _on_one(
    group: argparse._SubParsersAction, name: str, handler: Handler, help_text: str, what: str, *parents: ArgParser
) -> ArgParser:
    """A command on one named thing: its positional argument WHAT, an id or a name."""
    parser = _command(group, name, handler, help_text, *parents)
    parser.add_argument(what, metavar=what.upper(), help="id or name" + (" or slug" if what == "project" else ""))
    return parser


def _list_and_get(
    group: argparse._SubParsersAction, what: str, listing: Handler, getting: Handler, *parents: ArgParser
) -> None:
    _command(group, "list", listing, f"list the {what}s", *parents).add_argument(
        "--limit", type=int, help="at most this many"
    )
    _on_one(group, "get", getting, f"show a {what}", what, *parents)


def _add_projects(sub: argparse._SubParsersAction, api: ArgParser, out: ArgParser) -> None:
    group = _group(sub, "projects", "list, show, create and delete projects")
    _list_and_get(group, "project", commands.projects_list, commands.projects_get, api, out)
    create = _command(group, "create", commands.projects_create, "create a project (admins)", api, out)
    create.add_argument("name")
    create.add_argument("--description")
    delete = _on_one(
        group, "delete", commands.projects_delete, "delete a project and all it holds (admins)", "project", api
    )
    delete.add_argument("--purge-data", action="store_true", help="drop its Iceberg tables too")
    delete.add_argument("-y", "--yes", action="store_true", help="do not ask (needed when stdin is not a terminal)")


def _add_connectors(sub: argparse._SubParsersAction, *parents: ArgParser) -> None:
    group = _group(sub, "connectors", "list, show and sync a project's connectors")
    _list_and_get(group, "connector", commands.connectors_list, commands.connectors_get, *parents)
    _wait_options(_on_one(group, "sync", commands.connectors_sync, "start a sync", "connector", *parents), "sync")


def _add_pipelines(sub: argparse._SubParsersAction, *parents: ArgParser) -> None:
    api, project, _ = parents
    group = _group(sub, "pipelines", "list, show, run and export a project's pipelines")
    _list_and_get(group, "pipeline", commands.pipelines_list, commands.pipelines_get, *parents)
    run = _on_one(group, "run", commands.pipelines_run, "start a run", "pipeline", *parents)
    run.add_argument(
        "--environment",
        choices=("development", "qa", "uat", "production"),
        default="development",
        help="whose version runs (default development: the newest)",
    )
    run.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a run variable (repeatable; VALUE read as YAML)",
    )
    run.add_argument("--dry-run", action="store_true", help="validate and show the plan; nothing runs")
    _wait_options(run, "run")
    runs = _on_one(group, "runs", commands.pipelines_runs, "the pipeline's runs, newest first", "pipeline", *parents)
    runs.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    export = _on_one(group, "export", commands.pipelines_export, "print it as a document", "pipeline", api, project)
    export.add_argument("--format", choices=("yaml", "json"), default="yaml")
    listed = _on_one(group, "versions", lifecycle.versions, "its versions, newest first", "pipeline", *parents)
    listed.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    _on_one(group, "environments", lifecycle.environments, "what each environment runs", "pipeline", *parents)
    for move, help_text in (
        ("promote", "move a version to the next environment (uat and production: an approval request)"),
        ("demote", "move uat's version back to qa (leads)"),
        ("retire", "take production's version out of production (leads)"),
    ):
        parser = _on_one(group, move, lifecycle.move, help_text, "pipeline", *parents)
        parser.add_argument("version", metavar="VERSION", help="its number (or id)")
        parser.set_defaults(move=move)


def _add_approvals(sub: argparse._SubParsersAction, *parents: ArgParser) -> None:
    group = _group(sub, "approvals", "list and decide a project's approval requests (leads)")
    listing = _command(group, "list", lifecycle.approvals_list, "the project's approval requests", *parents)
    listing.add_argument("--status", choices=("pending", "approved", "rejected"))
    listing.add_argument("--limit", type=int, help="at most this many")
    for decision, help_text in (
        ("approve", "approve: the version moves (not your own request)"),
        ("reject", "reject, saying why"),
    ):
        parser = _command(group, decision, lifecycle.decide, help_text, *parents)
        parser.add_argument("request", metavar="REQUEST", help="the request's id (apr_...)")
        parser.add_argument("--reason", required=decision == "reject", help="why (required to reject)")
        parser.set_defaults(decision=decision)


def _add_runs(sub: argparse._SubParsersAction, *parents: ArgParser) -> None:
    group = _group(sub, "runs", "show, follow or cancel one pipeline run")
    for name, handler, help_text in (
        ("get", commands.runs_get, "show a run and its steps"),
        ("wait", commands.runs_wait, "follow a run to its end: exit 0 if it succeeded, 1 if not"),
        ("cancel", commands.runs_cancel, "cancel a run"),
    ):
        parser = _command(group, name, handler, help_text, *parents)
        parser.add_argument("run_id", metavar="RUN")
        parser.add_argument("--pipeline", required=True, help="the run's pipeline: id or name")
        if name == "wait":
            _wait_options(parser, "run", trigger=False)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Registers the client commands on `rime`'s subparsers."""
    login = sub.add_parser("login", help="check a token against the API and store it with the URL")
    login.add_argument("--url", help="the API's base URL (default: $RIME_URL, else the stored one)")
    login.add_argument("--token-stdin", action="store_true", help="read the token from stdin (else it is prompted for)")
    sub.add_parser("logout", help="remove the stored credentials")
    parents = _parents()
    _add_projects(sub, parents[0], parents[2])
    _add_connectors(sub, *parents)
    _add_pipelines(sub, *parents)
    _add_runs(sub, *parents)
    _add_approvals(sub, *parents)
    apply = sub.add_parser(
        "apply",
        parents=list(parents),
        help="create or update pipelines from documents (GitOps)",
        description="Creates each pipeline the documents define, or replaces the definition of the project's "
        "pipeline of that name (as `rime pipelines export` writes them; several per file after `---`).",
    )
    apply.add_argument("-f", "--file", action="append", required=True, help="a YAML or JSON file; - reads stdin")
    apply.set_defaults(client_handler=commands.apply)


def handles(args: argparse.Namespace) -> bool:
    return args.command in CONFIG_HANDLERS or getattr(args, "client_handler", None) is not None


def _report(exc: RimeError) -> None:
    print(f"error: {exc.message}", file=sys.stderr)
    for detail in exc.details:
        where = detail.get("field") or detail.get("step") or ""
        print(f"  {where}: {detail.get('message', detail)}" if where else f"  {detail}", file=sys.stderr)
    print(f"code: {exc.code}" + (f"  request id: {exc.request_id}" if exc.request_id else ""), file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Runs a parsed client command; its exit code (module docstring)."""
    try:
        if args.command in CONFIG_HANDLERS:
            return CONFIG_HANDLERS[args.command](args)
        target = credentials.resolve(args.url, args.token)
        with Client(target.url, target.token) as client:
            handler: Handler = args.client_handler
            return handler(client, args)
    except (commands.UsageError, credentials.NotConfigured) as exc:
        print(f"rime: error: {exc}", file=sys.stderr)
        return commands.EXIT_USAGE
    except RimeError as exc:
        _report(exc)
        return commands.EXIT_API_ERROR
    except httpx.TransportError as exc:
        print(f"error: cannot reach the API: {exc}", file=sys.stderr)
        return commands.EXIT_API_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return commands.EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rime", description=__doc__.splitlines()[0] if __doc__ else None)
    add_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return run(parser.parse_args(argv))
