"""The lexical channel: hashed word 1-2 grams of a product's text.

A mean-pooled sentence encoder blurs exact words ("Navy Blue", "Flip Flops") that a bag of
words keeps, which is why TF-IDF + logistic regression is a strong baseline on short titles.
The model can learn an embedding of these n-grams beside the sentence embedding
(`ModelConfig.lexical`, wide & deep style). Hashing needs no vocabulary file: the same text
always gives the same ids, on any machine, at training and at serving time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.feature_extraction.text import HashingVectorizer

N_HASHES = 2**20  # the model folds these ids into its own number of buckets

_VECTORIZER = HashingVectorizer(
    ngram_range=(1, 2), n_features=N_HASHES, alternate_sign=False, binary=True, norm="l2", lowercase=True
)


def product_texts(titles: Sequence[str | None], descriptions: Sequence[str | None]) -> list[str]:
    """The text the lexical channel reads: title, then description (whole, not truncated)."""
    return [f"{t or ''} {d or ''}".strip() for t, d in zip(titles, descriptions, strict=True)]


def hashed_ngrams(texts: Sequence[str]) -> sp.csr_matrix:
    """(N, N_HASHES) sparse rows, one per text: 1 per n-gram present, each row L2-normalised."""
    return _VECTORIZER.transform(list(texts)).tocsr()


@dataclass
class LexicalBatch:
    """The n-grams of a batch in torch.nn.EmbeddingBag's flat layout."""

    ids: torch.Tensor  # (nnz,) long, hashed n-gram ids
    offsets: torch.Tensor  # (B,) long, where each product's ids start
    weights: torch.Tensor  # (nnz,) float

    @classmethod
    def from_rows(cls, matrix: sp.csr_matrix, rows: np.ndarray | torch.Tensor | None = None) -> LexicalBatch:
        sub = matrix if rows is None else matrix[np.asarray(rows)]
        return cls(
            ids=torch.from_numpy(sub.indices.astype(np.int64)),
            offsets=torch.from_numpy(sub.indptr[:-1].astype(np.int64)),
            weights=torch.from_numpy(sub.data.astype(np.float32)),
        )

    def to(self, device: torch.device | str) -> LexicalBatch:
        return LexicalBatch(self.ids.to(device), self.offsets.to(device), self.weights.to(device))

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {"lexical_ids": self.ids, "lexical_offsets": self.offsets, "lexical_weights": self.weights}

    @classmethod
    def from_dict(cls, batch: dict[str, torch.Tensor]) -> LexicalBatch:
        return cls(batch["lexical_ids"], batch["lexical_offsets"], batch["lexical_weights"])
