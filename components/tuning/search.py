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
import math
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from components.catalog.dataset import Dataset
from components.settings import get_settings
from components.tuning.space import SearchSpec, build_train_config, define_by_run
from components.tuning.trainable import REPORTED, TrialContext, run_trial

# Ray must not phone home, start a dashboard or write TensorBoard files for every trial.
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_USAGE_STATS_PROMPT_ENABLED": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_AIR_NEW_OUTPUT": "1",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
}


@dataclass
class TrialRecord:
    trial_id: str
    params: dict[str, Any]
    status: str = "running"  # running | completed | failed (stopped_early marks ASHA's stops)
    stopped_early: bool = False  # stopped by ASHA
    interrupted: bool = False  # ended by the search's time budget (or a stop) before its last epoch
    history: list[dict[str, Any]] = field(default_factory=list)
    run_id: int | None = None  # registry run, when recorded
    error: str | None = None
    model_dir: str | None = None  # set for trials that trained to their end
    best_epoch: int | None = None

    def best(self, metric: str) -> float | None:
        values = [h[metric] for h in self.history if isinstance(h.get(metric), int | float) and not math.isnan(h[metric])]
        return max(values) if values else None

    def summary(self, metric: str) -> dict[str, Any]:
        """The final metrics a registry run carries."""
        last = self.history[-1] if self.history else {}
        return {
            "metric": metric,
            "best": self.best(metric),
            "best_epoch": self.best_epoch or _argmax_epoch(self.history, metric),
            "epochs_run": len(self.history),
            "last": {k: last.get(k) for k in REPORTED if k in last},
            "stopped_early": self.stopped_early,
            "interrupted": self.interrupted,
            "trial_id": self.trial_id,
            "params": self.params,
            **({"model_dir": self.model_dir} if self.model_dir else {}),
        }


def _argmax_epoch(history: list[dict], metric: str) -> int | None:
    scored = [(h[metric], h["epoch"]) for h in history if isinstance(h.get(metric), int | float)]
    return max(scored, key=lambda x: (x[0], -x[1]))[1] if scored else None


@dataclass
class SearchResult:
    spec: SearchSpec
    metric: str
    trials: list[TrialRecord]
    out_dir: Path
    seconds: float
    best: TrialRecord | None = None

    def ranked(self) -> list[TrialRecord]:
        """Trials with at least one report, best first (ties: fewer epochs first)."""
        scored = [t for t in self.trials if t.best(self.metric) is not None]
        return sorted(scored, key=lambda t: (-t.best(self.metric), len(t.history)))

    def counts(self) -> dict[str, int]:
        out = {"completed": 0, "stopped_early": 0, "interrupted": 0, "failed": 0}
        for t in self.trials:
            key = "stopped_early" if t.stopped_early else "interrupted" if t.interrupted else t.status
            out[key] = out.get(key, 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "seconds": self.seconds,
            "counts": self.counts(),
            "best": self.best.summary(self.metric) if self.best else None,
            "trials": [{**t.summary(self.metric), "status": t.status, "run_id": t.run_id, "error": t.error}
                       for t in self.trials],
        }


# --- Ray -----------------------------------------------------------------------------------------


def worker_env(home: Path | None = None) -> dict[str, str]:
    """What the trial workers need: ATTRFLOW_HOME as an absolute path, offline hubs, quiet Ray."""
    home = Path(home or get_settings().home).resolve()
    env = {**RAY_ENV, "ATTRFLOW_HOME": str(home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for name in ("ATTRFLOW_DB_URL", "ATTRFLOW_FASHION_DIR"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


@contextmanager
def ray_session(address: str | None = None, env: dict[str, str] | None = None) -> Iterator[None]:
    """A local Ray instance (all CPUs, no dashboard) started here and shut down after, or a
    connection to the cluster at `address` (ray://host:10001 or auto). Reuses one already up."""
    for k, v in RAY_ENV.items():
        os.environ.setdefault(k, v)
    import ray

    if ray.is_initialized():
        yield
        return
    runtime_env = {"env_vars": env or worker_env()}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, runtime_env=runtime_env, log_to_driver=True)
    try:
        yield
    finally:
        ray.shutdown()


def _gpus_available() -> bool:
    import ray

    if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0:
        return True
    import torch

    return torch.cuda.is_available()


# --- the shared embedding cache ----------------------------------------------------------------


def prepare_embeddings(spec: SearchSpec, dataset: Dataset, progress: bool = True) -> list[Path]:
    """Compute (or find) the frozen-encoder cache every trial will read; returns its files.

    Fusions that need token vectors (cross_attention) read the `-tokens` file; the others get a
    pooled-only file, derived from the tokens file when that exists (no encoding again, and no
    trial has to load gigabytes of token vectors it does not use).
    """
    from components.features.cache import cache_path, cached_encodings
    from components.models.encoders import ImageEncoder, TextEncoder
    from components.models.fusion import fusion_needs_tokens

    model = build_train_config(spec, {"fusion": spec.fusions[0]}).model
    text, image = TextEncoder(model.text), ImageEncoder(model.image)
    needs = {fusion_needs_tokens(f) for f in spec.fusions}
    files = []
    if True in needs:
        cached_encodings(dataset, text, image, with_tokens=True, progress=progress)
        files.append(cache_path(dataset, text, image, True))
    if False in needs:
        pooled, tokens = cache_path(dataset, text, image, False), cache_path(dataset, text, image, True)
        if not pooled.is_file() and tokens.is_file():
            from safetensors import safe_open
            from safetensors.torch import save_file

            with safe_open(str(tokens), framework="pt") as f:
                parts = {k: f.get_tensor(k) for k in ("text", "image", "has_image")}
            tmp = pooled.with_suffix(f".tmp{os.getpid()}")
            save_file(parts, str(tmp))
            tmp.replace(pooled)
        elif not pooled.is_file():
            cached_encodings(dataset, text, image, with_tokens=False, progress=progress)
        files.append(pooled)
    return files


# --- recording trials --------------------------------------------------------------------------


def _asha_class():
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class RecordingASHA(ASHAScheduler):
        """ASHA that remembers at which iteration it stopped each trial."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.stopped_at: dict[str, int] = {}

        def on_trial_result(self, tune_controller, trial, result):
            decision = super().on_trial_result(tune_controller, trial, result)
            if decision == TrialScheduler.STOP:
                self.stopped_at[trial.trial_id] = int(result.get("training_iteration", 0))
            return decision

    return RecordingASHA


def _recorder_class():
    from ray.tune import Callback

    class TrialRecorder(Callback):
        """Keeps a TrialRecord per trial and mirrors it into the registry (driver side)."""

        def __init__(self, spec: SearchSpec, scheduler, trials_dir: Path, registry_url: str | None,
                     parent_run_id: int | None, dataset: tuple[str, str] | None):
            self.spec, self.scheduler, self.trials_dir = spec, scheduler, trials_dir
            self.registry_url, self.parent_run_id, self.dataset = registry_url, parent_run_id, dataset
            self.records: dict[str, TrialRecord] = {}
            self._registry = None

        def __getstate__(self):  # Ray saves its experiment state; a database engine does not pickle
            state = self.__dict__.copy()
            state["_registry"] = None
            return state

        @property
        def registry(self):
            if self._registry is None and self.registry_url is not None:
                from components.registry import Registry

                self._registry = Registry(self.registry_url)
            return self._registry

        def on_trial_start(self, iteration, trials, trial, **info):
            if trial.trial_id in self.records:
                return
            params = {k: v for k, v in trial.config.items()}
            record = self.records[trial.trial_id] = TrialRecord(trial.trial_id, params)
            if self.registry is not None:
                config = {
                    "trial_id": trial.trial_id,
                    "params": params,
                    "mode": self.spec.mode,
                    "metric": self.spec.metric,
                    "search": self.spec.source,
                    **build_train_config(self.spec, params).model_dump(mode="json"),
                }
                record.run_id = self.registry.start_run("tune-trial", config, self.dataset,
                                                        parent_run_id=self.parent_run_id)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            record = self.records.get(trial.trial_id)
            if record is None:
                return
            epoch = {k: result[k] for k in REPORTED if k in result}
            if not epoch:
                return
            record.history.append(epoch)
            if record.run_id is not None:
                self.registry.log_epoch(record.run_id, epoch)

        def on_trial_complete(self, iteration, trials, trial, **info):
            record = self.records.get(trial.trial_id)
            if record is None:
                return
            planned = build_train_config(self.spec, record.params).training.epochs
            stopped = self.scheduler.stopped_at.get(trial.trial_id)
            record.stopped_early = stopped is not None and stopped < planned
            record.status = "completed"
            done = self.trials_dir / trial.trial_id / "trial.json"
            if done.is_file() and not record.stopped_early:
                record.model_dir = str(done.parent)
                record.best_epoch = json.loads(done.read_text())["best_epoch"]
            record.interrupted = not record.stopped_early and record.model_dir is None
            if record.run_id is not None:
                self.registry.finish_run(record.run_id, record.summary(self.spec.metric))

        def close_unfinished(self) -> None:
            """Trials the search ended without a word (time budget reached): completed, interrupted."""
            for record in self.records.values():
                if record.status == "running":
                    record.status, record.interrupted = "completed", True
                    if record.run_id is not None:
                        self.registry.finish_run(record.run_id, record.summary(self.spec.metric))

        def on_trial_error(self, iteration, trials, trial, **info):
            record = self.records.get(trial.trial_id)
            if record is None:
                return
            record.status = "failed"
            record.error = _error_text(trial)
            if record.run_id is not None:
                self.registry.fail_run(record.run_id, record.error)

    return TrialRecorder


def _error_text(trial) -> str:
    """The trial's exception, from the error file Tune just wrote in the driver's trial folder."""
    try:
        text = Path(trial.error_file).read_text() if trial.error_file else ""
    except OSError:
        text = ""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("Failure #")]
    # Ray wraps the worker's traceback; its last line is the exception itself.
    last = lines[-1].strip() if lines else "trial failed (no error recorded)"
    return (last + ("\n\n" + "\n".join(lines[-40:]) if len(lines) > 1 else ""))[-4000:]


def _ray_client() -> bool:
    import ray

    return bool(ray.util.client.ray.is_connected())


def _records_from_results(grid, spec: SearchSpec, trials_dir: Path) -> list[TrialRecord]:
    """TrialRecords from a ResultGrid (Ray Client mode). A trial counts as stopped early when it
    reported fewer epochs than planned and did not write its trial.json (not visible without
    a file system shared with the workers: then it is the epoch count alone)."""
    records = []
    for result in grid:
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name.split("_")[2]
        params = {k: v for k, v in (result.config or {}).items()}
        history = []
        if result.metrics_dataframe is not None:
            for row in result.metrics_dataframe.to_dict("records"):
                history.append({k: row[k] for k in REPORTED if k in row and not pd.isna(row[k])})
        record = TrialRecord(trial_id, params, history=history)
        if result.error is not None:
            record.status, record.error = "failed", f"{type(result.error).__name__}: {result.error}"[-4000:]
        else:
            record.status = "completed"
            done = trials_dir / trial_id / "trial.json"
            planned = build_train_config(spec, params).training.epochs
            record.stopped_early = not done.is_file() and len(history) < planned
            record.interrupted = not done.is_file() and not record.stopped_early
            if done.is_file():
                record.model_dir, record.best_epoch = str(done.parent), json.loads(done.read_text())["best_epoch"]
        records.append(record)
    return records


def _record_after(records, spec, registry_url, parent_run_id, dataset_key) -> None:
    from components.registry import Registry

    registry = Registry(registry_url)
    for r in records:
        config = {"trial_id": r.trial_id, "params": r.params, "mode": spec.mode, "metric": spec.metric,
                  "search": spec.source, **build_train_config(spec, r.params).model_dump(mode="json")}
        r.run_id = registry.start_run("tune-trial", config, dataset_key, parent_run_id=parent_run_id)
        for epoch in r.history:
            registry.log_epoch(r.run_id, epoch)
        if r.status == "failed":
            registry.fail_run(r.run_id, r.error or "failed")
        else:
            registry.finish_run(r.run_id, r.summary(spec.metric))


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
            gpus = 1 if spec.mode == "finetune" and _gpus_available() else 0
        context = TrialContext(spec, str(Path(dataset.path).resolve()), env["ATTRFLOW_HOME"], str(trials_dir), env)
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, context=context),
            {"cpu": spec.resources.cpus_per_trial, "gpu": gpus},
        )
        searcher = OptunaSearch(space=define_by_run(spec), metric=spec.metric, mode="max", seed=spec.seed)
        if spec.max_concurrent_trials:
            searcher = ConcurrencyLimiter(searcher, max_concurrent=spec.max_concurrent_trials)
        scheduler = _asha_class()(
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
        client = _ray_client()
        recorder = _recorder_class()(spec, scheduler, trials_dir, None if client else registry_url, parent_run_id,
                                     dataset_key)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=spec.metric,
                mode="max",
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=trials or spec.trials,
                time_budget_s=spec.time_budget_s,
                reuse_actors=True,  # a worker keeps torch, the encoders' code and the dataset loaded
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
            records = _records_from_results(grid, spec, trials_dir)
            if registry_url:
                _record_after(records, spec, registry_url, parent_run_id, dataset_key)

    result = SearchResult(spec, spec.metric, records, out_dir, time.perf_counter() - start)
    finished = [t for t in result.ranked() if t.model_dir]
    result.best = finished[0] if finished else None
    if not spec.keep_trial_models:
        for t in records:
            if t is not result.best:
                shutil.rmtree(trials_dir / t.trial_id, ignore_errors=True)
                t.model_dir = None
    (out_dir / "search.json").write_text(json.dumps(result.to_json(), indent=1, default=str))
    return result


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
    from safetensors.torch import save_file

    from components.features.cache import cache_path, cached_encodings
    from components.models.encoders import ImageEncoder, TextEncoder
    from components.models.fusion import fusion_needs_tokens

    text, image = TextEncoder(cfg.model.text), ImageEncoder(cfg.model.image)
    tokens = fusion_needs_tokens(cfg.model.fusion.name)
    target = cache_path(derived, text, image, tokens)
    if target.is_file():
        return
    enc = cached_encodings(dataset, text, image, with_tokens=tokens, progress=False)
    order = torch.as_tensor(np.concatenate([np.arange(len(dataset.items)),
                                            np.flatnonzero(dataset.items["split"].to_numpy() == "validation")]))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    save_file({k: v[order].contiguous() for k, v in enc.tensors().items()}, str(tmp))
    tmp.replace(target)
