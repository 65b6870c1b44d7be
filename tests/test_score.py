"""`attrflow score`: every product of a catalog scored to Parquet on Ray actors (a real local Ray
on 127.0.0.1), matching the in-process Predictor product for product; from raw rows and from the
embedding cache."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from components.catalog import ingest, load_dataset, load_spec
from components.catalog.demo import write_demo_catalog
from components.features.images import load_image
from components.inference.inputs import Product
from components.inference.predictor import Predictor
from components.training.trainer import TrainConfig, train

pytestmark = pytest.mark.slow

TINY = {"text": {"name": "tiny-random", "max_length": 24}, "image": {"name": "tiny-random", "image_size": [32, 32]}}


def _in_process(model_dir, items: pd.DataFrame) -> list[dict]:
    products = [
        Product(
            id=r["id"], title=r["title"] or "", description=r["description"] or "", image=load_image(r["image_path"])
        )
        for r in items.to_dict("records")
    ]
    return Predictor(model_dir).predict(products).results


def _same(a: dict, b: dict, atol: float) -> None:
    assert a["has_image"] == b["has_image"]
    for name, got in a["attributes"].items():
        want = b["attributes"][name]
        assert [v["value"] for v in got["values"]][:1] == [v["value"] for v in want["values"]][:1], name
        for x, y in zip(got["values"], want["values"], strict=True):
            assert x["score"] == pytest.approx(y["score"], abs=atol), name


def test_score_every_product_on_ray_matches_the_in_process_predictor(tmp_path):
    from attrflow.cli import app

    dataset = load_dataset(ingest(load_spec(write_demo_catalog(tmp_path / "catalog", n=90, seed=8))).dataset_dir)
    config = TrainConfig.model_validate(
        {"model": {**TINY, "fusion": {"name": "concat"}, "head": {"hidden": 16}}, "training": {"epochs": 1}}
    )
    model_dir = train(config, dataset, tmp_path / "model", progress=False).model_dir  # frozen: the cache exists
    expected = {r["id"]: r for r in _in_process(model_dir, dataset.items)}

    runner = CliRunner()
    out = tmp_path / "scores.parquet"
    args = ["score", str(dataset.path), "--model", str(model_dir), "--out", str(out), "--chunk-size", "16"]
    result = runner.invoke(app, [*args, "--features", "raw", "--workers", "2", "--json"])
    assert result.exit_code == 0, result.output
    summary = _last_json(result.output)
    assert summary["mode"] == "ray" and summary["features"] == "raw" and summary["workers"] == 2
    frame = pd.read_parquet(out)
    assert len(frame) == len(dataset.items) and frame["id"].tolist() == dataset.items["id"].tolist()  # in order
    for attr in ("category", "colour", "material", "pattern"):
        assert {attr, f"score:{attr}", f"published:{attr}"} <= set(frame.columns)
    for row in frame.to_dict("records"):
        got = json.loads(row["result"])
        _same(got, expected[row["id"]], atol=1e-4)  # the same Predictor, other batches
        assert row["category"] == got["attributes"]["category"]["values"][0]["value"]

    # From the embedding cache (auto picks it for a frozen model): the heads see the same vectors.
    result = runner.invoke(app, [*args, "--workers", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert _last_json(result.output)["features"] == "embeddings"
    for row in pd.read_parquet(out).to_dict("records"):
        _same(json.loads(row["result"]), expected[row["id"]], atol=2e-3)


def test_score_errors_name_what_is_wrong(tmp_path):
    from attrflow.cli import app

    runner = CliRunner()
    out = runner.invoke(app, ["score", str(tmp_path), "--model", "nope"])
    assert out.exit_code == 2 and "model 'nope': no such folder, and no production version" in out.output
    out = runner.invoke(app, ["score", str(tmp_path), "--model", str(tmp_path)])
    assert out.exit_code == 2 and "is not a saved attrflow model" in out.output
    out = runner.invoke(app, ["score", str(tmp_path), "--model", "nope", "--features", "pixels"])
    assert out.exit_code == 2 and "--features: Input should be 'auto', 'raw' or 'embeddings'" in out.output


def _last_json(output: str) -> dict:
    """The command's JSON line (Ray's worker logs may follow it in the captured output)."""
    return json.loads(next(line for line in reversed(output.splitlines()) if line.startswith("{")))
