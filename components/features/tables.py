"""The product feature tables the feature store reads (plain pandas: no Feast here).

Every ingested dataset version adds a snapshot of its products to each view's offline source, and
Feast's point-in-time join picks, for each product, the newest row at or before the time asked
for. Each row carries `event_timestamp` = the dataset version's ingest time (`created_at` in its
manifest) and `dataset` = "<name>-<version>". Where (`table_path`), under ATTRFLOW_HOME/feast/data/:

- text, image, labels: one Parquet file per view holding every version's rows (a version written
  again replaces its own rows). One file, because Feast's file offline store cannot point-in-time
  join over a folder of several files once an id has no row at the time asked for (its Dask sort
  of the null timestamps fails), and training reads these views point in time.
- embeddings: a folder per view, one file per dataset version (large; read online, not joined).

Embeddings: one view per encoder pair, named by the pair's identity (`embedding_view_name`, the
same key as the embedding cache's file name), so vectors of two encoders never mix. Its rows are
copied from the frozen-training cache file of (dataset version, text identity, image identity),
never computed separately: the view holds, per dataset version, exactly the cache's vectors.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from components.catalog.dataset import Dataset
from components.settings import get_settings

ENTITY = "product"
KEY = "product_id"  # the entity's join key: the catalog's product id
TIMESTAMP = "event_timestamp"
TEXT, IMAGE, LABELS = "product_text", "product_image", "product_labels"
EMBEDDINGS_PREFIX = "product_embeddings_"

TEXT_FEATURES = ["title", "description", "dataset_version"]
IMAGE_FEATURES = [
    "image_path",
    "image_sha256",
    "image_width",
    "image_height",
    "image_brightness",
    "image_colourfulness",
]
LABEL_FEATURES = ["labels", "dataset_version"]  # labels: a JSON object {attribute: value | [values]}
EMBEDDING_FEATURES = ["text_embedding", "image_embedding", "has_image", "dataset_version"]
_THUMBNAIL = (64, 64)


class EncoderMismatch(ValueError):
    """Vectors offered to the embedding view of another encoder pair, or of another size."""


def feast_dir(home: Path | None = None) -> Path:
    """Where the local feature store lives: ATTRFLOW_FEAST_DIR, else ATTRFLOW_HOME/feast (absolute)."""
    given = os.environ.get("ATTRFLOW_FEAST_DIR")
    return Path(given).absolute() if given else ((home or get_settings().home) / "feast").absolute()


def table_path(view: str, root: Path | None = None) -> Path:
    """A view's offline source under the feast folder `root` (default `feast_dir()`): a file for
    the product views, a folder for an embedding view."""
    data = (root or feast_dir()) / "data"
    return data / view if view.startswith(EMBEDDINGS_PREFIX) else data / f"{view}.parquet"


def embedding_view_name(text_identity: str, image_identity: str) -> str:
    """The embedding view of one encoder pair (its key is the embedding cache's)."""
    return EMBEDDINGS_PREFIX + hashlib.sha256(f"{text_identity}|{image_identity}".encode()).hexdigest()[:16]


def event_time(dataset: Dataset) -> datetime:
    """When the dataset version was ingested: the time its features become true."""
    return datetime.fromisoformat(dataset.manifest["created_at"]).astimezone(UTC)


def product_tables(dataset: Dataset, when: datetime | None = None, workers: int = 8) -> dict[str, pd.DataFrame]:
    """The text, image and label tables of a dataset version, one row per product."""
    items = dataset.items
    base = _base(dataset, when)
    text = base.assign(
        title=items["title"].fillna("").astype(str),
        description=items["description"].fillna("").astype(str),
        dataset_version=dataset.version,
    )
    paths = items["image_path"].tolist()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        stats = list(pool.map(image_stats, paths, chunksize=64))
    image = base.assign(
        image_path=[p or "" for p in paths],
        image_sha256=[s or "" for s in items["image_sha256"].tolist()],
        **{k: [s[k] for s in stats] for k in IMAGE_FEATURES[2:]},
    )
    image = image.astype({"image_width": "int64", "image_height": "int64"})
    image = image.astype({"image_brightness": "float32", "image_colourfulness": "float32"})
    labels = base.assign(
        labels=[
            json.dumps({a: _plain(v) for a, v in row.items()}) for row in items[dataset.attributes].to_dict("records")
        ],
        dataset_version=dataset.version,
    )
    return {TEXT: text, IMAGE: image, LABELS: labels}


def image_stats(path: str | None) -> dict[str, Any]:
    """Width, height, brightness and colourfulness of an image file, as the prediction log measures
    them (components.inference.prediction_log.image_summary); zeros without an image."""
    if not path:
        return {"image_width": 0, "image_height": 0, "image_brightness": 0.0, "image_colourfulness": 0.0}
    with Image.open(path) as im:
        width, height = im.size
        px = np.asarray(im.convert("RGB").resize(_THUMBNAIL, Image.BILINEAR), dtype=np.float32) / 255.0
    r, g, b = px[..., 0], px[..., 1], px[..., 2]
    rg, yb = r - g, 0.5 * (r + g) - b
    return {
        "image_width": width,
        "image_height": height,
        "image_brightness": float((0.299 * r + 0.587 * g + 0.114 * b).mean()),
        "image_colourfulness": float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())),
    }


def embedding_table(
    dataset: Dataset, text: np.ndarray, image: np.ndarray, has_image: np.ndarray, when: datetime | None = None
) -> pd.DataFrame:
    """The embedding table of a dataset version: the cache's rows (dataset row order), float32."""
    n = len(dataset.items)
    for name, array in (("text", text), ("image", image), ("has_image", has_image)):
        if len(array) != n:
            raise ValueError(f"{name}: {len(array)} rows for {n} products of {dataset.name} {dataset.version}")
    return _base(dataset, when).assign(
        **{
            "text_embedding": list(np.asarray(text, dtype=np.float32)),
            "image_embedding": list(np.asarray(image, dtype=np.float32)),
            "has_image": np.asarray(has_image, dtype=bool),
            "dataset_version": dataset.version,
        }
    )


def write_table(frame: pd.DataFrame, view: str, dataset: Dataset, root: Path | None = None) -> Path:
    """Add a dataset version's rows to a view's offline source, atomically (a reader never sees
    half a file) and, for the shared file of a product view, under a lock (two ingests at once
    both keep their rows)."""
    target = table_path(view, root)
    tag = f"{dataset.name}-{dataset.version}"
    if view.startswith(EMBEDDINGS_PREFIX):
        path = target / f"{tag}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        _replace(frame, path)
        return path
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(f".{target.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file():
            old = pd.read_parquet(target)
            frame = pd.concat([old[old["dataset"] != tag], frame], ignore_index=True)
        _replace(frame, target)
    return target


def _base(dataset: Dataset, when: datetime | None) -> pd.DataFrame:
    return pd.DataFrame(
        {
            KEY: dataset.items["id"].astype(str),
            TIMESTAMP: pd.Timestamp(when or event_time(dataset)),
            "dataset": f"{dataset.name}-{dataset.version}",
        }
    )


def _replace(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")  # hidden: Parquet readers skip dot files
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)


def _plain(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v) for v in value]
    return str(value)
