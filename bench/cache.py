"""The one embedding cache every frozen row reads: the benchmark's encoders, computed or reused."""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench.common import log
from bench.rows import ENCODERS
from components.catalog.dataset import Dataset
from components.features.cache import cache_path, cached_encodings
from components.models.encoders import ImageEncoder, ImageEncoderConfig, TextEncoder, TextEncoderConfig


def encoders() -> tuple[TextEncoder, ImageEncoder]:
    return TextEncoder(TextEncoderConfig(**ENCODERS["text"])), ImageEncoder(ImageEncoderConfig(**ENCODERS["image"]))


def embedding_cache(ds: Dataset, cache_record: Path, timing: dict[str, float]) -> tuple[TextEncoder, ImageEncoder]:
    """Compute the dataset's embedding cache unless it is there; its time goes to `timing`, and
    when computed, to `cache_record` (for reports of later runs that reuse it)."""
    # One embedding cache for every frozen row (with tokens, for cross_attention; the pooled part
    # is stored as its own file too, which is what the other rows read).
    t0 = time.perf_counter()
    text_enc, image_enc = encoders()
    hit = cache_path(ds, text_enc, image_enc, True).is_file()
    if not hit:
        cached_encodings(ds, text_enc, image_enc, with_tokens=True, batch_size=128)
    timing["embedding cache" + (" (reused)" if hit else "")] = time.perf_counter() - t0
    log(f"embedding cache {'reused' if hit else 'computed'} in {time.perf_counter() - t0:.0f}s")
    if not hit:  # remember how long computing it took, for reports of later runs that reuse it
        cache_record.parent.mkdir(parents=True, exist_ok=True)
        cache_record.write_text(
            json.dumps(
                {
                    "seconds": time.perf_counter() - t0,
                    "products": len(ds.items),
                    "path": str(cache_path(ds, text_enc, image_enc, True)),
                },
                indent=1,
            )
        )
    return text_enc, image_enc
