"""The Predictor: loaded once, scores raw products (bytes or PIL images) as evaluation scores dataset rows."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from components.catalog import ingest, load_dataset, load_spec
from components.catalog.demo import write_demo_catalog
from components.inference.inputs import InputLimits, InvalidProduct, Product, decode_image
from components.inference.predict import predict_items
from components.inference.predictor import Predictor
from components.training.trainer import TrainConfig, train

TINY = {"text": {"name": "tiny-random", "max_length": 24}, "image": {"name": "tiny-random", "image_size": [32, 32]}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("predictor")
    spec = write_demo_catalog(root / "catalog", n=120, seed=3)
    dataset = load_dataset(ingest(load_spec(spec), home=root / "home").dataset_dir)
    config = TrainConfig.model_validate(
        {
            "model": {**TINY, "fusion": {"name": "modality_attention"}, "head": {"hidden": 16}},
            "training": {"epochs": 1, "batch_size": 32},
        }
    )
    return dataset, train(config, dataset, root / "model", progress=False).model_dir


def _jpeg(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_predictor_matches_scoring_dataset_rows(trained):
    dataset, model_dir = trained
    rows = dataset.items.iloc[:6]
    predictor = Predictor(model_dir)
    products = [
        Product(
            id=r.id,
            title=r.title,
            description=r.description,
            image=decode_image(_jpeg(r.image_path)) if isinstance(r.image_path, str) else None,
        )
        for r in rows.itertuples()
    ]
    scored = predictor.predict(products, top_k=100, batch_size=4)  # two batches
    expected = predict_items(predictor.model, rows)
    for i, result in enumerate(scored.results):
        assert result["id"] == rows.iloc[i]["id"]
        for name, attr in result["attributes"].items():
            got = {v["value"]: v["score"] for v in attr["values"]}
            values = predictor.model.vocab[name].values
            want = {values[j]: round(float(p), 4) for j, p in enumerate(expected.probs[name][i])}
            assert got == pytest.approx(want, abs=2e-4)
            assert "modality_weights" in attr  # this fusion has them
    assert scored.text_embeddings.shape[0] == scored.image_embeddings.shape[0] == 6
    assert predictor.fusion == "modality_attention"


def test_published_follows_the_saved_thresholds(trained):
    _, model_dir = trained
    predictor = Predictor(model_dir)
    result = predictor.predict([Product(title="red cotton t-shirt")], top_k=3).results[0]
    assert result["has_image"] is False
    for name, attr in result["attributes"].items():
        for rank, v in enumerate(attr["values"]):
            limit = predictor.thresholds[name][predictor.model.vocab[name].values.index(v["value"])]
            expected = limit is not None and v["score"] >= limit and (attr["kind"] == "multilabel" or rank == 0)
            assert v["published"] == expected and v["threshold"] == limit


def test_a_product_without_anything_is_refused_by_field(trained):
    predictor = Predictor(trained[1])
    with pytest.raises(InvalidProduct, match=r"products\[1\]: needs a title, a description or an image"):
        predictor.predict([Product(title="shirt"), Product(title="  ")])
    predictor.limits = InputLimits(max_title_chars=5)
    with pytest.raises(InvalidProduct, match=r"product\.title: 6 characters, over the limit of 5"):
        predictor.predict([Product(title="shirts")])


def _png(size=(8, 8)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(out, format="PNG")
    return out.getvalue()


def test_decode_image_refuses_what_is_not_a_safe_image():
    assert decode_image(_png()).size == (8, 8)
    with pytest.raises(InvalidProduct, match="image: not a readable image"):
        decode_image(b"certainly not a png")
    with pytest.raises(InvalidProduct, match="image: empty"):
        decode_image(b"")
    with pytest.raises(InvalidProduct, match="over the limit of 10"):
        decode_image(_png(), InputLimits(max_image_bytes=10))
    # A decompression bomb: a tiny file whose header claims many pixels; refused before decoding.
    bomb = _png((4000, 4000))
    assert len(bomb) < 100_000
    with pytest.raises(InvalidProduct, match=r"4000x4000 pixels, over the limit of 1000000"):
        decode_image(bomb, InputLimits(max_image_pixels=1_000_000))


def test_rgba_images_are_flattened_on_white_like_training_images():
    out = io.BytesIO()
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(out, format="PNG")
    assert np.asarray(decode_image(out.getvalue()))[0, 0].tolist() == [255, 255, 255]
