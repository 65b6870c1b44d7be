"""Feast holds the product features (feature_repo/, flows/features.py, serving/by_id.py).

A real Feast repo in a temporary ATTRFLOW_HOME: apply, materialize, online reads of what ingest
wrote, a point-in-time read across two ingests, the embedding view's refusal of other encoders,
scoring by id in process and through the real `bentoml serve` (test_serving's server fixture over
this module's `world`), the CLI, and the ingest / materialize flows on a Prefect test server.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import test_serving
from helpers import good_rows, spec_for, write_csv
from test_serving import AUTH, MODEL, _as_json, _assert_same, _catalog_products, _expected, _home, _register, _train

from components.catalog import ingest, load_dataset, load_spec
from components.catalog.demo import write_demo_catalog
from components.features.tables import (
    IMAGE,
    LABELS,
    TEXT,
    EncoderMismatch,
    embedding_view_name,
    event_time,
    image_stats,
    table_path,
)
from components.inference.predictor import Predictor
from components.registry import Registry
from feature_repo.store import dataset_as_of, historical_items, online_features, open_store, put_embeddings, repo_config
from flows.features import write_model_embeddings, write_product_features
from serving.by_id import OnlineScorer
from serving.schemas import ModelRef

# The real `bentoml serve` of tests/test_serving.py, over this module's `world`.
server, client = test_serving.server, test_serving.client
OTHER_ENCODERS = {
    "text": {"name": "tiny-random", "max_length": 24},
    "image": {"name": "tiny-random", "image_size": [24, 24]},
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A demo dataset whose features are in Feast, v1 (modality_attention, production) with its
    embeddings in the store, v2 (concat) on other encoders (an image size of 24, not 32)."""
    root = tmp_path_factory.mktemp("features")
    home = root / "home"
    spec = write_demo_catalog(root / "catalog", n=120, seed=5)
    with _home(home):
        dataset = load_dataset(ingest(load_spec(spec), home=home).dataset_dir)
        write_product_features.fn(dataset.path)
        v1 = _train(dataset, root / "v1", "modality_attention")
        v2 = _train(dataset, root / "v2", "concat", model=OTHER_ENCODERS)
        view = write_model_embeddings.fn(dataset.path, v1)
    assert _register(home, v1, promote=True) == 1
    assert _register(home, v2, promote=False) == 2
    return {"root": root, "home": home, "dataset": dataset, "dirs": {1: v1, 2: v2}, "view": view}


def _store(world):
    return open_store(world["home"])


def test_online_store_returns_what_ingest_wrote(world):
    dataset, home = world["dataset"], world["home"]
    store = _store(world)
    names = {v.name for v in store.list_feature_views()}
    assert {TEXT, IMAGE, LABELS, world["view"]} <= names
    assert world["view"] == embedding_view_name(*_identities(world["dirs"][1]))
    root = home / "feast"
    for view in (TEXT, IMAGE, LABELS):  # the offline sources, under ATTRFLOW_HOME
        assert set(pd.read_parquet(table_path(view, root))["dataset"]) == {f"{dataset.name}-{dataset.version}"}
    assert (table_path(world["view"], root) / f"{dataset.name}-{dataset.version}.parquet").is_file()
    items = dataset.items.iloc[:10]
    rows = online_features([*items["id"], "no-such-product"], store=store)
    assert rows[-1] is None
    for row, item in zip(rows, items.itertuples(), strict=False):
        assert row["title"] == (item.title or "") and row["description"] == (item.description or "")
        assert row["dataset_version"] == dataset.version
        assert row["image_path"] == (item.image_path or "") and row["image_sha256"] == (item.image_sha256 or "")
        stats = image_stats(item.image_path)
        assert row["image_width"] == stats["image_width"] and row["image_height"] == stats["image_height"]
        assert row["image_brightness"] == pytest.approx(stats["image_brightness"], abs=1e-6)
        want = {a: getattr(item, a) for a in dataset.attributes}
        assert row["labels"] == {a: list(v) if isinstance(v, list) else v for a, v in want.items()}


def _identities(model_dir: Path) -> tuple[str, str]:
    model = Predictor(model_dir).model
    return model.text_encoder.identity, model.image_encoder.identity


def test_embedding_view_holds_the_cache_and_refuses_other_encoders(world):
    from components.features.cache import cached_encodings

    dataset, store = world["dataset"], _store(world)
    model = Predictor(world["dirs"][1]).model
    with _home(world["home"]):
        enc = cached_encodings(dataset, model.text_encoder, model.image_encoder, progress=False)
    ids = dataset.items["id"].tolist()[:5]
    got = store.get_online_features(
        features=[f"{world['view']}:text_embedding", f"{world['view']}:image_embedding"],
        entity_rows=[{"product_id": i} for i in ids],
    ).to_dict()
    np.testing.assert_allclose(np.array(got["text_embedding"]), enc.text[:5].numpy(), atol=1e-6)
    np.testing.assert_allclose(np.array(got["image_embedding"]), enc.image[:5].numpy(), atol=1e-6)

    text_id, image_id = _identities(world["dirs"][1])
    other_text, other_image = _identities(world["dirs"][2])
    n = len(dataset.items)
    vectors = (np.zeros((n, 32), np.float32), np.zeros((n, 32), np.float32), np.zeros(n, bool))
    with (
        _home(world["home"]),
        pytest.raises(EncoderMismatch, match=r"holds vectors of text:tiny-random.*32x32.*not of"),
    ):
        put_embeddings(store, dataset, other_text, other_image, *vectors, view=world["view"])
    small = (np.zeros((n, 8), np.float32), np.zeros((n, 32), np.float32), np.zeros(n, bool))
    with _home(world["home"]), pytest.raises(EncoderMismatch, match=r"vectors of 8 \+ 32 values"):
        put_embeddings(store, dataset, text_id, image_id, *small)
    with _home(world["home"]), pytest.raises(EncoderMismatch, match="not the embedding view of"):
        put_embeddings(store, dataset, text_id, image_id, *vectors, view="product_embeddings_elsewhere")


def test_historical_read_is_point_in_time_correct(tmp_path, attrflow_home):
    """A product whose title and label change between two ingests: a read at a time between them
    sees the first, a read after the second sees the second, the online store the newest."""
    rows = good_rows(tmp_path / "catalog", n=3)
    spec = spec_for(write_csv(tmp_path / "catalog", rows))
    first = load_dataset(ingest(spec).dataset_dir)
    write_product_features.fn(first.path)
    time.sleep(1.1)  # ingest times have one-second resolution
    rows[0] = {**rows[0], "title": "blue linen shirt", "size": "L"}
    second = load_dataset(ingest(spec_for(write_csv(tmp_path / "catalog", rows))).dataset_dir)
    assert second.version != first.version
    write_product_features.fn(second.path)
    t1, t2 = event_time(first), event_time(second)
    assert t2 > t1

    ids = ["g0", "g1", "unknown"]
    before = historical_items(ids, t1 - timedelta(seconds=5))
    assert before["title"].isna().all()  # nothing was ingested yet
    between = historical_items(ids, t1 + (t2 - t1) / 2)
    assert between["id"].tolist() == ids
    assert between["title"].tolist()[:2] == ["red shirt 0", "red shirt 1"]
    assert between["labels"][0]["size"] == "M" and between["dataset_version"][0] == first.version
    after = historical_items(ids, t2)
    assert after["title"].tolist()[:2] == ["blue linen shirt", "red shirt 1"]
    assert after["labels"][0] == {"colour": ["red", "white"], "size": "L"}
    assert after["dataset_version"][0] == second.version and after["title"].isna().tolist()[2]
    online = online_features(ids)
    assert online[0]["title"] == "blue linen shirt" and online[0]["labels"]["size"] == "L" and online[2] is None

    # Training reads through Feast: the newest dataset's products as they were between the two ingests.
    then = dataset_as_of(second, t1 + (t2 - t1) / 2)
    assert then.version.startswith(f"{second.version}@") and then.vocab == second.vocab
    assert then.items.set_index("id").loc["g0", ["title", "size"]].tolist() == ["red shirt 0", "M"]
    assert then.items["colour"].tolist() == [["red", "white"]] * 3 and len(then.split("train")) == 3
    assert len(dataset_as_of(second, t1 - timedelta(seconds=5)).items) == 0


def test_scoring_by_id_uses_stored_embeddings_only_for_matching_encoders(world):
    dataset = world["dataset"]
    scorer = OnlineScorer(_store(world))
    products = _catalog_products(dataset, 5)
    text_only = dataset.items[dataset.items["image_path"].isna()].iloc[:1]
    ids = [p["id"] for p in products] + text_only["id"].tolist() + ["nope"]
    raw = products + [
        {"id": r.id, "title": r.title or "", "description": r.description or "", "image": None}
        for r in text_only.itertuples()
    ]
    for version, features in ((1, "embeddings"), (2, "text_image")):
        model_dir = world["dirs"][version]
        got = scorer.score(Predictor(model_dir), ModelRef(name=MODEL, version=version), ids, top_k=100)
        assert [g.status for g in got] == ["ok"] * (len(ids) - 1) + ["not_found"]
        assert {g.features for g in got[:-1]} == {features}, version
        assert got[-1].model_dump(exclude_none=True) == {"id": "nope", "status": "not_found"}
        for g, want in zip(got, _expected(model_dir, raw), strict=False):
            _assert_same(g.model_dump(), want)


def test_embeddings_of_an_older_dataset_version_are_not_used(tmp_path, attrflow_home):
    """A new ingest (a title changed) makes the stored vectors stale: the products are scored from
    their text and image until the new version's embeddings are written."""
    spec = write_demo_catalog(tmp_path / "catalog", n=60, seed=4, defects=False)
    first = load_dataset(ingest(load_spec(spec)).dataset_dir)
    write_product_features.fn(first.path)
    model_dir = _train(first, tmp_path / "m", "concat")
    write_model_embeddings.fn(first.path, model_dir)
    catalog = pd.read_csv(spec.parent / "catalog.csv", dtype=str, keep_default_na=False)
    catalog.loc[0, "title"] = "completely different words"
    catalog.to_csv(spec.parent / "catalog.csv", index=False)
    time.sleep(1.1)
    second = load_dataset(ingest(load_spec(spec)).dataset_dir)
    write_product_features.fn(second.path)
    # Training through Feast: the new version's products as they were before it, trained on.
    then = dataset_as_of(second, event_time(first) + (event_time(second) - event_time(first)) / 2)
    assert then.items["title"][0] == first.items["title"][0] != second.items["title"][0]
    assert (_train(then, tmp_path / "as-of", "concat") / "config.json").is_file()
    ids, predictor, ref = first.items["id"].tolist()[:3], Predictor(model_dir), ModelRef(name=MODEL, version=1)
    got = OnlineScorer().score(predictor, ref, ids)
    assert [g.features for g in got] == ["text_image"] * 3 and got[0].status == "ok"
    write_model_embeddings.fn(second.path, model_dir)
    got = OnlineScorer().score(predictor, ref, ids, top_k=100)
    assert [g.features for g in got] == ["embeddings"] * 3
    raw = [
        {
            "id": r.id,
            "title": r.title or "",
            "description": r.description or "",
            "image": Path(r.image_path).read_bytes() if r.image_path else None,
        }
        for r in second.items.iloc[:3].itertuples()
    ]
    for g, want in zip(got, _expected(model_dir, raw), strict=True):
        _assert_same(g.model_dump(), want)


def test_predict_by_id_endpoint_matches_predict(server, client):
    products = _catalog_products(server["dataset"], 6)
    ids = [p["id"] for p in products]
    r = client.post("/predict_by_id", json={"ids": [*ids, "nope", ids[0]]})
    assert r.status_code == 200, r.text
    body = r.json()
    by_id = body["predictions"]
    assert [p["id"] for p in by_id] == [*ids, "nope", ids[0]] and len(body["request_id"]) == 32
    assert by_id[-2] == {
        "id": "nope",
        "status": "not_found",
        "model": None,
        "has_image": None,
        "features": None,
        "attributes": None,
        "error": None,
    }
    batch = client.post("/predict_batch", json={"products": [_as_json(p) for p in products]})
    assert batch.status_code == 200, batch.text
    for got, want in zip(by_id, batch.json()["predictions"], strict=False):
        assert got["status"] == "ok" and got["features"] == "embeddings"
        assert got["model"] == want["model"] == {"name": MODEL, "version": 1}
        _assert_same(got, want)
    _assert_same(by_id[-1], by_id[0])
    assert client.post("/predict_by_id", json={"ids": []}).status_code == 400
    assert client.post("/predict_by_id", json={"ids": ["x"] * 9}).status_code == 400  # over ATTRFLOW_MAX_BATCH
    assert client.post("/predict_by_id", json={"ids": ids}, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert AUTH  # the client sends the key


def test_cli_predict_by_id_and_features_get(world, monkeypatch):
    from typer.testing import CliRunner

    from attrflow.cli import app

    monkeypatch.setenv("ATTRFLOW_HOME", str(world["home"]))
    product_id = world["dataset"].items["id"].iloc[0]
    runner = CliRunner()
    result = runner.invoke(app, ["predict", "--id", product_id, "--id", "nope", "--model", MODEL, "--json"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.output.strip().splitlines()[-1])
    assert [g["status"] for g in got] == ["ok", "not_found"] and got[0]["features"] == "embeddings"
    assert got[0]["model"] == {"name": MODEL, "version": 1}
    shown = runner.invoke(app, ["predict", "--id", product_id, "--model", MODEL])
    assert shown.exit_code == 0 and "from the stored embeddings" in shown.output, shown.output
    result = runner.invoke(app, ["features", "get", product_id, "nope", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output.strip().splitlines()[-1])
    assert rows["nope"] is None and rows[product_id]["dataset_version"] == world["dataset"].version
    assert runner.invoke(app, ["predict", "--id", product_id, "--model", "no-such-model"]).exit_code == 2


def test_shared_deployment_variant_is_a_valid_feast_config(monkeypatch):
    """feature_repo/variants/postgres_redis.yaml: PostgreSQL registry, Redis online store (parsed
    and validated here; infra/ runs the services)."""
    monkeypatch.setenv("ATTRFLOW_FEAST_PG_URL", "postgresql+psycopg://feast:feast@127.0.0.1:5432/feast")
    monkeypatch.setenv("ATTRFLOW_FEAST_REDIS", "127.0.0.1:6379")
    variant = Path(__file__).resolve().parent.parent / "feature_repo" / "variants" / "postgres_redis.yaml"
    config = repo_config(yaml_file=variant)
    assert config.registry.path.startswith("postgresql+psycopg://") and config.online_config["type"] == "redis"
    assert config.entity_key_serialization_version == 3
    monkeypatch.delenv("ATTRFLOW_FEAST_REDIS")
    with pytest.raises(ValueError, match="ATTRFLOW_FEAST_REDIS"):
        repo_config(yaml_file=variant)


@pytest.mark.slow
def test_ingest_and_materialize_flows(tmp_path, attrflow_home):
    """The ingest flow writes and materializes the features; the scheduled materialize flow adds
    the production model's embeddings; the deployment is there."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.deployments import build_deployments
    from flows.features import materialize_flow
    from flows.ingest import ingest_flow

    spec = write_demo_catalog(tmp_path / "catalog", n=60, seed=3)
    with prefect_test_harness(server_startup_timeout=120):
        result = ingest_flow(str(spec))
        dataset = load_dataset(result["dataset_dir"])
        first = dataset.items.iloc[0]
        assert online_features([first["id"]])[0]["title"] == (first["title"] or "")
        model_dir = _train(dataset, tmp_path / "m", "concat")
        with Registry() as registry:  # a run on the dataset: the version whose embeddings the flow writes
            run_id = registry.start_run("train", {}, dataset=(dataset.name, dataset.version))
            registry.promote(MODEL, registry.register_model_version(MODEL, run_id, model_dir, {}, {}).version)
        done = materialize_flow(MODEL)
        assert {TEXT, embedding_view_name(*_identities(model_dir))} <= set(done["views"])
        deployments = {f"{d.flow_name}/{d.name}": d for d in build_deployments()}
    scheduled = deployments["materialize/scheduled"]
    assert scheduled.schedules and scheduled.parameters == {"model_name": "demo"}
