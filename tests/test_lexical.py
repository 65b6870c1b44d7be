"""The lexical channel (hashed word n-grams beside the sentence embedding): what it computes, that
every path (frozen cache, raw rows, saved model) feeds it the same way, that it is off by default;
and the embedding cache's pooled-only file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from components.catalog import ingest, load_dataset, load_spec
from components.catalog.demo import write_demo_catalog
from components.features.cache import cache_path, cached_encodings
from components.features.lexical import LexicalBatch, hashed_ngrams, product_texts
from components.inference.predict import predict_items
from components.models.encoders import ImageEncoder, ImageEncoderConfig, TextEncoder, TextEncoderConfig
from components.models.io import load_model
from components.models.model import ModelConfig, create_model
from components.training.trainer import TrainConfig, train

TINY_TEXT = {"name": "tiny-random", "max_length": 16}
TINY_IMAGE = {"name": "tiny-random", "image_size": [32, 32]}
VOCAB = {"category": {"kind": "multiclass", "values": ["a", "b", "c"]}}


def test_hashed_ngrams_are_word_unigrams_and_bigrams_and_stable():
    m = hashed_ngrams(["Navy Blue Shirt", "navy  blue shirt", "Red Shirt", ""])
    assert m.shape[0] == 4
    assert m[0].nnz == 5  # navy, blue, shirt, "navy blue", "blue shirt"
    assert (m[0] != m[1]).nnz == 0  # case and spacing do not matter
    assert len(set(m[0].indices) & set(m[2].indices)) == 1  # only "shirt" is shared
    assert m[3].nnz == 0
    assert np.allclose(np.asarray(m[:3].multiply(m[:3]).sum(1)).ravel(), 1.0)  # rows are L2-normalised
    assert product_texts(["Shirt", None, ""], ["cotton", "", None]) == ["Shirt cotton", "", ""]
    batch = LexicalBatch.from_rows(m, np.array([2, 0]))
    assert batch.offsets.tolist() == [0, 3] and len(batch.ids) == 8  # "red shirt": 3 n-grams, then 5


def test_lexical_is_on_by_default_where_pooled_text_is_read_and_refused_elsewhere():
    assert ModelConfig().lexical is not None and ModelConfig().lexical.dropout == 0.5
    assert ModelConfig.model_validate({"fusion": {"name": "concat"}, "lexical": None}).lexical is None
    for fusion in ("image", "cross_attention", "tfidf_lr"):
        assert ModelConfig.model_validate({"fusion": {"name": fusion}}).lexical is None  # the default: off
        with pytest.raises(ValidationError, match="lexical"):
            ModelConfig.model_validate({"fusion": {"name": fusion}, "lexical": {}})


@pytest.mark.parametrize("fusion", ["text", "concat", "modality_attention", "late"])
def test_lexical_channel_widens_the_text_vector_and_reads_the_words(fusion):
    model = create_model(
        {
            "text": TINY_TEXT,
            "image": TINY_IMAGE,
            "fusion": {"name": fusion},
            "head": {"hidden": 8},
            "lexical": {"buckets": 64, "dim": 4},
        },
        VOCAB,
    ).eval()
    titles = ["red shirt", "blue jeans"]
    batch = dict(model.text_encoder.tokenize(titles, ["", ""]))
    batch["pixels"], batch["has_image"] = torch.randn(2, 3, 32, 32), torch.tensor([True, False])
    batch.update(LexicalBatch.from_rows(hashed_ngrams(titles)).as_dict())
    features = model.forward_features(batch)
    assert features.lexical is not None
    out = model(batch)
    # The same sentence vectors with other words give other logits: the n-grams are read.
    other = dict(batch, **LexicalBatch.from_rows(hashed_ngrams(["green socks", "white cap"])).as_dict())
    assert not torch.allclose(model(other).logits["category"], out.logits["category"])
    features.lexical = None
    with pytest.raises(ValueError, match="hashed n-grams"):
        model.forward_head(features)


def test_lexical_dropout_applies_in_training_only():
    model = create_model(
        {
            "text": TINY_TEXT,
            "image": TINY_IMAGE,
            "fusion": {"name": "text"},
            "lexical": {"buckets": 64, "dim": 4, "dropout": 0.5},
        },
        VOCAB,
    )
    x = LexicalBatch.from_rows(hashed_ngrams(["red cotton slim fit casual shirt for men with long sleeves"] * 8))
    model.lexical.eval()
    assert torch.equal(model.lexical(x), model.lexical(x))
    model.lexical.train()
    torch.manual_seed(0)
    out = model.lexical(x)
    assert not torch.allclose(out[0], out[1])  # the same title, different n-grams kept per row


def test_training_with_lexical_frozen_and_from_raw_rows_agree_after_loading(tmp_path):
    spec = write_demo_catalog(tmp_path / "catalog", n=120, seed=3)
    ds = load_dataset(ingest(load_spec(spec), home=tmp_path / "home").dataset_dir)
    config = TrainConfig.model_validate(
        {
            "model": {
                "text": TINY_TEXT,
                "image": TINY_IMAGE,
                "fusion": {"name": "concat"},
                "head": {"hidden": 8},
                "lexical": {"buckets": 256, "dim": 8, "dropout": 0.2},
            },
            "training": {"epochs": 2, "batch_size": 16},
        }
    )
    result = train(config, ds, tmp_path / "m", progress=False)
    assert result.epochs_run == 2
    model = load_model(tmp_path / "m")
    assert model.lexical is not None and model.lexical.bag.weight.abs().sum() > 0
    idx = np.flatnonzero(ds.items["split"].to_numpy() == "test")
    enc = cached_encodings(ds, model.text_encoder, model.image_encoder, progress=False)
    from_cache = predict_items(model, encodings=enc, index=idx)
    from_rows = predict_items(model, ds.items.iloc[idx])  # what serving does: raw title + image
    for name, p in from_cache.probs.items():
        assert np.allclose(p, from_rows.probs[name], atol=1e-4)


def test_computing_a_token_cache_also_stores_its_pooled_part(tmp_path):
    spec = write_demo_catalog(tmp_path / "catalog", n=40, seed=4)
    ds = load_dataset(ingest(load_spec(spec), home=tmp_path / "home").dataset_dir)
    text, image = TextEncoder(TextEncoderConfig(**TINY_TEXT)), ImageEncoder(ImageEncoderConfig(**TINY_IMAGE))
    with_tokens = cached_encodings(ds, text, image, with_tokens=True, progress=False)
    pooled_file = cache_path(ds, text, image, False)
    from safetensors import safe_open

    with safe_open(str(pooled_file), framework="pt") as f:
        assert set(f.keys()) == {"text", "image", "has_image"}
    cache_path(ds, text, image, True).unlink()  # what pooled readers get comes from the pooled file alone
    pooled = cached_encodings(ds, text, image, with_tokens=False, progress=False)
    assert pooled.text_tokens is None and torch.equal(pooled.image, with_tokens.image)
    assert pooled.lexical is not None and pooled.lexical.shape[0] == len(ds.items)


def test_a_pooled_request_served_from_a_token_cache_stores_the_pooled_file(tmp_path):
    spec = write_demo_catalog(tmp_path / "catalog", n=40, seed=5)
    ds = load_dataset(ingest(load_spec(spec), home=tmp_path / "home").dataset_dir)
    text, image = TextEncoder(TextEncoderConfig(**TINY_TEXT)), ImageEncoder(ImageEncoderConfig(**TINY_IMAGE))
    full = cached_encodings(ds, text, image, with_tokens=True, progress=False)
    cache_path(ds, text, image, False).unlink()  # a token cache made before pooled files were stored
    pooled = cached_encodings(ds, text, image, with_tokens=False, progress=False)
    assert cache_path(ds, text, image, False).is_file() and pooled.text_tokens is None
    assert torch.equal(pooled.text, full.text)


def test_resuming_with_a_different_model_config_is_refused(tmp_path):
    spec = write_demo_catalog(tmp_path / "catalog", n=80, seed=6)
    ds = load_dataset(ingest(load_spec(spec), home=tmp_path / "home").dataset_dir)
    model = {"text": TINY_TEXT, "image": TINY_IMAGE, "fusion": {"name": "text"}, "head": {"hidden": 8}}
    plain = TrainConfig.model_validate({"model": model, "training": {"epochs": 1, "batch_size": 16}})
    train(plain, ds, tmp_path / "m", progress=False)
    with_lexical = TrainConfig.model_validate(
        {"model": {**model, "lexical": {"buckets": 64, "dim": 4}}, "training": {"epochs": 2, "batch_size": 16}}
    )
    with pytest.raises(ValueError, match="does not match this model config"):
        train(with_lexical, ds, tmp_path / "m", resume=True, progress=False)
