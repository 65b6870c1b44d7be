from __future__ import annotations

import os
import tempfile
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


@pytest.fixture
def fashion_dir() -> Path:
    if not (FASHION_DIR / "styles.csv").is_file():
        pytest.skip(f"fashion catalog not found at {FASHION_DIR}")
    return FASHION_DIR
