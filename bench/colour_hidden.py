"""The "colour hidden in text" catalog: a seeded 50% of titles without colour words, its dataset and cache."""

from __future__ import annotations

import csv
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from bench.common import SPEC, log
from components.catalog import ingest, load_dataset, load_spec
from components.catalog.dataset import Dataset
from components.features.cache import cache_path, cached_encodings, save_atomic
from components.models.encoders import ImageEncoder, TextEncoder


def colour_hidden_dataset(
    home: Path, ds: Dataset, text_enc: TextEncoder, image_enc: ImageEncoder, dataset_dir: Path | None = None
) -> tuple[Dataset, np.ndarray, dict[str, Any]]:
    """The derived catalog ingested (or read from `dataset_dir`, as the lanes get it), which of its
    products lost their colour words, and the record the report keeps (bench/results/rows/colour_hidden.json)."""
    colours = colour_words(ds.vocab["baseColour"].values)
    spec_path = build_colour_hidden_catalog(home, colours)
    ds_ch = load_dataset(dataset_dir or ingest(load_spec(spec_path)).dataset_dir)
    hidden = (
        ds_ch.items["id"].map(dict(zip(*_hidden_ids(spec_path), strict=True))).fillna(False).astype(bool).to_numpy()
    )
    same_split = bool(
        (ds_ch.items.set_index("id")["split"] == ds.items.set_index("id")["split"].reindex(ds_ch.items["id"])).all()
    )
    derive_encodings(ds_ch, ds, text_enc, image_enc)
    record = {
        "share": 0.5,
        "seed": 0,
        "colour_words": colours,
        "dataset": {"name": ds_ch.name, "version": ds_ch.version},
        "same_split_as_original": same_split,
        "masked_test_products": int(hidden[ds_ch.items["split"].to_numpy() == "test"].sum()),
    }
    return ds_ch, hidden, record


def colour_words(values: list[str]) -> list[str]:
    words = {w.lower() for v in values for w in re.split(r"[\s/-]+", v) if w}
    return sorted(words, key=lambda w: (-len(w), w))


def build_colour_hidden_catalog(home: Path, colours: list[str], seed: int = 0, share: float = 0.5) -> Path:
    """Write ATTRFLOW_HOME/bench/fashion-colour-hidden/ (CSV + spec + hard-linked images) and return the spec path.

    Every word of the baseColour vocabulary is removed (case-insensitive, whole words) from the
    titles of a seeded `share` of products (all splits); a `colour_hidden` column marks them.
    Images are hard links to the originals (same bytes; ingest keeps images inside the catalog folder).
    """
    spec = load_spec(SPEC)
    out = home / "bench" / "fashion-colour-hidden"
    spec_path = out / "fashion-colour-hidden.yaml"
    if spec_path.is_file():
        return spec_path
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    src_images = spec.source.parent / "images"
    for f in src_images.iterdir():
        try:
            os.link(f, tmp / "images" / f.name)
        except OSError:
            shutil.copy2(f, tmp / "images" / f.name)
    pattern = re.compile(r"\b(?:" + "|".join(map(re.escape, colours)) + r")\b", re.IGNORECASE)
    with (
        spec.source.open(newline="", encoding="utf-8") as fin,
        (tmp / "styles.csv").open("w", newline="", encoding="utf-8") as fout,
    ):
        reader, writer = csv.reader(fin), csv.writer(fout)
        header = next(reader)
        title_col = header.index(spec.title_column)
        writer.writerow([*header, "colour_hidden"])
        rows = list(reader)
        hide = np.zeros(len(rows), dtype=bool)
        hide[np.random.default_rng(seed).permutation(len(rows))[: int(round(share * len(rows)))]] = True
        for row, h in zip(rows, hide, strict=True):
            if h and len(row) == len(header):
                row = list(row)
                row[title_col] = re.sub(r"\s+", " ", pattern.sub(" ", row[title_col])).strip()
            writer.writerow([*row, int(h)])
    raw = yaml.safe_load(SPEC.read_text())
    raw.update(name="fashion-colour-hidden", source="styles.csv")
    (tmp / spec_path.name).write_text(yaml.safe_dump(raw, sort_keys=False))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return spec_path


@torch.no_grad()
def derive_encodings(ds: Dataset, base: Dataset, text: TextEncoder, image: ImageEncoder) -> float:
    """Seed the derived catalog's embedding cache from the original's: images are byte-identical
    (same image_sha256), so only the changed titles are run through the text encoder."""
    path = cache_path(ds, text, image, with_tokens=False)
    if path.is_file():
        return 0.0
    start = time.perf_counter()
    base_enc = cached_encodings(base, text, image, progress=False)
    pos = {i: k for k, i in enumerate(base.items["id"].tolist())}
    idx = np.array([pos[i] for i in ds.items["id"].tolist()])
    assert (ds.items["image_sha256"].to_numpy() == base.items["image_sha256"].to_numpy()[idx]).all()
    vec = base_enc.text[idx].clone()
    titles = ds.items["title"].fillna("").to_numpy()
    changed = np.flatnonzero(titles != base.items["title"].fillna("").to_numpy()[idx])
    text.eval()
    for i in range(0, len(changed), 256):
        rows = changed[i : i + 256]
        vec[rows] = text(**text.tokenize(list(titles[rows]), [""] * len(rows))).pooled
    save_atomic(
        {
            "text": vec.contiguous(),
            "image": base_enc.image[idx].contiguous(),
            "has_image": base_enc.has_image[idx].contiguous(),
        },
        path,
    )
    log(
        f"colour-hidden cache: re-encoded {len(changed)} changed titles, images reused ({time.perf_counter() - start:.0f}s)"
    )
    return time.perf_counter() - start


def _hidden_ids(spec_path: Path) -> tuple[list[str], list[bool]]:
    with (spec_path.parent / "styles.csv").open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        pairs = [(r["id"], r["colour_hidden"] == "1") for r in reader]
    return [p[0] for p in pairs], [p[1] for p in pairs]
