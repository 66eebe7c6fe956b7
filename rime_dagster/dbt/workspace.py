"""A dbt project's files on disk: fetching its source, generating its profile, parsing it.

Layout under `RIME_HOME/dbt/<rime project id>/`:

    warehouse.duckdb                 the project's DuckDB database (dbt-duckdb target)
    <dbt project id>/rev-<n>/project the copied or checked-out dbt project, never edited after parse
    <dbt project id>/rev-<n>/profiles/profiles.yml   generated; holds no secret
    <dbt project id>/rev-<n>/target/manifest.json     `dbt parse` output the code location builds from
    <dbt project id>/runs/<dagster run id>/           each run's target path (run_results.json)

A revision is immutable once parsed: updating a project fetches and parses a new revision next to
the current one and switches only when that succeeds, so a running dbt process keeps its files.
No Dagster here; the API and the code location both use this module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PROFILE_TARGET = "rime"
PASSWORD_ENV = "RIME_DBT_TARGET_PASSWORD"
_IGNORED = shutil.ignore_patterns("target", "logs", "dbt_packages", ".git", "__pycache__", ".venv", "*.duckdb*")
_GIT_URL = re.compile(r"^(file://|/|\.{0,2}/|https?://|ssh://|git@)")


class DbtProjectError(Exception):
    """The project cannot be fetched or parsed; the message is fit for the API client (dbt's own words)."""


@dataclass(frozen=True)
class ProjectFiles:
    """Where one revision of a dbt project lives."""

    root: Path  # RIME_HOME/dbt/<project id>/<dbt project id>
    revision: int

    @property
    def revision_dir(self) -> Path:
        return self.root / f"rev-{self.revision}"

    @property
    def project_dir(self) -> Path:
        return self.revision_dir / "project"

    @property
    def profiles_dir(self) -> Path:
        return self.revision_dir / "profiles"

    @property
    def target_dir(self) -> Path:
        return self.revision_dir / "target"

    @property
    def manifest_path(self) -> Path:
        return self.target_dir / "manifest.json"

    def run_dir(self, dagster_run_id: str) -> Path:
        return self.root / "runs" / dagster_run_id


def project_root(dbt_home: Path, project_id: str, dbt_project_id: str) -> Path:
    return dbt_home / project_id / dbt_project_id


def duckdb_path(dbt_home: Path, project_id: str) -> Path:
    """One DuckDB database per Rime project, shared by its dbt projects."""
    return dbt_home / project_id / "warehouse.duckdb"


def dbt_executable() -> str:
    """The `dbt` next to this interpreter (the venv's), else the one on PATH."""
    candidate = Path(sys.executable).parent / "dbt"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("dbt")
    if found is None:
        raise DbtProjectError("The dbt executable is not installed.")
    return found


# Fetching ------------------------------------------------------------------------------------


def check_local_path(path: str, allowed_roots: list[Path]) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_absolute():
        raise DbtProjectError("source.path must be an absolute path on the server.")
    folder = folder.resolve()
    if allowed_roots and not any(folder.is_relative_to(root.expanduser().resolve()) for root in allowed_roots):
        raise DbtProjectError("source.path is outside the folders dbt projects may be registered from.")
    if not folder.is_dir():
        raise DbtProjectError(f"source.path {folder} is not a folder on the server.")
    if not (folder / "dbt_project.yml").is_file():
        raise DbtProjectError(f"{folder} has no dbt_project.yml.")
    return folder


def fetch(source: Mapping[str, Any], dest: Path, *, allowed_roots: list[Path], timeout: float) -> str | None:
    """Puts the project's files in `dest` (which must not exist); returns the git commit, if any."""
    if source["type"] == "path":
        shutil.copytree(check_local_path(source["path"], allowed_roots), dest, ignore=_IGNORED)
        return None
    return _git_checkout(source["url"], source.get("ref"), source.get("subdirectory"), dest, timeout=timeout)


def _git(args: list[str], *, cwd: Path | None, timeout: float) -> str:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true", "GIT_CONFIG_NOSYSTEM": "1"}
    try:
        done = subprocess.run(
            ["git", "-c", "protocol.ext.allow=never", *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except FileNotFoundError:
        raise DbtProjectError("git is not installed on the server.") from None
    except subprocess.TimeoutExpired:
        raise DbtProjectError(f"git {args[0]} did not finish within {timeout:.0f}s.") from None
    if done.returncode != 0:
        message = _scrub_url_credentials(done.stderr.strip() or done.stdout.strip())
        raise DbtProjectError(f"git {args[0]} failed: {message}")
    return done.stdout.strip()


def _scrub_url_credentials(text: str) -> str:
    return re.sub(r"(://)[^/@\s]+@", r"\1***@", text)


def _git_checkout(url: str, ref: str | None, subdirectory: str | None, dest: Path, *, timeout: float) -> str:
    if not _GIT_URL.match(url):
        raise DbtProjectError("source.url must be a file://, http(s)://, ssh:// or git@ URL, or an absolute path.")
    checkout = dest.parent / f"{dest.name}.git-checkout"
    shutil.rmtree(checkout, ignore_errors=True)
    try:
        _git(["clone", "--quiet", "--", url, str(checkout)], cwd=None, timeout=timeout)
        if ref:
            _git(["checkout", "--quiet", "--detach", ref, "--"], cwd=checkout, timeout=timeout)
        sha = _git(["rev-parse", "HEAD"], cwd=checkout, timeout=timeout)
        folder = (checkout / (subdirectory or "")).resolve()
        if not folder.is_relative_to(checkout.resolve()) or not (folder / "dbt_project.yml").is_file():
            where = f"subdirectory '{subdirectory}'" if subdirectory else "the repository root"
            raise DbtProjectError(f"No dbt_project.yml in {where} at {sha[:12]}.")
        shutil.copytree(folder, dest, ignore=_IGNORED)
        return sha
    finally:
        shutil.rmtree(checkout, ignore_errors=True)


# dbt_project.yml and profiles.yml ------------------------------------------------------------


@dataclass(frozen=True)
class ProjectFile:
    name: str
    profile: str


def read_project_file(project_dir: Path) -> ProjectFile:
    try:
        data = yaml.safe_load((project_dir / "dbt_project.yml").read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DbtProjectError(f"dbt_project.yml cannot be read: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise DbtProjectError("dbt_project.yml has no `name`.")
    # dbt itself falls back to the project name when `profile` is missing.
    profile = data.get("profile") or data["name"]
    if not isinstance(profile, str):
        raise DbtProjectError("dbt_project.yml `profile` must be a string.")
    return ProjectFile(name=data["name"], profile=profile)


def profile_output(target: Mapping[str, Any], *, duckdb_file: Path, namespace: str, threads: int) -> dict[str, Any]:
    """The dbt output for a Rime target; secrets are `env_var()` references filled in at run time."""
    settings = {k: v for k, v in target.items() if k != "adapter"}
    if target["adapter"] == "duckdb":
        return {
            "type": "duckdb",
            "path": str(duckdb_file),
            "schema": settings.get("schema", "main"),
            "threads": settings.get("threads", threads),
            # Another process holding the file's lock (a manual dbt run): wait for it, 1+2+4+8 s.
            "retries": {"connect_attempts": 5, "retryable_exceptions": ["IOException"]},
            # Connector tables as views over their Iceberg tables, extensions from installed packages.
            "plugins": [
                {"module": "rime_dagster.dbt.duckdb_plugin", "alias": "rime", "config": {"namespace": namespace}}
            ],
        }
    return {
        "type": "postgres",
        "host": settings["host"],
        "port": settings.get("port", 5432),
        "user": settings["user"],
        "password": "{{ env_var('" + PASSWORD_ENV + "', '') }}",
        "dbname": settings["dbname"],
        "schema": settings.get("schema", "public"),
        "threads": settings.get("threads", threads),
        "sslmode": settings.get("sslmode", "prefer"),
        "connect_timeout": 10,
    }


def write_profiles(files: ProjectFiles, profile: str, output: dict[str, Any]) -> Path:
    files.profiles_dir.mkdir(parents=True, exist_ok=True)
    path = files.profiles_dir / "profiles.yml"
    path.write_text(yaml.safe_dump({profile: {"target": PROFILE_TARGET, "outputs": {PROFILE_TARGET: output}}}))
    return path


# Running dbt ---------------------------------------------------------------------------------


def dbt_env(password: str | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        "DBT_NO_VERSION_CHECK": "true",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("DBT_PROFILES_DIR", None)
    env.pop("DBT_PROJECT_DIR", None)
    env.pop("DBT_TARGET_PATH", None)
    if password is not None:
        env[PASSWORD_ENV] = password
    return env


def run_dbt(
    files: ProjectFiles,
    args: list[str],
    *,
    timeout: float,
    password: str | None = None,
    target_path: Path | None = None,
) -> None:
    """Runs `dbt <args>` on a revision with JSON logs; DbtProjectError carries dbt's error messages."""
    target = target_path or files.target_dir
    command = [
        dbt_executable(),
        "--log-format",
        "json",
        "--no-use-colors",
        *args,
        "--project-dir",
        str(files.project_dir),
        "--profiles-dir",
        str(files.profiles_dir),
        "--target-path",
        str(target),
        "--log-path",
        str(target / "logs"),
    ]
    try:
        done = subprocess.run(
            command, cwd=files.project_dir, env=dbt_env(password), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise DbtProjectError(f"dbt {args[0]} did not finish within {timeout:.0f}s.") from None
    if done.returncode != 0:
        raise DbtProjectError(f"dbt {args[0]} failed: {dbt_errors(done.stdout, done.stderr)}")


def dbt_errors(stdout: str, stderr: str = "") -> str:
    """The error messages of a JSON-logging dbt invocation, in order, without duplicates."""
    messages: list[str] = []
    for line in stdout.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        info = event.get("info", {}) if isinstance(event, dict) else {}
        if info.get("level") == "error" and info.get("msg"):
            text = re.sub(r"\x1b\[[0-9;]*m", "", str(info["msg"])).strip()
            if text and text not in messages:
                messages.append(text)
    if not messages:
        tail = [line for line in (stderr or stdout).strip().splitlines() if line.strip()][-5:]
        messages = tail or ["dbt exited with an error and printed nothing."]
    return "\n".join(messages)


def parse(files: ProjectFiles, *, vars: Mapping[str, Any], timeout: float, password: str | None = None) -> Path:
    """`dbt deps` (when the project declares packages) then `dbt parse`; returns the manifest path."""
    if (files.project_dir / "packages.yml").exists() or (files.project_dir / "dependencies.yml").exists():
        run_dbt(files, ["deps"], timeout=timeout, password=password)
    args = ["parse"]  # writes partial_parse.msgpack, which each run starts from
    if vars:
        args += ["--vars", json.dumps(dict(vars))]
    run_dbt(files, args, timeout=timeout, password=password)
    if not files.manifest_path.is_file():
        raise DbtProjectError("dbt parse wrote no manifest.json.")
    return files.manifest_path


def prune_revisions(root: Path, keep: set[int]) -> None:
    """Deletes revision folders not in `keep` (best effort: a running process may still hold one)."""
    if not root.is_dir():
        return
    for child in root.iterdir():
        if child.name.startswith("rev-") and child.name[4:].isdigit() and int(child.name[4:]) not in keep:
            shutil.rmtree(child, ignore_errors=True)


def prune_run_dirs(dbt_home: Path, keep: int) -> int:
    """Keeps the newest `keep` run artifact folders of every dbt project; returns how many it removed.

    Older runs stay in the run history, without per-node results.
    """
    removed = 0
    for runs in dbt_home.glob("*/*/runs"):
        folders = sorted((p for p in runs.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
        for folder in folders[keep:]:
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed
