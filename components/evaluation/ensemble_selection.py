"""Ensemble selection: which trained models to average, with what weights, and the ensemble's
publishing thresholds, all decided on the validation split.

Members are picked from a pool of trained models by greedy forward selection with replacement
on the validation split (Caruana et al., 2004, "Ensemble selection from libraries of models"):
start empty, repeatedly add the model (possibly again) whose addition most improves the
validation score, keep the best prefix. A model picked twice weighs twice.

    weights = select_members(validation_probs, validation_labels, kinds)
    combine_models({name: MODEL_DIR, ...}, weights, ensemble_validation_probs, validation_labels, out_dir)

An ensemble folder holds its members as ordinary model folders (`members/<name>/`), the
weights in config.json, and publishing thresholds fitted on the ensemble's own validation
scores; components.models.io's `load_model` returns an `EnsembleModel`
(components.models.ensemble) for it, which predicts, evaluates and serves like an `AttributeModel`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from components.evaluation.metrics import attribute_metrics, value_thresholds
from components.models.io import CONFIG, MEMBERS, THRESHOLDS, VOCAB, load_meta


def select_members(
    probs: Mapping[str, Mapping[str, np.ndarray]],
    labels: Mapping[str, np.ndarray],
    kinds: Mapping[str, str],
    metric: str = "f1_macro",
    max_steps: int = 10,
) -> dict[str, float]:
    """Greedy ensemble selection with replacement on validation scores.

    `probs`: model -> attribute -> (N, n_values) validation probabilities; `labels`: attribute ->
    encoded labels; the score is `metric` averaged over attributes. Returns model -> weight
    (how often it was picked) for the best ensemble seen; ties keep the smaller ensemble.
    """
    if not probs:
        raise ValueError("select_members: no candidate models")

    def score(mix: Mapping[str, np.ndarray]) -> float:
        return float(np.mean([attribute_metrics(mix[a], labels[a], kinds[a])[metric] for a in labels]))

    counts: dict[str, int] = {}
    total = {a: 0.0 for a in labels}
    best_score, best_counts = -np.inf, {}
    for step in range(1, max_steps + 1):
        trials = {n: score({a: (total[a] + p[a]) / step for a in labels}) for n, p in probs.items()}
        pick = max(trials, key=lambda n: (trials[n], n in counts))  # ties: a model already in
        counts[pick] = counts.get(pick, 0) + 1
        total = {a: total[a] + probs[pick][a] for a in labels}
        if trials[pick] > best_score:
            best_score, best_counts = trials[pick], dict(counts)
    return {n: float(c) for n, c in best_counts.items()}


def combine_models(
    member_dirs: Mapping[str, str | Path],
    weights: Mapping[str, float],
    validation_probs: Mapping[str, np.ndarray],
    validation_labels: Mapping[str, np.ndarray],
    out_dir: str | Path,
    target_precision: float = 0.95,
    extra: dict | None = None,
) -> Path:
    """Write an ensemble folder: the members (weight > 0) copied under `members/`, config.json
    with the weights, vocab.json, thresholds.json fitted on the ensemble's validation
    probabilities (`validation_probs`, attribute -> (N, n_values); labels encoded alike)."""
    out_dir = Path(out_dir)
    names = [n for n in member_dirs if weights.get(n, 0) > 0]
    if not names:
        raise ValueError("combine_models: no member has a weight above 0")
    metas = {n: load_meta(member_dirs[n]) for n in names}
    shutil.rmtree(out_dir, ignore_errors=True)
    (out_dir / MEMBERS).mkdir(parents=True)
    for n in names:
        shutil.copytree(member_dirs[n], out_dir / MEMBERS / n, ignore=shutil.ignore_patterns("checkpoint", "eval-*"))
    first = Path(member_dirs[names[0]])
    shutil.copy2(first / VOCAB, out_dir / VOCAB)
    kinds = {k: v["kind"] for k, v in json.loads((first / VOCAB).read_text()).items()}
    thresholds = {
        a: value_thresholds(p, validation_labels[a], kinds[a], target_precision) for a, p in validation_probs.items()
    }
    validation = {
        a: attribute_metrics(p, validation_labels[a], kinds[a], target_precision) for a, p in validation_probs.items()
    }
    meta = {
        "ensemble": {"members": names, "weights": {n: float(weights[n]) for n in names}},
        "includes_encoders": any(m["includes_encoders"] for m in metas.values()),
        "target_precision": target_precision,
        **(extra or {}),
    }
    (out_dir / CONFIG).write_text(json.dumps(meta, indent=1))
    (out_dir / THRESHOLDS).write_text(json.dumps(thresholds, indent=1))
    (out_dir / "validation_metrics.json").write_text(json.dumps(validation, indent=1))
    return out_dir
