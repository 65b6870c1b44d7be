"""Products (rows of a dataset) -> tensors: tokenised text, image pixels, encoded labels.

The encoders (components.models.encoders) own their tokenizer and normalisation constants and
call the transforms here; `collate_fn` takes any object with their `tokenize` / `preprocess`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from PIL import Image

from components.features.images import load_image, to_rgb
from components.features.lexical import LexicalBatch, hashed_ngrams, product_texts


class TextPreprocessor(Protocol):
    """Text -> token tensors (components.models.encoders.TextEncoder is one)."""

    def tokenize(self, titles: list[str], descriptions: list[str]) -> dict[str, torch.Tensor]: ...


class ImagePreprocessor(Protocol):
    """Images -> normalised pixels and a has-image mask (components.models.encoders.ImageEncoder is one)."""

    def preprocess(self, images: list[Image.Image | None]) -> tuple[torch.Tensor, torch.Tensor]: ...


def tokenize(
    tokenizer: Callable[..., Any], titles: list[str], descriptions: list[str], max_length: int
) -> dict[str, torch.Tensor]:
    """Titles and descriptions -> a padded batch of token ids (input `title [SEP] description`)."""
    if len(titles) != len(descriptions):
        raise ValueError(f"{len(titles)} titles but {len(descriptions)} descriptions")
    # A (title, description) pair makes the tokenizer insert [SEP]; no description -> title alone.
    batch = [(t, d) if d and d.strip() else t for t, d in zip(titles, descriptions, strict=True)]
    return dict(tokenizer(batch, padding="longest", truncation=True, max_length=max_length, return_tensors="pt"))


def image_pixels(
    images: list[Image.Image | None], image_size: tuple[int, int], mean: torch.Tensor, std: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images -> (B, 3, h, w) pixels resized to `image_size` (height, width) and normalised with
    `mean` / `std` (each (3, 1, 1)), and the (B,) has-image mask."""
    h, w = image_size
    pixels = torch.zeros(len(images), 3, h, w)
    has_image = torch.tensor([im is not None for im in images], dtype=torch.bool)
    for i, im in enumerate(images):
        if im is not None:  # a missing image stays all zeros; the fusion model masks it out
            arr = np.asarray(to_rgb(im).resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0
            pixels[i] = (torch.from_numpy(arr).permute(2, 0, 1) - mean) / std
    return pixels, has_image


def collate_fn(
    text_encoder: TextPreprocessor, image_encoder: ImagePreprocessor
) -> Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]]:
    """A DataLoader collate function: a list of product records -> one model batch."""

    def collate(records: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        titles, descriptions = [r.get("title") or "" for r in records], [r.get("description") or "" for r in records]
        batch = text_encoder.tokenize(titles, descriptions)
        # A record holds a decoded `image` (the predictor) or an `image_path` (datasets).
        images = [r["image"] if r.get("image") is not None else load_image(r.get("image_path")) for r in records]
        pixels, has_image = image_encoder.preprocess(images)
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
