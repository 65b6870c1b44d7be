"""What the registry hands back: plain pydantic copies of rows, safe to keep after the session ends."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

RunStatus = Literal["running", "completed", "failed"]
Stage = Literal["candidate", "production", "archived"]


class _Record(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)


class DatasetRecord(_Record):
    id: int
    name: str
    version: str
    path: Path
    manifest: dict[str, Any]
    counts: dict[str, Any]
    created_at: datetime


class RunRecord(_Record):
    id: int
    kind: str
    status: RunStatus
    config: dict[str, Any]
    dataset_id: int | None
    started_at: datetime
    ended_at: datetime | None
    error: str | None
    metrics: dict[str, Any] | None
    epoch_metrics: list[dict[str, Any]]
    flow_run_id: str | None
    parent_run_id: int | None


class ModelVersionRecord(_Record):
    id: int
    name: str
    version: int
    run_id: int
    artifact_dir: Path
    metrics: dict[str, Any]
    thresholds: dict[str, Any]
    stage: Stage
    decision: str | None
    created_at: datetime
    promoted_at: datetime | None


class PromotionDecision(_Record):
    promote: bool
    reason: str
    candidate_score: float | None
    production_score: float | None  # None when there was no production version
    interval: tuple[float, float] | None = None  # paired bootstrap interval of candidate - production, if used


class DriftReportRecord(_Record):
    id: int
    model_name: str
    model_version: int
    window_start: datetime | None
    window_end: datetime | None
    reference_rows: int
    current_rows: int
    drifted: bool
    reason: str | None
    checks: list[dict[str, Any]]  # per check: name, kind, method, threshold, score, drifted, ...
    snapshot_path: Path
    retrain_run_id: int | None
    created_at: datetime
