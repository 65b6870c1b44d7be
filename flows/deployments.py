"""Deployments: scheduled retraining (`pipeline`), hourly drift monitoring (`monitor`), retraining on
drift (`retrain`, started by the `attrflow.drift.detected` event), the feature store's scheduled
`materialize`, on-demand `ingest` / `train` / `tune` / `evaluate` / `package`.

    python -m flows.deployments            # serve them against PREFECT_API_URL (see `make ui`)

`serve` keeps this process polling for scheduled and manually triggered runs and runs
them here. To run them on an existing Prefect server / work pool instead, point
PREFECT_API_URL at that server and deploy with `flow.deploy(..., work_pool_name=...)`
(see the README).
"""

from __future__ import annotations

import os
from datetime import timedelta

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger

from flows.evaluate import evaluate_flow
from flows.features import materialize_flow
from flows.fit import fit_flow
from flows.ingest import ingest_flow
from flows.monitor import DRIFT_EVENT, model_resource_id, monitor_flow
from flows.package import package_flow
from flows.pipeline import pipeline_flow
from flows.retrain import retrain_flow
from flows.train import train_flow
from flows.tune import tune_flow

DEFAULT_CRON = "0 3 * * 1"  # weekly: Mondays 03:00
DEFAULT_MONITOR_CRON = "0 * * * *"  # hourly
DEFAULT_MATERIALIZE_CRON = "*/15 * * * *"  # the online store at most 15 minutes behind the offline sources
DEFAULT_COOLDOWN_HOURS = 6.0  # drift events within this long of a triggered retrain start no other


def drift_trigger(model_name: str, cooldown: timedelta) -> DeploymentEventTrigger:
    """Start the deployment on the model's first drift event, then not again for `cooldown`
    (a reactive trigger fires at its threshold and ignores further events for the rest of
    its `within` window), so a burst of drift reports starts one retrain."""
    return DeploymentEventTrigger(
        name=f"drift of {model_name}",
        expect={DRIFT_EVENT},
        match={"prefect.resource.id": model_resource_id(model_name)},
        posture="Reactive",
        threshold=1,
        within=cooldown,
        parameters={"drift_report_id": "{{ event.payload.report_id }}"},
    )


def build_deployments(
    spec: str | None = None,
    configs: list[str] | None = None,
    cron: str | None = None,
    model_name: str | None = None,
    monitor_cron: str | None = None,
    cooldown_hours: float | None = None,
) -> list[RunnerDeployment]:
    """The deployments, with the retraining schedule from `cron` (or ATTRFLOW_RETRAIN_CRON), the
    monitoring schedule from `monitor_cron` (ATTRFLOW_MONITOR_CRON), the materialization schedule from
    ATTRFLOW_MATERIALIZE_CRON (every 15 minutes) and the retrain-on-drift
    cooldown from `cooldown_hours` (ATTRFLOW_RETRAIN_COOLDOWN_HOURS). The model watched is
    `model_name` (ATTRFLOW_MODEL_NAME, default "demo")."""
    spec = spec or os.environ.get("ATTRFLOW_RETRAIN_SPEC", "configs/catalogs/fashion.yaml")
    configs = configs or os.environ.get("ATTRFLOW_RETRAIN_CONFIGS", "configs/models/modality_attention.yaml").split(",")
    cron = cron or os.environ.get("ATTRFLOW_RETRAIN_CRON", DEFAULT_CRON)
    monitor_cron = monitor_cron or os.environ.get("ATTRFLOW_MONITOR_CRON", DEFAULT_MONITOR_CRON)
    cooldown = timedelta(
        hours=cooldown_hours or float(os.environ.get("ATTRFLOW_RETRAIN_COOLDOWN_HOURS", DEFAULT_COOLDOWN_HOURS))
    )
    watched = model_name or os.environ.get("ATTRFLOW_MODEL_NAME", "demo")
    # The automatic model (`attrflow fit`) is a candidate of every scheduled retraining too.
    params = {"spec": spec, "configs": configs, "fit_budget": os.environ.get("ATTRFLOW_RETRAIN_FIT_BUDGET", "20m")}
    if model_name:
        params["model_name"] = model_name
    return [
        monitor_flow.to_deployment(
            "hourly",
            cron=monitor_cron,
            parameters={"model_name": watched},
            description="Drift report of the production model over the last day of served traffic.",
            tags=["attrflow", "monitoring"],
        ),
        retrain_flow.to_deployment(
            "on-drift",
            parameters={"model_name": watched, "spec": spec, "configs": configs},
            triggers=[drift_trigger(watched, cooldown)],
            description="Ingest, train, register through champion/challenger: started by a drift event.",
            tags=["attrflow", "retrain"],
        ),
        pipeline_flow.to_deployment(
            "scheduled-retrain",
            cron=cron,
            parameters=params,
            description="Ingest the catalog, train, evaluate, register; promote if at least as good.",
            tags=["attrflow", "retrain"],
        ),
        materialize_flow.to_deployment(
            "scheduled",
            cron=os.environ.get("ATTRFLOW_MATERIALIZE_CRON", DEFAULT_MATERIALIZE_CRON),
            parameters={"model_name": watched},
            description="Feast: the production model's embeddings in the store, then offline -> online incrementally.",
            tags=["attrflow", "features"],
        ),
        ingest_flow.to_deployment("on-demand", description="Ingest a catalog spec.", tags=["attrflow"]),
        train_flow.to_deployment("on-demand", description="Train a config on a dataset.", tags=["attrflow"]),
        fit_flow.to_deployment(
            "on-demand", description="The automatic model: a portfolio within a time budget.", tags=["attrflow"]
        ),
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
