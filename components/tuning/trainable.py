"""One search trial: a real `train()` run that reports the validation metrics every epoch.

Runs inside a Ray worker (another process, maybe another machine, another working
directory): everything it needs arrives in `TrialContext` as absolute paths, and
ATTRFLOW_HOME is set from it so the embedding cache computed by the driver is found.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.tuning.space import SearchSpec, build_train_config

# The keys of every report; node_id: the Ray node the trial runs on (which machine of a cluster),
# gpus: the GPU ids Ray gave the trial ("" on CPU).
REPORTED = ("epoch", "train_loss", "r_at_p95", "f1_macro", "items_per_second", "node_id", "gpus")


@dataclass
class TrialContext:
    spec: SearchSpec
    dataset_dir: str  # absolute
    home: str  # absolute ATTRFLOW_HOME
    trials_dir: str  # absolute; each trial writes its model to <trials_dir>/<trial id>/
    env: dict[str, str] = field(default_factory=dict)


_DATASETS: dict[str, Any] = {}  # per worker process: reused actors load the dataset once


def _dataset(path: str):
    from components.catalog import load_dataset

    if path not in _DATASETS:
        _DATASETS.clear()
        _DATASETS[path] = load_dataset(path)
    return _DATASETS[path]


def run_trial(config: dict[str, Any], context: TrialContext) -> None:
    """Ray Tune function trainable: `tune.with_parameters(run_trial, context=...)`."""
    import torch
    from ray import tune

    os.environ.update(context.env)
    os.environ["ATTRFLOW_HOME"] = context.home
    cpus = _assigned_cpus()
    if cpus:
        torch.set_num_threads(cpus)

    from transformers.utils import logging as hf_logging

    from components.training.trainer import train

    hf_logging.disable_progress_bar()  # no "Loading weights" bar per trial in the driver's log

    train_config = build_train_config(context.spec, config)
    out_dir = Path(context.trials_dir) / tune.get_context().get_trial_id()

    import ray

    node_id = ray.get_runtime_context().get_node_id()
    gpus = ",".join(str(g) for g in ray.get_gpu_ids())

    def report(epoch: int, record: dict[str, Any]) -> None:
        tune.report(
            {
                "epoch": epoch,
                "node_id": node_id,
                "gpus": gpus,
                "train_loss": record["train_loss"],
                "items_per_second": record["items_per_second"],
                **record["validation"],
            }
        )

    result = train(train_config, _dataset(context.dataset_dir), out_dir, on_epoch_end=report, progress=False)
    shutil.rmtree(out_dir / "checkpoint", ignore_errors=True)  # a trial is never resumed: its model folder suffices
    # Read by the driver once the trial ends: the trial trained to its end (not stopped by ASHA).
    (out_dir / "trial.json").write_text(
        json.dumps(
            {
                "best_epoch": result.best_epoch,
                "epochs_run": result.epochs_run,
                "validation": result.validation,
                "items_per_second": result.items_per_second,
            }
        )
    )


def _assigned_cpus() -> int | None:
    try:
        import ray

        n = ray.get_runtime_context().get_assigned_resources().get("CPU")
        return max(1, int(n)) if n else None
    except Exception:  # not inside Ray (a direct call from a test or a notebook)
        return None
