"""Fit late fusion by stacking (components/models/stacking.py): a text model, an image model, and a
logistic regression per attribute on their probabilities.

Cross-fitting keeps the stacker honest: the train split is cut into `folds` folds, and for each
fold a text and an image model train on the other folds and score it, so every stacker input is a
probability from models that never saw that product's label. The stacker (scikit-learn, L2) trains
on those; the members are then trained once more on the whole train split for serving. The
publishing thresholds come from the stacked model's validation scores.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from components.catalog.dataset import Dataset
from components.evaluation.metrics import attribute_metrics, value_thresholds
from components.features.cache import cached_encodings
from components.features.preprocess import encode_labels
from components.inference.predict import predict_items
from components.models.io import CONFIG, MEMBERS, THRESHOLDS, VOCAB, load_model, save_stacker
from components.models.stacking import SIDES, StackedModel, stacker_inputs
from components.training.config import TrainConfig
from components.training.crossfit import out_of_sample_probabilities
from components.training.trainer import train


def train_stacked(
    configs: dict[str, TrainConfig],
    dataset: Dataset,
    out_dir: str | Path,
    folds: int = 3,
    c: float = 1.0,
    seed: int = 0,
) -> Path:
    """`configs`: {"text": a `text` fusion config, "image": an `image` fusion config} (same encoders)."""
    out_dir = Path(out_dir)
    work = out_dir.parent / (out_dir.name + ".work")
    shutil.rmtree(out_dir, ignore_errors=True)
    # 1. Out-of-fold probabilities of each side on the train split.
    oof = {side: out_of_sample_probabilities(dataset, configs[side], work / side, folds, seed) for side in SIDES}
    rows = oof["text"][0]
    # 2. The members for serving, on the whole train split.
    for side in SIDES:
        train(configs[side], dataset, out_dir / MEMBERS / side, progress=False)
        shutil.rmtree(out_dir / MEMBERS / side / "checkpoint", ignore_errors=True)
    members = {side: load_model(out_dir / MEMBERS / side) for side in SIDES}
    model = StackedModel(members)
    # 3. The stacker, on the out-of-fold probabilities.
    labels = {k: v.numpy() for k, v in encode_labels(dataset.items, model.vocab).items()}
    has = torch.from_numpy(_has_image(dataset)[rows])
    for s in model.specs:
        x = stacker_inputs(
            torch.from_numpy(oof["text"][1][s.name]), torch.from_numpy(oof["image"][1][s.name]), has, s.kind
        ).numpy()
        y = labels[s.name][rows]
        if s.kind == "multiclass":
            _fit_multiclass(model.multiclass[s.name], x, y, s.n_values, c, seed)
        else:
            _fit_multilabel(model.multilabel[s.name], x, y, c, seed)
    save_stacker(model, out_dir)
    # 4. Thresholds and validation metrics of the stacked model.
    va = np.flatnonzero(dataset.items["split"].to_numpy() == "validation")
    enc = cached_encodings(dataset, model.text_encoder, model.image_encoder, False, progress=False)
    probs = predict_items(model, encodings=enc, index=va).probs
    target = configs["text"].training.target_precision
    thresholds = {s.name: value_thresholds(probs[s.name], labels[s.name][va], s.kind, target) for s in model.specs}
    validation = {s.name: attribute_metrics(probs[s.name], labels[s.name][va], s.kind, target) for s in model.specs}
    shutil.copy2(out_dir / MEMBERS / "text" / VOCAB, out_dir / VOCAB)
    meta = {
        "stacked": {"members": list(SIDES), "folds": folds, "C": c},
        "includes_encoders": False,
        "target_precision": target,
        "dataset": {"name": dataset.name, "version": dataset.version, "path": str(dataset.path)},
    }
    (out_dir / CONFIG).write_text(json.dumps(meta, indent=1))
    (out_dir / THRESHOLDS).write_text(json.dumps(thresholds, indent=1))
    (out_dir / "validation_metrics.json").write_text(json.dumps(validation, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return out_dir


def _has_image(dataset: Dataset) -> np.ndarray:
    if "image_path" not in dataset.items:
        return np.zeros(len(dataset.items), dtype=bool)
    return dataset.items["image_path"].notna().to_numpy()


def _fit_multiclass(layer: torch.nn.Linear, x: np.ndarray, y: np.ndarray, n_values: int, c: float, seed: int) -> None:
    keep = y >= 0
    weight = np.zeros((n_values, x.shape[1]), dtype=np.float32)
    bias = np.full(n_values, -30.0, dtype=np.float32)  # values never seen: probability ~0
    classes = np.unique(y[keep])
    if len(classes) == 1:
        bias[classes[0]] = 0.0
    elif len(classes) > 1:
        clf = LogisticRegression(C=c, max_iter=1000, random_state=seed).fit(x[keep], y[keep])
        if len(classes) == 2:
            weight[classes[1]], bias[classes] = clf.coef_[0], [0.0, clf.intercept_[0]]
        else:
            weight[clf.classes_], bias[clf.classes_] = clf.coef_, clf.intercept_
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight))
        layer.bias.copy_(torch.from_numpy(bias))


def _fit_multilabel(param: torch.nn.Parameter, x: np.ndarray, y: np.ndarray, c: float, seed: int) -> None:
    keep = (y >= 0).all(axis=1)
    out = np.zeros((y.shape[1], 4), dtype=np.float32)
    for j in range(y.shape[1]):
        target = y[keep, j]
        if target.min() == target.max():
            out[j, 3] = 30.0 if target.max() > 0 else -30.0
            continue
        clf = LogisticRegression(C=c, max_iter=1000, random_state=seed).fit(x[keep, j], target)
        out[j, :3], out[j, 3] = clf.coef_[0], clf.intercept_[0]
    with torch.no_grad():
        param.copy_(torch.from_numpy(out))
