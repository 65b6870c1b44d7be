"""Deployments on a Prefect work pool, for real: a Prefect server on 127.0.0.1, `attrflow deploy
--pool`, a `prefect worker` process that picks up the pipeline run and runs it in its own
subprocess, and the registry (SQLite always, PostgreSQL too when ATTRFLOW_TEST_PG_URL is set)
holding what that run produced."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import yaml
from typer.testing import CliRunner

from components.catalog.demo import write_demo_catalog
from components.registry import Registry

pytestmark = pytest.mark.slow


def _tiny_config(path) -> str:
    path.write_text(
        yaml.safe_dump(
            {
                "model": {
                    "text": {"name": "tiny-random", "max_length": 24},
                    "image": {"name": "tiny-random", "image_size": [32, 32]},
                    "fusion": {"name": "text"},
                    "head": {"hidden": 16},
                },
                "training": {"epochs": 1, "batch_size": 32},
            }
        )
    )
    return str(path)


def _pipeline_parameters(**given) -> dict:
    """A run's parameters: `given`, and every optional extra the scheduled deployment sets by default
    (e.g. an automatic-model budget) turned off, so the run does only what the test asks."""
    import inspect

    from flows.pipeline import pipeline_flow

    extras = {"fit_budget": None, "search": None}
    return {**{k: v for k, v in extras.items() if k in inspect.signature(pipeline_flow.fn).parameters}, **given}


def _start_worker(pool: str, api_url: str, log_path) -> subprocess.Popen:
    env = {
        **os.environ,  # ATTRFLOW_HOME, ATTRFLOW_DB_URL, PYTHONPATH: the flow runs see what this test sees
        "PREFECT_API_URL": api_url,
        "PREFECT_WORKER_QUERY_SECONDS": "1",  # poll for scheduled runs every second (default 10)
        "PREFECT_WORKER_PREFETCH_SECONDS": "5",
    }
    log = open(log_path, "wb")  # noqa: SIM115 - the worker writes to it until the test stops it
    return subprocess.Popen(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process", "--limit", "1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_deploy_needs_a_prefect_server(monkeypatch):
    from attrflow.cli import app

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    out = CliRunner().invoke(app, ["deploy", "--pool", "p"])
    assert out.exit_code == 2 and "PREFECT_API_URL is not set" in out.output


# SQLite only: this test is about the worker / the cluster (minutes each); the flow and tune tests
# (test_flows, test_tune, test_loop) run on PostgreSQL too when ATTRFLOW_TEST_PG_URL is set.
@pytest.mark.parametrize("registry_backend", ["sqlite"], indirect=True)
def test_a_worker_of_the_pool_runs_the_pipeline_deployment(prefect_server, registry_backend, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from attrflow.cli import app

    pool = f"pool-{registry_backend}"
    out = CliRunner().invoke(
        app,
        ["deploy", "--pool", pool, "--working-dir", str(tmp_path), "--json"],
        env={"PREFECT_API_URL": prefect_server},
    )
    assert out.exit_code == 0, out.output
    ids = json.loads(out.output.strip().splitlines()[-1])["deployment_ids"]
    with get_client(sync_client=True) as client:
        assert client.read_work_pool(pool).type == "process"  # created by `attrflow deploy`
        deployments = {client.read_deployment(i).name: client.read_deployment(i) for i in ids}
    from flows.deployments import build_deployments

    assert len(ids) == len(build_deployments()) and {d.work_pool_name for d in deployments.values()} == {pool}
    pipeline = deployments["scheduled-retrain"]
    assert pipeline.entrypoint == "flows.pipeline.pipeline_flow"  # a module path: the worker imports attrflow
    assert pipeline.job_variables["working_dir"] == str(tmp_path.resolve())

    spec = write_demo_catalog(tmp_path / "catalog", n=120, seed=6)
    worker = _start_worker(pool, prefect_server, tmp_path / "worker.log")
    try:
        started = time.perf_counter()
        run = run_deployment(
            "pipeline/scheduled-retrain",
            parameters=_pipeline_parameters(
                spec=str(spec), configs=[_tiny_config(tmp_path / "text.yaml")], model_name="pooled", package=False
            ),
            timeout=300,
        )
        seconds = time.perf_counter() - started
    finally:
        _stop(worker)
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert run.state is not None and run.state.is_completed(), f"{run.state}\n--- worker log ---\n{log[-4000:]}"
    assert run.work_pool_name == pool and run.infrastructure_pid  # a worker of the pool started a process for it
    assert str(run.id) in log  # ... that worker
    print(f"pipeline through the worker: {seconds:.1f} s")

    # What the worker's run produced is in the registry this test reads (the same database).
    with Registry() as registry:
        production = registry.get_production("pooled")
        assert production is not None and production.version == 1
        train_runs = registry.list_runs(kind="train")
        assert len(train_runs) == 1 and train_runs[0].status == "completed"
        assert train_runs[0].flow_run_id is not None
    with get_client(sync_client=True) as client:
        train_flow_run = client.read_flow_run(train_runs[0].flow_run_id)
    assert train_flow_run.parent_task_run_id is not None  # a subflow of the run the worker started


def test_deployments_from_source_carry_the_checkout_as_storage(tmp_path):
    """`attrflow deploy --source`: the flows loaded with Flow.from_source (here from this checkout's
    folder; a git URL works the same way), file entrypoints, the source as the deployments' storage."""
    from pathlib import Path

    from prefect import Flow

    from flows.deployments import ENTRYPOINTS, build_deployments

    checkout = Path(__file__).resolve().parent.parent
    flows = {"pipeline": Flow.from_source(str(checkout), ENTRYPOINTS["pipeline"])}
    pipeline = next(
        d
        for d in build_deployments(flows=flows, job_variables={"working_dir": str(tmp_path)})
        if d.name == "scheduled-retrain"
    )
    assert pipeline.entrypoint == "flows/pipeline.py:pipeline_flow" and pipeline.storage is not None
    assert pipeline.job_variables == {"working_dir": str(tmp_path)}
