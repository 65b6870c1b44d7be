"""Flow `fit`: dataset -> the automatic model (a portfolio trained within a time budget, the best
member or ensemble chosen on validation), recorded as a registry run."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from components.catalog import load_dataset
from components.registry import Registry
from components.settings import get_settings
from components.training.fit import FitConfig, fit, parse_duration
from flows.common import artifact_key, current_flow_run_id, metrics_table


@flow(name="fit", log_prints=True)
def fit_flow(
    dataset_dir: str, time_budget: str = "20m", members: list[str] | None = None, filter_label_noise: bool = False
) -> dict:
    """Train the portfolio within `time_budget` (e.g. "20m") and keep the best member or ensemble."""
    config = FitConfig(time_budget_seconds=parse_duration(time_budget), **({"members": members} if members else {}))
    dataset = load_dataset(dataset_dir)
    with (
        Registry() as registry,
        registry.run(
            "fit",
            config.model_dump(mode="json"),
            dataset=(dataset.name, dataset.version),
            flow_run_id=current_flow_run_id(),
        ) as run_id,
    ):
        out_dir = get_settings().home / "runs" / str(run_id)
        result = fit(dataset, out_dir, config)
        registry.finish_run(
            run_id, {"validation": result.validation, "weights": result.weights, "members": result.members}
        )
    fusion = "ensemble(" + ",".join(result.weights) + ")" if len(result.weights) > 1 else next(iter(result.weights))
    members = "\n".join(
        f"| {n} | {m['validation']:.3f} | {m['seconds']:.0f} | {result.weights.get(n, 0):g} |"
        for n, m in result.members.items()
    )
    create_markdown_artifact(
        f"# Fitted `{fusion}` (run {run_id})\n\nBudget {time_budget}, {result.seconds:.0f}s spent.\n\n"
        f"| member | validation {config.monitor} | seconds | weight |\n|---|---|---|---|\n{members}\n\n"
        + (f"Skipped: {result.skipped}\n\n" if result.skipped else "")
        + f"The chosen model on validation:\n\n{metrics_table(result.validation)}\n",
        key=artifact_key("fit", dataset.name),
        description="Portfolio members and the chosen model",
    )
    return {"run_id": run_id, "model_dir": str(result.model_dir), "fusion": fusion, "validation": result.validation}
