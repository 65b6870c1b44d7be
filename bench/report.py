"""The quality report: the run's environment, and bench/results/quality.json + quality.md."""

from __future__ import annotations

import contextlib
import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import ATTRIBUTES
from bench.rows import ENCODERS, ENSEMBLE, FINETUNE_PREFIX, HEAD, TRAINING
from components.catalog.dataset import Dataset


def write_report(out: Path, results: dict[str, Any]) -> str:
    """Write bench/results/quality.json and quality.md; return the markdown."""
    (out / "quality.json").write_text(json.dumps(results, indent=1, default=float))
    text = markdown(results)
    (out / "quality.md").write_text(text)
    return text


def seed_means(seeds: dict[str, Any] | None, metric: str) -> list[float] | None:
    """A row's mean over the attributes for each training seed (bench/results/seeds.json)."""
    if not seeds or metric not in seeds:
        return None
    return [float(np.mean([seeds[metric][a]["values"][i] for a in ATTRIBUTES])) for i in range(len(seeds["seeds"]))]


def environment(ds: Dataset) -> dict[str, Any]:
    import sklearn
    import timm
    import transformers

    cpu = platform.processor()
    with contextlib.suppress(Exception):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "timm": timm.__version__,
        "scikit_learn": sklearn.__version__,
        "dataset": {
            "name": ds.name,
            "version": ds.version,
            "path": str(ds.path),
            "splits": ds.manifest["counts"]["splits"],
        },
        "image_size": ENCODERS["image"]["image_size"],
        "encoders": ENCODERS,
        "head": HEAD,
        "training": TRAINING,
    }


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# Quality benchmark: fashion catalog (test split, {results['environment']['dataset']['splits']['test']} products)",
        "",
    ]
    env = results["environment"]
    lines += [
        f"{env['date']} · {env['cpu']} ({env['cpu_count']} cores) · torch {env['torch']} · transformers {env['transformers']} · timm {env['timm']} · image {env['image_size'][0]}x{env['image_size'][1]} (h x w)",
        "",
    ]
    rows = results["rows"]
    for metric, title in (
        ("f1_macro", "macro-F1"),
        ("r_at_p95", "R@P95"),
        ("accuracy", "accuracy"),
        ("f1_weighted", "weighted-F1"),
    ):
        lines += [
            f"## {title}",
            "",
            "| row | " + " | ".join(ATTRIBUTES) + " | mean | train s | items/s |",
            "|---" * (len(ATTRIBUTES) + 4) + "|",
        ]
        for name, row in rows.items():
            vals = [row["attributes"][a][metric] for a in ATTRIBUTES]
            spread = seed_means(results.get("seeds", {}).get(name), metric)
            lines.append(
                f"| {name}{' **(best)**' if name == results.get('best') else ''} | "
                + " | ".join(f"{v:.3f}" for v in vals)
                + f" | {np.mean(vals):.3f}"
                + (f" ({min(spread):.3f}-{max(spread):.3f} over {len(spread)} seeds)" if spread else "")
                + f" | {row['train_seconds']:.0f} | {row['items_per_second']:.0f} |"
            )
        lines.append("")
        if metric == "f1_macro" and results.get("seeds"):
            lines += [
                "In brackets: the range of the mean over training seeds 0-2 (make bench-seeds; "
                "bench/results/seeds.md has each attribute's spread).",
                "",
            ]
    if ENSEMBLE in rows:
        ens = rows[ENSEMBLE]["config"]
        lines += [
            f"`{ENSEMBLE}`: "
            + ", ".join(f"{n} x{w:g}" for n, w in ens["weights"].items())
            + f" (picked from {len(ens['pool'])} rows by {ens['selection']}; its validation score is the one it was picked on)",
            "",
        ]
    ma = {n: r for n, r in rows.items() if n.startswith("modality_attention")}
    if ma:
        lines += [
            "## modality_attention: image weight per attribute (test, mean ± std)",
            "",
            "| lambda | " + " | ".join(ATTRIBUTES) + " |",
            "|---" * (len(ATTRIBUTES) + 1) + "|",
        ]
        for n, r in ma.items():
            lines.append(
                f"| {n.split('_l')[-1]} | "
                + " | ".join(
                    f"{r['attributes'][a]['image_weight']['mean']:.3f} ± {r['attributes'][a]['image_weight']['std']:.3f}"
                    for a in ATTRIBUTES
                )
                + " |"
            )
        lines.append("")
    ch = results.get("colour_hidden")
    if ch:
        lines += [
            f"## Colour hidden in text ({ch['share']:.0%} of titles without colour words; baseColour on test)",
            "",
            "| row | macro-F1 masked | macro-F1 unmasked | macro-F1 overall | accuracy masked | R@P95 masked |",
            "|---|---|---|---|---|---|",
        ]
        for n, r in ch["rows"].items():
            b = r["attributes"]["baseColour"]
            lines.append(
                f"| {n} | {b['masked']['f1_macro']:.3f} | {b['unmasked']['f1_macro']:.3f} | {b['f1_macro']:.3f} | {b['masked']['accuracy']:.3f} | {b['masked']['r_at_p95']:.3f} |"
            )
        lines.append("")
    t = results.get("timing", {})
    if t:
        lines += ["## Timing", ""] + [f"- {k}: {v:.0f} s" for k, v in t.items()]
        if "embedding_cache_computed" in results:
            lines.append(f"- embedding cache when computed: {results['embedding_cache_computed']['seconds']:.0f} s")
        lines += [f"- row {k}: {v:.0f} s" for k, v in results.get("row_seconds", {}).items() if v is not None] + [""]
    if results.get("timing_finetune"):
        lines += (
            ["## Timing of the fine-tuning run (make bench-finetune)", ""]
            + [f"- {k}: {v:.0f} s" for k, v in results["timing_finetune"].items()]
            + [""]
        )
    tuned = {n: r for n, r in rows.items() if n.startswith(FINETUNE_PREFIX)}
    if tuned:
        lines += [
            "## Fine-tuning rows",
            "",
            "| row | started from | steps x batch (products, share of an epoch) | hardware | validation macro-F1 |",
            "|---|---|---|---|---|",
        ]
        for n, r in tuned.items():
            tr = r["config"]["training"]
            seen = tr["max_steps"] * tr["batch_size"]
            lines.append(
                f"| {n} | `{n.removeprefix(FINETUNE_PREFIX)}` (frozen row) | {tr['max_steps']} x {tr['batch_size']} ({seen:,}, "
                f"{seen / results['environment']['dataset']['splits']['train']:.2f}) | {r.get('hardware', '?')} | {r['validation_f1_macro']:.3f} |"
            )
        lines.append("")
    tg = results.get("targets")
    if tg:
        lines += (
            ["## Targets", ""]
            + [
                "A win: the paired-bootstrap 95% interval of the difference lies above 0; where the other row "
                "is at the ceiling (>= 0.98) the claim is non-inferiority (lower bound above -0.01). Met: every "
                "attribute a win or non-inferior. Beside each difference: its interval and verdict.",
                "",
            ]
            + [
                f"- {k}: {'not decided (no intervals)' if v['met'] is None else 'MET' if v['met'] else 'NOT MET'} "
                f"({v['detail']})"
                for k, v in tg.items()
            ]
            + [""]
        )
    return "\n".join(lines)
