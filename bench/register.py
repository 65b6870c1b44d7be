"""Export the best model to ATTRFLOW_HOME/bench/fashion-best/ and register it as `fashion` (promotion rule)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import log
from components.catalog.dataset import Dataset


def export_best(best_dir: Path, home: Path) -> Path:
    """Copy the best model folder (without checkpoints and evaluations) to ATTRFLOW_HOME/bench/fashion-best/."""
    export = home / "bench" / "fashion-best"
    shutil.rmtree(export, ignore_errors=True)
    shutil.copytree(best_dir, export, ignore=shutil.ignore_patterns("checkpoint", "eval-*"))
    return export


def register_best(model_dir: Path, metrics: dict[str, Any], ds: Dataset, row_name: str) -> dict[str, Any]:
    """Register the best model as `fashion` in the registry (components.registry) and let the
    registry decide promotion (by its primary metric, r_at_p95_mean)."""
    from components.registry import Registry

    try:
        flat: dict[str, Any] = {
            f"{a}.{k}": v for a, m in metrics.items() for k, v in m.items() if isinstance(v, (int, float))
        }
        for k in ("f1_macro", "r_at_p95", "accuracy"):
            flat[f"{k}_mean"] = float(np.mean([m[k] for m in metrics.values()]))
        thresholds = json.loads((model_dir / "thresholds.json").read_text())
        with Registry() as reg:
            reg.register_dataset(ds.name, ds.version, ds.path, ds.manifest)
            config = json.loads((model_dir / "config.json").read_text())
            run_id = reg.start_run("bench-quality", {**config, "bench_row": row_name}, dataset=(ds.name, ds.version))
            reg.finish_run(run_id, flat)
            version, decision = reg.register_and_decide("fashion", run_id, model_dir, flat, thresholds)
            return {
                "status": "registered",
                "name": "fashion",
                "version": version.version,
                "stage": version.stage,
                "run_id": run_id,
                "decision": decision.reason,
                "promoted": decision.promote,
            }
    except Exception as e:  # the results are still written; the report says what failed
        log(f"registry: registering the best model failed: {e!r}")
        return {"status": "failed", "reason": repr(e)}
