"""Flow `train`: training config + dataset -> a trained model, recorded as a registry run."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from components.catalog import load_dataset
from components.registry import Registry
from components.settings import get_settings
from components.training.trainer import load_train_config, train
from flows.common import artifact_key, current_flow_run_id, metrics_table


@flow(name="train", log_prints=True)
def train_flow(config: str, dataset_dir: str, epochs: int | None = None) -> dict:
    """Train one model; its run (config, per-epoch metrics, status) is in the registry.

    No retries: training is deterministic, a failure would fail again.
    """
    cfg = load_train_config(config, **({"training": {"epochs": epochs}} if epochs else {}))
    dataset = load_dataset(dataset_dir)
    with (
        Registry() as registry,
        registry.run(
            "train",
            {"config_file": str(config), **cfg.model_dump(mode="json")},
            dataset=(dataset.name, dataset.version),
            flow_run_id=current_flow_run_id(),
        ) as run_id,
    ):
        out_dir = get_settings().home / "runs" / str(run_id)
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
