"""The serving benchmark's load generator and the pure helpers around it.

`closed_loop` runs `concurrency` clients (aiohttp, one event loop) that each send a request, wait
for the answer and send the next, for a warm-up and then a measured window; a request counts when
it was sent and answered inside the window. Request bodies are serialised before the clock starts,
so the client's CPU goes to HTTP only. Also here: latency percentiles, reading Prometheus
histograms off /metrics, and the targets.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from itertools import count
from typing import Any

import numpy as np


@dataclass
class LevelRun:
    """What one load level measured: latencies (seconds) of the requests inside the window."""

    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    answered: int = 0  # every request answered with 200, warm-up and stragglers included (for CPU per request)


async def closed_loop(
    url: str, bodies: list[bytes], concurrency: int, seconds: float, warmup_s: float, timeout_s: float = 120.0
) -> LevelRun:
    """`concurrency` closed-loop clients POSTing `bodies` (round robin) to `url`."""
    import aiohttp

    loop = asyncio.get_running_loop()
    start = loop.time() + warmup_s
    end = start + seconds
    run = LevelRun(seconds=seconds)
    picks = count()
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:

        async def client() -> None:
            while (sent := loop.time()) < end:
                body = bodies[next(picks) % len(bodies)]
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        problem = None if response.status == 200 else f"HTTP {response.status}"
                except (aiohttp.ClientError, TimeoutError) as e:
                    problem = type(e).__name__
                done = loop.time()
                run.answered += problem is None
                if sent >= start and done <= end:
                    if problem is None:
                        run.latencies.append(done - sent)
                    else:
                        run.errors[problem] = run.errors.get(problem, 0) + 1

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return run


def latency_summary(latencies: list[float], seconds: float, products_per_request: int = 1) -> dict[str, Any]:
    """Requests, throughput (products/s) and p50/p95/p99 latency (ms) of a level."""
    n = len(latencies)
    ms = np.asarray(latencies, dtype=float) * 1000.0
    pct = np.percentile(ms, [50, 95, 99]) if n else [float("nan")] * 3
    return {
        "requests": n,
        "products_per_s": n * products_per_request / seconds if seconds > 0 else float("nan"),
        "p50_ms": float(pct[0]),
        "p95_ms": float(pct[1]),
        "p99_ms": float(pct[2]),
        "mean_ms": float(ms.mean()) if n else float("nan"),
    }


# --- Prometheus text (/metrics) --------------------------------------------------------------


def _samples(text: str, name: str, labels: dict[str, str]) -> list[tuple[dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    out = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                out.append((sample.labels, float(sample.value)))
    return out


def total(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels` (0 when absent)."""
    return sum(value for _, value in _samples(text, name, labels))


def histogram(text: str, name: str, **labels: str) -> dict[str, Any]:
    """A histogram's count, sum and cumulative buckets ({upper bound: count}) summed over the
    samples whose labels include `labels` (e.g. over processes)."""
    buckets: dict[float, float] = {}
    for sample_labels, value in _samples(text, f"{name}_bucket", labels):
        le = float(sample_labels["le"])
        buckets[le] = buckets.get(le, 0.0) + value
    return {
        "count": sum(v for _, v in _samples(text, f"{name}_count", labels)),
        "sum": sum(v for _, v in _samples(text, f"{name}_sum", labels)),
        "buckets": dict(sorted(buckets.items())),
    }


def histogram_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What a histogram gained between two scrapes: count, sum, mean, and per bucket the
    observations that fell in it ({"<=1": n, "<=2": m, ...}, not cumulative; empty ones left out)."""
    count_, sum_ = after["count"] - before["count"], after["sum"] - before["sum"]
    per_bucket, below = {}, 0.0
    for le, cumulative in after["buckets"].items():
        gained = cumulative - before["buckets"].get(le, 0.0)
        if gained - below > 0:
            label = "+Inf" if le == float("inf") else f"{le:g}"
            per_bucket[f"<={label}"] = int(round(gained - below))
        below = gained
    return {
        "count": int(round(count_)),
        "sum": float(sum_),
        "mean": float(sum_ / count_) if count_ else float("nan"),
        "buckets": per_bucket,
    }


# --- targets -------------------------------------------------------------------------------------

THROUGHPUT_SHARE = 0.8  # at the highest concurrency, of the in-process ceiling
LATENCY_SLACK_MS = 20.0  # at concurrency 1, over the in-process single-product p50


def targets(
    ceiling_per_s: float, top: tuple[int, float], in_process_p50_ms: float, endpoint_p50_ms: float
) -> list[dict[str, Any]]:
    """The two targets, MET or not, with their figures. `top`: (concurrency, products/s) of the
    highest /predict level; the p50s: single products at concurrency 1, in process and through /predict."""
    concurrency, got = top
    share = got / ceiling_per_s if ceiling_per_s > 0 else float("nan")
    bound = in_process_p50_ms + LATENCY_SLACK_MS
    return [
        {
            "target": f"throughput at concurrency {concurrency} >= {THROUGHPUT_SHARE:g}x the in-process ceiling "
            "(measured right before and after the level)",
            "met": bool(share >= THROUGHPUT_SHARE),
            "figures": f"{got:.1f} products/s = {share:.2f}x of {ceiling_per_s:.1f}",
        },
        {
            "target": f"p50 latency at concurrency 1 <= in-process single-product p50 + {LATENCY_SLACK_MS:g} ms",
            "met": bool(endpoint_p50_ms <= bound),
            "figures": f"{endpoint_p50_ms:.1f} ms vs {in_process_p50_ms:.1f} + {LATENCY_SLACK_MS:g} = {bound:.1f} ms",
        },
    ]
