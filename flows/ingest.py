"""Flow `ingest`: catalog spec -> validated, versioned dataset, registered, its features in Feast."""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from components.catalog import IngestResult, ingest, load_dataset, load_spec
from components.registry import Registry
from flows.common import artifact_key, retry_on_io_error


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=retry_on_io_error)
def ingest_catalog(spec: str, source: str | None) -> IngestResult:
    return ingest(load_spec(spec), source=source)


@task(retries=3, retry_delay_seconds=1, retry_condition_fn=retry_on_io_error)
def register_dataset(result: IngestResult) -> None:
    manifest = load_dataset(result.dataset_dir).manifest
    with Registry() as registry:
        registry.register_dataset(result.name, result.version, str(result.dataset_dir), manifest)


@flow(name="ingest", log_prints=True)
def ingest_flow(spec: str, source: str | None = None, features: bool = True) -> dict:
    """Validate a catalog (every row accepted or quarantined), write and register the dataset version,
    and (unless `features=False`) write its features to Feast and materialize them (flows/features.py)."""
    result = ingest_catalog(spec, source)
    register_dataset(result)
    if features:
        from flows.features import write_product_features  # imports Feast (seconds) only when used

        write_product_features(str(result.dataset_dir))
    reasons = "\n".join(f"| {r} | {n} |" for r, n in result.reasons.items()) or "| (none) | 0 |"
    create_markdown_artifact(
        f"# Dataset {result.name} {result.version}\n\n"
        f"{result.rows} rows: **{result.accepted} accepted**, {result.quarantined} quarantined "
        f"({'reused an identical earlier ingest' if result.reused else 'new version'}).\n\n"
        f"Splits: {result.splits}\n\n| quarantine reason | rows |\n|---|---|\n{reasons}\n\n"
        f"Folder: `{result.dataset_dir}` (quarantined rows in `quarantine.csv`)\n",
        key=artifact_key("dataset", result.name),
        description="Ingest counts and quarantine reasons",
    )
    print(f"{result.name} {result.version}: {result.accepted}/{result.rows} accepted")
    return result.model_dump(mode="json")
