from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# No test may reach a model hub; the default weights ship inside packages.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# BentoML's model and Bento store, read once per process (flows/__init__.py would otherwise point it
# at the checkout's .attrflow/bentoml, where an earlier run's `attrflow-shop:v1` would be reused).
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="attrflow-test-bentoml-")

REPO = Path(__file__).resolve().parent.parent
FASHION_DIR = Path(
    os.environ.get("ATTRFLOW_FASHION_DIR", REPO.parent / "shared" / "data" / "fashion-product-images-small")
)


@pytest.fixture(autouse=True)
def attrflow_home(tmp_path, monkeypatch) -> Path:
    """Every test writes under its own ATTRFLOW_HOME."""
    home = tmp_path / "home"
    monkeypatch.setenv("ATTRFLOW_HOME", str(home))
    return home


# A PostgreSQL server for the registry (.ci/run starts one); unset: those tests run on SQLite only.
PG_URL = os.environ.get("ATTRFLOW_TEST_PG_URL")


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_backend(request, monkeypatch) -> Iterator[str]:
    """The registry's database for a test that runs flows, tune or monitoring end to end: the
    default SQLite file under ATTRFLOW_HOME, and a fresh PostgreSQL database (ATTRFLOW_DB_URL, seen
    by every process the test starts; dropped afterwards) when ATTRFLOW_TEST_PG_URL is set."""
    if request.param == "sqlite":
        monkeypatch.delenv("ATTRFLOW_DB_URL", raising=False)
        yield "sqlite"
        return
    if not PG_URL:
        pytest.skip("ATTRFLOW_TEST_PG_URL not set: ran on SQLite only")
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    name = f"attrflow_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    monkeypatch.setenv("ATTRFLOW_DB_URL", make_url(PG_URL).set(database=name).render_as_string(hide_password=False))
    try:
        yield "postgresql"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def fashion_dir() -> Path:
    if not (FASHION_DIR / "styles.csv").is_file():
        pytest.skip(f"fashion catalog not found at {FASHION_DIR}")
    return FASHION_DIR


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """A real Prefect server on a temporary database (prefect_test_harness) for every test that runs
    flows, deployments or automations; yields its API URL. One for the session: each start costs
    about 15 s, and tests tell their runs apart by their own names and ids."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()
