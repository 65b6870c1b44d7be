"""Feast holds the product features: the flows and tasks that write and materialize them.

    write_product_features(dataset_dir)              text / image / label tables -> Feast (ingest calls it)
    write_model_embeddings(dataset_dir, model_dir)   the frozen-training cache of the model's encoders -> Feast
    materialize_flow(model_name?)                    offline -> online, incrementally (the scheduled deployment)

The tables are built by components.features.tables (plain pandas); the repo, and reading it back,
is feature_repo/. Feast is imported inside the tasks: it takes seconds, most flows never need it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, task

from components.catalog import load_dataset
from components.features.tables import event_time, product_tables, write_table
from flows.common import retry_on_io_error


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=retry_on_io_error)
def write_product_features(dataset_dir: str | Path) -> dict[str, str]:
    """Write a dataset version's text, image and label tables, apply the repo, materialize them."""
    from feature_repo.products import product, product_views
    from feature_repo.store import materialize_since, open_store

    dataset = load_dataset(dataset_dir)
    paths = {view: str(write_table(frame, view, dataset)) for view, frame in product_tables(dataset).items()}
    store = open_store()
    views = product_views()
    store.apply([product, *views])
    materialize_since(store, [v.name for v in views], event_time(dataset))
    return paths


@task
def write_model_embeddings(dataset_dir: str | Path, model_dir: str | Path) -> str | None:
    """The frozen-training embedding cache of `model_dir`'s encoders for this dataset version
    (read, or computed and cached on a miss) -> its embedding view. None for a model whose
    encoders were fine-tuned (its vectors are not the pretrained encoders'; the identity would not
    tell) and for an ensemble: nothing to share."""
    from components.features.cache import cached_encodings
    from components.models.io import load_meta, load_model
    from feature_repo.store import open_store, put_embeddings

    meta = load_meta(model_dir)
    if meta.get("includes_encoders", True) or "ensemble" in meta:  # an ensemble's members hold the encoders
        return None
    dataset = load_dataset(dataset_dir)
    model = load_model(model_dir)
    enc = cached_encodings(dataset, model.text_encoder, model.image_encoder, progress=False)
    return put_embeddings(
        open_store(),
        dataset,
        model.text_encoder.identity,
        model.image_encoder.identity,
        enc.text.float().numpy(),
        enc.image.float().numpy(),
        enc.has_image.numpy(),
    )


def materialize(end: datetime | None = None) -> dict[str, Any]:
    """Everything written since the last run -> online store (Feast's materialize_incremental)."""
    from feature_repo.store import open_store

    store = open_store()
    end = end or datetime.now(UTC)
    views = [v.name for v in store.list_feature_views()]
    if views:
        store.materialize_incremental(end_date=end, feature_views=views)
    return {"views": views, "end": end.isoformat()}


@flow(name="materialize", log_prints=True)
def materialize_flow(model_name: str | None = None) -> dict[str, Any]:
    """Bring the online store up to date; with `model_name`, first make sure the production model's
    embeddings of the dataset version it was trained on are in the store."""
    if model_name:
        from components.registry import Registry

        with Registry() as registry:
            production = registry.get_production(model_name)
            dataset = registry.dataset_of_version(model_name, production.version) if production else None
        if production is not None and dataset is not None:
            write_model_embeddings(str(dataset.path), str(production.artifact_dir))
    result = materialize()
    print(f"materialized {len(result['views'])} feature views up to {result['end']}")
    return result
