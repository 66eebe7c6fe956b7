"""The deployment files of deploy/ agree with the code they run, checked without Docker or a cluster.

deploy/compose (compose file, dagster.yaml, workspace.yaml, Dockerfile, .env.example) and deploy/helm (values for
Dagster's chart, the API's manifests, the Secrets' example) are parsed with PyYAML and held against
rime_dagster.settings.Settings (every RIME_* variable is a setting and parses; the production must-haves are set
in each process), against each other (hosts and ports, volumes, Secret and ConfigMap names), against the modules
their commands name, against Dagster's instance schema and Rime's own instance config, and against the Dagster
chart's values keys (CHART_KEYS: read from the chart's source, not from an installed chart).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml
from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config
from dagster._serdes.config_class import class_from_code_pointer

from api_shim.cli import main as cli_main
from rime_dagster.platform.instance import DAGSTER_YAML, ensure_dagster_home
from rime_dagster.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_DIR = ROOT / "deploy" / "compose"
HELM_DIR = ROOT / "deploy" / "helm"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

PREFIX = Settings.model_config["env_prefix"]
SETTING_NAMES = {f"{PREFIX}{name}".upper() for name in Settings.model_fields}
# What no deployment of several processes may leave to its default: the metadata store's URL (SQLite under each
# container's RIME_HOME otherwise) and the secret key (each process would generate its own).
MUST_SET = {f"{PREFIX}DATABASE_URL", f"{PREFIX}SECRET_KEY"} | {
    f"{PREFIX}{name}".upper() for name, field in Settings.model_fields.items() if field.is_required()
}
ADMIN_TOKEN = f"{PREFIX}ADMIN_TOKEN"
# Values that only an env file or a Secret may hold.
SECRET_NAMES = {ADMIN_TOKEN, f"{PREFIX}SECRET_KEY", f"{PREFIX}DATABASE_URL", "DAGSTER_PG_PASSWORD", "POSTGRES_PASSWORD"}
RIME_SERVICES = ("migrate", "code-server", "dagster-webserver", "dagster-daemon", "api")
HELM_RELEASE = "dagster"  # the release name values.yaml and rime-api.yaml are written for


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def dotenv(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


INTERPOLATION = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} and $$, as `docker compose` reads them from .env."""

    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.groups()
        value = env.get(name)
        if op and op.startswith(":") and not value:
            value = None
        if value is None and op and op.endswith("?"):
            raise AssertionError(f"${{{name}}} is required ({arg}) and .env.example does not set it")
        return value if value is not None else (arg or "")

    return INTERPOLATION.sub(one, text)


def service_env(service: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {key: interpolate(str(value), env) for key, value in environment.items()}


def option(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing from {argv}"
    return argv[argv.index(flag) + 1]


def click_command(script: str) -> click.Command:
    """The click command behind an installed console script that a service runs."""
    if script == "dagster":
        from dagster._cli import cli

        return cli
    if script == "dagster-daemon":
        from dagster._daemon.cli import create_dagster_daemon_cli

        return create_dagster_daemon_cli()
    if script == "dagster-webserver":
        from dagster_webserver.cli import cli as webserver_cli

        return webserver_cli
    assert script == "uvicorn", f"no click command known for {script}"
    return importlib.import_module("uvicorn.main").main


def assert_cli_accepts(argv: list[str]) -> None:
    """The installed program has the subcommands and the options `argv` uses (their values are not checked)."""
    command, rest = click_command(argv[0]), argv[1:]
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        sub = command.get_command(click.Context(command), rest[0])
        assert sub is not None, f"{argv}: no subcommand {rest[0]}"
        command, rest = sub, rest[1:]
    options = {opt for param in command.params for opt in (*param.opts, *getattr(param, "secondary_opts", ()))}
    unknown = [arg for arg in rest if arg.startswith("-") and arg not in options]
    assert not unknown, f"{argv}: unknown options {unknown}"


def settings_from(monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str]) -> Settings:
    """Settings as a process with exactly this environment's RIME_* variables reads them."""
    for key in [k for k in os.environ if k.upper().startswith(PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.upper().startswith(PREFIX):
            monkeypatch.setenv(key, value)
    return Settings()


def module_imports(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def deploy_extra_distributions() -> set[str]:
    return {
        re.match(r"[A-Za-z0-9_.-]+", req).group(0).lower()
        for req in PYPROJECT["project"]["optional-dependencies"]["deploy"]
    }


def configurable_classes(instance: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for key, value in instance.items():
        if isinstance(value, Mapping) and {"module", "class"} <= value.keys():
            yield key, value


def assert_class_config(key: str, entry: Mapping[str, Any]) -> None:
    """An instance entry's class is importable here and its config valid; or (Dagster's integrations that only the
    image installs) it comes from a distribution of pyproject's `deploy` extra."""
    module = entry["module"]
    if module_imports(module):
        klass = class_from_code_pointer(module, entry["class"])
        result = validate_config(klass.config_type(), entry.get("config") or {})
        assert result.success, f"{key}: {[error.message for error in result.errors]}"
    else:
        distribution = module.split(".")[0].replace("_", "-")
        assert distribution in deploy_extra_distributions(), f"{key}: {module} is neither installed nor in [deploy]"


def rime_instance() -> dict[str, Any]:
    return yaml.safe_load(DAGSTER_YAML)


# --------------------------------------------------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return dotenv(COMPOSE_DIR / ".env.example")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load(COMPOSE_DIR / "docker-compose.yaml")


@pytest.fixture(scope="module")
def services(compose, env_example) -> dict[str, dict[str, Any]]:
    """Each service with its environment and command as compose runs them with .env.example as .env."""
    resolved = {}
    for name, service in compose["services"].items():
        resolved[name] = {
            **service,
            "environment": service_env(service, env_example),
            "command": [interpolate(str(arg), env_example) for arg in service.get("command") or []],
            "image": interpolate(service.get("image", ""), env_example),
            "volumes": [interpolate(v, env_example) for v in service.get("volumes") or []],
        }
    return resolved


@pytest.fixture(scope="module")
def compose_instance() -> dict[str, Any]:
    return load(COMPOSE_DIR / "dagster.yaml")


def mounts(service: Mapping[str, Any]) -> dict[str, str]:
    """Target path -> source (a named volume or a path relative to the compose file)."""
    return {volume.split(":")[1]: volume.split(":")[0] for volume in service["volumes"]}


class TestComposeSettings:
    def test_every_rime_variable_is_a_setting(self, services, env_example, compose_instance):
        named = set(env_example) | {key for service in services.values() for key in service["environment"]}
        named |= set(compose_instance["run_launcher"]["config"]["env_vars"])
        unknown = sorted(key for key in named if key.startswith(PREFIX) and key not in SETTING_NAMES)
        assert not unknown, f"not settings of rime_dagster.settings.Settings: {unknown}"

    @pytest.mark.parametrize("name", RIME_SERVICES)
    def test_each_process_gets_the_production_settings(self, name, services, monkeypatch):
        env = services[name]["environment"]
        missing = sorted(key for key in MUST_SET if not env.get(key))
        assert not missing, f"{name} leaves {missing} to their defaults"
        settings = settings_from(monkeypatch, env)
        store = urlsplit(settings.metadata_url)
        assert store.scheme.startswith("postgresql") and store.hostname in services, settings.metadata_url.split("@")[
            -1
        ]
        # RIME_HOME and DAGSTER_HOME are the paths the volumes are mounted at.
        assert mounts(services[name]).get(str(settings.home)) == "rime-home"
        assert str(settings.dagster_home_path) == env["DAGSTER_HOME"]

    @pytest.mark.parametrize("name", RIME_SERVICES)
    def test_only_the_api_gets_the_admin_token(self, name, services):
        assert (ADMIN_TOKEN in services[name]["environment"]) == (name == "api")

    def test_secrets_come_from_the_env_file_only(self, compose):
        raw = [compose["x-rime-env"], *(service.get("environment") or {} for service in compose["services"].values())]
        literal = sorted(
            key for env in raw for key, value in env.items() if key in SECRET_NAMES and "${" not in str(value)
        )
        assert not literal, f"secrets written into docker-compose.yaml: {literal}"


class TestComposeWiring:
    def test_the_api_calls_the_webserver_it_runs_next_to(self, services, monkeypatch):
        graphql = urlsplit(settings_from(monkeypatch, services["api"]["environment"]).graphql_url)
        webserver = services[graphql.hostname]["command"]
        assert webserver[0] == "dagster-webserver"
        assert graphql.port == int(option(webserver, "-p")) and graphql.path == "/graphql"

    def test_the_workspace_points_at_the_code_server(self, services, monkeypatch):
        (entry,) = load(COMPOSE_DIR / "workspace.yaml")["load_from"]
        server = entry["grpc_server"]
        code_server = services[server["host"]]["command"]
        assert code_server[:3] == ["dagster", "code-server", "start"]
        assert int(option(code_server, "-p")) == server["port"]
        assert option(code_server, "--location-name") == server["location_name"]
        assert settings_from(monkeypatch, services["api"]["environment"]).dagster_location == server["location_name"]
        for name in ("dagster-webserver", "dagster-daemon"):
            workspace = option(services[name]["command"], "-w")
            assert mounts(services[name])[workspace] == "./workspace.yaml"

    def test_dagster_processes_read_this_dagster_yaml(self, services):
        for name in ("code-server", "dagster-webserver", "dagster-daemon", "api"):
            home = services[name]["environment"]["DAGSTER_HOME"]
            assert mounts(services[name])[f"{home}/dagster.yaml"] == "./dagster.yaml", name

    def test_commands_name_what_is_installed(self, services):
        scripts = {entry.name for entry in importlib.metadata.entry_points(group="console_scripts")}
        for name, service in services.items():
            if service["command"]:
                assert service["command"][0] in scripts, f"{name}: {service['command'][0]} is no installed command"
        assert module_imports(option(services["code-server"]["command"], "-m"))
        module, attribute = option(services["api"]["command"], "--factory").split(":")
        assert callable(getattr(importlib.import_module(module), attribute))
        assert PYPROJECT["project"]["scripts"]["rime"] == "api_shim.cli:main"
        assert services["migrate"]["command"] == ["rime", "migrate"]

    @pytest.mark.slow  # imports the webserver's and the daemon's command lines: 0.6 s
    def test_commands_and_health_checks_use_options_the_programs_have(self, services, capsys):
        for service in services.values():
            if service["command"][:1] != ["rime"] and service["command"]:
                assert_cli_accepts(service["command"])
            test = (service.get("healthcheck") or {}).get("test", [])
            if test[:2] == ["CMD", "dagster"]:
                assert_cli_accepts(test[1:])
        with pytest.raises(SystemExit) as done:  # `rime migrate` exists (its help, nothing migrated)
            cli_main(["migrate", "--help"])
        assert done.value.code == 0 and "migrate" in capsys.readouterr().out

    def test_rime_services_build_this_repositorys_image(self, services):
        for name in RIME_SERVICES:
            build = services[name]["build"]
            assert (COMPOSE_DIR / build["context"]).resolve() == ROOT, name
            assert (ROOT / build["dockerfile"]).resolve() == COMPOSE_DIR / "Dockerfile", name

    def test_the_services_start_in_order(self, compose):
        depends = {name: service.get("depends_on") or {} for name, service in compose["services"].items()}
        assert depends["migrate"]["postgres"]["condition"] == "service_healthy"
        for name in ("code-server", "api"):
            assert depends[name]["migrate"]["condition"] == "service_completed_successfully"
        for name in ("dagster-webserver", "dagster-daemon"):
            assert depends[name]["code-server"]["condition"] == "service_healthy"


class TestComposeInstance:
    def test_dagster_accepts_it(self, tmp_path):
        shutil.copy(COMPOSE_DIR / "dagster.yaml", tmp_path / "dagster.yaml")
        config, _ = dagster_instance_config(str(tmp_path))
        for key, entry in configurable_classes(config):
            assert_class_config(key, entry)

    def test_storage_is_postgres_with_its_password_from_the_environment(self, compose_instance, services):
        for key in ("run_storage", "event_log_storage", "schedule_storage"):
            assert compose_instance[key]["module"].startswith("dagster_postgres.")
            db = compose_instance[key]["config"]["postgres_db"]
            assert db["hostname"] == "postgres" and db["port"] == 5432
            assert isinstance(db["password"], dict), "the password comes from the environment"
            for name in ("code-server", "dagster-webserver", "dagster-daemon", "api"):
                env = services[name]["environment"]
                assert all(env.get(field["env"]) for field in db.values() if isinstance(field, dict)), name
        dagster_db = compose_instance["run_storage"]["config"]["postgres_db"]["db_name"]["env"]
        assert services["api"]["environment"][dagster_db] != services["postgres"]["environment"]["POSTGRES_DB"]

    def test_rime_instance_settings_are_the_same_as_make_up(self, compose_instance):
        ours = {key: value for key, value in rime_instance().items() if key != "run_launcher"}
        assert {key: compose_instance.get(key) for key in ours} == ours

    def test_rime_leaves_it_alone(self, tmp_path):
        home = tmp_path / "dagster"
        home.mkdir()
        text = (COMPOSE_DIR / "dagster.yaml").read_text()
        (home / "dagster.yaml").write_text(text)
        ensure_dagster_home(Settings(home=tmp_path, dagster_home=home))
        assert (home / "dagster.yaml").read_text() == text

    def test_run_containers_get_what_the_code_server_has(self, compose_instance, compose, services):
        launcher = compose_instance["run_launcher"]["config"]
        code_server = services["code-server"]["environment"]
        needed = {key for key in code_server if key.startswith((PREFIX, "DAGSTER_PG_"))}
        assert needed <= set(launcher["env_vars"]), sorted(needed - set(launcher["env_vars"]))
        assert ADMIN_TOKEN not in launcher["env_vars"]
        for name in ("dagster-webserver", "dagster-daemon"):  # the processes that launch runs pass these on
            unset = [key for key in launcher["env_vars"] if key not in services[name]["environment"]]
            assert not unset, f"{name} lacks {unset}"
        assert launcher["network"] == compose["networks"]["default"]["name"]
        (volume,) = launcher["container_kwargs"]["volumes"]
        name, path = volume.split(":")
        assert compose["volumes"]["rime-home"]["name"] == name and path == code_server[f"{PREFIX}HOME"]
        assert code_server["DAGSTER_CURRENT_IMAGE"] == services["code-server"]["image"]
        assert {services[name]["image"] for name in RIME_SERVICES} == {code_server["DAGSTER_CURRENT_IMAGE"]}


class TestDockerfile:
    @pytest.fixture(scope="class")
    def instructions(self) -> list[tuple[str, str]]:
        text = (COMPOSE_DIR / "Dockerfile").read_text().replace("\\\n", " ")
        lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]

    def test_python_311_with_the_deploy_extra(self, instructions):
        assert instructions[0][0] == "FROM" and instructions[0][1].startswith("python:3.11")
        assert any(op == "RUN" and "pip install '.[deploy]'" in arg for op, arg in instructions)
        assert {"dagster-docker", "dagster-k8s"} <= deploy_extra_distributions()
        assert module_imports("dagster_postgres")  # a dependency of Rime itself (PostgreSQL storage)

    def test_it_copies_every_package(self, instructions):
        copied = {arg.split()[0] for op, arg in instructions if op == "COPY"}
        packages = {pattern.rstrip("*") for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
        assert packages | {"pyproject.toml"} <= copied
        ignored = (COMPOSE_DIR / "Dockerfile.dockerignore").read_text().splitlines()
        assert all(f"!{path}/" in ignored or f"!{path}" in ignored for path in copied)

    def test_no_secret_is_baked_in(self, instructions):
        for op, arg in instructions:
            if op in {"ENV", "ARG"}:
                assert not any(name in arg for name in SECRET_NAMES), arg


# ------------------------------------------------------------------------------------------------------------ helm

# The keys of the dagster/dagster chart's values that deploy/helm/values.yaml may use, as the chart defines them.
# Read through the search tool's index of dagster-io/dagster (the repository, 1.5 GB, was too large to fetch whole)
# from the pydantic models the chart's values.schema.json is generated from: helm/dagster/schema/schema/charts/
# dagster/values.py and subschema/{global_, postgresql, webserver, daemon, run_launcher, concurrency, telemetry}.py,
# charts/dagster_user_deployments/subschema/user_deployments.py and the subchart's values.schema.json, in the
# newest versions the index held (pydantic 2 style, with `concurrency` and `initContainerResources`). Those files
# name no chart version: that these are the keys of chart 1.13.x is likely, not confirmed. runMonitoring is a free
# mapping in the schema: its keys are those templates/configmap-instance.yaml reads. ANY: any content (a
# Kubernetes object, a free mapping or a list), not checked further.
ANY = None
_IMAGE = {"repository": ANY, "tag": ANY, "pullPolicy": ANY}
_POD = dict.fromkeys(
    ["env", "envConfigMaps", "envSecrets", "labels", "nodeSelector", "affinity", "tolerations", "podSecurityContext"]
    + ["securityContext", "resources", "readinessProbe", "livenessProbe", "startupProbe", "annotations"]
    + ["schedulerName", "volumeMounts", "volumes"]
)
CHART_KEYS: dict[str, Any] = {
    "global": dict.fromkeys(
        [
            "postgresqlSecretName",
            "dagsterHome",
            "serviceAccountName",
            "celeryConfigSecretName",
            "dagsterInstanceConfigMap",
        ]
    ),
    "generatePostgresqlPasswordSecret": ANY,
    "generateCeleryConfigSecret": ANY,
    "postgresql": {
        **dict.fromkeys(
            ["postgresqlScheme", "enabled", "postgresqlHost", "postgresqlUsername", "postgresqlPassword"]
            + ["postgresqlDatabase", "postgresqlParams"]
        ),
        "image": _IMAGE,
        "service": {"port": ANY},
    },
    "dagster-user-deployments": {
        "enabled": ANY,
        "enableSubchart": ANY,
        "imagePullSecrets": ANY,
        "deployments": [
            {
                **_POD,
                **dict.fromkeys(
                    ["name", "dagsterApiGrpcArgs", "codeServerArgs", "deploymentNamespace", "port"]
                    + ["initContainers", "sidecarContainers", "deploymentStrategy", "serviceAccount"]
                ),
                "image": _IMAGE,
                "includeConfigInLaunchedRuns": {"enabled": ANY},
            }
        ],
    },
    "runLauncher": {
        "type": ANY,
        "config": {
            "celeryK8sRunLauncher": ANY,
            "customRunLauncher": ANY,
            "k8sRunLauncher": {
                **dict.fromkeys(
                    ["image", "imagePullPolicy", "jobNamespace", "loadInclusterConfig", "kubeconfigFile"]
                    + ["envConfigMaps", "envSecrets", "envVars", "volumeMounts", "volumes", "labels"]
                    + ["failPodOnRunFailure", "resources", "schedulerName", "securityContext"]
                ),
                "runK8sConfig": dict.fromkeys(
                    ["containerConfig", "podSpecConfig", "podTemplateSpecMetadata", "jobSpecConfig", "jobMetadata"]
                ),
            },
        },
    },
    "dagsterWebserver": {
        **_POD,
        **dict.fromkeys(
            ["replicaCount", "nameOverride", "pathPrefix", "deploymentLabels", "enableReadOnly"]
            + ["dbStatementTimeout", "dbPoolRecycle", "logLevel", "initContainerResources"]
        ),
        "image": _IMAGE,
        "service": {"type": ANY, "port": ANY, "annotations": ANY},
        "workspace": {"enabled": ANY, "servers": ANY, "externalConfigmap": ANY},
    },
    "dagsterDaemon": {
        **_POD,
        **dict.fromkeys(["enabled", "heartbeatTolerance", "deploymentLabels", "initContainerResources"]),
        "image": _IMAGE,
        "runCoordinator": {"enabled": ANY, "type": ANY, "config": ANY},
        "runMonitoring": dict.fromkeys(
            ["enabled", "startTimeoutSeconds", "cancelTimeoutSeconds", "maxResumeRunAttempts"]
            + ["pollIntervalSeconds", "freeSlotsAfterRunEndSeconds"]
        ),
        "runRetries": dict.fromkeys(["enabled", "maxRetries", "retryOnAssetOrOpFailure"]),
        "sensors": dict.fromkeys(["useThreads", "numWorkers", "numSubmitWorkers"]),
        "schedules": dict.fromkeys(["useThreads", "numWorkers", "numSubmitWorkers"]),
    },
    "concurrency": {
        "enabled": ANY,
        "pools": dict.fromkeys(["defaultLimit", "granularity", "opGranularityRunBuffer"]),
        "runs": dict.fromkeys(["maxConcurrentRuns", "tagConcurrencyLimits"]),
    },
    "telemetry": {"enabled": ANY},
    **dict.fromkeys(
        ["rabbitmq", "redis", "flower", "ingress", "imagePullSecrets", "computeLogManager", "scheduler"]
        + ["pythonLogs", "busybox", "migrate", "serviceAccount", "retention", "additionalInstanceConfig"]
    ),
}
PULL_POLICIES = {"Always", "IfNotPresent", "Never"}
RUN_LAUNCHERS = {"K8sRunLauncher", "CeleryK8sRunLauncher", "CustomRunLauncher"}


def unknown_keys(values: Any, schema: Any, path: str = "") -> Iterator[str]:
    if schema is ANY:
        return
    if isinstance(schema, list):
        for index, item in enumerate(values):
            yield from unknown_keys(item, schema[0], f"{path}[{index}]")
        return
    assert isinstance(values, dict), f"{path} should be a mapping"
    for key, value in values.items():
        if key not in schema:
            yield f"{path}.{key}".lstrip(".")
        else:
            yield from unknown_keys(value, schema[key], f"{path}.{key}")


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return load(HELM_DIR / "values.yaml")


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict]:
    docs = load_all(HELM_DIR / "rime-api.yaml") + load_all(HELM_DIR / "rime-secrets.example.yaml")
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}


@pytest.fixture(scope="module")
def rime_deployment(values) -> dict[str, Any]:
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    return deployment


@pytest.fixture(scope="module")
def api_container(manifests) -> dict[str, Any]:
    (container,) = manifests["Deployment", "rime-api"]["spec"]["template"]["spec"]["containers"]
    return container


def container_env(container: Mapping[str, Any], manifests: Mapping[tuple[str, str], dict]) -> dict[str, str]:
    """A container's environment: its envFrom ConfigMaps and Secrets (from the example), then its env values."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        kind, ref = (
            ("ConfigMap", source["configMapRef"]) if "configMapRef" in source else ("Secret", source["secretRef"])
        )
        doc = manifests[kind, ref["name"]]
        env.update(doc.get("data") or doc.get("stringData") or {})
    env.update({item["name"]: item["value"] for item in container.get("env", []) if "value" in item})
    return env


def chart_user_code_env(deployment: Mapping[str, Any], manifests: Mapping[tuple[str, str], dict]) -> dict[str, str]:
    as_container = {
        "envFrom": [{"configMapRef": ref} for ref in deployment.get("envConfigMaps", [])]
        + [{"secretRef": ref} for ref in deployment.get("envSecrets", [])]
    }
    return {**container_env(as_container, manifests), **(deployment.get("env") or {})}


class TestHelmValues:
    def test_every_key_is_one_of_the_chart(self, values):
        assert not list(unknown_keys(values, CHART_KEYS))
        assert values["runLauncher"]["type"] in RUN_LAUNCHERS

    def test_the_chart_is_installed_as_the_release_the_manifests_call(self):
        assert f"helm upgrade --install {HELM_RELEASE} dagster/dagster" in (HELM_DIR / "values.yaml").read_text()

    def test_the_user_code_deployment_serves_the_rime_location(self, rime_deployment, manifests, monkeypatch):
        args = rime_deployment["codeServerArgs"]  # `dagster code-server start`: reloads in place
        assert "dagsterApiGrpcArgs" not in rime_deployment
        assert module_imports(option(args, "-m"))
        # The chart runs: dagster code-server start -h 0.0.0.0 -p <port> <codeServerArgs>
        assert_cli_accepts(
            ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", str(rime_deployment["port"]), *args]
        )
        settings = settings_from(monkeypatch, chart_user_code_env(rime_deployment, manifests))
        # The chart's workspace names the location (and its Service) after the deployment.
        assert rime_deployment["name"] == option(args, "--location-name") == settings.dagster_location
        assert rime_deployment["image"]["pullPolicy"] in PULL_POLICIES

    def test_the_code_server_and_its_runs_get_the_production_settings(self, rime_deployment, manifests, monkeypatch):
        assert rime_deployment["includeConfigInLaunchedRuns"]["enabled"] is True
        env = chart_user_code_env(rime_deployment, manifests)
        assert not sorted(key for key in env if key.startswith(PREFIX) and key not in SETTING_NAMES)
        assert not sorted(key for key in MUST_SET if not env.get(key))
        assert ADMIN_TOKEN not in env
        settings = settings_from(monkeypatch, env)
        (mount,) = rime_deployment["volumeMounts"]
        (volume,) = rime_deployment["volumes"]
        assert mount["mountPath"] == str(settings.home) and mount["name"] == volume["name"]
        assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in manifests

    def test_runs_are_kubernetes_jobs(self, values):
        assert values["runLauncher"]["type"] == "K8sRunLauncher"
        assert values["dagsterDaemon"]["enabled"] is True

    def test_dagster_storage_password_comes_from_a_secret(self, values, manifests):
        assert values["generatePostgresqlPasswordSecret"] is False and "postgresqlPassword" not in values["postgresql"]
        secret = manifests["Secret", values["global"]["postgresqlSecretName"]]
        assert "postgresql-password" in secret["stringData"]

    def test_rime_instance_settings_are_the_same_as_make_up(self, values):
        daemon, ours = values["dagsterDaemon"], rime_instance()
        assert ours["run_coordinator"]["class"] == "DefaultRunCoordinator" and not daemon["runCoordinator"]["enabled"]
        snake = {"runMonitoring": "run_monitoring", "runRetries": "run_retries", "sensors": "sensors"}
        for key, instance_key in snake.items():
            as_instance = {re.sub(r"([A-Z])", r"_\1", k).lower(): v for k, v in daemon[key].items()}
            assert as_instance == ours[instance_key], key
        pools = {re.sub(r"([A-Z])", r"_\1", k).lower(): v for k, v in values["concurrency"]["pools"].items()}
        assert values["concurrency"]["enabled"] and pools == ours["concurrency"]["pools"]
        assert values["telemetry"] == ours["telemetry"]


class TestApiManifest:
    def test_every_rime_variable_is_a_setting(self, api_container, manifests):
        env = container_env(api_container, manifests)
        assert not sorted(key for key in env if key.startswith(PREFIX) and key not in SETTING_NAMES)

    def test_it_gets_the_production_settings_and_the_admin_token(self, api_container, manifests, monkeypatch):
        env = container_env(api_container, manifests)
        assert not sorted(key for key in MUST_SET | {ADMIN_TOKEN} if not env.get(key))
        settings = settings_from(monkeypatch, env)
        assert urlsplit(settings.metadata_url).scheme.startswith("postgresql")
        mounts = {mount["mountPath"]: mount["name"] for mount in api_container["volumeMounts"]}
        assert mounts[str(settings.home)] == "rime-home"

    def test_only_the_api_reads_the_admin_secret(self, values, manifests):
        holders = {
            name for (kind, name), doc in manifests.items() if kind == "Secret" and ADMIN_TOKEN in doc["stringData"]
        }
        assert holders == {"rime-admin"}
        assert "rime-admin" not in yaml.safe_dump(values)

    def test_it_calls_the_charts_webserver(self, api_container, manifests, values, monkeypatch):
        graphql = urlsplit(settings_from(monkeypatch, container_env(api_container, manifests)).graphql_url)
        assert graphql.hostname == f"{HELM_RELEASE}-dagster-webserver"
        assert graphql.port == values["dagsterWebserver"]["service"]["port"] and graphql.path == "/graphql"

    def test_it_reads_the_charts_dagster_instance(self, api_container, manifests, values, monkeypatch):
        env = container_env(api_container, manifests)
        home = values["global"]["dagsterHome"]
        assert env["DAGSTER_HOME"] == home == str(settings_from(monkeypatch, env).dagster_home_path)
        (instance,) = [m for m in api_container["volumeMounts"] if m["mountPath"] == f"{home}/dagster.yaml"]
        volumes = {v["name"]: v for v in manifests["Deployment", "rime-api"]["spec"]["template"]["spec"]["volumes"]}
        assert volumes[instance["name"]]["configMap"]["name"] == f"{HELM_RELEASE}-instance"
        (password,) = [item for item in api_container["env"] if item["name"] == "DAGSTER_PG_PASSWORD"]
        ref = password["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == (values["global"]["postgresqlSecretName"], "postgresql-password")

    def test_it_runs_the_api_after_the_migrations(self, api_container, manifests):
        pod = manifests["Deployment", "rime-api"]["spec"]["template"]["spec"]
        assert [c["command"] for c in pod["initContainers"]] == [["rime", "migrate"]]
        module, attribute = option(api_container["command"], "--factory").split(":")
        assert callable(getattr(importlib.import_module(module), attribute))
        assert_cli_accepts(api_container["command"])

    def test_its_service_reaches_it(self, api_container, manifests):
        deployment, service = manifests["Deployment", "rime-api"], manifests["Service", "rime-api"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        (port,) = service["spec"]["ports"]
        assert port["targetPort"] in {p["name"] for p in api_container["ports"]}
        assert option(api_container["command"], "--port") == str(api_container["ports"][0]["containerPort"])

    def test_the_api_and_the_code_location_run_the_same_image(self, api_container, rime_deployment, manifests):
        image = rime_deployment["image"]
        pod = manifests["Deployment", "rime-api"]["spec"]["template"]["spec"]
        assert {c["image"] for c in [api_container, *pod["initContainers"]]} == {
            f"{image['repository']}:{image['tag']}"
        }
