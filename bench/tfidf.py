"""The bar: TF-IDF (word 1-2 grams) + logistic regression on the title, one per attribute."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import ATTRIBUTES, log, metrics_of
from components.catalog.dataset import Dataset

TFIDF_PROBS = Path("bench") / "quality" / "tfidf_lr-test-probs.npz"  # under ATTRFLOW_HOME
TFIDF_CONFIG = {
    "vectorizer": "TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)",
    "classifier": "LogisticRegression(C=10, lbfgs)",
}


def tfidf_row(ds: Dataset, labels: dict[str, np.ndarray], probs_path: Path) -> dict[str, Any]:
    """Fit and score the bar; its test probabilities go to `probs_path` (for the paired bootstrap)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    split = ds.items["split"].to_numpy()
    titles = ds.items["title"].fillna("").to_numpy()
    tr, te = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    start = time.perf_counter()
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    x_train = vec.fit_transform(titles[tr])
    x_test = vec.transform(titles[te])
    out: dict[str, Any] = {"attributes": {}, "train_seconds": 0.0}
    test_probs = {}
    for name in ATTRIBUTES:
        y = labels[name]
        keep = tr[y[tr] >= 0]
        t0 = time.perf_counter()
        clf = LogisticRegression(C=10.0, max_iter=2000)
        clf.fit(x_train[np.searchsorted(tr, keep)], y[keep])
        log(f"tfidf+lr {name}: fit {time.perf_counter() - t0:.0f}s")
        # Columns of predict_proba are clf.classes_; spread them into the full vocabulary.
        probs = np.zeros((len(te), len(ds.vocab[name].values)))
        probs[:, clf.classes_] = clf.predict_proba(x_test)
        out["attributes"][name] = metrics_of(probs, y[te])
        test_probs[name] = probs.astype(np.float32)
    out["train_seconds"] = time.perf_counter() - start
    probs_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(probs_path, **test_probs)
    out["items_per_second"] = len(tr) * len(ATTRIBUTES) / out["train_seconds"]
    out["config"] = TFIDF_CONFIG
    return out
