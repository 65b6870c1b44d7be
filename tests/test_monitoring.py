"""Drift monitoring (components/monitoring) on small synthetic windows, with real Evidently reports,
and the registry's drift_reports table (SQLite always, PostgreSQL when ATTRFLOW_TEST_PG_URL is set)."""

from __future__ import annotations

import ast
import json
import math
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url

from components.catalog.dataset import AttributeVocab, Dataset
from components.monitoring import (
    Check,
    DecisionRule,
    DriftReport,
    DriftTest,
    InsufficientData,
    MonitoringConfig,
    decide,
    frame_from_dataset,
    frame_from_prediction_log,
    reference_frame,
    run_drift_report,
    sample_frame,
)
from components.registry import Registry, RegistryError

REPO = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("ATTRFLOW_TEST_PG_URL")

VOCAB = {
    "colour": AttributeVocab("colour", "multiclass", ["red", "blue", "green", "black"]),
    "tags": AttributeVocab("tags", "multilabel", ["cotton", "denim", "silk"]),
}
COLOURS = [0.4, 0.3, 0.2, 0.1]
TAG_RATES = {"cotton": 0.5, "denim": 0.2, "silk": 0.1}
DIM = 8
TABULAR = MonitoringConfig(embeddings=False)  # the embedding checks are the slow part: only where tested


def log_rows(
    n: int,
    seed: int,
    *,
    colours: list[float] = COLOURS,
    tag_rates: dict[str, float] = TAG_RATES,
    brightness: float = 0.5,
    text_shift: float = 0.0,
    image_embeddings: bool = True,
) -> pd.DataFrame:
    """Rows as `read_prediction_log` returns them, from one seeded distribution."""
    rng = np.random.default_rng(seed)
    has_image = rng.random(n) < 0.9
    rows = []
    for i in range(n):
        colour = rng.choice(len(colours), p=colours)
        score = float(rng.uniform(0.3, 1.0))
        predictions = [
            {"attribute": "colour", "value": VOCAB["colour"].values[colour], "score": score, "published": score > 0.6}
        ]
        chosen = {v: rng.random() < rate for v, rate in tag_rates.items()}
        for value in sorted(chosen, key=lambda v: not chosen[v]):  # published values rank first
            predictions.append(
                {
                    "attribute": "tags",
                    "value": value,
                    "score": 0.8 if chosen[value] else 0.2,
                    "published": chosen[value],
                }
            )
        image = bool(has_image[i])
        rows.append(
            {
                "product_id": f"p{seed}-{i}",
                "time": pd.Timestamp("2026-11-01", tz="UTC") + pd.Timedelta(minutes=i),
                "title_chars": int(rng.integers(20, 80)),
                "description_chars": int(rng.integers(0, 400)),
                "has_image": image,
                "image_width": int(rng.choice([60, 80, 120])) if image else None,
                "image_height": int(rng.choice([80, 100, 160])) if image else None,
                "image_brightness": float(np.clip(rng.normal(brightness, 0.1), 0, 1)) if image else None,
                "image_colourfulness": float(rng.uniform(0.05, 0.4)) if image else None,
                "text_embedding": (rng.normal(size=DIM) + text_shift).astype(np.float32),
                "image_embedding": (rng.normal(size=DIM) if image else np.zeros(DIM)).astype(np.float32)
                if image_embeddings
                else None,
                "predictions": predictions,
            }
        )
    return pd.DataFrame(rows)


def window(n: int, seed: int, **shifts) -> pd.DataFrame:
    return frame_from_prediction_log(log_rows(n, seed, **shifts), VOCAB)


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return window(300, seed=1)


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("drift")


# --- frames -------------------------------------------------------------------------------------


def test_log_frame_columns(reference):
    f = reference
    for column in ("title_chars", "has_image", "image_brightness", "pred:colour", "published:colour", "score:colour"):
        assert column in f
    assert [c for c in f if c.startswith("pred:tags=")] == ["pred:tags=cotton", "pred:tags=denim", "pred:tags=silk"]
    assert "pred:tags" not in f and "label:colour" not in f  # multilabel: one column per value; the log has no labels
    assert set(f["has_image"].unique()) == {0.0, 1.0}
    assert f.loc[f["has_image"] == 0, "image_brightness"].isna().all()
    assert f["text_embedding"].iloc[0].shape == (DIM,)
    rows = log_rows(3, seed=9)
    rows.at[1, "predictions"] = []  # a row with nothing predicted: missing, not "not published"
    g = frame_from_prediction_log(rows, VOCAB)
    assert g["pred:colour"].isna().tolist() == [False, True, False]
    assert math.isnan(g.loc[1, "pred:tags=denim"]) and math.isnan(g.loc[1, "published:colour"])
    published = [p["value"] for p in rows.loc[0, "predictions"] if p["attribute"] == "tags" and p["published"]]
    assert [v for v in VOCAB["tags"].values if g.loc[0, f"pred:tags={v}"] == 1.0] == sorted(
        published, key=VOCAB["tags"].values.index
    )


@pytest.fixture
def dataset(tmp_path) -> Dataset:
    """Six products: white / black / no image; labels with gaps; three per split."""
    paths = []
    for name, colour in (("white", (255, 255, 255)), ("black", (0, 0, 0))):
        path = tmp_path / f"{name}.png"
        Image.new("RGB", (40, 30), colour).save(path)
        paths.append(str(path))
    items = pd.DataFrame(
        {
            "id": [f"i{i}" for i in range(6)],
            "title": ["Red cotton shirt", "Blue Denim jeans", "plain top", "Black silk dress", None, "reddish scarf"],
            "description": ["", "soft", None, "", "x", ""],
            "image_path": [paths[0], paths[1], None, paths[0], paths[1], None],
            "colour": ["red", "blue", None, "black", "green", "red"],
            "tags": [["cotton"], ["denim"], None, ["silk", "cotton"], [], None],
            "split": ["train", "train", "train", "test", "test", "test"],
        }
    )
    return Dataset(path=tmp_path, manifest={"name": "t", "version": "v"}, items=items, vocab=VOCAB)


def test_dataset_frame(dataset):
    predictions = [
        {"attributes": {"colour": {"values": [{"value": "black", "score": 0.9, "published": True}]}}},
        {"attributes": {"colour": {"values": [{"value": "green", "score": 0.4, "published": False}]}}},
        {
            "attributes": {
                "colour": {"values": [{"value": "red", "score": 0.7, "published": True}]},
                "tags": {"values": [{"value": "silk", "score": 0.9, "published": True}]},
            }
        },
    ]
    vectors = np.arange(6 * DIM, dtype=np.float32).reshape(6, DIM)  # one per dataset row (the cache's order)
    f = frame_from_dataset(dataset, "test", predictions, text_embeddings=vectors)
    assert f["product_id"].tolist() == ["i3", "i4", "i5"]
    assert f["title_names:colour"].tolist() == [1.0, 0.0, 0.0]  # whole words only: "reddish" is not "red"
    assert f["title_names:tags"].tolist() == [1.0, 0.0, 0.0]
    assert f["title_words"].tolist() == [3.0, 0.0, 2.0]
    assert f["has_image"].tolist() == [1.0, 1.0, 0.0]
    assert f["image_brightness"].iloc[0] == pytest.approx(1.0) and f["image_brightness"].iloc[1] == pytest.approx(0.0)
    assert (f["image_width"].iloc[0], f["image_height"].iloc[0]) == (40.0, 30.0) and math.isnan(
        f["image_width"].iloc[2]
    )
    assert f["pred:colour"].tolist() == ["black", "green", "red"]
    assert f["published:colour"].tolist() == [1.0, 0.0, 1.0]
    assert f["pred:tags=silk"].tolist()[2] == 1.0 and math.isnan(f["pred:tags=silk"].iloc[0])
    assert f["label:colour"].tolist() == ["black", "green", "red"]
    assert f["label:tags=cotton"].tolist()[:2] == [1.0, 0.0] and math.isnan(f["label:tags=cotton"].iloc[2])
    np.testing.assert_array_equal(f["text_embedding"].iloc[0], vectors[3])
    # embeddings one per split row work too
    g = frame_from_dataset(dataset, "test", predictions, text_embeddings=vectors[3:])
    np.testing.assert_array_equal(g["text_embedding"].iloc[2], vectors[5])

    ref = reference_frame(dataset, predictions, text_embeddings=vectors)
    assert ref["product_id"].tolist() == ["i0", "i1", "i2", "i3", "i4", "i5"]
    assert ref["pred:colour"].iloc[:3].isna().all()  # no predictions on the training rows
    with pytest.raises(ValueError, match="input_split=None"):
        reference_frame(dataset, predictions, text_embeddings=vectors[3:])
    assert len(reference_frame(dataset, predictions, text_embeddings=vectors[3:], input_split=None)) == 3
    with pytest.raises(ValueError, match="expected one per split row"):
        frame_from_dataset(dataset, "test", predictions[:2])


# --- reports ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def same_distribution(reference, out) -> DriftReport:
    """The one report with embeddings and no shift: both windows come from one distribution."""
    return run_drift_report(reference, window(300, seed=2), out / "same", MonitoringConfig(), name="same")


def test_no_drift_when_both_windows_come_from_one_distribution(same_distribution):
    report = same_distribution
    assert not report.drift_detected, report.reason
    assert report.reason.startswith("no drift: 0 of")
    names = {c.name for c in report.checks}
    assert {"title_chars", "image_brightness", "has_image", "pred:colour", "published:tags"} <= names
    assert {"text_embedding", "image_embedding", "pred:tags=cotton", "pred:tags=denim", "pred:tags=silk"} <= names
    assert not any(n.startswith("score:") for n in names)  # check_scores is off by default
    emb = report.check("text_embedding")
    assert emb.kind == "embedding" and emb.method == "model" and emb.score_kind == "auc"
    assert 0.55 < emb.threshold < 0.7  # raised for a 300-row window (config.EmbeddingDriftTest)
    assert (report.window_start, report.window_end) == (
        pd.Timestamp("2026-11-01", tz="UTC").to_pydatetime(),
        pd.Timestamp("2026-11-01 04:59", tz="UTC").to_pydatetime(),
    )


def test_checks_carry_method_threshold_score_and_verdict(same_distribution):
    config = same_distribution.config
    for check in same_distribution.checks:
        assert math.isfinite(check.score) and check.threshold > 0
        if check.kind == "embedding":
            assert check.drifted == (check.score > check.threshold)
            continue
        info_type = {"has_image": "binary", "pred:colour": "categorical"}.get(check.name)
        if info_type:
            assert check.method == config.test_for(check.name, info_type).method
        assert check.score_kind == "p_value"
        assert check.drifted == (check.score < check.threshold)
    assert same_distribution.check("image_brightness").method == "ks"
    assert same_distribution.check("pred:colour").method == "chi2_contingency"
    assert same_distribution.check("pred:tags=silk").method == "z"
    assert same_distribution.check("image_brightness").current_rows < 300  # products without images left out


def test_report_files(same_distribution):
    report = same_distribution
    assert report.html_path.is_file() and report.html_path.stat().st_size > 10_000
    snapshot = json.loads(report.snapshot_path.read_text())
    assert snapshot["name"] == "same" and snapshot["metric_results"]
    from components.monitoring._evidently import Snapshot

    assert Snapshot.load(str(report.snapshot_path)).metric_results  # Evidently reads it back (e.g. into its UI)
    saved = DriftReport.model_validate_json((report.html_path.parent / "drift.json").read_text())
    assert saved.checks == report.checks and saved.config == report.config


def test_a_shifted_predicted_value_distribution_is_drift(reference, out):
    report = run_drift_report(reference, window(300, seed=3, colours=[0.15, 0.25, 0.2, 0.4]), out / "colour", TABULAR)
    assert report.drift_detected
    assert report.check("pred:colour").drifted and report.check("pred:colour").score < 1e-6
    assert [c.name for c in report.drifted_checks] == ["pred:colour"], report.reason
    assert "pred:colour (chi2_contingency" in report.reason
    assert {s.name for s in report.skipped} == set()  # embeddings are off, not skipped


def test_a_brightness_shift_is_drift(reference, out):
    report = run_drift_report(reference, window(300, seed=4, brightness=0.62), out / "bright", TABULAR)
    assert report.drift_detected
    assert [c.name for c in report.drifted_checks] == ["image_brightness"], report.reason
    assert report.check("image_brightness").kind == "input"


def test_moved_embeddings_are_drift(reference, out):
    without_images = window(150, seed=5, text_shift=0.5).drop(columns="image_embedding")
    current = pd.concat([without_images, window(150, seed=12, text_shift=0.5)], ignore_index=True)
    report = run_drift_report(reference, current, out / "emb", MonitoringConfig())
    assert report.drift_detected
    text = report.check("text_embedding")
    assert text.drifted and text.score > 0.75, text
    assert [c.name for c in report.drifted_checks] == ["text_embedding"], report.reason
    (skipped,) = [s for s in report.skipped if s.name == "image_embedding"]
    assert skipped.kind == "embedding" and "150 of 300 current rows have none" in skipped.reason


def test_multilabel_values_are_compared_one_by_one(reference, out):
    rates = {**TAG_RATES, "denim": 0.45}
    report = run_drift_report(reference, window(300, seed=6, tag_rates=rates), out / "tags", TABULAR)
    assert report.check("pred:tags=denim").drifted
    assert not report.check("pred:tags=cotton").drifted and not report.check("pred:tags=silk").drifted
    assert report.check("pred:tags=denim").attribute == "tags"
    assert report.drift_detected


def test_large_windows_are_sampled(out):
    big_ref, big_cur = window(2500, seed=7), window(2500, seed=8)
    config = MonitoringConfig(embeddings=False, max_rows=200, seed=3)
    report = run_drift_report(big_ref, big_cur, out / "big", config)
    assert (report.reference_rows, report.current_rows) == (200, 200)
    assert (report.reference_rows_total, report.current_rows_total) == (2500, 2500)
    assert all(c.reference_rows <= 200 and c.current_rows <= 200 for c in report.checks)
    assert report.check("title_chars").reference_rows == 200
    assert sample_frame(big_ref, 200, 3)["product_id"].tolist() == sample_frame(big_ref, 200, 3)["product_id"].tolist()
    assert sample_frame(big_ref, 200, 3)["product_id"].tolist() != sample_frame(big_ref, 200, 4)["product_id"].tolist()


def test_per_column_override_and_too_small_windows(reference, out):
    config = MonitoringConfig(
        embeddings=False, per_column={"title_chars": DriftTest(method="wasserstein", threshold=0.1)}
    )
    current = window(40, seed=10)
    current.loc[:20, "image_brightness"] = np.nan  # fewer than min_rows values left: skipped
    report = run_drift_report(reference, current, out / "small", config)
    check = report.check("title_chars")
    assert (check.method, check.threshold, check.score_kind) == ("wasserstein", 0.1, "distance")
    assert check.drifted == (check.score >= 0.1)
    (skipped,) = [s for s in report.skipped if s.name == "image_brightness"]
    assert "current values (< 30)" in skipped.reason
    with pytest.raises(InsufficientData, match="nothing to compare"):
        run_drift_report(reference, window(5, seed=11), out / "tiny", config)


def _check(name: str, kind: str, drifted: bool) -> Check:
    return Check(
        name=name,
        kind=kind,
        attribute=None,
        method="ks",
        threshold=0.001,
        score=1e-9 if drifted else 0.5,
        score_kind="p_value",
        drifted=drifted,
        reference_rows=100,
        current_rows=100,
    )


def test_decision_rule():
    one_input = [_check("image_brightness", "input", True)] + [_check(f"c{i}", "input", False) for i in range(5)]
    assert decide(one_input, MonitoringConfig())[0]  # default: any drifted check
    share = MonitoringConfig(decision=DecisionRule(drift_share=0.3))
    drift, reason = decide(one_input, share)
    assert not drift and "1 of 6 checks drifted" in reason
    two = [*one_input, _check("image_width", "input", True)]
    assert not decide(two, share)[0]  # 2 of 7 drifted < 0.3
    assert decide([*two, _check("title_chars", "input", True)], share)[0]  # 3 of 8 >= 0.3
    assert decide([*one_input, _check("text_embedding", "embedding", True)], share)[0]  # decisive kinds decide alone
    assert decide([*one_input, _check("pred:colour", "prediction", True)], share)[0]
    assert not decide([_check("a", "input", False)], MonitoringConfig())[0]


def test_components_use_only_evidentlys_report_api():
    """Evidently's UI, workspace and cloud SDK stay outside components; only _evidently.py imports Evidently."""
    importers = {}
    for path in (REPO / "components").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name == "evidently" or name.startswith("evidently."):
                    importers.setdefault(str(path.relative_to(REPO)), set()).add(name)
    assert set(importers) == {"components/monitoring/_evidently.py"}
    assert not [m for m in importers["components/monitoring/_evidently.py"] if m.split(".")[1:2] in (["ui"], ["sdk"])]


# --- the registry's drift_reports ---------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[Engine]:
    engine = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"] if PG_URL else ["sqlite"])
def registry(request, tmp_path) -> Iterator[Registry]:
    """A registry on a fresh database: a SQLite file, or a new PostgreSQL database dropped afterwards."""
    name = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'test-registry.db'}"
    else:
        admin = request.getfixturevalue("pg_admin")
        name = f"attrflow_test_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    reg = Registry(url)
    yield reg
    reg.close()
    if name is not None:
        with request.getfixturevalue("pg_admin").connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_drift_reports_round_trip(registry, tmp_path, same_distribution):
    model_dir = tmp_path / "trained"
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(b"weights")
    run_id = registry.start_run("train", {"fusion": "concat"})
    registry.register_model_version("shirt", run_id, model_dir, {"r_at_p95_mean": 0.5}, {})
    checks = [
        _check("image_brightness", "input", True).model_dump(mode="json"),
        {"name": "text_embedding", "score": np.float32(0.61), "threshold": 0.55, "drifted": np.bool_(True)},
        {"name": "pred:colour", "score": float("nan"), "threshold": 0.001, "drifted": False},
    ]
    start, end = pd.Timestamp("2026-11-01", tz="UTC").to_pydatetime(), pd.Timestamp("2026-11-02", tz="UTC")
    first = registry.record_drift_report(
        "shirt",
        1,
        drifted=True,
        checks=checks,
        snapshot_path=tmp_path / "snapshot.json",
        reference_rows=1000,
        current_rows=250,
        window_start=start,
        window_end=end.to_pydatetime(),
        reason="drift: 2 of 3 checks drifted",
    )
    second = registry.record_drift_report(
        "shirt", 1, drifted=False, checks=[], snapshot_path="s2.json", reference_rows=10, current_rows=10
    )
    assert first.model_name == "shirt" and first.model_version == 1 and first.drifted
    assert (first.window_start, first.window_end) == (start, end.to_pydatetime())
    assert first.snapshot_path == tmp_path / "snapshot.json" and first.retrain_run_id is None
    stored = registry.get_drift_report(first.id)
    assert stored.checks[0] == checks[0]
    assert stored.checks[1] == {
        "name": "text_embedding",
        "score": pytest.approx(0.61),
        "threshold": 0.55,
        "drifted": True,
    }
    assert stored.checks[2]["score"] is None  # NaN is stored as null on every backend
    assert [r.id for r in registry.list_drift_reports("shirt")] == [second.id, first.id]
    assert registry.list_drift_reports("shirt", limit=1) == [registry.get_drift_report(second.id)]
    assert registry.list_drift_reports("other") == []
    from_report = registry.record_drift_report("shirt", 1, **same_distribution.registry_fields())
    assert from_report.checks == same_distribution.checks_json() and not from_report.drifted
    assert (from_report.current_rows, from_report.window_end) == (300, same_distribution.window_end)
    assert from_report.snapshot_path == same_distribution.snapshot_path

    retrain = registry.start_run("pipeline", {"reason": "drift"})
    linked = registry.link_drift_retrain(first.id, retrain)
    assert linked.retrain_run_id == retrain and registry.get_drift_report(first.id).retrain_run_id == retrain
    assert registry.link_drift_retrain(first.id, retrain).retrain_run_id == retrain  # the same link again: fine
    with pytest.raises(RegistryError, match="already triggered run"):
        registry.link_drift_retrain(first.id, run_id)
    with pytest.raises(RegistryError, match="no run with id"):
        registry.link_drift_retrain(second.id, 9999)
    with pytest.raises(RegistryError, match="no drift report"):
        registry.link_drift_retrain(9999, retrain)
    with pytest.raises(RegistryError, match="has no version 7"):
        registry.record_drift_report(
            "shirt", 7, drifted=False, checks=[], snapshot_path="x", reference_rows=1, current_rows=1
        )
