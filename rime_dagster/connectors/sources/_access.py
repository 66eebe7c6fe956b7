"""What connector sources may reach on the server: the folders path sources read, the hosts network sources
connect to (issue 11).

The API checks a connector's config against it when the connector is created or changed (a 400 naming the
field), and the source checks again each time it opens a path or a connection, in the API and in run
workers alike: a file swapped for a symlink, or a host name that resolves elsewhere, after validation is
caught there. Paths are compared with every symlink resolved, and the resolved path is what gets opened.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rime_dagster.connectors.sources.base import AccessRefused

if TYPE_CHECKING:
    from rime_dagster.settings import Settings

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# The kernel's views of processes, devices and itself: never readable, whatever RIME_CONNECTOR_PATH_ROOTS says.
SYSTEM_FOLDERS = (Path("/proc"), Path("/sys"), Path("/dev"))


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(path))


def _sqlite_file(url: str) -> Path | None:
    """The database file of a SQLAlchemy SQLite URL (None for other databases)."""
    from sqlalchemy.engine import make_url

    if not url.startswith("sqlite"):
        return None
    database = make_url(url).database
    return Path(database) if database and database != ":memory:" else None


def is_unix_socket(host: str) -> bool:
    """libpq reads a host starting with `/` as a socket folder, and `@` as an abstract socket."""
    return host.startswith(("/", "@"))


@dataclass(frozen=True)
class SourceAccess:
    # Resolved folders a configured path must lie in (RIME_CONNECTOR_PATH_ROOTS).
    path_roots: tuple[Path, ...] = ()
    # The connector's own upload area, resolved: always readable, although it lies in RIME_HOME.
    own_area: Path | None = None
    # Resolved paths never readable, nor any folder holding one, with what they are (for messages).
    off_limits: tuple[tuple[Path, str], ...] = ()
    hosts_deny: tuple[IPNetwork, ...] = ()
    allow_unix_sockets: bool = False

    @classmethod
    def from_settings(cls, settings: Settings, upload_dir: Path | None) -> SourceAccess:
        """The deployment's rules for one connector (`upload_dir`: its upload area)."""
        off_limits = [
            (settings.home, "the platform's home (RIME_HOME)"),  # secret.key, admin-token, uploads, warehouse
            (settings.dagster_home_path, "Dagster's home"),
        ]
        iceberg = settings.iceberg_properties
        warehouse = iceberg.get("warehouse", "")
        for what, path in (
            ("the metadata store", _sqlite_file(settings.metadata_url)),
            ("the Iceberg catalog", _sqlite_file(iceberg.get("uri", ""))),
            ("the Iceberg warehouse", Path(warehouse[7:]) if warehouse.startswith("file://") else None),
        ):
            if path is not None:
                off_limits.append((path, what))
        off_limits += [(folder, f"the system folder {folder}") for folder in SYSTEM_FOLDERS]
        return cls(
            path_roots=tuple(_real(root) for root in settings.connector_path_roots),
            own_area=_real(upload_dir) if upload_dir is not None else None,
            off_limits=tuple((_real(path), what) for path, what in off_limits),
            hosts_deny=tuple(settings.connector_hosts_deny),
            allow_unix_sockets=settings.connector_allow_unix_sockets,
        )

    # -- paths ------------------------------------------------------------------------------------

    def _path_refusal(self, real: Path) -> str | None:
        if self.own_area is not None and real.is_relative_to(self.own_area):
            return None
        for area, what in self.off_limits:
            if real.is_relative_to(area):
                return f"inside {what}, which connectors may not read"
            if area.is_relative_to(real):
                return f"a folder holding {what}, which connectors may not read"
        if not any(real.is_relative_to(root) for root in self.path_roots):
            return "outside the folders connectors may read (RIME_CONNECTOR_PATH_ROOTS)"
        return None

    def confine(self, path: str | os.PathLike, *, field: str, shown: str | None = None) -> Path:
        """`path` with every symlink resolved, which is what to open; AccessRefused when it is off limits.

        `shown` names the path in the message (default: as configured), so a link's target is never shown.
        """
        real = _real(path)
        reason = self._path_refusal(real)
        if reason is None:
            return real
        name = shown or f"'{path}'"
        verb = "is" if real == Path(os.path.abspath(path)) else "leads to a place"
        raise AccessRefused(field, f"{name} {verb} {reason}.")

    # -- hosts ------------------------------------------------------------------------------------

    def addresses(self, host: str, port: int | None = None, *, field: str) -> list[str] | None:
        """The addresses to connect to, all outside RIME_CONNECTOR_HOSTS_DENY; None when there is no deny
        list (the driver resolves the name itself) and [] when the name does not resolve.

        AccessRefused for a Unix socket (unless allowed) or a name with any denied address.
        """
        if is_unix_socket(host):
            if self.allow_unix_sockets:
                return None
            raise AccessRefused(
                field,
                f"Host '{host}' is a Unix socket, which connectors may not use (RIME_CONNECTOR_ALLOW_UNIX_SOCKETS).",
            )
        if not self.hosts_deny:
            return None
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            return []
        addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%")[0])  # IPv6 scope ids: fe80::1%eth0
            candidates = [ip, ip.ipv4_mapped] if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else [ip]
            if any(candidate in network for candidate in candidates for network in self.hosts_deny):
                raise AccessRefused(
                    field,
                    f"Host '{host}' resolves to an address connectors may not reach (RIME_CONNECTOR_HOSTS_DENY).",
                )
        return addresses
