"""POST /predict_by_id: catalog products by id, their features read from Feast's online store.

Two ways to score a product, chosen per product:

- `embeddings`: the stored pooled text and image embeddings go straight to the model's head, no
  encoder forward at all. Only when the model was trained on frozen pretrained encoders (no
  encoder weights of its own), reads pooled vectors only (no token-level fusion), and the store
  has the embedding view of exactly its encoders' identities with a row from the same dataset
  version as the product's text (else the vectors could be stale).
- `text_image`: otherwise, the stored title, description and image file go through the model as
  a raw product would (what POST /predict does).

Unknown ids get `status: not_found`, not a failed request. No BentoML here (the scorer calls it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel

from components.features.images import load_image
from components.features.tables import EncoderMismatch, embedding_view_name
from components.inference.inputs import Product
from serving.schemas import AttributePrediction, ModelRef

if TYPE_CHECKING:  # torch and the model: the scorer's, never imported by the front
    from components.inference.predictor import Predictor


class IdPrediction(BaseModel):
    id: str
    status: Literal["ok", "not_found", "error"]
    model: ModelRef | None = None
    has_image: bool | None = None
    features: Literal["embeddings", "text_image"] | None = None  # how it was scored
    attributes: dict[str, AttributePrediction] | None = None
    error: str | None = None


class ByIdResponse(BaseModel):
    request_id: str
    predictions: list[IdPrediction]


class OnlineScorer:
    """Scores ids with a Predictor and the online store (opened on first use, once per process)."""

    def __init__(self, store: Any = None) -> None:
        self._store = store

    @property
    def store(self) -> Any:
        if self._store is None:
            from feature_repo.store import open_store

            self._store = open_store()
        return self._store

    def embedding_view(self, predictor: Predictor) -> str | None:
        """The view whose vectors this model can take as they are, if the store has it."""
        from feast.errors import FeatureViewNotFoundException

        from feature_repo.store import check_embedding_view

        model = predictor.model
        if predictor.meta.get("includes_encoders", True) or "ensemble" in predictor.meta or model.needs_tokens:
            return None
        text, image = model.text_encoder, model.image_encoder
        name = embedding_view_name(text.identity, image.identity)
        for attempt in range(2):
            try:
                view = self.store.get_feature_view(name, allow_registry_cache=attempt == 0)
            except FeatureViewNotFoundException:
                continue  # written since the registry was cached? read it again once
            try:
                check_embedding_view(view, text.identity, image.identity, (text.dim, image.dim))
            except EncoderMismatch:  # not this model's vectors after all: score from text and image
                return None
            return name
        return None

    def score(self, predictor: Predictor, model: ModelRef, ids: list[str], top_k: int = 3) -> list[IdPrediction]:
        from feast.errors import FeatureViewNotFoundException

        from feature_repo.store import online_features

        view = self.embedding_view(predictor)
        rows: list[dict | None] = [None] * len(ids)  # nothing ingested into this store yet: no product is known
        for attempt in range(2):
            try:
                rows = online_features(ids, view, self.store)
                break
            except FeatureViewNotFoundException:
                if attempt == 0:
                    self.store.refresh_registry()  # applied since the registry was cached?
        out: list[IdPrediction | None] = [
            IdPrediction(id=i, status="not_found") if row is None else None for i, row in zip(ids, rows, strict=True)
        ]
        stored = [
            k
            for k, row in enumerate(rows)
            if row is not None and view and row["text_embedding"] is not None
            if row["embedding_version"] == row["dataset_version"]
        ]
        if stored:
            for k, result in zip(
                stored, self._from_embeddings(predictor, [rows[k] for k in stored], top_k), strict=True
            ):
                out[k] = IdPrediction(id=ids[k], status="ok", model=model, features="embeddings", **_fields(result))
        raw = [k for k, row in enumerate(rows) if row is not None and out[k] is None]
        products, kept = [], []
        for k in raw:
            try:
                image = load_image(rows[k]["image_path"] or None)
                product = Product(title=rows[k]["title"], description=rows[k]["description"], image=image, id=ids[k])
                product.check(predictor.limits, "stored product")  # InvalidProduct is a ValueError
            except (OSError, ValueError) as e:  # a stored image gone or unreadable, or over the limits
                out[k] = IdPrediction(id=ids[k], status="error", error=str(e))
                continue
            products.append(product)
            kept.append(k)
        if products:
            scored = predictor.predict(products, top_k=top_k, batch_size=len(products))
            for k, result in zip(kept, scored.results, strict=True):
                out[k] = IdPrediction(id=ids[k], status="ok", model=model, features="text_image", **_fields(result))
        return out  # type: ignore[return-value]  # every slot is filled

    @staticmethod
    def _from_embeddings(predictor: Predictor, rows: list[dict], top_k: int) -> list[dict[str, Any]]:
        import torch

        from components.features.cache import Encodings
        from components.features.lexical import hashed_ngrams, product_texts
        from components.inference.predict import describe, predict_items

        model = predictor.model
        titles, descriptions = [r["title"] for r in rows], [r["description"] for r in rows]
        encodings = Encodings(
            text=torch.as_tensor(np.asarray([r["text_embedding"] for r in rows], dtype=np.float32)),
            image=torch.as_tensor(np.asarray([r["image_embedding"] for r in rows], dtype=np.float32)),
            has_image=torch.as_tensor([bool(r["has_image"]) for r in rows]),
            lexical=hashed_ngrams(product_texts(titles, descriptions)) if model.lexical is not None else None,
        )
        pred = predict_items(model, encodings=encodings, batch_size=len(rows))
        return describe(model, predictor.thresholds, pred, top_k)


def _fields(result: dict[str, Any]) -> dict[str, Any]:
    return {"has_image": result["has_image"], "attributes": result["attributes"]}
