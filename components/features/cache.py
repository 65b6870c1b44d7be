"""The embedding cache: frozen encoder outputs for every product of a dataset version.

Computed once per (dataset version, text encoder identity, image encoder identity) and
reused by every frozen-encoder training run, evaluation and search trial.
Stored as safetensors under `ATTRFLOW_HOME/cache/embeddings/<dataset>-<version>/`.

The encoders themselves (components.models.encoders) sit above this package: they are passed
in, and only the interface below is used.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import scipy.sparse as sp
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm import tqdm

from components.catalog.dataset import Dataset
from components.features.encoded import Features
from components.features.lexical import LexicalBatch, hashed_ngrams, product_texts
from components.features.preprocess import ImagePreprocessor, TextPreprocessor, collate_fn, records
from components.settings import get_settings

POOLED = ("text", "image", "has_image")  # what a pooled-only cache file holds


class TextEncoderLike(TextPreprocessor, Protocol):
    """What the cache uses of a text encoder (components.models.encoders.TextEncoder): a torch
    module whose output has `.pooled` (B, D), `.tokens` (B, T, D) and `.mask` (B, T)."""

    identity: str  # part of the cache key
    config: Any  # .max_length

    def __call__(self, **inputs: torch.Tensor) -> Any: ...

    def eval(self) -> Any: ...


class ImageEncoderLike(ImagePreprocessor, Protocol):
    """What the cache uses of an image encoder (components.models.encoders.ImageEncoder): a torch
    module whose output has `.pooled` (B, dim) and `.tokens` (B, R, token_dim)."""

    identity: str  # part of the cache key
    config: Any  # .image_size
    dim: int
    token_dim: int

    def __call__(self, pixels: torch.Tensor) -> Any: ...

    def eval(self) -> Any: ...

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...


@dataclass
class Encodings:
    """Encoder outputs for N products, in the dataset's row order."""

    text: torch.Tensor  # (N, Dt)
    image: torch.Tensor  # (N, Di), zeros where has_image is False
    has_image: torch.Tensor  # (N,) bool
    text_tokens: torch.Tensor | None = None  # (N, T, Dt) float16
    text_mask: torch.Tensor | None = None  # (N, T) bool
    image_tokens: torch.Tensor | None = None  # (N, R, Di) float16
    lexical: sp.csr_matrix | None = None  # (N, N_HASHES) hashed n-grams; recomputed on load, never stored

    def __len__(self) -> int:
        return len(self.text)

    @property
    def has_tokens(self) -> bool:
        return self.text_tokens is not None

    def features(self, index: torch.Tensor, device: torch.device | str = "cpu") -> Features:
        def take(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            t = t[index].to(device)
            return t.float() if t.dtype == torch.float16 else t

        return Features(
            text=take(self.text),
            image=take(self.image),
            has_image=take(self.has_image),
            text_tokens=take(self.text_tokens),
            text_mask=take(self.text_mask),
            image_tokens=take(self.image_tokens),
            lexical=None if self.lexical is None else LexicalBatch.from_rows(self.lexical, index).to(device),
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        """What the cache file stores."""
        return {k: v for k, v in vars(self).items() if isinstance(v, torch.Tensor)}


def cache_path(
    dataset: Dataset, text: TextEncoderLike, image: ImageEncoderLike, with_tokens: bool, home: Path | None = None
) -> Path:
    key = hashlib.sha256(f"{text.identity}|{image.identity}".encode()).hexdigest()[:16]
    home = home or get_settings().home
    return (
        home
        / "cache"
        / "embeddings"
        / f"{dataset.name}-{dataset.version}"
        / f"{key}{'-tokens' if with_tokens else ''}.safetensors"
    )


def cached_encodings(
    dataset: Dataset,
    text: TextEncoderLike,
    image: ImageEncoderLike,
    with_tokens: bool = False,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Encodings:
    """Load the dataset's encodings from the cache, computing and storing them on a miss."""
    path = cache_path(dataset, text, image, with_tokens)
    token_path = cache_path(dataset, text, image, True)
    lexical = hashed_ngrams(product_texts(dataset.items["title"].tolist(), dataset.items["description"].tolist()))
    if path.is_file():
        return Encodings(**load_file(str(path)), lexical=lexical)
    if not with_tokens and token_path.is_file():  # the pooled part of a token cache, stored on its own from now on
        with safe_open(str(token_path), framework="pt") as f:
            enc = Encodings(**{k: f.get_tensor(k) for k in POOLED}, lexical=lexical)
        save_atomic(enc.tensors(), path)
        return enc
    start = time.perf_counter()
    enc = encode_items(dataset, text, image, with_tokens, batch_size, device, progress)
    enc.lexical = lexical
    tensors = enc.tensors()
    save_atomic(tensors, path)
    if with_tokens:  # the pooled part on its own too: pooled-only readers need not load the token vectors
        save_atomic({k: tensors[k] for k in POOLED}, cache_path(dataset, text, image, False))
    if progress:
        print(f"cached {len(enc)} encodings in {time.perf_counter() - start:.1f}s -> {path}")
    return enc


def save_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write a safetensors file so that concurrent readers never see half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file(tensors, str(tmp))
    tmp.replace(path)  # atomic: concurrent runs never read half a file


@torch.no_grad()
def encode_items(
    dataset: Dataset,
    text: TextEncoderLike,
    image: ImageEncoderLike,
    with_tokens: bool,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Encodings:
    text.eval().to(device)
    image.eval().to(device)
    loader = DataLoader(records(dataset.items), batch_size=batch_size, collate_fn=collate_fn(text, image))
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in Encodings.__dataclass_fields__ if k != "lexical"}
    for batch in tqdm(loader, desc="encoding", unit="batch", disable=not progress, mininterval=2.0):
        batch = {k: v.to(device) for k, v in batch.items()}
        t = text(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch})
        has = batch["has_image"]
        # Products without an image are not run through the CNN at all.
        pooled = torch.zeros(len(has), image.dim, device=device)
        tokens = None
        if has.any():
            i = image(batch["pixels"][has])
            pooled[has] = i.pooled
            if with_tokens:
                tokens = torch.zeros(len(has), i.tokens.shape[1], image.token_dim, device=device)
                tokens[has] = i.tokens
        parts["text"].append(t.pooled.cpu())
        parts["image"].append(pooled.cpu())
        parts["has_image"].append(has.cpu())
        if with_tokens:
            pad = text.config.max_length - t.tokens.shape[1]  # pad every batch to one length
            parts["text_tokens"].append(torch.nn.functional.pad(t.tokens, (0, 0, 0, pad)).half().cpu())
            parts["text_mask"].append(torch.nn.functional.pad(t.mask, (0, pad)).cpu())
            if tokens is None:
                tokens = torch.zeros(len(has), _region_count(image), image.token_dim)
            parts["image_tokens"].append(tokens.half().cpu())
    return Encodings(**{k: torch.cat(v) if v else None for k, v in parts.items()})


def _region_count(image: ImageEncoderLike) -> int:
    h, w = image.config.image_size
    with torch.no_grad():
        return image(torch.zeros(1, 3, h, w, device=next(image.parameters()).device)).tokens.shape[1]
