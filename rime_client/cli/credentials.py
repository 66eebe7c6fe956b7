"""Where the CLI finds the API and its token: `--url/--token`, else $RIME_URL/$RIME_TOKEN, else what `rime login`
stored in the credentials file ($RIME_CONFIG_DIR/credentials.json, else ~/.config/rime/credentials.json; 0600 in a
0700 directory)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


class NotConfigured(Exception):
    """No API URL from any source: a usage error (exit 2)."""


@dataclass(frozen=True)
class Target:
    url: str
    token: str | None


def config_dir(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    if environ.get("RIME_CONFIG_DIR"):
        return Path(environ["RIME_CONFIG_DIR"])
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "rime"


def credentials_path(environ: Mapping[str, str] | None = None) -> Path:
    return config_dir(environ) / "credentials.json"


def _same_api(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def load() -> dict[str, str]:
    """The stored {url, token}, or {} when there is none (or it cannot be read)."""
    try:
        stored = json.loads(credentials_path().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(stored, dict):
        return {}
    return {k: v for k, v in stored.items() if k in ("url", "token") and isinstance(v, str)}


def resolve(url: str | None, token: str | None) -> Target:
    """The API and token a command uses. The stored token goes only to the stored URL: a `--url` or $RIME_URL naming
    another server never receives it."""
    stored = load()
    url = url or os.environ.get("RIME_URL") or stored.get("url")
    if not url:
        raise NotConfigured("No API to talk to: run `rime login --url URL`, or pass --url, or set RIME_URL.")
    token = token or os.environ.get("RIME_TOKEN")
    if token is None and stored.get("token") and _same_api(url, stored.get("url", "")):
        token = stored["token"]
    return Target(url.rstrip("/"), token)


def save(url: str, token: str) -> Path:
    """Writes {url, token} to the credentials file: 0600 from its first byte, replaced whole (a reader never sees half
    of it), in a directory made 0700 (one that exists, e.g. a $RIME_CONFIG_DIR of the user's, keeps its mode)."""
    path = credentials_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".credentials-")  # created 0600
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump({"url": url.rstrip("/"), "token": token}, handle)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return path


def remove() -> Path | None:
    """Deletes the credentials file; its path, or None when there was none."""
    path = credentials_path()
    try:
        path.unlink()
    except FileNotFoundError:
        return None
    return path
