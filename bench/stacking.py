"""Late fusion on fashion: the alpha mix (`late`) against stacking (a learned combiner).

    make bench-stacking            # ~20 minutes on 2 cores
    .venv/bin/python bench/stacking.py --folds 3

Both on the recipe's frozen encoders (cached embeddings): `late` (per-modality heads, probabilities
mixed with a learned alpha per attribute, configs/models/late.yaml) and stacking
(components/training/stacking.py: the recipe's `text` and `image` models, a logistic regression per
attribute on their cross-fitted out-of-fold probabilities). Test macro-F1 and R@P95 per attribute
with paired-bootstrap intervals of stacked - late. Writes bench/results/stacking.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, SPEC, log  # noqa: E402
from bench.compare import compare_on_test, interval, run_record  # noqa: E402
from components.catalog import ingest, load_dataset, load_spec  # noqa: E402
from components.memory import keep_freed_memory  # noqa: E402
from components.settings import get_settings  # noqa: E402
from components.training.fit import FitConfig, member_config  # noqa: E402
from components.training.stacking import train_stacked  # noqa: E402
from components.training.trainer import load_train_config, train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    keep_freed_memory()
    work = get_settings().home.resolve() / "bench" / "stacking"
    ds = load_dataset(ingest(load_spec(SPEC)).dataset_dir)
    n_train = int((ds.items["split"] == "train").sum())
    t0 = time.perf_counter()
    train(load_train_config(ROOT / "configs" / "models" / "late.yaml"), ds, work / "late", progress=False)
    seconds = {"late": time.perf_counter() - t0}
    t0 = time.perf_counter()
    sides = {side: member_config(side, FitConfig(), n_train) for side in ("text", "image")}
    train_stacked(sides, ds, work / "stacked", folds=args.folds)
    seconds["stacked"] = time.perf_counter() - t0
    rows, intervals = compare_on_test(ds, {n: work / n for n in ("late", "stacked")}, seconds, "stacked", "late")
    for name, row in rows.items():
        log(f"{name}: " + " ".join(f"{a} {m['f1_macro']:.3f}" for a, m in row["attributes"].items()))
    results = {**run_record("stacking.py"), "folds": args.folds, "rows": rows, "stacked_minus_late_95": intervals}
    lines = [
        "# Late fusion on fashion: alpha mix (`late`) vs stacking",
        "",
        f"{results['date']}, {results['machine']}. Command: `{results['command']}` ({args.folds} folds). "
        f"Training: late {seconds['late']:.0f}s, stacked {seconds['stacked']:.0f}s.",
        "",
        "| attribute | late macro-F1 | stacked macro-F1 | diff 95% | late R@P95 | stacked R@P95 | diff 95% |",
        "|---|---|---|---|---|---|---|",
    ]
    for a in ds.vocab:
        lm, sm, d = rows["late"]["attributes"][a], rows["stacked"]["attributes"][a], intervals[a]
        lines.append(
            f"| {a} | {lm['f1_macro']:.3f} | {sm['f1_macro']:.3f} | {interval(d['f1_macro'])} "
            f"| {lm['r_at_p95']:.3f} | {sm['r_at_p95']:.3f} | {interval(d['r_at_p95'])} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stacking.json").write_text(json.dumps(results, indent=1, default=float))
    (args.out / "stacking.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
