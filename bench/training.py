"""Train one attrflow row and score it on test (per attribute; masked/unmasked; image weights)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import log, metrics_of
from bench.probs import save_probs
from components.catalog.dataset import Dataset
from components.evaluation.evaluate import predict_split
from components.evaluation.metrics import modality_weight_stats
from components.models.io import load_model
from components.training.trainer import TrainConfig, train


def attrflow_row(
    name: str,
    cfg: TrainConfig,
    ds: Dataset,
    out_root: Path,
    labels: dict[str, np.ndarray],
    masked: np.ndarray | None = None,
) -> dict[str, Any]:
    model_dir = out_root / name
    log(f"{name}: training -> {model_dir}")
    start = time.perf_counter()
    result = train(
        cfg,
        ds,
        model_dir,
        progress=False,
        on_epoch_end=lambda e, r: log(
            f"  {name} epoch {e}: loss {r['train_loss']:.4f} val f1_macro {r['validation']['f1_macro']:.4f} ({r['items_per_second']:.0f} items/s)"
        ),
    )
    seconds = time.perf_counter() - start
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(model_dir, device)
    te = np.flatnonzero(ds.items["split"].to_numpy() == "test")
    pred = predict_split(model, model_dir, ds, "test")
    # Validation and test scores beside the model: what the ensemble selection reads.
    save_probs(model_dir, result.validation_probs, pred.probs)
    row: dict[str, Any] = {
        "config": cfg.model_dump(mode="json"),
        "model_dir": str(model_dir),
        "hardware": torch.cuda.get_device_name()
        if device == "cuda"
        else f"CPU ({torch.get_num_threads()} torch threads)",
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "train_seconds": seconds,
        "items_per_second": result.items_per_second,
        "validation_f1_macro": float(np.mean([m["f1_macro"] for m in result.validation.values()])),
        "attributes": {},
    }
    for a, spec in enumerate(model.specs):
        y = labels[spec.name][te]
        row["attributes"][spec.name] = metrics_of(pred.probs[spec.name], y)
        if masked is not None:
            sub = masked[te]
            row["attributes"][spec.name]["masked"] = metrics_of(pred.probs[spec.name][sub], y[sub])
            row["attributes"][spec.name]["unmasked"] = metrics_of(pred.probs[spec.name][~sub], y[~sub])
        if pred.modality_weights is not None:
            w = pred.modality_weights[pred.has_image, a, 1]
            row["attributes"][spec.name]["image_weight"] = modality_weight_stats(w)
    if pred.modality_weights is not None:
        row["_image_weights"] = {s.name: pred.modality_weights[pred.has_image, a, 1] for a, s in enumerate(model.specs)}
    log(
        f"{name}: {seconds:.0f}s, test f1_macro "
        + " ".join(f"{k} {v['f1_macro']:.3f}" for k, v in row["attributes"].items())
    )
    return row
