"""Hyperparameter search: a real Ray Tune run (local Ray, tiny random encoders, a tiny demo
catalog) through the Prefect `tune` flow, and search-space files that fail before Ray starts."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from components.catalog import ingest, load_dataset, load_spec
from components.catalog.demo import write_demo_catalog
from components.registry import Registry
from components.tuning import build_train_config, load_search
from components.tuning.space import define_by_run

TINY = {
    "model": {
        "text": {"name": "tiny-random", "max_length": 24},
        "image": {"name": "tiny-random", "image_size": [32, 32]},
        "head": {"hidden": 16},
        "lexical": {"buckets": 256, "dim": 8},  # kept for text-reading fusions, dropped for cross_attention
    },
    "training": {"batch_size": 32, "patience": 10},
}


def test_trial_configs_keep_the_lexical_channel_only_where_the_fusion_reads_pooled_text(tmp_path):
    spec = load_search(
        _search_file(
            tmp_path / "s.yaml",
            parameters={"fusion": {"type": "choice", "values": ["text", "image", "cross_attention"]}},
        )
    )
    assert build_train_config(spec, {"fusion": "text"}).model.lexical.dim == 8
    assert build_train_config(spec, {"fusion": "image"}).model.lexical is None
    assert build_train_config(spec, {"fusion": "cross_attention"}).model.lexical is None


def _search_file(path, **changes) -> str:
    raw = {
        "overrides": TINY,
        "metric": "f1_macro",
        "trials": 8,
        "seed": 0,
        # grace period 1 and halving: every trial that is worse than the median at epoch 1 or 2 stops there
        "asha": {"grace_period": 1, "reduction_factor": 2},
        "full_budget_top": 0,  # the second stage has its own test
        "parameters": {
            "fusion": {"type": "choice", "values": ["text", "concat", "modality_attention", "cross_attention"]},
            "lambda_kl": {"type": "loguniform", "low": 1e-3, "high": 1.0},
            "lr_head": {"type": "loguniform", "low": 1e-6, "high": 1e-2},  # wide: some trials learn nothing
            "weight_decay": {"type": "loguniform", "low": 1e-4, "high": 1e-1},
            "epochs": 3,
        },
        **changes,
    }
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _spy_on_ray(monkeypatch) -> list[str]:
    """Records every ray.init / ray.shutdown call (and still makes it), in order."""
    import ray

    calls: list[str] = []
    for name in ("init", "shutdown"):
        real = getattr(ray, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(ray, name, spy)
    return calls


def _artifacts(key_like: str) -> list[dict]:
    import httpx
    from prefect.settings import PREFECT_API_URL

    body = {"artifacts": {"key": {"like_": key_like}}, "limit": 50, "sort": "CREATED_DESC"}
    response = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter", json=body)
    response.raise_for_status()
    return response.json()


@pytest.mark.slow
@pytest.mark.usefixtures("registry_backend")  # SQLite; PostgreSQL too with ATTRFLOW_TEST_PG_URL
def test_tune_flow_records_every_trial_and_registers_the_best(prefect_server, tmp_path, monkeypatch):
    import ray

    from flows.tune import tune_flow

    ray_calls = _spy_on_ray(monkeypatch)
    spec = write_demo_catalog(tmp_path / "catalog", n=150, seed=2)
    search = _search_file(tmp_path / "search.yaml")
    state = tune_flow(str(spec), search, model_name="tuned", retrain=True, return_state=True)
    assert state.is_completed(), state
    result = state.result()
    # The flow started a local Ray instance and shut it down again.
    assert ray_calls[0] == "init" and ray_calls[-1] == "shutdown" and not ray.is_initialized()

    registry = Registry()
    parent = registry.get_run(result["run_id"])
    assert parent.kind == "tune" and parent.status == "completed"
    trials = registry.list_runs(kind="tune-trial")
    assert len(trials) == 8 == len(result["trials"])
    assert all(r.parent_run_id == parent.id and r.status == "completed" for r in trials)
    for r in trials:
        assert len(r.epoch_metrics) == r.metrics["epochs_run"] >= 1  # every epoch reported and logged
        assert {"epoch", "f1_macro", "r_at_p95", "train_loss"} <= set(r.epoch_metrics[0])
        assert r.config["params"]["fusion"] == r.config["model"]["fusion"]["name"]
        # lambda is searched only where it means something
        assert ("lambda_kl" in r.config["params"]) == (r.config["params"]["fusion"] == "modality_attention")
    stopped = [r for r in trials if r.metrics["stopped_early"]]
    assert stopped, "ASHA stopped no trial"
    assert all(r.metrics["epochs_run"] < 3 for r in stopped)
    assert all(r.metrics["epochs_run"] == 3 for r in trials if not r.metrics["stopped_early"])

    # The best finished trial, retrained on train + validation, is version 1 (and production: the first).
    best = max((r for r in trials if not r.metrics["stopped_early"]), key=lambda r: r.metrics["best"])
    assert result["best_run_id"] == best.id
    retrain = registry.list_runs(kind="tune-retrain")
    assert len(retrain) == 1 and retrain[0].parent_run_id == parent.id and retrain[0].status == "completed"
    versions = registry.list_model_versions("tuned")
    assert [v.version for v in versions] == [1] and versions[0].run_id == retrain[0].id
    assert versions[0].stage == "production" and versions[0].metrics["split"] == "test"

    leaderboard = _artifacts("tune-tuned")
    assert leaderboard and best.config["trial_id"] in leaderboard[0]["data"]
    assert "stopped early" in leaderboard[0]["data"]
    plot = _artifacts("tune-plot-tuned")[0]["data"]
    assert result["plot"] in plot and result["plot"].endswith(".png")
    from pathlib import Path

    assert Path(result["plot"]).stat().st_size > 0 and Path(result["leaderboard"]).is_file()


@pytest.mark.slow
# SQLite only (30 s a backend): a failed trial is stored by the same registry code as a finished one,
# which test_tune_flow_records_every_trial_and_registers_the_best runs on PostgreSQL too.
@pytest.mark.parametrize("registry_backend", ["sqlite"], indirect=True)
@pytest.mark.usefixtures("registry_backend")
def test_failed_trials_are_recorded_with_their_error(tmp_path, monkeypatch):
    import ray

    ray_calls = _spy_on_ray(monkeypatch)
    from components.catalog import ingest, load_dataset, load_spec
    from components.tuning import run_search

    spec = write_demo_catalog(tmp_path / "catalog", n=60, seed=4)
    dataset = load_dataset(ingest(load_spec(spec)).dataset_dir)
    overrides = {**TINY, "model": {**TINY["model"], "attributes": ["not_an_attribute"]}}  # fails in every trial
    search = load_search(_search_file(tmp_path / "search.yaml", overrides=overrides, trials=2))
    registry = Registry()
    registry.register_dataset(dataset.name, dataset.version, str(dataset.path), dataset.manifest)
    parent = registry.start_run("tune", {}, (dataset.name, dataset.version))
    result = run_search(search, dataset, tmp_path / "out", registry_url=registry.url, parent_run_id=parent)
    assert ray_calls[0] == "init" and ray_calls[-1] == "shutdown" and not ray.is_initialized()
    assert result.best is None and result.counts() == {
        "completed": 0,
        "stopped_early": 0,
        "interrupted": 0,
        "failed": 2,
    }
    runs = registry.list_runs(kind="tune-trial")
    assert len(runs) == 2 and all(r.status == "failed" and r.parent_run_id == parent for r in runs)
    assert all("not_an_attribute" in r.error.splitlines()[0] for r in runs)


def test_bad_search_file_fails_before_ray_starts(tmp_path, monkeypatch):
    from flows.tune import tune_flow

    ray_calls = _spy_on_ray(monkeypatch)
    bad = _search_file(tmp_path / "bad.yaml", parameters={"lr_head": {"type": "loguniform", "low": 0, "high": 1e-2}})
    with pytest.raises(ValueError, match=r"bad\.yaml: invalid search space: parameters\.lr_head\.low"):
        tune_flow.fn(str(tmp_path / "no-dataset"), bad)  # the flow's body, without a Prefect server
    assert ray_calls == []  # Ray was never started
    assert Registry().list_runs() == []

    unknown = _search_file(
        tmp_path / "unknown.yaml", parameters={"fusion": {"type": "choice", "values": ["text", "mlp"]}}
    )
    from attrflow.cli import app

    out = CliRunner().invoke(app, ["tune", str(tmp_path), unknown])
    assert out.exit_code == 2
    assert "unknown.yaml: invalid search space: parameters.fusion: unknown fusion 'mlp'" in out.output
    assert ray_calls == []


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"lr_text": {"type": "loguniform", "low": 1e-6, "high": 1e-4}}, "parameters.lr_text: encoder learning rates"),
        ({"epochs": {"type": "int", "low": 5, "high": 2}}, "parameters.epochs: low (5) must not exceed high (2)"),
        ({"epochs": {"type": "int", "low": 0, "high": 2}}, "parameters.epochs: needs whole numbers >= 1"),
        ({"lr_head": {"type": "gaussian", "low": 1, "high": 2}}, "parameters.lr_head: expected a number"),
        ({"fusion": "text", "lambda_kl": 0.1}, "parameters.lambda_kl: only used by modality_attention"),
        ({"dropout_rate": 0.1}, "parameters.dropout_rate: Extra inputs are not permitted"),
    ],
)
def test_search_space_errors_name_the_file_and_field(tmp_path, parameters, message):
    path = _search_file(tmp_path / "space.yaml", parameters=parameters)
    with pytest.raises(ValueError, match="space.yaml: invalid search space") as e:
        load_search(path)
    assert message in str(e.value)


def test_default_search_space_and_conditional_lambda():
    import optuna

    spec = load_search("configs/search/default.yaml")
    assert spec.mode == "frozen" and spec.metric == "r_at_p95"
    assert set(spec.fusions) == {"text", "image", "concat", "late", "cross_attention", "modality_attention"}
    space = define_by_run(spec)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        space(trial)
        params = trial.params
        seen.add(params["fusion"])
        assert ("lambda_kl" in params) == (params["fusion"] == "modality_attention")
        cfg = build_train_config(spec, params)
        assert cfg.training.frozen and cfg.training.monitor == "r_at_p95"
        assert cfg.model.fusion.name == params["fusion"] and cfg.training.lr_head == params["lr_head"]
        if "lambda_kl" in params:
            assert cfg.model.fusion.lambda_kl == params["lambda_kl"]
        study.tell(trial, 0.0)
    assert len(seen) >= 4


def test_tune_deployment_is_on_demand():
    from flows.deployments import build_deployments

    tune = [d for d in build_deployments() if d.flow_name == "tune"]
    assert [d.name for d in tune] == ["on-demand"] and tune[0].schedules == []
    assert tune[0].parameters["search"] == "configs/search/default.yaml"


def test_full_budget_stage_retrains_the_top_configurations_for_the_largest_epoch_budget(tmp_path):
    """The second stage of a search: a configuration cut short (by ASHA, or sampled with few
    epochs) trains again for the search's largest `epochs`, recorded like a trial."""
    from components.tuning.records import TrialRecord
    from components.tuning.search import full_budget_stage

    spec_path = write_demo_catalog(tmp_path / "catalog", n=120, seed=4)
    dataset = load_dataset(ingest(load_spec(spec_path)).dataset_dir)
    spec = load_search(
        _search_file(
            tmp_path / "search.yaml", parameters={"fusion": "text", "epochs": {"type": "int", "low": 1, "high": 4}}
        )
    )
    registry = Registry()
    registry.register_dataset(dataset.name, dataset.version, dataset.path, dataset.manifest)
    parent = registry.start_run("tune", {}, None)
    cut = TrialRecord(trial_id="t1", params={"fusion": "text", "epochs": 1, "lr_head": 1e-3}, stopped_early=True)
    out = full_budget_stage(spec, dataset, [cut], tmp_path / "trials", registry.url, parent)
    (full,) = out
    assert full.trial_id == "t1-full" and full.params["epochs"] == 4 and full.status == "completed"
    assert 1 <= len(full.history) <= 4 and full.best("f1_macro") is not None
    assert (tmp_path / "trials" / "t1-full" / "model.safetensors").is_file()
    run = registry.get_run(full.run_id)
    assert run.kind == "tune-trial" and run.parent_run_id == parent and run.status == "completed"
    assert run.config["params"]["epochs"] == 4
    # With values of its own (`full_budget`), the second stage trains with them.
    spec.full_budget = {"epochs": 2, "batch_size": 16, "head_hidden": 32, "image_dropout": 0.5}
    (own,) = full_budget_stage(spec, dataset, [cut], tmp_path / "trials2", None, None)
    assert own.params["epochs"] == 2 and own.params["head_hidden"] == 32 and len(own.history) <= 2
    saved = json.loads((tmp_path / "trials2" / "t1-full" / "config.json").read_text())
    assert saved["model"]["head"]["hidden"] == 32 and saved["training"]["batch_size"] == 16
    assert saved["training"]["image_dropout"] == 0.5


def test_start_points_must_name_the_searched_parameters(tmp_path):
    """A start point is a whole configuration of the searched parameters (lambda_kl only with
    modality_attention); anything else fails when the file is read, naming the field."""
    base = {
        "parameters": {
            "fusion": {"type": "choice", "values": ["text", "modality_attention"]},
            "lambda_kl": {"type": "loguniform", "low": 1e-3, "high": 1.0},
            "lr_head": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
            "epochs": 2,
        }
    }
    good = [{"fusion": "text", "lr_head": 1e-3}, {"fusion": "modality_attention", "lambda_kl": 0.1, "lr_head": 1e-3}]
    spec = load_search(_search_file(tmp_path / "ok.yaml", start_points=good, **base))
    assert spec.start_points == good
    for bad, says in [
        ([{"fusion": "text"}], "start_points"),  # lr_head missing
        (
            [{"fusion": "text", "lr_head": 1e-3, "lambda_kl": 0.1}],
            "start_points",
        ),  # lambda_kl without modality_attention
        ([{"fusion": "text", "lr_head": 1e-3, "dropout": 0.1}], "unknown parameters"),
    ]:
        with pytest.raises(ValueError, match=says):
            load_search(_search_file(tmp_path / "bad.yaml", start_points=bad, **base))
    with pytest.raises(ValueError, match="full_budget"):
        load_search(_search_file(tmp_path / "bad2.yaml", full_budget={"epoch": 3}, **base))
