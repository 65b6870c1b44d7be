"""Flow `train`: training config + dataset -> a trained model, recorded as a registry run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from components.catalog import Dataset, load_dataset
from components.registry import Registry
from components.settings import get_settings
from components.training.extraction import is_extraction_config, load_extraction_config, train_extraction
from components.training.trainer import load_train_config, train
from flows.common import artifact_key, current_flow_run_id, metrics_table


@contextmanager
def _train_run(config: str, parameters: dict, dataset: Dataset) -> Iterator[tuple[Registry, int, Path]]:
    """A registry `train` run around one training (failed if the block raises): the registry, the
    run's id and the folder the model is written to."""
    with (
        Registry() as registry,
        registry.run(
            "train",
            {"config_file": str(config), **parameters},
            dataset=(dataset.name, dataset.version),
            flow_run_id=current_flow_run_id(),
        ) as run_id,
    ):
        yield registry, run_id, get_settings().home / "runs" / str(run_id)


@flow(name="train", log_prints=True)
def train_flow(config: str, dataset_dir: str, epochs: int | None = None) -> dict:
    """Train one model; its run (config, per-epoch metrics, status) is in the registry. A config
    with `model: {task: extraction}` trains a value-extraction tagger.

    No retries: training is deterministic, a failure would fail again.
    """
    if is_extraction_config(config):
        return _train_extraction(config, dataset_dir, epochs)
    cfg = load_train_config(config, **({"training": {"epochs": epochs}} if epochs else {}))
    dataset = load_dataset(dataset_dir)
    with _train_run(config, cfg.model_dump(mode="json"), dataset) as (registry, run_id, out_dir):
        result = train(
            cfg, dataset, out_dir, on_epoch_end=lambda _, record: registry.log_epoch(run_id, record), progress=False
        )
        metrics = {
            "validation": result.validation,
            "best_epoch": result.best_epoch,
            "items_per_second": result.items_per_second,
        }
        registry.finish_run(run_id, metrics)
    fusion = cfg.model.fusion.name
    create_markdown_artifact(
        f"# Trained `{fusion}` (run {run_id})\n\nBest epoch {result.best_epoch} of {result.epochs_run}, "
        f"{result.items_per_second:.0f} items/s. Validation metrics:\n\n{metrics_table(result.validation)}\n"
        f"Model folder: `{result.model_dir}`\n",
        key=artifact_key("train", dataset.name, fusion),
        description="Validation metrics of the trained model",
    )
    return {"run_id": run_id, "model_dir": str(result.model_dir), "fusion": fusion, "validation": result.validation}


def _train_extraction(config: str, dataset_dir: str, epochs: int | None) -> dict:
    cfg = load_extraction_config(config)
    if epochs:
        cfg.training.epochs = epochs
    dataset = load_dataset(dataset_dir)
    with _train_run(config, cfg.model_dump(mode="json"), dataset) as (registry, run_id, out_dir):
        result = train_extraction(cfg, dataset, out_dir, log=print)
        registry.finish_run(run_id, {"validation": result.validation, "thresholds": result.thresholds})
    m = result.validation["micro"]
    create_markdown_artifact(
        f"# Trained a value-extraction tagger (run {run_id})\n\nValidation, by the counting rule: value "
        f"precision {m['precision']:.3f}, recall {m['recall']:.3f}, F1 {m['f1']:.3f}; span F1 "
        f"{result.validation['span_f1']:.3f}.\n\nModel folder: `{result.model_dir}`\n",
        key=artifact_key("train", dataset.name, "extraction"),
        description="Validation metrics of the trained extraction model",
    )
    return {
        "run_id": run_id,
        "model_dir": str(result.model_dir),
        "fusion": "extraction",
        "validation": result.validation,
    }
