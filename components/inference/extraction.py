"""Extraction at prediction time: products -> spans with offsets and confidence -> one value per attribute.

spans = extract(model, texts, categories, allowed)      # every decoded span
values = best_values(spans)                               # attribute -> its most confident span
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.catalog.dataset import Dataset
from components.catalog.spans import snap_to_words, trim_separators, value_of
from components.features.cache import cached_encodings
from components.models.bio import decode_spans
from components.models.encoders import ImageEncoder, TextEncoder
from components.models.tagger import ExtractionConfig, Extractor, cached_inputs


@dataclass(frozen=True)
class ExtractedSpan:
    attribute: str
    start: int  # character offsets into the text
    end: int
    text: str  # the text at those offsets
    value: str  # the value it stands for: `text`, or a learned form of it (catalog.spans.value_of)
    score: float  # mean of 1 - p(O) over the span's tokens


@torch.no_grad()
def extract(
    model: Extractor,
    texts: Sequence[str],
    categories: Sequence[str],
    allowed: Mapping[str, Sequence[str]] | None = None,
    batch_size: int = 64,
    features: Mapping[str, torch.Tensor] | None = None,
    images: Sequence[Any] | None = None,
) -> list[list[ExtractedSpan]]:
    """Spans per product. `allowed`: per category, the attributes it defines (others are not decoded;
    None = all). With range minimisation, also only the attributes the attribute head accepts; with
    fill_accepted, each accepted attribute gets at least its best span. `features`: the frozen
    encoders' outputs per product (the embedding cache), in the order of `texts`; or `images`
    (PIL images or None) for a model with visual gates, encoded here."""
    model.eval()
    out: list[list[ExtractedSpan]] = []
    cfg = model.config
    transitions = model.transitions()
    for lo in range(0, len(texts), batch_size):
        tx, cats = list(texts[lo : lo + batch_size]), list(categories[lo : lo + batch_size])
        batch = model.tokenize(tx, cats)
        if features is not None:
            batch.update(cached_inputs(dict(features), torch.arange(lo, lo + len(tx)), batch["input_ids"].shape[1]))
        elif images is not None and model.image_encoder is not None:
            batch["pixels"], batch["has_image"] = model.image_encoder.preprocess(list(images[lo : lo + len(tx)]))
        res = model(batch)
        probs = res.tag_logits.softmax(-1).numpy()
        accept = None
        if (cfg.range_minimisation or cfg.fill_accepted) and res.attribute_logits is not None:
            accept = (res.attribute_logits.sigmoid() >= cfg.attribute_threshold).numpy()
        for b, (text, cat) in enumerate(zip(tx, cats, strict=True)):
            ok = np.ones(len(model.attributes), dtype=bool)
            if allowed is not None:
                ok &= np.isin(model.attributes, list(allowed.get(cat, [])))
            need = ok & accept[b] if accept is not None and cfg.fill_accepted else None
            if accept is not None and cfg.range_minimisation:
                ok &= accept[b]
            keep = batch["title_mask"][b].numpy()
            offs = batch["offsets"][b].numpy()[keep]
            spans = []
            for attr, i, j, score in decode_spans(probs[b][keep], model.attributes, ok, need, transitions):
                s, e = int(offs[i, 0]), int(offs[j, 1])
                if attr in model.word_aligned:
                    s, e = snap_to_words(text, s, e, model.word_aligned[attr])
                s, e = trim_separators(text, s, e)
                value = value_of(text, s, e, model.surface_forms.get(attr, {}))
                spans.append(ExtractedSpan(attr, s, e, text[s:e], value, score))
            out.append(spans)
    return out


def best_values(spans: Sequence[ExtractedSpan]) -> dict[str, ExtractedSpan]:
    """Per attribute, its most confident span (the benchmarks score one value per attribute)."""
    best: dict[str, ExtractedSpan] = {}
    for s in spans:
        if s.attribute not in best or s.score > best[s.attribute].score:
            best[s.attribute] = s
    return best


class ValueExtractor:
    """A saved extraction model, loaded once: titles (and images) -> per product, one entry per
    attribute found (attribute, value, start, end, text, score) with `published` where the score
    clears the attribute's threshold (thresholds.json, fitted on validation at the target precision)."""

    def __init__(self, model_dir: str | Path):
        from components.models.io import THRESHOLDS, load_model

        model = load_model(model_dir)
        if not isinstance(model, Extractor):
            raise ValueError(f"{model_dir} is not an extraction model")
        self.model = model
        path = Path(model_dir) / THRESHOLDS
        self.thresholds: dict[str, float | None] = json.loads(path.read_text()) if path.is_file() else {}

    def __call__(
        self, titles: Sequence[str], images: Sequence[Any] | None = None, category: str = "all"
    ) -> list[list[dict[str, Any]]]:
        found = extract(self.model, list(titles), [category] * len(titles), images=images)
        return [
            [
                {**asdict(s), "published": self.thresholds.get(a) is not None and s.score >= self.thresholds[a]}
                for a, s in sorted(best_values(spans).items())
            ]
            for spans in found
        ]


def extract_values(
    model_dir: str | Path, titles: Sequence[str], images: Sequence[Any] | None = None, category: str = "all"
) -> list[list[dict[str, Any]]]:
    """`ValueExtractor(model_dir)(titles, images)`: for one call (the CLI)."""
    return ValueExtractor(model_dir)(titles, images, category)


def dataset_features(config: ExtractionConfig, dataset: Dataset) -> dict[str, torch.Tensor] | None:
    """The embedding cache (every product, in dataset order) for a model with visual gates: the
    frozen image encoder's pooled vectors and regions, and with `frozen_text` the text encoder's
    token vectors too. None (no image encoder): the text encoder runs on each batch."""
    if config.image is None:
        return None
    enc = cached_encodings(dataset, TextEncoder(config.text), ImageEncoder(config.image), with_tokens=True)
    keys = ("image", "image_tokens", "has_image") + (("text", "text_tokens") if config.frozen_text else ())
    return {k: getattr(enc, k) for k in keys}


def split_features(features: dict[str, torch.Tensor] | None, dataset: Dataset, split: str):
    if features is None:
        return None
    index = torch.from_numpy(np.flatnonzero(dataset.items["split"].to_numpy() == split))
    return {k: v[index] for k, v in features.items()}
