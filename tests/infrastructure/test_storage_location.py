"""The storage_location provider: local folders on tmp_path, confined like connectors' paths, and buckets on moto's
S3-compatible HTTP server started here on a loopback port (boto3 talks HTTP to it; nothing of ours is mocked).
Created, read back as a no-op, deleted behind the platform's back and planned as create again, refused when not
empty, and failures that never quote the credentials."""

from __future__ import annotations

import os
import socket
import uuid

import boto3
import pytest
from moto.core.authorization import enable_iam_authentication
from moto.server import ThreadedMotoServer

from rime_dagster.infrastructure.providers import ConfigInvalid, Declared, ProviderError, Target, provider
from tests.conftest import closed_port, make_settings
from tests.support.infrastructure import declared as declared_as
from tests.support.infrastructure import no_catalog, plan

LOCATION = provider("storage_location")
KEY_ID, SECRET = "AKIDEXAMPLE0001", "s3cr3t-never-shown-0001"


def declared(config: dict, name: str = "landing") -> Declared:
    return declared_as("storage_location", name, config)


@pytest.fixture
def target(tmp_path) -> Target:
    roots = tmp_path / "lake"
    roots.mkdir()
    return Target("proj_1", "proj", make_settings(tmp_path, infra_storage_roots=[roots]), no_catalog)


@pytest.fixture(scope="module")
def s3_endpoint():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def s3(endpoint: str):
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET
    )


def bucket_config(endpoint: str, **extra) -> dict:
    bucket = f"rime-{uuid.uuid4().hex[:12]}"
    return {
        "kind": "s3",
        "bucket": bucket,
        "endpoint_url": endpoint,
        "access_key_id": KEY_ID,
        "secret_access_key": SECRET,
        **extra,
    }


class TestConfig:
    def test_secrets_are_kept_apart_and_fields_checked_per_kind(self):
        stored, secrets = LOCATION.validate(bucket_config("http://127.0.0.1:9000", prefix="raw/events/"))
        assert secrets == {"access_key_id": KEY_ID, "secret_access_key": SECRET}
        assert stored["prefix"] == "raw/events" and SECRET not in str(stored)
        with pytest.raises(ConfigInvalid) as refused:
            LOCATION.validate({"kind": "local", "path": "x", "bucket": "b-1"})
        assert refused.value.details == [{"field": "config.bucket", "message": "Not a field of a local location."}]
        with pytest.raises(ConfigInvalid) as refused:
            LOCATION.validate({"kind": "s3", "bucket": "Not_A_Bucket"})
        assert {d["field"] for d in refused.value.details} == {"config.bucket"}
        with pytest.raises(ConfigInvalid) as refused:
            LOCATION.validate({"kind": "s3", "bucket": "good-bucket"})
        assert {d["field"] for d in refused.value.details} == {"config.access_key_id", "config.secret_access_key"}
        with pytest.raises(ConfigInvalid) as refused:
            LOCATION.validate({"kind": "ftp"})
        assert [d["field"] for d in refused.value.details] == ["config.kind"]


class TestLocal:
    def test_create_no_op_drift_and_delete(self, target, tmp_path):
        landing = declared({"kind": "local", "path": str(tmp_path / "lake" / "landing")})
        assert plan(target, landing) == ("create", None)
        LOCATION.create(target, landing)
        assert (tmp_path / "lake" / "landing").is_dir()
        assert plan(target, landing)[0] == "no-op"
        (tmp_path / "lake" / "landing").chmod(0o500)  # made read-only behind the platform's back
        if os.geteuid() != 0:  # root writes anywhere: no drift to see
            action, actual = plan(target, landing)
            assert action == "update" and actual is not None and actual["writable"] is False
            LOCATION.update(target, landing, actual)
            assert plan(target, landing)[0] == "no-op"
        (tmp_path / "lake" / "landing").rmdir()  # deleted behind the platform's back
        assert plan(target, landing) == ("create", None)
        LOCATION.create(target, landing)
        LOCATION.delete(target, landing)
        assert plan(target, landing) == ("create", None)

    def test_a_relative_path_lands_in_the_projects_own_area(self, target):
        raw = declared({"kind": "local", "path": "raw/daily"})
        LOCATION.create(target, raw)
        assert (target.settings.home / "storage" / "proj" / "raw" / "daily").is_dir()
        assert plan(target, raw)[0] == "no-op"

    def test_delete_refuses_a_folder_that_is_not_empty(self, target, tmp_path):
        landing = declared({"kind": "local", "path": str(tmp_path / "lake" / "landing")})
        LOCATION.create(target, landing)
        (tmp_path / "lake" / "landing" / "file.csv").write_text("a\n")
        with pytest.raises(ProviderError, match="not empty"):
            LOCATION.delete(target, landing)
        assert (tmp_path / "lake" / "landing" / "file.csv").exists()

    @pytest.mark.parametrize(
        "path",
        ["/etc/rime", "../../other_project", "{home}/warehouse/x", "{tmp}/elsewhere", "{tmp}/link/escape"],
    )
    def test_paths_off_limits_are_refused_on_config_path(self, target, tmp_path, path):
        (tmp_path / "lake" / "link").symlink_to(tmp_path / "elsewhere-target")
        path = path.format(home=target.settings.home, tmp=tmp_path)
        if path.startswith(str(tmp_path / "lake")):
            path = str(tmp_path / "lake" / "link" / "escape")
        resource = declared({"kind": "local", "path": path})
        with pytest.raises(ConfigInvalid) as refused:
            LOCATION.create(target, resource)
        assert refused.value.details[0]["field"] == "config.path"
        with pytest.raises(ProviderError):  # the plan sees the same refusal as a failure to read
            LOCATION.read_actual(target, resource)
        assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "elsewhere-target").exists()


class TestS3:
    def test_bucket_and_prefix_created_no_op_and_recreated_after_deletion(self, target, s3_endpoint):
        config = bucket_config(s3_endpoint, prefix="raw/events")
        landing = declared(config)
        assert plan(target, landing) == ("create", None)
        LOCATION.create(target, landing)
        client = s3(s3_endpoint)
        keys = [item["Key"] for item in client.list_objects_v2(Bucket=config["bucket"])["Contents"]]
        assert keys == ["raw/events/"]
        assert plan(target, landing)[0] == "no-op"

        client.delete_object(Bucket=config["bucket"], Key="raw/events/")  # marker gone behind the back
        action, actual = plan(target, landing)
        assert action == "update" and actual is not None and actual["prefix"] is None
        LOCATION.update(target, landing, actual)
        assert plan(target, landing)[0] == "no-op"

        client.delete_object(Bucket=config["bucket"], Key="raw/events/")
        client.delete_bucket(Bucket=config["bucket"])  # the bucket deleted behind the back
        assert plan(target, landing) == ("create", None)
        LOCATION.create(target, landing)
        assert plan(target, landing)[0] == "no-op"

    def test_delete_only_an_empty_bucket(self, target, s3_endpoint):
        config = bucket_config(s3_endpoint, prefix="raw")
        landing = declared(config)
        LOCATION.create(target, landing)
        s3(s3_endpoint).put_object(Bucket=config["bucket"], Key="raw/data.csv", Body=b"a\n")
        with pytest.raises(ProviderError, match="not empty"):
            LOCATION.delete(target, landing)
        s3(s3_endpoint).delete_object(Bucket=config["bucket"], Key="raw/data.csv")
        LOCATION.delete(target, landing)
        assert plan(target, landing) == ("create", None)

    def test_an_unreachable_endpoint_is_a_provider_error_without_secrets(self, target):
        landing = declared(bucket_config(f"http://127.0.0.1:{closed_port()}"))
        for call in (lambda: LOCATION.read_actual(target, landing), lambda: LOCATION.create(target, landing)):
            with pytest.raises(ProviderError) as failed:
                call()
            assert "Could not connect" in str(failed.value)
            assert SECRET not in str(failed.value) and KEY_ID not in str(failed.value)
            assert failed.value.__cause__ is None

    def test_wrong_credentials_are_s3s_refusal_without_secrets(self, target, s3_endpoint):
        landing = declared(bucket_config(s3_endpoint))
        with enable_iam_authentication():  # moto now checks keys against its IAM: ours are unknown there
            with pytest.raises(ProviderError) as read:
                LOCATION.read_actual(target, landing)
            with pytest.raises(ProviderError) as made:
                LOCATION.create(target, landing)
        assert "S3 refused head_bucket" in str(read.value) and "403" in str(read.value)
        for failed in (read, made):
            assert SECRET not in str(failed.value) and failed.value.__cause__ is None
        assert plan(target, landing) == ("create", None)  # nothing was made
