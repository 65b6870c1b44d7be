"""The registry's API: datasets, runs, model versions, promotion and rollback, drift reports.

A model version is a copy of a trained model folder under
`ATTRFLOW_HOME/registry/models/<name>/<version>/` plus a `model_versions` row. The copy is
made first and the row committed last, so a version that has a row always has its files.
Stages: every version starts as `candidate`; at most one per name is `production`; the
production version it replaces becomes `archived`.

Every method runs in its own short transaction and returns plain records (see records.py).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from components.registry.database import make_engine, upgrade_to_head
from components.registry.records import (
    DatasetRecord,
    DriftReportRecord,
    ModelVersionRecord,
    PromotionDecision,
    RunRecord,
)
from components.registry.schema import Dataset, DriftReport, ModelVersion, Run, utcnow
from components.settings import get_settings

PRIMARY_METRIC = "r_at_p95_mean"  # the score promotions compare, unless told otherwise
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # model names become folder names
_CLAIM_ATTEMPTS = 50  # version-number races lost in a row before giving up


class RegistryError(ValueError):
    """A request the registry cannot satisfy: an unknown name or version, nothing to roll back to, ..."""


def _move_into_place(tmp: Path, final: Path) -> None:
    # Its own function so tests can inject a failure between the copy and the commit.
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(final, ignore_errors=True)  # left by a registration killed before its commit
    tmp.rename(final)


def _score(version: ModelVersion, metric: str) -> float | None:
    value = version.metrics.get(metric)
    return float(value) if isinstance(value, int | float) else None


class Registry:
    """The model registry on one database (default: the settings' URL, see `Settings.database_url`).

    Opening one brings the schema up to the latest migration (a no-op when it is already there).
    """

    def __init__(self, url: str | None = None) -> None:
        settings = get_settings()
        self.url = url or settings.database_url
        self.models_dir = (settings.home / "registry" / "models").resolve()
        self.engine = make_engine(self.url)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        upgrade_to_head(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- datasets ---------------------------------------------------------------------------

    def register_dataset(self, name: str, version: str, path: Path | str, manifest: dict[str, Any]) -> DatasetRecord:
        """Record a dataset version; registering the same (name, version) again returns the first record."""
        for _ in range(2):  # a second pass only when another process inserted it at the same moment
            try:
                with self._session.begin() as s:
                    row = s.scalar(select(Dataset).filter_by(name=name, version=version))
                    if row is None:
                        counts = manifest.get("counts", {})
                        row = Dataset(name=name, version=version, path=str(path), manifest=manifest, counts=counts)
                        s.add(row)
                        s.flush()
                    return DatasetRecord.model_validate(row)
            except IntegrityError:
                continue
        raise RegistryError(f"could not register dataset {name} {version}")

    def dataset_of_version(self, name: str, version: int) -> DatasetRecord | None:
        """The dataset the version's run trained on (None when the run recorded none)."""
        with self._session() as s:
            row = s.scalar(
                select(Dataset)
                .join(Run, Run.dataset_id == Dataset.id)
                .join(ModelVersion, ModelVersion.run_id == Run.id)
                .filter(ModelVersion.name == name, ModelVersion.version == version)
            )
            return DatasetRecord.model_validate(row) if row else None

    # --- runs ---------------------------------------------------------------------------------

    def start_run(
        self,
        kind: str,
        config: dict[str, Any],
        dataset: tuple[str, str] | None = None,
        flow_run_id: str | None = None,
        parent_run_id: int | None = None,
    ) -> int:
        """Record a run as `running`; `dataset` is a registered (name, version). Returns the run id."""
        with self._session.begin() as s:
            dataset_id = None
            if dataset is not None:
                dataset_id = s.scalar(select(Dataset.id).filter_by(name=dataset[0], version=dataset[1]))
                if dataset_id is None:
                    raise RegistryError(f"unknown dataset {dataset[0]} {dataset[1]} (register it first)")
            run = Run(
                kind=kind,
                status="running",
                config=config,
                dataset_id=dataset_id,
                epoch_metrics=[],
                flow_run_id=flow_run_id,
                parent_run_id=parent_run_id,
            )
            s.add(run)
            s.flush()
            return run.id

    def log_epoch(self, run_id: int, metrics: dict[str, Any]) -> None:
        with self._session.begin() as s:
            run = self._locked_run(s, run_id)
            run.epoch_metrics = [*run.epoch_metrics, metrics]  # a new list: JSON columns miss in-place changes

    def finish_run(self, run_id: int, metrics: dict[str, Any] | None = None) -> None:
        """Mark the run completed, with its final metrics (None keeps the ones stored)."""
        with self._session.begin() as s:
            run = self._locked_run(s, run_id)
            run.status, run.ended_at = "completed", utcnow()
            if metrics is not None:
                run.metrics = metrics

    def fail_run(self, run_id: int, error: str) -> None:
        with self._session.begin() as s:
            run = self._locked_run(s, run_id)
            run.status, run.ended_at, run.error = "failed", utcnow(), error

    @contextmanager
    def run(
        self,
        kind: str,
        config: dict[str, Any],
        dataset: tuple[str, str] | None = None,
        flow_run_id: str | None = None,
        parent_run_id: int | None = None,
    ) -> Iterator[int]:
        """`with registry.run("train", cfg) as run_id:` marks the run failed (with the exception
        text, then re-raises) if the block raises, else completed (unless the block ended it)."""
        run_id = self.start_run(kind, config, dataset, flow_run_id, parent_run_id)
        try:
            yield run_id
        except BaseException as e:  # KeyboardInterrupt too: the run did not complete
            self.fail_run(run_id, f"{type(e).__name__}: {e}")
            raise
        run = self.get_run(run_id)
        if run is not None and run.status == "running":
            self.finish_run(run_id)

    def get_run(self, run_id: int) -> RunRecord | None:
        with self._session() as s:
            run = s.get(Run, run_id)
            return RunRecord.model_validate(run) if run else None

    def list_runs(self, kind: str | None = None, limit: int = 50) -> list[RunRecord]:
        """The most recent runs first."""
        query = select(Run).order_by(Run.id.desc()).limit(limit)
        if kind is not None:
            query = query.filter_by(kind=kind)
        with self._session() as s:
            return [RunRecord.model_validate(r) for r in s.scalars(query)]

    @staticmethod
    def _locked_run(s: Session, run_id: int) -> Run:
        run = s.get(Run, run_id, with_for_update=True)
        if run is None:
            raise RegistryError(f"no run with id {run_id}")
        return run

    # --- model versions -----------------------------------------------------------------------

    def register_model_version(
        self, name: str, run_id: int, source_dir: Path, metrics: dict[str, Any], thresholds: dict[str, Any]
    ) -> ModelVersionRecord:
        """Copy the model folder into the registry as the next version of `name` (a candidate).

        On any failure nothing stays behind: no row, no folder.
        """
        if not _NAME.match(name):
            raise RegistryError(f"invalid model name {name!r}: use letters, digits, _ . - (not first)")
        source_dir = Path(source_dir)
        if not source_dir.is_dir():
            raise RegistryError(f"model folder {source_dir} does not exist")
        # Copy outside any transaction (it can be slow), next to the final place so the move is a rename.
        incoming = self.models_dir / ".incoming"
        incoming.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=incoming))
        try:
            shutil.copytree(source_dir, tmp, dirs_exist_ok=True)
            for _ in range(_CLAIM_ATTEMPTS):
                record = self._claim_version(name, run_id, tmp, metrics, thresholds)
                if record is not None:
                    return record
            raise RegistryError(f"could not get a version number for {name!r}: too many concurrent registrations")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # already moved away when the version was registered

    def _claim_version(
        self, name: str, run_id: int, tmp: Path, metrics: dict[str, Any], thresholds: dict[str, Any]
    ) -> ModelVersionRecord | None:
        """One attempt: take the next number, move the copy into place, commit. None: the number was taken."""
        with self._session() as s:
            if s.get(Run, run_id) is None:
                raise RegistryError(f"no run with id {run_id}")
            version = (s.scalar(select(func.max(ModelVersion.version)).filter_by(name=name)) or 0) + 1
            final = self.models_dir / name / str(version)
            row = ModelVersion(
                name=name,
                version=version,
                run_id=run_id,
                artifact_dir=str(final),
                metrics=metrics,
                thresholds=thresholds,
                stage="candidate",
            )
            s.add(row)
            try:
                # Claims (name, version). On PostgreSQL a concurrent claim of the same number waits
                # here and fails once the other commits; on SQLite transactions already run one at a time.
                s.flush()
            except IntegrityError:
                return None
            try:
                _move_into_place(tmp, final)
                s.commit()
            except BaseException:
                shutil.rmtree(final, ignore_errors=True)
                raise
            return ModelVersionRecord.model_validate(row)

    def get_model_version(self, name: str, version: int) -> ModelVersionRecord | None:
        with self._session() as s:
            row = s.scalar(select(ModelVersion).filter_by(name=name, version=version))
            return ModelVersionRecord.model_validate(row) if row else None

    def get_production(self, name: str) -> ModelVersionRecord | None:
        with self._session() as s:
            row = s.scalar(select(ModelVersion).filter_by(name=name, stage="production"))
            return ModelVersionRecord.model_validate(row) if row else None

    def list_model_versions(self, name: str | None = None) -> list[ModelVersionRecord]:
        query = select(ModelVersion).order_by(ModelVersion.name, ModelVersion.version)
        if name is not None:
            query = query.filter_by(name=name)
        with self._session() as s:
            return [ModelVersionRecord.model_validate(r) for r in s.scalars(query)]

    # --- promotion and rollback ---------------------------------------------------------------

    def decide_promotion(
        self,
        name: str,
        version: int,
        metric: str = PRIMARY_METRIC,
        candidate_score: float | None = None,
        production_score: float | None = None,
        interval: tuple[float, float] | None = None,
        margin: float = 0.002,
    ) -> PromotionDecision:
        """Promote `version` if it is at least as good as the production version, and record why (not).

        The scores must come from the same evaluation data: pass both when you have just evaluated
        the two models; a score not passed is read from `metric` in that version's stored metrics.
        With `interval` (a paired bootstrap interval of candidate - production on those data,
        components.evaluation.comparison) the rule is "not worse beyond noise": promote when its
        lower bound is above -`margin`. Without it: candidate score >= production score.
        With no production version yet, the candidate is promoted. Otherwise, a worse candidate keeps
        its stage and the reason goes into its `decision`.
        """
        with self._session.begin() as s:
            versions = self._locked_versions(s, name)
            candidate = self._pick(versions, name, version)
            production = next((v for v in versions.values() if v.stage == "production"), None)
            cand = candidate_score if candidate_score is not None else _score(candidate, metric)
            if production is candidate:
                return PromotionDecision(
                    promote=False,
                    reason=f"version {version} is already production",
                    candidate_score=cand,
                    production_score=cand,
                )
            if production is None:
                decision = PromotionDecision(
                    promote=True, reason="no production version yet", candidate_score=cand, production_score=None
                )
            else:
                prod = production_score if production_score is not None else _score(production, metric)
                if cand is None or prod is None:
                    which = version if cand is None else production.version
                    raise RegistryError(f"{name} version {which} has no {metric!r} in its metrics; pass the scores")
                if interval is None:
                    ok = cand >= prod
                    reason = (
                        f"{metric}: candidate v{version} {cand:.4f} {'>=' if ok else '<'} production "
                        f"v{production.version} {prod:.4f}"
                    )
                else:
                    low, high = interval
                    ok = low > -margin
                    reason = (
                        f"{metric}: candidate v{version} {cand:.4f}, production v{production.version} {prod:.4f}; "
                        f"paired bootstrap interval of the difference [{low:+.4f}, {high:+.4f}], lower bound "
                        f"{'>' if ok else '<='} -{margin:g}"
                    )
                reason += "" if ok else f"; stays {candidate.stage}"
                decision = PromotionDecision(
                    promote=ok, reason=reason, candidate_score=cand, production_score=prod, interval=interval
                )
            if decision.promote:
                self._make_production(s, versions, candidate, decision.reason)
            else:
                candidate.decision = decision.reason
            return decision

    def register_and_decide(
        self,
        name: str,
        run_id: int,
        source_dir: Path,
        metrics: dict[str, Any],
        thresholds: dict[str, Any],
        metric: str = PRIMARY_METRIC,
        candidate_score: float | None = None,
        production_score: float | None = None,
    ) -> tuple[ModelVersionRecord, PromotionDecision]:
        """`register_model_version` then `decide_promotion`; returns the version as it ends up."""
        record = self.register_model_version(name, run_id, source_dir, metrics, thresholds)
        decision = self.decide_promotion(name, record.version, metric, candidate_score, production_score)
        return self.get_model_version(name, record.version) or record, decision

    def promote(self, name: str, version: int, reason: str = "manual") -> ModelVersionRecord:
        """Make `version` production (whatever its scores); the previous production becomes archived."""
        with self._session.begin() as s:
            versions = self._locked_versions(s, name)
            target = self._pick(versions, name, version)
            if target.stage != "production":
                self._make_production(s, versions, target, reason)
            return ModelVersionRecord.model_validate(target)

    def rollback(self, name: str) -> ModelVersionRecord:
        """Undo the last promotion: the production version before the current one comes back.

        The current one is archived and loses its `promoted_at`, so it drops out of the
        promotion history: rolling back again goes one step further back, never forth.
        """
        with self._session.begin() as s:
            versions = self._locked_versions(s, name)
            current = next((v for v in versions.values() if v.stage == "production"), None)
            if current is None or current.promoted_at is None:
                raise RegistryError(f"{name} has no production version to roll back")
            earlier = [
                v
                for v in versions.values()
                if v.stage == "archived" and v.promoted_at is not None and v.promoted_at <= current.promoted_at
            ]
            if not earlier:
                raise RegistryError(
                    f"nothing to roll back to: {name} v{current.version} is the only production version in its history"
                )
            previous = max(earlier, key=lambda v: (v.promoted_at, v.version))
            current.stage, current.promoted_at = "archived", None
            current.decision = f"rolled back at {utcnow():%Y-%m-%d %H:%M:%S} UTC; v{previous.version} restored"
            s.flush()  # the current one leaves production before the previous one returns
            previous.stage = "production"
            previous.decision = f"restored by rollback of v{current.version}"
            return ModelVersionRecord.model_validate(previous)

    # --- drift reports -------------------------------------------------------------------------

    def record_drift_report(
        self,
        model_name: str,
        model_version: int,
        *,
        drifted: bool,
        checks: Sequence[Mapping[str, Any]],
        snapshot_path: Path | str,
        reference_rows: int,
        current_rows: int,
        window_start: datetime | None = None,
        window_end: datetime | None = None,
        reason: str | None = None,
        retrain_run_id: int | None = None,
    ) -> DriftReportRecord:
        """Record a drift report (`components.monitoring.DriftReport`: `checks_json()`, `snapshot_path`, ...)
        of a registered model version; `retrain_run_id` can also be set later (`link_drift_retrain`)."""
        with self._session.begin() as s:
            if s.scalar(select(ModelVersion.id).filter_by(name=model_name, version=model_version)) is None:
                raise RegistryError(f"{model_name} has no version {model_version}")
            if retrain_run_id is not None and s.get(Run, retrain_run_id) is None:
                raise RegistryError(f"no run with id {retrain_run_id}")
            row = DriftReport(
                model_name=model_name,
                model_version=model_version,
                window_start=window_start,
                window_end=window_end,
                reference_rows=reference_rows,
                current_rows=current_rows,
                drifted=drifted,
                reason=reason,
                checks=[dict(c) for c in checks],
                snapshot_path=str(snapshot_path),
                retrain_run_id=retrain_run_id,
            )
            s.add(row)
            s.flush()
            return DriftReportRecord.model_validate(row)

    def get_drift_report(self, report_id: int) -> DriftReportRecord | None:
        with self._session() as s:
            row = s.get(DriftReport, report_id)
            return DriftReportRecord.model_validate(row) if row else None

    def list_drift_reports(self, model_name: str, limit: int = 50) -> list[DriftReportRecord]:
        """The model's drift reports (all its versions), the most recent first."""
        query = select(DriftReport).filter_by(model_name=model_name).order_by(DriftReport.id.desc()).limit(limit)
        with self._session() as s:
            return [DriftReportRecord.model_validate(r) for r in s.scalars(query)]

    def link_drift_retrain(self, report_id: int, run_id: int) -> DriftReportRecord:
        """Record the retraining run a drift report triggered. Linking the same run again is a no-op;
        a report already linked to another run raises RegistryError."""
        with self._session.begin() as s:
            row = s.get(DriftReport, report_id, with_for_update=True)
            if row is None:
                raise RegistryError(f"no drift report with id {report_id}")
            if s.get(Run, run_id) is None:
                raise RegistryError(f"no run with id {run_id}")
            if row.retrain_run_id is not None and row.retrain_run_id != run_id:
                raise RegistryError(f"drift report {report_id} already triggered run {row.retrain_run_id}")
            row.retrain_run_id = run_id
            return DriftReportRecord.model_validate(row)

    @staticmethod
    def _locked_versions(s: Session, name: str) -> dict[int, ModelVersion]:
        # All versions of the name, locked (PostgreSQL), so concurrent promotions take turns.
        query = select(ModelVersion).filter_by(name=name).with_for_update()
        versions = {v.version: v for v in s.scalars(query)}
        if not versions:
            raise RegistryError(f"no model named {name!r}")
        return versions

    @staticmethod
    def _pick(versions: dict[int, ModelVersion], name: str, version: int) -> ModelVersion:
        if version not in versions:
            raise RegistryError(f"{name} has no version {version} (it has {min(versions)}..{max(versions)})")
        return versions[version]

    @staticmethod
    def _make_production(s: Session, versions: dict[int, ModelVersion], target: ModelVersion, reason: str) -> None:
        for v in versions.values():
            if v.stage == "production":
                v.stage = "archived"
        s.flush()  # the old production leaves before the new one arrives (one production per name)
        target.stage, target.promoted_at, target.decision = "production", utcnow(), reason
