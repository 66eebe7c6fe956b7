"""`storage_location`: a folder on the server, or a bucket on an S3-compatible store (boto3), that exists.

Config: `{kind: "local", path}` or `{kind: "s3", bucket, prefix?, endpoint_url?, region?, access_key_id,
secret_access_key}`. One flat model validated per field by the interface, then per kind here (a field the kind
does not take, or one it needs, is a ConfigInvalid naming it); the two keys are secrets (stored encrypted, handed
over in `Declared.secrets`, and scrubbed from every message).

Local folders are confined like connectors' paths (connectors/sources/_access.py): every symlink resolved, the
result must lie in the project's own area RIME_HOME/storage/<namespace> (where a relative `path` lands) or in one
of RIME_INFRA_STORAGE_ROOTS, and nowhere else in RIME_HOME (the metadata store, the secret key, the warehouse).
Settings are the deployment's, not the declaration's, so the check runs at every read and change: a path that is
(or became) off limits raises LocationRefused, a ConfigInvalid on `config.path` that is also a ProviderError, so
the plan reports it for that resource like any failure to read.

State compared: local `{kind, path, writable}` (a folder made read-only behind the platform's back is an update,
which gives the platform's user write access back); s3 `{kind, bucket, prefix, endpoint_url, region}` where the
bucket's existence is read (HEAD) and `prefix` is the declared one only while its zero-byte `<prefix>/` marker
exists (a deleted marker is an update that puts it back). The region of an existing bucket is not compared:
moving a bucket is not something a plan can do.

Delete removes what the location is, the folder or the bucket, only when it is empty (the prefix marker aside):
data is never deleted by a plan, a non-empty location is a ProviderError saying so.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field

from rime_dagster.connectors.sources._access import SourceAccess
from rime_dagster.connectors.sources.base import AccessRefused
from rime_dagster.infrastructure.providers.base import (
    ConfigInvalid,
    Declared,
    Provider,
    ProviderError,
    State,
    StrictModel,
    Target,
    register,
)

# Which optional fields each kind takes, and which it needs.
KIND_FIELDS = {
    "local": ({"path"}, {"path"}),
    "s3": (
        {"bucket", "prefix", "endpoint_url", "region", "access_key_id", "secret_access_key"},
        {"bucket", "access_key_id", "secret_access_key"},
    ),
}
SECRETS = frozenset({"access_key_id", "secret_access_key"})


class StorageConfig(StrictModel):
    kind: Literal["local", "s3"]
    path: str | None = Field(None, min_length=1, description="local: absolute, or relative to the project's area.")
    bucket: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    prefix: str | None = Field(None, pattern=r"^[A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*/?$")
    endpoint_url: str | None = Field(None, pattern=r"^https?://[^\s/?#]+/?$", description="s3: default AWS.")
    region: str | None = Field(None, pattern=r"^[a-z0-9-]{1,40}$")
    access_key_id: str | None = Field(None, min_length=1)
    secret_access_key: str | None = Field(None, min_length=1)


class LocationRefused(ConfigInvalid, ProviderError):
    """A local path off limits for this deployment: a declaration error, seen when the provider reaches it."""

    def __init__(self, message: str):
        super().__init__([{"field": "config.path", "message": message}])


@register
class StorageLocation(Provider):
    resource_type = "storage_location"
    config_model = StorageConfig
    secret_fields = SECRETS
    level = 0
    description = "A local folder or an S3-compatible bucket (with an optional prefix) that exists."

    def validate(self, config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        stored, secrets = super().validate(config)
        takes, needs = KIND_FIELDS[stored["kind"]]
        given = {key for key, value in {**stored, **secrets}.items() if value is not None} - {"kind"}
        details = [
            {"field": f"config.{key}", "message": f"Not a field of a {stored['kind']} location."}
            for key in sorted(given - takes)
        ] + [{"field": f"config.{key}", "message": "Field required."} for key in sorted(needs - given)]
        if details:
            raise ConfigInvalid(details)
        if stored.get("prefix"):
            stored["prefix"] = stored["prefix"].rstrip("/")
        return {key: value for key, value in stored.items() if value is not None}, secrets

    def desired(self, resource: Declared) -> State:
        if resource.config["kind"] == "local":
            return {"kind": "local", "path": resource.config["path"], "writable": True}
        return {key: resource.config.get(key) for key in ("kind", "bucket", "prefix", "endpoint_url", "region")}

    def read_actual(self, target: Target, resource: Declared) -> State | None:
        if resource.config["kind"] == "local":
            folder = local_folder(target, resource.config["path"])
            if not folder.exists():
                return None
            if not folder.is_dir():
                raise ProviderError(f"'{resource.config['path']}' exists and is not a folder.")
            return {**self.desired(resource), "writable": os.access(folder, os.W_OK | os.X_OK)}
        bucket = _Bucket(target, resource)
        if not bucket.exists():
            return None
        prefix = resource.config.get("prefix")
        return {**self.desired(resource), "prefix": prefix if prefix and bucket.has(f"{prefix}/") else None}

    def create(self, target: Target, resource: Declared) -> None:
        if resource.config["kind"] == "local":
            folder = local_folder(target, resource.config["path"])
            _os(lambda: folder.mkdir(parents=True, exist_ok=True), f"Could not create '{resource.config['path']}'")
            return
        bucket = _Bucket(target, resource)
        bucket.create()
        if resource.config.get("prefix"):
            bucket.put_marker(f"{resource.config['prefix']}/")

    def update(self, target: Target, resource: Declared, actual: State) -> None:
        if resource.config["kind"] == "local":
            folder = local_folder(target, resource.config["path"])
            if not actual.get("writable"):
                _os(
                    lambda: folder.chmod(folder.stat().st_mode | 0o700),
                    f"Could not make '{resource.config['path']}' writable",
                )
            return
        if resource.config.get("prefix"):
            _Bucket(target, resource).put_marker(f"{resource.config['prefix']}/")

    def delete(self, target: Target, resource: Declared) -> None:
        if resource.config["kind"] == "local":
            folder = local_folder(target, resource.config["path"])
            if folder.is_dir():
                _os(folder.rmdir, f"Could not delete '{resource.config['path']}'")
            return
        prefix = resource.config.get("prefix")
        _Bucket(target, resource).delete_if_empty(f"{prefix}/" if prefix else None)


def local_folder(target: Target, path: str) -> Path:
    """The folder `path` names, every symlink resolved; LocationRefused when it lies off limits."""
    settings = target.settings
    own_area = Path(os.path.realpath(settings.home / "storage" / target.namespace))
    real = Path(os.path.realpath(own_area / path))  # an absolute path replaces own_area
    roots = (own_area, *(Path(os.path.realpath(root)) for root in settings.infra_storage_roots))
    if not any(real.is_relative_to(root) for root in roots):
        raise LocationRefused(f"'{path}' is outside the project's storage area and RIME_INFRA_STORAGE_ROOTS.")
    if real.is_relative_to(own_area):
        return real
    # What connectors may never read (RIME_HOME, Dagster's home, the metadata store, the catalog, the warehouse,
    # /proc...) no storage location may be, hold, or lie in either.
    for area, what in SourceAccess.from_settings(settings, None).off_limits:
        if real.is_relative_to(area) or area.is_relative_to(real):
            raise LocationRefused(f"'{path}' lies in or holds {what}, where storage locations may not be made.")
    return real


def _os(work: Callable[[], object], failed: str) -> None:
    try:
        work()
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise ProviderError(f"{failed}: it is not empty.") from None
        raise ProviderError(f"{failed}: {exc.strerror or type(exc).__name__}.") from None


class _Bucket:
    """One declared bucket through boto3; every failure a ProviderError with the secrets scrubbed."""

    def __init__(self, target: Target, resource: Declared):
        import boto3
        from botocore.config import Config

        config, self.secrets = resource.config, [str(value) for value in resource.secrets.values()]
        self.name, endpoint = config["bucket"], config.get("endpoint_url")
        self.region = config.get("region")
        if endpoint:
            host = urlsplit(endpoint)
            access = SourceAccess(hosts_deny=tuple(target.settings.connector_hosts_deny))
            try:
                access.addresses(host.hostname or "", host.port, field="config.endpoint_url")
            except AccessRefused as exc:
                raise ProviderError(str(exc)) from None
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=self.region or "us-east-1",
            aws_access_key_id=resource.secrets.get("access_key_id"),
            aws_secret_access_key=resource.secrets.get("secret_access_key"),
            config=Config(
                connect_timeout=5,
                read_timeout=30,
                retries={"max_attempts": 2, "mode": "standard"},
                s3={"addressing_style": "path"} if endpoint else None,
            ),
        )

    def _call(self, operation: str, *, missing_ok: bool = False, **kwargs: Any) -> dict[str, Any] | None:
        """The client's `operation`; None for a 404 when `missing_ok`, any other failure a ProviderError."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, operation)(**kwargs)
        except ClientError as exc:
            if missing_ok and exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            error = exc.response.get("Error", {})
            message = f"S3 refused {operation} on bucket '{self.name}': {error.get('Code')}: {error.get('Message')}"
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 403:
                message += " (check the access key and secret, and what they may do on this bucket)"
        except BotoCoreError as exc:
            message = f"S3 {operation} on bucket '{self.name}' failed: {exc}"
        for secret in self.secrets:
            message = message.replace(secret, "***")
        raise ProviderError(message)

    def exists(self) -> bool:
        return self._call("head_bucket", missing_ok=True, Bucket=self.name) is not None

    def has(self, key: str) -> bool:
        return self._call("head_object", missing_ok=True, Bucket=self.name, Key=key) is not None

    def create(self) -> None:
        if self.exists():
            return
        where: dict[str, Any] = {}
        if self.region not in (None, "us-east-1"):  # us-east-1 is S3's default and refused as a constraint
            where["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        self._call("create_bucket", Bucket=self.name, **where)

    def put_marker(self, key: str) -> None:
        self._call("put_object", Bucket=self.name, Key=key, Body=b"")

    def delete_if_empty(self, marker: str | None) -> None:
        """The bucket (and the prefix marker) when it holds nothing else; ProviderError when it does."""
        if not self.exists():
            return
        listed = (self._call("list_objects_v2", Bucket=self.name, MaxKeys=2) or {}).get("Contents", [])
        keys = [item["Key"] for item in listed]
        if any(key != marker for key in keys):
            raise ProviderError(f"Bucket '{self.name}' is not empty: a storage location is deleted only when empty.")
        if keys:
            self._call("delete_object", Bucket=self.name, Key=marker)
        self._call("delete_bucket", Bucket=self.name)
