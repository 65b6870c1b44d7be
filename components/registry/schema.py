"""The registry's tables (SQLAlchemy 2 typed ORM). Change them only together with a migration.

JSON columns use the generic `JSON` type (TEXT on SQLite, json on PostgreSQL). It does not
notice in-place changes, so code assigns a new value instead of mutating one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Index, MetaData, String, Text, UniqueConstraint, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python (SQLite stores it without a zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    # Named constraints, so migrations can refer to them the same way on every backend.
    metadata = MetaData(
        naming_convention={
            "pk": "pk_%(table_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s_%(column_1_name)s",
            "ix": "ix_%(table_name)s_%(column_0_name)s",
        }
    )


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(200))
    path: Mapped[str] = mapped_column(Text)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(50), index=True)  # train, tune-trial, pipeline, ...
    status: Mapped[str] = mapped_column(String(16))  # running | completed | failed
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id"))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # final metrics
    epoch_metrics: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)  # one entry per epoch
    flow_run_id: Mapped[str | None] = mapped_column(String(100))
    parent_run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))  # a tune trial's study


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("name", "version"),  # what makes concurrent registrations pick distinct numbers
        # At most one production version per name, whatever the code above the database does.
        Index(
            "uq_model_versions_one_production",
            "name",
            unique=True,
            sqlite_where=text("stage = 'production'"),
            postgresql_where=text("stage = 'production'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int]  # 1..n per name
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    artifact_dir: Mapped[str] = mapped_column(Text)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    thresholds: Mapped[dict[str, Any]] = mapped_column(JSON)
    stage: Mapped[str] = mapped_column(String(16))  # candidate | production | archived
    decision: Mapped[str | None] = mapped_column(Text)  # why it was promoted, or not
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class DriftReport(Base):
    """One drift report (components.monitoring): a model version's reference against a current window."""

    __tablename__ = "drift_reports"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_name: Mapped[str] = mapped_column(String(200), index=True)
    model_version: Mapped[int]
    window_start: Mapped[datetime | None] = mapped_column(UTCDateTime)  # the current window (None: not a time window)
    window_end: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reference_rows: Mapped[int]
    current_rows: Mapped[int]
    drifted: Mapped[bool]
    reason: Mapped[str | None] = mapped_column(Text)  # the decision, in words
    checks: Mapped[list[dict[str, Any]]] = mapped_column(JSON)  # per check: name, method, threshold, score, drifted
    snapshot_path: Mapped[str] = mapped_column(Text)  # Evidently's snapshot (its HTML lies next to it)
    retrain_run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))  # the retraining it triggered
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
