"""The serving benchmark's model and products.

The model is the quality benchmark's exported best model (ATTRFLOW_HOME/bench/fashion-best/, see
bench/register.py) when it is there; else a frozen `concat` (configs/models/concat.yaml, default
encoders) trained here on a seeded sample of the fashion catalog, kept under
ATTRFLOW_HOME/bench/serving-concat/ for the next run. The model's accuracy does not matter to the
benchmark, only what it computes per product, so a few epochs on a sample are enough.

The products are real ones from the same catalog (configs/catalogs/fashion.yaml's source, or
ATTRFLOW_FASHION_DIR, read in place): id, title and the JPEG file's bytes, as a seller would upload them.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.common import ROOT, SPEC, log

CONCAT_CONFIG = ROOT / "configs" / "models" / "concat.yaml"
TRAIN_SAMPLE = 1_200  # products the fallback model is trained on (train / validation / test split)
TRAIN_EPOCHS = 3
SAMPLE_SEED = 0


@dataclass(frozen=True)
class BenchProduct:
    id: str
    title: str
    image: bytes  # the JPEG file, as uploaded


def catalog_source() -> Path:
    """styles.csv of the fashion catalog: in ATTRFLOW_FASHION_DIR when set (as the tests read it),
    else the spec's source (../shared/data/fashion-product-images-small/)."""
    from components.catalog import load_spec

    folder = os.environ.get("ATTRFLOW_FASHION_DIR")
    return Path(folder) / "styles.csv" if folder else load_spec(SPEC).source


def catalog_frame() -> tuple[pd.DataFrame, Path]:
    """The fashion catalog's rows that have an image file, and the folder the images are in."""
    source = catalog_source()
    frame = pd.read_csv(source, on_bad_lines="skip", dtype={"id": str})
    images = source.parent / "images"
    frame = frame[frame["productDisplayName"].notna()]
    frame = frame[[(images / f"{i}.jpg").is_file() for i in frame["id"]]]
    return frame.reset_index(drop=True), images


def load_products(n: int, seed: int = 1) -> list[BenchProduct]:
    """`n` seeded products of the catalog: title and JPEG bytes."""
    frame, images = catalog_frame()
    rows = frame.sample(n=min(n, len(frame)), random_state=seed)
    return [
        BenchProduct(id=str(r.id), title=str(r.productDisplayName), image=(images / f"{r.id}.jpg").read_bytes())
        for r in rows.itertuples()
    ]


def find_model(home: Path, explicit: Path | None = None, retrain: bool = False) -> tuple[Path, str]:
    """(model folder, where it came from): `explicit`, else the exported best model, else the
    fallback concat (trained now unless a previous run left it)."""
    if explicit is not None:
        return explicit.resolve(), "given (--model-dir)"
    best = home / "bench" / "fashion-best"
    if (best / "config.json").is_file():
        return best.resolve(), "the quality benchmark's exported best model (ATTRFLOW_HOME/bench/fashion-best)"
    fallback = home / "bench" / "serving-concat"
    if retrain or not (fallback / "config.json").is_file():
        train_fallback(home, fallback)
    how = (
        f"frozen concat (configs/models/concat.yaml) trained on {TRAIN_SAMPLE} catalog products, {TRAIN_EPOCHS} epochs"
    )
    return fallback.resolve(), how


def ingest_rows(rows: pd.DataFrame, images: Path, folder: Path, home: Path) -> Path:
    """Ingest these rows of the catalog into `home` (their images read in place from `images`,
    through a link in `folder`, which is written afresh); the dataset folder."""
    from components.catalog import ingest, load_spec

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rows.to_csv(folder / "styles.csv", index=False)
    (folder / "images").symlink_to(images.resolve(), target_is_directory=True)
    spec = load_spec(SPEC).model_copy(update={"source": folder / "styles.csv", "image_roots": [images.resolve()]})
    return ingest(spec, home=home).dataset_dir


def train_fallback(home: Path, out: Path) -> Path:
    """Ingest a seeded sample of the catalog (its images read in place) and train a frozen concat on it."""
    from components.catalog import load_dataset
    from components.training.trainer import load_train_config, train

    frame, images = catalog_frame()
    sample = frame.sample(n=TRAIN_SAMPLE, random_state=SAMPLE_SEED)
    dataset = load_dataset(ingest_rows(sample, images, home / "bench" / "serving-catalog", home))
    config = load_train_config(CONCAT_CONFIG, training={"epochs": TRAIN_EPOCHS})
    log(f"training the fallback model: concat on {len(dataset.items)} products, {TRAIN_EPOCHS} epochs -> {out}")
    shutil.rmtree(out, ignore_errors=True)
    train(config, dataset, out, progress=False)
    shutil.rmtree(out / "checkpoint", ignore_errors=True)
    return out
