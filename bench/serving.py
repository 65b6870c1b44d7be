"""Serving benchmark: the BentoML endpoint against the same model in process, on real fashion products.

    make bench-serving
    .venv/bin/python bench/serving.py --env ATTRFLOW_TORCH_THREADS=1 --tag threads1   # a settings variant

The model is the quality benchmark's exported best model, else a frozen `concat` trained here
(bench/serving_model.py); the products are real catalog products, title + JPEG bytes. In one run:

1. The ceiling, in process: `Predictor` on raw bytes (`decode_image` + `predict`) with one torch
   thread per core (the model itself, with the whole machine): products/s
   at a few batch sizes (the best is the ceiling), and single-product latency (p50/p95/p99).
2. The endpoint: `bentoml serve serving.service:AttributeService` as a subprocess (defaults, the
   prediction log on; bench/serving_server.py), its cold start (process start -> /readyz 200),
   single products in process and through /predict (one client) in alternating blocks (the
   machine's speed drifts, so the latency target compares the two over the same minutes), then
   closed-loop aiohttp clients over loopback (bench/serving_load.py), after a warm-up: single
   products to POST /predict (JSON, base64 image) at concurrency 1, 4, 16, 64, POST
   /predict_batch with 64 products per request, and /predict at concurrency 1 once more (is a lone
   request still served at once after load?). Per level: products/s, p50/p95/p99 latency, the
   forward passes the scorer made (attrflow's `attrflow_scorer_batch_products` histogram, the
   difference of /metrics before and after), BentoML's time in the front and the scorer, CPU (server processes by role, the client, everything else on the machine), server RSS.
3. The targets, MET / NOT MET: at concurrency 64 the endpoint reaches >= 0.8x the ceiling; at
   concurrency 1 its p50 is within 20 ms of the in-process single-product p50 (the paired blocks).

Writes bench/results/serving.json and serving.md (with --tag: bench/results/serving-variants/TAG.*).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository first: `bench` and `serving` are its packages

import httpx  # noqa: E402

from bench.common import RESULTS, log  # noqa: E402
from bench.serving_by_id import full_catalog, online_read, prepare_store  # noqa: E402
from bench.serving_load import closed_loop, histogram, histogram_delta, latency_summary, targets, total  # noqa: E402
from bench.serving_model import BenchProduct, find_model, load_products  # noqa: E402
from bench.serving_report import environment, write_report  # noqa: E402
from bench.serving_server import Server, busy_cpu_seconds, start_server  # noqa: E402

DURATION = "bentoml_service_request_duration_seconds"  # per service and endpoint, as BentoML sees them
DURATIONS = {"front /predict": ("attrflow", "/predict"), "front /predict_batch": ("attrflow", "/predict_batch")}
DURATIONS["scorer /score"] = ("attrflow_scorer", "/score")
DURATIONS["front /predict_by_id"] = ("attrflow", "/predict_by_id")
DURATIONS["scorer /score_ids"] = ("attrflow_scorer", "/score_ids")
PRODUCTS_HIST = ("attrflow_scorer_batch_products", {})  # products per forward pass of the model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    ap.add_argument("--model-dir", type=Path, help="serve this model folder instead of looking for one")
    ap.add_argument("--retrain", action="store_true", help="train the fallback concat again")
    ap.add_argument("--products", type=int, default=256, help="distinct catalog products sent (default 256)")
    ap.add_argument("--levels", type=ints, default=[1, 4, 16, 64], help="/predict concurrencies")
    ap.add_argument("--batch-levels", type=ints, default=[1, 2], help="/predict_batch concurrencies")
    ap.add_argument("--batch-products", type=int, default=64, help="products per /predict_batch request")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per level")
    ap.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each level")
    ap.add_argument("--ceiling-batches", type=ints, default=[16, 32, 64, 128], help="in-process batch sizes")
    ap.add_argument("--ceiling-seconds", type=float, default=6.0, help="seconds per in-process batch size")
    ap.add_argument("--single", type=int, default=60, help="in-process single-product calls timed")
    ap.add_argument("--paired-blocks", type=int, default=6, help="alternating blocks for the latency target")
    ap.add_argument("--paired-per-block", type=int, default=15, help="calls per block, in process and over HTTP")
    ap.add_argument(
        "--no-after-load", dest="after_load", action="store_false", help="skip concurrency 1 again at the end"
    )
    ap.add_argument("--by-id-levels", type=ints, default=[1, 16], help="/predict_by_id concurrencies, one id each")
    ap.add_argument(
        "--by-id-batch-levels", type=ints, default=[1, 2, 4], help="/predict_by_id concurrencies, 64 ids each"
    )
    ap.add_argument("--no-by-id", dest="by_id", action="store_false", help="skip /predict_by_id (Feast)")
    ap.add_argument(
        "--no-full-catalog", dest="full_catalog", action="store_false", help="skip materializing the whole catalog"
    )
    ap.add_argument("--env", action="append", default=[], metavar="ATTRFLOW_X=V", help="a server setting (repeat)")
    ap.add_argument("--serve-from", type=Path, default=ROOT, help="serve this checkout's serving/ (e.g. a branch)")
    ap.add_argument("--tag", help="a variant's name: results go to bench/results/serving-variants/TAG.{json,md}")
    return ap.parse_args(argv)


def settings_env(pairs: list[str]) -> dict[str, str]:
    """--env KEY=VALUE pairs as a dict (also set in this process, so the ceiling reads the same settings)."""
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.startswith(("ATTRFLOW_", "BENTOML_")):
            raise SystemExit(f"--env {pair!r}: expected ATTRFLOW_NAME=VALUE")
        env[key] = value
    os.environ.update(env)
    return env


# --- the ceiling, in process ---------------------------------------------------------------------


class InProcess:
    """The model in this process, scoring raw products as the ceiling does: decode + predict."""

    def __init__(self, model_dir: Path, threads: int) -> None:
        import torch

        from components.inference.predictor import Predictor
        from components.memory import keep_freed_memory
        from serving.settings import ServingSettings

        torch.set_num_threads(threads)
        if ServingSettings().keep_freed_memory:
            keep_freed_memory()  # as the scorer does (serving/service.py): the same allocator
        self.threads = threads
        self.predictor = Predictor(model_dir)
        self.predictor.warmup()

    def score(self, chunk: list[BenchProduct]) -> None:
        from components.inference.inputs import Product, decode_image

        batch = [Product(title=p.title, image=decode_image(p.image), id=p.id) for p in chunk]
        self.predictor.predict(batch, batch_size=len(batch))


def in_process(model: InProcess, products: list[BenchProduct], args: argparse.Namespace) -> dict:
    """Products/s (and CPU per product) of decode + predict at each batch size, and single-product latency."""
    per_batch, cpu_ms = {}, {}
    own_cpu, machine_cpu, wall = time.process_time(), busy_cpu_seconds(), time.perf_counter()
    for size in args.ceiling_batches:
        per_batch[size], cpu_ms[size] = ceiling_block(model, products, size, args.ceiling_seconds)
        log(f"in process, batch {size}: {per_batch[size]:.1f} products/s")
    latencies = []
    for p in products[: args.single]:
        start = time.perf_counter()
        model.score([p])
        latencies.append(time.perf_counter() - start)
    single = latency_summary(latencies, sum(latencies))
    wall, own = time.perf_counter() - wall, time.process_time() - own_cpu
    others = max(0.0, (busy_cpu_seconds() - machine_cpu - own) / wall)
    best = max(per_batch, key=per_batch.get)
    log(
        f"in process, single product: p50 {single['p50_ms']:.1f} ms, p99 {single['p99_ms']:.1f} ms; others {others:.2f}"
    )
    return {
        "torch_threads": model.threads,
        "products_per_s_by_batch": per_batch,
        "cpu_ms_per_product_by_batch": cpu_ms,
        "best_batch": best,
        "ceiling_products_per_s": per_batch[best],
        "single": single,
        "cpu_cores": own / wall,
        "other_cpu_cores": others,
    }


def ceiling_block(model: InProcess, products: list[BenchProduct], size: int, seconds: float) -> tuple[float, float]:
    """(products/s, CPU ms per product) of `seconds` of in-process batches of `size`."""
    model.score(products[:size])  # this shape's first call
    done, start, cpu, i = 0, time.perf_counter(), time.process_time(), 0
    while time.perf_counter() - start < seconds:
        model.score([products[(i + k) % len(products)] for k in range(size)])
        done, i = done + size, i + size
    return done / (time.perf_counter() - start), 1000 * (time.process_time() - cpu) / done


def paired_single(
    server: Server, model: InProcess, products: list[BenchProduct], bodies: list[bytes], blocks: int, per_block: int
) -> dict[str, Any]:
    """Single-product latency in process and through /predict at concurrency 1, in alternating
    blocks, so that both see the same machine (its speed drifts by 10-20% from minute to minute)."""
    local, remote = [], []
    with httpx.Client(timeout=60, headers={"Content-Type": "application/json"}) as client:
        for b in range(blocks):
            picks = [(b * per_block + k) % len(products) for k in range(per_block)]
            for i in picks:
                start = time.perf_counter()
                model.score([products[i]])
                local.append(time.perf_counter() - start)
            for i in picks:
                start = time.perf_counter()
                client.post(server.url + "/predict", content=bodies[i]).raise_for_status()
                remote.append(time.perf_counter() - start)
    paired = {"in_process": latency_summary(local, sum(local)), "endpoint": latency_summary(remote, sum(remote))}
    log(
        f"single product, paired: in process p50 {paired['in_process']['p50_ms']:.1f} ms, "
        f"/predict p50 {paired['endpoint']['p50_ms']:.1f} ms"
    )
    return paired


# --- the endpoint --------------------------------------------------------------------------------


def json_bodies(products: list[BenchProduct], per_request: int | None) -> list[bytes]:
    """Request bodies, serialised once: one product each (/predict), or `per_request` products
    each (/predict_batch), rotating through the products."""

    def item(p: BenchProduct) -> dict[str, Any]:
        return {"id": p.id, "title": p.title, "image": base64.b64encode(p.image).decode()}

    if per_request is None:
        return [json.dumps(item(p)).encode() for p in products]
    n = len(products)
    return [
        json.dumps({"products": [item(products[(s + k) % n]) for k in range(per_request)]}).encode()
        for s in range(0, n, per_request)
    ]


class CpuMeter:
    """CPU use from its creation on, in cores (CPU seconds per wall second): the server's processes
    by role, this process (the client) and every other process on the machine."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.start = (server.cpu_seconds(), time.process_time(), busy_cpu_seconds(), time.perf_counter())

    def read(self) -> dict[str, Any]:
        server0, client0, machine0, wall0 = self.start
        wall = time.perf_counter() - wall0
        by_role = {role: (cpu - server0.get(role, 0.0)) / wall for role, cpu in self.server.cpu_seconds().items()}
        client = (time.process_time() - client0) / wall
        machine = (busy_cpu_seconds() - machine0) / wall
        server = sum(by_role.values())
        return {
            "wall": wall,
            "server": server,
            "by_role": by_role,
            "client": client,
            "others": machine - server - client,
        }


def measure_level(
    server: Server, path: str, bodies: list[bytes], concurrency: int, per_request: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One closed-loop level: latency summary, batches formed, CPU of server and client, RSS."""
    before, meter = server.metrics(), CpuMeter(server)
    run = asyncio.run(closed_loop(server.url + path, bodies, concurrency, args.seconds, args.warmup))
    cpu, after = meter.read(), server.metrics()
    products = max(1, run.answered * per_request)  # over the whole level, as the CPU
    result = {
        "endpoint": path,
        "concurrency": concurrency,
        "products_per_request": per_request,
        **latency_summary(run.latencies, run.seconds, per_request),
        "errors": run.errors,
        "batches": {
            name: histogram_delta(histogram(before, name, **labels), histogram(after, name, **labels))
            for name, labels in (PRODUCTS_HIST,)
        },
        "server_ms": server_durations(before, after),
        "server_cpu_cores": cpu["server"],
        "server_cpu_cores_by_process": cpu["by_role"],
        "server_cpu_ms_per_product": {
            role: 1000 * cores * cpu["wall"] / products for role, cores in cpu["by_role"].items() if role != "serve"
        },
        "client_cpu_cores": cpu["client"],
        "other_cpu_cores": max(0.0, cpu["others"]),  # other people's jobs: a clean measurement has ~0 here
        "server_rss_mb": server.rss_mb(),
    }
    roles = ", ".join(f"{k} {v:.2f}" for k, v in cpu["by_role"].items())
    log(
        f"{path} c={concurrency}: {result['products_per_s']:.1f} products/s, p50 {result['p50_ms']:.0f} / "
        f"p95 {result['p95_ms']:.0f} / p99 {result['p99_ms']:.0f} ms, mean batch "
        f"{result['batches'][PRODUCTS_HIST[0]]['mean']:.1f} products, server {cpu['server']:.2f} cores ({roles}), "
        f"client {cpu['client']:.2f}, others {result['other_cpu_cores']:.2f}, errors {run.errors or 0}"
    )
    return result


def by_id_warmup(server: Server, ids: list[str]) -> dict[str, int]:
    """One untimed /predict_by_id (the scorer opens the feature store on first use); how many
    products each path scored (`embeddings`: stored vectors, `text_image`: stored raw features)."""
    response = httpx.post(f"{server.url}/predict_by_id", json={"ids": ids}, timeout=300)
    response.raise_for_status()
    paths: dict[str, int] = {}
    for p in response.json()["predictions"]:
        key = p.get("features") or p["status"]
        paths[key] = paths.get(key, 0) + 1
    log(f"/predict_by_id warm-up: {paths}")
    return paths


def server_durations(before: str, after: str) -> dict[str, float]:
    """Mean time (ms) a request spent in the front and a call in the scorer over a level, as
    BentoML measures them (the scorer's includes the batching queue)."""
    out = {}
    for name, (service, path) in DURATIONS.items():
        labels = {"service_name": service, "endpoint": path}
        delta = histogram_delta(histogram(before, DURATION, **labels), histogram(after, DURATION, **labels))
        if delta["count"]:
            out[name] = 1000 * delta["mean"]
    return out


def endpoint(
    model_dir: Path,
    model: InProcess,
    products: list[BenchProduct],
    env: dict[str, str],
    args: argparse.Namespace,
    best_batch: int,
) -> dict:
    """Start the server, warm it up, time single products against the model in process, run every level, stop it."""
    singles = json_bodies(products, None)
    batches = json_bodies(products, args.batch_products)
    ids = [p.id for p in products]
    by_id_singles = [json.dumps({"ids": [i]}).encode() for i in ids]
    by_id_batches = [
        json.dumps({"ids": [ids[(s + k) % len(ids)] for k in range(args.batch_products)]}).encode()
        for s in range(0, len(ids), args.batch_products)
    ]
    with tempfile.TemporaryDirectory(prefix="attrflow-bench-serving-") as scratch:
        home = Path(scratch) / "home"  # the server's ATTRFLOW_HOME (bench/serving_server.py)
        store = prepare_store(home, model_dir, products) if args.by_id else None
        server = start_server(model_dir, Path(scratch), env, args.serve_from)
        try:
            log(f"server ready in {server.cold_start_s:.1f} s ({server.url}), RSS {server.rss_mb():.0f} MB")
            idle_rss = server.rss_mb()
            asyncio.run(closed_loop(server.url + "/predict", singles, 1, 0.0, 2 * args.warmup))
            paired = paired_single(server, model, products, singles, args.paired_blocks, args.paired_per_block)
            levels = []
            for c in args.levels:
                if c != max(args.levels):
                    levels.append(measure_level(server, "/predict", singles, c, 1, args))
                    continue
                # The machine's speed drifts from minute to minute (by 2x between runs here), so the
                # throughput target compares the top level with the ceiling measured right around it.
                before, _ = ceiling_block(model, products, best_batch, args.ceiling_seconds)
                level = measure_level(server, "/predict", singles, c, 1, args)
                after, _ = ceiling_block(model, products, best_batch, args.ceiling_seconds)
                log(f"ceiling around c={c}: {before:.1f} before, {after:.1f} after (batch {best_batch})")
                levels.append({**level, "ceiling_around": {"batch": best_batch, "before": before, "after": after}})
            levels += [
                measure_level(server, "/predict_batch", batches, c, args.batch_products, args)
                for c in args.batch_levels
            ]
            if args.by_id:  # the same products by id: features from the online store, no encoder
                store["paths"] = by_id_warmup(server, ids[: args.batch_products])
                levels += [
                    measure_level(server, "/predict_by_id", by_id_singles, c, 1, args) for c in args.by_id_levels
                ]
                levels += [
                    measure_level(server, "/predict_by_id", by_id_batches, c, args.batch_products, args)
                    for c in args.by_id_batch_levels
                ]
            if args.after_load:  # one client again: is a lone request still served at once after load?
                levels.append({**measure_level(server, "/predict", singles, 1, 1, args), "after_load": True})
            metrics = server.metrics()
        finally:
            server.stop()
        server_log = server.log_path.read_text(errors="replace")
        if args.by_id:
            store["online_read"] = online_read(home, model_dir, ids)
    return {
        "feature_store": store,
        "cold_start_s": server.cold_start_s,
        "paired_single": paired,
        "idle_rss_mb": idle_rss,
        "peak_rss_mb": max(level["server_rss_mb"] for level in levels),
        "levels": levels,
        "log_rows_written": total(metrics, "attrflow_prediction_log_rows_total"),
        "server_log_errors": [line for line in server_log.splitlines() if " ERROR " in line][-10:],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = settings_env(args.env)
    from components.settings import get_settings
    from serving.settings import ServingSettings

    started = time.perf_counter()
    settings = ServingSettings()
    model_dir, model_source = find_model(get_settings().home.resolve(), args.model_dir, args.retrain)
    log(f"model: {model_dir} ({model_source})")
    products = load_products(args.products)
    log(
        f"{len(products)} catalog products, JPEG {sum(len(p.image) for p in products) / len(products) / 1024:.1f} KB mean"
    )
    model = InProcess(model_dir, os.cpu_count() or 1)  # the model itself, with the whole machine
    ceiling = in_process(model, products, args)
    served = endpoint(model_dir, model, products, env, args, ceiling["best_batch"])
    top = max((lv for lv in served["levels"] if lv["endpoint"] == "/predict"), key=lambda lv: lv["concurrency"])
    paired = served["paired_single"]
    around = top.get("ceiling_around")
    checks = targets(
        (around["before"] + around["after"]) / 2 if around else ceiling["ceiling_products_per_s"],
        (top["concurrency"], top["products_per_s"]),
        paired["in_process"]["p50_ms"],
        paired["endpoint"]["p50_ms"],
    )
    by_id = [lv for lv in served["levels"] if lv["endpoint"] == "/predict_by_id"]
    raw = [lv for lv in served["levels"] if lv["endpoint"] in ("/predict", "/predict_batch")]
    if by_id:  # Feast: the embedding path against the raw path, each at its best level
        best_id = max(by_id, key=lambda lv: lv["products_per_s"])
        best_raw = max(raw, key=lambda lv: lv["products_per_s"])  # /predict or /predict_batch, the faster
        ratio = best_id["products_per_s"] / best_raw["products_per_s"]
        single = max((lv for lv in raw if lv["endpoint"] == "/predict"), key=lambda lv: lv["products_per_s"])
        checks.append(
            {
                "target": "/predict_by_id (stored embeddings) >= 10x the raw path's throughput",
                "figures": (
                    f"{best_id['products_per_s']:.0f} products/s ({best_id['products_per_request']} ids/request, "
                    f"c={best_id['concurrency']}) vs {best_raw['products_per_s']:.0f} ({best_raw['endpoint']}, "
                    f"c={best_raw['concurrency']}): {ratio:.1f}x; against /predict alone "
                    f"({single['products_per_s']:.0f}, c={single['concurrency']}): "
                    f"{best_id['products_per_s'] / single['products_per_s']:.1f}x"
                ),
                "met": ratio >= 10,
            }
        )
    if args.by_id and args.full_catalog:
        served["full_catalog"] = full_catalog()
    results = {
        "environment": environment(),
        "model": {"dir": str(model_dir), "source": model_source},
        "settings": {
            **env,
            "threads_per_worker": settings.threads_per_worker,
            "workers": settings.workers,
            "keep_freed_memory": settings.keep_freed_memory,
        },
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "products": {"n": len(products), "mean_jpeg_bytes": sum(len(p.image) for p in products) / len(products)},
        "in_process": ceiling,
        "endpoint": served,
        "targets": checks,
        "seconds": time.perf_counter() - started,
    }
    out = RESULTS / "serving-variants" / args.tag if args.tag else RESULTS / "serving"
    out.parent.mkdir(parents=True, exist_ok=True)
    print(write_report(out, results))
    for check in checks:
        print(f"{'MET' if check['met'] else 'NOT MET'}: {check['target']}: {check['figures']}")
    log(f"done in {results['seconds']:.0f} s -> {out}.json, {out}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
