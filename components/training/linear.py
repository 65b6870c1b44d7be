"""Fit the linear lexical model (fusion `tfidf_lr`): TF-IDF + logistic regression, by scikit-learn.

The strong baseline on short product texts, as a model like the others: the fitted coefficients
go into a `TfidfLR` module (components.models.fusion), so the result is an ordinary model folder
that evaluates, ensembles, registers and serves like any fusion. One logistic regression per
attribute (multinomial for multiclass, one per value for multilabel); the inverse L2 strength C
is chosen per attribute on validation macro-F1 from the config's list (fitted on a sample of
C_SAMPLE train products when there are more, then refitted on all of them with the chosen C).
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfTransformer
from sklearn.linear_model import LogisticRegression

from components.catalog.dataset import Dataset
from components.evaluation.metrics import attribute_metrics, value_thresholds
from components.features.lexical import hashed_ngrams, product_texts
from components.features.preprocess import encode_labels
from components.models.io import save_model
from components.models.model import AttributeModel, Vocab, create_model
from components.training.config import TrainConfig, TrainResult

C_SAMPLE = 8000  # train products the choice of C looks at
ABSENT = -30.0  # the bias of a value never seen in training: probability ~0, logits stay finite


def train_tfidf_lr(config: TrainConfig, dataset: Dataset, out_dir: str | Path) -> TrainResult:
    """Fit on the train split, choose C and fit publishing thresholds on validation, save to `out_dir`."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    items = dataset.items
    split = items["split"].to_numpy()
    tr, va = np.flatnonzero(split == "train"), np.flatnonzero(split == "validation")
    if len(tr) == 0 or len(va) == 0:
        raise ValueError(f"{dataset.path}: training needs rows in both the train and validation splits")
    ngrams = hashed_ngrams(product_texts(items["title"].tolist(), items["description"].tolist()))
    ngrams.data[:] = 1.0  # presence: TfidfTransformer then weighs by idf and L2-normalises
    vocabulary = np.unique(ngrams[tr].indices)
    tfidf = TfidfTransformer(sublinear_tf=True).fit(ngrams[tr][:, vocabulary])
    x = tfidf.transform(ngrams[:, vocabulary]).tocsr()

    vocab = {name: Vocab(kind=v.kind, values=v.values) for name, v in dataset.vocab.items()}
    fusion = config.model.fusion.model_copy(update={"vocabulary_size": len(vocabulary)})
    model = create_model(config.model.model_copy(update={"fusion": fusion}), vocab)
    labels = {k: v.numpy() for k, v in encode_labels(items, model.vocab).items()}
    weight = np.zeros((len(vocabulary), sum(s.n_values for s in model.specs)), dtype=np.float32)
    bias = np.zeros(weight.shape[1], dtype=np.float32)
    chosen: dict[str, float] = {}
    column = 0
    for spec in model.specs:
        cols = slice(column, column + spec.n_values)
        column += spec.n_values
        y, seed = labels[spec.name], config.training.seed
        # C is chosen on a sample of the train split when it is large (one full fit, not one per C).
        sample = tr if len(tr) <= C_SAMPLE else np.sort(np.random.default_rng(seed).choice(tr, C_SAMPLE, replace=False))
        best = None
        warm: dict = {}  # C ascending, each fit starting from the last one's solution (fewer lbfgs steps)
        for c in sorted(config.model.fusion.C):
            w, b = _fit_attribute(x[sample], y[sample], spec.kind, spec.n_values, c, seed, warm)
            score = attribute_metrics(_probabilities(x[va] @ w + b, spec.kind), y[va], spec.kind)["f1_macro"] or 0.0
            if best is None or score > best[0]:
                best = (score, c, w, b)
        assert best is not None
        _, chosen[spec.name], w, b = best
        if len(sample) < len(tr):
            w, b = _fit_attribute(x[tr], y[tr], spec.kind, spec.n_values, chosen[spec.name], seed, warm={})
        weight[:, cols], bias[cols] = w, b

    fitted = model.fusion
    with torch.no_grad():
        fitted.ngram_ids.copy_(torch.from_numpy(vocabulary.astype(np.int64)))
        fitted.idf.copy_(torch.from_numpy(tfidf.idf_.astype(np.float32)))
        fitted.weight.copy_(torch.from_numpy(weight))
        fitted.bias.copy_(torch.from_numpy(bias))
    model.eval()
    validation_probs = _model_probabilities(model, ngrams, va)
    thresholds, validation = {}, {}
    target = config.training.target_precision
    for spec in model.specs:
        y = labels[spec.name][va]
        thresholds[spec.name] = value_thresholds(validation_probs[spec.name], y, spec.kind, target)
        validation[spec.name] = attribute_metrics(validation_probs[spec.name], y, spec.kind, target)
    seconds = time.perf_counter() - start
    save_model(
        model,
        out_dir,
        thresholds,
        include_encoders=False,
        extra={
            "training": config.training.model_dump(mode="json"),
            "dataset": {"name": dataset.name, "version": dataset.version, "path": str(dataset.path)},
            "best_epoch": 1,
            "target_precision": target,
            "chosen_C": chosen,
        },
    )
    (out_dir / "validation_metrics.json").write_text(json.dumps(validation, indent=1))
    return TrainResult(out_dir, 1, 1, validation, [], len(tr) / seconds, validation_probs)


def _fit_attribute(
    x: sp.csr_matrix, y: np.ndarray, kind: str, n_values: int, c: float, seed: int, warm: dict
) -> tuple[np.ndarray, np.ndarray]:
    """(n_features, n_values) weights and (n_values,) biases of one attribute's logits. `warm` keeps
    the attribute's classifiers between calls (warm starts along the C grid)."""
    w = np.zeros((x.shape[1], n_values), dtype=np.float32)
    b = np.full(n_values, ABSENT, dtype=np.float32)
    if kind == "multiclass":
        keep = y >= 0
        classes = np.unique(y[keep])
        if len(classes) == 1:  # one value in training: always predict it
            b[classes[0]] = 0.0
        elif len(classes) > 1:
            clf = _logistic(c, seed, warm, "all").fit(x[keep], y[keep])
            if len(classes) == 2:  # scikit-learn keeps one coefficient row: logit(p1) = z, softmax([0, z])
                b[classes] = [0.0, clf.intercept_[0]]
                w[:, classes[1]] = clf.coef_[0]
            else:
                b[clf.classes_] = clf.intercept_
                w[:, clf.classes_] = clf.coef_.T
        return w, b
    keep = (y >= 0).all(axis=1)
    for j in range(n_values):
        target = y[keep, j]
        if target.min() == target.max():  # never (or always) present in training
            b[j] = ABSENT if target.max() == 0 else -ABSENT
            continue
        clf = _logistic(c, seed, warm, j).fit(x[keep], target)
        w[:, j], b[j] = clf.coef_[0], clf.intercept_[0]
    return w, b


def _logistic(c: float, seed: int, warm: dict, key) -> LogisticRegression:
    warnings.filterwarnings("ignore", category=ConvergenceWarning)  # max_iter is the budget; close enough
    if key not in warm:
        warm[key] = LogisticRegression(C=c, max_iter=1000, random_state=seed, warm_start=True)
    return warm[key].set_params(C=c)


def _probabilities(z: np.ndarray, kind: str) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    if kind == "multiclass":
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)
    return 1.0 / (1.0 + np.exp(-z))


def _model_probabilities(model: AttributeModel, ngrams: sp.csr_matrix, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The saved module's own scores (what evaluation and serving will see)."""
    from components.features.encoded import Features
    from components.features.lexical import LexicalBatch

    n = len(rows)
    features = Features(
        text=torch.zeros(n, 1),
        image=torch.zeros(n, 1),
        has_image=torch.zeros(n, dtype=torch.bool),
        lexical=LexicalBatch.from_rows(ngrams, rows),
    )
    with torch.no_grad():
        out = model.forward_head(features)
        return {k: v.numpy() for k, v in model.probabilities(out).items()}
