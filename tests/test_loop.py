"""The closed loop's parts against a real temporary Prefect server: the monitor flow (a real
Evidently report, the registry row, the Prefect event, the webhook) and the retrain deployment's
drift trigger (one run per cooldown, only for its model)."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml
from PIL import Image, ImageEnhance

from components.catalog.demo import write_demo_catalog
from components.registry import Registry

pytestmark = pytest.mark.slow


def _api() -> str:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def _runs_of(deployment_id) -> list[dict]:
    body = {"flow_runs": {"deployment_id": {"any_": [str(deployment_id)]}}}
    r = httpx.post(f"{_api()}/flow_runs/filter", json=body)
    r.raise_for_status()
    return r.json()


def _emit_drift(model_name: str, report_id: int) -> None:
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    from flows.monitor import DRIFT_EVENT, model_resource_id

    emit_event(
        DRIFT_EVENT, resource={"prefect.resource.id": model_resource_id(model_name)}, payload={"report_id": report_id}
    )
    EventsWorker.drain_all()


def test_drift_events_start_one_retrain_per_cooldown_and_only_for_their_model(prefect_server):
    from flows.deployments import drift_trigger
    from flows.retrain import retrain_flow

    params = {"spec": "catalog.yaml", "configs": []}
    shop = retrain_flow.to_deployment(
        "on-drift-shop",
        parameters={"model_name": "shop", **params},
        triggers=[drift_trigger("shop", timedelta(hours=6))],
    ).apply()
    other = retrain_flow.to_deployment(
        "on-drift-hats",
        parameters={"model_name": "hats", **params},
        triggers=[drift_trigger("hats", timedelta(hours=6))],
    ).apply()
    time.sleep(3)  # the server's trigger service picks the new automations up
    _emit_drift("shop", 7)
    deadline = time.monotonic() + 90
    while not _runs_of(shop) and time.monotonic() < deadline:
        time.sleep(1)
    runs = _runs_of(shop)
    assert len(runs) == 1, "the drift event did not start the retrain deployment"
    assert str(runs[0]["parameters"]["drift_report_id"]) == "7"  # from the event's payload
    assert runs[0]["parameters"]["model_name"] == "shop"

    for report_id in (8, 9):  # a burst inside the cooldown
        _emit_drift("shop", report_id)
    time.sleep(8)
    assert len(_runs_of(shop)) == 1  # ... starts nothing more
    assert _runs_of(other) == []  # and another model's deployment never heard of it


class _Receiver(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    _Receiver.received = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", _Receiver.received
    server.shutdown()


def _tiny_config(path: Path) -> str:
    model = {
        "text": {"name": "tiny-random", "max_length": 24},
        "image": {"name": "tiny-random", "image_size": [32, 32]},
        "fusion": {"name": "concat"},
        "head": {"hidden": 16},
    }
    path.write_text(yaml.safe_dump({"model": model, "training": {"epochs": 2, "batch_size": 32}}))
    return str(path)


def _darken(spec: Path) -> None:
    """A new camera: every image of the catalog darker and colour-cast, titles untouched."""
    for image_path in (spec.parent / "images").glob("*.png"):
        try:
            image = Image.open(image_path).convert("RGB")
        except OSError:
            continue  # the catalog's deliberately broken image
        image = ImageEnhance.Brightness(image).enhance(0.35)
        r, g, b = image.split()
        Image.merge("RGB", (r, g.point(lambda v: v // 2), b)).save(image_path)


def _events(name: str, resource_id: str, since: datetime | None = None) -> list[dict]:
    body = {"filter": {"event": {"name": [name]}, "resource": {"id": [resource_id]}}, "limit": 50}
    r = httpx.post(f"{_api()}/events/filter", json=body)
    r.raise_for_status()
    events = r.json()["events"]
    if since is not None:
        events = [e for e in events if datetime.fromisoformat(e["occurred"].replace("Z", "+00:00")) >= since]
    return events


@pytest.mark.usefixtures("registry_backend")  # SQLite; PostgreSQL too with ATTRFLOW_TEST_PG_URL
def test_monitor_flow_reports_a_new_camera_and_stays_quiet_on_the_same_catalog(prefect_server, tmp_path, webhook):
    from flows.monitor import DRIFT_EVENT, monitor_flow
    from flows.pipeline import pipeline_flow

    url, received = webhook
    started = datetime.now(UTC)  # the Prefect server outlives this test (its other backend's run emits too)
    spec = write_demo_catalog(tmp_path / "before", n=300, seed=1)
    pipeline_flow(str(spec), [_tiny_config(tmp_path / "concat.yaml")], model_name="loop", package=False)

    control = monitor_flow("loop", current=str(write_demo_catalog(tmp_path / "same", n=300, seed=2)), webhook=url)
    assert not control["drift_detected"], [c for c in control["checks"] if c["drifted"]]
    assert control["reference_size"] > 0 and control["current_size"] > 250
    assert received == []  # no alert without drift

    shifted_spec = write_demo_catalog(tmp_path / "camera", n=300, seed=3)
    _darken(shifted_spec)
    shifted = monitor_flow("loop", current=str(shifted_spec), webhook=url)
    assert shifted["drift_detected"]
    fired = {c["name"] for c in shifted["checks"] if c["drifted"]}
    assert "image_brightness" in fired, fired
    assert not any(c["drifted"] for c in shifted["checks"] if c["name"] in ("title_chars", "title_words"))

    with Registry() as registry:
        rows = registry.list_drift_reports("loop")
    assert [r.drifted for r in rows] == [True, False]  # most recent first
    assert rows[0].id == shifted["report_id"] and Path(rows[0].snapshot_path).is_file()

    [alert] = received
    assert alert["kind"] == "drift" and alert["report_id"] == shifted["report_id"]
    deadline = time.monotonic() + 30
    while not (events := _events(DRIFT_EVENT, "attrflow.model.loop", started)) and time.monotonic() < deadline:
        time.sleep(1)
    [event] = events
    assert event["resource"]["prefect.resource.id"] == "attrflow.model.loop"
    assert event["payload"]["report_id"] == shifted["report_id"]

    # the same through the command line: exit 1 on drift, the JSON line has what scripts need
    from typer.testing import CliRunner

    from attrflow.cli import app

    out = CliRunner().invoke(app, ["monitor", "loop", "--current", str(shifted_spec), "--json"])
    assert out.exit_code == 1, out.output
    last = json.loads([line for line in out.output.splitlines() if line.startswith("{")][-1])
    assert last["drift_detected"] is True and {"name", "score", "threshold", "drifted"} <= set(last["checks"][0])
    assert last["reference_size"] > 0 and last["current_size"] > 250 and Path(last["report_path"]).is_file()
    quiet = CliRunner().invoke(app, ["monitor", "loop", "--window", "2h"])  # nothing was served: no report
    assert quiet.exit_code == 0 and "no report" in quiet.output, quiet.output
    bad = CliRunner().invoke(app, ["monitor", "loop", "--window", "soon"])
    assert bad.exit_code == 2 and "--window" in bad.output
