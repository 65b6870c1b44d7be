"""Products (rows of a dataset) -> tensors: tokenised text, image pixels, encoded labels."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from components.features.lexical import LexicalBatch, hashed_ngrams, product_texts
from components.models.encoders import ImageEncoder, TextEncoder, load_image


def collate_fn(
    text_encoder: TextEncoder, image_encoder: ImageEncoder
) -> Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]]:
    """A DataLoader collate function: a list of product records -> one model batch."""

    def collate(records: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        titles, descriptions = [r.get("title") or "" for r in records], [r.get("description") or "" for r in records]
        batch = text_encoder.tokenize(titles, descriptions)
        pixels, has_image = image_encoder.preprocess([load_image(r.get("image_path")) for r in records])
        batch.update(pixels=pixels, has_image=has_image)
        batch.update(LexicalBatch.from_rows(hashed_ngrams(product_texts(titles, descriptions))).as_dict())
        if "index" in records[0]:
            batch["index"] = torch.tensor([r["index"] for r in records])
        return batch

    return collate


def records(items: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts carrying their position, so batches can be matched back to labels."""
    cols = ["title", "description", "image_path"]
    return [{**r, "index": i} for i, r in enumerate(items[cols].to_dict("records"))]


def encode_labels(items: pd.DataFrame, vocab: dict) -> dict[str, torch.Tensor]:
    """Labels as tensors. multiclass: (N,) class index, -1 = no label.
    multilabel: (N, C) 0/1, a row of -1 = no label. Unlabelled products add no loss."""
    out = {}
    for name, v in vocab.items():
        index = {value: j for j, value in enumerate(v.values)}
        cells = items[name].tolist()
        if v.kind == "multiclass":
            out[name] = torch.tensor([index.get(c, -1) if c is not None else -1 for c in cells], dtype=torch.long)
        else:
            y = np.zeros((len(cells), len(v.values)), dtype=np.float32)
            for i, c in enumerate(cells):
                if c is None:
                    y[i] = -1
                else:
                    for value in c:
                        if value in index:
                            y[i, index[value]] = 1
            out[name] = torch.from_numpy(y)
    return out
