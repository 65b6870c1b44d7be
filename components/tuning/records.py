"""What a search keeps about its trials: a TrialRecord per trial, the SearchResult, and the Ray
callbacks that fill them (and mirror every trial into the registry, from the driver)."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from components.tuning.space import SearchSpec, build_train_config
from components.tuning.trainable import REPORTED


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

    @property
    def node_id(self) -> str | None:
        """The Ray node the trial ran on (from its reports)."""
        return next((h["node_id"] for h in self.history if h.get("node_id")), None)

    def best(self, metric: str) -> float | None:
        values = [
            h[metric] for h in self.history if isinstance(h.get(metric), int | float) and not math.isnan(h[metric])
        ]
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
            "node_id": self.node_id,
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
            "trials": [
                {**t.summary(self.metric), "status": t.status, "run_id": t.run_id, "error": t.error}
                for t in self.trials
            ],
        }


def asha_class():
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


def recorder_class():
    from ray.tune import Callback

    class TrialRecorder(Callback):
        """Keeps a TrialRecord per trial and mirrors it into the registry (driver side)."""

        def __init__(
            self,
            spec: SearchSpec,
            scheduler,
            trials_dir: Path,
            registry_url: str | None,
            parent_run_id: int | None,
            dataset: tuple[str, str] | None,
        ):
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
                record.run_id = self.registry.start_run(
                    "tune-trial", config, self.dataset, parent_run_id=self.parent_run_id
                )

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
            if record.model_dir is None and not self.spec.keep_trial_models:  # stopped: its checkpoints are dead weight
                shutil.rmtree(self.trials_dir / trial.trial_id, ignore_errors=True)
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

        def on_experiment_end(self, trials, **info):
            if self._registry is not None:  # dispose the engine: under PostgreSQL it holds connections
                self._registry.close()
                self._registry = None

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


def records_from_results(grid, spec: SearchSpec, trials_dir: Path) -> list[TrialRecord]:
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


def record_after(records, spec, registry_url, parent_run_id, dataset_key) -> None:
    from components.registry import Registry

    with Registry(registry_url) as registry:
        for r in records:
            config = {
                "trial_id": r.trial_id,
                "params": r.params,
                "mode": spec.mode,
                "metric": spec.metric,
                "search": spec.source,
                **build_train_config(spec, r.params).model_dump(mode="json"),
            }
            r.run_id = registry.start_run("tune-trial", config, dataset_key, parent_run_id=parent_run_id)
            for epoch in r.history:
                registry.log_epoch(r.run_id, epoch)
            if r.status == "failed":
                registry.fail_run(r.run_id, r.error or "failed")
            else:
                registry.finish_run(r.run_id, r.summary(spec.metric))
