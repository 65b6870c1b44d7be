"""Ensembles of trained models: greedy selection on validation, the ensemble folder, and that it
predicts, evaluates and serves like a single model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import predict_one

from components.catalog import ingest, load_dataset, load_spec
from components.catalog.demo import write_demo_catalog
from components.evaluation.ensemble_selection import combine_models, select_members
from components.evaluation.evaluate import evaluate
from components.features.cache import cached_encodings
from components.features.preprocess import encode_labels
from components.inference.predict import predict_items
from components.models.ensemble import EnsembleModel
from components.models.io import load_model, load_thresholds
from components.training.trainer import TrainConfig, train

TINY = {"text": {"name": "tiny-random", "max_length": 24}, "image": {"name": "tiny-random", "image_size": [32, 32]}}


def _onehot(y: np.ndarray, n: int) -> np.ndarray:
    return np.eye(n)[y] * 0.8 + 0.2 / n


def test_greedy_selection_combines_complementary_models_and_skips_noise():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    half = np.arange(400) < 200
    wrong = (y + 1) % 4
    # A is right on the first half, B on the second (and unsure where wrong); C guesses.
    a = np.where(half[:, None], _onehot(y, 4), _onehot(wrong, 4) * 0.5 + 0.125)
    b = np.where(~half[:, None], _onehot(y, 4), _onehot(wrong, 4) * 0.5 + 0.125)
    c = _onehot(rng.integers(0, 4, 400), 4)
    probs = {"A": {"x": a}, "B": {"x": b}, "C": {"x": c}}
    weights = select_members(probs, {"x": y}, {"x": "multiclass"})
    assert set(weights) == {"A", "B"}
    # A perfect model needs no company: ties keep the smaller ensemble.
    assert select_members({"P": {"x": _onehot(y, 4)}, "C": {"x": c}}, {"x": y}, {"x": "multiclass"}) == {"P": 1.0}
    with pytest.raises(ValueError, match="no candidate"):
        select_members({}, {"x": y}, {"x": "multiclass"})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ens")
    spec = write_demo_catalog(root / "catalog", n=160, seed=3)
    ds = load_dataset(ingest(load_spec(spec), home=root / "home").dataset_dir)
    dirs = {}
    for fusion in ("text", "concat", "modality_attention"):
        cfg = TrainConfig.model_validate(
            {
                "model": {
                    **TINY,
                    "fusion": {"name": fusion},
                    "head": {"hidden": 16},
                    **(
                        {"lexical": {"buckets": 512, "dim": 8, "dropout": 0.2}}
                        if fusion != "modality_attention"
                        else {}
                    ),
                },
                "training": {"epochs": 2, "batch_size": 16},
            }
        )
        dirs[fusion] = train(cfg, ds, root / fusion, progress=False).model_dir
    return ds, dirs, root


def _probs(model, ds, split):
    enc = cached_encodings(ds, model.text_encoder, model.image_encoder, model.needs_tokens, progress=False)
    return predict_items(model, encodings=enc, index=np.flatnonzero(ds.items["split"] == split))


def test_ensemble_folder_predicts_the_weighted_mean_of_its_members(trained, tmp_path):
    ds, dirs, _ = trained
    members = {n: load_model(d) for n, d in dirs.items()}
    labels = {k: v.numpy() for k, v in encode_labels(ds.items, members["text"].vocab).items()}
    val = ds.items["split"].to_numpy() == "validation"
    val_probs = {n: _probs(m, ds, "validation").probs for n, m in members.items()}
    weights = {"text": 1.0, "concat": 2.0, "modality_attention": 1.0}
    mix = {a: sum(weights[n] * val_probs[n][a] for n in members) / 4 for a in val_probs["text"]}
    out = combine_models(dirs, weights, mix, {a: y[val] for a, y in labels.items()}, tmp_path / "ens")
    assert (out / "members" / "concat" / "model.safetensors").is_file() and not (
        out / "members" / "concat" / "checkpoint"
    ).exists()
    model = load_model(out)
    assert isinstance(model, EnsembleModel)
    assert model.members[1].text_encoder is model.members[0].text_encoder  # frozen encoders are shared, run once

    test = {n: _probs(m, ds, "test") for n, m in members.items()}
    got = _probs(model, ds, "test")
    for a in got.probs:  # multiclass and multilabel attributes alike
        want = sum(weights[n] * test[n].probs[a] for n in members) / 4
        np.testing.assert_allclose(got.probs[a], want, atol=1e-5)
    # Modality weights come from the one member that reports them.
    np.testing.assert_allclose(got.modality_weights, test["modality_attention"].modality_weights, atol=1e-6)

    # From raw rows (serving, `attrflow predict`) it gives what the cache path gives.
    rows = ds.items[ds.items["split"] == "test"].iloc[:6]
    raw = predict_items(model, rows)
    np.testing.assert_allclose(raw.probs["category"], got.probs["category"][:6], atol=1e-4)
    thresholds = load_thresholds(out)
    assert set(thresholds) == set(got.probs) and len(thresholds["colour"]) == len(ds.vocab["colour"].values)
    one = predict_one(out, title=rows.iloc[0]["title"])
    assert set(one["attributes"]) == set(got.probs)

    report, paths = evaluate(out, ds, "test")
    assert report.attributes["category"].n == int((ds.items["split"] == "test").sum())
    assert json.loads(paths["json"].read_text())["model"] == str(out)


def test_ensemble_refuses_members_that_do_not_fit_together(trained, tmp_path):
    ds, dirs, root = trained
    members = {n: load_model(d) for n, d in dirs.items()}
    other = TrainConfig.model_validate(
        {
            "model": {**TINY, "fusion": {"name": "text"}, "head": {"hidden": 16}, "attributes": ["category"]},
            "training": {"epochs": 1, "batch_size": 16},
        }
    )
    narrow = load_model(train(other, ds, root / "narrow", progress=False).model_dir)
    with pytest.raises(ValueError, match="other attributes"):
        EnsembleModel({"text": members["text"], "narrow": narrow}, {"text": 1, "narrow": 1}, shared_encoders=True)
    with pytest.raises(ValueError, match="no member has a weight"):
        combine_models(dirs, {"text": 0.0}, {}, {}, tmp_path / "e")


@pytest.mark.slow
def test_an_ensemble_of_real_default_encoder_models_predicts_a_product(tmp_path):
    """The offline default encoders (MiniLM + EfficientNet-Lite0), frozen, shared by two members."""
    spec = write_demo_catalog(tmp_path / "catalog", n=80, seed=4)
    ds = load_dataset(ingest(load_spec(spec), home=tmp_path / "home").dataset_dir)
    dirs = {}
    for fusion in ("text", "concat"):
        cfg = TrainConfig.model_validate(
            {
                "model": {
                    "text": {"max_length": 16},
                    "image": {"image_size": [64, 64]},
                    "fusion": {"name": fusion},
                    "lexical": {"buckets": 1024, "dim": 8, "dropout": 0.2},
                },
                "training": {"epochs": 1, "batch_size": 16},
            }
        )
        dirs[fusion] = train(cfg, ds, tmp_path / fusion, progress=False).model_dir
    members = {n: load_model(d) for n, d in dirs.items()}
    val = {n: _probs(m, ds, "validation").probs for n, m in members.items()}
    labels = {
        k: v.numpy()[ds.items["split"].to_numpy() == "validation"]
        for k, v in encode_labels(ds.items, members["text"].vocab).items()
    }
    mix = {a: (val["text"][a] + val["concat"][a]) / 2 for a in val["text"]}
    out = combine_models(dirs, {"text": 1.0, "concat": 1.0}, mix, labels, tmp_path / "ens")
    item = ds.items.dropna(subset=["image_path"]).iloc[0]
    got = predict_one(out, title=item["title"], image=item["image_path"])
    parts = [predict_one(d, title=item["title"], image=item["image_path"]) for d in dirs.values()]
    for attr, res in got["attributes"].items():
        top = res["values"][0]
        want = np.mean(
            [
                next((v["score"] for v in p["attributes"][attr]["values"] if v["value"] == top["value"]), np.nan)
                for p in parts
            ]
        )
        if not np.isnan(want):  # the value is in both members' top 3
            assert top["score"] == pytest.approx(want, abs=2e-4)
