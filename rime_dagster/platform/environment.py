"""What the processes Rime starts inherit from its environment: an allow-list, never the whole environment.

The platform's secrets (RIME_ADMIN_TOKEN, RIME_SECRET_KEY, RIME_DATABASE_URL, a dbt target's password) are
added by the caller only for the processes that need them; whatever else the operator's shell holds reaches a
child only when RIME_ENV_PASSTHROUGH names it. See "Trust model" in the README.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Mapping

# What any program needs to run as the platform's user: where things are, language, time zone, CA certificates.
SYSTEM_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "VIRTUAL_ENV",
        "PYTHONPATH",
        "PYTHONUNBUFFERED",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONIOENCODING",
        "PYTHONUTF8",
    }
)
SYSTEM_PREFIXES = ("LC_",)


def allowed(
    environ: Mapping[str, str] | None = None,
    *,
    names: Iterable[str] = (),
    prefixes: tuple[str, ...] = (),
    passthrough: Iterable[str] = (),
) -> dict[str, str]:
    """The variables of `environ` (default: this process's) that are system ones, in `names`, start with one of
    `prefixes`, or match a RIME_ENV_PASSTHROUGH pattern (a name, or `PREFIX_*`)."""
    environ = os.environ if environ is None else environ
    wanted = SYSTEM_NAMES | set(names)
    starts = SYSTEM_PREFIXES + prefixes
    patterns = list(passthrough)
    return {
        name: value
        for name, value in environ.items()
        if name in wanted or name.startswith(starts) or any(fnmatch.fnmatchcase(name, p) for p in patterns)
    }
