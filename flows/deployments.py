"""Deployments: scheduled retraining (`pipeline`) and on-demand `ingest` / `train` / `tune` (+ `evaluate`).

    python -m flows.deployments            # serve them against PREFECT_API_URL (see `make ui`)

`serve` keeps this process polling for scheduled and manually triggered runs and runs
them here. To run them on an existing Prefect server / work pool instead, point
PREFECT_API_URL at that server and deploy with `flow.deploy(..., work_pool_name=...)`
(see the README).
"""

from __future__ import annotations

import os

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from flows.evaluate import evaluate_flow
from flows.ingest import ingest_flow
from flows.package import package_flow
from flows.pipeline import pipeline_flow
from flows.train import train_flow
from flows.tune import tune_flow

DEFAULT_CRON = "0 3 * * 1"  # weekly: Mondays 03:00


def build_deployments(
    spec: str | None = None,
    configs: list[str] | None = None,
    cron: str | None = None,
    model_name: str | None = None,
) -> list[RunnerDeployment]:
    """The deployments, with the retraining schedule from `cron` (or ATTRFLOW_RETRAIN_CRON)."""
    spec = spec or os.environ.get("ATTRFLOW_RETRAIN_SPEC", "configs/catalogs/fashion.yaml")
    configs = configs or os.environ.get("ATTRFLOW_RETRAIN_CONFIGS", "configs/models/modality_attention.yaml").split(",")
    cron = cron or os.environ.get("ATTRFLOW_RETRAIN_CRON", DEFAULT_CRON)
    params = {"spec": spec, "configs": configs}
    if model_name:
        params["model_name"] = model_name
    return [
        pipeline_flow.to_deployment(
            "scheduled-retrain",
            cron=cron,
            parameters=params,
            description="Ingest the catalog, train, evaluate, register; promote if at least as good.",
            tags=["attrflow", "retrain"],
        ),
        ingest_flow.to_deployment("on-demand", description="Ingest a catalog spec.", tags=["attrflow"]),
        train_flow.to_deployment("on-demand", description="Train a config on a dataset.", tags=["attrflow"]),
        evaluate_flow.to_deployment("on-demand", description="Evaluate a model folder.", tags=["attrflow"]),
        package_flow.to_deployment(
            "on-demand", description="Build the Bento of a model's production version.", tags=["attrflow", "serving"]
        ),
        tune_flow.to_deployment(
            "on-demand",
            parameters={"search": "configs/search/default.yaml"},
            description="Hyperparameter search (Ray Tune): record every trial, register the best.",
            tags=["attrflow", "tune"],
        ),
    ]


def main() -> None:
    serve(*build_deployments())


if __name__ == "__main__":
    main()
