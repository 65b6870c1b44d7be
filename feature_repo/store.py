"""attrflow's feature store from Python: open it, write embeddings, read features back.

    open_store()                     FeatureStore from feature_store.yaml (or ATTRFLOW_FEAST_YAML)
    put_embeddings(store, ...)       one encoder pair's vectors of a dataset version -> its view
    online_features(ids, ...)        what the endpoint and `attrflow predict --id` read
    historical_items(ids, at)        point-in-time-correct rows for training at time `at`
    dataset_as_of(dataset, at)       a dataset's products as they were at `at`, ready to train on

The YAML's `${VAR}`s are filled in from the environment, with ATTRFLOW_FEAST_DIR defaulting to
ATTRFLOW_HOME/feast (absolute), so nothing absolute is committed and tests can point it anywhere.
"""

from __future__ import annotations

import dataclasses
import json
import os
import string
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from feast import FeatureStore, FeatureView
from feast.errors import FeatureViewNotFoundException
from feast.repo_config import RepoConfig

from components.catalog.dataset import Dataset
from components.features.tables import (
    EMBEDDING_FEATURES,
    IMAGE,
    IMAGE_FEATURES,
    KEY,
    LABELS,
    TEXT,
    TEXT_FEATURES,
    TIMESTAMP,
    EncoderMismatch,
    embedding_table,
    embedding_view_name,
    event_time,
    feast_dir,
    write_table,
)

REPO = Path(__file__).resolve().parent


def repo_config(home: Path | None = None, yaml_file: Path | None = None) -> RepoConfig:
    yaml_file = Path(yaml_file or os.environ.get("ATTRFLOW_FEAST_YAML") or REPO / "feature_store.yaml")
    root = feast_dir(home)
    values = {**os.environ, "ATTRFLOW_FEAST_DIR": str(root)}
    try:
        raw = yaml.safe_load(string.Template(yaml_file.read_text()).substitute(values))
    except KeyError as e:
        raise ValueError(f"{yaml_file}: set the environment variable {e.args[0]} it names") from None
    if raw["online_store"].get("type") == "sqlite":
        root.mkdir(parents=True, exist_ok=True)
    config = RepoConfig(**raw)
    config.repo_path = REPO
    return config


def open_store(home: Path | None = None, yaml_file: Path | None = None) -> FeatureStore:
    return FeatureStore(config=repo_config(home, yaml_file))


def materialize_since(store: FeatureStore, views: list[str], since: datetime) -> None:
    """Materialize `views` over [since, now]: rows just written, whatever was materialized before."""
    store.materialize(start_date=since - timedelta(seconds=1), end_date=datetime.now(UTC), feature_views=views)


def put_embeddings(
    store: FeatureStore,
    dataset: Dataset,
    text_identity: str,
    image_identity: str,
    text: Any,
    image: Any,
    has_image: Any,
    view: str | None = None,
) -> str:
    """Write one encoder pair's vectors of a dataset version to its embedding view (created on first
    use) and materialize them. Refused (EncoderMismatch) when `view` is another encoder pair's or
    its vectors have another size: two encoders never share a view."""
    from feature_repo.products import embedding_view, product

    own = embedding_view_name(text_identity, image_identity)
    name = view or own
    frame = embedding_table(dataset, text, image, has_image)
    dims = (len(frame["text_embedding"].iloc[0]), len(frame["image_embedding"].iloc[0])) if len(frame) else (0, 0)
    try:
        existing: FeatureView | None = store.get_feature_view(name, allow_registry_cache=False)
    except FeatureViewNotFoundException:
        existing = None
    if existing is not None:
        check_embedding_view(existing, text_identity, image_identity, dims)
    elif name != own:
        raise EncoderMismatch(f"{name}: not the embedding view of {text_identity} + {image_identity} ({own})")
    else:
        store.apply([product, embedding_view(text_identity, image_identity, *dims)])
    write_table(frame, name, dataset)
    materialize_since(store, [name], event_time(dataset))
    return name


def check_embedding_view(
    view: FeatureView, text_identity: str, image_identity: str, dims: tuple[int, int] | None = None
) -> None:
    """EncoderMismatch unless `view` holds vectors of exactly these encoders (and sizes)."""
    tags = view.tags
    if (tags.get("text_encoder"), tags.get("image_encoder")) != (text_identity, image_identity):
        raise EncoderMismatch(
            f"{view.name} holds vectors of {tags.get('text_encoder')} + {tags.get('image_encoder')}, "
            f"not of {text_identity} + {image_identity}"
        )
    if dims is not None and (int(tags["text_dim"]), int(tags["image_dim"])) != tuple(dims):
        raise EncoderMismatch(
            f"{view.name}: vectors of {dims[0]} + {dims[1]} values offered, it holds {tags['text_dim']} + {tags['image_dim']}"
        )


def online_features(
    ids: list[str], embedding_view: str | None = None, store: FeatureStore | None = None
) -> list[dict | None]:
    """What the online store holds for each id (None: unknown): text, image and label features,
    plus `text_embedding` / `image_embedding` / `has_image` / `embedding_version` from
    `embedding_view` when given (None where it has no row for the product)."""
    store = store or open_store()
    refs = [f"{TEXT}:{f}" for f in TEXT_FEATURES] + [f"{IMAGE}:{f}" for f in IMAGE_FEATURES] + [f"{LABELS}:labels"]
    if embedding_view:
        refs += [f"{embedding_view}:{f}" for f in EMBEDDING_FEATURES]
    got = store.get_online_features(
        features=refs, entity_rows=[{KEY: i} for i in ids], full_feature_names=True
    ).to_dict()
    rows: list[dict | None] = []
    for k, product_id in enumerate(ids):
        if got[f"{TEXT}__title"][k] is None:
            rows.append(None)
            continue
        row = {"id": product_id, **{f: got[f"{TEXT}__{f}"][k] for f in TEXT_FEATURES}}
        row.update({f: got[f"{IMAGE}__{f}"][k] for f in IMAGE_FEATURES})
        row["labels"] = json.loads(got[f"{LABELS}__labels"][k] or "{}")
        if embedding_view:
            row.update({f: got[f"{embedding_view}__{f}"][k] for f in EMBEDDING_FEATURES[:3]})
            row["embedding_version"] = got[f"{embedding_view}__dataset_version"][k]
        rows.append(row)
    return rows


def historical_items(ids: list[str], at: datetime, store: FeatureStore | None = None) -> pd.DataFrame:
    """The products as they were at time `at` (point in time: a title or label changed later is
    not seen), shaped like a dataset's items: id, title, description, image_path, image_sha256,
    labels (dict) and the dataset version each row came from. Unknown at `at`: null features."""
    store = store or open_store()
    entity_df = pd.DataFrame({KEY: ids, TIMESTAMP: pd.Timestamp(at)})
    refs = [f"{TEXT}:{f}" for f in TEXT_FEATURES] + [f"{IMAGE}:image_path", f"{IMAGE}:image_sha256", f"{LABELS}:labels"]
    frame = store.get_historical_features(entity_df=entity_df, features=refs).to_df()
    # The order asked for, one row per id: Feast's file store drops an id whose rows are all later than `at`.
    frame = frame.drop(columns=[TIMESTAMP]).set_index(KEY).reindex(ids).rename_axis(KEY).reset_index()
    frame["labels"] = frame["labels"].map(lambda s: json.loads(s) if isinstance(s, str) else None)
    return frame.rename(columns={KEY: "id"})


def dataset_as_of(dataset: Dataset, at: datetime, store: FeatureStore | None = None) -> Dataset:
    """`dataset` with its products' text, image and labels as Feast had them at `at` (its splits
    and vocabularies kept; products unknown at `at` left out; a label the vocabulary lacks is
    dropped). Its version becomes "<version>@<at>", so its embedding cache is its own."""
    items = historical_items(dataset.items["id"].astype(str).tolist(), at, store)
    known = items["title"].notna().to_numpy()
    items, base = items[known].reset_index(drop=True), dataset.items[known].reset_index(drop=True)
    out = base[["id", "split"]].assign(
        title=items["title"],
        description=items["description"],
        image_path=items["image_path"].map(lambda p: p or None),
        image_sha256=items["image_sha256"].map(lambda s: s or None),
    )
    for name, vocab in dataset.vocab.items():
        out[name] = [_in_vocab(labels.get(name), set(vocab.values)) if labels else None for labels in items["labels"]]
    when = pd.Timestamp(at)
    when = when.tz_localize("UTC") if when.tzinfo is None else when.tz_convert("UTC")
    manifest = {**dataset.manifest, "version": f"{dataset.version}@{when:%Y%m%dT%H%M%S}", "as_of": when.isoformat()}
    return dataclasses.replace(dataset, manifest=manifest, items=out)


def _in_vocab(value: Any, values: set[str]) -> Any:
    if isinstance(value, list):
        return [v for v in value if v in values] or None
    return value if value in values else None
