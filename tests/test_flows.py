"""Real Prefect flow runs (on a temporary Prefect server) over a tiny demo catalog and tiny models."""

from __future__ import annotations

import asyncio
import json

import pytest
import yaml

from components.catalog.demo import write_demo_catalog
from components.registry import Registry

pytestmark = pytest.mark.slow


def _tiny_config(path, fusion: str, lr: float = 1e-3) -> str:
    path.write_text(
        yaml.safe_dump(
            {
                "model": {
                    "text": {"name": "tiny-random", "max_length": 24},
                    "image": {"name": "tiny-random", "image_size": [32, 32]},
                    "fusion": {"name": fusion},
                    "head": {"hidden": 16},
                },
                "training": {"epochs": 2, "batch_size": 32, "lr_head": lr},
            }
        )
    )
    return str(path)


def _artifacts(key_like: str) -> list[dict]:
    """Artifacts from the server's REST API (plain JSON keeps the test independent of client models)."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    body = {"artifacts": {"key": {"like_": key_like}}, "limit": 200, "sort": "CREATED_DESC"}
    response = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter", json=body)
    response.raise_for_status()
    return response.json()


def test_pipeline_flow_run_registers_and_promotes(
    prefect_server, registry_backend, tmp_path
):  # + PostgreSQL with ATTRFLOW_TEST_PG_URL
    # One model name per backend: the Prefect server and BentoML's model store outlive this test.
    name = "shop" if registry_backend == "sqlite" else "shoppg"
    from flows.pipeline import pipeline_flow

    spec = write_demo_catalog(tmp_path / "catalog", n=150, seed=2)
    configs = [_tiny_config(tmp_path / "text.yaml", "text"), _tiny_config(tmp_path / "ma.yaml", "modality_attention")]
    state = pipeline_flow(str(spec), configs, model_name=name, return_state=True)
    assert state.is_completed(), state
    result = state.result()

    registry = Registry()
    runs = registry.list_runs(kind="train")
    assert len(runs) == 2 and all(r.status == "completed" for r in runs)
    assert all(len(r.epoch_metrics) == 2 for r in runs)  # logged every epoch
    versions = registry.list_model_versions(name)
    assert sorted(v.version for v in versions) == [1, 2]
    production = registry.get_production(name)
    assert production is not None and production.version == result["production_version"]
    # v1 was promoted as the first; v2 only if not worse beyond noise on the same test data
    v2 = next(c for c in result["candidates"] if c["version"] == 2)
    v1 = next(c for c in result["candidates"] if c["version"] == 1)
    assert v1["comparison"] is None
    cmp = v2["comparison"]
    assert cmp["candidate"] == pytest.approx(v2["metrics"]["r_at_p95_mean"])
    assert cmp["production"] == pytest.approx(v1["metrics"]["r_at_p95_mean"])
    assert v2["promoted"] == (cmp["interval"][0] > -cmp["margin"])
    assert (production.version == 2) == v2["promoted"]
    stored = registry.get_model_version(name, production.version)
    assert set(stored.thresholds) == {"category", "colour", "material", "pattern"}  # thresholds travel with the version
    assert set(stored.metrics["attributes"]) == {"category", "colour", "material", "pattern"}

    # the production version was packaged: a Bento holding that version's model folder
    import bentoml

    assert result["bento"] == f"attrflow-{name}:v{production.version}"
    bento = bentoml.bentos.get(result["bento"])
    assert [str(m.tag) for m in bento.info.models] == [f"attrflow-{name}:v{production.version}"]
    stored = bentoml.models.get(f"attrflow-{name}:v{production.version}")
    packed = {k: v for k, v in _folder_digest(stored.path).items() if k != "model.yaml"}  # BentoML's own file
    assert packed == _folder_digest(production.artifact_dir)

    keys = {a["key"] for a in _artifacts("%")}
    assert {"dataset-demo", f"promotion-{name}", f"pipeline-{name}", f"bento-{name}"} <= keys
    assert any(k.startswith("train-demo-") for k in keys)
    promotion = _artifacts(f"promotion-{name}")[0]
    assert f"{name} v{v2['version']}" in promotion["data"]  # the latest decision, about v2
    assert ("promoted to production" in promotion["data"]) == v2["promoted"]


def _folder_digest(folder) -> dict[str, str]:
    """Every file under `folder` (relative path -> SHA-256 of its bytes)."""
    import hashlib
    from pathlib import Path

    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file()
    }


@pytest.mark.usefixtures("registry_backend")  # SQLite; PostgreSQL too with ATTRFLOW_TEST_PG_URL
def test_registering_a_challenger_leaves_the_champion_byte_for_byte(prefect_server, tmp_path):
    from flows.ingest import ingest_flow
    from flows.register import register_flow
    from flows.train import train_flow

    dataset = ingest_flow(str(write_demo_catalog(tmp_path / "catalog", n=120, seed=5)))["dataset_dir"]
    champion = train_flow(_tiny_config(tmp_path / "a.yaml", "text"), dataset)
    assert register_flow(champion["model_dir"], champion["run_id"], "shop", dataset)["promoted"]
    champion_dir = Registry().get_production("shop").artifact_dir
    before = _folder_digest(champion_dir)
    assert any(name.endswith("model.safetensors") for name in before)

    challenger = train_flow(_tiny_config(tmp_path / "b.yaml", "concat"), dataset)
    registered = register_flow(challenger["model_dir"], challenger["run_id"], "shop", dataset)
    assert registered["version"] == 2
    assert _folder_digest(champion_dir) == before  # the champion was scored again, and not touched
    # its report on the challenger's data was written outside the registry
    reports = list((tmp_path / "home" / "evaluations" / "shop" / "v1").glob("*/metrics.json"))
    assert len(reports) == 1


@pytest.mark.usefixtures("registry_backend")  # SQLite; PostgreSQL too with ATTRFLOW_TEST_PG_URL
def test_failed_training_is_recorded_and_leaves_no_model_version(prefect_server, tmp_path):
    from flows.pipeline import pipeline_flow

    spec = write_demo_catalog(tmp_path / "catalog", n=80, seed=3)
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "model": {
                    "text": {"name": "tiny-random"},
                    "image": {"name": "tiny-random", "image_size": [32, 32]},
                    "attributes": ["not_an_attribute"],
                }
            }
        )
    )
    state = pipeline_flow(str(spec), [str(bad)], model_name="broken", return_state=True)
    assert state.is_failed()
    runs = Registry().list_runs(kind="train")
    assert runs[0].status == "failed" and "not_an_attribute" in runs[0].error
    assert Registry().list_model_versions("broken") == []


def test_deployments_have_the_expected_schedules(prefect_server):
    from prefect.client.orchestration import get_client

    from flows.deployments import build_deployments

    deployments = build_deployments(
        spec="configs/catalogs/demo.yaml", configs=["configs/models/text.yaml"], cron="15 4 * * 2"
    )
    for d in deployments:
        d.apply()

    async def read():
        async with get_client() as client:
            return {
                name: await client.read_deployment_by_name(name)
                for name in ("pipeline/scheduled-retrain", "ingest/on-demand", "train/on-demand")
            }

    found = asyncio.run(read())
    crons = [s.schedule.cron for s in found["pipeline/scheduled-retrain"].schedules]
    assert crons == ["15 4 * * 2"]
    assert found["pipeline/scheduled-retrain"].parameters["configs"] == ["configs/models/text.yaml"]
    assert found["ingest/on-demand"].schedules == [] and found["train/on-demand"].schedules == []


def test_default_schedule_is_weekly(monkeypatch):
    from flows.deployments import DEFAULT_CRON, build_deployments

    monkeypatch.delenv("ATTRFLOW_RETRAIN_CRON", raising=False)
    by_name = {(d.flow_name, d.name): d for d in build_deployments()}
    pipeline = by_name[("pipeline", "scheduled-retrain")]
    assert [s.schedule.cron for s in pipeline.schedules] == [DEFAULT_CRON]
    assert DEFAULT_CRON.split()[2:] == ["*", "*", "1"]  # once a week
    assert json.dumps(pipeline.parameters)  # parameters are plain JSON


def test_pipeline_registers_extraction_models_with_the_promotion_rule(prefect_server, tmp_path):
    """An extraction config through the pipeline: a `train` run, versions in the registry with their
    value metrics and per-attribute thresholds, v2 compared with v1 on the same test values."""
    from flows.pipeline import pipeline_flow

    spec = write_demo_catalog(tmp_path / "catalog", n=150, seed=5)
    configs = []
    for i, lr in enumerate((1e-2, 5e-3)):
        path = tmp_path / f"extract{i}.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "attributes": ["category", "pattern"],
                    "model": {
                        "task": "extraction",
                        "text": {"name": "tiny-random", "max_length": 32},
                        "image": {"name": "tiny-random", "image_size": [32, 32]},
                        "category_input": False,
                        "frozen_text": True,
                        "context_layers": 1,
                        "global_visual_gate": True,
                    },
                    "training": {"epochs": 15, "batch_size": 16, "lr_head": lr},
                }
            )
        )
        configs.append(str(path))
    state = pipeline_flow(str(spec), configs, model_name="extract", return_state=True)
    assert state.is_completed(), state
    result = state.result()
    registry = Registry()
    v1, v2 = (registry.get_model_version("extract", v) for v in (1, 2))
    assert v1.metrics["task"] == "extraction" and set(v1.metrics["per_attribute"]) == {"category", "pattern"}
    assert set(v1.thresholds) == {"category", "pattern"}
    assert 0 <= v1.metrics["r_at_p95_mean"] <= 1 and v1.metrics["micro"]["f1"] > 0.3
    cmp = next(c for c in result["candidates"] if c["version"] == 2)["comparison"]
    assert cmp["candidate"] == pytest.approx(v2.metrics["r_at_p95_mean"])
    assert cmp["production"] == pytest.approx(v1.metrics["r_at_p95_mean"])
    assert registry.get_production("extract").version == (2 if cmp["interval"][0] > -cmp["margin"] else 1)
    production = registry.get_production("extract")
    # packaged too: a Bento of the extraction endpoint and the production version, served as it is
    import bentoml
    import httpx
    from helpers import bentoml_serve

    assert result["bento"] == f"attrflow-extract:v{production.version}"
    assert bentoml.bentos.get(result["bento"]).info.service == "serving.extraction:ExtractionService"
    env = {"ATTRFLOW_POLL_SECONDS": "0"}
    with bentoml_serve(result["bento"], env, tmp_path / "bento.log") as url:
        assert httpx.get(f"{url}/model", timeout=60).json()["version"] == production.version
        answer = httpx.post(f"{url}/extract", json={"title": "Lumen Sporty striped skirt"}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == {
            "name": "extract",
            "version": production.version,
            "dir": str(bentoml.models.get(f"attrflow-extract:v{production.version}").path),
        }
