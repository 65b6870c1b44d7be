"""Flow `monitor`: is the production model still looking at the products it learned from?

Compares the production version's reference (its training data, its predictions on its own test
split) with a current window: the serving prediction log over the last `window_hours`, or a newer
catalog version (`current`: a spec, ingested first, or a dataset folder) scored by the model. Then:

- the report goes into the registry (`drift_reports`), Evidently's workspace (the dashboards of
  `make ui`) and a Prefect artifact (checks with verdicts, the dashboard's link);
- on drift, a Prefect event `attrflow.drift.detected` whose resource is the model
  (`attrflow.model.<name>`): the `retrain` deployment's trigger listens for it (flows/deployments.py);
- on drift, the optional webhook (flows/alerts.py).

A window with too little traffic to compare is not an error: the run ends with `skipped` set.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event

from components.catalog import load_dataset
from components.monitoring import (
    DriftReport,
    InsufficientData,
    MonitoringConfig,
    dataset_window,
    log_window,
    model_reference,
    run_drift_report,
)
from components.registry import Registry
from components.settings import get_settings
from flows.alerts import send_alert
from flows.common import artifact_key
from flows.dashboards import publish_report

DRIFT_EVENT = "attrflow.drift.detected"


def model_resource_id(model_name: str) -> str:
    """The Prefect resource id of a registered model: what drift events are about."""
    return f"attrflow.model.{model_name}"


@task
def current_dataset_dir(current: str) -> str:
    """`current` as a dataset folder: a catalog spec is ingested (and registered) first."""
    path = Path(current)
    if path.is_file() and path.suffix.lower() in (".yaml", ".yml"):
        from flows.ingest import ingest_flow

        return ingest_flow(str(path))["dataset_dir"]
    return str(load_dataset(path).path)  # fails with a clear message when it is no dataset


def _checks_table(report: DriftReport) -> str:
    rows = [
        f"| {c.name} | {c.kind} | {c.method} | {c.score:.4g} | {c.threshold:.4g} | {'**drift**' if c.drifted else 'ok'} |"
        for c in sorted(report.checks, key=lambda c: (not c.drifted, c.kind, c.name))
    ]
    return "| check | kind | method | score | threshold | verdict |\n|---|---|---|---|---|---|\n" + "\n".join(rows)


@flow(name="monitor", log_prints=True)
def monitor_flow(
    model_name: str,
    window_hours: float = 24.0,
    current: str | None = None,
    config: str | None = None,
    webhook: str | None = None,
) -> dict:
    """One drift report for `model_name`'s production version (see the module docstring)."""
    cfg = MonitoringConfig.from_yaml(config) if config else MonitoringConfig()
    with Registry() as registry:
        production = registry.get_production(model_name)
        if production is None:
            raise ValueError(f"{model_name} has no production version to monitor")
        trained_on = registry.dataset_of_version(model_name, production.version)
    if trained_on is None:
        raise ValueError(f"{model_name} v{production.version}: its run recorded no dataset; no reference to compare")
    reference_dataset = load_dataset(trained_on.path)
    now = datetime.now(UTC)
    reference = model_reference(production.artifact_dir, reference_dataset, cfg.max_rows, cfg.seed)
    if current:
        window = f"dataset {current}"
        frame = dataset_window(production.artifact_dir, load_dataset(current_dataset_dir(current)), cfg.max_rows)
    else:
        since = now - timedelta(hours=window_hours)
        window = f"prediction log {since:%Y-%m-%d %H:%M} - {now:%H:%M} UTC"
        frame = log_window(model_name, reference_dataset.vocab, since)
    out_dir = get_settings().home / "monitoring" / "reports" / model_name / now.strftime("%Y%m%dT%H%M%S%fZ")
    summary = {"model_name": model_name, "model_version": production.version, "window": window}
    try:
        report = run_drift_report(reference, frame, out_dir, cfg, name=f"{model_name} v{production.version}")
    except InsufficientData as e:
        print(f"{model_name}: no report for {window}: {e}")
        return {**summary, "drift_detected": False, "skipped": str(e), "current_size": len(frame), "checks": []}

    with Registry() as registry:
        record = registry.record_drift_report(model_name, production.version, **report.registry_fields())
    dashboard = publish_report(model_name, report.snapshot_path, timestamp=report.window_end)
    result = {
        **summary,
        "report_id": record.id,
        "drift_detected": report.drift_detected,
        "reason": report.reason,
        "checks": [
            {"name": c.name, "kind": c.kind, "score": c.score, "threshold": c.threshold, "drifted": c.drifted}
            for c in report.checks
        ],
        "reference_size": report.reference_rows_total,
        "current_size": report.current_rows_total,
        "report_path": str(report.html_path),
        "dashboard": dashboard,
    }
    verdict = "DRIFT" if report.drift_detected else "no drift"
    create_markdown_artifact(
        f"# {model_name} v{production.version}: {verdict}\n\n{report.reason}\n\nCurrent: {window} "
        f"({report.current_rows_total} rows); reference: {report.reference_rows_total} rows. "
        f"[Dashboard]({dashboard}) · report `{report.html_path}`\n\n{_checks_table(report)}\n",
        key=artifact_key("drift", model_name),
        description="Drift checks with their verdicts",
    )
    if report.drift_detected:
        emit_event(
            DRIFT_EVENT,
            resource={
                "prefect.resource.id": model_resource_id(model_name),
                "prefect.resource.name": model_name,
                "attrflow.model.version": str(production.version),
            },
            payload={k: result[k] for k in ("report_id", "reason", "reference_size", "current_size", "window")},
        )
        send_alert("drift", {k: v for k, v in result.items() if k != "checks"}, webhook)
    print(f"{model_name} v{production.version}: {verdict} ({report.reason}); report {record.id}")
    return result
