"""dbt runs the project's code (SQL that DuckDB executes, Python models) confined by Linux Landlock.

Data engineers may run code, as DAG authors do in Airflow, but no role below admin may read the platform's
secrets or another project's data (README, "Trust model"). dbt runs as the platform's OS user, so without a
sandbox `select * from read_text('.rime/secret.key')` in a model, or `open()` in a Python model, reads them.

Every dbt process (parse in the API, runs in Dagster's run workers) is started as
`python -m rime_dagster.dbt.sandbox <policy> <dbt> <args...>`: the wrapper restricts itself with Landlock (an
unprivileged Linux security module; kernel 5.13 and later), then execs dbt, which inherits the restriction and
cannot lift it. The policy (`dbt_policy`) lets dbt

* read and execute the system (`/usr`, the libraries, a few files of `/etc`), the Python installation and the
  installed packages, and read Rime's own packages (the DuckDB plugin); list, not read, the other folders on
  `sys.path`;
* read, write and create only in its dbt project's folder (revisions, run artifacts) and its Rime project's DuckDB
  warehouse folder (both under `RIME_HOME/dbt/<project id>`), with its HOME and TMPDIR in the first;
* read its project's connector tables in the Iceberg warehouse, not the catalog (the run worker looks them up for
  it: duckdb_plugin);
* connect over TCP only to its target's PostgreSQL port, none for DuckDB;
* where the kernel can (Landlock ABI 6), signal no process outside its own sandbox.

Anything else (`RIME_HOME`'s secret key, admin token and metadata store, other projects' warehouses and Iceberg
tables, `/proc/<pid>/environ` of the platform's processes, Dagster's unauthenticated GraphQL on loopback) fails
with "permission denied". RIME_DBT_SANDBOX=off runs dbt unconfined, for kernels without Landlock: data
engineers can then read whatever the platform's OS user can.
"""

from __future__ import annotations

import ctypes
import json
import os
import site
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from rime_dagster.settings import Settings

# Landlock's kernel interface (include/uapi/linux/landlock.h); the syscall numbers are the same on every
# architecture that has them.
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH, _RULE_NET_PORT = 1, 2
_PR_SET_NO_NEW_PRIVS = 38

EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1

FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
READ = EXECUTE | READ_FILE | READ_DIR
WRITE = (1 << 16) - 1  # every filesystem right (masked by what the kernel knows)

# The files of /etc that Python, dbt, DuckDB and libpq read: names, certificates, time zone, the loader.
ETC_FILES = (
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/passwd",
    "/etc/group",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/os-release",
    "/etc/mime.types",
    "/etc/services",
    "/etc/protocols",
)
SYSTEM_ROOTS = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin")
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
# POSIX semaphores (dbt's adapters take a multiprocessing lock) are files here. Other programs' shared memory
# there belongs to their own OS users (PostgreSQL's is 0600 postgres), out of the platform user's reach anyway.
SHARED_MEMORY = "/dev/shm"
PROC_FILES = ("/proc/meminfo", "/proc/cpuinfo", "/proc/stat", "/proc/filesystems")
SYS_ROOTS = ("/sys/fs/cgroup", "/sys/devices/system/cpu")


class SandboxUnavailable(RuntimeError):
    """The kernel cannot confine dbt (no Landlock)."""


@dataclass(frozen=True)
class Policy:
    """What a dbt process may touch: paths by right, TCP ports it may connect to (None: any), environment."""

    read: list[str] = field(default_factory=list)  # read and execute, files and folders beneath
    list_only: list[str] = field(default_factory=list)  # list the folder's entries, read nothing in it
    write: list[str] = field(default_factory=list)  # everything beneath
    tcp_connect: list[int] | None = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Policy:
        return cls(**json.loads(text))


def abi_version() -> int:
    """Landlock's ABI version, 0 when the kernel has none (or forbids it)."""
    if not sys.platform.startswith("linux"):
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    version = libc.syscall(_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(0, version)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPortAttr(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


def _fs_rights(abi: int) -> int:
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


def restrict(policy: Policy) -> int:
    """Confines this process (and whatever it execs or starts) to `policy`; returns the Landlock ABI used."""
    abi = abi_version()
    if abi < 1:
        raise SandboxUnavailable(
            "dbt runs confined by Linux Landlock (kernel 5.13 or later), which this machine does not offer. "
            "Set RIME_DBT_SANDBOX=off to run dbt unconfined (data engineers can then read the platform's files)."
        )
    libc = ctypes.CDLL(None, use_errno=True)
    attr, size = _ruleset_attr(abi, policy)
    ruleset = libc.syscall(_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise _os_error("landlock_create_ruleset")
    try:
        _add_rules(libc, ruleset, policy, attr)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0:
            raise _os_error("prctl(PR_SET_NO_NEW_PRIVS)")
        if libc.syscall(_RESTRICT_SELF, ruleset, ctypes.c_uint32(0)) < 0:
            raise _os_error("landlock_restrict_self")
    finally:
        os.close(ruleset)
    return abi


def _ruleset_attr(abi: int, policy: Policy) -> tuple[_RulesetAttr, int]:
    """The ruleset's handled rights for this ABI, and the size of the attribute struct that ABI reads."""
    attr = _RulesetAttr(handled_access_fs=_fs_rights(abi))
    size = 8
    if abi >= 4 and policy.tcp_connect is not None:
        attr.handled_access_net = NET_BIND_TCP | NET_CONNECT_TCP
        size = 16
    if abi >= 6:
        attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
        size = 24
    return attr, size


def _add_rules(libc: ctypes.CDLL, ruleset: int, policy: Policy, attr: _RulesetAttr) -> None:
    for paths, rights in ((policy.read, READ), (policy.list_only, READ_DIR), (policy.write, WRITE)):
        for path in paths:
            _allow_path(libc, ruleset, path, rights & attr.handled_access_fs)
    if attr.handled_access_net:
        for port in policy.tcp_connect or ():
            rule = _NetPortAttr(allowed_access=NET_CONNECT_TCP, port=port)
            if libc.syscall(_ADD_RULE, ruleset, _RULE_NET_PORT, ctypes.byref(rule), ctypes.c_uint32(0)) < 0:
                raise _os_error(f"landlock_add_rule(port {port})")


def _allow_path(libc: ctypes.CDLL, ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # an optional path this machine lacks
    try:
        if not os.path.isdir(path):
            rights &= FILE_RIGHTS
            if not rights:
                return
        rule = _PathBeneathAttr(allowed_access=rights, parent_fd=fd)
        if libc.syscall(_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), ctypes.c_uint32(0)) < 0:
            raise _os_error(f"landlock_add_rule({path})")
    finally:
        os.close(fd)


def _os_error(call: str) -> OSError:
    errno = ctypes.get_errno()
    return OSError(errno, f"{call}: {os.strerror(errno)}")


# The policy of a dbt process ---------------------------------------------------------------------------------


def _python_roots() -> list[str]:
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    roots.add(str(Path(sys.executable).resolve().parent.parent))
    roots.update(site.getsitepackages())
    return sorted(roots)


def _package_dirs() -> list[str]:
    """Rime's core package, which dbt imports for its DuckDB plugin (wherever it is installed from)."""
    import rime_dagster

    return [str(Path(rime_dagster.__file__).resolve().parent)]


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def dbt_policy(
    settings: Settings, *, folders: Sequence[Path], tables: Sequence[str] = (), target: Mapping[str, Any]
) -> Policy:
    """The sandbox of a dbt process that works in `folders` (the dbt project's, then its DuckDB warehouse's: both
    under `RIME_HOME/dbt/<project id>`) and reads the Iceberg tables whose current metadata files are `tables`
    (its project's connector tables, as the run worker found them in the catalog)."""
    home = settings.home.resolve()
    own = [Path(folder).resolve() for folder in folders]
    for folder in (*own, own[0] / ".home", own[0] / ".tmp"):
        folder.mkdir(parents=True, exist_ok=True)
    read = [*SYSTEM_ROOTS, *ETC_FILES, *PROC_FILES, *SYS_ROOTS, *_python_roots(), *_package_dirs()]
    # RIME_HOME inside a folder dbt may read or write is a configuration error, not something to hand out.
    roots: list[str | Path] = [*read, *own]
    for root in roots:
        resolved = Path(root).resolve()
        if _inside(home, resolved):
            raise SandboxUnavailable(f"RIME_HOME ({home}) lies inside {resolved}, which dbt may read; move it.")
    tcp: list[int] | None = []
    for location in tables:
        if location.startswith("file:") or location.startswith("/"):
            # <table>/metadata/<version>.metadata.json: the table's folder holds its metadata and data files.
            read.append(str(Path(urlsplit(location).path if location.startswith("file:") else location).parent.parent))
        else:
            tcp = None  # object storage: DuckDB reaches it over HTTPS, wherever it is
    listed = sorted({str(Path(p).resolve()) for p in sys.path if p and Path(p).is_dir()} - {"/"})
    if target.get("adapter", "duckdb") == "postgres" and tcp is not None:
        tcp.append(int(target.get("port") or 5432))
    return Policy(
        read=read,
        list_only=listed,
        write=[*(str(folder) for folder in own), *DEVICES, SHARED_MEMORY],
        tcp_connect=tcp,
        env={"HOME": str(own[0] / ".home"), "TMPDIR": str(own[0] / ".tmp")},
    )


def command(policy: Policy | None, dbt: Sequence[str]) -> list[str]:
    """`dbt` (an argv) started in `policy`'s sandbox; unchanged when `policy` is None (RIME_DBT_SANDBOX=off)."""
    if policy is None:
        return list(dbt)
    return [sys.executable, "-m", "rime_dagster.dbt.sandbox", policy.to_json(), *dbt]


def main(argv: Sequence[str]) -> None:
    if len(argv) < 2:
        sys.exit("usage: python -m rime_dagster.dbt.sandbox <policy json> <program> [args...]")
    policy = Policy.from_json(argv[0])
    # Its own /proc entry: the exec keeps the pid, so the wrapper's is dbt's. No other process's.
    policy.read.append(f"/proc/{os.getpid()}")
    try:
        restrict(policy)
    except (SandboxUnavailable, OSError) as exc:
        print(f"Rime could not start dbt in its sandbox: {exc}", file=sys.stderr, flush=True)
        sys.exit(126)
    os.environ.update(policy.env)
    os.execv(argv[1], list(argv[1:]))


if __name__ == "__main__":
    main(sys.argv[1:])
