"""Metrics and reports against small hand-computed examples."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from components.evaluation import (
    AttributeReport,
    EvaluationReport,
    attribute_metrics,
    modality_weight_stats,
    multiclass_metrics,
    multilabel_metrics,
    precision_recall_points,
    r_at_p,
    value_thresholds,
)
from components.evaluation.report import write_report

approx = pytest.approx


# ---------------------------------------------------------------- r_at_p


def test_r_at_p_no_prefix_reaches_target():
    # ranked: .9 wrong, .8 right, .7 right -> precisions 0, 1/2, 2/3: none >= .95
    assert r_at_p(np.array([0.7, 0.9, 0.8]), np.array([1, 0, 1]), n_positive=2) == 0.0


def test_r_at_p_all_correct_is_correct_over_n_positive():
    scores, correct = np.array([0.2, 0.9, 0.5]), np.ones(3, bool)
    assert r_at_p(scores, correct, n_positive=3) == 1.0
    # two positives were never scored: recall 3/5
    assert r_at_p(scores, correct, n_positive=5) == approx(0.6)


def test_r_at_p_zero_positives():
    assert r_at_p(np.array([0.9]), np.array([1]), n_positive=0) == 0.0


def test_r_at_p_ties_are_all_in_or_all_out():
    # ranked: .9 right, {.8 right, .8 wrong}, .7 right; n_positive = 3
    # cuts: after .9 -> 1/1; after the .8 pair -> 2/3; after .7 -> 3/4
    # only the first cut reaches .95 -> recall 1/3 (splitting the tie would give 2/3)
    scores = np.array([0.8, 0.9, 0.8, 0.7])
    correct = np.array([1, 1, 0, 1])
    assert r_at_p(scores, correct, 3) == approx(1 / 3)
    # at target .6 the cut after the tie (2/3) and after .7 (3/4) qualify -> largest: 3/3
    assert r_at_p(scores, correct, 3, target=0.6) == approx(1.0)


def test_r_at_p_largest_prefix_after_a_dip():
    # ranked: 10 right, 1 wrong, 9 right, 2 wrong (distinct scores)
    # prefix 11: 10/11 = .909 (dip); prefix 20: 19/20 = .95 (reaches); prefix 21: 19/21 < .95
    # -> largest qualifying prefix is 20: recall 19/25 (stopping at the dip would give 10/25)
    correct = np.array([1] * 10 + [0] + [1] * 9 + [0, 0])
    scores = np.linspace(1.0, 0.5, correct.size)
    rng = np.random.default_rng(0)
    perm = rng.permutation(correct.size)  # input order must not matter
    assert r_at_p(scores[perm], correct[perm], 25) == approx(19 / 25)


def test_r_at_p_prefix_not_at_the_top():
    # top item wrong (precision 0), then 19 right: prefix 20 is 19/20 = .95 -> recall 19/19
    correct = np.array([0] + [1] * 19)
    scores = np.linspace(1.0, 0.1, 20)
    assert r_at_p(scores, correct, 19) == approx(1.0)


def test_precision_recall_points_one_per_distinct_score():
    # same ranking as the ties test: cuts 1/1, 2/3, 3/4; recall 1/3, 2/3, 3/3
    p, r = precision_recall_points(np.array([0.8, 0.9, 0.8, 0.7]), np.array([1, 1, 0, 1]), 3)
    assert p == approx([1.0, 2 / 3, 3 / 4])
    assert r == approx([1 / 3, 2 / 3, 1.0])


# ---------------------------------------------------------------- multiclass

# labelled rows: y = [0, 1, 1, 2, 2], argmax = [0, 1, 0, 2, 1], top prob = [.7, .8, .45, .55, .6]
MC_PROBS = np.array(
    [
        [0.70, 0.20, 0.10],  # y 0, pred 0, right
        [0.10, 0.80, 0.10],  # y 1, pred 1, right
        [0.45, 0.35, 0.20],  # y 1, pred 0, wrong
        [0.90, 0.05, 0.05],  # unlabelled: counted as a wrong .9 it would sink R@P95 to 0
        [0.25, 0.20, 0.55],  # y 2, pred 2, right
        [0.10, 0.60, 0.30],  # y 2, pred 1, wrong
    ]
)
MC_Y = np.array([0, 1, 1, -1, 2, 2])


def test_multiclass_metrics_hand_computed():
    m = multiclass_metrics(MC_PROBS, MC_Y)
    assert m["n"] == 5
    assert m["accuracy"] == approx(3 / 5)
    assert m["f1_micro"] == approx(3 / 5)  # single-label: micro F1 == accuracy
    # class 0: TP 1, FP 1, FN 0 -> P .5 R 1 -> F1 2/3 (support 1)
    # class 1: TP 1, FP 1, FN 1 -> P .5 R .5 -> F1 1/2 (support 2)
    # class 2: TP 1, FP 0, FN 1 -> P 1 R .5 -> F1 2/3 (support 2)
    assert m["f1_macro"] == approx((2 / 3 + 1 / 2 + 2 / 3) / 3)  # 11/18
    assert m["f1_weighted"] == approx((2 / 3 * 1 + 1 / 2 * 2 + 2 / 3 * 2) / 5)  # 3/5
    # ranked by top prob: .8 R, .7 R, .6 W, .55 R, .45 W -> precisions 1, 1, 2/3, 3/4, 3/5
    # largest prefix >= .95 is 2 -> 2 / 5 labelled products
    assert m["r_at_p95"] == approx(2 / 5)


def test_multiclass_all_unlabelled():
    m = multiclass_metrics(MC_PROBS[:2], np.array([-1, -1]))
    assert m["n"] == 0 and m["accuracy"] is None and m["r_at_p95"] == 0.0


# ---------------------------------------------------------------- multilabel

ML_PROBS = np.array(
    [
        [0.90, 0.20, 0.10],
        [0.30, 0.80, 0.40],
        [0.99, 0.99, 0.99],  # unlabelled: as negatives at the top they would sink R@P95 to 0
        [0.60, 0.70, 0.55],
    ]
)
ML_Y = np.array(
    [
        [1, 0, 0],
        [0, 1, 1],
        [-1, -1, -1],
        [1, 0, 1],
    ]
)


def test_multilabel_metrics_hand_computed():
    m = multilabel_metrics(ML_PROBS, ML_Y)
    assert m["n"] == 3
    assert m["accuracy"] is None
    # predictions (>= .5): [1,0,0], [0,1,0], [1,1,1]
    # col 0: TP 2 FP 0 FN 0 -> F1 1 (support 2)
    # col 1: TP 1 FP 1 FN 0 -> F1 2/3 (support 1)
    # col 2: TP 1 FP 0 FN 1 -> F1 2/3 (support 2)
    # micro: TP 4 FP 1 FN 1 -> P .8 R .8 -> F1 .8
    assert m["f1_micro"] == approx(0.8)
    assert m["f1_macro"] == approx((1 + 2 / 3 + 2 / 3) / 3)  # 7/9
    assert m["f1_weighted"] == approx((1 * 2 + 2 / 3 * 1 + 2 / 3 * 2) / 5)  # 4/5
    # pairs ranked: .9 T, .8 T, .7 F, .6 T, .55 T, .4 T, .3 F, .2 F, .1 F; 5 true pairs
    # precisions 1, 1, 2/3, ... -> largest prefix >= .95 is 2 -> 2/5
    assert m["r_at_p95"] == approx(2 / 5)


def test_multilabel_threshold_changes_f1_not_r_at_p():
    # threshold .65: predictions [1,0,0], [0,1,0], [0,1,0] -> col 0: TP1 FN1 (2/3), col 1: TP1 FP1 (2/3),
    # col 2: TP0 FN2 (0); micro TP 2 FP 1 FN 3 -> P 2/3 R 2/5 -> F1 = 2*(4/15)/(16/15) = 1/2
    m = multilabel_metrics(ML_PROBS, ML_Y, threshold=0.65)
    assert m["f1_micro"] == approx(0.5)
    assert m["r_at_p95"] == approx(2 / 5)


def test_attribute_metrics_dispatches():
    assert attribute_metrics(MC_PROBS, MC_Y, "multiclass") == multiclass_metrics(MC_PROBS, MC_Y)
    assert attribute_metrics(ML_PROBS, ML_Y, "multilabel") == multilabel_metrics(ML_PROBS, ML_Y)
    with pytest.raises(ValueError):
        attribute_metrics(MC_PROBS, MC_Y, "ordinal")


# ---------------------------------------------------------------- value thresholds


def test_value_thresholds_multiclass():
    probs = np.array(
        [
            [0.90, 0.05, 0.05],  # y 0: c0 candidate, right
            [0.80, 0.10, 0.10],  # y 0: c0, right
            [0.60, 0.20, 0.20],  # y 0: c0, right   } tied at .6: the right one comes first, so
            [0.60, 0.30, 0.10],  # y 1: c0, wrong   } splitting the tie would wrongly allow .6
            [0.50, 0.30, 0.20],  # y 0: c0, right
            [0.10, 0.70, 0.20],  # y 2: c1, wrong
            [0.20, 0.60, 0.20],  # y 1: c1, right
            [0.10, 0.20, 0.70],  # y 2: c2, right
            [0.00, 0.10, 0.90],  # unlabelled: as a wrong c2 candidate it would make c2 None
        ]
    )
    y = np.array([0, 0, 0, 1, 0, 2, 1, 2, -1])
    # c0 ranked: .9 R, .8 R, {.6 R, .6 W}, .5 R -> 1, 1, 3/4, 4/5 -> largest prefix ends at .8
    # c1 ranked: .7 W, .6 R -> 0, 1/2 -> never reaches .95 -> None
    # c2 ranked: .7 R -> 1 -> .7
    assert value_thresholds(probs, y, "multiclass") == approx([0.8, None, 0.7])
    # at target .8 the c0 prefix through .5 (4/5) qualifies: the lowest score .5
    assert value_thresholds(probs, y, "multiclass", target=0.8)[0] == approx(0.5)


def test_value_thresholds_multilabel():
    probs = np.array(
        [
            [0.90, 0.10, 0.80],
            [0.70, 0.20, 0.60],
            [0.70, 0.30, 0.30],
            [0.40, 0.40, 0.10],
            [0.20, 0.50, 0.05],
            [0.95, 0.90, 0.70],  # unlabelled: would put a negative on top of col 0 (-> None) and col 2
        ]
    )
    Y = np.array(
        [
            [1, 0, 1],
            [1, 0, 1],
            [0, 0, 0],
            [1, 0, 0],
            [0, 0, 0],
            [-1, -1, -1],
        ]
    )
    # col 0 ranked: .9 T, {.7 T, .7 F}, .4 T, .2 F -> 1, 2/3, 3/4, 3/5 -> ends at .9 (tie not split)
    # col 1: no true pairs -> no prefix has precision > 0 -> None
    # col 2 ranked: .8 T, .6 T, .3 F, ... -> 1, 1, 2/3 -> ends at .6
    assert value_thresholds(probs, Y, "multilabel") == approx([0.9, None, 0.6])
    # target .75: col 0 prefix through .4 (3/4) qualifies -> .4
    assert value_thresholds(probs, Y, "multilabel", target=0.75)[0] == approx(0.4)


# ---------------------------------------------------------------- modality weights


def test_modality_weight_stats():
    s = modality_weight_stats(np.array([0.5, 0.1, 0.8, 0.2, 0.4]))
    # sorted .1 .2 .4 .5 .8: mean 2.0/5 = .4; deviations -.3 -.2 0 .1 .4 -> var .30/5 = .06
    assert s["mean"] == approx(0.4)
    assert s["std"] == approx(math.sqrt(0.06))
    assert (s["median"], s["q25"], s["q75"]) == approx((0.4, 0.2, 0.5))  # linear quantiles at positions 2, 1, 3
    assert (s["min"], s["max"], s["n"]) == approx((0.1, 0.8, 5))


def test_modality_weight_stats_empty():
    s = modality_weight_stats(np.array([]))
    assert s["n"] == 0 and math.isnan(s["mean"])


# ---------------------------------------------------------------- report


def _report() -> EvaluationReport:
    category = AttributeReport(kind="multiclass", **multiclass_metrics(MC_PROBS, MC_Y))
    colour = AttributeReport(
        kind="multilabel",
        **multilabel_metrics(ML_PROBS, ML_Y),
        image_weight=modality_weight_stats(np.array([0.5, 0.1, 0.8, 0.2, 0.4])),
    )
    return EvaluationReport(
        model="runs/m1", dataset="datasets/demo/v1", split="test", attributes={"category": category, "colour": colour}
    )


def test_report_mean_and_markdown():
    report = _report()
    # f1_macro: (11/18 + 7/9) / 2 = 25/36 = .694; accuracy: only the multiclass .6 counts
    assert report.mean("f1_macro") == approx(25 / 36)
    assert report.mean("accuracy") == approx(0.6)
    md = report.to_markdown()
    lines = md.splitlines()
    category = next(line for line in lines if line.startswith("| category"))
    colour = next(line for line in lines if line.startswith("| colour"))
    mean = next(line for line in lines if line.startswith("| mean"))
    assert "| 5 | 0.600 | 0.600 | 0.611 | 0.600 | 0.400 |" in category
    assert "| 3 | - | 0.800 | 0.778 | 0.800 | 0.400 | 0.400 ± 0.245 |" in colour
    assert "| 0.600 | 0.700 | 0.694 | 0.700 | 0.400 |" in mean
    assert "image weight" in lines[2] and "R@P95" in lines[2]


def test_write_report_files(tmp_path):
    report = _report()
    mc_correct = MC_PROBS.argmax(1) == MC_Y
    curves = {
        "category": (MC_PROBS.max(1), mc_correct, 5),
        "colour": (ML_PROBS[[0, 1, 3]].ravel(), ML_Y[[0, 1, 3]].ravel() == 1, None, 5),  # 4-tuple form
    }
    weights = {"category": np.array([0.2, 0.3, 0.9]), "colour": np.array([])}
    paths = write_report(report, tmp_path / "eval", curves=curves, image_weights=weights)
    assert set(paths) == {"json", "markdown", "pr_plot", "weights_plot"}
    assert EvaluationReport.model_validate_json(paths["json"].read_text()) == report
    assert paths["markdown"].read_text() == report.to_markdown()
    for key in ("pr_plot", "weights_plot"):
        data = paths[key].read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_write_report_without_plots_and_nan_weights(tmp_path):
    report = _report()
    report.attributes["colour"].image_weight = modality_weight_stats(np.array([]))
    paths = write_report(report, tmp_path)
    assert set(paths) == {"json", "markdown"}
    assert not (tmp_path / "pr_curves.png").exists()
    # NaN stats stay valid JSON and reload as NaN
    raw = json.loads(paths["json"].read_text())
    assert raw["attributes"]["colour"]["image_weight"]["n"] == 0
    back = EvaluationReport.model_validate_json(paths["json"].read_text())
    assert math.isnan(back.attributes["colour"].image_weight["mean"])
    assert "- ± -" in report.to_markdown()
