"""Label noise: find likely mislabelled products by confident learning (the `cleanlab` library).

    issues = find_label_issues(dataset, FitConfig-like member config)   # one row per flagged label
    cleaned = without_label_issues(dataset, issues)                      # those labels removed from train

Out-of-sample probabilities come from cross-fitting on the train split (components/training/
crossfit.py; the recipe's `concat` on the cached embeddings by default, or `text` without
images), so no product is scored by a model that saw its label. cleanlab's `find_label_issues` then flags the labels that those
probabilities contradict with confidence (per-class thresholds: the classes' own average
confidence), ranked by self-confidence. Only train labels are flagged and removed: validation
and test keep the catalog's labels, so a model trained on cleaned labels is compared fairly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from components.catalog.dataset import Dataset
from components.features.preprocess import encode_labels
from components.training.config import TrainConfig
from components.training.crossfit import out_of_sample_probabilities


def find_label_issues(
    dataset: Dataset, config: TrainConfig, work_dir: str | Path, folds: int = 4, seed: int = 0
) -> pd.DataFrame:
    """Flagged train labels: id, attribute, given, suggested, self_confidence, title, image_path."""
    from cleanlab.filter import find_label_issues as cleanlab_issues
    from cleanlab.multilabel_classification.filter import find_label_issues as cleanlab_multilabel_issues

    rows, probs = out_of_sample_probabilities(dataset, config, work_dir, folds, seed)
    labels = {k: v.numpy()[rows] for k, v in encode_labels(dataset.items, dataset.vocab).items()}
    found = []
    for name, vocab in dataset.vocab.items():
        p, y = probs[name], labels[name]
        if vocab.kind == "multiclass":
            keep = np.flatnonzero(y >= 0)
            flagged = np.flatnonzero(cleanlab_issues(y[keep], _renormalised(p[keep]), filter_by="prune_by_noise_rate"))
            given_idx = y[keep][flagged]
            self_conf = p[keep][flagged, given_idx]
            given = [vocab.values[i] for i in given_idx]
            suggested = [vocab.values[i] for i in p[keep][flagged].argmax(1)]
        else:
            keep = np.flatnonzero((y >= 0).all(axis=1))
            lists = [list(np.flatnonzero(row)) for row in y[keep]]
            flagged = np.flatnonzero(cleanlab_multilabel_issues(lists, p[keep], filter_by="prune_by_noise_rate"))
            given = ["|".join(vocab.values[i] for i in lists[j]) for j in flagged]
            suggested = ["|".join(vocab.values[i] for i in np.flatnonzero(p[keep][j] >= 0.5)) for j in flagged]
            self_conf = np.array([np.prod(np.where(y[keep][j] > 0, p[keep][j], 1 - p[keep][j])) for j in flagged])
        positions = rows[keep[flagged]]
        found.append(
            pd.DataFrame(
                {
                    "id": dataset.items["id"].to_numpy()[positions],
                    "attribute": name,
                    "given": given,
                    "suggested": suggested,
                    "self_confidence": np.asarray(self_conf, dtype=float),
                    "title": dataset.items["title"].to_numpy()[positions],
                    "image_path": dataset.items["image_path"].to_numpy()[positions]
                    if "image_path" in dataset.items
                    else None,
                }
            )
        )
    issues = pd.concat(found, ignore_index=True) if found else pd.DataFrame()
    return issues.sort_values(["attribute", "self_confidence"], kind="stable").reset_index(drop=True)


def without_label_issues(dataset: Dataset, issues: pd.DataFrame) -> Dataset:
    """The dataset with the flagged train labels removed (the products stay, with their other labels)."""
    items = dataset.items.copy()
    for name, group in issues.groupby("attribute"):
        flagged = items["id"].isin(group["id"]) & (items["split"] == "train")
        items[name] = items[name].astype(object).where(~flagged, None)
    return dataclasses.replace(dataset, items=items)


def write_label_issues(issues: pd.DataFrame, out_dir: str | Path) -> Path:
    """label_issues.csv (every flag) and label_issues.md (counts, and the 20 least confident per
    attribute) for a catalog team to review."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    issues.to_csv(out_dir / "label_issues.csv", index=False)
    lines = ["# Likely mislabelled products (confident learning)", ""]
    if issues.empty:
        lines.append("No label issues found.")
    for name, group in issues.groupby("attribute", sort=False):
        lines += [f"## {name}: {len(group)} flagged", "", "| id | given | suggested | self-confidence | title |"]
        lines.append("|---|---|---|---|---|")
        for r in group.head(20).itertuples():
            lines.append(f"| {r.id} | {r.given} | {r.suggested} | {r.self_confidence:.3f} | {r.title} |")
        lines.append("")
    (out_dir / "label_issues.md").write_text("\n".join(lines) + "\n")
    return out_dir / "label_issues.csv"


def _renormalised(p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), 1e-12, None)
    return p / p.sum(axis=1, keepdims=True)
