"""Quality benchmark on the real fashion catalog.

    make bench-quality                      # everything frozen (the default run), rows in 2 processes
    .venv/bin/python bench/quality.py --rows text,concat --skip-colour-hidden
    .venv/bin/python bench/quality.py --reuse      # recompute only rows whose config changed, then report
    .venv/bin/python bench/quality.py --finetune   # + the optional full fine-tuning rows (slow on CPU)
    make bench-seeds                        # run to run: text, concat, modality_attention_l0.1 with seeds 1, 2

Ingests ../shared/data/fashion-product-images-small/ with configs/catalogs/fashion.yaml, then on
the fixed seeded split compares, per attribute (articleType, baseColour, gender, season, usage),
accuracy, macro-F1, weighted-F1 and R@P95 on the test split of:

  1. TF-IDF (word 1-2 grams) + logistic regression on the title, one per attribute (the bar);
  2. attrflow `text` and `image` (single modality);
  3. attrflow `concat`, `late`, `cross_attention`;
  4. attrflow `modality_attention` with lambda_kl in {0, 1e-3, 1e-2, 1e-1} (+ image-weight stats);

all on frozen encoders over one embedding cache (components.features.cache), plus a second
table, "colour hidden in text": a derived catalog where a seeded 50% of products lost every
colour word from their title. Writes bench/results/quality.json, bench/results/quality.md and
plots, exports the best model (chosen on validation macro-F1) to
ATTRFLOW_HOME/bench/fashion-best/ and registers it as model `fashion` in the registry.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository first: `bench` is the package, not this folder's modules

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.bootstrap import restate_targets, target_checks  # noqa: E402
from bench.cache import embedding_cache  # noqa: E402
from bench.colour_hidden import colour_hidden_dataset  # noqa: E402
from bench.common import ATTRIBUTES, RESULTS, SPEC, log  # noqa: E402
from bench.ensemble import ensemble_row  # noqa: E402
from bench.lanes import lane_jobs, run_lanes  # noqa: E402
from bench.plots import plot_pr, plot_weights_of  # noqa: E402
from bench.register import export_best, register_best  # noqa: E402
from bench.report import environment, write_report  # noqa: E402
from bench.rows import COLOUR_ATTRIBUTES, COLOUR_ROWS, ENSEMBLE, FINETUNE_OF, FINETUNE_PREFIX, ROWS, row_config  # noqa: E402
from bench.seeds import write_seed_table  # noqa: E402
from bench.selection import best_lambda, best_on_validation, finetune_rows  # noqa: E402
from bench.stored import run_row, stored_rows  # noqa: E402
from bench.tfidf import TFIDF_CONFIG, TFIDF_PROBS, tfidf_row  # noqa: E402
from bench.training import attrflow_row  # noqa: E402
from components.catalog import ingest, load_dataset, load_spec  # noqa: E402
from components.catalog.dataset import Dataset  # noqa: E402
from components.features.preprocess import encode_labels  # noqa: E402
from components.memory import keep_freed_memory  # noqa: E402
from components.settings import get_settings  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--rows", default="all", help="comma-separated attrflow rows, 'all' (default) or 'none': " + ",".join(ROWS)
    )
    ap.add_argument(
        "--reuse", action="store_true", help="reuse rows already in bench/results/rows/ whose config is unchanged"
    )
    ap.add_argument("--skip-tfidf", action="store_true")
    ap.add_argument("--skip-colour-hidden", action="store_true")
    ap.add_argument("--colour-rows", default=",".join(COLOUR_ROWS), help="rows of the colour-hidden table to run")
    ap.add_argument(
        "--no-report", action="store_true", help="only compute rows (e.g. to run several processes side by side)"
    )
    ap.add_argument(
        "--finetune",
        action="store_true",
        help="also run the (slow) fine-tuning rows, after the frozen ones: "
        + ",".join(FINETUNE_PREFIX + n for n in FINETUNE_OF)
        + " (best lambda)",
    )
    ap.add_argument(
        "--seeds",
        default="",
        help="comma-separated extra training seeds: each selected row is also trained "
        "as ROW@seedN (the run-to-run table; the default seed is 0)",
    )
    ap.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="run the rows in this many processes side by side, one torch thread "
        "each (default 2: one per core of the reference machine); 1 = one after another in this process",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument(
        "--rerender",
        action="store_true",
        help="only rewrite quality.md from quality.json and seeds.json (targets re-decided; no training)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    # Set by the parent for its lane processes: the already ingested dataset folders.
    ap.add_argument("--dataset", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--colour-dataset", type=Path, default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.rerender:
        print(rerender(args.out))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()
    home = get_settings().home.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    timing: dict[str, float] = {}

    t0 = time.perf_counter()
    ds = load_dataset(args.dataset or ingest(load_spec(SPEC)).dataset_dir)
    timing["ingest"] = time.perf_counter() - t0
    log(f"dataset {ds.name}/{ds.version}: {ds.manifest['counts']['splits']}")
    labels = {k: v.numpy() for k, v in encode_labels(ds.items, {a: ds.vocab[a] for a in ATTRIBUTES}).items()}
    results: dict[str, Any] = {"environment": environment(ds), "rows": {}}
    cache_record = args.out / "rows" / "embedding_cache.json"
    text_enc, image_enc = embedding_cache(ds, cache_record, timing)

    names = list(ROWS) if args.rows == "all" else [] if args.rows == "none" else args.rows.split(",")
    if args.finetune:
        names += finetune_rows(args.out)
    names += [f"{n}@seed{s}" for n in names if n in ROWS for s in args.seeds.split(",") if s]
    colour_rows = [] if args.skip_colour_hidden else [r for r in args.colour_rows.split(",") if r]

    ds_ch = hidden = None
    if colour_rows:
        t0 = time.perf_counter()
        ds_ch, hidden, results["colour_hidden"] = colour_hidden_dataset(
            home, ds, text_enc, image_enc, args.colour_dataset
        )
        timing["colour-hidden catalog + cache"] = time.perf_counter() - t0
        (args.out / "rows" / "colour_hidden.json").write_text(json.dumps(results["colour_hidden"], indent=1))

    if args.jobs > 1:
        t0 = time.perf_counter()
        datasets = ["--dataset", str(ds.path)] + (["--colour-dataset", str(ds_ch.path)] if ds_ch is not None else [])
        run_lanes(lane_jobs(args, names, colour_rows, datasets), args.jobs)
        timing[f"rows ({args.jobs} processes)"] = time.perf_counter() - t0
    else:
        run_rows(args, home, ds, labels, names, colour_rows, ds_ch, hidden)

    if args.seeds:  # the run-to-run table: every stored seeded row (and its seed-0 row) against TF-IDF+LR
        write_seed_table(args.out, results["environment"])
    if args.no_report:
        log(f"rows done in {time.perf_counter() - t_all:.0f}s (no report)")
        return
    report(args, home, ds, labels, results, timing, cache_record)
    timing["this run"] = time.perf_counter() - t_all  # everything, the bootstrap included
    text = write_report(args.out, results)
    log(f"done in {timing['this run']:.0f}s -> {args.out / 'quality.md'}")
    print(text)


def run_rows(
    args: argparse.Namespace,
    home: Path,
    ds: Dataset,
    labels: dict[str, np.ndarray],
    names: list[str],
    colour_rows: list[str],
    ds_ch: Dataset | None,
    hidden: np.ndarray | None,
) -> None:
    """The selected rows one after another in this process (--jobs 1: what each lane runs)."""
    if not args.skip_tfidf:
        run_row(args.out, "tfidf_lr", TFIDF_CONFIG, lambda: tfidf_row(ds, labels, home / TFIDF_PROBS), args.reuse)
    out_root = home / "bench" / "quality"
    for name in names:
        cfg = row_config(name)
        run_row(
            args.out,
            name,
            cfg.model_dump(mode="json"),
            partial(attrflow_row, name, cfg, ds, out_root, labels),
            args.reuse,
        )
    if colour_rows:
        labels_ch = {
            k: v.numpy() for k, v in encode_labels(ds_ch.items, {a: ds_ch.vocab[a] for a in ATTRIBUTES}).items()
        }
        best_ma = (
            best_lambda(stored_rows(args.out, names=[n for n in ROWS if n.startswith("modality_attention_l")]))
            or "modality_attention_l0"
        )
        for name in colour_rows:
            src = best_ma if name == "modality_attention" else name
            cfg = row_config(src, COLOUR_ATTRIBUTES)
            run_row(
                args.out,
                f"colour_hidden-{src}",
                cfg.model_dump(mode="json"),
                partial(
                    attrflow_row, src, cfg, ds_ch, home / "bench" / "quality-colour-hidden", labels_ch, masked=hidden
                ),
                args.reuse,
            )


def report(
    args: argparse.Namespace,
    home: Path,
    ds: Dataset,
    labels: dict[str, np.ndarray],
    results: dict[str, Any],
    timing: dict[str, float],
    cache_record: Path,
) -> None:
    """Fill `results` for the report: every row stored so far (this run's and earlier runs'), the
    ensemble, the best row (plots, export, registry), timing, and the targets."""
    results["rows"] = stored_rows(args.out)
    best_ma = best_lambda(results["rows"])
    ch_rows = {
        n: r
        for n, r in stored_rows(args.out, "colour_hidden-").items()
        if not n.startswith("modality_attention_l") or n == best_ma
    }
    if ch_rows and (args.out / "rows" / "colour_hidden.json").is_file():
        results["colour_hidden"] = {
            **json.loads((args.out / "rows" / "colour_hidden.json").read_text()),
            "rows": ch_rows,
        }
    attrflow_rows = [n for n in results["rows"] if n in ROWS]
    if len(attrflow_rows) > 1:
        t0 = time.perf_counter()
        results["rows"][ENSEMBLE] = ensemble_row(results["rows"], ds, labels, home / "bench" / "quality" / ENSEMBLE)
        timing["ensemble"] = time.perf_counter() - t0
        attrflow_rows.append(ENSEMBLE)
    results["best"] = best_on_validation(results["rows"], attrflow_rows)
    best_dir = Path(results["rows"][results["best"]]["model_dir"])
    log(f"best (validation macro-F1): {results['best']}")
    ma_dirs = {
        n: Path(results["rows"][n]["model_dir"]) for n in results["rows"] if n.startswith("modality_attention_l")
    }
    if ma_dirs:
        plot_weights_of(ma_dirs, ds, args.out / "modality_weights.png")
    plot_pr(best_dir, ds, args.out / "pr_curves_best.png")
    export = export_best(best_dir, home)
    results["export"] = str(export)
    results["registry"] = register_best(export, results["rows"][results["best"]]["attributes"], ds, results["best"])
    log(f"registry: {results['registry']}")

    results["timing"] = timing
    previous = args.out / "quality.json"
    if args.rows == "none" and args.finetune and previous.is_file():
        # A run of the fine-tuning rows alone (make bench-finetune) keeps the frozen run's timing.
        results["timing"] = json.loads(previous.read_text()).get("timing", {})
        results["timing_finetune"] = timing
    if cache_record.is_file():
        results["embedding_cache_computed"] = json.loads(cache_record.read_text())
    results["row_seconds"] = {n: r.get("wall_seconds", r.get("train_seconds")) for n, r in results["rows"].items()}
    if ch_rows:
        results["row_seconds"].update(
            {f"colour_hidden-{n}": r.get("wall_seconds", r.get("train_seconds")) for n, r in ch_rows.items()}
        )
    results["seeds"] = seed_rows(args.out)
    if "tfidf_lr" in results["rows"]:
        results["targets"] = target_checks(results, ds, labels, home / TFIDF_PROBS)


def seed_rows(out: Path) -> dict[str, Any]:
    """The run-to-run table's rows (make bench-seeds), shown beside the rows' means."""
    path = out / "seeds.json"
    return json.loads(path.read_text())["rows"] if path.is_file() else {}


def rerender(out: Path) -> str:
    """quality.md again from quality.json and seeds.json: the targets re-decided, seeds beside the means."""
    results = json.loads((out / "quality.json").read_text())
    restate_targets(results)
    results["seeds"] = seed_rows(out)
    return write_report(out, results)


if __name__ == "__main__":
    main()
