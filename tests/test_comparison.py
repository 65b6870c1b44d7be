"""Champion/challenger (components/evaluation/comparison.py): the paired bootstrap rule on real tiny
models, and that its fast metrics are the evaluation's metrics."""

from __future__ import annotations

import numpy as np
import pytest

from components.catalog import ingest, load_dataset, load_spec
from components.catalog.demo import write_demo_catalog
from components.evaluation.comparison import _attribute_metric, compare_models
from components.evaluation.evaluate import evaluate
from components.evaluation.metrics import attribute_metrics
from components.training.trainer import TrainConfig, train

TINY = {"text": {"name": "tiny-random", "max_length": 24}, "image": {"name": "tiny-random", "image_size": [32, 32]}}


@pytest.mark.parametrize("metric", ["r_at_p95", "f1_macro"])
def test_fast_metrics_equal_the_evaluation_metrics(metric):
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(6) * 0.3, 300)
    y = np.where(rng.random(300) < 0.7, probs.argmax(1), rng.integers(0, 6, 300))
    y[:20] = -1  # unlabelled rows are left out
    y[y == 5] = 0  # a value nobody has: sklearn's macro average leaves it out unless predicted
    assert _attribute_metric(probs, y, "multiclass", metric) == pytest.approx(
        attribute_metrics(probs, y, "multiclass")[metric], abs=1e-12
    )
    scores = rng.random((300, 4))
    labels = (scores + rng.normal(0, 0.3, scores.shape) > 0.6).astype(int)
    labels[:15] = -1
    assert _attribute_metric(scores, labels, "multilabel", metric) == pytest.approx(
        attribute_metrics(scores, labels, "multilabel")[metric], abs=1e-12
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A dataset, a model trained properly and one barely trained (a deliberately weaker config)."""
    root = tmp_path_factory.mktemp("cmp")
    spec = write_demo_catalog(root / "catalog", n=240, seed=4)
    ds = load_dataset(ingest(load_spec(spec), home=root / "home").dataset_dir)
    dirs = {}
    for name, epochs, lr in (("good", 6, 3e-3), ("weak", 1, 1e-6)):
        cfg = TrainConfig.model_validate(
            {
                "model": {**TINY, "fusion": {"name": "concat"}, "head": {"hidden": 16}},
                "training": {"epochs": epochs, "batch_size": 32, "lr_head": lr, "seed": 0},
            }
        )
        dirs[name] = train(cfg, ds, root / name, progress=False).model_dir
    return ds, dirs


def test_a_worse_challenger_is_refused_and_a_better_one_promoted(models):
    ds, dirs = models
    worse = compare_models(dirs["weak"], dirs["good"], ds, resamples=300)
    low, high = worse.interval
    assert worse.candidate < worse.production and high < 0 and not worse.promote
    assert "worse beyond noise" in worse.describe()
    better = compare_models(dirs["good"], dirs["weak"], ds, resamples=300)
    assert better.interval[0] > 0 and better.promote
    # the scores are the evaluation's, on the same split
    report, _ = evaluate(dirs["good"], ds, "test", out_dir=ds.path.parent / "eval-good")
    assert better.candidate == pytest.approx(report.mean("r_at_p95"), abs=1e-9)


def test_the_same_model_is_not_worse_than_itself(models):
    ds, dirs = models
    same = compare_models(dirs["good"], dirs["good"], ds, resamples=100, metric="f1_macro_mean")
    assert same.interval == (0.0, 0.0) and same.promote  # a tie passes: not worse beyond noise
    with pytest.raises(ValueError, match="unknown metric"):
        compare_models(dirs["good"], dirs["good"], ds, metric="accuracy")


def test_products_the_production_model_trained_on_are_left_out(models):
    ds, dirs = models
    test_ids = ds.split("test")["id"].astype(str).tolist()
    part = compare_models(dirs["good"], dirs["weak"], ds, resamples=50, exclude=set(test_ids[: len(test_ids) // 2]))
    assert part.excluded == len(test_ids) // 2 and part.products == len(test_ids) - part.excluded
    assert "left out (the production model trained on them)" in part.describe()
    full = compare_models(dirs["good"], dirs["weak"], ds, resamples=50)
    assert full.excluded == 0 and full.candidate != part.candidate  # scored on other products
    with pytest.raises(ValueError, match="nothing to compare on"):
        compare_models(dirs["good"], dirs["weak"], ds, resamples=10, exclude=set(test_ids))
