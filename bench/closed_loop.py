"""Closed-loop benchmark: drift -> event -> retrain -> champion/challenger -> hot swap, unattended,
on the fashion catalog, through a real Prefect server, the deployments and the real endpoint.

    make bench-loop

Everything runs as a user would run it, on this machine, under one scratch ATTRFLOW_HOME
(.attrflow/bench/closed-loop): `prefect server start` (127.0.0.1), `python -m flows.deployments`
(the monitor / retrain / pipeline deployments served by one process, as `make ui` runs them) and
`bentoml serve` following the registry's production version (polled every 5 s). This script only
plays the marketplace: it writes catalog versions, sends traffic to /predict_batch and starts
monitor runs through the Prefect API (as the hourly schedule would). The scenario (bench/loop_scenario.py):

- before: a natural mix of the catalog -> the `pipeline` deployment trains, registers, serves v1;
- control: CONTROL_WINDOWS windows of unseen products from the same mix (expected: no drift, no retrain);
- shift A (the assortment changes): a window of mostly winter products of a few article types
  that were rare before; the catalog gains those products (with their labels);
- shift B (a new camera): unseen products of the natural mix, their photos darker with a warm
  colour cast, titles untouched; the catalog gains them;
- a weaker challenger: the retrain deployment run by hand with a deliberately under-trained config
  must be refused.

For each shift: the checks that fired, the time of each step (traffic, monitor, event -> retrain
run, ingest / train / register / package, the endpoint's swap) and end to end (monitor start ->
the endpoint serving the new version), the promotion decision with its interval, the version served
before and after. Targets: no false alarm on the controls, both shifts detected, monitor -> swap
under 15 minutes, the weaker challenger refused.

Writes bench/results/closed_loop.json and closed_loop.md.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ.setdefault("DO_NOT_TRACK", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.common import RESULTS, log  # noqa: E402
from bench.loop_report import write_report  # noqa: E402
from bench.loop_scenario import Scenario, build_scenario, new_camera, write_catalog  # noqa: E402
from bench.serving_server import Server, free_port, start_server  # noqa: E402

MODEL = "fashion-loop"
CONFIG = "configs/models/concat.yaml"  # frozen default encoders: the retrain trains heads on cached embeddings
TARGET_MINUTES = 15.0
POLL_SECONDS = 5  # the endpoint's registry poll
FLUSH_SECONDS = 2  # the prediction log's flush
COOLDOWN_S = 60  # the retrain trigger's: one drift event per shift
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


class Prefect:
    """The few Prefect REST calls the marketplace side needs (no Prefect client in this process)."""

    def __init__(self, api: str) -> None:
        self.api = api
        self.http = httpx.Client(base_url=api, timeout=60)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One API call; a 503 (the server's SQLite database busy with the runner's writes) is retried."""
        for attempt in range(10):
            response = self.http.request(method, path, **kwargs)
            if response.status_code != 503:
                break
            time.sleep(1 + attempt)
        return response.raise_for_status().json()

    def run_deployment(self, name: str, parameters: dict[str, Any]) -> str:
        deployment = self.call("GET", f"/deployments/name/{name}")
        return self.call("POST", f"/deployments/{deployment['id']}/create_flow_run", json={"parameters": parameters})[
            "id"
        ]

    def flow_run(self, run_id: str) -> dict[str, Any]:
        return self.call("GET", f"/flow_runs/{run_id}")

    def wait(self, run_id: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while (run := self.flow_run(run_id))["state_type"] not in TERMINAL:
            if time.monotonic() > deadline:
                raise TimeoutError(f"flow run {run['name']} still {run['state_type']} after {timeout_s:.0f} s")
            time.sleep(1)
        return run

    def runs_of(self, name: str) -> list[dict[str, Any]]:
        deployment = self.call("GET", f"/deployments/name/{name}")
        body = {"flow_runs": {"deployment_id": {"any_": [deployment["id"]]}}, "sort": "EXPECTED_START_TIME_ASC"}
        return self.call("POST", "/flow_runs/filter", json=body)

    def children(self, run_id: str) -> list[dict[str, Any]]:
        """The subflow runs below `run_id`, depth first, with their flow's name."""
        body = {"flow_runs": {"parent_flow_run_id": {"any_": [run_id]}}, "sort": "START_TIME_ASC"}
        out = []
        for child in self.call("POST", "/flow_runs/filter", json=body):
            child["flow_name"] = self.call("GET", f"/flows/{child['flow_id']}")["name"]
            out += [child, *self.children(child["id"])]
        return out

    def events(self, name: str, since: datetime) -> list[dict[str, Any]]:
        body = {"filter": {"event": {"name": [name]}, "occurred": {"since": since.isoformat()}}, "limit": 50}
        return self.call("POST", "/events/filter", json=body)["events"]


def _spawn(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with log_path.open("wb") as out:
        return subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _wait_for(what: str, ready, timeout_s: float, proc: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready: {log_path.read_text()[-3000:]}")
        time.sleep(1)


def _ok(get) -> bool:
    try:
        return bool(get())
    except httpx.HTTPError:
        return False


def _seconds(a: str | None, b: str | None) -> float | None:
    if not a or not b:
        return None
    return round((datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds(), 1)


def send(server: Server, products, camera: bool = False) -> dict[str, Any]:
    """Score `products` through /predict_batch, 64 per request (their photos through `new_camera`)."""
    started = time.perf_counter()
    for i in range(0, len(products), 64):
        body = {
            "products": [
                {
                    "id": p.id,
                    "title": p.title,
                    "image": base64.b64encode(new_camera(p.image) if camera else p.image).decode(),
                }
                for p in products[i : i + 64]
            ]
        }
        httpx.post(f"{server.url}/predict_batch", json=body, timeout=300).raise_for_status()
    time.sleep(FLUSH_SECONDS + 1)  # the prediction log is written
    return {"products": len(products), "seconds": round(time.perf_counter() - started, 1)}


def served_version(server: Server) -> int:
    return httpx.get(f"{server.url}/model", timeout=30).raise_for_status().json()["version"]


def monitor(prefect: Prefect, since: float) -> dict[str, Any]:
    """One run of the `monitor/hourly` deployment over the traffic sent since `since` (epoch s)."""
    from components.registry import Registry

    with Registry() as registry:
        last = [r.id for r in registry.list_drift_reports(MODEL, limit=1)]
    hours = (time.time() - since + 30) / 3600
    run = prefect.wait(prefect.run_deployment("monitor/hourly", {"model_name": MODEL, "window_hours": hours}), 600)
    with Registry() as registry:
        report = registry.list_drift_reports(MODEL, limit=1)[0]
    if [report.id] == last or run["state_type"] != "COMPLETED":
        raise RuntimeError(f"monitor run {run['name']} ended {run['state_type']} without a new drift report")
    fired = [c for c in report.checks if c.get("drifted")]
    return {
        "flow_run": run["name"],
        "state": run["state_type"],
        "start": run["start_time"],
        "end": run["end_time"],
        "seconds": _seconds(run["start_time"], run["end_time"]),
        "report_id": report.id,
        "drifted": report.drifted,
        "reference_rows": report.reference_rows,
        "current_rows": report.current_rows,
        "checks": len(report.checks),
        "fired": [{k: c.get(k) for k in ("name", "kind", "method", "score", "threshold")} for c in fired],
    }


def loop(prefect: Prefect, server: Server, scenario: Scenario, shift: str) -> dict[str, Any]:
    """One shift, end to end: the catalog gains the shifted products, their traffic is served, a
    monitor run detects it, its event starts the retrain, the endpoint swaps to what it promotes."""
    from components.registry import Registry

    products = scenario.shift_a if shift == "A" else scenario.shift_b
    camera = shift == "B"
    scenario.catalog_ids += [p.id for p in products]  # the catalog gains the new products, labelled
    if camera:
        scenario.camera_ids |= {p.id for p in products}
    write_catalog(scenario)
    before = served_version(server)
    retrains_before = len(prefect.runs_of("retrain/on-drift"))
    t0 = time.time()
    traffic = send(server, products, camera=camera)
    log(f"shift {shift}: {traffic['products']} products served in {traffic['seconds']} s; monitoring")
    started = datetime.now(UTC)
    report = monitor(prefect, t0)
    out: dict[str, Any] = {"shift": shift, "traffic": traffic, "monitor": report, "served_before": before}
    log(f"shift {shift}: drift {report['drifted']} ({[c['name'] for c in report['fired']]}) in {report['seconds']} s")
    if not report["drifted"]:
        return out
    deadline = time.monotonic() + 120
    while len(runs := prefect.runs_of("retrain/on-drift")) == retrains_before and time.monotonic() < deadline:
        time.sleep(1)
    if len(runs) == retrains_before:
        out["error"] = "no retrain run within 120 s of the drift report"
        return out
    retrain = prefect.wait(runs[-1]["id"], 3600)
    events = prefect.events("attrflow.drift.detected", started)
    out["event_occurred"] = events[0]["occurred"] if events else None
    out["retrain"] = {
        "flow_run": retrain["name"],
        "state": retrain["state_type"],
        "created": retrain["created"],
        "start": retrain["start_time"],
        "end": retrain["end_time"],
        "seconds": _seconds(retrain["start_time"], retrain["end_time"]),
        "drift_report_id": retrain["parameters"].get("drift_report_id"),
        "steps": [
            {"flow": c["flow_name"], "seconds": _seconds(c["start_time"], c["end_time"])}
            for c in prefect.children(retrain["id"])
        ],
    }
    log(f"shift {shift}: retrain {retrain['state_type']} in {out['retrain']['seconds']} s")
    with Registry() as registry:
        production = registry.get_production(MODEL)
        newest = max(registry.list_model_versions(MODEL), key=lambda v: v.version)
    out["candidate"] = {"version": newest.version, "stage": newest.stage, "decision": newest.decision}
    if production.version != before:
        deadline = time.monotonic() + 300
        while (served := served_version(server)) != production.version and time.monotonic() < deadline:
            time.sleep(0.5)
        out["swap_seen"] = datetime.now(UTC).isoformat()
        out["served_after"] = served
    else:
        out["served_after"] = served_version(server)
    end = out.get("swap_seen") or retrain["end_time"]
    out["monitor_to_serving_s"] = _seconds(report["start"], end)
    out["event_to_retrain_start_s"] = _seconds(out["event_occurred"], retrain["start_time"])
    log(
        f"shift {shift}: served v{before} -> v{out['served_after']}; monitor -> serving {out['monitor_to_serving_s']} s"
    )
    return out


def weaker_challenger(prefect: Prefect, server: Server, scratch: Path) -> dict[str, Any]:
    """The retrain deployment run by hand with an under-trained head: it must stay a candidate."""
    import yaml

    from components.registry import Registry

    config = yaml.safe_load((ROOT / CONFIG).read_text())
    config["training"].update({"epochs": 1, "lr_head": 0.00005})  # one epoch at a 20x lower learning rate
    weak = scratch / "weak-concat.yaml"
    weak.write_text(yaml.safe_dump(config))
    before = served_version(server)
    run_id = prefect.run_deployment("retrain/on-drift", {"model_name": MODEL, "configs": [str(weak)]})
    run = prefect.wait(run_id, 1800)
    with Registry() as registry:
        newest = max(registry.list_model_versions(MODEL), key=lambda v: v.version)
    time.sleep(POLL_SECONDS + 1)
    return {
        "config": "configs/models/concat.yaml with epochs 1, lr_head 5e-5",
        "state": run["state_type"],
        "seconds": _seconds(run["start_time"], run["end_time"]),
        "version": newest.version,
        "stage": newest.stage,
        "decision": newest.decision,
        "served_before": before,
        "served_after": served_version(server),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--controls", type=int, default=5, help="control windows (seeds)")
    parser.add_argument("--keep", action="store_true", help="keep the processes' logs and the scratch home")
    args = parser.parse_args()

    scratch = (ROOT / ".attrflow" / "bench" / "closed-loop").resolve()
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    home = scratch / "home"
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "ATTRFLOW_HOME": str(home),
        "PREFECT_HOME": str(scratch / "prefect"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "BENTOML_HOME": str(scratch / "bentoml"),
        "ATTRFLOW_MODEL_NAME": MODEL,
        "ATTRFLOW_RETRAIN_SPEC": str(scratch / "catalog" / "spec.yaml"),
        "ATTRFLOW_RETRAIN_CONFIGS": CONFIG,
        "ATTRFLOW_MONITOR_CRON": "0 0 1 1 *",  # runs are started by this script, not the hourly schedule
        "ATTRFLOW_RETRAIN_COOLDOWN_HOURS": str(COOLDOWN_S / 3600),  # the shifts come minutes apart
    }
    os.environ.update({k: env[k] for k in ("ATTRFLOW_HOME", "PREFECT_API_URL")})  # this process reads the registry

    scenario = build_scenario(scratch / "catalog", controls=args.controls)
    results: dict[str, Any] = {"started": datetime.now(UTC).isoformat(), "scenario": scenario.describe()}
    procs: dict[str, subprocess.Popen] = {}
    server = None
    try:
        log(f"Prefect server on {api}")
        procs["prefect"] = _spawn(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env,
            scratch / "prefect.log",
        )
        prefect = Prefect(api)
        _wait_for(
            "prefect server",
            lambda: _ok(lambda: prefect.http.get("/health").status_code == 200),
            180,
            procs["prefect"],
            scratch / "prefect.log",
        )
        procs["deployments"] = _spawn([sys.executable, "-m", "flows.deployments"], env, scratch / "deployments.log")
        _wait_for(
            "deployments",
            lambda: _ok(lambda: prefect.http.get("/deployments/name/retrain/on-drift").json().get("id")),
            180,
            procs["deployments"],
            scratch / "deployments.log",
        )

        write_catalog(scenario)
        log(f"before: the pipeline deployment trains v1 on {scenario.describe()['before']} products")
        run = prefect.wait(
            prefect.run_deployment(
                "pipeline/scheduled-retrain", {"model_name": MODEL, "configs": [CONFIG], "fit_budget": None}
            ),
            3600,
        )
        results["before"] = {"state": run["state_type"], "seconds": _seconds(run["start_time"], run["end_time"])}
        if run["state_type"] != "COMPLETED":
            raise RuntimeError(f"the first pipeline run ended {run['state_type']}: see {scratch}/deployments.log")
        server = start_server(
            None,
            scratch / "endpoint",
            {
                "ATTRFLOW_HOME": str(home),
                "ATTRFLOW_MODEL_NAME": MODEL,
                "ATTRFLOW_POLL_SECONDS": str(POLL_SECONDS),
                "ATTRFLOW_LOG_FLUSH_SECONDS": str(FLUSH_SECONDS),
            },
        )
        log(f"endpoint ready in {server.cold_start_s:.1f} s, serving v{served_version(server)}")

        controls = []
        for i, window in enumerate(scenario.controls):
            t0 = time.time()
            traffic = send(server, window)
            report = monitor(prefect, t0)
            controls.append({"seed": i, "traffic": traffic, "monitor": report})
            log(
                f"control {i}: drift {report['drifted']} {[c['name'] for c in report['fired']]} ({report['seconds']} s)"
            )
        time.sleep(10)  # a false alarm's event would have started a retrain by now
        results["controls"] = {
            "windows": controls,
            "false_alarms": sum(c["monitor"]["drifted"] for c in controls),
            "retrain_runs": len(prefect.runs_of("retrain/on-drift")),
        }
        t_shift_a = time.time()
        results["shifts"] = [loop(prefect, server, scenario, "A")]
        time.sleep(max(0.0, COOLDOWN_S + 5 - (time.time() - t_shift_a)))  # past the retrain trigger's cooldown
        results["shifts"].append(loop(prefect, server, scenario, "B"))
        results["weaker_challenger"] = weaker_challenger(prefect, server, scratch)
    except Exception as e:  # the partial results are still written, with the error
        results["error"] = f"{type(e).__name__}: {e}"
        log(f"error: {results['error']}")
    finally:
        if server is not None:
            server.stop()
        for proc in reversed(procs.values()):
            _stop(proc)
    results["ended"] = datetime.now(UTC).isoformat()
    results["target_minutes"] = TARGET_MINUTES
    print(write_report(RESULTS / "closed_loop", results))
    for name in ("prefect.log", "deployments.log"):
        if (scratch / name).is_file():
            shutil.copy(scratch / name, RESULTS / f"closed_loop-{name}") if args.keep else None


if __name__ == "__main__":
    main()
