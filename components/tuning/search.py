"""The search driver: Optuna proposes, ASHA stops early, Ray Tune runs the trials.

    spec = load_search("configs/search/default.yaml")
    result = run_search(spec, load_dataset(path), out_dir)          # local Ray, started and shut down here
    result = run_search(spec, ds, out_dir, address="ray://head:10001")  # an existing cluster

In frozen mode the embedding cache is computed (or found) once here, in the driver, before
Ray starts; every trial then loads it from ATTRFLOW_HOME (passed to the workers as an
absolute path). With a registry URL every trial is recorded as a `tune-trial` run
(child of `parent_run_id`) as it starts, reports and ends: from the driver, so the
workers never touch the database.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pandas as pd

from components.catalog.dataset import Dataset
from components.tuning.ray_runtime import gpus_available, ray_client, ray_session, worker_env
from components.tuning.records import (
    SearchResult,
    TrialRecord,
    asha_class,
    record_after,
    recorder_class,
    records_from_results,
)
from components.tuning.space import SearchSpec, build_train_config, define_by_run
from components.tuning.trainable import TrialContext, run_trial

# --- the shared embedding cache ----------------------------------------------------------------


def prepare_embeddings(spec: SearchSpec, dataset: Dataset, progress: bool = True) -> list[Path]:
    """Compute (or find) the frozen-encoder cache every trial will read; returns its files.

    Fusions that need token vectors (cross_attention) read the `-tokens` file; the others the
    pooled-only file (`cached_encodings` derives it from the token file, so nothing is encoded
    twice and no trial loads gigabytes of token vectors it does not use).
    """
    from components.features.cache import cache_path, cached_encodings
    from components.models.encoders import ImageEncoder, TextEncoder
    from components.models.fusion import fusion_needs_tokens

    model = build_train_config(spec, {"fusion": spec.fusions[0]}).model
    text, image = TextEncoder(model.text), ImageEncoder(model.image)
    files = []
    for with_tokens in sorted({fusion_needs_tokens(f) for f in spec.fusions}, reverse=True):  # tokens first
        cached_encodings(dataset, text, image, with_tokens=with_tokens, progress=progress)
        files.append(cache_path(dataset, text, image, with_tokens))
    return files


# --- the search --------------------------------------------------------------------------------


def run_search(
    spec: SearchSpec,
    dataset: Dataset,
    out_dir: str | Path,
    address: str | None = None,
    trials: int | None = None,
    registry_url: str | None = None,
    parent_run_id: int | None = None,
    verbose: int = 0,
) -> SearchResult:
    """Run the search; every trial trains into `out_dir/trials/<trial id>/`.

    Only the best trial's folder is kept unless `spec.keep_trial_models`. With `registry_url`
    every trial is a `tune-trial` run (parent `parent_run_id`) of the registered `dataset`.
    """
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    start = time.perf_counter()
    out_dir = Path(out_dir).resolve()
    trials_dir = out_dir / "trials"
    trials_dir.mkdir(parents=True, exist_ok=True)
    if spec.mode == "frozen":
        prepare_embeddings(spec, dataset, progress=verbose > 0)

    env = worker_env()
    with ray_session(address, env):
        gpus = spec.resources.gpus_per_trial
        if gpus == "auto":
            gpus = 1 if spec.mode == "finetune" and gpus_available() else 0
        context = TrialContext(spec, str(Path(dataset.path).resolve()), env["ATTRFLOW_HOME"], str(trials_dir), env)
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, context=context),
            {"cpu": spec.resources.cpus_per_trial, "gpu": gpus},
        )
        searcher = OptunaSearch(
            space=define_by_run(spec),
            metric=spec.metric,
            mode="max",
            seed=spec.seed,
            points_to_evaluate=[dict(p) for p in spec.start_points] or None,
        )
        if spec.max_concurrent_trials:
            searcher = ConcurrencyLimiter(searcher, max_concurrent=spec.max_concurrent_trials)
        scheduler = asha_class()(
            time_attr="training_iteration",
            max_t=spec.max_epochs,
            grace_period=min(spec.asha.grace_period, spec.max_epochs),
            reduction_factor=spec.asha.reduction_factor,
            brackets=spec.asha.brackets,
            stop_last_trials=False,  # a trial that reaches its last epoch ends itself (and saves its model)
        )
        dataset_key = (dataset.name, dataset.version) if registry_url else None
        # Through Ray Client (ray://) Tune's driver loop, callbacks included, runs on the cluster's
        # head node: the trials are then recorded here after the search, from its results.
        client = ray_client()
        recorder = recorder_class()(
            spec, scheduler, trials_dir, None if client else registry_url, parent_run_id, dataset_key
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=spec.metric,
                mode="max",
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=trials or spec.trials,
                time_budget_s=spec.time_budget_s,
                reuse_actors=spec.reuse_actors,  # a worker keeps torch, the encoders' code and the dataset loaded
            ),
            run_config=tune.RunConfig(
                name="search",
                storage_path=str(out_dir / "ray"),
                callbacks=[recorder, JsonLoggerCallback()],  # result.json per trial (the automatic loggers are off)
                verbose=verbose,
                log_to_file=True,
            ),
        )
        grid = tuner.fit()
        recorder.close_unfinished()
        records = list(recorder.records.values())
        if client:
            records = records_from_results(grid, spec, trials_dir)
            if registry_url:
                record_after(records, spec, registry_url, parent_run_id, dataset_key)

    result = SearchResult(spec, spec.metric, records, out_dir, time.perf_counter() - start)
    finished = [t for t in result.ranked() if t.model_dir]
    result.best = finished[0] if finished else None
    if spec.full_budget_top and result.best is not None:
        # Only those that did not already train for the full budget to their end (all of them
        # when the second stage has values of its own).
        top = [
            t
            for t in result.ranked()[: spec.full_budget_top]
            if spec.full_budget
            or t.stopped_early
            or t.interrupted
            or int(t.params.get("epochs", spec.max_epochs)) < spec.max_epochs
        ]
        retrained = full_budget_stage(spec, dataset, top, trials_dir, registry_url, parent_run_id)
        records += retrained
        result.best = max([result.best, *retrained], key=lambda t: t.best(spec.metric) or -1.0)
        result.seconds = time.perf_counter() - start
    if not spec.keep_trial_models:
        for t in records:
            if t is not result.best:
                shutil.rmtree(trials_dir / t.trial_id, ignore_errors=True)
                t.model_dir = None
    (out_dir / "search.json").write_text(json.dumps(result.to_json(), indent=1, default=str))
    return result


# --- the second stage: the best configurations for their full epoch budget ----------------------


def full_budget_stage(
    spec: SearchSpec,
    dataset: Dataset,
    top: list[TrialRecord],
    trials_dir: Path,
    registry_url: str | None = None,
    parent_run_id: int | None = None,
) -> list[TrialRecord]:
    """Train each of `top`'s configurations again for the search's largest epoch budget (and the
    values of `spec.full_budget`), early stopping on validation as usual (in the driver, one after another). ASHA judges trials on
    their first epochs, which favours configurations that learn fast over those that end best.
    With a registry, each is a `tune-trial` run (child of `parent_run_id`) like the others."""
    from components.training.trainer import train

    registry = None
    if registry_url:
        from components.registry import Registry

        registry = Registry(registry_url)
    out = []
    try:
        for trial in top:
            params = {**trial.params, "epochs": spec.max_epochs, **spec.full_budget}
            record = TrialRecord(trial_id=f"{trial.trial_id}-full", params=params)
            if registry is not None:
                record.run_id = registry.start_run(
                    "tune-trial",
                    {"trial_id": record.trial_id, "params": params, "stage": "full budget"},
                    (dataset.name, dataset.version),
                    parent_run_id=parent_run_id,
                )
            try:
                result = train(build_train_config(spec, params), dataset, trials_dir / record.trial_id, progress=False)
            except Exception as e:  # a failed retrain leaves the search's own best in place
                record.status, record.error = "failed", f"{type(e).__name__}: {e}"
                if registry is not None:
                    registry.fail_run(record.run_id, record.error)
            else:
                shutil.rmtree(trials_dir / record.trial_id / "checkpoint", ignore_errors=True)
                record.history = [{"epoch": h["epoch"], **h["validation"]} for h in result.history]
                record.status, record.best_epoch = "completed", result.best_epoch
                record.model_dir = str(result.model_dir)
                if registry is not None:
                    registry.finish_run(record.run_id, record.summary(spec.metric))
            out.append(record)
    finally:
        if registry is not None:
            registry.close()
    return out


# --- retraining the best configuration on train + validation -------------------------------------


def retrain_on_train_validation(spec: SearchSpec, dataset: Dataset, best: TrialRecord, out_dir: str | Path):
    """Train the best trial's configuration on train + validation for its best number of epochs.

    The validation rows stay in the validation split too (the trainer needs one for its metrics
    and the publishing thresholds), so those thresholds are optimistic: judge the model on the
    test split, as the register flow does.
    """
    from components.training.trainer import train

    epochs = best.best_epoch or len(best.history) or spec.max_epochs
    cfg = build_train_config(spec, {**best.params, "epochs": epochs})
    cfg.training.patience = epochs + 1  # a fixed budget: no early stopping
    derived = _train_validation_dataset(dataset)
    if cfg.training.frozen:
        _derive_cache(spec, cfg, dataset, derived)
    return train(cfg, derived, out_dir, progress=False)


def _train_validation_dataset(dataset: Dataset) -> Dataset:
    items = dataset.items
    val = items[items["split"] == "validation"]
    merged = pd.concat([items.assign(split=items["split"].replace({"validation": "train"})), val], ignore_index=True)
    manifest = {**dataset.manifest, "version": f"{dataset.version}-trainval"}
    return Dataset(path=dataset.path, manifest=manifest, items=merged, vocab=dataset.vocab)


def _derive_cache(spec: SearchSpec, cfg, dataset: Dataset, derived: Dataset) -> None:
    """The derived dataset's rows are the original rows then the validation rows again: its cache
    is the original cache indexed the same way (no encoding)."""
    import numpy as np
    import torch

    from components.features.cache import cache_path, cached_encodings, save_atomic
    from components.models.encoders import ImageEncoder, TextEncoder
    from components.models.fusion import fusion_needs_tokens

    text, image = TextEncoder(cfg.model.text), ImageEncoder(cfg.model.image)
    tokens = fusion_needs_tokens(cfg.model.fusion.name)
    target = cache_path(derived, text, image, tokens)
    if target.is_file():
        return
    enc = cached_encodings(dataset, text, image, with_tokens=tokens, progress=False)
    order = torch.as_tensor(
        np.concatenate(
            [np.arange(len(dataset.items)), np.flatnonzero(dataset.items["split"].to_numpy() == "validation")]
        )
    )
    save_atomic({k: v[order].contiguous() for k, v in enc.tensors().items()}, target)
