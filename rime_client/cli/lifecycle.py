"""The lifecycle commands: a pipeline's versions and environments, promotion, and approval requests."""

from __future__ import annotations

import argparse
import sys

from rime_client.cli.commands import EXIT_OK, _json, _project
from rime_client.cli.display import as_json, table
from rime_client.client import Client


def versions(client: Client, args: argparse.Namespace) -> int:
    found = list(client.versions.list(args.pipeline, project=_project(args), newest_first=True, limit=args.limit))
    if _json(args):
        as_json(found, sys.stdout)
    else:
        rows = [[v.version, v.environment, ", ".join(v.environments), v.created_at, v.created_by] for v in found]
        table(("VERSION", "STANDING", "RUNS IN", "CREATED", "BY"), rows, sys.stdout)
    return EXIT_OK


def environments(client: Client, args: argparse.Namespace) -> int:
    found = client.versions.environments(args.pipeline, project=_project(args))
    if _json(args):
        as_json({name: state.model_dump(mode="json") for name, state in found.items()}, sys.stdout)
    else:
        rows = [[s.environment, s.version, "live" if s.live else "", s.job_name, s.since, s.by] for s in found.values()]
        table(("ENVIRONMENT", "VERSION", "", "DAGSTER JOB", "SINCE", "BY"), rows, sys.stdout)
    return EXIT_OK


def move(client: Client, args: argparse.Namespace) -> int:
    """promote, demote or retire (args.move) a version."""
    action = getattr(client.versions, args.move)
    result = action(args.pipeline, args.version, project=_project(args))
    if _json(args):
        as_json(result, sys.stdout)
    elif result.status == "pending_approval":
        print(f"Version {result.version} waits for a lead's approval: request {result.approval_request_id}.")
    else:
        print(f"Version {result.version} {result.status}: it stands in {result.environment}.")
    return EXIT_OK


def approvals_list(client: Client, args: argparse.Namespace) -> int:
    found = list(client.approvals.list(project=_project(args), status=args.status, limit=args.limit))
    if _json(args):
        as_json(found, sys.stdout)
    else:
        rows = [
            [a.id, a.pipeline_name, a.version, f"{a.from_environment} -> {a.to_environment}", a.status, a.requested_by]
            for a in found
        ]
        table(("REQUEST", "PIPELINE", "VERSION", "MOVE", "STATUS", "REQUESTED BY"), rows, sys.stdout)
    return EXIT_OK


def decide(client: Client, args: argparse.Namespace) -> int:
    """approve or reject (args.decision) a request."""
    project = _project(args)
    if args.decision == "approve":
        request = client.approvals.approve(args.request, project=project, reason=args.reason)
    else:
        request = client.approvals.reject(args.request, args.reason, project=project)
    if _json(args):
        as_json(request, sys.stdout)
    else:
        print(
            f"Request {request.id} {request.status}: version {request.version} of {request.pipeline_name} "
            f"{'moves to' if request.status == 'approved' else 'stays out of'} {request.to_environment}."
        )
    return EXIT_OK
