"""A saved model loaded once, scoring raw products in batches: the CLI, the endpoint and batch
scoring all go through `Predictor`. No serving framework here; the endpoint is a thin layer on top.

    predictor = Predictor("path/to/model")
    scored = predictor.predict([Product(title="Navy Blue Cotton Shirt", image=decode_image(jpeg_bytes))])
    scored.results[0]["attributes"]["baseColour"]["values"][0]   # {"value", "score", "threshold", "published"}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from components.features.preprocess import collate_fn
from components.inference.inputs import InputLimits, Product
from components.inference.predict import Predictions, describe
from components.models.io import load_meta, load_model, load_thresholds


@dataclass
class Scored:
    """A batch's predictions: `results` are JSON-able, one per product (see `describe`); the pooled
    embeddings are there for the prediction log and monitoring (None where the model has no split
    between encoders and heads, i.e. an ensemble of fine-tuned members)."""

    results: list[dict[str, Any]]
    text_embeddings: np.ndarray | None  # (N, Dt)
    image_embeddings: np.ndarray | None  # (N, Di); zeros where there is no image


class Predictor:
    """Loads a model folder once (weights, vocabularies, publishing thresholds) and scores batches
    of raw products with the preprocessing the model was trained with."""

    def __init__(self, model_dir: str | Path, device: str | torch.device = "cpu", limits: InputLimits | None = None):
        self.model_dir = Path(model_dir)
        self.device = torch.device(device)
        self.model = load_model(self.model_dir, self.device)
        self.thresholds = load_thresholds(self.model_dir)
        self.meta = load_meta(self.model_dir)
        self.limits = limits or InputLimits()
        self._collate = collate_fn(self.model.text_encoder, self.model.image_encoder)

    @property
    def fusion(self) -> str:
        if "ensemble" in self.meta:
            return "ensemble(" + ",".join(self.meta["ensemble"]["members"]) + ")"
        if "stacked" in self.meta:
            return "stacked(" + ",".join(self.meta["stacked"]["members"]) + ")"
        return self.meta["model"]["fusion"]["name"]

    @property
    def attributes(self) -> list[str]:
        return [s.name for s in self.model.specs]

    @torch.no_grad()
    def predict(self, products: Sequence[Product], top_k: int = 3, batch_size: int = 64) -> Scored:
        """Scores for `products` (checked first: InvalidProduct names the first bad one)."""
        for i, p in enumerate(products):
            p.check(self.limits, f"products[{i}]" if len(products) > 1 else "product")
        results, text, image = [], [], []
        for start in range(0, len(products), batch_size):
            chunk = products[start : start + batch_size]
            batch = self._collate([{"title": p.title, "description": p.description, "image": p.image} for p in chunk])
            batch = {k: v.to(self.device) for k, v in batch.items()}
            if getattr(self.model, "shared_encoders", True):
                features = self.model.forward_features(batch)
                out = self.model.forward_head(features)
                text.append(features.text.float().cpu().numpy())
                image.append(features.image.float().cpu().numpy())
            else:
                out = self.model(batch)
            pred = Predictions(
                probs={k: v.float().cpu().numpy() for k, v in self.model.probabilities(out).items()},
                modality_weights=None if out.modality_weights is None else out.modality_weights.float().cpu().numpy(),
                has_image=batch["has_image"].cpu().numpy(),
            )
            for product, result in zip(chunk, describe(self.model, self.thresholds, pred, top_k), strict=True):
                results.append({"id": product.id, **result})
        return Scored(
            results=results,
            text_embeddings=np.concatenate(text) if text else None,
            image_embeddings=np.concatenate(image) if image else None,
        )

    def warmup(self) -> None:
        """One product with text and image through every layer: first-call costs are paid before traffic."""
        self.predict([Product(title="warm up", description="warm up", image=Image.new("RGB", (64, 64), (128, 64, 32)))])
