"""The ensemble row: greedy selection among the trained attrflow rows on validation, written as a model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import ATTRIBUTES, log, metrics_of
from bench.probs import row_probs, save_probs
from bench.rows import ROWS
from components.catalog.dataset import Dataset


def ensemble_row(rows: dict[str, Any], ds: Dataset, labels: dict[str, np.ndarray], out_dir: Path) -> dict[str, Any]:
    """An ensemble of the trained attrflow rows (components.models.ensemble): members picked by
    greedy selection with replacement on validation mean macro-F1, the criterion that picks the
    best row; test is not looked at. Written as a model folder that load_model reads."""
    from components.evaluation.ensemble_selection import combine_models, select_members

    start = time.perf_counter()
    pool = [n for n in rows if n in ROWS]
    split = ds.items["split"].to_numpy()
    va, te = np.flatnonzero(split == "validation"), np.flatnonzero(split == "test")
    probs = {n: row_probs(Path(rows[n]["model_dir"]), ds) for n in pool}
    y_val = {a: labels[a][va] for a in ATTRIBUTES}
    weights = select_members(
        {n: p["validation"] for n, p in probs.items()}, y_val, {a: "multiclass" for a in ATTRIBUTES}
    )
    total = sum(weights.values())

    def mix(s: str) -> dict[str, np.ndarray]:
        return {a: sum(w * probs[n][s][a] for n, w in weights.items()) / total for a in ATTRIBUTES}

    val, test = mix("validation"), mix("test")
    combine_models({n: rows[n]["model_dir"] for n in weights}, weights, val, y_val, out_dir, extra={"bench_pool": pool})
    save_probs(out_dir, val, test)
    log(f"ensemble: {weights} (from {len(pool)} rows, {time.perf_counter() - start:.0f}s)")
    return {
        "config": {
            "selection": "greedy forward selection with replacement (Caruana et al. 2004), validation mean macro-F1",
            "pool": pool,
            "weights": weights,
        },
        "model_dir": str(out_dir),
        # Training an ensemble is training its members, one after another.
        "train_seconds": sum(rows[n]["train_seconds"] for n in weights) + time.perf_counter() - start,
        "items_per_second": 1.0 / sum(1.0 / rows[n]["items_per_second"] for n in weights),
        "validation_f1_macro": float(np.mean([metrics_of(val[a], y_val[a])["f1_macro"] for a in ATTRIBUTES])),
        "attributes": {a: metrics_of(test[a], labels[a][te]) for a in ATTRIBUTES},
    }
