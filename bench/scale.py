"""The scale-out benchmark (`make bench-scale`): the distributed paths against the in-process ones,
at equal total cores, on this machine.

1. Batch scoring of the fashion catalog with the frozen production model (the quality benchmark's
   exported best model, else the serving benchmark's concat; bench/serving_model.py), from raw
   rows (text and images through the encoders) and from the cached embeddings: the in-process
   Predictor on all cores, `attrflow score` on a local Ray (one node, all cores) and on a two-node
   local cluster (bench/local_cluster.py, half the cores each). Target: distributed overhead < 15%.
2. Hyperparameter search: trials finished per 10 minutes on the two-node cluster vs local Ray
   (configs/search/fashion.yaml with a shorter budget).
3. The pipeline (ingest, train, register) on a demo catalog through a Prefect process work pool's
   worker vs in process, against one temporary Prefect server.

    python bench/scale.py                                   # the whole catalog (~40,000 products)
    python bench/scale.py --products 2000 --tune-seconds 120 --pipeline-products 300   # smaller

Writes bench/results/scale.{json,md}. On a machine shared with other work the figures are indicative.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flows  # noqa: E402,F401  (Prefect's defaults before Prefect is imported)
from bench.common import RESULTS, ROOT, log  # noqa: E402
from bench.local_cluster import LocalCluster  # noqa: E402
from bench.serving_model import catalog_frame, find_model, ingest_rows  # noqa: E402
from components.settings import get_settings  # noqa: E402

TARGET_OVERHEAD = 0.15


def cores() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def load_load() -> float:
    return os.getloadavg()[0]


# --- 1. batch scoring --------------------------------------------------------------------------


def prepare(home: Path, products: int | None, model_dir: Path):
    from components.catalog import load_dataset
    from components.features.cache import cached_encodings
    from components.models.encoders import ImageEncoder, TextEncoder
    from components.models.io import load_meta
    from components.training.trainer import TrainConfig

    frame, images = catalog_frame()
    if products and products < len(frame):
        frame = frame.sample(n=products, random_state=0)
    dataset = load_dataset(ingest_rows(frame, images, home / "bench" / f"scale-catalog-{len(frame)}", home))
    model = TrainConfig.model_validate({"model": load_meta(model_dir)["model"]}).model
    start = time.perf_counter()
    cached_encodings(dataset, TextEncoder(model.text), ImageEncoder(model.image), with_tokens=False, progress=False)
    log(
        f"dataset {dataset.name} {dataset.version}: {len(dataset.items)} products; cache ready in {time.perf_counter() - start:.0f} s"
    )
    return dataset


def score_runs(model_dir: Path, dataset, out_dir: Path, cluster: LocalCluster, features: list[str]) -> list[dict]:
    import pandas as pd
    import torch

    from components.scoring import ScoreConfig, score_dataset

    rows = []
    n = cores()
    for feat in features:
        config = ScoreConfig(features=feat, chunk_size=256)
        torch.set_num_threads(n)
        runs = [
            ("in-process", dict(in_process=True)),
            ("local Ray, 1 node", dict(address=None)),
            ("local cluster, 2 nodes", dict(address=cluster.address)),
        ]
        reference = None
        for label, kwargs in runs:
            load = load_load()
            result = score_dataset(
                model_dir,
                dataset,
                out_dir / f"{feat}-{label.split(',')[0].replace(' ', '_')}.parquet",
                config,
                **kwargs,
            )
            frame = pd.read_parquet(result.out)
            if reference is None:
                reference = frame
            agree = float((frame["result"] == reference["result"]).mean())
            rows.append(
                {
                    "features": feat,
                    "path": label,
                    "products": result.rows,
                    "seconds": round(result.seconds, 2),
                    "products_per_second": round(result.products_per_second, 1),
                    "workers": result.workers,
                    "nodes": len(result.nodes) or 1,
                    "identical_to_in_process": agree,
                    "load_before": round(load, 2),
                }
            )
            log(
                f"score {feat:10s} {label:24s} {result.rows} products in {result.seconds:.1f} s = {result.products_per_second:.0f}/s (same as in-process: {agree:.1%})"
            )
        base = next(r for r in rows if r["features"] == feat and r["path"] == "in-process")
        for r in rows:
            if r["features"] == feat:
                r["overhead_vs_in_process"] = round(1 - r["products_per_second"] / base["products_per_second"], 3)
    return rows


# --- 2. search -----------------------------------------------------------------------------------


def tune_runs(dataset, seconds: float, cluster: LocalCluster, out_dir: Path) -> list[dict]:
    from components.tuning import load_search, prepare_embeddings, run_search

    spec = load_search(ROOT / "configs" / "search" / "fashion.yaml")
    spec.time_budget_s, spec.trials = seconds, 1000
    spec.reuse_actors = False  # both paths alike; with reuse, one node's workers can take every trial
    start = time.perf_counter()
    prepare_embeddings(spec, dataset, progress=False)
    log(f"search cache ready in {time.perf_counter() - start:.0f} s")
    rows = []
    for label, address in (("local Ray, 1 node", None), ("local cluster, 2 nodes", cluster.address)):
        load = load_load()
        result = run_search(spec, dataset, out_dir / label.split(",")[0].replace(" ", "_"), address=address)
        counts = result.counts()
        ended = counts["completed"] + counts["stopped_early"]
        nodes = {t.node_id for t in result.trials if t.node_id}
        rows.append(
            {
                "path": label,
                "seconds": round(result.seconds, 1),
                "budget_s": seconds,
                "trials_started": len(result.trials),
                "trials_ended": ended,
                "counts": counts,
                "trials_per_10_min": round(ended / seconds * 600, 1),
                "nodes_used": len(nodes),
                "load_before": round(load, 2),
            }
        )
        log(f"tune {label}: {ended} trials ended in a {seconds:.0f} s budget ({counts}); nodes {len(nodes)}")
    return rows


# --- 3. pipeline ---------------------------------------------------------------------------------


def pipeline_runs(home: Path, products: int, out_dir: Path) -> list[dict]:
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from components.catalog.demo import write_demo_catalog
    from flows.deployments import deploy_to_pool
    from flows.pipeline import pipeline_flow

    config = str(ROOT / "configs" / "models" / "text.yaml")
    rows = []
    with prefect_test_harness(server_startup_timeout=300):
        api = PREFECT_API_URL.value()
        spec = write_demo_catalog(out_dir / "demo-inprocess", n=products, seed=11)
        start = time.perf_counter()
        pipeline_flow(str(spec), [config], model_name="scale-inprocess", package=False)
        rows.append({"path": "in process", "seconds": round(time.perf_counter() - start, 1), "products": products})
        log(f"pipeline in process: {rows[-1]['seconds']} s")

        deploy_to_pool("scale-bench", working_dir=ROOT)
        spec = write_demo_catalog(out_dir / "demo-worker", n=products, seed=12)  # another catalog: no reuse
        env = {
            **os.environ,
            "PREFECT_API_URL": api,
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "ATTRFLOW_HOME": str(home.resolve()),
        }
        worker = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", "scale-bench", "--type", "process"],
            env=env,
            stdout=open(out_dir / "worker.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            time.sleep(5)  # the worker is polling
            start = time.perf_counter()
            run = run_deployment(
                "pipeline/scheduled-retrain",
                parameters=_pipeline_parameters(
                    spec=str(spec), configs=[config], model_name="scale-worker", package=False
                ),
                timeout=3600,
            )
            seconds = time.perf_counter() - start
        finally:
            worker.terminate()
            worker.wait(timeout=30)
        if not run.state.is_completed():
            raise RuntimeError(f"the worker's pipeline run ended {run.state}; see {out_dir / 'worker.log'}")
        rows.append({"path": "work-pool worker", "seconds": round(seconds, 1), "products": products})
        log(f"pipeline through a worker: {rows[-1]['seconds']} s (includes the worker's process start)")
    return rows


def _pipeline_parameters(**given) -> dict:
    """`given`, with the scheduled deployment's optional extras (an automatic-model budget) off, so
    the worker's run does what the in-process run does."""
    import inspect

    from flows.pipeline import pipeline_flow

    extras = {"fit_budget": None, "search": None}
    return {**{k: v for k, v in extras.items() if k in inspect.signature(pipeline_flow.fn).parameters}, **given}


# --- report ---------------------------------------------------------------------------------------


@contextmanager
def cluster_session(nodes: int, cpus: int):
    cluster = LocalCluster(nodes=nodes, cpus_per_node=cpus)
    try:
        cluster.start()
        with cluster.driver_auth():
            yield cluster
    finally:
        cluster.stop()


def markdown(report: dict) -> str:
    lines = [
        "# Scale-out (`make bench-scale`)",
        "",
        f"{report['when']}, {report['cores']} cores, load average {report['load_start']} at the start "
        f"(other work on the machine: the figures are indicative). Command: `{report['command']}`.",
        "",
    ]
    if report.get("scoring"):
        lines += [
            f"## Batch scoring ({report['products']} fashion products, model: {report['model']})",
            "",
            "| features | path | workers | nodes | products/s | overhead vs in-process | same predictions |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in report["scoring"]:
            lines.append(
                f"| {r['features']} | {r['path']} | {r['workers']} | {r['nodes']} | {r['products_per_second']:.0f} | "
                f"{r['overhead_vs_in_process']:+.1%} | {r['identical_to_in_process']:.1%} |"
            )
        lines.append(f"\nTarget: overhead < {TARGET_OVERHEAD:.0%} at equal total cores.\n")
    if report.get("tune"):
        lines += [
            "## Search: trials per 10 minutes",
            "",
            "| path | budget (s) | trials ended | per 10 min | nodes used |",
            "|---|---|---|---|---|",
        ]
        for r in report["tune"]:
            lines.append(
                f"| {r['path']} | {r['budget_s']:.0f} | {r['trials_ended']} | {r['trials_per_10_min']} | {r['nodes_used']} |"
            )
        lines.append("")
    if report.get("pipeline"):
        lines += ["## Pipeline wall time", "", "| path | demo products | seconds |", "|---|---|---|"]
        for r in report["pipeline"]:
            lines.append(f"| {r['path']} | {r['products']} | {r['seconds']} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=None, help="catalog products to score (default: all)")
    parser.add_argument("--features", default="raw,embeddings", help="raw, embeddings or both")
    parser.add_argument("--tune-seconds", type=float, default=600, help="search budget per path (0: skip)")
    parser.add_argument("--pipeline-products", type=int, default=500, help="demo catalog size (0: skip the pipeline)")
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    home = get_settings().home
    work = (home / "bench" / "scale").resolve()
    work.mkdir(parents=True, exist_ok=True)
    n = cores()
    report = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": n,
        "load_start": round(load_load(), 2),
        "command": "python bench/scale.py " + " ".join(sys.argv[1:]),
    }
    model_dir, how = find_model(home, args.model_dir)
    report["model"] = how
    dataset = prepare(home, args.products, model_dir)
    report["products"] = len(dataset.items)
    with cluster_session(nodes=2, cpus=max(1, n // 2)) as cluster:
        report["scoring"] = score_runs(model_dir, dataset, work / "scores", cluster, args.features.split(","))
        if args.tune_seconds > 0:
            report["tune"] = tune_runs(dataset, args.tune_seconds, cluster, work / "tune")
    if args.pipeline_products > 0:
        report["pipeline"] = pipeline_runs(home, args.pipeline_products, work / "pipeline")
    report["load_end"] = round(load_load(), 2)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(report, indent=1))
    (args.out / "scale.md").write_text(markdown(report))
    log(f"wrote {args.out / 'scale.json'} and scale.md")


if __name__ == "__main__":
    main()
