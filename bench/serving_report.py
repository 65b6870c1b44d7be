"""The serving report: the run's environment, and bench/results/serving.json + serving.md."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def environment() -> dict[str, Any]:
    import bentoml
    import psutil
    import torch

    cpu = platform.processor()
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "bentoml": bentoml.__version__,
    }


def write_report(out: Path, results: dict[str, Any]) -> str:
    """Write OUT.json and OUT.md; return the markdown."""
    out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=float))
    text = markdown(results)
    out.with_suffix(".md").write_text(text)
    return text


def _batches(level: dict[str, Any]) -> str:
    """The forward passes' sizes: mean, and the histogram of products per pass."""
    h = level["batches"]["attrflow_scorer_batch_products"]
    spread = ", ".join(f"{k}: {v}" for k, v in h["buckets"].items())
    return f"{h['mean']:.1f} ({spread})" if h["count"] else "-"


def _name(level: dict[str, Any]) -> str:
    per = level["products_per_request"]
    after = " (again, after the others)" if level.get("after_load") else ""
    return f"{level['endpoint']}{f' x{per}' if per > 1 else ''} | {level['concurrency']}{after}"


def _get(d: dict[str, Any], key: str, fmt: str = ".0f") -> str:
    return format(d[key], fmt) if key in d else "-"


def _in_process(ip: dict[str, Any]) -> list[str]:
    cpu = ip.get("cpu_ms_per_product_by_batch", {})
    single = ip["single"]
    return [
        "## In process (the ceiling)",
        "",
        "| batch size | products/s | CPU ms per product |",
        "|---|---|---|",
        *(f"| {b} | {v:.1f} | {_get(cpu, b)} |" for b, v in ip["products_per_s_by_batch"].items()),
        "",
        f"Ceiling: **{ip['ceiling_products_per_s']:.1f} products/s** (batch {ip['best_batch']}, "
        f"{ip['torch_threads']} torch threads). Single product: p50 **{single['p50_ms']:.1f} ms**, "
        f"p95 {single['p95_ms']:.1f}, p99 {single['p99_ms']:.1f}. Other processes on the machine "
        f"meanwhile: {ip['other_cpu_cores']:.2f} cores busy.",
        "",
    ]


def _paired(paired: dict[str, Any] | None) -> list[str]:
    if not paired:
        return []
    local, remote = paired["in_process"], paired["endpoint"]
    return [
        f"Single products, in process and through /predict at concurrency 1 in alternating blocks "
        f"({local['requests']} each; what the latency target compares):",
        "",
        "| | p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|",
        f"| in process (decode + predict) | {local['p50_ms']:.1f} | {local['p95_ms']:.1f} | {local['p99_ms']:.1f} |",
        f"| /predict | {remote['p50_ms']:.1f} | {remote['p95_ms']:.1f} | {remote['p99_ms']:.1f} |",
        f"| difference | {remote['p50_ms'] - local['p50_ms']:.1f} | | |",
        "",
    ]


def _endpoint(ep: dict[str, Any], ceiling: float) -> list[str]:
    lines = [
        "## Endpoint",
        "",
        f"Cold start (process start -> /readyz 200): **{ep['cold_start_s']:.1f} s**. Server RSS (process "
        f"tree): {ep['idle_rss_mb']:.0f} MB idle, {ep['peak_rss_mb']:.0f} MB at most after a level.",
        "",
        *_paired(ep.get("paired_single")),
        "| endpoint | concurrency | products/s | x ceiling | p50 ms | p95 ms | p99 ms | requests | errors "
        "| products per forward pass: mean (histogram) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for lv in ep["levels"]:
        lines.append(
            f"| {_name(lv)} | {lv['products_per_s']:.1f} | {lv['products_per_s'] / ceiling:.2f} | "
            f"{lv['p50_ms']:.0f} | {lv['p95_ms']:.0f} | {lv['p99_ms']:.0f} | {lv['requests']} | "
            f"{sum(lv['errors'].values())} | {_batches(lv)} |"
        )
    around = [lv for lv in ep["levels"] if lv.get("ceiling_around")]
    for lv in around:
        ar = lv["ceiling_around"]
        mean = (ar["before"] + ar["after"]) / 2
        lines += [
            "",
            f"The ceiling measured right around {_name(lv).replace(' | ', ' c=')} (in process, batch {ar['batch']}): "
            f"{ar['before']:.1f} before, {ar['after']:.1f} after; the level reached "
            f"**{lv['products_per_s'] / mean:.2f}x** of their mean {mean:.1f} (the throughput target's figure).",
        ]
    lines += [
        "",
        "Where the time and the CPU go, per level:",
        "",
        "| endpoint | concurrency | front ms | scorer ms | front CPU ms / product | scorer CPU ms / product "
        "| server cores (front + scorer) | client cores | other cores |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for lv in ep["levels"]:
        ms, cpu, by = (
            lv.get("server_ms", {}),
            lv.get("server_cpu_ms_per_product", {}),
            lv["server_cpu_cores_by_process"],
        )
        front = ms.get(f"front {lv['endpoint']}")
        scorer = "scorer /score_ids" if lv["endpoint"] == "/predict_by_id" else "scorer /score"
        lines.append(
            f"| {_name(lv)} | {'-' if front is None else f'{front:.0f}'} | {_get(ms, scorer)} | "
            f"{_get(cpu, 'attrflow', '.1f')} | {_get(cpu, 'attrflow_scorer', '.1f')} | {lv['server_cpu_cores']:.2f} "
            f"({by.get('attrflow', 0):.2f} + {by.get('attrflow_scorer', 0):.2f}) | {lv['client_cpu_cores']:.2f} | "
            f"{lv['other_cpu_cores']:.2f} |"
        )
    return lines


def _feature_store(ep: dict[str, Any]) -> list[str]:
    store, full = ep.get("feature_store"), ep.get("full_catalog")
    if not store:
        return []
    read = store.get("online_read", {})
    lines = [
        "## By id (Feast)",
        "",
        f"The benchmark's {store['products']} products ingested into the endpoint's home: text, image and label "
        f"features written and materialized in {store['features_s']:.1f} s, the model's embeddings of them "
        f"(view `{store['embedding_view']}`) in {store['embeddings_s']:.1f} s. The /predict_by_id rows above "
        "score the same products from the online store (stored embeddings: no image decoding, no encoder); "
        f"how the warm-up request's {sum(store.get('paths', {}).values())} products were scored: "
        f"`{json.dumps(store.get('paths', {}))}`.",
        "",
    ]
    if read:
        lines += [
            f"Online store read (`get_online_features`, every view /predict_by_id reads, {read['batch_ids']} ids, "
            f"in process, {read['repeats']} reads): p50 **{read['p50_ms']:.1f} ms**, max {read['max_ms']:.1f} ms.",
            "",
        ]
    if full:
        lines += [
            f"The whole fashion catalog ({full['products']} products) in a scratch home: ingest "
            f"{full['ingest_s']:.0f} s; then the text, image and label tables {full['tables_s']:.0f} s (every photo "
            f"decoded for its statistics), Parquet + `apply` {full['write_apply_s']:.1f} s, materialize to the "
            f"online store **{full['materialize_s']:.1f} s** (features in all: {full['features_total_s']:.0f} s). "
            "Embeddings of the whole catalog are not part of it (encoder forwards; the embedding cache holds them "
            "once computed for training).",
            "",
        ]
    return lines


NOTES = (
    "Per level: a warm-up, then the measured window; latency is request sent -> answer read, over "
    "loopback. Forward passes: attrflow's histogram of products per model call, over the level "
    "(warm-up included). Front / scorer ms: BentoML's mean request duration in each service (the "
    "scorer's includes its batching queue; one scorer call per /predict request). CPU: the server's "
    "processes (front, scorer; BentoML's supervisor is in the total), this benchmark process (the "
    "client), and every other process on the machine (a clean measurement has about 0 there)."
)


def markdown(r: dict[str, Any]) -> str:
    env, ip = r["environment"], r["in_process"]
    lines = [
        "# Serving benchmark (bench/serving.py)",
        "",
        f"{env['date']} · {env['cpu']} ({env['cores']} cores) · torch {env['torch']} · bentoml {env['bentoml']} · "
        f"load average at start {env['load_average_at_start']}",
        "",
        f"Model: `{r['model']['dir']}` ({r['model']['source']}). {r['products']['n']} catalog products, "
        f"JPEG {r['products']['mean_jpeg_bytes'] / 1024:.1f} KB mean. Server settings: "
        f"`{json.dumps(r['settings'])}`.",
        "",
        *_in_process(ip),
        *_endpoint(r["endpoint"], ip["ceiling_products_per_s"]),
        "",
        *_feature_store(r["endpoint"]),
        NOTES,
        "",
        "## Targets",
        "",
        *(f"- **{'MET' if t['met'] else 'NOT MET'}**: {t['target']}: {t['figures']}" for t in r["targets"]),
        "",
        f"Run time: {r['seconds']:.0f} s.",
        "",
    ]
    return "\n".join(lines)
