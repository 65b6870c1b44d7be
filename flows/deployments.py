"""Deployments: scheduled retraining (`pipeline`), hourly drift monitoring (`monitor`), retraining on
drift (`retrain`, started by the `attrflow.drift.detected` event), the feature store's scheduled
`materialize`, on-demand `ingest` / `train` / `tune` / `evaluate` / `package`.

    python -m flows.deployments            # serve them against PREFECT_API_URL (see `make ui`)
    attrflow deploy --pool attrflow        # or register them on a work pool (deploy_to_pool)

`serve` keeps this process polling for scheduled and manually triggered runs and runs
them here. `deploy_to_pool` registers the same deployments on a Prefect work pool instead,
so that the pool's workers run them (`prefect worker start --pool NAME`): by module path
(`flows.pipeline:pipeline_flow`, for workers that have attrflow installed, as the image in
infra/ does) or, with `source`, from a git repository or folder (`flow.from_source`).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import Flow, deploy, serve
from prefect.client.orchestration import get_client
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.events import DeploymentEventTrigger
from prefect.exceptions import ObjectNotFound

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

FLOWS: dict[str, Flow] = {
    "monitor": monitor_flow,
    "retrain": retrain_flow,
    "pipeline": pipeline_flow,
    "materialize": materialize_flow,
    "ingest": ingest_flow,
    "train": train_flow,
    "fit": fit_flow,
    "evaluate": evaluate_flow,
    "package": package_flow,
    "tune": tune_flow,
}
# The same flows as file entrypoints inside an attrflow checkout (for `Flow.from_source`).
ENTRYPOINTS = {name: f"flows/{f.fn.__module__.rsplit('.', 1)[-1]}.py:{f.fn.__name__}" for name, f in FLOWS.items()}

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
    flows: dict[str, Flow] | None = None,
    **options: Any,
) -> list[RunnerDeployment]:
    """The deployments, with the retraining schedule from `cron` (or ATTRFLOW_RETRAIN_CRON), the
    monitoring schedule from `monitor_cron` (ATTRFLOW_MONITOR_CRON), the materialization schedule from
    ATTRFLOW_MATERIALIZE_CRON (every 15 minutes) and the retrain-on-drift
    cooldown from `cooldown_hours` (ATTRFLOW_RETRAIN_COOLDOWN_HOURS). The model watched is
    `model_name` (ATTRFLOW_MODEL_NAME, default "demo"). `flows` replaces flows by name (the ones
    `from_source` loads); `options` go to every `to_deployment` (entrypoint type, job variables)."""
    f = {**FLOWS, **(flows or {})}
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
        f["monitor"].to_deployment(
            "hourly",
            cron=monitor_cron,
            parameters={"model_name": watched},
            description="Drift report of the production model over the last day of served traffic.",
            tags=["attrflow", "monitoring"],
            **options,
        ),
        f["retrain"].to_deployment(
            "on-drift",
            parameters={"model_name": watched, "spec": spec, "configs": configs},
            triggers=[drift_trigger(watched, cooldown)],
            description="Ingest, train, register through champion/challenger: started by a drift event.",
            tags=["attrflow", "retrain"],
            **options,
        ),
        f["pipeline"].to_deployment(
            "scheduled-retrain",
            cron=cron,
            parameters=params,
            description="Ingest the catalog, train, evaluate, register; promote if at least as good.",
            tags=["attrflow", "retrain"],
            **options,
        ),
        f["materialize"].to_deployment(
            "scheduled",
            cron=os.environ.get("ATTRFLOW_MATERIALIZE_CRON", DEFAULT_MATERIALIZE_CRON),
            parameters={"model_name": watched},
            description="Feast: the production model's embeddings in the store, then offline -> online incrementally.",
            tags=["attrflow", "features"],
            **options,
        ),
        f["ingest"].to_deployment("on-demand", description="Ingest a catalog spec.", tags=["attrflow"], **options),
        f["train"].to_deployment("on-demand", description="Train a config on a dataset.", tags=["attrflow"], **options),
        f["fit"].to_deployment(
            "on-demand",
            description="The automatic model: a portfolio within a time budget.",
            tags=["attrflow"],
            **options,
        ),
        f["evaluate"].to_deployment("on-demand", description="Evaluate a model folder.", tags=["attrflow"], **options),
        f["package"].to_deployment(
            "on-demand",
            description="Build the Bento of a model's production version.",
            tags=["attrflow", "serving"],
            **options,
        ),
        f["tune"].to_deployment(
            "on-demand",
            parameters={"search": "configs/search/default.yaml"},
            description="Hyperparameter search (Ray Tune): record every trial, register the best.",
            tags=["attrflow", "tune"],
            **options,
        ),
    ]


def ensure_process_pool(pool: str) -> bool:
    """Create the process work pool `pool` if the server has none of that name; True if created."""
    from prefect.client.schemas.actions import WorkPoolCreate

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
            return False
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            return True


def deploy_to_pool(
    pool: str,
    *,
    source: str | None = None,
    working_dir: str | Path | None = None,
    create_pool: bool = True,
    **build: Any,
) -> list[UUID]:
    """Register the deployments of `build_deployments(**build)` on the work pool `pool` (against
    PREFECT_API_URL); the pool's workers then run them. Without `source` the entrypoints are module
    paths, so a worker imports attrflow from its own installation; with `source` (a git URL or a
    folder holding an attrflow checkout) the worker fetches the code from there for every run.
    `working_dir` is where a process worker runs each flow (relative paths in parameters, such as
    the default `configs/...`, are read from there); default: this directory. A missing pool is
    created as a process pool unless `create_pool` is False."""
    if not pool or not pool.strip():
        raise ValueError("work pool name is empty")
    if create_pool:
        ensure_process_pool(pool)
    options: dict[str, Any] = {"job_variables": {"working_dir": str(Path(working_dir or Path.cwd()).resolve())}}
    flows = None
    if source:
        flows = {name: Flow.from_source(source, entrypoint) for name, entrypoint in ENTRYPOINTS.items()}
    else:
        options["entrypoint_type"] = EntrypointType.MODULE_PATH
    deployments = build_deployments(flows=flows, **build, **options)
    return deploy(
        *deployments, work_pool_name=pool, build=False, push=False, print_next_steps_message=False, ignore_warnings=True
    )


def main() -> None:
    serve(*build_deployments())


if __name__ == "__main__":
    main()
