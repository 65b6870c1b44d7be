"""Flow `retrain`: what a drift event starts (the `retrain/on-drift` deployment's trigger).

It runs the `pipeline` (ingest the newest catalog, train the configured configs, optionally a
search, register each through the champion/challenger rule of flows/register.py, package a new
production version), links the drift report that started it to its training run, and sends the
promotion decision to the optional webhook. The endpoint follows the registry's production
version by itself (serving/holder.py), so a promotion reaches it without a restart.
"""

from __future__ import annotations

from prefect import flow

from components.registry import Registry
from flows.alerts import send_alert
from flows.pipeline import pipeline_flow


@flow(name="retrain", log_prints=True)
def retrain_flow(
    model_name: str,
    spec: str,
    configs: list[str],
    search: str | None = None,
    epochs: int | None = None,
    drift_report_id: int | None = None,
    webhook: str | None = None,
) -> dict:
    result = pipeline_flow(spec, configs, model_name=model_name, epochs=epochs, search=search)
    candidates = result["candidates"]
    if drift_report_id is not None and candidates:
        with Registry() as registry:
            registry.link_drift_retrain(drift_report_id, candidates[0]["run_id"])
    promoted = [c for c in candidates if c["promoted"]]
    for c in candidates:
        send_alert(
            "promotion",
            {
                "model_name": model_name,
                "version": c["version"],
                "promoted": c["promoted"],
                "reason": c["reason"],
                "comparison": c.get("comparison"),
                "drift_report_id": drift_report_id,
            },
            webhook,
        )
    print(
        f"{model_name}: {len(candidates)} candidate(s), "
        + (f"v{promoted[-1]['version']} promoted" if promoted else "none promoted")
        + f"; production v{result['production_version']}"
    )
    return {**result, "drift_report_id": drift_report_id}
