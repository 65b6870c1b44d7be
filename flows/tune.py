"""Flow `tune`: hyperparameter search (Ray Tune + Optuna + ASHA) -> the best model, registered.

A catalog spec is ingested first (a dataset folder is used as it is). Every trial is a
`tune-trial` run in the registry under one `tune` parent run; the best trial's model (or
its configuration retrained on train + validation, when asked) is evaluated on the test
split and registered with the promotion rule (the `register` flow).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from components.catalog import load_dataset
from components.registry import Registry
from components.settings import get_settings
from components.tuning import load_search, retrain_on_train_validation, run_search
from components.tuning.report import leaderboard_markdown, plot_metric_vs_lambda
from flows.common import artifact_key, current_flow_run_id, retry_on_io_error
from flows.ingest import ingest_flow
from flows.register import register_flow


@task(retries=3, retry_delay_seconds=1, retry_condition_fn=retry_on_io_error)
def register_dataset_folder(dataset_dir: str) -> dict:
    dataset = load_dataset(dataset_dir)
    with Registry() as registry:
        registry.register_dataset(dataset.name, dataset.version, str(dataset.path), dataset.manifest)
    return {"name": dataset.name, "version": dataset.version, "dataset_dir": str(dataset.path)}


def _is_spec(spec_or_dataset: str) -> bool:
    path = Path(spec_or_dataset)
    return path.is_file() and path.suffix.lower() in (".yaml", ".yml")


@flow(name="tune", log_prints=True)
def tune_flow(
    spec_or_dataset: str,
    search: str,
    trials: int | None = None,
    address: str | None = None,
    model_name: str | None = None,
    retrain: bool | None = None,
    primary_metric: str = "r_at_p95_mean",
) -> dict:
    """Search, record every trial, register the best. `trials` overrides the file's budget;
    `address` is a Ray cluster (default: a local Ray started and stopped here); `retrain`
    overrides the file's `retrain_on_train_validation`."""
    spec = load_search(search)  # a bad file fails here: before ingest, before Ray
    retrain = spec.retrain_on_train_validation if retrain is None else retrain
    dataset_info = (
        ingest_flow(spec_or_dataset) if _is_spec(spec_or_dataset) else register_dataset_folder(spec_or_dataset)
    )
    dataset = load_dataset(dataset_info["dataset_dir"])
    name = model_name or dataset.name
    parent_config = {
        "search": str(search),
        "spec": spec.model_dump(mode="json"),
        "trials": trials or spec.trials,
        "address": address,
        "retrain": retrain,
        "model_name": name,
    }
    with (
        Registry() as registry,
        registry.run(
            "tune", parent_config, dataset=(dataset.name, dataset.version), flow_run_id=current_flow_run_id()
        ) as parent_id,
    ):
        out_dir = (get_settings().home / "tune" / str(parent_id)).resolve()
        result = run_search(
            spec, dataset, out_dir, address=address, trials=trials, registry_url=registry.url, parent_run_id=parent_id
        )
        plot = plot_metric_vs_lambda(result, out_dir / "metric_vs_lambda.png")
        leaderboard = leaderboard_markdown(result, plot=plot)
        (out_dir / "leaderboard.md").write_text(leaderboard)
        create_markdown_artifact(
            leaderboard, key=artifact_key("tune", name), description=f"Search leaderboard ({spec.metric}, validation)"
        )
        create_markdown_artifact(
            f"# {spec.metric} vs lambda_kl per fusion\n\nPlot: `{plot}`\n\n![metric vs lambda]({plot.as_uri()})\n",
            key=artifact_key("tune-plot", name),
            description="Best validation metric of every trial against lambda, per fusion",
        )
        counts = result.counts()
        print(f"{len(result.trials)} trials: {counts}")
        if result.best is None:
            raise RuntimeError(f"no trial of the search trained to its end ({counts}); nothing to register")
        best = result.best
        model_dir, run_id = best.model_dir, best.run_id
        if retrain:
            train_config = {"from_trial": best.trial_id, "params": best.params, "rows": "train+validation"}
            with registry.run(
                "tune-retrain",
                train_config,
                dataset=(dataset.name, dataset.version),
                flow_run_id=current_flow_run_id(),
                parent_run_id=parent_id,
            ) as run_id:
                retrained = retrain_on_train_validation(spec, dataset, best, out_dir / "retrained")
                registry.finish_run(run_id, {"best_epoch": retrained.best_epoch, "epochs_run": retrained.epochs_run})
            model_dir = str(retrained.model_dir)
        registered = register_flow(model_dir, run_id, name, str(dataset.path), primary_metric)
        summary = {
            "counts": counts,
            "best_trial": best.summary(spec.metric),
            "best_run_id": best.run_id,
            "registered": {k: registered[k] for k in ("name", "version", "promoted", "reason")},
            "test": {primary_metric: registered["metrics"][primary_metric]},
            "leaderboard": str(out_dir / "leaderboard.md"),
            "plot": str(plot),
        }
        registry.finish_run(parent_id, summary)
    print(
        f"best trial {best.trial_id} ({best.params}): {spec.metric} {best.best(spec.metric):.4f}; "
        f"{name} v{registered['version']} {'promoted' if registered['promoted'] else 'kept as candidate'}"
    )
    return {
        "run_id": parent_id,
        "dataset": dataset_info,
        "fusion": best.params.get("fusion"),
        "model_dir": model_dir,
        "retrained": bool(retrain),
        "trials": [{**t.summary(spec.metric), "status": t.status, "run_id": t.run_id} for t in result.trials],
        **summary,
        **{k: registered[k] for k in ("name", "version", "promoted", "reason", "metrics")},
    }
