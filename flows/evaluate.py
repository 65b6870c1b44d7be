"""Flow `evaluate`: a model folder + dataset -> metrics report (JSON, markdown, plots)."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from components.catalog import load_dataset
from components.evaluation.evaluate import evaluate
from flows.common import artifact_key


@flow(name="evaluate", log_prints=True)
def evaluate_flow(model_dir: str, dataset_dir: str, split: str = "test") -> dict:
    dataset = load_dataset(dataset_dir)
    report, paths = evaluate(model_dir, dataset, split)
    files = "\n".join(f"- {kind}: `{path}`" for kind, path in paths.items())
    create_markdown_artifact(
        report.to_markdown() + f"\nReport files:\n{files}\n",
        key=artifact_key("evaluation", dataset.name),
        description=f"Metrics on the {split} split",
    )
    return report.model_dump(mode="json")
