"""The report's plots: modality_attention image weights per lambda, and the best model's PR curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.common import ATTRIBUTES
from bench.probs import row_probs
from components.catalog.dataset import Dataset
from components.evaluation.evaluate import predict_split
from components.features.preprocess import encode_labels
from components.models.io import load_model


def plot_weights_of(model_dirs: dict[str, Path], ds: Dataset, path: Path) -> None:
    weights = {}
    for name, d in model_dirs.items():
        model = load_model(d)
        pred = predict_split(model, d, ds, "test")
        weights[name] = {s.name: pred.modality_weights[pred.has_image, a, 1] for a, s in enumerate(model.specs)}
    plot_modality_weights(weights, path)


def plot_modality_weights(weights: dict[str, dict[str, np.ndarray]], path: Path) -> None:
    from matplotlib.figure import Figure

    names = list(weights)
    fig = Figure(figsize=(10, 3.2), dpi=90)
    axes = fig.subplots(1, len(ATTRIBUTES), sharey=True)
    for ax, attr in zip(axes, ATTRIBUTES, strict=True):
        ax.boxplot([weights[n][attr] for n in names], showfliers=False)
        ax.set_xticks(range(1, len(names) + 1), [n.split("_l")[-1] for n in names], fontsize=7)
        ax.set_title(attr, fontsize=9)
        ax.set_xlabel("lambda", fontsize=8)
    axes[0].set_ylabel("image weight")
    fig.tight_layout()
    fig.savefig(path)


def plot_pr(model_dir: Path, ds: Dataset, path: Path) -> None:
    from matplotlib.figure import Figure

    from components.evaluation.evaluate import ranking
    from components.evaluation.metrics import precision_recall_points

    model = load_model(model_dir)
    te = np.flatnonzero(ds.items["split"].to_numpy() == "test")
    probs = row_probs(model_dir, ds)["test"]  # stored by the row (or the ensemble), not scored again
    labels = {k: v.numpy()[te] for k, v in encode_labels(ds.items, model.vocab).items()}
    fig = Figure(figsize=(5.5, 4), dpi=90)
    ax = fig.subplots()
    for spec in model.specs:
        s, c, n = ranking(probs[spec.name], labels[spec.name], spec.kind)
        p, r = precision_recall_points(s, c, n)
        ax.plot(r, p, label=spec.name, lw=1.2)
    ax.axhline(0.95, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("recall (top-1 correct)")
    ax.set_ylabel("precision")
    ax.set_ylim(0.5, 1.005)
    ax.legend(fontsize=8)
    ax.set_title(f"PR curves, test: {model_dir.name}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
