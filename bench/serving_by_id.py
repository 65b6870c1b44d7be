"""The serving benchmark's by-id part (Feast): the feature store the endpoint reads, its read time,
and the materialization of the whole fashion catalog.

- `prepare_store`: in the endpoint's scratch ATTRFLOW_HOME, a catalog of exactly the benchmark's
  products (images read in place) is ingested, its features written to Feast and the model's
  embeddings of them (its frozen-training cache) put in the store, as `ingest` and `materialize`
  do; the endpoint then answers /predict_by_id from it.
- `online_read`: `get_online_features` for batches of 64 ids, timed in process (the text, image,
  label and embedding views together, as /predict_by_id reads them).
- `full_catalog`: the whole fashion catalog ingested into a scratch home, then its text, image and
  label features built, written and materialized to the online store, each step timed. Embeddings
  of the whole catalog are not computed here (tens of minutes of encoder forwards on CPU).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import log
from bench.serving_model import BenchProduct, catalog_frame, ingest_rows


@contextmanager
def attrflow_home(home: Path):
    """ATTRFLOW_HOME set to `home` in this process for a while (settings are read on every call)."""
    before = os.environ.get("ATTRFLOW_HOME")
    os.environ["ATTRFLOW_HOME"] = str(home)
    try:
        yield home
    finally:
        if before is None:
            os.environ.pop("ATTRFLOW_HOME", None)
        else:
            os.environ["ATTRFLOW_HOME"] = before


def _ingest(folder: Path, ids: set[str] | None, home: Path) -> Path:
    """Ingest the fashion catalog (only `ids` when given) into `home`; its images are read in place."""
    frame, images = catalog_frame()
    return ingest_rows(frame if ids is None else frame[frame["id"].isin(ids)], images, folder, home)


def prepare_store(home: Path, model_dir: Path, products: list[BenchProduct]) -> dict[str, Any]:
    """Feast in `home` holding the products' features and the model's embeddings of them."""
    from flows.features import write_model_embeddings, write_product_features

    with attrflow_home(home):
        dataset_dir = _ingest(home.parent / "by-id-catalog", {p.id for p in products}, home)
        t0 = time.perf_counter()
        write_product_features.fn(str(dataset_dir))  # the task's body: no Prefect run needed here
        t1 = time.perf_counter()
        view = write_model_embeddings.fn(str(dataset_dir), str(model_dir))
        t2 = time.perf_counter()
    log(f"feature store for {len(products)} products: features {t1 - t0:.1f} s, embeddings ({view}) {t2 - t1:.1f} s")
    return {"products": len(products), "features_s": t1 - t0, "embeddings_s": t2 - t1, "embedding_view": view}


def online_read(home: Path, model_dir: Path, ids: list[str], batch: int = 64, repeats: int = 40) -> dict[str, Any]:
    """Time `get_online_features` of `batch` ids (every view /predict_by_id reads), in process."""
    from components.inference.predictor import Predictor
    from feature_repo.store import online_features, open_store
    from serving.by_id import OnlineScorer

    with attrflow_home(home):
        store = open_store()
        view = OnlineScorer(store).embedding_view(Predictor(model_dir))
        chunks = [ids[(k * batch) % len(ids) :][:batch] for k in range(repeats)]
        online_features(chunks[0], view, store)  # the first read opens the SQLite file
        times = []
        for chunk in chunks:
            t0 = time.perf_counter()
            rows = online_features(chunk, view, store)
            times.append(1000 * (time.perf_counter() - t0))
    found = sum(r is not None for r in rows)
    result = {
        "batch_ids": batch,
        "repeats": repeats,
        "p50_ms": statistics.median(times),
        "max_ms": max(times),
        "embedding_view": view,
        "found_last": found,
    }
    log(f"online read of {batch} ids: p50 {result['p50_ms']:.1f} ms, max {result['max_ms']:.1f} ms")
    return result


def full_catalog() -> dict[str, Any]:
    """Ingest the whole fashion catalog into a scratch home, then build, write and materialize its
    text, image and label features, each step timed."""
    from components.catalog import load_dataset
    from components.features.tables import event_time, product_tables, write_table
    from feature_repo.products import product, product_views
    from feature_repo.store import materialize_since, open_store

    with tempfile.TemporaryDirectory(prefix="attrflow-bench-feast-") as scratch:
        home = Path(scratch) / "home"
        with attrflow_home(home):
            t0 = time.perf_counter()
            dataset = load_dataset(_ingest(Path(scratch) / "catalog", None, home))
            t1 = time.perf_counter()
            tables = product_tables(dataset)  # image statistics need every photo decoded
            t2 = time.perf_counter()
            for view, frame in tables.items():
                write_table(frame, view, dataset)
            store = open_store()
            views = product_views()
            store.apply([product, *views])
            t3 = time.perf_counter()
            materialize_since(store, [v.name for v in views], event_time(dataset))
            t4 = time.perf_counter()
            online = store.get_online_features(
                features=["product_text:title"], entity_rows=[{"product_id": str(dataset.items["id"].iloc[0])}]
            ).to_dict()
    result = {
        "products": len(dataset.items),
        "ingest_s": t1 - t0,
        "tables_s": t2 - t1,
        "write_apply_s": t3 - t2,
        "materialize_s": t4 - t3,
        "features_total_s": t4 - t1,
        "online_check": online["title"][0] is not None,
    }
    log(
        f"full catalog: {result['products']} products, ingest {result['ingest_s']:.0f} s, tables "
        f"{result['tables_s']:.0f} s, write + apply {result['write_apply_s']:.1f} s, materialize "
        f"{result['materialize_s']:.1f} s"
    )
    return result
