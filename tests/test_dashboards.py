"""Drift dashboards (flows/dashboards.py): real drift reports published into an Evidently workspace
under ATTRFLOW_HOME (conftest.py gives each test its own), read back with Evidently's own API and
with the data storage its UI draws the panels from."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from test_monitoring import window

from components.monitoring import DriftReport, MonitoringConfig, run_drift_report
from flows import dashboards
from flows.dashboards import project_for, publish_report, workspace, workspace_dir

# isort: split
# Evidently after components (it makes Evidently importable under pandas 3, see flows/dashboards.py).
from evidently.ui.service.base import SeriesFilter
from evidently.ui.service.storage.local.base import InMemoryDataStorage

FIXED = {dashboards.DRIFT_SHARE, dashboards.DRIFT_COUNT, dashboards.EMBEDDING_DRIFT}
PER_COLUMN = {"Attribute colour: drift score", "Attribute tags: drift score", dashboards.INPUT_DRIFT}


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> list[DriftReport]:
    """Two small real reports: one without drift (no embeddings), one with a shifted colour
    distribution and moved text embeddings (embedding checks on)."""
    out = tmp_path_factory.mktemp("reports")
    reference = window(80, seed=1)
    same = run_drift_report(reference, window(80, seed=2), out / "same", MonitoringConfig(embeddings=False))
    shifted = window(80, seed=3, colours=[0.15, 0.25, 0.2, 0.4], text_shift=1.0)
    moved = run_drift_report(reference, shifted, out / "moved", MonitoringConfig())
    assert moved.drift_detected and {"text_embedding", "image_embedding"} <= {c.name for c in moved.checks}
    return [same, moved]


def _titles(project_id) -> list[str]:
    return [p.title for p in workspace().get_dashboard(project_id).panels]


def _series(project_id, title: str) -> dict[str, list[float | None]]:
    """What Evidently's UI draws in a panel: its series (by label) over the project's runs."""
    panel = next(p for p in workspace().get_dashboard(project_id).panels if p.title == title)
    filters = [
        SeriesFilter(tags=v.tags, metadata=v.metadata, metric=v.metric, metric_labels=v.metric_labels)
        for v in panel.values
    ]
    storage = InMemoryDataStorage(path=str(workspace_dir()))
    response = asyncio.run(storage.get_data_series(project_id, filters, None, None))
    label = ("column", "embeddings_name", "value_type")
    return {next(s.params[k] for k in label if k in s.params): s.values for s in response.series}


def test_publish_makes_one_project_per_model_with_its_panels(reports, attrflow_home, monkeypatch):
    monkeypatch.setenv("ATTRFLOW_EVIDENTLY_PORT", "8123")
    same, moved = reports
    window_end = datetime(2026, 11, 1, 12, tzinfo=UTC)
    url = publish_report("demo", same.snapshot_path, timestamp=window_end)
    assert workspace_dir() == attrflow_home / "monitoring" / "workspace" and workspace_dir().is_dir()
    project = project_for("demo")
    assert url == f"http://127.0.0.1:8123/projects/{project.id}"
    titles = _titles(project.id)
    assert set(titles) == FIXED | PER_COLUMN and len(titles) == len(set(titles))

    assert publish_report("demo", moved.snapshot_path) == url
    project_for("demo")
    ws = workspace()
    assert [p.name for p in ws.list_projects()] == ["demo"]
    assert len(ws.list_runs(project.id)) == 2
    assert sorted(_titles(project.id)) == sorted(titles)  # publishing again adds no panel
    tabs = {t.title: t.panels for t in ws.get_dashboard(project.id).tabs}
    assert list(tabs) == ["Overview", "Predictions", "Inputs"] and sum(map(len, tabs.values())) == len(titles)
    stamps = sorted(ws.get_run(project.id, r).timestamp for r in ws.list_runs(project.id))
    assert stamps[0] == window_end.astimezone().replace(tzinfo=None)  # the window's end, as Evidently stores it

    # Every panel has data in the UI's storage, in the runs' time order (the older, undrifted one first).
    share = _series(project.id, dashboards.DRIFT_SHARE)["share"]
    columns = [c for c in moved.checks if c.kind != "embedding"]
    assert share == pytest.approx([0.0, len(_drifted_columns(moved)) / len(columns)])
    assert _series(project.id, dashboards.DRIFT_COUNT)["count"] == [0, len(_drifted_columns(moved))]
    embedding = _series(project.id, dashboards.EMBEDDING_DRIFT)
    assert embedding["text_embedding"] == pytest.approx([moved.check("text_embedding").score])
    colour = _series(project.id, "Attribute colour: drift score")
    assert set(colour) == {"pred:colour", "published:colour"}
    assert colour["pred:colour"] == pytest.approx([same.check("pred:colour").score, moved.check("pred:colour").score])
    assert set(_series(project.id, "Attribute tags: drift score")) == {
        "pred:tags=cotton",
        "pred:tags=denim",
        "pred:tags=silk",
        "published:tags",
    }
    assert "image_brightness" in _series(project.id, dashboards.INPUT_DRIFT)


def test_a_new_column_adds_a_series_and_models_get_their_own_projects(reports, tmp_path):
    same, _ = reports
    # The same report without its pred:tags=silk column: the panel then gains the series when it comes.
    data = json.loads(Path(same.snapshot_path).read_text())
    data["metric_results"] = {
        k: r
        for k, r in data["metric_results"].items()
        if r["metric_value_location"]["metric"]["params"].get("column") != "pred:tags=silk"
    }
    partial = tmp_path / "snapshot.json"
    partial.write_text(json.dumps(data))
    publish_report("demo", partial)
    project = project_for("demo")
    assert "pred:tags=silk" not in _series(project.id, "Attribute tags: drift score")
    publish_report("demo", same.snapshot_path)
    tags = _series(project.id, "Attribute tags: drift score")
    assert tags["pred:tags=silk"] == [None, pytest.approx(same.check("pred:tags=silk").score)]

    publish_report("other", same.snapshot_path)
    ws = workspace()
    assert sorted(p.name for p in ws.list_projects()) == ["demo", "other"]
    assert len(ws.list_runs(project_for("other").id)) == 1 and len(ws.list_runs(project.id)) == 2


def _drifted_columns(report: DriftReport) -> list[str]:
    return [c.name for c in report.drifted_checks if c.kind != "embedding"]
