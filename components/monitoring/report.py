"""The drift report: a reference and a current monitoring frame (frames.py) through Evidently,
one check per compared column and embedding, a decision, and the snapshot and HTML on disk.

    report = run_drift_report(reference, current, "out/drift/2026-11-30", MonitoringConfig())
    report.drift_detected, report.reason
    [(c.name, c.score, c.threshold, c.drifted) for c in report.checks]
    report.html_path      # Evidently's HTML; report.snapshot_path: its snapshot (evidently Snapshot.load)

Steps: each side is sampled (seeded) to `max_rows`; every column known to frames.py that both
sides have, with at least `min_rows` values on each, is a check with its pinned test (config.py);
rare categorical values are pooled; embeddings are compared when every sampled row on both sides
has one. Evidently computes every score and every column verdict (its `DataDriftPreset` with one
method and threshold per column, and `EmbeddingsDrift`); the decision rule is `DecisionRule`.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from components.monitoring import _evidently as ev
from components.monitoring.config import P_VALUE_METHODS, CheckKind, MonitoringConfig
from components.monitoring.frames import EMBEDDINGS, OTHER, ColumnInfo, column_info


class InsufficientData(ValueError):
    """Nothing could be compared: every check was skipped (see the message for why)."""


class Check(BaseModel):
    """One compared column or embedding. `score` is a p-value (drift when below `threshold`) or a
    distance / AUC (drift when above), as `score_kind` says; `drifted` is Evidently's verdict."""

    model_config = ConfigDict(frozen=True)

    name: str  # the column (e.g. "image_brightness", "pred:baseColour", "pred:tags=cotton") or embedding
    kind: CheckKind
    attribute: str | None
    method: str
    threshold: float
    score: float
    score_kind: str  # "p_value" | "distance" | "auc"
    drifted: bool
    reference_rows: int  # values compared on each side (after sampling, missing values left out)
    current_rows: int


class SkippedCheck(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    kind: CheckKind
    reason: str


class DriftReport(BaseModel):
    """What `run_drift_report` decided, and where Evidently's snapshot and HTML are."""

    name: str
    drift_detected: bool
    reason: str
    checks: list[Check]
    skipped: list[SkippedCheck]
    reference_rows: int  # after sampling
    current_rows: int
    reference_rows_total: int  # before sampling
    current_rows_total: int
    window_start: datetime | None  # the current frame's first and last `time`, when it has one
    window_end: datetime | None
    snapshot_path: Path
    html_path: Path
    config: MonitoringConfig
    created_at: datetime

    @property
    def drifted_checks(self) -> list[Check]:
        return [c for c in self.checks if c.drifted]

    @property
    def drifted_share(self) -> float:
        return len(self.drifted_checks) / len(self.checks) if self.checks else 0.0

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check named {name!r} (skipped: {[s.name for s in self.skipped]})")

    def checks_json(self) -> list[dict[str, Any]]:
        """The checks as plain JSON values (the registry's `drift_reports.checks`)."""
        return [c.model_dump(mode="json") for c in self.checks]

    def registry_fields(self) -> dict[str, Any]:
        """`Registry.record_drift_report(name, version, **report.registry_fields())`; the sizes are
        the frames' before sampling (each check has the numbers it compared)."""
        return {
            "drifted": self.drift_detected,
            "checks": self.checks_json(),
            "snapshot_path": self.snapshot_path,
            "reference_rows": self.reference_rows_total,
            "current_rows": self.current_rows_total,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "reason": self.reason,
        }


def sample_frame(frame: pd.DataFrame, max_rows: int, seed: int = 0) -> pd.DataFrame:
    """At most `max_rows` rows, drawn without replacement (seeded), in their original order."""
    if len(frame) <= max_rows:
        return frame.reset_index(drop=True)
    keep = np.sort(np.random.default_rng(seed).choice(len(frame), size=max_rows, replace=False))
    return frame.iloc[keep].reset_index(drop=True)


def run_drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    out_dir: Path | str,
    config: MonitoringConfig | None = None,
    *,
    name: str = "drift",
) -> DriftReport:
    """Compare `current` with `reference` (monitoring frames, frames.py) and write into `out_dir`
    `report.html` (Evidently's), `snapshot.json` (Evidently's snapshot) and `drift.json` (this report).

    Raises InsufficientData when no check can run (e.g. a window of a handful of rows).
    """
    config = config or MonitoringConfig()
    ref = sample_frame(reference, config.max_rows, config.seed)
    cur = sample_frame(current, config.max_rows, config.seed + 1)
    skipped: list[SkippedCheck] = []

    columns = _columns(ref, cur, config, skipped)
    ref_ev, cur_ev = _evidently_frames(ref, cur, columns, config.min_category_share)
    embeddings, embedding_thresholds = _embeddings(ref, cur, config, skipped, ref_ev, cur_ev)
    if not columns and not embeddings:
        reasons = "; ".join(f"{s.name}: {s.reason}" for s in skipped) or "no monitoring columns"
        raise InsufficientData(f"nothing to compare ({len(ref)} reference rows, {len(cur)} current rows): {reasons}")

    items: list[Any] = []
    if columns:
        tests = {c: config.test_for(c, info.column_type) for c, info in columns.items()}
        share = config.decision.drift_share or 1 / len(columns)  # Evidently's summary uses the same rule
        items.append(
            ev.DataDriftPreset(
                columns=list(columns),
                per_column_method={c: t.method for c, t in tests.items()},
                per_column_threshold={c: t.threshold for c, t in tests.items()},
                drift_share=share,
            )
        )
    for emb in embeddings:
        method = ev.embedding_drift_method(
            config.embedding.method, embedding_thresholds[emb], config.embedding.pca_components
        )
        items.append(ev.EmbeddingsDrift(embeddings_name=emb, drift_method=method))
    definition = ev.DataDefinition(
        numerical_columns=[c for c, i in columns.items() if i.column_type == "numerical"],
        categorical_columns=[c for c, i in columns.items() if i.column_type != "numerical"],
        embeddings=embeddings or None,
    )
    snapshot = ev.Report(items, include_tests=True, metadata={"attrflow": name}).run(
        ev.Dataset.from_pandas(cur_ev, data_definition=definition),
        ev.Dataset.from_pandas(ref_ev, data_definition=definition),
        name=name,
    )

    checks = _checks(snapshot.dict(), columns, embedding_thresholds, ref_ev, cur_ev, config)
    drift, reason = decide(checks, config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html_path, snapshot_path = out / "report.html", out / "snapshot.json"
    snapshot.save_html(str(html_path))
    snapshot_path.write_text(snapshot.dumps())
    times = pd.to_datetime(current["time"], utc=True).dropna() if "time" in current else pd.Series([], dtype=object)
    report = DriftReport(
        name=name,
        drift_detected=drift,
        reason=reason,
        checks=checks,
        skipped=skipped,
        reference_rows=len(ref),
        current_rows=len(cur),
        reference_rows_total=len(reference),
        current_rows_total=len(current),
        window_start=times.min().to_pydatetime() if len(times) else None,
        window_end=times.max().to_pydatetime() if len(times) else None,
        snapshot_path=snapshot_path.resolve(),
        html_path=html_path.resolve(),
        config=config,
        created_at=datetime.now(UTC),
    )
    (out / "drift.json").write_text(report.model_dump_json(indent=2))
    return report


def decide(checks: list[Check], config: MonitoringConfig) -> tuple[bool, str]:
    """The decision rule (config.DecisionRule): (drift_detected, why)."""
    rule = config.decision
    drifted = [c for c in checks if c.drifted]
    share = len(drifted) / len(checks) if checks else 0.0
    decisive = [c for c in drifted if c.kind in rule.decisive_kinds]
    if rule.drift_share is None:
        detected = bool(drifted)
    else:
        detected = bool(decisive) or share >= rule.drift_share
    counted = f"{len(drifted)} of {len(checks)} checks drifted"
    if not detected:
        limit = (
            ""
            if rule.drift_share is None
            else f" (drift at a share of {rule.drift_share:g} or a drifted {'/'.join(sorted(rule.decisive_kinds))} check)"
        )
        return False, f"no drift: {counted}{limit}"
    shown = decisive or drifted
    listed = ", ".join(f"{c.name} ({_describe(c)})" for c in shown[:8]) + (" ..." if len(shown) > 8 else "")
    return True, f"drift: {counted}: {listed}"


def _describe(check: Check) -> str:
    op = "<" if check.score_kind == "p_value" else ">"
    return f"{check.method} {check.score:.3g} {op} {check.threshold:g}"


# --- preparing the frames -----------------------------------------------------------------------


def _columns(
    ref: pd.DataFrame, cur: pd.DataFrame, config: MonitoringConfig, skipped: list[SkippedCheck]
) -> dict[str, ColumnInfo]:
    """The compared columns, in the order the frames have them; the rest into `skipped`."""
    columns: dict[str, ColumnInfo] = {}
    for column in dict.fromkeys([*ref.columns, *cur.columns]):
        info = column_info(column)
        if info is None or (info.column_type == "numerical" and info.kind == "prediction" and not config.check_scores):
            continue
        missing = [side for side, f in (("reference", ref), ("current", cur)) if column not in f]
        if missing:
            skipped.append(SkippedCheck(name=column, kind=info.kind, reason=f"not in the {missing[0]} frame"))
            continue
        counts = {side: int(f[column].notna().sum()) for side, f in (("reference", ref), ("current", cur))}
        short = [f"{n} {side} values" for side, n in counts.items() if n < config.min_rows]
        if short:
            skipped.append(
                SkippedCheck(name=column, kind=info.kind, reason=f"{', '.join(short)} (< {config.min_rows})")
            )
            continue
        columns[column] = info
    return columns


def _evidently_frames(
    ref: pd.DataFrame, cur: pd.DataFrame, columns: dict[str, ColumnInfo], min_share: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    # Built from dicts in one go: column-by-column inserts fragment a frame of hundreds of columns.
    ref_cols: dict[str, pd.Series] = {}
    cur_cols: dict[str, pd.Series] = {}
    for column, info in columns.items():
        if info.column_type == "categorical":
            ref_cols[column], cur_cols[column] = _pooled(ref[column], cur[column], min_share)
        else:
            ref_cols[column] = pd.to_numeric(ref[column], errors="coerce").astype(float)
            cur_cols[column] = pd.to_numeric(cur[column], errors="coerce").astype(float)
    return pd.DataFrame(ref_cols, index=ref.index), pd.DataFrame(cur_cols, index=cur.index)


def _pooled(ref: pd.Series, cur: pd.Series, min_share: float) -> tuple[pd.Series, pd.Series]:
    """Categorical values as strings; values rarer than `min_share` in the reference, and values
    it does not have, pooled as OTHER on both sides."""
    ref_s = ref.map(lambda v: None if _missing(v) else str(v))
    cur_s = cur.map(lambda v: None if _missing(v) else str(v))
    shares = ref_s.value_counts(normalize=True)
    keep = set(shares.index[shares >= min_share])

    def pool(v: Any) -> str | None:
        return None if _missing(v) else (v if v in keep else OTHER)

    return ref_s.map(pool).astype(object), cur_s.map(pool).astype(object)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _no_vector(v: Any) -> bool:
    return _missing(v) or np.size(v) == 0  # NaN: a row of a frame without the column, after a concat


def _embeddings(
    ref: pd.DataFrame,
    cur: pd.DataFrame,
    config: MonitoringConfig,
    skipped: list[SkippedCheck],
    ref_out: pd.DataFrame,
    cur_out: pd.DataFrame,
) -> tuple[dict[str, list[str]], dict[str, float]]:
    """Embedding columns expanded into `ref_out` / `cur_out` (`<name>.<i>`); their thresholds."""
    embeddings: dict[str, list[str]] = {}
    thresholds: dict[str, float] = {}
    if not config.embeddings:
        return embeddings, thresholds
    for emb in EMBEDDINGS:
        if emb not in ref and emb not in cur:
            continue
        reason = None
        if min(len(ref), len(cur)) < config.min_rows:
            reason = f"{min(len(ref), len(cur))} rows (< {config.min_rows})"
        vectors = {}
        for side, f in (("reference", ref), ("current", cur)) if reason is None else ():
            if emb not in f:
                reason = f"not in the {side} frame"
                break
            absent = int(f[emb].map(_no_vector).sum())
            if absent:
                reason = f"{absent} of {len(f)} {side} rows have none (an embedding check needs every row)"
                break
            vectors[side] = np.stack([np.asarray(v, dtype=np.float32).ravel() for v in f[emb]])
        if reason is None and vectors["reference"].shape[1] != vectors["current"].shape[1]:
            reason = f"{vectors['reference'].shape[1]} dimensions in the reference, {vectors['current'].shape[1]} in the current rows"
        if reason is not None:
            skipped.append(SkippedCheck(name=emb, kind="embedding", reason=reason))
            continue
        names = [f"{emb}.{i}" for i in range(vectors["reference"].shape[1])]
        ref_out[names] = pd.DataFrame(vectors["reference"], index=ref_out.index, columns=names)
        cur_out[names] = pd.DataFrame(vectors["current"], index=cur_out.index, columns=names)
        embeddings[emb] = names
        thresholds[emb] = _embedding_threshold(config, len(ref), len(cur))
    return embeddings, thresholds


def _embedding_threshold(config: MonitoringConfig, n_ref: int, n_cur: int) -> float:
    base = config.embedding.base_threshold
    if config.embedding.method != "model":
        return base
    # The classifier is scored on half of the rows (Evidently's train_test_split, test_size=0.5).
    n1, n2 = max(n_ref / 2, 1.0), max(n_cur / 2, 1.0)
    chance_sd = math.sqrt((n1 + n2 + 1) / (12 * n1 * n2))
    return round(max(base, 0.5 + config.embedding.noise_margin * chance_sd), 4)


# --- reading Evidently's results ------------------------------------------------------------------


def _checks(
    results: dict[str, Any],
    columns: dict[str, ColumnInfo],
    embedding_thresholds: dict[str, float],
    ref: pd.DataFrame,
    cur: pd.DataFrame,
    config: MonitoringConfig,
) -> list[Check]:
    verdicts = {t["metric_config"]["metric_id"]: t["status"] for t in results["tests"] if t.get("id") == "drift"}
    checks: list[Check] = []
    for metric in results["metrics"]:
        cfg = metric["config"]
        kind = cfg.get("type", "")
        if kind.endswith(":ValueDrift") and cfg["column"] in columns:
            column, info = cfg["column"], columns[cfg["column"]]
            method, threshold, score = cfg["method"], float(cfg["threshold"]), float(metric["value"])
            p_value = method in P_VALUE_METHODS
            status = verdicts.get(metric["id"])
            if status is None:  # no test result: the same rule Evidently applies
                drifted = score < threshold if p_value else score >= threshold
            else:
                drifted = str(status).upper().endswith("FAIL")
            checks.append(
                Check(
                    name=column,
                    kind=info.kind,
                    attribute=info.attribute,
                    method=method,
                    threshold=threshold,
                    score=score,
                    score_kind="p_value" if p_value else "distance",
                    drifted=drifted,
                    reference_rows=int(ref[column].notna().sum()),
                    current_rows=int(cur[column].notna().sum()),
                )
            )
        elif kind.endswith(":EmbeddingsDrift") and cfg["embeddings_name"] in embedding_thresholds:
            emb = cfg["embeddings_name"]
            threshold, score = embedding_thresholds[emb], float(metric["value"])
            checks.append(
                Check(
                    name=emb,
                    kind="embedding",
                    attribute=None,
                    method=config.embedding.method,
                    threshold=threshold,
                    score=score,
                    score_kind="auc" if config.embedding.method == "model" else "distance",
                    drifted=score > threshold,  # Evidently's rule for every method without bootstrap
                    reference_rows=len(ref),
                    current_rows=len(cur),
                )
            )
    return checks
