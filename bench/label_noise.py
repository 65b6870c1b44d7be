"""Label noise on the fashion catalog: confident learning's flags and what filtering them does.

    make bench-label-noise          # ~25 minutes on 2 cores (4 cross-fitted + 2 full concat trainings)
    .venv/bin/python bench/label_noise.py --folds 3

1. Cross-fitted out-of-sample probabilities on the train split from the recipe's `concat` (frozen
   encoders, cached embeddings), then cleanlab's `find_label_issues` per attribute
   (components/training/label_noise.py). The full report (ids, titles, suggestions) goes to
   ATTRFLOW_HOME/bench/label-noise/ (catalog data: not committed).
2. A seeded sample of 50 flagged baseColour labels, listed with their image paths in
   ATTRFLOW_HOME/bench/label-noise/sample.md for a person to look at; their verdicts go in
   bench/label_noise_review.yaml (`id: given | suggested | neither`: which colour the image shows).
   The share the image confirms is computed from that file when it is there.
3. The effect: the recipe's `concat` trained on the catalog's labels and on the cleaned labels
   (flagged train labels left out; validation and test untouched), test macro-F1 and R@P95 per
   attribute with paired-bootstrap intervals of cleaned - original.

Writes bench/results/label_noise.{json,md}.
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

import yaml  # noqa: E402

from bench.common import RESULTS, SPEC, log  # noqa: E402
from bench.compare import compare_on_test, interval, run_record  # noqa: E402
from components.catalog import ingest, load_dataset, load_spec  # noqa: E402
from components.memory import keep_freed_memory  # noqa: E402
from components.settings import get_settings  # noqa: E402
from components.training.fit import FitConfig, member_config  # noqa: E402
from components.training.label_noise import find_label_issues, without_label_issues, write_label_issues  # noqa: E402
from components.training.trainer import train  # noqa: E402

REVIEW = ROOT / "bench" / "label_noise_review.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--sample", type=int, default=50)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    keep_freed_memory()
    start = time.perf_counter()
    work = get_settings().home.resolve() / "bench" / "label-noise"
    ds = load_dataset(ingest(load_spec(SPEC)).dataset_dir)
    n_train = int((ds.items["split"] == "train").sum())
    config = member_config("concat", FitConfig(), n_train)

    t0 = time.perf_counter()
    issues = find_label_issues(ds, config, work / "oof", folds=args.folds)
    find_seconds = time.perf_counter() - t0
    write_label_issues(issues, work)
    counts = issues.groupby("attribute").size().to_dict()
    labelled = {a: int(ds.items.loc[ds.items["split"] == "train", a].notna().sum()) for a in ds.vocab}
    log(f"flagged {counts} of {labelled} train labels in {find_seconds:.0f}s")

    colour = issues[issues["attribute"] == "baseColour"]
    sample = colour.sample(n=min(args.sample, len(colour)), random_state=0)
    lines = ["| id | given | suggested | image |", "|---|---|---|---|"]
    lines += [f"| {r.id} | {r.given} | {r.suggested} | {r.image_path} |" for r in sample.itertuples()]
    (work / "sample.md").write_text("\n".join(lines) + "\n")
    review = None
    if REVIEW.is_file():
        verdicts = {str(k): v for k, v in (yaml.safe_load(REVIEW.read_text()) or {}).items()}
        seen = [verdicts[i] for i in sample["id"].astype(str) if i in verdicts]
        review = {
            "reviewed": len(seen),
            "image_shows_suggested": seen.count("suggested"),
            "image_shows_given": seen.count("given"),
            "neither": seen.count("neither"),
        }

    seconds = {}
    for name, data in {"original": ds, "cleaned": without_label_issues(ds, issues)}.items():
        t0 = time.perf_counter()
        train(config, data, work / "models" / name, progress=False)
        seconds[name] = time.perf_counter() - t0
    rows, intervals = compare_on_test(ds, {n: work / "models" / n for n in seconds}, seconds, "cleaned", "original")
    for name, row in rows.items():
        log(f"{name}: " + " ".join(f"{a} {m['f1_macro']:.3f}" for a, m in row["attributes"].items()))

    results = {
        **run_record("label_noise.py"),
        "judge": "concat (the recipe, frozen encoders), out-of-fold over the train split",
        "folds": args.folds,
        "flagged": counts,
        "train_labels": labelled,
        "find_seconds": find_seconds,
        "review": review,
        "rows": rows,
        "cleaned_minus_original_95": intervals,
        "seconds": time.perf_counter() - start,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "label_noise.json").write_text(json.dumps(results, indent=1, default=float))
    (args.out / "label_noise.md").write_text(markdown(results))
    print(markdown(results))


def markdown(r: dict) -> str:
    lines = [
        "# Label noise on fashion: confident learning (cleanlab)",
        "",
        f"{r['date']}, {r['machine']}. Command: `{r['command']}`. Judge: {r['judge']} ({r['folds']} folds).",
        "",
        "| attribute | train labels | flagged | share | original macro-F1 | cleaned macro-F1 | diff 95% | original R@P95 | cleaned R@P95 | diff 95% |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a, n in r["train_labels"].items():
        f = r["flagged"].get(a, 0)
        o, c = r["rows"]["original"]["attributes"][a], r["rows"]["cleaned"]["attributes"][a]
        d = r["cleaned_minus_original_95"][a]
        lines.append(
            f"| {a} | {n} | {f} | {f / n:.1%} | {o['f1_macro']:.3f} | {c['f1_macro']:.3f} | "
            f"{interval(d['f1_macro'])} | {o['r_at_p95']:.3f} | {c['r_at_p95']:.3f} | {interval(d['r_at_p95'])} |"
        )
    if r["review"]:
        v = r["review"]
        lines += [
            "",
            f"Review of {v['reviewed']} flagged baseColour labels, each image looked at by a person: the image shows "
            f"the suggested colour in {v['image_shows_suggested']}, the given one in {v['image_shows_given']}, "
            f"neither clearly in {v['neither']} (bench/label_noise_review.yaml).",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
