"""Evidently dashboards of the drift reports: a local Evidently workspace under
ATTRFLOW_HOME/monitoring/workspace, one project per model, each drift report added as a run.

    url = publish_report("demo", report.snapshot_path, timestamp=report.window_end)

`make ui` serves the workspace with Evidently's UI on http://127.0.0.1:8000 (`python -m
flows.dashboards`: the `evidently ui` command itself fails to import under pandas 3). Evidently's
UI and SDK are used here only: components writes plain snapshots (import contracts, pyproject.toml).

Panels (a project's dashboard, built from the runs' metric values):
- Overview: the share and the count of drifted columns (DataDriftPreset's DriftedColumnsCount),
  and the embedding drift scores (EmbeddingsDrift of text_embedding / image_embedding);
- Predictions: one panel per attribute with the drift score (ValueDrift) of each of its
  prediction and label columns (`pred:<attr>`, `pred:<attr>=<value>`, `published:<attr>`, ...);
- Inputs: the drift score of each input column (title length, image brightness, ...).
Evidently can only select a series by exact labels, so the per-column panels are made from the
columns a report has, when it is published (once per title; a new column adds a series).
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

# components.monitoring first: it makes Evidently importable under pandas 3 (see its _evidently.py).
from components.monitoring import column_info
from components.monitoring.frames import EMBEDDINGS
from components.settings import get_settings

# isort: split
from evidently import Run
from evidently.sdk.models import DashboardModel, DashboardPanelPlot, DashboardTabModel, PanelMetric
from evidently.sdk.panels import bar_plot_panel, line_plot_panel
from evidently.ui.workspace import Project, Workspace

OVERVIEW, PREDICTIONS, INPUTS = "Overview", "Predictions", "Inputs"
DRIFT_SHARE = "Share of drifted columns"
DRIFT_COUNT = "Drifted columns"
EMBEDDING_DRIFT = "Embedding drift"
INPUT_DRIFT = "Input columns: drift score"
SCORE_NOTE = (
    "ValueDrift score per column: a p-value for ks / z / chi2 tests (drift below the threshold, 0.001 by default)"
)


def workspace_dir() -> Path:
    return get_settings().home / "monitoring" / "workspace"


def workspace() -> Workspace:
    path = workspace_dir()
    path.mkdir(parents=True, exist_ok=True)
    return Workspace(str(path))


def ui_port() -> int:
    return int(os.environ.get("ATTRFLOW_EVIDENTLY_PORT", "8000"))


def dashboard_url(project_id: object) -> str:
    # The route of a project's dashboard in Evidently's UI (`make ui` serves it on this port).
    return f"http://127.0.0.1:{ui_port()}/projects/{project_id}"


def project_for(model_name: str, ws: Workspace | None = None) -> Project:
    """The model's project (created on first use), with its fixed panels; idempotent."""
    ws = ws or workspace()
    found = ws.search_project(model_name)
    project = found[0] if found else ws.create_project(model_name, f"Drift reports of attrflow model {model_name!r}")
    _update_dashboard(ws, project, _fixed_panels())
    return project


def publish_report(model_name: str, snapshot_path: Path | str, *, timestamp: datetime | None = None) -> str:
    """Add a drift report's Evidently snapshot (run_drift_report's `snapshot.json`) to the model's
    project and return the project's dashboard URL. `timestamp` (e.g. the window's end) places the
    run on the dashboards' time axis; by default it is when the report was computed."""
    data = json.loads(Path(snapshot_path).read_text())
    if timestamp is not None:
        # Evidently stamps runs with naive local times (datetime.now()); mixing aware ones breaks its sort.
        stamp = timestamp.astimezone().replace(tzinfo=None) if timestamp.tzinfo else timestamp
        data["timestamp"] = stamp.isoformat()
    ws = workspace()
    project = project_for(model_name, ws)
    _update_dashboard(ws, project, _column_panels(_drift_columns(data)))
    ws.add_run(project.id, Run.load_dict(data))
    return dashboard_url(project.id)


# --- panels ---------------------------------------------------------------------------------------


def _fixed_panels() -> list[tuple[str, DashboardPanelPlot]]:
    drifted = "evidently:metric_v2:DriftedColumnsCount"
    return [
        (
            OVERVIEW,
            line_plot_panel(
                DRIFT_SHARE,
                [PanelMetric(legend="share", metric=drifted, metric_labels={"value_type": "share"})],
                "Share of the compared columns Evidently found drifted (embeddings not included)",
                size="half",
            ),
        ),
        (
            OVERVIEW,
            bar_plot_panel(
                DRIFT_COUNT,
                [PanelMetric(legend="drifted", metric=drifted, metric_labels={"value_type": "count"})],
                "Number of drifted columns per report",
                size="half",
            ),
        ),
        (
            OVERVIEW,
            line_plot_panel(
                EMBEDDING_DRIFT,
                [
                    PanelMetric(legend=e, metric="EmbeddingsDrift", metric_labels={"embeddings_name": e})
                    for e in EMBEDDINGS
                ],
                "EmbeddingsDrift score (classifier ROC AUC by default; drift above ~0.55-0.6)",
            ),
        ),
    ]


def _drift_columns(data: dict[str, Any]) -> list[str]:
    """The columns with a ValueDrift metric in a snapshot, in report order."""
    params = [r["metric_value_location"]["metric"]["params"] for r in data["metric_results"].values()]
    return list(dict.fromkeys(p["column"] for p in params if p["type"].endswith(":ValueDrift")))


def _column_panels(columns: list[str]) -> list[tuple[str, DashboardPanelPlot]]:
    """One panel per attribute (its prediction and label columns) and one for the input columns."""
    by_panel: dict[tuple[str, str], list[str]] = {}
    for column in columns:
        info = column_info(column)
        if info is None:
            continue
        # title_names:<attr> is an input that names an attribute: it stays with the inputs.
        attribute = info.attribute if info.kind != "input" else None
        key = (PREDICTIONS, f"Attribute {attribute}: drift score") if attribute else (INPUTS, INPUT_DRIFT)
        by_panel.setdefault(key, []).append(column)
    return [
        (
            tab,
            line_plot_panel(
                title,
                [PanelMetric(legend=c, metric="ValueDrift", metric_labels={"column": c}) for c in cols],
                SCORE_NOTE,
            ),
        )
        for (tab, title), cols in sorted(by_panel.items(), key=lambda kv: (kv[0][0] != PREDICTIONS, kv[0][1]))
    ]


def _update_dashboard(ws: Workspace, project: Project, panels: list[tuple[str, DashboardPanelPlot]]) -> None:
    """Add each panel not there yet (by title) to its tab, and the series a panel lacks; saves only
    when something changed, so publishing the same report again changes nothing."""
    dashboard: DashboardModel = ws.get_dashboard(project.id)
    changed = False
    for tab_title in (OVERVIEW, PREDICTIONS, INPUTS):  # the tabs in this order, whatever comes first
        if not any(t.title == tab_title for t in dashboard.tabs):
            dashboard.tabs.append(DashboardTabModel(title=tab_title, panels=[]))
            changed = True
    for tab_title, panel in panels:
        existing = next((p for p in dashboard.panels if p.title == panel.title), None)
        if existing is None:
            dashboard.panels.append(panel)
            next(t for t in dashboard.tabs if t.title == tab_title).panels.append(panel.id)
            changed = True
            continue
        have = {_series_key(v) for v in existing.values}
        new = [v for v in panel.values if _series_key(v) not in have]
        existing.values.extend(new)
        changed = changed or bool(new)
    if changed:
        ws.save_dashboard(project.id, dashboard)


def _series_key(metric: PanelMetric) -> tuple[str, tuple[tuple[str, str], ...]]:
    return metric.metric, tuple(sorted(metric.metric_labels.items()))


# --- serving ----------------------------------------------------------------------------------------


def serve(host: str = "127.0.0.1", port: int | None = None) -> None:
    """Evidently's UI on the workspace (what `evidently ui --workspace ...` runs); it picks up new
    projects and runs as they are written. No usage telemetry (Evidently honours DO_NOT_TRACK)."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    from evidently.ui.service.app import get_config, run  # the web app (litestar): only when serving

    workspace()  # the folder, so an empty workspace serves too
    run(get_config(host=host, port=port or ui_port(), workspace=str(workspace_dir())))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Serve the drift dashboards (Evidently's UI).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="default: ATTRFLOW_EVIDENTLY_PORT or 8000")
    args = parser.parse_args()
    serve(args.host, args.port)
