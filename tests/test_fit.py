"""The automatic model: TF-IDF + LR as a model like the others, the portfolio within a budget,
`attrflow fit` registering on a catalog with and without images, and the shipped recipe."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import predict_one

from components.catalog import ingest, load_dataset, load_spec
from components.catalog.demo import write_demo_catalog
from components.evaluation.evaluate import predict_split
from components.features.lexical import hashed_ngrams, product_texts
from components.features.preprocess import encode_labels
from components.models.io import load_model
from components.registry import Registry
from components.training.fit import FitConfig, fit, member_config, parse_duration
from components.training.trainer import TrainConfig, load_train_config, train

REPO = Path(__file__).resolve().parent.parent
TINY = {"text": {"name": "tiny-random", "max_length": 24}, "image": {"name": "tiny-random", "image_size": [32, 32]}}


@pytest.fixture(scope="module")
def demo_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit-demo")
    spec = write_demo_catalog(root / "catalog", n=240, seed=3)
    return load_dataset(ingest(load_spec(spec), home=root / "home").dataset_dir)


def _tfidf(**fusion) -> TrainConfig:
    return TrainConfig.model_validate({"model": {**TINY, "fusion": {"name": "tfidf_lr", **fusion}}})


def test_tfidf_lr_scores_like_scikit_learn_and_serves_from_raw_products(tmp_path, demo_dataset):
    from sklearn.feature_extraction.text import TfidfTransformer
    from sklearn.linear_model import LogisticRegression

    result = train(_tfidf(C=[10.0]), demo_dataset, tmp_path / "m")
    items = demo_dataset.items
    split = items["split"].to_numpy()
    tr, va = np.flatnonzero(split == "train"), np.flatnonzero(split == "validation")
    # The same model fitted directly with scikit-learn on the same features.
    x = hashed_ngrams(product_texts(items["title"].tolist(), items["description"].tolist()))
    x.data[:] = 1.0
    vocabulary = np.unique(x[tr].indices)
    tfidf = TfidfTransformer(sublinear_tf=True).fit(x[tr][:, vocabulary])
    xt = tfidf.transform(x[:, vocabulary])
    y = encode_labels(items, {"category": demo_dataset.vocab["category"]})["category"].numpy()
    clf = LogisticRegression(C=10.0, max_iter=1000).fit(xt[tr], y[tr])
    expected = clf.predict_proba(xt[va])
    got = result.validation_probs["category"][:, clf.classes_]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    # The saved folder: evaluation (cached path) and the Predictor (raw products) score alike.
    model = load_model(tmp_path / "m")
    evaluated = predict_split(model, tmp_path / "m", demo_dataset, "validation").probs["category"]
    np.testing.assert_allclose(evaluated, result.validation_probs["category"], atol=1e-5)
    row = items.iloc[va[0]]
    served = predict_one(tmp_path / "m", row["title"], row["description"], row["image_path"])
    top = served["attributes"]["category"]["values"][0]
    assert top["value"] == demo_dataset.vocab["category"].values[int(evaluated[0].argmax())]
    assert top["score"] == pytest.approx(float(evaluated[0].max()), abs=1e-4)
    # An n-gram never seen in training changes nothing (TfidfVectorizer ignores unknown words).
    unseen = predict_one(tmp_path / "m", row["title"], row["description"] + " zzqxv", row["image_path"])
    assert unseen["attributes"]["category"]["values"][0]["score"] == pytest.approx(top["score"], abs=1e-5)


def test_tfidf_lr_chooses_c_on_validation_and_handles_values_missing_from_training(tmp_path, demo_dataset, monkeypatch):
    full = train(_tfidf(), demo_dataset, tmp_path / "full")
    # A large catalog chooses C on a sample, then fits all train products once with it.
    import components.training.linear as linear

    monkeypatch.setattr(linear, "C_SAMPLE", 60)
    sampled = train(_tfidf(), demo_dataset, tmp_path / "m")
    assert sampled.validation["category"]["f1_macro"] >= full.validation["category"]["f1_macro"] - 0.05
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert set(meta["chosen_C"]) == set(demo_dataset.vocab) and set(meta["chosen_C"].values()) <= {1.0, 10.0, 100.0}
    # A multilabel attribute (colour) and values absent from the train split stay finite and near 0.
    probs = predict_split(load_model(tmp_path / "m"), tmp_path / "m", demo_dataset, "test").probs
    assert all(np.isfinite(p).all() for p in probs.values())


def test_max_seconds_stops_training_after_the_epoch_that_spends_it(tmp_path, demo_dataset):
    cfg = TrainConfig.model_validate(
        {
            "model": {**TINY, "fusion": {"name": "concat"}},
            "training": {"epochs": 50, "batch_size": 16, "patience": 50, "max_seconds": 0.01},
        }
    )
    result = train(cfg, demo_dataset, tmp_path / "m", progress=False)
    assert result.epochs_run == 1


def test_portfolio_keeps_members_within_budget_and_writes_a_model(tmp_path, demo_dataset):
    config = FitConfig(
        time_budget_seconds=15,
        members=["tfidf_lr", "text", "concat"],
        text=TINY["text"],
        image=TINY["image"],
    )
    start = time.perf_counter()
    result = fit(demo_dataset, tmp_path / "fitted", config)
    assert time.perf_counter() - start < 60
    # Every member either trained or was skipped because the budget was spent (a slow machine).
    assert set(result.members) | set(result.skipped) == {"tfidf_lr", "text", "concat"}
    assert "tfidf_lr" in result.members and result.weights
    assert all(why == "time budget spent" for why in result.skipped.values())
    assert set(result.weights) <= set(result.members)
    summary = json.loads((tmp_path / "fitted" / "fit.json").read_text())
    assert summary["weights"] == result.weights
    # The chosen model is at least as good on validation as every member alone (greedy selection
    # starts from the best single member).
    best_member = max(m["validation"] for m in result.members.values())
    chosen = float(np.mean([m["f1_macro"] for m in result.validation.values()]))
    assert chosen >= best_member - 1e-9
    model = load_model(tmp_path / "fitted")
    assert [s.name for s in model.specs] == list(demo_dataset.vocab)
    assert not (tmp_path / "fitted.members").exists()


def test_small_catalogs_get_batches_with_enough_steps():
    assert member_config("concat", FitConfig(), n_train=160).training.batch_size == 10
    assert member_config("concat", FitConfig(), n_train=100_000).training.batch_size == 256
    assert member_config("tfidf_lr", FitConfig(), n_train=100).model.lexical is None


def test_durations():
    assert parse_duration("20m") == 1200 and parse_duration("1h30m") == 5400 and parse_duration("90") == 90
    with pytest.raises(ValueError, match="20 minutes"):
        parse_duration("20 minutes")


def _text_only_catalog(root: Path, n: int = 200) -> Path:
    rng = np.random.default_rng(0)
    kinds = {"shirt": ["shirt", "tee", "polo"], "shoe": ["sneaker", "boot", "shoe"], "bag": ["bag", "tote", "backpack"]}
    root.mkdir(parents=True)
    with (root / "catalog.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "title", "category"])
        for i in range(n):
            cat = list(kinds)[i % 3]
            w.writerow([f"p{i}", f"{rng.choice(['red', 'blue', 'acme', 'basic'])} {rng.choice(kinds[cat])} {i}", cat])
    (root / "spec.yaml").write_text(
        "name: textonly\nsource: catalog.csv\nid_column: id\ntitle_column: title\n"
        "attributes:\n  - {name: category, column: category}\nsplit: {seed: 0, validation: 0.2, test: 0.2}\n"
    )
    return root / "spec.yaml"


@pytest.mark.slow
@pytest.mark.parametrize("catalog", ["demo", "no-images"])
def test_attrflow_fit_registers_a_model_with_the_real_default_encoders(tmp_path, catalog):
    """`attrflow fit` from a spec: ingest, the portfolio on the offline default encoders within the
    budget, registration through the promotion rule. Without images, the image members are skipped."""
    if catalog == "demo":
        spec = write_demo_catalog(tmp_path / "catalog", n=150, seed=2)
    else:
        spec = _text_only_catalog(tmp_path / "catalog")
    start = time.perf_counter()
    command = [sys.executable, "-m", "attrflow.cli", "fit", str(spec), "--time-budget", "15s", "--model-name", "auto"]
    done = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert time.perf_counter() - start < 300
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["production_version"] == 1
    with Registry() as registry:
        production = registry.get_production("auto")
    summary = json.loads((Path(production.artifact_dir) / "fit.json").read_text())
    if catalog == "no-images":
        assert {"concat", "late"} <= set(summary["skipped"])
        assert set(summary["members"]) == {"tfidf_lr", "text"}
    else:
        assert "tfidf_lr" in summary["members"] and len(summary["members"]) >= 2


def test_bad_budget_is_refused_by_the_cli(tmp_path):
    from typer.testing import CliRunner

    from attrflow.cli import app

    result = CliRunner().invoke(app, ["fit", str(tmp_path), "--time-budget", "soon"])
    assert result.exit_code != 0 and "time-budget" in result.output


def test_shipped_configs_carry_the_benchmark_recipe():
    """`attrflow train configs/models/X.yaml` trains what the quality benchmark's row X trains."""
    sys.path.insert(0, str(REPO))
    from bench.rows import row_config

    for name, row in {
        "text": "text",
        "concat": "concat",
        "late": "late",
        "modality_attention": "modality_attention_l0.01",
        "image": "image",
        "cross_attention": "cross_attention",
    }.items():
        shipped = load_train_config(REPO / "configs" / "models" / f"{name}.yaml")
        bench = row_config(row)
        assert shipped.model.model_dump(exclude={"attributes"}) == bench.model.model_dump(exclude={"attributes"}), name
        assert shipped.training.model_dump(
            exclude={"label_smoothing", "logit_adjust_tau"}
        ) == bench.training.model_dump(exclude={"label_smoothing", "logit_adjust_tau"}), name
    # The library's default model config carries the lexical channel where the fusion reads text.
    from components.models.model import ModelConfig

    assert ModelConfig(fusion={"name": "concat"}).lexical is not None
    assert ModelConfig(fusion={"name": "cross_attention"}).lexical is None


def test_confident_learning_flags_planted_label_flips(tmp_path, demo_dataset):
    """Flip a tenth of the train products' category: cross-fitted TF-IDF + LR probabilities and
    cleanlab find most flips and few clean labels; removing them keeps validation and test as they were."""
    import dataclasses

    from components.training.label_noise import find_label_issues, without_label_issues, write_label_issues

    items = demo_dataset.items.copy()
    train_rows = np.flatnonzero(items["split"].to_numpy() == "train")
    flipped = np.random.default_rng(0).choice(train_rows, size=len(train_rows) // 10, replace=False)
    values = demo_dataset.vocab["category"].values
    for i in flipped:
        items.iat[i, items.columns.get_loc("category")] = values[
            (values.index(items["category"].iat[i]) + 1) % len(values)
        ]
    noisy = dataclasses.replace(demo_dataset, items=items)
    issues = find_label_issues(noisy, _tfidf(C=[10.0]), tmp_path / "oof", folds=4)
    found = set(issues.loc[issues["attribute"] == "category", "id"])
    planted = set(items["id"].iloc[flipped])
    assert len(found & planted) >= 0.7 * len(planted)
    assert len(found - planted) <= 0.5 * len(planted)
    # Every flag is a train label; the suggestion for a found flip is the original value.
    assert set(items.loc[items["id"].isin(issues["id"]), "split"]) == {"train"}
    cleaned = without_label_issues(noisy, issues[issues["attribute"] == "category"])
    gone = cleaned.items["id"].isin(found)
    assert cleaned.items.loc[gone, "category"].isna().all() and cleaned.items.loc[~gone, "category"].notna().all()
    assert cleaned.items.loc[gone, "material"].equals(noisy.items.loc[gone, "material"])
    not_train = noisy.items["split"] != "train"
    assert cleaned.items.loc[not_train, "category"].equals(noisy.items.loc[not_train, "category"])
    write_label_issues(issues, tmp_path / "report")
    assert "category" in (tmp_path / "report" / "label_issues.md").read_text()


def _random_labels(dataset, seed: int = 0):
    import dataclasses

    items = dataset.items.copy()
    values = dataset.vocab["category"].values
    items["category"] = np.random.default_rng(seed).choice(values, size=len(items))
    return dataclasses.replace(dataset, items=items)


def test_stacking_never_learns_from_its_members_in_sample_predictions(tmp_path, demo_dataset):
    """Labels drawn at random: a member that memorises its train titles (TF-IDF + LR, C=100) is
    right on products it trained on and at chance elsewhere. The stacker must see the latter: if it
    learned from in-sample predictions it would trust the member and be confidently wrong."""
    from components.training.crossfit import out_of_sample_probabilities
    from components.training.stacking import train_stacked

    noisy = _random_labels(demo_dataset)
    memoriser = _tfidf(C=[100.0])
    image = TrainConfig.model_validate(
        {"model": {**TINY, "fusion": {"name": "image"}}, "training": {"epochs": 2, "batch_size": 16}}
    )
    rows, oof = out_of_sample_probabilities(noisy, memoriser, tmp_path / "oof", folds=3)
    y = encode_labels(noisy.items, {"category": noisy.vocab["category"]})["category"].numpy()[rows]
    in_sample = train(memoriser, noisy, tmp_path / "full")
    full = predict_split(load_model(tmp_path / "full"), tmp_path / "full", noisy, "train").probs["category"]
    assert (full.argmax(1) == y).mean() > 0.9  # the member memorises what it trained on
    assert (oof["category"].argmax(1) == y).mean() < 0.35  # 6 values: chance is 1/6
    del in_sample

    model_dir = train_stacked({"text": memoriser, "image": image}, noisy, tmp_path / "stacked", folds=3)
    model = load_model(model_dir)
    probs = predict_split(model, model_dir, noisy, "validation").probs["category"]
    assert probs.max(axis=1).mean() < 0.5  # no trust in the memoriser: near the label frequencies
    # A stacked folder serves like any model: the Predictor on a raw product agrees with evaluation.
    row = noisy.items[noisy.items["split"] == "validation"].iloc[0]
    served = predict_one(model_dir, row["title"], row["description"], row["image_path"])
    assert served["attributes"]["category"]["values"][0]["score"] == pytest.approx(float(probs[0].max()), abs=1e-4)


def test_stacking_learns_from_an_informative_member(tmp_path, demo_dataset):
    from components.training.stacking import train_stacked

    image = TrainConfig.model_validate(
        {"model": {**TINY, "fusion": {"name": "image"}}, "training": {"epochs": 2, "batch_size": 16}}
    )
    model_dir = train_stacked({"text": _tfidf(C=[10.0]), "image": image}, demo_dataset, tmp_path / "s", folds=3)
    validation = json.loads((model_dir / "validation_metrics.json").read_text())
    assert validation["category"]["f1_macro"] > 0.8  # the demo's category is in its titles
    assert json.loads((model_dir / "config.json").read_text())["stacked"]["folds"] == 3
