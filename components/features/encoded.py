"""`Features`: what the encoders hand to a fusion, for a batch of products.

It lives here, below `components.models`, because both sides build it: the models' encoders
(`AttributeModel.forward_features`) and the embedding cache (`Encodings.features`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from components.features.lexical import LexicalBatch


@dataclass
class Features:
    """What the encoders hand to a fusion. Token fields are filled only when a fusion needs them."""

    text: torch.Tensor  # (B, Dt) pooled text
    image: torch.Tensor  # (B, Di) pooled image; zeros where has_image is False
    has_image: torch.Tensor  # (B,) bool
    text_tokens: torch.Tensor | None = None  # (B, T, Dt)
    text_mask: torch.Tensor | None = None  # (B, T) bool, True for real tokens
    image_tokens: torch.Tensor | None = None  # (B, R, Di)
    lexical: LexicalBatch | None = None  # hashed n-grams; the model appends their embedding to `text`
