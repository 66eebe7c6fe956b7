"""dbt project registration through the API (no Dagster needed): validation, git, updates, secrets."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from rime_dagster.dbt.manifest import ConnectorIndex, ConnectorTable

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "dbt"
TINY = FIXTURES / "tiny"


@pytest.fixture
def project(clients) -> dict:
    return clients.admin.post("/api/v1/projects", json={"name": "transformations"}).json()


def _url(project: dict, suffix: str = "") -> str:
    return f"/api/v1/projects/{project['id']}/dbt-projects{suffix}"


def _copy(tmp_path: Path, name: str = "tiny") -> Path:
    dest = tmp_path / name
    shutil.copytree(TINY, dest)
    return dest


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "source": {"type": "svn", "url": "x"}}, "source"),
        ({"name": "x", "source": {"type": "path"}}, "source.path.path"),
        ({"name": "x", "source": {"type": "path", "path": "/tmp", "extra": 1}}, "source.path.extra"),
        ({"name": "", "source": {"type": "path", "path": "/tmp"}}, "name"),
        ({"name": "x", "source": {"type": "path", "path": "/tmp"}, "schedule": "every day"}, "schedule"),
        ({"name": "x", "source": {"type": "path", "path": "/tmp"}, "target": {"adapter": "oracle"}}, "target"),
        ({"name": "x", "source": {"type": "git", "url": "file:///x", "ref": "--upload-pack=x"}}, "source.git.ref"),
    ],
)
def test_invalid_bodies_are_400_with_field_details(clients, project, body, field):
    response = clients.admin.post(_url(project), json=body)
    assert response.status_code == 400, response.text
    fields = [d["field"] for d in response.json()["error"]["details"]]
    assert any(f.startswith(field) for f in fields), fields


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("relative/path", "absolute path"),
        ("/nonexistent/rime-dbt", "not a folder"),
        (str(FIXTURES), "no dbt_project.yml"),
    ],
)
def test_unusable_paths_are_422_and_change_nothing(clients, project, settings, path, message):
    response = clients.admin.post(_url(project), json={"name": "x", "source": {"type": "path", "path": path}})
    assert response.status_code == 422, response.text
    assert message in response.json()["error"]["message"]
    assert clients.admin.get(_url(project)).json()["data"] == []
    assert not list((settings.dbt_home / project["id"]).glob("*/rev-*"))


@pytest.mark.slow
def test_project_roots_setting_confines_paths(clients, project, settings, tmp_path):
    settings.dbt_project_roots = [tmp_path / "allowed"]
    try:
        response = clients.admin.post(
            _url(project), json={"name": "x", "source": {"type": "path", "path": str(_copy(tmp_path))}}
        )
    finally:
        settings.dbt_project_roots = []
    assert response.status_code == 422
    assert "outside the folders" in response.json()["error"]["message"]


@pytest.mark.slow
def test_register_update_and_delete(clients, project, settings, tmp_path):
    folder = _copy(tmp_path)
    created = clients.admin.post(
        _url(project), json={"name": "Tiny", "source": {"type": "path", "path": str(folder)}, "vars": {"a": 1}}
    )
    assert created.status_code == 201, created.text
    dbt = created.json()
    assert (dbt["revision"], dbt["models_count"], dbt["dbt_project_name"]) == (1, 1, "tiny")
    assert dbt["lineage"] == {"nodes": [{"id": "model.tiny.one", "type": "model", "name": "one"}], "edges": []}
    url = _url(project, f"/{dbt['id']}")
    same_name = {"name": "Tiny", "source": {"type": "path", "path": str(folder)}}
    duplicate = clients.admin.post(_url(project), json=same_name)
    assert duplicate.status_code == 409

    # The copy is a snapshot: edits to the folder reach Rime only through an update.
    (folder / "models" / "two.sql").write_text("select id + 1 as id from {{ ref('one') }}\n")
    assert clients.admin.get(url).json()["models_count"] == 1
    refreshed = clients.admin.patch(url, json={"refresh": True})
    assert refreshed.status_code == 200, refreshed.text
    assert (refreshed.json()["revision"], refreshed.json()["models_count"]) == (2, 2)
    assert {"from": "model.tiny.one", "to": "model.tiny.two"} in refreshed.json()["lineage"]["edges"]

    # A broken update is refused and the current revision stays in service.
    (folder / "models" / "three.sql").write_text("select * from {{ ref('missing_model') }}\n")
    broken = clients.admin.patch(url, json={"refresh": True})
    assert broken.status_code == 422 and "missing_model" in broken.json()["error"]["message"]
    current = clients.admin.get(url).json()
    assert (current["revision"], current["models_count"]) == (2, 2)
    root = settings.dbt_home / project["id"] / dbt["id"]
    assert sorted(p.name for p in root.glob("rev-*")) == ["rev-1", "rev-2"]

    models = clients.admin.get(url + "/models").json()["data"]
    assert [(m["name"], m["materialization"], m["last_run_status"]) for m in models] == [
        ("one", "view", None),
        ("two", "view", None),
    ]
    assert models[1]["depends_on"] == ["model.tiny.one"] and models[0]["asset_key"][1:] == ["tiny", "one"]

    renamed = clients.admin.patch(url, json={"name": "Tiny Renamed", "schedule": "0 6 * * *", "status": "paused"})
    assert renamed.status_code == 200
    assert (renamed.json()["name"], renamed.json()["schedule"], renamed.json()["status"]) == (
        "Tiny Renamed",
        "0 6 * * *",
        "paused",
    )
    assert clients.admin.patch(url, json={"name": None}).status_code == 400

    nothing = clients.admin.post(url + "/run", json={"select": "no_such_node"})
    assert nothing.status_code == 422
    bad_syntax = clients.admin.post(url + "/run", json={"select": "bogus_method:x"})
    assert bad_syntax.status_code == 400, bad_syntax.text
    detail = bad_syntax.json()["error"]["details"][0]
    assert detail["field"] == "select" and "not a valid method name" in detail["message"]

    assert clients.admin.delete(url).status_code == 204
    assert clients.admin.get(url).status_code == 404
    assert not root.exists()


def _git_repo(tmp_path: Path) -> tuple[Path, str]:
    repo = tmp_path / "repo"
    shutil.copytree(TINY, repo / "transform")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e"}
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-q", "-m", "one"], ["tag", "v1"]):
        subprocess.run(["git", *args], cwd=repo, check=True, env={**env, "PATH": "/usr/bin:/bin"})
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True, text=True)
    return repo, sha.stdout.strip()


@pytest.mark.slow
def test_git_source_checks_out_a_ref(clients, project, tmp_path):
    repo, sha = _git_repo(tmp_path)
    source = {"type": "git", "url": repo.as_uri(), "ref": "v1", "subdirectory": "transform"}
    created = clients.admin.post(_url(project), json={"name": "From Git", "source": source})
    assert created.status_code == 201, created.text
    assert created.json()["commit_sha"] == sha and created.json()["source"]["ref"] == "v1"

    missing_ref = clients.admin.post(
        _url(project), json={"name": "Bad Ref", "source": {**source, "ref": "no-such-branch"}}
    )
    assert missing_ref.status_code == 422 and "git checkout failed" in missing_ref.json()["error"]["message"]
    no_project = clients.admin.post(
        _url(project), json={"name": "Root", "source": {"type": "git", "url": repo.as_uri()}}
    )
    assert no_project.status_code == 422 and "No dbt_project.yml" in no_project.json()["error"]["message"]


@pytest.mark.slow
def test_postgres_target_password_is_never_returned_or_written(clients, project, settings, tmp_path):
    password = "s3cret-dbt-pw"
    target = {"adapter": "postgres", "host": "db.internal", "user": "dbt", "password": password, "dbname": "wh"}
    created = clients.admin.post(
        _url(project), json={"name": "PG", "source": {"type": "path", "path": str(_copy(tmp_path))}, "target": target}
    )
    assert created.status_code == 201, created.text
    assert password not in created.text and created.json()["target_credentials_set"] is True
    assert "password" not in created.json()["target"]
    detail = clients.admin.get(_url(project, f"/{created.json()['id']}"))
    assert password not in detail.text
    root = settings.dbt_home / project["id"] / created.json()["id"]
    for path in root.rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path
    profile = yaml.safe_load((root / "rev-1" / "profiles" / "profiles.yml").read_text())
    output = profile["tiny"]["outputs"]["rime"]
    assert output["type"] == "postgres" and "env_var('RIME_DBT_TARGET_PASSWORD'" in output["password"]


def test_connector_index_matches_by_meta_or_by_schema():
    tables = [
        ConnectorTable("conn_1", "Demo Shop", "demo_shop", "orders", "ns"),
        ConnectorTable("conn_1", "Demo Shop", "demo_shop", "Order Items", "ns"),
    ]
    index = ConnectorIndex(tables)
    by_schema = {"schema": "demo_shop", "name": "orders", "identifier": "orders", "source_name": "raw"}
    assert index.match(by_schema).asset_key == ["ns", "demo_shop", "orders"]
    by_meta = {"schema": "raw", "name": "items", "meta": {"rime": {"connector": "Demo Shop", "table": "Order Items"}}}
    assert index.match(by_meta).asset_key == ["ns", "demo_shop", "order_items"]
    by_source_meta = {"schema": "x", "name": "orders", "source_meta": {"rime": {"connector": "conn_1"}}}
    assert index.match(by_source_meta).table == "orders"
    assert index.match({"schema": "other", "name": "orders"}) is None


def test_prune_run_dirs_keeps_the_newest(tmp_path):
    import os

    from rime_dagster.dbt.workspace import prune_run_dirs

    runs = tmp_path / "proj_1" / "dbt_1" / "runs"
    for i in range(5):
        folder = runs / f"run-{i}"
        folder.mkdir(parents=True)
        (folder / "run_results.json").write_text("{}")
        os.utime(folder, (1_000_000 + i, 1_000_000 + i))
    assert prune_run_dirs(tmp_path, keep=2) == 3
    assert sorted(p.name for p in runs.iterdir()) == ["run-3", "run-4"]
