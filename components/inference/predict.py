"""Scores for many products (evaluation, training) and their JSON form; `predictor.py` scores raw products."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from components.features.cache import Encodings
from components.features.preprocess import collate_fn, records
from components.models.model import AttributeModel


@dataclass
class Predictions:
    probs: dict[str, np.ndarray]  # attribute -> (N, n_values)
    modality_weights: np.ndarray | None  # (N, A, 2) [text, image] per attribute, when the fusion has them
    has_image: np.ndarray  # (N,) bool


@torch.no_grad()
def predict_items(
    model: AttributeModel,
    items: pd.DataFrame | None = None,
    encodings: Encodings | None = None,
    index: np.ndarray | None = None,
    batch_size: int = 256,
) -> Predictions:
    """Scores for products, from cached encodings (rows `index`) or from raw rows `items`."""
    model.eval()
    device = next(model.parameters()).device
    probs: dict[str, list[np.ndarray]] = {s.name: [] for s in model.specs}
    weights, has_image = [], []
    if encodings is not None:
        idx = torch.as_tensor(index if index is not None else np.arange(len(encodings)))
        batches = (
            model.forward_head(encodings.features(idx[i : i + batch_size], device))
            for i in range(0, len(idx), batch_size)
        )
        has_image.append(encodings.has_image[idx].numpy())
    else:
        assert items is not None, "give items or encodings"
        loader = DataLoader(
            records(items), batch_size=batch_size, collate_fn=collate_fn(model.text_encoder, model.image_encoder)
        )

        def run():
            for batch in loader:
                has_image.append(batch["has_image"].numpy())
                yield model({k: v.to(device) for k, v in batch.items()})

        batches = run()
    for out in batches:
        for name, p in model.probabilities(out).items():
            probs[name].append(p.float().cpu().numpy())
        if out.modality_weights is not None:
            weights.append(out.modality_weights.float().cpu().numpy())
    return Predictions(
        probs={k: np.concatenate(v) for k, v in probs.items()},
        modality_weights=np.concatenate(weights) if weights else None,
        has_image=np.concatenate(has_image),
    )


def describe(model: AttributeModel, thresholds: dict, pred: Predictions, top_k: int = 3) -> list[dict[str, Any]]:
    """Predictions -> JSON-able dicts, one per product. A value is `published` when its score
    clears the per-value threshold saved with the model (None = never confident enough)."""
    results = []
    for row in range(len(pred.has_image)):
        attrs = {}
        for a, spec in enumerate(model.specs):
            p = pred.probs[spec.name][row]
            values = model.vocab[spec.name].values
            limits = thresholds.get(spec.name, [None] * len(values))
            order = np.argsort(-p)[:top_k]
            attrs[spec.name] = {
                "kind": spec.kind,
                "values": [
                    {
                        "value": values[j],
                        "score": round(float(p[j]), 4),
                        "threshold": limits[j],
                        # multiclass thresholds were fitted on top-1 predictions only
                        "published": limits[j] is not None
                        and float(p[j]) >= limits[j]
                        and (spec.kind == "multilabel" or rank == 0),
                    }
                    for rank, j in enumerate(order)
                ],
            }
            if pred.modality_weights is not None:
                w = pred.modality_weights[row, a]
                attrs[spec.name]["modality_weights"] = {"text": round(float(w[0]), 4), "image": round(float(w[1]), 4)}
        results.append({"has_image": bool(pred.has_image[row]), "attributes": attrs})
    return results
