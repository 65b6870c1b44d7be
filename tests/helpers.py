"""Small catalogs built inside tests."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

from components.catalog.spec import CatalogSpec

HEADER = ["id", "title", "description", "image", "colour", "size"]


def write_image(path: Path, rgb=(200, 30, 30)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), rgb).save(path)
    return path.name


def good_rows(root: Path, n: int = 3) -> list[dict[str, str]]:
    rows = []
    for i in range(n):
        write_image(root / "images" / f"g{i}.png")
        rows.append(
            {
                "id": f"g{i}",
                "title": f"red shirt {i}",
                "description": "cotton",
                "image": f"images/g{i}.png",
                "colour": "red|white",
                "size": "M",
            }
        )
    return rows


def write_csv(root: Path, rows: list[dict[str, str]], header=HEADER, name="catalog.csv") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows(rows)
    return path


def spec_for(source: Path, **overrides) -> CatalogSpec:
    raw = {
        "name": "tiny",
        "source": str(source),
        "id_column": "id",
        "title_column": "title",
        "description_column": "description",
        "image_column": "image",
        "attributes": [
            {
                "name": "colour",
                "column": "colour",
                "kind": "multilabel",
                "separator": "|",
                "values": ["red", "white", "blue"],
            },
            {"name": "size", "column": "size", "kind": "multiclass"},
        ],
        "split": {"seed": 0, "validation": 0.0, "test": 0.0},
    }
    raw.update(overrides)
    return CatalogSpec.model_validate(raw)


def predict_one(model_dir, title: str = "", description: str = "", image: str | None = None) -> dict:
    """One product through the Predictor, the image read from a path as datasets hold it."""
    from components.features.preprocess import load_image
    from components.inference.inputs import Product
    from components.inference.predictor import Predictor

    product = Product(title=title, description=description, image=load_image(image))
    return Predictor(model_dir).predict([product]).results[0]


REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def bentoml_serve(service: str, env: dict[str, str], log_path: Path, ready_seconds: float = 240) -> Iterator[str]:
    """A real `bentoml serve SERVICE` on a free localhost port, in its own process group: yields its
    URL once /readyz answers 200 (fails the test with the server's log if it exits or is not ready
    in time), and stops it afterwards."""
    import httpx
    import pytest

    port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "BENTOML_DO_NOT_TRACK": "True",
        **env,
    }
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", service, "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_seconds
        while True:
            if proc.poll() is not None:
                pytest.fail(f"bentoml serve exited ({proc.returncode}):\n{log_path.read_text()[-5000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"bentoml serve not ready after {ready_seconds:.0f} s:\n{log_path.read_text()[-5000:]}")
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
