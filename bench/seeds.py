"""Run to run: the spread of the rows trained with extra seeds (bench/results/seeds.{json,md})."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import ATTRIBUTES, log
from bench.stored import stored_rows


def write_seed_table(out: Path, environment: dict[str, Any]) -> None:
    """The run-to-run table: every stored seeded row (and its seed-0 row) against TF-IDF+LR."""
    rows, seeded = (
        stored_rows(out),
        stored_rows(out, names=[p.stem for p in sorted((out / "rows").glob("*@seed*.json"))]),
    )
    if "tfidf_lr" not in rows:
        raise SystemExit("--seeds: the run-to-run table compares with the TF-IDF+LR row; run without --skip-tfidf")
    spread = seed_spread(rows, seeded)
    (out / "seeds.json").write_text(json.dumps({"environment": environment, "rows": spread}, indent=1))
    (out / "seeds.md").write_text(seeds_markdown(spread, rows["tfidf_lr"]))
    log(f"run-to-run table -> {out / 'seeds.md'}")


def seed_spread(rows: dict[str, Any], seeded: dict[str, Any]) -> dict[str, Any]:
    """Run to run: for each row trained with extra seeds (`ROW@seedN`), its test metrics per seed
    (the row itself is seed 0), their mean and standard deviation, and in how many seeds it beats
    TF-IDF+LR, per attribute."""
    out: dict[str, Any] = {}
    for base in dict.fromkeys(n.partition("@seed")[0] for n in seeded):
        runs = ([rows[base]] if base in rows else []) + [
            r for n, r in seeded.items() if n.partition("@seed")[0] == base
        ]
        entry: dict[str, Any] = {
            "seeds": [r["config"]["training"]["seed"] for r in runs],
            "validation_f1_macro": [r["validation_f1_macro"] for r in runs],
        }
        for metric in ("f1_macro", "r_at_p95"):
            entry[metric] = {}
            for a in ATTRIBUTES:
                vals = np.array([r["attributes"][a][metric] for r in runs])
                bar = rows["tfidf_lr"]["attributes"][a][metric]
                entry[metric][a] = {
                    "values": vals.tolist(),
                    "mean": float(vals.mean()),
                    "std": float(vals.std()),
                    "beats_tfidf": int((vals > bar).sum()),
                }
        out[base] = entry
    return out


def seeds_markdown(spread: dict[str, Any], tfidf: dict[str, Any]) -> str:
    lines = [
        "# Run to run: training seeds (fashion catalog, test split)",
        "",
        "Test metrics over training seeds (seed 0 is the quality benchmark's row): mean ± standard deviation, "
        "and in how many seeds the row beats TF-IDF+LR.",
        "",
    ]
    for metric, title in (("f1_macro", "macro-F1"), ("r_at_p95", "R@P95")):
        lines += [
            f"| {title} | seeds | validation macro-F1 | " + " | ".join(ATTRIBUTES) + " |",
            "|---" * (len(ATTRIBUTES) + 3) + "|",
            "| tfidf_lr | | | " + " | ".join(f"{tfidf['attributes'][a][metric]:.3f}" for a in ATTRIBUTES) + " |",
        ]
        for n, e in spread.items():
            cells = [
                f"{e[metric][a]['mean']:.3f} ± {e[metric][a]['std']:.3f} ({e[metric][a]['beats_tfidf']}/{len(e['seeds'])})"
                for a in ATTRIBUTES
            ]
            val = e["validation_f1_macro"]
            lines.append(
                f"| {n} | {','.join(map(str, e['seeds']))} | {np.mean(val):.3f} ± {np.std(val):.3f} | "
                + " | ".join(cells)
                + " |"
            )
        lines.append("")
    return "\n".join(lines)
