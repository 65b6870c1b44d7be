"""Flow `register`: a trained model -> a registered version, promoted only if it is not worse than
the current production model beyond noise, on the same evaluation data (the newest dataset's test
split; components.evaluation.comparison: a paired bootstrap interval of the difference, whose
lower bound must lie above -margin). Every promotion path (pipeline, tune, retrain) comes here."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from components.catalog import load_dataset
from components.evaluation.comparison import Comparison, compare_models
from components.evaluation.evaluate import evaluate
from components.evaluation.extraction import evaluate_extraction
from components.evaluation.report import EvaluationReport
from components.models.io import load_thresholds, model_task
from components.registry import Registry
from components.settings import get_settings
from flows.common import artifact_key, retry_on_io_error


def summarize(report: EvaluationReport) -> dict:
    """The metrics a model version carries in the registry."""
    return {
        "dataset": report.dataset,
        "split": report.split,
        "attributes": {k: v.model_dump() for k, v in report.attributes.items()},
        "r_at_p95_mean": report.mean("r_at_p95"),
        "f1_macro_mean": report.mean("f1_macro"),
    }


@task
def evaluate_on(model_dir: str, dataset_dir: str, split: str, out_dir: str) -> dict:
    """Score `model_dir` on a split; the report goes to `out_dir`, never into a registered version's folder.
    An extraction model: its values by the counting rule, with the same mean metrics."""
    if model_task(model_dir) == "extraction":
        report = evaluate_extraction(model_dir, load_dataset(dataset_dir), split)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "metrics.json").write_text(json.dumps(report, indent=1))
        return {"dataset": dataset_dir, "split": split, "task": "extraction", **report}
    report, _ = evaluate(model_dir, load_dataset(dataset_dir), split, out_dir=Path(out_dir))
    return summarize(report)


@task
def compare_on(
    model_dir: str, production_dir: str, dataset_dir: str, split: str, metric: str, margin: float, seen: list[str]
) -> Comparison:
    """Challenger vs champion on the same products (none of `seen`, the champion's training products),
    with the paired bootstrap interval."""
    return compare_models(
        model_dir, production_dir, load_dataset(dataset_dir), split, metric, margin, exclude=set(seen)
    )


def trained_on(registry: Registry, model_name: str, version: int) -> list[str]:
    """Ids of the products a version trained and validated on (empty when its dataset is unknown or gone)."""
    record = registry.dataset_of_version(model_name, version)
    if record is None or not (Path(record.path) / "manifest.json").is_file():
        return []
    items = load_dataset(record.path).items
    return items.loc[items["split"].isin(["train", "validation"]), "id"].astype(str).tolist()


@task(retries=3, retry_delay_seconds=1, retry_condition_fn=retry_on_io_error)
def register_version(name: str, run_id: int, model_dir: str, metrics: dict):
    with Registry() as registry:
        return registry.register_model_version(name, run_id, Path(model_dir), metrics, load_thresholds(model_dir))


@flow(name="register", log_prints=True)
def register_flow(
    model_dir: str,
    run_id: int,
    model_name: str,
    dataset_dir: str,
    primary_metric: str = "r_at_p95_mean",
    split: str = "test",
    margin: float = 0.002,
) -> dict:
    """Register `model_dir` under `model_name` and apply the champion/challenger rule: a loss
    smaller than `margin` that the test split cannot tell from noise still promotes."""
    dataset_version = load_dataset(dataset_dir).version
    # The candidate is not registered yet: its report travels into the registry with it.
    candidate = evaluate_on(model_dir, dataset_dir, split, str(Path(model_dir) / f"eval-{dataset_version}-{split}"))
    with Registry() as registry:
        production = registry.get_production(model_name)
        if production and model_task(production.artifact_dir) != model_task(model_dir):
            raise ValueError(
                f"{model_name!r}'s production v{production.version} is a {model_task(production.artifact_dir)} model "
                f"and {model_dir} a {model_task(model_dir)} one: register it under another name"
            )
        # Same evaluation data for both: the production model is scored again on this dataset's split.
        # A registered version never changes: its report goes under ATTRFLOW_HOME/evaluations/.
        prod_metrics = None
        if production:
            out = (
                get_settings().home
                / "evaluations"
                / model_name
                / f"v{production.version}"
                / f"{dataset_version}-{split}-for-run-{run_id}"
            )
            prod_metrics = evaluate_on(production.artifact_dir, dataset_dir, split, str(out))
        comparison = (
            compare_on(
                model_dir,
                str(production.artifact_dir),
                dataset_dir,
                split,
                primary_metric,
                margin,
                trained_on(registry, model_name, production.version),
            )
            if production
            else None
        )
        version = register_version(model_name, run_id, model_dir, candidate)
        # Applies the rule: promotes (archiving the old production) or records why not.
        decision = registry.decide_promotion(
            model_name,
            version.version,
            metric=primary_metric,
            candidate_score=comparison.candidate if comparison else candidate[primary_metric],
            production_score=comparison.production if comparison else None,
            interval=comparison.interval if comparison else None,
            margin=margin,
        )
    verdict = "promoted to production" if decision.promote else "kept as candidate"
    create_markdown_artifact(
        f"# {model_name} v{version.version}: {verdict}\n\n{decision.reason}\n\n"
        f"| | {primary_metric} |\n|---|---|\n| candidate v{version.version} | {candidate[primary_metric]:.4f} |\n"
        + (f"| production v{production.version} | {prod_metrics[primary_metric]:.4f} |\n" if production else "")
        + (f"\n{comparison.describe()}\n" if comparison else "")
        + f"\nArtifacts: `{version.artifact_dir}`\n",
        key=artifact_key("promotion", model_name),
        description="Promotion decision",
    )
    print(f"{model_name} v{version.version}: {verdict} ({decision.reason})")
    return {
        "name": model_name,
        "version": version.version,
        "promoted": decision.promote,
        "reason": decision.reason,
        "metrics": candidate,
        "comparison": comparison.model_dump(mode="json") if comparison else None,
    }
