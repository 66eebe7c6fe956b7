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

import fnmatch
import ipaddress
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import yaml

from rime_dagster.dbt import parse_template, sandbox
from rime_dagster.platform import environment
from rime_dagster.settings import Settings, get_settings

PROFILE_TARGET = "rime"
PASSWORD_ENV = "RIME_DBT_TARGET_PASSWORD"
# Never copied from a project's folder: build output, installed packages, git's own files, local databases.
_IGNORED = ("target", "logs", "dbt_packages", ".git", "__pycache__", ".venv", "*.duckdb*")


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


DEFAULT_MAX_BYTES = 256 * 1024 * 1024
# Each folder a copy makes counts as a block: links cannot multiply empty folders past the limit either.
FOLDER_BYTES = 4096


@dataclass(frozen=True)
class GitRules:
    """Where git sources may come from (RIME_DBT_GIT_SCHEMES, RIME_DBT_GIT_ALLOW_LOCAL_HOSTS)."""

    schemes: tuple[str, ...] = ("https", "ssh")
    allow_local_hosts: bool = False
    env_passthrough: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> GitRules:
        return cls(tuple(settings.dbt_git_schemes), settings.dbt_git_allow_local_hosts, tuple(settings.env_passthrough))


def _confined(path: Path, allowed_roots: list[Path], field: str) -> Path:
    """`path` with its links resolved, if it lies in one of `allowed_roots` (any path when there are none)."""
    if not path.is_absolute():
        raise DbtProjectError(f"{field} must be an absolute path on the server.")
    path = path.resolve()
    if allowed_roots and not any(path.is_relative_to(root.expanduser().resolve()) for root in allowed_roots):
        raise DbtProjectError(f"{field} is outside the folders dbt projects may be registered from.")
    return path


def check_local_path(path: str, allowed_roots: list[Path]) -> Path:
    folder = _confined(Path(path).expanduser(), allowed_roots, "source.path")
    if not folder.is_dir():
        raise DbtProjectError(f"source.path {folder} is not a folder on the server.")
    if not (folder / "dbt_project.yml").is_file():
        raise DbtProjectError(f"{folder} has no dbt_project.yml.")
    return folder


def fetch(
    source: Mapping[str, Any],
    dest: Path,
    *,
    allowed_roots: list[Path],
    timeout: float,
    max_bytes: int = DEFAULT_MAX_BYTES,
    git: GitRules = GitRules(),
) -> str | None:
    """Puts the project's files in `dest` (which must not exist); returns the git commit, if any."""
    if source["type"] == "path":
        folder = check_local_path(source["path"], allowed_roots)
        copy_project(folder, dest, within=folder, max_bytes=max_bytes)
        return None
    return _git_checkout(
        source["url"],
        source.get("ref"),
        source.get("subdirectory"),
        dest,
        allowed_roots=allowed_roots,
        timeout=timeout,
        max_bytes=max_bytes,
        rules=git,
    )


def copy_project(src: Path, dest: Path, *, within: Path, max_bytes: int) -> None:
    """Copies the project folder `src` to `dest` (which must not exist) as plain files and folders.

    A link is copied as what it points to only if that lies inside `within` (the registered folder, or the
    repository's checkout); a link out of it (`models/x.sql -> /etc/passwd`, `-> /dev/zero`), a link loop and
    anything but files and folders are refused, and so is a project past `max_bytes`.
    """
    copy = _ProjectCopy(within.resolve(), max_bytes)
    copy.folder(src.resolve(), dest, PurePosixPath("."), (src.resolve(),))


class _ProjectCopy:
    """One copy_project: what its links may point into, and how many bytes it may still copy."""

    def __init__(self, within: Path, max_bytes: int) -> None:
        self.within = within
        self.max_bytes = max_bytes
        self.budget = max_bytes

    def file(self, source: Path, target: Path, relative: PurePosixPath) -> None:
        with open(source, "rb") as reader, open(target, "xb") as writer:
            while chunk := reader.read(min(1 << 20, self.budget + 1)):
                self.budget -= len(chunk)
                if self.budget < 0:
                    raise DbtProjectError(
                        f"The dbt project is larger than {self.max_bytes} bytes (RIME_DBT_PROJECT_MAX_BYTES) "
                        f"at {relative}."
                    )
                writer.write(chunk)

    def folder(self, source: Path, target: Path, relative: PurePosixPath, chain: tuple[Path, ...]) -> None:
        self.budget -= FOLDER_BYTES
        if self.budget < 0:
            raise DbtProjectError(
                f"The dbt project is larger than {self.max_bytes} bytes (RIME_DBT_PROJECT_MAX_BYTES)."
            )
        target.mkdir(parents=True)
        for entry in sorted(os.scandir(source), key=lambda e: e.name):
            if not any(fnmatch.fnmatch(entry.name, pattern) for pattern in _IGNORED):
                self.entry(entry, target, relative, chain)

    def entry(self, entry: os.DirEntry[str], target: Path, relative: PurePosixPath, chain: tuple[Path, ...]) -> None:
        path, inner = Path(entry.path), relative / entry.name
        real = path.resolve() if entry.is_symlink() else path
        if not real.is_relative_to(self.within):
            raise _refused(inner, "links outside the project")
        try:
            mode = real.stat().st_mode
        except OSError:
            raise _refused(inner, "is a broken link") from None
        if stat.S_ISDIR(mode):
            if real in chain:
                raise _refused(inner, "is a link loop")
            self.folder(real, target / entry.name, inner, (*chain, real))
        elif stat.S_ISREG(mode):
            self.file(real, target / entry.name, inner)
        else:
            raise DbtProjectError(f"{inner} is neither a file nor a folder.")


def _refused(relative: PurePosixPath, why: str) -> DbtProjectError:
    return DbtProjectError(f"{relative} {why}; links must stay inside the project.")


def _git(args: list[str], *, cwd: Path | None, timeout: float, rules: GitRules, config: Sequence[str] = ()) -> str:
    env = environment.allowed(names=("SSH_AUTH_SOCK",), passthrough=rules.env_passthrough)
    env.update(GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="true", GIT_CONFIG_NOSYSTEM="1")
    # Only the allowed transports, for the URL and for anything it refers to (ext::, submodules, alternates).
    protocols = ["protocol.allow=never", *(f"protocol.{scheme}.allow=always" for scheme in rules.schemes)]
    settings = [*protocols, "http.followRedirects=false", *config]
    try:
        done = subprocess.run(
            ["git", *(arg for item in settings for arg in ("-c", item)), *args],
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


_SCP_LIKE = re.compile(r"^(?:(?P<user>[^@/:\s]+)@)?(?P<host>[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\]):(?P<path>[^/].*|/.*)$")
_DEFAULT_PORTS = {"https": 443, "http": 80, "ssh": 22, "git": 9418}


@dataclass(frozen=True)
class GitLocation:
    """A git URL taken apart: its scheme, and its host and port, or its local path (scheme `file`)."""

    scheme: str
    host: str | None = None
    port: int | None = None
    path: Path | None = None


def git_location(url: str) -> GitLocation:
    """Where a git source URL points; DbtProjectError for anything but an absolute path, file://, http(s)://,
    ssh://, git:// or `user@host:path`."""
    if url.startswith("/"):
        return GitLocation("file", path=Path(url))
    if "://" in url:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise DbtProjectError("source.url: a file:// URL names no host.")
            return GitLocation("file", path=Path(unquote(parts.path)))
        if scheme in _DEFAULT_PORTS and parts.hostname:
            try:
                port = parts.port or _DEFAULT_PORTS[scheme]
            except ValueError:
                raise DbtProjectError("source.url has an invalid port.") from None
            return GitLocation(scheme, host=parts.hostname, port=port)
    elif "::" not in url and (match := _SCP_LIKE.match(url)):  # `transport::address` runs a remote helper
        return GitLocation("ssh", host=match["host"].strip("[]"), port=22)
    raise DbtProjectError(
        "source.url must be an https://, ssh://, git@host:path, http://, git:// or file:// URL, or an absolute path."
    )


def url_has_credentials(url: str) -> bool:
    """Whether the URL carries a secret: any userinfo of an http(s) URL (tokens are often the user name), a
    password elsewhere. `ssh://git@host` and `git@host:path` name a user, nothing secret."""
    parts = urlsplit(url) if "://" in url else None
    if parts is None or "@" not in parts.netloc:
        return False
    userinfo = parts.netloc.rsplit("@", 1)[0]
    return parts.scheme.lower() in ("http", "https") or ":" in userinfo


def redact_url(url: str) -> str:
    """The URL with the userinfo that carries a secret replaced by `***`."""
    if not url_has_credentials(url):
        return url
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def _local_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_link_local or ip.is_unspecified


def _checked_remote(location: GitLocation, rules: GitRules) -> list[str]:
    """Resolves the host; refuses loopback and link-local addresses (Dagster's GraphQL runs mutations over GET;
    cloud metadata services) unless allowed. Returns git settings pinning http(s) to the addresses checked."""
    try:
        infos = socket.getaddrinfo(location.host, location.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise DbtProjectError(f"source.url: the host {location.host} cannot be resolved.") from None
    addresses = sorted({str(info[4][0]) for info in infos})  # IPv4/IPv6 sockaddr: (host, port, ...)
    if not rules.allow_local_hosts and any(_local_address(a) for a in addresses):
        raise DbtProjectError(
            "source.url points at a loopback or link-local address, which git sources may not reach "
            "(RIME_DBT_GIT_ALLOW_LOCAL_HOSTS)."
        )
    if location.scheme not in ("http", "https"):
        return []
    # git (libcurl) would resolve the name again: it must connect to what was checked, not a new answer.
    pinned = ",".join(f"[{a}]" if ":" in a else a for a in addresses)
    return [f"http.curloptResolve={location.host}:{location.port}:{pinned}"]


def _git_checkout(
    url: str,
    ref: str | None,
    subdirectory: str | None,
    dest: Path,
    *,
    allowed_roots: list[Path],
    timeout: float,
    max_bytes: int,
    rules: GitRules,
) -> str:
    location = git_location(url)
    if location.scheme not in rules.schemes:
        allowed = ", ".join(rules.schemes) or "none"
        raise DbtProjectError(
            f"source.url: {location.scheme} sources are not allowed here (RIME_DBT_GIT_SCHEMES: {allowed})."
        )
    config: list[str] = []
    if location.path is not None:
        url = str(_confined(location.path, allowed_roots, "source.url"))
    else:
        config = _checked_remote(location, rules)
    checkout = dest.parent / f"{dest.name}.git-checkout"
    shutil.rmtree(checkout, ignore_errors=True)
    try:
        _git(["clone", "--quiet", "--", url, str(checkout)], cwd=None, timeout=timeout, rules=rules, config=config)
        if ref:
            _git(["checkout", "--quiet", "--detach", ref, "--"], cwd=checkout, timeout=timeout, rules=rules)
        sha = _git(["rev-parse", "HEAD"], cwd=checkout, timeout=timeout, rules=rules)
        folder = (checkout / (subdirectory or "")).resolve()
        if not folder.is_relative_to(checkout.resolve()) or not (folder / "dbt_project.yml").is_file():
            where = f"subdirectory '{subdirectory}'" if subdirectory else "the repository root"
            raise DbtProjectError(f"No dbt_project.yml in {where} at {sha[:12]}.")
        copy_project(folder, dest, within=checkout, max_bytes=max_bytes)
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


def dbt_env(settings: Settings | None = None, password: str | None = None) -> dict[str, str]:
    """The environment of a dbt process. dbt runs the project's code, which can print any variable it sees (a
    model's `env_var()` ends up in a parse error or a description viewers read), so it gets an allow-list: no
    platform secret nor any RIME_* setting, the `DBT_*` variables projects read, RIME_ENV_PASSTHROUGH, and the
    password of its own target only (never through os.environ)."""
    settings = settings or get_settings()
    env = environment.allowed(prefixes=("DBT_",), passthrough=settings.env_passthrough)
    for name in ("DBT_PROFILES_DIR", "DBT_PROJECT_DIR", "DBT_TARGET_PATH", "DBT_LOG_PATH"):
        env.pop(name, None)
    # No RIME_* setting: the run worker looks the connector tables up in the Iceberg catalog for dbt (whose
    # settings may hold the catalog's password), see duckdb_plugin.
    env.update(DBT_SEND_ANONYMOUS_USAGE_STATS="false", DBT_NO_VERSION_CHECK="true", PYTHONUNBUFFERED="1")
    if password is not None:
        env[PASSWORD_ENV] = password
    return env


def sandbox_policy(
    settings: Settings,
    files: ProjectFiles,
    *,
    duckdb_file: Path,
    target: Mapping[str, Any],
    tables: Sequence[str] = (),
) -> sandbox.Policy | None:
    """The sandbox of a dbt process working on `files` and reading the Iceberg tables `tables` (metadata
    locations) (rime_dagster/dbt/sandbox.py); None with RIME_DBT_SANDBOX=off."""
    if settings.dbt_sandbox == "off":
        return None
    folders = [files.root, duckdb_file.parent]
    try:
        return sandbox.dbt_policy(settings, folders=folders, tables=tables, target=target)
    except sandbox.SandboxUnavailable as exc:
        raise DbtProjectError(str(exc)) from None


def run_dbt(
    files: ProjectFiles,
    args: list[str],
    *,
    timeout: float,
    confine: sandbox.Policy | None,
    env: Mapping[str, str] | None = None,
    target_path: Path | None = None,
) -> None:
    """Runs `dbt <args>` on a revision with JSON logs (environment: `env`, default `dbt_env()`), confined by
    `confine` (`sandbox_policy`); DbtProjectError carries dbt's error messages."""
    target = target_path or files.target_dir
    dbt_args = [
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
    process_env = dict(env) if env is not None else dbt_env()
    if args[0] == "parse":  # forked from a warm dbt when one is ready (rime_dagster/dbt/parse_template.py)
        try:
            forked = parse_template.TEMPLATE.run(
                dbt_args,
                cwd=files.project_dir,
                env=process_env,
                policy_json=confine.to_json() if confine is not None else None,
                timeout=timeout,
                template_env=dbt_env(),
            )
        except parse_template.ParseTimeout:
            raise DbtProjectError(f"dbt {args[0]} did not finish within {timeout:.0f}s.") from None
        if forked is not None:
            if forked.returncode != 0:
                raise DbtProjectError(f"dbt {args[0]} failed: {dbt_errors(forked.output)}")
            return
    try:
        done = subprocess.run(
            [*sandbox.command(confine, [dbt_executable()]), *dbt_args],
            cwd=files.project_dir,
            env=process_env,
            capture_output=True,
            text=True,
            timeout=timeout,
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


def parse(
    files: ProjectFiles,
    *,
    vars: Mapping[str, Any],
    timeout: float,
    confine: sandbox.Policy | None,
    env: Mapping[str, str] | None = None,
) -> Path:
    """`dbt deps` (when the project declares packages) then `dbt parse`; returns the manifest path."""
    if (files.project_dir / "packages.yml").exists() or (files.project_dir / "dependencies.yml").exists():
        run_dbt(files, ["deps"], timeout=timeout, confine=confine, env=env)
    args = ["parse"]  # writes partial_parse.msgpack, which each run starts from
    if vars:
        args += ["--vars", json.dumps(dict(vars))]
    run_dbt(files, args, timeout=timeout, confine=confine, env=env)
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
