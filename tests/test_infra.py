"""infra/docker-compose.yml, validated without Docker: it parses, the services infra/README.md names
are there with health checks on the private network, ports are published on 127.0.0.1 only, no
secret is written in it, and every variable it uses is documented and read by attrflow or by the
service it configures."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent

INFRA = REPO / "infra"
COMPOSE = INFRA / "docker-compose.yml"
README = (INFRA / "README.md").read_text()
# The image services of the stack that are not attrflow's image, and the variables their images read.
THIRD_PARTY_ENV = {"POSTGRES_USER", "POSTGRES_DB", "POSTGRES_PASSWORD"}
ONE_SHOT = {"deploy"}  # runs once and exits: no health check


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # PyYAML resolves the `<<` merge keys


def _readme_services() -> set[str]:
    section = README.split("## Services", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z-]+)` \|", section, flags=re.M))


def _interpolated() -> set[str]:
    text = "\n".join(line for line in COMPOSE.read_text().splitlines() if not line.lstrip().startswith("#"))
    return set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", text))


def _documented(name: str) -> bool:
    return f"`{name}`" in README or re.search(rf"`{name}=", README) is not None


def _read_by_attrflow() -> set[str]:
    """ATTRFLOW_* names attrflow reads: literal names in its code and YAML, and the fields of its
    pydantic settings (env prefix ATTRFLOW_)."""
    from components.settings import Settings
    from serving.settings import ServingSettings

    names = {f"ATTRFLOW_{f.upper()}" for s in (Settings, ServingSettings) for f in s.model_fields}
    for folder in ("attrflow", "components", "flows", "serving", "feature_repo"):
        for path in (REPO / folder).rglob("*"):
            if path.suffix in (".py", ".yaml"):
                names |= set(re.findall(r"ATTRFLOW_[A-Z0-9_]+", path.read_text()))
    return names


def _prefect_settings() -> set[str]:
    from prefect.settings import Settings
    from prefect.settings.legacy import _get_valid_setting_names

    # prefect-redis's own settings (installed in the image only): PREFECT_REDIS_MESSAGING_*
    return set(_get_valid_setting_names(Settings)) | {"PREFECT_REDIS_MESSAGING_HOST", "PREFECT_REDIS_MESSAGING_PORT"}


def test_every_service_the_readme_names_is_there(compose):
    named = _readme_services()
    assert {"postgres", "redis", "prefect-server", "prefect-worker", "ray-head", "ray-worker", "bentoml"} <= named
    assert "evidently-ui" in named
    assert named == set(compose["services"])


def test_services_are_private_healthy_and_bound_to_localhost(compose):
    assert compose["networks"]["attrflow"]["driver"] == "bridge"
    for name, service in compose["services"].items():
        assert service["networks"] == ["attrflow"], name
        if name not in ONE_SHOT:
            assert "test" in service.get("healthcheck", {}), f"{name}: no health check"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is published beyond this machine"
        for dep, cond in service.get("depends_on", {}).items():
            assert dep in compose["services"] and cond["condition"] == "service_healthy", (name, dep)
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source in compose["volumes"] or (INFRA / source).exists(), f"{name}: {volume}"
    # every attrflow service shares ATTRFLOW_HOME on one volume at one path (Ray's workers need that)
    attrflow = {n: s for n, s in compose["services"].items() if s.get("image") == "attrflow:local"}
    assert {"prefect-server", "prefect-worker", "ray-head", "ray-worker", "bentoml", "evidently-ui"} <= set(attrflow)
    for name, service in attrflow.items():
        assert "attrflow-home:/data/attrflow" in service["volumes"], name
        assert service["environment"]["ATTRFLOW_HOME"] == "/data/attrflow", name
        assert service["environment"]["ATTRFLOW_DB_URL"].startswith("postgresql+psycopg://"), name


def test_every_variable_is_documented_and_read(compose):
    interpolated = _interpolated()
    assert {"POSTGRES_PASSWORD", "ATTRFLOW_API_KEY"} <= interpolated
    undocumented = sorted(v for v in interpolated if not _documented(v))
    assert not undocumented, f"used in docker-compose.yml, not documented in infra/README.md: {undocumented}"
    example = (INFRA / ".env.example").read_text()
    assert not [v for v in interpolated if v not in example], "infra/.env.example must list every variable"

    attrflow_reads, prefect_reads = _read_by_attrflow(), _prefect_settings()
    for name, service in compose["services"].items():
        for key in service.get("environment", {}):
            assert _documented(key), f"{name}: {key} is not documented in infra/README.md"
            if key.startswith("ATTRFLOW_"):
                assert key in attrflow_reads, f"{name}: attrflow reads no {key}"
            elif key.startswith("PREFECT_"):
                assert key in prefect_reads, f"{name}: {key} is not a Prefect setting"
            elif service.get("image") != "attrflow:local":
                assert key in THIRD_PARTY_ENV, f"{name}: {key}"
            else:
                assert key in {"BENTOML_HOME", "DO_NOT_TRACK"}, f"{name}: {key} is read by nothing known"


def test_no_secret_is_committed(compose):
    for name, service in compose["services"].items():
        for key, value in service.get("environment", {}).items():
            value = str(value)
            if "PASSWORD" in key or "KEY" in key:
                assert value.startswith("${") and ":?" in value, f"{name}: {key} needs a value from infra/.env"
            if "://" in value and "@" in value:  # a URL with credentials: the password is interpolated
                assert "${POSTGRES_PASSWORD" in value, f"{name}: {key}"
    example = (INFRA / ".env.example").read_text()
    assert re.search(r"^POSTGRES_PASSWORD=$", example, re.M) and re.search(r"^ATTRFLOW_API_KEY=$", example, re.M)
    assert "infra/.env" in (REPO / ".gitignore").read_text().splitlines()


def test_databases_and_commands_fit_the_code(compose):
    init = (INFRA / "postgres" / "init.sql").read_text()
    urls = [
        v for s in compose["services"].values() for v in s.get("environment", {}).values() if "postgres:5432/" in str(v)
    ]
    for db in {u.rsplit("/", 1)[1] for u in urls} - {"attrflow"}:  # POSTGRES_DB creates `attrflow`
        assert f"CREATE DATABASE {db} " in init, db
    services = compose["services"]
    assert services["deploy"]["command"][:3] == ["attrflow", "deploy", "--pool"]
    assert "--type" in services["prefect-worker"]["command"] and "process" in services["prefect-worker"]["command"]
    assert "ray start --head" in services["ray-head"]["command"]
    assert "--address ray-head:6380" in services["ray-worker"]["command"]
    assert services["prefect-worker"]["environment"]["ATTRFLOW_RAY_ADDRESS"] == "ray://ray-head:10001"
    assert (REPO / services["prefect-worker"]["environment"]["ATTRFLOW_FEAST_YAML"].removeprefix("/app/")).is_file()
    dockerfile = (INFRA / "Dockerfile").read_text()
    for copied in re.findall(r"^COPY (\S+)", dockerfile, flags=re.M):
        assert (REPO / copied).exists(), copied
    # the attrflow CLI has the command the stack runs
    from typer.testing import CliRunner

    from attrflow.cli import app

    assert CliRunner().invoke(app, ["deploy", "--help"]).exit_code == 0


def test_compose_config_when_docker_is_there(tmp_path):
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("no `docker compose` here: the file was validated by the tests above")
    env = tmp_path / ".env"
    env.write_text("POSTGRES_PASSWORD=x\nATTRFLOW_API_KEY=y\n")
    out = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "--env-file", str(env), "config", "--quiet"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr


def test_readme_mentions_the_infra_folder():
    assert "infra/" in (REPO / "README.md").read_text()
    assert Path(REPO / "infra" / "README.md").is_file()
